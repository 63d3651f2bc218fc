"""The pipeline and the notebook API ``changedet.detect``."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.crs import CRS

import changedet
from changedet.pipeline import DetectionResult, default_site_gap_m, quicklook
from changedet.raster import Grid, Scene


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from changedet.synth import SynthParams, write_synthetic_pair

    out = tmp_path_factory.mktemp("pipeline")
    return write_synthetic_pair(SynthParams.for_scenario("suburb", seed=1, size=320), out / "p")


def test_notebook_api(pair: dict[str, Path]) -> None:
    calls: list[tuple[str, float]] = []
    result = changedet.detect(pair["before"], pair["after"], claim_m2=500.0, claim_sites=2,
                              progress=lambda stage, fraction: calls.append((stage, fraction)))
    assert isinstance(result, DetectionResult)
    assert result.footprints and all(isinstance(p, shapely.Polygon) for p in result.footprints)
    assert isinstance(result.summary, dict)
    assert result.summary["totals"]["n_buildings"] == len(result.buildings)
    assert len(result.summary["claim"]["verdicts"]) == 2
    assert result.change_mask.shape == result.grid.shape
    assert result.change_mask.dtype == np.uint8
    # Every labelled pixel is marked new in change.tif, and nothing else.
    np.testing.assert_array_equal(result.change_mask == 1, result.labels > 0)
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0
    assert calls[-1] == ("done", pytest.approx(1.0))
    assert set(result.timings) >= {"reading", "detecting", "measuring", "total"}
    # Stage-by-stage use: the evidence and labels are kept for the notebook.
    assert result.evidence.score.shape == result.grid.shape


def test_unknown_option_is_a_type_error(pair: dict[str, Path]) -> None:
    with pytest.raises(TypeError, match="claim_m"):
        changedet.detect(pair["before"], pair["after"], claim_m=1.0)


@pytest.mark.parametrize("options, message", [
    ({"min_area_m2": float("nan")}, "min_area_m2 must be a finite number"),
    ({"min_area_m2": -1.0}, "min_area_m2"),
    ({"site_gap_m": float("nan")}, "site_gap_m"),
    ({"site_gap_m": -1.0}, "site_gap_m"),
    ({"workers": 0}, "workers"),
    ({"workers": 1.5}, "whole number"),
    ({"window_px": 10}, "window_px"),
    ({"claim_m2": -5.0}, "claim_m2"),
    ({"claim_m2": float("nan")}, "claim_m2"),
    ({"claim_m2": "13000"}, "claim_m2 must be a number"),
    ({"claim_m2": 13000.0, "claim_tolerance": 1.0}, "claim_tolerance"),
    ({"claim_sites": 3}, "claim_sites needs claim_m2"),
    ({"bands": (0, 1, 2)}, "bands"),
    ({"nir_band": 0}, "nir_band"),
    ({"coreg": "affine"}, "unknown co-registration"),
    ({"claim_basis": "roof"}, "unknown claim basis"),
])
def test_option_values_the_command_line_refuses_are_refused_at_once(
        options: dict, message: str) -> None:
    """The API took NaN areas (0 buildings, then a NaN that summary.json could not
    hold), negative sizes, 0 workers and a 10 px window (3,600 windows) silently,
    and a bad claim only after the whole detection had run."""
    with pytest.raises(ValueError, match=message):
        changedet.DetectOptions(**options)
    with pytest.raises(ValueError, match=message):
        changedet.detect("never-read-before.tif", "never-read-after.tif", **options)


def test_quicklook_stretch() -> None:
    grid = Grid(CRS.from_epsg(32651), Affine(0.5, 0, 0, 0, -0.5, 0), 20, 30)
    image = np.stack([np.tile(np.arange(30, dtype=np.float32), (20, 1))] * 3) * 10
    valid = np.ones((20, 30), dtype=bool)
    valid[0, 0] = False
    look, limits = quicklook(Scene(image, valid, grid))
    assert limits.shape == (3, 2)
    np.testing.assert_array_equal(quicklook(Scene(image, valid, grid), limits)[0], look)
    assert look.shape == (20, 30, 3) and look.dtype == np.uint8
    assert look[0, 0].tolist() == [0, 0, 0]
    assert look[5, -1, 0] == 255 and look[5, 1, 0] < 20
    grey, _ = quicklook(Scene(image[:1], valid, grid))
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


def test_default_site_gap() -> None:
    assert default_site_gap_m(0.5) == 30.0 and default_site_gap_m(10.0) == 100.0


def test_sizes_in_metres_are_ground_metres_on_a_web_mercator_pair(tmp_path: Path) -> None:
    """A Web-Mercator pixel at 39° N covers 0.78 of its side on the ground: the
    minimum area, the morphology and summary.json's pixel size are in ground metres."""
    from changedet.pipeline import DetectOptions, run_detection
    from changedet.synth import SynthParams, write_synthetic_pair

    from .conftest import warp_geotiff

    pair = write_synthetic_pair(SynthParams.for_scenario("suburb", seed=0, size=400),
                                tmp_path / "utm")
    merc = {k: warp_geotiff(pair[k], tmp_path / f"{k}_3857.tif", "EPSG:3857")
            for k in ("before", "after")}
    with rasterio.open(merc["before"]) as ds:
        nominal = ds.res[0]
        centre_lat = ds.lnglat()[1]
    ground = nominal * np.cos(np.radians(centre_lat))
    min_area = 100.0
    result = run_detection(merc["before"], merc["after"],
                           DetectOptions(min_area_m2=min_area, window_px=None))
    assert result.summary["pixel_size_m"] == pytest.approx([ground, ground], rel=2e-3)
    assert result.summary["measurement_crs"].startswith("EPSG:326")
    areas = [b.area_m2 for b in result.buildings]
    assert areas  # else this test proves nothing
    # The minimum counts pixels, the area is of the simplified outline: a pixel's
    # band of slack, not the 1/cos²(39°) = 1.66 times a Mercator pixel count gives.
    assert min(areas) > 0.9 * min_area



