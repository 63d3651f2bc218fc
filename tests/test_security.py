"""Input is data, never code: escaped in the report, never evaluated, no network.

- report.html escapes every string that comes from input: file names, AOI
  attributes, raster metadata; no ``<script`` tag at all.
- A run on local files opens no socket and PROJ never goes to the network.
- The package never evaluates or executes anything (no eval/exec/pickle/shell).
"""

from __future__ import annotations

import ast
import json
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import rasterio
import shapely
from click.testing import CliRunner

from changedet.cli import main

from .test_reliability import pair  # noqa: F401  (session fixture: a small synthetic pair)

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
BOLD = '<b onmouseover="alert(1)">compound</b>'


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Every attempt to open a socket or resolve a name fails loudly and is recorded."""
    attempts: list[tuple] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network access attempted during a local run")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def hostile(pair: dict[str, Any], tmp_path: Path) -> dict[str, Path]:  # noqa: F811
    """The pair under hostile names, with hostile metadata and a hostile AOI."""
    folder = tmp_path / "in"
    folder.mkdir()
    # "/" cannot be in a file name: the closing tag's slash makes "<script>alert(1)<"
    # a folder, and the path still reads <script>alert(1)</script>.tif.
    before = folder / f"{SCRIPT}.tif"
    before.parent.mkdir()
    after = folder / f"{IMG}.tif"
    shutil.copyfile(pair["before"], before)
    shutil.copyfile(pair["after"], after)
    for path in (before, after):
        with rasterio.open(path, "r+") as ds:
            ds.update_tags(TIFFTAG_IMAGEDESCRIPTION=IMG, SOURCE=SCRIPT, ACQUIRED=BOLD)
            ds.update_tags(1, DESCRIPTION=SCRIPT)
    with rasterio.open(before) as ds:
        area = shapely.box(*ds.bounds).buffer(-5)
        epsg = ds.crs.to_epsg()
    aoi = folder / f"{BOLD}.geojson"
    aoi.parent.mkdir()
    aoi.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}},
        "features": [{"type": "Feature", "properties": {"name": BOLD, "note": SCRIPT},
                      "geometry": shapely.geometry.mapping(area)}]}))
    return {"before": before, "after": after, "aoi": aoi}


def test_report_escapes_everything_from_input(hostile: dict[str, Path], tmp_path: Path,
                                              no_network: list[tuple]) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["detect", str(hostile["before"]), str(hostile["after"]),
                                       "--aoi", str(hostile["aoi"]), "-o", str(out),
                                       "--claim-m2", "500"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert no_network == []
    html = (out / "report.html").read_text(encoding="utf-8")
    lowered = html.lower()
    assert "<script" not in lowered
    assert "<img src=x" not in lowered
    # No live event handler: "onerror=" appears only inside escaped text.
    assert "onerror=" not in lowered.replace("onerror=alert(1)&gt;", "")
    assert "<b " not in lowered and "onmouseover=\"alert" not in lowered
    # The names are there, escaped: the analyst still sees which files were compared.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;b onmouseover=&quot;alert(1)&quot;&gt;" in html  # the AOI's path
    # Every other output carries input strings as data, in valid JSON.
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["inputs"]["before"]["path"] == str(hostile["before"])


def test_local_run_opens_no_socket(pair: dict[str, Any], tmp_path: Path,  # noqa: F811
                                   no_network: list[tuple]) -> None:
    import pyproj.network

    result = CliRunner().invoke(main, ["detect", str(pair["before"]), str(pair["after"]),
                                       "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, (result.output, result.exception)
    assert no_network == []
    # PROJ would fetch transformation grids over the network only when enabled.
    assert not pyproj.network.is_network_enabled()


#: Calls that turn data into code or run programs.
_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "system", "popen", "loads_pickle"}
_FORBIDDEN_MODULES = {"pickle", "marshal", "shelve", "subprocess", "dill", "yaml"}


def test_package_never_evaluates_or_executes_input() -> None:
    package = Path(__file__).resolve().parents[1] / "changedet"
    offences = []
    for source in sorted(package.rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                offences += [f"{source.name}: import {n}" for n in names
                             if n.split(".")[0] in _FORBIDDEN_MODULES]
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else \
                    func.attr if isinstance(func, ast.Attribute) else ""
                if name in _FORBIDDEN_CALLS:
                    offences.append(f"{source.name}:{node.lineno}: {name}()")
    assert offences == []


def test_aoi_attributes_are_not_evaluated(pair: dict[str, Any], tmp_path: Path,  # noqa: F811
                                          ) -> None:
    from changedet.aoi import read_polygons

    canary = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {canary}')"
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": payload, "id": "{{7*7}}"},
         "geometry": shapely.geometry.mapping(shapely.box(0, 0, 1, 1))}]}))
    polys = read_polygons(path)
    assert polys.names == [payload]
    assert not canary.exists()
