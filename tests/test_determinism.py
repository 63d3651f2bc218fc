"""Same inputs and options, same outputs.

``new_buildings.geojson``, ``sites.geojson`` and ``change.tif`` are byte-identical
between runs; ``summary.json`` is identical except for ``timings``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from changedet.cli import main

from .test_reliability import pair  # noqa: F401  (session fixture: a small synthetic pair)

BYTE_IDENTICAL = ("new_buildings.geojson", "sites.geojson", "change.tif")


def _run(pair: dict[str, Any], out: Path, *extra: str) -> Path:  # noqa: F811
    result = CliRunner().invoke(main, ["-q", "detect", str(pair["before"]), str(pair["after"]),
                                       "-o", str(out), *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    return out


def _run_elsewhere(pair: dict[str, Any], out: Path, *extra: str) -> Path:  # noqa: F811
    """The same run in a fresh interpreter with another hash seed (set orders differ)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", "from changedet.cli import main; main()", "-q", "detect",
         str(pair["before"]), str(pair["after"]), "-o", str(out), *extra],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return out


def test_same_inputs_give_the_same_outputs(pair: dict[str, Any], tmp_path: Path) -> None:  # noqa: F811
    options = ("--claim-m2", "300", "--claim-sites", "2")
    first = _run(pair, tmp_path / "first", *options)
    second = _run_elsewhere(pair, tmp_path / "second", *options)
    for name in BYTE_IDENTICAL:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    a = json.loads((first / "summary.json").read_text())
    b = json.loads((second / "summary.json").read_text())
    assert set(a["timings"]) == set(b["timings"])
    a.pop("timings"), b.pop("timings")
    assert a == b
    # Nothing else in the summary depends on the folder the run wrote to, or when.
    assert "first" not in json.dumps(a)
    # Something was found, so the comparison compared something.
    assert json.loads((first / "new_buildings.geojson").read_text())["features"]