@pytest.mark.slow
def test_a_larger_minimum_area_drops_only_the_smaller_buildings() -> None:
    """--min-area-m2 filters the buildings reported: it must not drop the facets a
    larger building is made of (5000 m² used to lose a 13,324 m² residence, and
    14000 m² the 14,443 m² one)."""
    from changedet.pipeline import DetectOptions, run_detection

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "compound"
    pair = (fixture / "before.tif", fixture / "after.tif")
    base = run_detection(*pair, DetectOptions())
    assert base.summary["parameters"]["min_area_m2_used"] == 36.0  # 36 px of 1 m
    areas = sorted(b.area_m2 for b in base.buildings)
    assert len(areas) == 3
    for min_area in (5000.0, 14000.0):
        run = run_detection(*pair, DetectOptions(min_area_m2=min_area))
        assert sorted(b.area_m2 for b in run.buildings) == \
            pytest.approx([a for a in areas if a >= min_area], rel=1e-9)
        assert run.summary["parameters"]["min_area_m2_used"] == min_area


@pytest.mark.slow
def test_a_roof_joined_to_the_ground_beside_it_by_resampling_is_split_off(
        tmp_path: Path) -> None:
    """The fixture's after scene delivered in EPSG:4326 (cubic): a blurred stretch of
    residence 2's outline joined its colour region to the earth beside it, judged a
    roof at 0.52 and measured 18,934 m² instead of about 14,440. Split along fainter
    edges, the roof is itself again."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    from changedet.pipeline import DetectOptions, run_detection

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "compound"
    with rasterio.open(fixture / "after.tif") as src, warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # rasterio's own `*`
        data, profile = src.read(), src.profile
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds)
    warped = np.zeros((data.shape[0], height, width), data.dtype)
    reproject(data, warped, src_transform=profile["transform"], src_crs=profile["crs"],
              dst_transform=transform, dst_crs="EPSG:4326", resampling=Resampling.cubic,
              src_nodata=None, dst_nodata=0)
    profile.update(crs="EPSG:4326", transform=transform, width=width, height=height,
                   nodata=0)
    with rasterio.open(tmp_path / "after_4326.tif", "w", **profile) as dst:
        dst.write(warped)
    opts = DetectOptions(window_px=None)
    delivered = run_detection(fixture / "before.tif", fixture / "after.tif", opts)
    reprojected = run_detection(fixture / "before.tif", tmp_path / "after_4326.tif", opts)
    assert sorted(b.area_m2 for b in reprojected.buildings) == pytest.approx(
        sorted(b.area_m2 for b in delivered.buildings), rel=0.01)


def test_each_run_records_its_own_warnings_and_its_pools_tasks() -> None:
    """What a run warns about goes into its summary, also from the tasks of its thread
    pools, and nothing said outside it: not even by another run under way at the same
    time in another thread (two detections at once in a notebook)."""
    import threading

    from changedet._log import RunThreadPool, recorded_warnings, warn_analyst

    warn_analyst("before the runs")
    both_running = threading.Barrier(2)
    records: dict[str, list[str]] = {}

    def run(name: str) -> None:
        with recorded_warnings() as warned:
            both_running.wait()
            warn_analyst("%s covers only %.0f %%", name, 40.0)
            with RunThreadPool(2) as pool:
                list(pool.map(lambda k: warn_analyst("%s: window %d", name, k), range(4)))
            both_running.wait()
        records[name] = warned

    runs = [threading.Thread(target=run, args=(name,)) for name in ("a.tif", "b.tif")]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    warn_analyst("after the runs")
    for name in ("a.tif", "b.tif"):
        assert records[name][0] == f"{name} covers only 40 %"
        assert sorted(records[name][1:]) == [f"{name}: window {k}" for k in range(4)]
    # A run within a run: both record.
    with recorded_warnings() as outer:
        with recorded_warnings() as inner:
            warn_analyst("inner")
        warn_analyst("outer")
    assert inner == ["inner"] and outer == ["inner", "outer"]


def _unreliable_shift(before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> object:
    """An estimate_shift that finds (3, 4) px with reliability 0.1, spread 0.5 px: judged
    unreliable, and not applied."""
    from changedet import coregister
    from changedet.coregister import Registration

    return coregister._guard(Registration("global", (3.0, 4.0), 0.1, 2, Affine.identity(),
                                          0.5, False, [], 25))


def _same_buildings_wider_ranges(unapplied: DetectionResult, aligned: DetectionResult) -> None:
    """The same buildings, each with a range more than 5 times as wide (5.5 px of
    misregistration against none, on top of half a pixel)."""
    assert unapplied.buildings
    assert [b.area_m2 for b in unapplied.buildings] == [b.area_m2 for b in aligned.buildings]
    for wide, narrow in zip(unapplied.buildings, aligned.buildings):
        assert wide.area_m2_max - wide.area_m2_min > 5 * (narrow.area_m2_max - narrow.area_m2_min)


def test_an_unreliable_shift_left_unapplied_widens_the_area_bounds(
        pair: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # The scenes stay as far apart as the shift it measured and did not apply, so each
    # outline is that much less certain than when the pair is taken as aligned.
    from changedet import coregister

    monkeypatch.setattr(coregister, "estimate_shift", _unreliable_shift)
    unapplied = changedet.detect(pair["before"], pair["after"])
    reg = unapplied.summary["coregistration"]
    assert reg["low_reliability"] and not reg["applied"]
    assert reg["misregistration_px"] == pytest.approx(5.5)
    # Taken as aligned: the same buildings (the same pair, fitted alike), narrower ranges.
    aligned = changedet.detect(pair["before"], pair["after"], coreg="none")
    assert aligned.evidence.fit.changed_share == unapplied.evidence.fit.changed_share
    assert aligned.summary["coregistration"]["misregistration_px"] == 0.0
    _same_buildings_wider_ranges(unapplied, aligned)


def _unreliable_shift_checked(before: np.ndarray, after: np.ndarray,
                              valid: np.ndarray) -> object:
    """:func:`_unreliable_shift`, checked against the structure the dates share."""
    from changedet.coregister import check_unreliable

    return check_unreliable(_unreliable_shift(before, after, valid), before, after, valid)


def test_an_unreliable_shift_is_checked_by_the_structure_the_dates_share(
        pair: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # The check finds the pair's own misregistration (to the pixel), not the 5 px the
    # unreliable estimate made up: the ranges widen by that alone, and the structure
    # of dates that far apart is not compared.
    from changedet import coregister
    from changedet.measure import area_bounds
    from changedet.synth import SynthParams, make_synthetic_pair

    aligned = changedet.detect(pair["before"], pair["after"], coreg="none")
    monkeypatch.setattr(coregister, "estimate_shift", _unreliable_shift_checked)
    checked = changedet.detect(pair["before"], pair["after"])
    reg = checked.summary["coregistration"]
    assert reg["low_reliability"] and not reg["applied"] and reg["alignment"]["measured"]
    true_shift = make_synthetic_pair(SynthParams.for_scenario("suburb", seed=1,
                                                              size=320)).shift_px
    offset = reg["alignment"]["offset_px"]
    assert np.abs(np.subtract(offset, true_shift)).max() <= 0.5
    assert np.abs(np.subtract(reg["alignment"]["shift_px"], true_shift)).max() <= 0.25
    assert reg["misregistration_px"] == pytest.approx(
        np.hypot(*reg["alignment"]["shift_px"]) + reg["alignment"]["precision_px"], abs=2e-3)
    assert checked.buildings
    pixel_m = max(checked.summary["pixel_size_m"])  # square pixels
    assert pixel_m == min(checked.summary["pixel_size_m"])
    # The dates lie further apart than the metre at which their structure is
    # compared: it is not (taken as aligned, it is, and reads as changed).
    assert reg["misregistration_px"] > 1.0 / pixel_m
    assert checked.evidence.fit.changed_share is None
    assert aligned.evidence.fit.changed_share is not None
    for b in checked.buildings:
        assert (b.area_m2_min, b.area_m2_max) == pytest.approx(
            area_bounds(b.polygon, pixel_m, reg["misregistration_px"]), rel=1e-3)


def test_dates_that_share_no_structure_leave_the_ranges_to_the_half_pixel(
        pair: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet import coregister
    from changedet.coregister import AlignmentCheck

    aligned = changedet.detect(pair["before"], pair["after"], coreg="none")
    monkeypatch.setattr(coregister, "estimate_shift", _unreliable_shift_checked)
    monkeypatch.setattr(coregister, "check_alignment",
                        lambda before, after, valid: AlignmentCheck((9, -20), 3.1, 32, 5.1,
                                                                     (9.2, -20.1), 0.7))
    unmeasured = changedet.detect(pair["before"], pair["after"])
    reg = unmeasured.summary["coregistration"]
    assert reg["misregistration_px"] is None and not reg["alignment"]["measured"]
    assert any("share no structure" in w for w in unmeasured.summary["warnings"])
    assert [(b.area_m2_min, b.area_m2_max) for b in unmeasured.buildings] == \
        [(b.area_m2_min, b.area_m2_max) for b in aligned.buildings]
    from changedet.report import render_report

    page = render_report(unmeasured)
    assert "not measurable" in page and "[9.2, -20.1] ± 0.7" in page
    assert "no more than chance" in page


def test_a_scene_that_mostly_changed_is_named_in_the_warnings(
        pair: dict[str, Path], tmp_path: Path, textured_image) -> None:
    # The colour normalisation needs an unchanged majority: where the ground's
    # structure changed over most of the scene the analyst is told so.
    from .conftest import write_geotiff

    before = textured_image(600, 600, bands=3, seed=11)
    after = before.copy()
    after[:, :, 120:] = textured_image(600, 600, bands=3, seed=12)[:, :, 120:]
    paths = {name: write_geotiff(tmp_path / f"{name}.tif", data)
             for name, data in (("before", before), ("after", after))}
    # With the default co-registration, which most of the scene changed defeats (its
    # estimate is judged unreliable and left unapplied): the pair is compared as it is.
    changed = changedet.detect(paths["before"], paths["after"])
    assert any("differs between the dates" in w for w in changed.summary["warnings"])
    assert changed.evidence.fit.changed_share > 0.5
    # Windowed, from the first pass's strips.
    windowed = changedet.detect(paths["before"], paths["after"], window_px=256)
    assert windowed.summary["parameters"]["windows"]["n"] > 1
    assert any("differs between the dates" in w for w in windowed.summary["warnings"])
    usual = changedet.detect(pair["before"], pair["after"])
    assert not any("differs between the dates" in w for w in usual.summary["warnings"])
    # The appearance detector does not normalise colours: no such warning.
    judged_alone = changedet.detect(paths["before"], paths["after"], coreg="none",
                                    detector="appearance")
    assert not any("differs between the dates" in w for w in judged_alone.summary["warnings"])


def test_input_paths_are_recorded_absolute_unless_gdal_names_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet.pipeline import _input_path

    (tmp_path / "aoi.gpkg").write_bytes(b"")
    (tmp_path / "shapefiles").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _input_path("aoi.gpkg") == str(tmp_path / "aoi.gpkg")
    assert _input_path("shapefiles") == str(tmp_path / "shapefiles")
    for name in ("GTIFF_DIR:1:x.tif", 'NETCDF:"f.nc":var', "/vsicurl/https://h/x.tif",
                 "s3://bucket/x.tif", "/already/absolute.tif"):
        assert _input_path(name) == name
    assert _input_path(None) is None


def test_a_windowed_run_widens_the_area_bounds_by_an_unapplied_shift_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet import coregister
    from changedet.synth import SynthParams, write_synthetic_pair

    paths = write_synthetic_pair(SynthParams.for_scenario("suburb", seed=3, size=560),
                                 tmp_path / "p")
    aligned = changedet.detect(paths["before"], paths["after"], coreg="none", window_px=256)

    monkeypatch.setattr(coregister, "estimate_shift", _unreliable_shift)
    unapplied = changedet.detect(paths["before"], paths["after"], window_px=256)
    assert unapplied.summary["parameters"]["windows"]["n"] > 1
    assert unapplied.summary["coregistration"]["misregistration_px"] == pytest.approx(5.5)
    _same_buildings_wider_ranges(unapplied, aligned)


def _display_copy(change: np.ndarray, factor: int, tmp_path: Path) -> tuple[np.ndarray, ...]:
    """``pipeline._decimated_change`` of ``change`` written as a tiled GeoTIFF, and
    what it must be: per block of ``factor`` pixels, 1 if any is new building, 255 if
    all are nodata (the blocks beyond the raster's edge included), 0 otherwise."""
    from changedet.pipeline import _decimated_change

    height, width = change.shape
    path = tmp_path / "change.tif"
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=1,
                       dtype="uint8", nodata=255, crs="EPSG:32651",
                       transform=Affine(1, 0, 500000, 0, -1, 4000000), tiled=True,
                       blockxsize=256, blockysize=256) as dst:
        dst.write(change, 1)
    shape = (-(-height // factor), -(-width // factor))
    padded = np.full((shape[0] * factor, shape[1] * factor), 255, np.uint8)
    padded[:height, :width] = change
    blocks = padded.reshape(shape[0], factor, shape[1], factor)
    want = np.where((blocks == 1).any(axis=(1, 3)), 1,
                    np.where((blocks == 255).all(axis=(1, 3)), 255, 0))
    return _decimated_change(str(path), factor, shape), want


def test_the_display_copy_of_change_keeps_every_new_pixel(tmp_path: Path) -> None:
    # A coarse pixel is new building if any of its block is, nodata only if all are;
    # a lone new pixel must survive a block of 8 x 8 (an average rounds it away).
    rng = np.random.default_rng(3)
    change = (rng.random((203, 150)) < 0.002).astype(np.uint8)
    change[:40, :] = 255
    change[10, 20] = 1  # a lone new pixel beside nodata
    out, want = _display_copy(change, 8, tmp_path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, want)
    assert out[1, 2] == 1 and out[0, 0] == 255 and (out == 0).any()


def test_the_display_copy_of_change_is_read_strip_by_strip_alike(tmp_path: Path) -> None:
    # Wide enough that the raster is read in several strips (about 4 MB each).
    rng = np.random.default_rng(4)
    change = np.where(rng.random((300, 16384 + 5)) < 0.001, 1, 0).astype(np.uint8)
    change[:, :700] = 255
    out, want = _display_copy(change, 8, tmp_path)
    assert (1 << 22) // (out.shape[1] * 8 * 8) < out.shape[0]  # several strips
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("fraction, shown", [(0.0028, "0.28 %"), (0.04, "4 %"),
                                             (0.4, "40 %")])
def test_a_small_overlap_is_not_rounded_to_none(fraction: float, shown: str) -> None:
    """A 64 px after scene inside a 1200 px before scene covers 0.28 % of it: the
    warning said "0 %", which reads as no overlap at all."""
    from changedet._log import recorded_warnings
    from changedet.pipeline import _warn_partial_overlap

    with recorded_warnings() as warned:
        _warn_partial_overlap("b.tif", "a.tif", fraction)
    assert warned == [f"a.tif covers only {shown} of b.tif: buildings outside the overlap "
                      "cannot be found, and a claimed site there is reported as not found"]


def test_detect_options_take_an_array_of_bands() -> None:
    from changedet.pipeline import DetectOptions

    assert DetectOptions(bands=np.array([3, 2, 1])).bands == (3, 2, 1)
    with pytest.raises(ValueError, match="given more than once"):
        DetectOptions(bands=np.array([1, 1, 2]))


def test_an_aoi_given_as_a_geometry_is_refused_at_once(tmp_path) -> None:
    """A shapely AOI has no CRS to place it by; it was accepted here and failed
    minutes later inside the run with a TypeError."""
    import shapely

    from changedet.pipeline import DetectOptions

    with pytest.raises(ValueError, match="aoi must be the path of a vector file"):
        DetectOptions(aoi=shapely.box(0, 0, 1, 1))
    assert DetectOptions(aoi=tmp_path / "aoi.geojson").aoi == tmp_path / "aoi.geojson"


def test_results_print_short_in_a_notebook(pair: dict[str, Path]) -> None:
    """A notebook prints what a cell returns: a result printed every array and
    polygon (12,500 characters), a grid a page of WKT for a CRS without EPSG code."""
    from changedet.raster import Grid, read_scene

    result = changedet.detect(pair["before"], pair["after"], claim_m2=500.0)
    text = repr(result)
    assert len(text) < 400 and text.startswith(f"DetectionResult({len(result.buildings)} ")
    assert "claim" in text and "EPSG:" in text
    scene = read_scene(pair["before"])
    assert len(repr(scene)) < 300 and "(3, 320, 320)" in repr(scene)
    custom = rasterio.crs.CRS.from_wkt(scene.grid.crs.to_wkt().replace("AUTHORITY", "X"))
    assert len(repr(Grid(custom, scene.grid.transform, 10, 10))) < 200


def test_a_windowed_result_pickles_with_its_change_mask(pair: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """A windowed run's mask is a scratch file that goes with the result: a copy
    through pickle pointed at the original's file, gone once the original was."""
    import gc
    import pickle

    from changedet.outputs import write_outputs

    result = changedet.detect(pair["before"], pair["after"], window_px=128, workers=1)
    assert result.change_mask is None and result.summary["parameters"]["windows"]["n"] > 1
    mask = result.read_change_mask()
    assert (mask == 1).any()
    again = pickle.loads(pickle.dumps(result))
    assert again.change_path != result.change_path
    del result
    gc.collect()
    np.testing.assert_array_equal(again.read_change_mask(), mask)
    write_outputs(again, tmp_path / "o")
    with rasterio.open(tmp_path / "o" / "change.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), mask)


def test_a_whole_scene_result_pickles_with_its_evidence(pair: dict[str, Path]) -> None:
    """A notebook caches results (joblib) or sends them between processes: the
    evidence's statistics held closures, which pickle cannot carry."""
    import pickle

    result = changedet.detect(pair["before"], pair["after"])
    assert result.evidence is not None  # a whole-scene run (else this proves nothing)
    again = pickle.loads(pickle.dumps(result))
    assert [b.area_m2 for b in again.buildings] == [b.area_m2 for b in result.buildings]
    assert again.summary == result.summary
    assert again.evidence.statistics.values == result.evidence.statistics.values
    np.testing.assert_array_equal(again.labels, result.labels)
