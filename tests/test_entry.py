"""The ``changedet`` script's entry: a light package import, and Ctrl-C while the
command line loads reported as an abort."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest


def test_importing_the_package_loads_no_numerical_stack() -> None:
    # In a fresh interpreter: this one has imported everything already.
    code = ("import sys, changedet; "
            "heavy = [m for m in ('numpy', 'rasterio', 'scipy', 'changedet.pipeline') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_names_are_there_when_asked_for() -> None:
    import changedet
    from changedet.pipeline import detect
    from changedet.raster import Grid

    assert changedet.detect is detect and changedet.Grid is Grid
    assert set(changedet.__all__) - {"__version__"} == set(changedet._EXPORTS)
    assert set(changedet.__all__) <= set(dir(changedet))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        changedet.no_such_name  # noqa: B018


def test_ctrl_c_while_the_command_line_loads_is_an_abort(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from changedet import _entry

    class Loading(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "changedet.cli", Loading("changedet.cli"))
    with pytest.raises(SystemExit) as stop:
        _entry.main([])
    assert stop.value.code == 1
    assert capsys.readouterr().err == "Aborted!\n"


def test_the_entry_runs_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from changedet import __version__, _entry

    with pytest.raises(SystemExit) as stop:
        _entry.main(["--version"], prog_name="changedet")
    assert stop.value.code == 0
    assert __version__ in capsys.readouterr().out
