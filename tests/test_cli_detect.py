"""``changedet detect`` and ``changedet demo`` through click's CliRunner."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from pyproj import CRS, Transformer

from changedet import pipeline
from changedet.cli import main
from changedet.outputs import OUTPUT_FILES
from changedet.pipeline import DetectOptions
from tests._fakes import fake_result
from tests.test_outputs import _cog_layout_ok


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small synthetic suburb pair with new buildings (fast to analyse)."""
    from changedet.synth import SynthParams, write_synthetic_pair

    out = tmp_path_factory.mktemp("scenes")
    params = SynthParams.for_scenario("suburb", seed=2, size=480)
    return write_synthetic_pair(params, out / "pair")


@pytest.fixture(scope="module")
def detected(scenes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    result = CliRunner().invoke(main, ["-q", "detect", str(scenes["before"]),
                                       str(scenes["after"]), "-o", str(out),
                                       "--claim-m2", "1000"])
    assert result.exit_code == 0, result.output
    return out


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_detect_writes_the_contract(detected: Path) -> None:
    assert sorted(p.name for p in detected.iterdir()) == sorted(OUTPUT_FILES)
    assert not [p for p in detected.parent.iterdir() if p.name.startswith(".")]
    # GeoJSON: WGS84; its areas, measured back in UTM, match the properties.
    meta, _, wkb, fields = pyogrio.raw.read(detected / "new_buildings.geojson")
    assert CRS.from_user_input(meta["crs"]).to_epsg() == 4326
    assert len(wkb) > 0
    names = list(meta["fields"])
    area = fields[names.index("area_m2")]
    lo, hi = fields[names.index("area_m2_min")], fields[names.index("area_m2_max")]
    assert np.all(lo <= area) and np.all(area <= hi)
    to_utm = Transformer.from_crs(4326, 32651, always_xy=True)
    utm = shapely.transform(shapely.from_wkb(wkb), lambda xy: np.column_stack(
        to_utm.transform(xy[:, 0], xy[:, 1])))
    np.testing.assert_allclose(shapely.area(utm), area, rtol=2e-3, atol=0.5)
    # GPKG: both layers in the analysis CRS with the same areas.
    assert [n for n, _ in pyogrio.list_layers(detected / "new_buildings.gpkg")] == \
        ["new_buildings", "sites"]
    gmeta, _, gwkb, _ = pyogrio.raw.read(detected / "new_buildings.gpkg", layer="new_buildings")
    assert CRS.from_user_input(gmeta["crs"]).to_epsg() == 32651
    np.testing.assert_allclose(shapely.area(shapely.from_wkb(gwkb)), area, atol=0.051)  # 0.1 m² rounding
    smeta, _, swkb, sfields = pyogrio.raw.read(detected / "new_buildings.gpkg", layer="sites")
    assert "verdict" in list(smeta["fields"])
    # change.tif: a COG on the analysis grid whose 1-pixels match the buildings.
    _cog_layout_ok(detected / "change.tif")
    with rasterio.open(detected / "change.tif") as ds:
        change = ds.read(1)
        assert ds.crs.to_epsg() == 32651 and ds.nodata == 255
        pixel_area = abs(ds.transform.determinant)
    assert set(np.unique(change)) <= {0, 1, 255}
    # Outlines follow the pixels' edges: their areas are the pixels', to the 0.1 m² each
    # is rounded to.
    assert (change == 1).sum() * pixel_area == pytest.approx(area.sum(), rel=1e-6,
                                                             abs=0.051 * len(area))
    summary = json.loads((detected / "summary.json").read_text())
    for key in ("inputs", "analysis_crs", "pixel_size_m", "coregistration", "totals",
                "sites", "claim", "parameters", "changedet_version", "timings"):
        assert key in summary
    assert summary["totals"]["n_buildings"] == len(wkb)
    assert summary["claim"]["claim_m2"] == 1000.0


def test_same_inputs_same_outputs(scenes: dict[str, Path], detected: Path,
                                  tmp_path: Path) -> None:
    again = tmp_path / "again"
    result = _run("-q", "detect", str(scenes["before"]), str(scenes["after"]), "-o",
                  str(again), "--claim-m2", "1000")
    assert result.exit_code == 0, result.output
    for name in ("new_buildings.geojson", "sites.geojson", "change.tif"):
        assert (again / name).read_bytes() == (detected / name).read_bytes(), name
    one = json.loads((detected / "summary.json").read_text())
    two = json.loads((again / "summary.json").read_text())
    one.pop("timings"), two.pop("timings")
    assert one == two


def test_summary_names_the_inputs_by_absolute_path(scenes: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Given relative to where the command ran, the record must still name the files
    # when summary.json is read from elsewhere.
    monkeypatch.chdir(scenes["before"].parent)
    result = _run("-q", "detect", scenes["before"].name, scenes["after"].name, "-o",
                  str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    inputs = json.loads((tmp_path / "o" / "summary.json").read_text())["inputs"]
    assert inputs["before"]["path"] == os.path.abspath(scenes["before"])
    assert inputs["after"]["path"] == os.path.abspath(scenes["after"])


def test_stdout_is_the_table(scenes: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["detect", str(scenes["before"]), str(scenes["after"]),
                                       "-o", str(tmp_path / "o"), "--claim-m2", "1000"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Claim: ") and lines[1].startswith("Site")
    assert "wrote" in result.stderr and "wrote" not in result.stdout


def test_refuses_non_empty_outdir(scenes: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = _run("detect", str(scenes["before"]), str(scenes["after"]), "-o", str(out))
    assert result.exit_code == 1
    assert "not empty" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    result = _run("-q", "detect", str(scenes["before"]), str(scenes["after"]), "-o", str(out),
                  "--overwrite")
    assert result.exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)


def test_missing_input_one_line(tmp_path: Path) -> None:
    result = _run("detect", str(tmp_path / "nope.tif"), str(tmp_path / "b.tif"), "-o",
                  str(tmp_path / "o"))
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"Error: {tmp_path / 'nope.tif'}: no such file"]
    assert not (tmp_path / "o").exists()
    verbose = _run("-v", "detect", str(tmp_path / "nope.tif"), str(tmp_path / "b.tif"), "-o",
                   str(tmp_path / "o"))
    # Traceback kept: the error itself propagates (CliRunner records a plain exit as
    # SystemExit).
    assert verbose.exit_code == 1 and not isinstance(verbose.exception, SystemExit)
    # -v after the command name keeps it too, as its --help says.
    after = _run("detect", "-v", str(tmp_path / "nope.tif"), str(tmp_path / "b.tif"), "-o",
                 str(tmp_path / "o"))
    assert after.exit_code == 1 and not isinstance(after.exception, SystemExit)


def test_the_same_file_twice_is_refused(scenes: dict[str, Path], tmp_path: Path) -> None:
    """One scene given as both dates found nothing new, which reads as a refuted
    claim; a link to it is the same file too."""
    link = tmp_path / "link.tif"
    link.symlink_to(scenes["before"])
    for after in (scenes["before"], link):
        result = _run("-q", "detect", str(scenes["before"]), str(after), "-o",
                      str(tmp_path / "o"), "--claim-m2", "1000")
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines() == [
            f"Error: {after}: is the same file as {scenes['before']}; "
            "give the scene of the other date"]
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("window_px", ["65536", "256"])
def test_a_copy_of_one_scene_as_the_other_date_is_refused(
        scenes: dict[str, Path], tmp_path: Path, window_px: str) -> None:
    """A VRT, a vrt:// path or a copy of the before scene is no other path's file,
    but it holds the same pixels: refused in whole-scene and windowed runs."""
    import shutil

    import rasterio.shutil

    vrt = tmp_path / "before.vrt"
    rasterio.shutil.copy(scenes["before"], vrt, driver="VRT")
    copy = shutil.copy(scenes["before"], tmp_path / "copy.tif")
    for after in (str(vrt), f"vrt://{scenes['before']}", str(copy)):
        result = _run("-q", "detect", str(scenes["before"]), after, "-o",
                      str(tmp_path / "o"), "--window-px", window_px)
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines() == [
            f"Error: {after}: holds the same pixels as {scenes['before']} wherever both "
            "have data: give the scene of the other date"]
        assert not (tmp_path / "o").exists()


def test_an_after_scene_equal_to_the_before_scene_on_the_fit_strips_is_analysed(
        scenes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windowed runs first compare the radiometric fit's strips; equal there (a
    mosaic refreshed in part), the scenes still differ elsewhere, and the whole-scene
    path analyses them: so must the windowed one."""
    import rasterio

    from changedet import radiometry

    monkeypatch.setattr(radiometry, "FIT_SAMPLE_PX", 20_000)  # strips, as on a large scene
    with rasterio.open(scenes["before"]) as src:
        before, profile = src.read(), src.profile
        strips = radiometry.fit_patches((src.height, src.width))
    with rasterio.open(scenes["after"]) as src:
        after = src.read()
    assert len(strips) == radiometry.MIN_FIT_STRIPS
    for r0, _, r1, _ in strips:
        after[:, r0:r1] = before[:, r0:r1]
    mixed = tmp_path / "after_mixed.tif"
    with rasterio.open(mixed, "w", **profile) as dst:
        dst.write(after)
    result = _run("-q", "detect", str(scenes["before"]), str(mixed), "-o",
                  str(tmp_path / "o"), "--window-px", "256", "--coreg", "none")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "summary.json").exists()


@pytest.mark.parametrize("window_px", ["65536", "256"])
def test_an_after_scene_covering_part_of_the_before_scene_is_named(
        scenes: dict[str, Path], tmp_path: Path, window_px: str) -> None:
    """A claimed site outside the after scene is "not found", which is no evidence
    against the claim: the run says how much of the before scene was looked at."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(scenes["after"]) as src:
        part = Window(0, 0, int(src.width * 0.4), src.height)
        profile = src.profile | {"width": part.width}  # the same corner
        data = src.read(window=part)
    after = tmp_path / "after_west.tif"
    with rasterio.open(after, "w", **profile) as dst:
        dst.write(data)
    # The same share as nodata in an after scene of full extent: the windowed run
    # measured footprints and said nothing (the whole run counted valid pixels).
    masked = tmp_path / "after_masked.tif"
    with rasterio.open(scenes["after"]) as src:
        full, profile = src.read(), src.profile | {"nodata": 0}
    full = np.maximum(full, 1)
    full[:, :, part.width:] = 0
    with rasterio.open(masked, "w", **profile) as dst:
        dst.write(full)
    for name in (after, masked):
        result = _run("detect", str(scenes["before"]), str(name), "-o", str(tmp_path / "o"),
                      "--window-px", window_px, "--overwrite")
        assert result.exit_code == 0, result.output
        # (Windowed runs estimate the share on strips: 39 to 41 %.)
        assert re.search(rf"changedet: {re.escape(str(name))} covers only (39|40|41) % of "
                         rf"{re.escape(str(scenes['before']))}: buildings outside the overlap "
                         "cannot be found", result.stderr), result.stderr
    whole = _run("detect", str(scenes["before"]), str(scenes["after"]), "-o",
                 str(tmp_path / "o2"), "--window-px", window_px)
    assert "covers only" not in whole.stderr
    assert not [w for w in json.loads((tmp_path / "o2" / "summary.json").read_text())[
        "warnings"] if "covers only" in w]
    assert "buildings outside the overlap" not in (tmp_path / "o2" / "report.html").read_text()
    # -q silences stderr; the warning still travels with the results, beside the
    # verdict in the report.
    quiet = _run("-q", "detect", str(scenes["before"]), str(after), "-o",
                 str(tmp_path / "q"), "--window-px", window_px, "--claim-m2", "10000")
    assert quiet.exit_code == 0 and "covers only" not in quiet.stderr
    warned = json.loads((tmp_path / "q" / "summary.json").read_text())["warnings"]
    assert len([w for w in warned if "covers only" in w]) == 1, warned
    report = (tmp_path / "q" / "report.html").read_text()
    assert "The run warned" in report and "buildings outside the overlap" in report


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="needs /dev/null")
@pytest.mark.parametrize("command", ["detect", "demo", "synth"])
def test_an_outdir_that_is_a_file_or_a_device_is_a_usage_error(
        scenes: dict[str, Path], tmp_path: Path, command: str) -> None:
    """A regular file was a usage error (status 2) but /dev/null went on to fail
    with status 1; the README promises 2 for both."""
    plain = tmp_path / "plain.txt"
    plain.write_text("mine")
    for outdir in (str(plain), "/dev/null"):
        args = {"detect": ["detect", str(scenes["before"]), str(scenes["after"]), "-o", outdir],
                "demo": ["demo", "-o", outdir],
                "synth": ["synth", outdir, "--scenario", "none"]}[command]
        result = _run(*args)
        assert result.exit_code == 2, result.output
        assert "not a folder" in result.stderr or "is a file" in result.stderr
    assert plain.read_text() == "mine"


def test_full_disk_leaves_outdir(scenes: dict[str, Path], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet import outputs

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def full(path: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(outputs, "write_cog", full)
    result = _run("-q", "detect", str(scenes["before"]), str(scenes["after"]), "-o", str(out),
                  "--overwrite")
    assert result.exit_code == 1
    assert "no space left on device" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _aoi_file(path: Path, polygons: list[shapely.Polygon], crs: str, driver: str) -> Path:
    pyogrio.raw.write(path, geometry=np.asarray(shapely.to_wkb(polygons), dtype=object),
                      field_data=[np.asarray([f"<b>zone {i}</b>" for i in range(len(polygons))],
                                             dtype=object)],
                      fields=["name"], driver=driver, geometry_type="Polygon", crs=crs)
    return path


def _scene_box(path: Path, frac: tuple[float, float, float, float]) -> shapely.Polygon:
    with rasterio.open(path) as ds:
        left, bottom, right, top = ds.bounds
    w, h = right - left, top - bottom
    return shapely.box(left + frac[0] * w, bottom + frac[1] * h, left + frac[2] * w,
                       bottom + frac[3] * h)


def test_aoi_in_another_crs(scenes: dict[str, Path], detected: Path, tmp_path: Path) -> None:
    # The AOI: 5 m around the first half of the buildings found without one, drawn
    # in lon/lat. Detection does not depend on the AOI, so exactly those remain.
    _, _, all_wkb, _ = pyogrio.raw.read(detected / "new_buildings.gpkg", layer="new_buildings")
    every = shapely.from_wkb(all_wkb)
    assert len(every) >= 2
    chosen = every[: len(every) // 2]
    zone = shapely.union_all(shapely.buffer(chosen, 5.0))
    to_ll = Transformer.from_crs(32651, 4326, always_xy=True)
    zone_ll = shapely.transform(zone, lambda xy: np.column_stack(
        to_ll.transform(xy[:, 0], xy[:, 1])))
    parts = list(getattr(zone_ll, "geoms", [zone_ll]))
    aoi = _aoi_file(tmp_path / "aoi.gpkg", parts, "EPSG:4326", "GPKG")
    out = tmp_path / "out"
    result = _run("-q", "detect", str(scenes["before"]), str(scenes["after"]), "-o", str(out),
                  "--aoi", str(aoi))
    assert result.exit_code == 0, result.output
    _, _, wkb, _ = pyogrio.raw.read(out / "new_buildings.gpkg", layer="new_buildings")
    kept = shapely.from_wkb(wkb)
    assert sorted(np.round(shapely.area(kept), 1)) == sorted(np.round(shapely.area(chosen), 1))
    with rasterio.open(out / "change.tif") as ds:
        change = ds.read(1)
        rows, cols = np.nonzero(change != 255)
        xs, ys = ds.transform @ (cols + 0.5, rows + 0.5)
    inside = shapely.contains_xy(zone.buffer(1.0), xs, ys)
    assert inside.all()  # analysed pixels lie in the AOI, the rest is no data
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"]["aoi"] == str(aoi)


def test_aoi_errors(scenes: dict[str, Path], tmp_path: Path) -> None:
    far = shapely.box(100000, 100000, 100100, 100100)
    outside = _aoi_file(tmp_path / "far.geojson", [far], "EPSG:32651", "GeoJSON")
    text = tmp_path / "aoi.txt"
    text.write_text("this is not vector data\n")
    for path, message in ((outside, "outside the scenes"), (text, "not vector data"),
                          (tmp_path / "missing.gpkg", "no such file")):
        out = tmp_path / f"out-{path.stem}"
        result = _run("detect", str(scenes["before"]), str(scenes["after"]), "-o", str(out),
                      "--aoi", str(path))
        assert result.exit_code == 1, (path, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and message in lines[0]
        assert not out.exists()


def test_aoi_invalid_geometry_is_repaired(scenes: dict[str, Path], tmp_path: Path) -> None:
    box = _scene_box(scenes["before"], (0, 0, 1, 1))
    x0, y0, x1, y1 = box.bounds
    bowtie = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    assert not bowtie.is_valid
    aoi = _aoi_file(tmp_path / "bowtie.geojson", [bowtie], "EPSG:32651", "GeoJSON")
    result = _run("detect", str(scenes["before"]), str(scenes["after"]), "-o",
                  str(tmp_path / "o"), "--aoi", str(aoi))
    assert result.exit_code == 0, result.output
    assert "repaired" in result.stderr


def test_report_escapes_file_names(scenes: dict[str, Path], tmp_path: Path) -> None:
    evil = tmp_path / '<script>alert(1)<script>.tif'
    evil.write_bytes(Path(scenes["before"]).read_bytes())
    out = tmp_path / "o"
    result = _run("-q", "detect", str(evil), str(scenes["after"]), "-o", str(out))
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;script&gt;.tif" in html


@pytest.mark.parametrize("args", [
    ["--claim-m2", "-5"], ["--claim-m2", "0"], ["--claim-m2", "1e12"], ["--claim-m2", "nan"],
    ["--claim-m2", "100", "--claim-tolerance", "1.5"],
    ["--claim-m2", "100", "--claim-tolerance", "-0.1"],
    ["--claim-m2", "100", "--claim-sites", "0"], ["--claim-sites", "2"],
    ["--claim-m2", "100", "--claim-basis", "roof"], ["--bands", "a,b"], ["--bands", "0,1"],
    ["--bands", "1,1,1"], ["--bands", "3,2,3"],
    ["--coreg", "magic"], ["--min-area-m2", "-1"], ["--site-gap-m", "-3"],
    # NaN passes every comparison, so a range check alone lets it through.
    ["--min-area-m2", "nan"], ["--site-gap-m", "nan"],
    ["--claim-m2", "100", "--claim-tolerance", "nan"],
])
def test_bad_values_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    result = _run("detect", "a.tif", "b.tif", "-o", str(tmp_path / "o"), *args)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "o").exists()


class _Recorder:
    """Stands in for run_detection: records the options, returns a known result."""

    def __init__(self) -> None:
        self.options: DetectOptions | None = None

    def __call__(self, before: str, after: str, options: DetectOptions,
                 progress: Any = None) -> Any:
        self.options = options
        return fake_result(options.claim_m2, n_sites=options.claim_sites,
                           basis=options.claim_basis)


def test_every_option_reaches_the_pipeline(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    record = _Recorder()
    monkeypatch.setattr(pipeline, "run_detection", record)
    aoi = tmp_path / "aoi.geojson"
    result = _run("detect", "b.tif", "a.tif", "-o", str(tmp_path / "o"), "--bands", "3,2,1",
                  "--nir-band", "4", "--coreg", "local", "--min-area-m2", "20",
                  "--site-gap-m", "15", "--aoi", str(aoi), "--claim-m2", "8000",
                  "--claim-tolerance", "0.2", "--claim-sites", "2", "--claim-basis",
                  "envelope", "--window-px", "1024", "--workers", "3", "--dask-scheduler",
                  "tcp://10.0.0.5:8786", "--keep-standing", "-q")
    assert result.exit_code == 0, result.output
    assert record.options == DetectOptions(
        bands=(3, 2, 1), nir_band=4, coreg="local", min_area_m2=20.0, site_gap_m=15.0,
        aoi=str(aoi), claim_m2=8000.0, claim_tolerance=0.2, claim_sites=2,
        claim_basis="envelope", window_px=1024, workers=3,
        dask_scheduler="tcp://10.0.0.5:8786", keep_standing=True)
    assert record.options.detection_params().outline_before is None
    assert DetectOptions().detection_params().outline_before is not None


@pytest.mark.parametrize("claim, sites, verdicts", [
    ("12375", "1", ["consistent", "(not claimed)"]),
    ("8000", "2", ["larger than claimed", "consistent"]),
    ("20000", "2", ["smaller than claimed", "smaller than claimed"]),
    ("12375", "3", ["consistent", "smaller than claimed", "not found"]),
])
def test_every_verdict_on_stdout(claim: str, sites: str, verdicts: list[str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "run_detection", _Recorder())
    out = tmp_path / "o"
    result = _run("detect", "b.tif", "a.tif", "-o", str(out), "--claim-m2", claim,
                  "--claim-sites", sites)
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[3:-1]
    assert [next(v for v in ("(not claimed)", "consistent", "smaller than claimed",
                             "larger than claimed", "not found") if r.endswith(v))
            for r in rows] == verdicts
    doc = json.loads((out / "sites.geojson").read_text())
    claimed = [v for v in verdicts if v not in ("not found", "(not claimed)")]
    assert [f["properties"]["verdict"] for f in doc["features"]][:len(claimed)] == claimed
    summary = json.loads((out / "summary.json").read_text())
    assert [v["verdict"] for v in summary["claim"]["verdicts"]] == \
        [v for v in verdicts if v != "(not claimed)"]
    assert ("Consistent with the claim" in result.stdout) == \
        all(v in ("consistent", "(not claimed)") for v in verdicts)


def test_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    demo_module = sys.modules["changedet.cli.demo"]  # the package exports the command

    record = _Recorder()
    monkeypatch.setattr(pipeline, "run_detection", record)
    monkeypatch.setattr(demo_module, "fixture_pair",
                        lambda: (Path("before.tif"), Path("after.tif")))
    result = _run("demo", "-o", str(tmp_path / "d"))
    assert result.exit_code == 0, result.output
    assert record.options.claim_m2 == 13000 and record.options.claim_sites == 3
    assert result.stdout.startswith("Claim: 3 sites of 13,000 m² each")
    assert (tmp_path / "d" / "report.html").exists()
    # Without -o nothing is written, and the run says how to keep the outputs; -q
    # leaves stderr to errors.
    bare = _run("demo")
    assert bare.exit_code == 0 and "no outputs written; `changedet demo -o DIR`" in bare.stderr
    quiet = _run("-q", "demo")
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == bare.stdout


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """``changedet -q demo -o OUT``: the click result and OUT."""
    out = tmp_path_factory.mktemp("demo") / "d"
    return _run("-q", "demo", "-o", str(out)), out


def _demo_matches(out: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(truth properties, building properties) of the fixture's residences matched
    one-to-one at IoU >= 0.5 with the demo's buildings (both in WGS84)."""
    from changedet.evaluate import match_objects

    root = Path(__file__).resolve().parents[1] / "fixtures" / "compound"
    truth = json.loads((root / "truth.geojson").read_text())["features"]
    found = json.loads((out / "new_buildings.geojson").read_text())["features"]
    pairs = match_objects([shapely.geometry.shape(f["geometry"]) for f in found],
                          [shapely.geometry.shape(f["geometry"]) for f in truth])
    return [(truth[t]["properties"], found[p]["properties"]) for p, t, _ in pairs]


@pytest.mark.slow
def test_demo_on_the_fixture_finds_the_three_residences(demo_run: tuple[Any, Path]) -> None:
    """The README's first command: three sites, each consistent with 13,000 m²."""
    result, out = demo_run
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["sites"]) == 3
    assert [v["verdict"] for v in summary["claim"]["verdicts"]] == ["consistent"] * 3
    assert "Consistent with the claim: all 3 sites match" in result.stdout
    assert result.stderr == ""  # -q: errors only
    # Each true residence is one building found, and nothing else is.
    matches = _demo_matches(out)
    assert len(matches) == summary["totals"]["n_buildings"] == 3
    # Residences 1 and 3 are measured within their ranges (for residence 2 see below).
    for truth, found in matches:
        if truth["id"] != 2:
            assert found["area_m2_min"] <= truth["area_m2"] <= found["area_m2_max"]
            assert found["area_m2"] == pytest.approx(truth["area_m2"], rel=0.03)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known limit (README): residence 2's outline takes "
                   "in its own shadow on the new earth beside it, +12 % outside its range")
def test_demo_ranges_hold_every_true_residence(demo_run: tuple[Any, Path]) -> None:
    for truth, found in _demo_matches(demo_run[1]):
        assert found["area_m2_min"] <= truth["area_m2"] <= found["area_m2_max"], truth["id"]


def test_rio_plugin_entry_point() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["rasterio.rio_plugins"]["changedet"]
    module, name = target.split(":")
    import importlib

    group = getattr(importlib.import_module(module), name)
    assert group is main
    assert {"detect", "measure", "demo"} <= set(group.commands)


def test_runs_as_rio_plugin(tmp_path: Path) -> None:
    """``rio changedet ...``: the group works under rasterio's ``rio`` (own process)."""
    import os
    import subprocess
    import sys

    # The plugin as rasterio loads it, from the installed entry point: rio names it
    # after the command's own name (the group was called "main" so: `rio main`).
    code = ("from rasterio.rio.main import main_group\n"
            "main_group(['changedet', 'measure', sys.argv[1]])\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    missing = tmp_path / "missing.gpkg"
    done = subprocess.run([sys.executable, "-c", "import sys\n" + code, str(missing)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error: {missing}: no such file"


def test_demo_fixture_found_in_an_installed_package(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed, the fixture sits inside the package (changedet/fixtures/compound);
    without it the demo refuses rather than check the claim on another scene."""
    import sys

    from changedet.errors import InputError

    demo_module = sys.modules["changedet.cli.demo"]
    package = tmp_path / "site-packages" / "changedet"
    (package / "cli").mkdir(parents=True)
    monkeypatch.setattr(demo_module, "__file__", str(package / "cli" / "demo.py"))
    with pytest.raises(InputError, match="demo fixture is missing"):
        demo_module.fixture_pair()
    folder = package / "fixtures" / "compound"
    folder.mkdir(parents=True)
    for name in ("before.tif", "after.tif"):
        (folder / name).write_bytes(b"")
    assert demo_module.fixture_pair() == (folder / "before.tif", folder / "after.tif")


def test_the_wheel_carries_the_demo_fixture() -> None:
    """pyproject maps fixtures/ into the package and its globs take every fixture file."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parents[1]
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "changedet.fixtures" in tool["packages"]
    assert tool["package-dir"]["changedet.fixtures"] == "fixtures"
    globs = tool["package-data"]["changedet.fixtures"]
    files = [p.relative_to(root / "fixtures").as_posix()
             for p in (root / "fixtures" / "compound").iterdir()]
    assert {"compound/before.tif", "compound/after.tif"} <= set(files)
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), files


def test_buildings_left_out_as_standing_before_are_named_on_stderr(tmp_path: Path) -> None:
    from changedet.synth import SynthParams, write_synthetic_pair

    pair = write_synthetic_pair(SynthParams.for_scenario("demolition", seed=0, size=512),
                                tmp_path / "p")
    result = _run("detect", str(pair["before"]), str(pair["after"]), "-o",
                  str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    n = summary["totals"]["n_standing_before"]
    assert n >= 1 and len(summary["standing_before"]) == n
    assert f"changedet: {n} changed area(s)" in result.stderr
    assert "standing" not in result.stdout  # stdout carries the table only
    quiet = _run("-q", "detect", str(pair["before"]), str(pair["after"]), "-o",
                 str(tmp_path / "q"))
    assert quiet.exit_code == 0 and "changed area" not in quiet.stderr
    # -v says it once (the run's log), as it says once where the outputs went.
    verbose = _run("-v", "detect", str(pair["before"]), str(pair["after"]), "-o",
                   str(tmp_path / "v"))
    assert verbose.exit_code == 0
    assert verbose.stderr.count(f"{n} changed area(s)") == 1, verbose.stderr
    assert verbose.stderr.count("changedet: wrote") == 1


def test_rasterio_georeferencing_warnings_from_window_threads_stay_off_stderr(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rasterio warns NotGeoreferencedWarning about the in-memory arrays it warps; the
    windows' threads could not scope it with warnings.catch_warnings, and it reached
    the analyst's stderr now and then."""
    import threading
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    record = _Recorder()

    def warning_run(*args: Any, **kwargs: Any) -> Any:
        t = threading.Thread(target=warnings.warn,
                             args=("Dataset has no geotransform", NotGeoreferencedWarning))
        t.start()
        t.join()
        return record(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run_detection", warning_run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        result = _run("detect", "b.tif", "a.tif", "-o", str(tmp_path / "o"))
        # Scoped to the command: a notebook calling the CLI keeps its own filters.
        assert warnings.filters == filters
    assert result.exit_code == 0, result.output
    assert record.options is not None
    assert not [w for w in caught if issubclass(w.category, NotGeoreferencedWarning)]


def test_outdir_problems_are_refused_before_any_work(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet import outputs

    record = _Recorder()
    monkeypatch.setattr(pipeline, "run_detection", record)
    # --overwrite on the folder that holds an input scene would delete it.
    folder = tmp_path / "job"
    folder.mkdir()
    scene = folder / "b.tif"
    scene.write_bytes(b"pixels")
    result = _run("detect", str(scene), "a.tif", "-o", str(folder), "--overwrite")
    assert result.exit_code == 1 and "holds the input" in result.output
    assert scene.read_bytes() == b"pixels"
    # So would it when the scenes are read from a zip in that folder, spelt as
    # rasterio or GDAL spell it.
    archive = folder / "scenes.zip"
    archive.write_bytes(b"zip")
    for before, after in ((f"zip://{archive}!b.tif", "a.tif"),
                          ("b.tif", f"/vsizip/{{{archive}}}/a.tif")):
        result = _run("detect", before, after, "-o", str(folder), "--overwrite")
        assert result.exit_code == 1 and "holds the input" in result.output
        assert "Traceback" not in result.output
    assert archive.read_bytes() == b"zip"
    # A parent folder that cannot be written (simulated: tests may run as root).
    def refuse(*args: object, **kwargs: object) -> str:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(outputs.tempfile, "mkdtemp", refuse)
    result = _run("detect", "b.tif", "a.tif", "-o", str(tmp_path / "new"))
    assert result.exit_code == 1 and "cannot write here" in result.output
    assert record.options is None  # neither reached the detection


def test_a_terminated_windowed_run_leaves_no_scratch_and_no_output(
        scenes: dict[str, Path], tmp_path: Path) -> None:
    """SIGTERM (a scheduler's or ``kill``'s stop) unwinds as Ctrl-C does: killed
    outright, a windowed run left its scratch change.tif in TMPDIR."""
    import os
    import signal
    import subprocess
    import sys
    import time

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from changedet.cli import main; main()", "detect",
         str(scenes["before"]), str(scenes["after"]), "-o", str(out), "--window-px", "256"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(scratch)})
    # Stop it once its windows have started (their scratch folder exists).
    deadline = time.monotonic() + 120
    while (not any(p.name.startswith("changedet-") for p in scratch.iterdir())
           and proc.poll() is None and time.monotonic() < deadline):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == "Aborted!" and "Traceback" not in err
    assert list(scratch.iterdir()) == [] and not out.exists()


@pytest.mark.parametrize("command", ["detect", "measure", "coregister", "evaluate", "synth",
                                     "demo"])
def test_every_command_takes_v_and_q_after_its_name(command: str) -> None:
    """The README says every command takes -v and -q; synth and evaluate refused them
    after the command's name ("No such option '-v'")."""
    for flag in ("-v", "-q"):
        result = _run(command, flag, "--help")
        assert result.exit_code == 0, result.output


def test_runs_as_python_dash_m(tmp_path: Path) -> None:
    """``python -m changedet`` (no console script on the PATH, or another venv's)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "changedet", "measure",
                           str(tmp_path / "missing.gpkg")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error: {tmp_path / 'missing.gpkg'}: no such file"
    usage = subprocess.run([sys.executable, "-m", "changedet", "--help"],
                           capture_output=True, text=True, env=env, timeout=120)
    assert usage.returncode == 0 and usage.stdout.startswith("Usage: changedet ")


def test_a_run_with_stderr_closed_writes_its_outputs(tmp_path: Path) -> None:
    """``2>&-`` (a cron job): the progress bar asked a closed stderr if it was a
    terminal, and the run failed without a word and without outputs."""
    import os
    import subprocess
    import sys

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "compound"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    code = ("import sys\nsys.stderr = None\nfrom changedet.cli import main\n"
            "main(['detect', sys.argv[1], sys.argv[2], '-o', sys.argv[3]])\n")
    done = subprocess.run([sys.executable, "-c", code, str(fixture / "before.tif"),
                           str(fixture / "after.tif"), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUT_FILES)


def test_the_cli_gives_a_notebook_its_logging_back(tmp_path: Path) -> None:
    import logging

    log = logging.getLogger("changedet")
    mine = logging.NullHandler()
    level, handlers = log.level, list(log.handlers)
    try:
        log.handlers[:] = [mine]
        log.setLevel(logging.INFO)
        result = CliRunner().invoke(main, ["-q", "measure", str(tmp_path / "no.gpkg")])
        assert result.exit_code == 1
        assert log.level == logging.INFO and log.handlers == [mine]
    finally:
        log.setLevel(level)
        log.handlers[:] = handlers


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_stdout_on_a_full_device_says_the_outputs_were_written(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "compound"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "changedet", "-q", "detect",
                               str(fixture / "before.tif"), str(fixture / "after.tif"),
                               "-o", str(tmp_path / "out")],
                              stdout=full, stderr=subprocess.PIPE, text=True, env=env,
                              timeout=300)
    assert done.returncode == 1
    assert "the outputs are in" in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(OUTPUT_FILES)


@pytest.mark.parametrize("option", [["--claim-sites", "2"], ["--claim-tolerance", "0.5"],
                                    ["--claim-basis", "envelope"]])
def test_a_claim_option_without_the_claimed_area_is_a_usage_error(
        option: list[str], scenes: dict[str, Path], tmp_path: Path) -> None:
    """--claim-tolerance or --claim-basis alone was ignored in silence (no verdict, no
    word why), while --claim-sites alone was refused."""
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["detect", str(scenes["before"]), str(scenes["after"]),
                                       "-o", str(out), *option])
    assert result.exit_code == 2, result.output
    assert f"{option[0]} needs --claim-m2" in result.output
    assert not out.exists()
    polygons = tmp_path / "p.geojson"
    polygons.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                        '"properties": {}, "geometry": {"type": "Polygon", "coordinates": '
                        '[[[125.7, 39.0], [125.701, 39.0], [125.701, 39.001], '
                        '[125.7, 39.0]]]}}]}')
    measured = CliRunner().invoke(main, ["measure", str(polygons), *option])
    assert measured.exit_code == 2 and f"{option[0]} needs --claim-m2" in measured.output


def test_no_visible_band_left_is_one_line(scenes: dict[str, Path], tmp_path: Path) -> None:
    """--bands 1 --nir-band 1 warned that band 1 left no visible band, twice, before
    the error that says so."""
    result = CliRunner().invoke(main, ["detect", str(scenes["before"]), str(scenes["after"]),
                                       "-o", str(tmp_path / "out"), "--bands", "1",
                                       "--nir-band", "1"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no visible band is left" in lines[0], lines
