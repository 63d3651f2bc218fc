"""Windowed detection: the windows tile the scene, and stitched == whole, exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine

from changedet.change import DetectionParams
from changedet.pipeline import DetectOptions, _overlap_grid, run_detection
from changedet.raster import analysis_grid, read_header
from changedet.windowed import (CellMeans, WindowTask, cell_sums, context_px, first_pass,
                                merge_boxes, plan_windows, run_windows,
                                thread_runner)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "compound"


def test_windows_tile_the_grid() -> None:
    shape = (1000, 730)
    windows = plan_windows(shape, 300, 40)
    cover = np.zeros(shape, int)
    for w in windows:
        cover[w.row0:w.row1, w.col0:w.col1] += 1
        assert w.pad_row0 == max(0, w.row0 - 40) and w.pad_col1 == min(730, w.col1 + 40)
        assert max(w.row1 - w.row0, w.col1 - w.col0) <= 300
    assert (cover == 1).all()


def test_cell_means_of_blocks_equal_the_block_means_of_the_whole_image() -> None:
    """The display images of a windowed run are summed window by window: blocks whose
    edges cut the display cells must add up to the means of the whole image."""
    rng = np.random.default_rng(4)
    shape, factor = (100, 73), 3
    images = [rng.uniform(0, 255, (2,) + shape).astype(np.float32) for _ in range(2)]
    valids = [rng.uniform(size=shape) > 0.3, np.ones(shape, bool)]
    valids[1][:, :7] = False  # whole cells without a valid pixel
    means = CellMeans((34, 25), 2)
    for w in plan_windows(shape, 40, 0):
        core = (slice(w.row0, w.row1), slice(w.col0, w.col1))
        means.add(cell_sums([im[(slice(None),) + core] for im in images],
                            [v[core] for v in valids], w.row0, w.col0, factor))
    for k in range(2):
        mean, valid = means.date(k)
        for i in range(34):
            for j in range(25):
                cell = (slice(i * factor, (i + 1) * factor), slice(j * factor, (j + 1) * factor))
                inside = valids[k][cell]
                assert valid[i, j] == inside.any()
                if inside.any():
                    np.testing.assert_allclose(mean[:, i, j], images[k][:, cell[0], cell[1]][:, inside]
                                               .mean(axis=1), rtol=1e-5)
                else:
                    assert (mean[:, i, j] == 0).all()


def test_first_pass_fits_the_radiometry_a_whole_run_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windowed and whole-scene runs must normalise with the same fit: a sample small
    enough that the fixture is fitted on strips of it, read window by window."""
    from changedet import radiometry
    from changedet.coregister import coregister
    from changedet.raster import align_pair, read_scene

    monkeypatch.setattr(radiometry, "FIT_SAMPLE_PX", 100_000)
    hb = read_header(FIXTURE / "before.tif")
    ha = read_header(FIXTURE / "after.tif")
    grid, _ = _overlap_grid(analysis_grid(hb.grid), hb, ha)
    first = first_pass(hb, ha, grid, "global", False, DetectionParams())
    pair, _ = coregister(align_pair(read_scene(FIXTURE / "before.tif"),
                                    read_scene(FIXTURE / "after.tif")))
    assert pair.grid.shape == grid.shape
    valid = pair.before.valid & pair.after.valid
    patches = radiometry.fit_patches(valid.shape)
    assert len(patches) == radiometry.MIN_FIT_STRIPS
    whole = radiometry.fit_radiometry(pair.before.image, pair.after.image, valid,
                                      keep_weight=False, patches=patches)
    np.testing.assert_array_equal(first.fit.knots_after, whole.knots_after)
    np.testing.assert_array_equal(first.fit.knots_before, whole.knots_before)


def test_first_pass_fits_a_reprojected_pair_on_the_pixels_a_whole_run_fits(
        tmp_path: Path) -> None:
    """An after scene delivered in EPSG:4326: once corrected by the shift, a strip
    along its collar is valid. The whole-scene path also required validity before
    the correction, so it fitted fewer pixels and another radiometric map."""
    from changedet import radiometry
    from changedet.coregister import coregister
    from changedet.raster import align_pair, read_scene

    from .conftest import warp_geotiff

    after = warp_geotiff(FIXTURE / "after.tif", tmp_path / "after_4326.tif", "EPSG:4326")
    hb, ha = read_header(FIXTURE / "before.tif"), read_header(after)
    grid, _ = _overlap_grid(analysis_grid(hb.grid), hb, ha)
    first = first_pass(hb, ha, grid, "global", False, DetectionParams())
    pair, reg = coregister(align_pair(read_scene(FIXTURE / "before.tif"), read_scene(after)))
    assert reg.applied and pair.grid == grid
    valid = pair.before.valid & pair.after.valid
    whole = radiometry.fit_radiometry(pair.before.image, pair.after.image, valid,
                                      keep_weight=False,
                                      patches=radiometry.fit_patches(valid.shape))
    np.testing.assert_array_equal(first.fit.knots_after, whole.knots_after)
    np.testing.assert_array_equal(first.fit.knots_before, whole.knots_before)


@pytest.mark.parametrize("method", ["global", "local"])
def test_first_pass_registers_a_pair_with_a_nodata_collar_as_a_whole_run_does(
        tmp_path: Path, method: str) -> None:
    """The windowed grid keeps a nodata collar that the whole-scene path crops away:
    the shift must still be measured on the same pixels, not on windows moved and
    rejected by the collar (0.08 px apart on a pair reprojected from EPSG:4326), and
    a local affine carried from the chip to the grid the right way."""
    from changedet.coregister import coregister
    from changedet.raster import align_pair, read_scene

    from .conftest import write_geotiff

    paths = {}
    for name in ("before", "after"):
        with rasterio.open(FIXTURE / f"{name}.tif") as src:
            data, transform, crs = src.read(), src.transform, src.crs.to_string()
        data[:, :, :170] = 0
        data[:, :130, :] = 0
        paths[name] = write_geotiff(tmp_path / f"{name}.tif", data, crs, transform, nodata=0)
    hb, ha = read_header(paths["before"]), read_header(paths["after"])
    grid, _ = _overlap_grid(analysis_grid(hb.grid), hb, ha)
    first = first_pass(hb, ha, grid, method, False, DetectionParams())
    pair, whole = coregister(align_pair(read_scene(paths["before"]),
                                        read_scene(paths["after"])), method=method)
    assert grid.shape != pair.grid.shape  # the collar is in the windowed grid only
    assert whole.method == method and whole.applied
    assert first.registration.shift_px == whole.shift_px
    assert first.registration.reliability == whole.reliability
    # The correction, on each path's own grid, moves the same ground the same way.
    for col, row in ((0.0, 0.0), (900.0, 0.0), (0.0, 1000.0), (900.0, 1000.0)):
        x0, y0 = first.registration.correction @ (col + 170.0, row + 130.0)
        x1, y1 = whole.correction @ (col, row)
        assert (x0 - 170.0, y0 - 130.0) == pytest.approx((x1, y1), abs=1e-6)


def test_local_coregistration_of_a_large_grid_uses_tie_points_spread_over_it(
        monkeypatch: pytest.MonkeyPatch, geotiff, textured_image) -> None:
    """A rotated and scaled after scene: the affine from chips spread over the grid
    must hold at its far corners, not only near the centre."""
    import changedet.coregister as coregister
    from scipy import ndimage

    monkeypatch.setattr(coregister, "COREG_CHIP_PX", 600)
    monkeypatch.setattr(coregister, "LOCAL_CHIP_PX", 400)
    before = textured_image(1500, 1500, seed=3)
    # after(q) = before(inverse(q)), with a 0.3 degree rotation, a 0.2 % scale and a
    # shift: in (row, col) pixel coordinates, before = m @ after + offset.
    t = np.radians(0.3)
    m = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) / 1.002
    offset = np.array([2.4, -1.7])
    after = np.stack([ndimage.affine_transform(b.astype(np.float32), m, offset, order=1,
                                               mode="nearest") for b in before])
    b_path = geotiff("before.tif", before)
    a_path = geotiff("after.tif", np.clip(after, 0, 255).astype(np.uint8))
    hb, ha = read_header(b_path), read_header(a_path)
    grid, _ = _overlap_grid(analysis_grid(hb.grid), hb, ha)
    first = first_pass(hb, ha, grid, "local", False, DetectionParams())
    reg = first.registration
    assert reg.method == "local" and reg.applied and len(reg.windows) >= 40
    inverse = np.linalg.inv(m)
    for row, col in ((0, 0), (0, 1499), (1499, 0), (1499, 1499), (750, 750)):
        # The after pixel showing before pixel (row, col).
        true_row, true_col = inverse @ (np.array([row, col], float) - offset)
        x, y = reg.correction @ (col + 0.5, row + 0.5)
        assert abs(x - 0.5 - true_col) < 0.3 and abs(y - 0.5 - true_row) < 0.3


def test_a_failed_local_coregistration_of_a_large_grid_is_checked(
        monkeypatch: pytest.MonkeyPatch, geotiff, textured_image) -> None:
    """Unrelated dates: no affine among the tie points, and no structure in common,
    which the check on the central chip reports."""
    import changedet.coregister as coregister

    monkeypatch.setattr(coregister, "COREG_CHIP_PX", 600)
    monkeypatch.setattr(coregister, "LOCAL_CHIP_PX", 400)
    b_path = geotiff("before.tif", textured_image(1500, 1500, seed=3))
    a_path = geotiff("after.tif", textured_image(1500, 1500, seed=4))
    hb, ha = read_header(b_path), read_header(a_path)
    grid, _ = _overlap_grid(analysis_grid(hb.grid), hb, ha)
    reg = first_pass(hb, ha, grid, "local", False, DetectionParams()).registration
    assert reg.method == "local" and reg.low_reliability and not reg.applied
    assert reg.alignment is not None and not reg.alignment.measured
    assert reg.misregistration_px is None and reg.range_residual_px == 0.0


@pytest.mark.parametrize("pixel_m", [0.05, 0.1, 0.3, 0.5, 0.7, 1.0, 2.0, 5.0])
def test_the_untrusted_rim_holds_the_appearance_boxes(pixel_m: float) -> None:
    """The appearance check and the completion of roofs judge a region or building on
    its box with CONFIRM_MARGIN_M around it: a group clear of a window's rim has that
    box inside the window, so the window answers as the whole scene does."""
    from changedet.appearance import CONFIRM_MARGIN_M

    margin, _ = context_px(pixel_m, DetectionParams())
    assert margin >= int(np.ceil(CONFIRM_MARGIN_M / pixel_m)) + 1


def test_merge_boxes() -> None:
    boxes = [(0, 0, 10, 10), (5, 5, 20, 20), (30, 30, 40, 40), (19, 19, 31, 31), (50, 0, 60, 5)]
    assert merge_boxes(boxes) == [(0, 0, 40, 40), (50, 0, 60, 5)]
    # Unions wider than a window are not made: retries stay window-sized.
    assert merge_boxes(boxes, max_side=25) == [(0, 0, 20, 20), (19, 19, 40, 40),
                                                (50, 0, 60, 5)]


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The committed fixture detected as one window and as four windows whose seams
    cut through the residences, with a halo so thin that the cut groups need retries."""
    hb = read_header(FIXTURE / "before.tif")
    ha = read_header(FIXTURE / "after.tif")
    grid, _ = _overlap_grid(analysis_grid(hb.grid), hb, ha)
    params = DetectionParams()
    first = first_pass(hb, ha, grid, "global", False, params)
    params = replace(params, fit=first.fit)
    correction = first.registration.correction if first.registration.applied else Affine.identity()
    margin, group = context_px(float(np.sqrt(grid.pixel_area)), params)
    out = {}
    for name, window_px, halo in (("whole", max(grid.shape), 0), ("windows", 600, margin + 8)):
        windows = plan_windows(grid.shape, window_px, halo)
        task = WindowTask(hb, ha, grid, windows[0], correction, False, params,
                          dict(first.statistics.values), margin, group)
        path = tmp_path_factory.mktemp(name) / "change.tif"
        progress: list[float] = []
        res = run_windows(task, windows, halo, thread_runner(2), str(path), 3000,
                          progress=progress.append)
        with rasterio.open(path) as ds:
            out[name] = (res, ds.read(1))
        out[f"{name} progress"] = progress
    return out


@pytest.mark.slow
def test_progress_moves_through_the_retries(fixture_runs: dict) -> None:
    """The progress stood still at the end of the main pass while the retry windows
    ran (7.9 s of a 21.9 s run in a review's case)."""
    from changedet.windowed import MAIN_PASS_SHARE

    windowed = fixture_runs["windows"][0]
    progress = fixture_runs["windows progress"]
    assert windowed.n_retries >= 1
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert sum(MAIN_PASS_SHARE < v < 1.0 for v in progress) >= windowed.n_retries


@pytest.mark.slow
def test_stitched_windows_equal_the_whole_scene(fixture_runs: dict) -> None:
    whole, whole_mask = fixture_runs["whole"]
    windowed, windowed_mask = fixture_runs["windows"]
    assert windowed.n_windows == 4 and whole.n_windows == 1
    assert windowed.n_retries >= 1  # the seams cut groups: stitching was exercised
    assert windowed.cut_groups == 0
    assert len(whole.buildings) >= 3
    a = {b.first: b for b in whole.buildings}
    b = {b.first: b for b in windowed.buildings}
    assert a.keys() == b.keys()
    for key in a:
        assert b[key].polygon.area == pytest.approx(a[key].polygon.area, rel=1e-9)
        assert b[key].polygon.symmetric_difference(a[key].polygon).area < 1e-6
        assert b[key].score == pytest.approx(a[key].score, rel=1e-6)
    np.testing.assert_array_equal(windowed_mask, whole_mask)
    assert (whole_mask == 1).any()


@pytest.mark.slow
def test_a_scene_of_several_chips_is_measured_alike_whole_and_in_windows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths register on the same central chip and pool the statistics of the
    same chips, so that a scene larger than a chip (the fixture, with the chips made
    smaller) gives the same buildings whole and in windows. Measured on all its
    pixels, a 2400 px compound pair registered 0.03 px apart and gave 13 buildings
    whole against 5 in windows."""
    import changedet.change as change
    import changedet.coregister as coregister

    monkeypatch.setattr(change, "CHIP_PX", 500)
    monkeypatch.setattr(coregister, "COREG_CHIP_PX", 800)
    runs = {name: run_detection(FIXTURE / "before.tif", FIXTURE / "after.tif",
                                DetectOptions(window_px=window_px))
            for name, window_px in (("whole", None), ("windows", 600))}
    whole, windowed = runs["whole"], runs["windows"]
    assert windowed.summary["parameters"]["windows"]["n"] == 4
    assert windowed.summary["parameters"]["windows"]["sample_chips"] == 4
    assert whole.registration["shift_px"] == windowed.registration["shift_px"]
    assert (whole.summary["parameters"]["threshold"]
            == windowed.summary["parameters"]["threshold"])
    assert len(whole.buildings) >= 3
    assert len(windowed.buildings) == len(whole.buildings)
    for a, b in zip(whole.buildings, windowed.buildings):
        assert b.area_m2 == pytest.approx(a.area_m2, rel=1e-9)
        assert b.polygon.symmetric_difference(a.polygon).area < 1e-6


def test_a_scene_of_several_chips_with_a_nodata_collar_is_measured_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole-scene path crops a nodata collar away; windowed runs cropped only to
    the footprints, so that their sample chips fell elsewhere: a 2400 px compound
    pair with a collar gave 11 buildings whole against 12 in windows, a residence
    5 % apart, other sites and verdicts."""
    import changedet.change as change
    import changedet.coregister as coregister

    from .conftest import write_geotiff

    monkeypatch.setattr(change, "CHIP_PX", 500)
    monkeypatch.setattr(coregister, "COREG_CHIP_PX", 800)
    paths = {}
    for name in ("before", "after"):
        with rasterio.open(FIXTURE / f"{name}.tif") as src:
            data, transform, crs = src.read(), src.transform, src.crs.to_string()
        if name == "before":
            data[:, :, :150] = 0
            data[:, 1100:, :] = 0
        paths[name] = write_geotiff(tmp_path / f"{name}.tif", data, crs, transform, nodata=0)
    runs = {name: run_detection(paths["before"], paths["after"],
                                DetectOptions(window_px=window_px))
            for name, window_px in (("whole", None), ("windows", 600))}
    whole, windowed = runs["whole"], runs["windows"]
    assert windowed.summary["parameters"]["windows"]["sample_chips"] > 1
    assert whole.registration["shift_px"] == windowed.registration["shift_px"]
    assert (whole.summary["parameters"]["threshold"]
            == windowed.summary["parameters"]["threshold"])
    assert whole.summary["overlap_fraction"] == pytest.approx(
        windowed.summary["overlap_fraction"], abs=1e-9)
    assert len(whole.buildings) >= 3
    assert len(windowed.buildings) == len(whole.buildings)
    for a, b in zip(whole.buildings, windowed.buildings):
        assert b.area_m2 == pytest.approx(a.area_m2, rel=1e-9)


def _pair(tmp_path: Path) -> dict[str, Path]:
    from changedet.synth import SynthParams, write_synthetic_pair

    return write_synthetic_pair(SynthParams.for_scenario("suburb", seed=2, size=400),
                                tmp_path / "p")


def test_windowed_run_writes_the_contract_outputs(tmp_path: Path) -> None:
    from changedet.outputs import CHANGE_COLOURS, OUTPUT_FILES, write_outputs

    from changedet.pipeline import DetectOptions

    pair = _pair(tmp_path)
    result = run_detection(pair["before"], pair["after"], DetectOptions(window_px=256))
    assert result.change_mask is None and result.summary["parameters"]["windows"]["n"] == 4
    assert len(result.buildings) >= 3
    mask = result.read_change_mask()
    assert mask.shape == result.grid.shape
    paths = write_outputs(result, tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == sorted(OUTPUT_FILES)
    with rasterio.open(paths["change.tif"]) as ds:
        assert ds.profile["nodata"] == 255 and ds.tags(1)["CLASSES"].startswith("0=")
        assert ds.colormap(1)[1][:3] == CHANGE_COLOURS[1]
        assert ds.descriptions[0].startswith("new building")
        written = ds.read(1)
    np.testing.assert_array_equal(written, mask)
    summary = json.loads(paths["summary.json"].read_text())
    assert summary["totals"]["n_buildings"] == len(result.buildings)
    # The display images, summed from the windows at full resolution (a scene this
    # small is not decimated), are those of the whole-scene run.
    whole = run_detection(pair["before"], pair["after"], DetectOptions(window_px=4096))
    assert whole.change_mask is not None
    for date in ("before", "after"):
        np.testing.assert_array_equal(result.quicklooks[date], whole.quicklooks[date])
    # Every building's pixels are new building in change.tif.
    from rasterio.features import geometry_mask

    for b in result.buildings:
        inside = geometry_mask([b.polygon.buffer(-0.6)], out_shape=mask.shape,
                               transform=result.grid.transform, invert=True)
        assert (mask[inside] == 1).all()


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_outputs(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with the inputs named relative to the client's folder, which is not the
    workers' (they read another file, and its InputError came back as "internal
    error")."""
    import distributed
    from changedet.pipeline import DetectOptions

    pair = _pair(tmp_path)
    local = run_detection(pair["before"], pair["after"], DetectOptions(window_px=256))
    # A free port for the scheduler's web server: with no address it takes 8787 even
    # without a dashboard, and fails when another cluster on the machine has it.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        monkeypatch.chdir(tmp_path)
        remote = run_detection(pair["before"].relative_to(tmp_path),
                               pair["after"].relative_to(tmp_path), DetectOptions(
                                   window_px=256, dask_scheduler=cluster.scheduler_address))
    assert len(local.buildings) >= 3
    assert len(remote.buildings) == len(local.buildings)
    for x, y in zip(local.buildings, remote.buildings):
        assert x.area_m2 == pytest.approx(y.area_m2, rel=1e-9)
        assert x.polygon.equals_exact(y.polygon, 1e-6)
    np.testing.assert_array_equal(remote.read_change_mask(), local.read_change_mask())


def _window_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every window's detection warns "a window's own warning" first."""
    import changedet.windowed as windowed
    from changedet._log import warn_analyst

    detect = windowed.detect_new_buildings

    def warning_first(*args: object, **kwargs: object) -> object:
        warn_analyst("a window's own warning")
        return detect(*args, **kwargs)

    monkeypatch.setattr(windowed, "detect_new_buildings", warning_first)


def test_warnings_of_windows_on_threads_reach_the_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet.pipeline import DetectOptions

    _window_warning(monkeypatch)
    pair = _pair(tmp_path)
    result = run_detection(pair["before"], pair["after"], DetectOptions(window_px=256,
                                                                        workers=2))
    assert result.summary["parameters"]["windows"]["n"] > 1
    assert result.summary["warnings"].count("a window's own warning") == 1


@pytest.mark.slow
def test_warnings_of_windows_on_dask_workers_reach_the_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's log is not the analyst's, and its context is not the run's: the
    window's result carries what it warned about."""
    import distributed
    from changedet.pipeline import DetectOptions

    _window_warning(monkeypatch)  # the workers are threads of this process
    pair = _pair(tmp_path)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster:
        result = run_detection(pair["before"], pair["after"], DetectOptions(
            window_px=256, dask_scheduler=cluster.scheduler_address))
    assert result.summary["warnings"].count("a window's own warning") == 1


def test_unreachable_dask_scheduler_is_a_one_line_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from changedet.cli import main

    pair = _pair(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["detect", str(pair["before"]), str(pair["after"]),
                                       "-o", str(out), "--dask-scheduler", "tcp://127.0.0.1:9"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "dask scheduler at tcp://127.0.0.1:9" in lines[0]
    assert "Traceback" not in result.output
    assert not out.exists()


def test_an_address_where_no_scheduler_answers_is_refused_in_time() -> None:
    """A malformed address, another scheme, and a port where a service listens but
    never speaks dask (it kept the run waiting for ever) are each a ProcessingError."""
    import socket
    import threading

    from changedet.errors import ProcessingError
    from changedet.windowed import DaskRunner

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        accepted = []
        threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
        port = silent.getsockname()[1]
        for address, message in (("tcp://localhost", "missing port"),
                                 ("http://127.0.0.1:8786", "unknown address scheme"),
                                 (f"tcp://127.0.0.1:{port}", "no answer within 1 s")):
            with pytest.raises(ProcessingError, match=message):
                DaskRunner(address, timeout_s=1.0)
        assert accepted  # the silent service was reached, and said nothing
        for conn, _ in accepted:
            conn.close()

    # From a notebook, whose event loop is running in the caller's thread (asyncio.run
    # refused to start there, and every address came out "cannot reach").
    import asyncio

    async def in_a_notebook() -> None:
        with pytest.raises(ProcessingError, match="missing port"):
            DaskRunner("tcp://localhost", timeout_s=1.0)

    asyncio.run(in_a_notebook())


def test_input_errors_cross_from_a_worker_whole() -> None:
    import pickle

    from changedet.errors import InputError

    err = pickle.loads(pickle.dumps(InputError("a/b.tif", "is truncated")))
    assert isinstance(err, InputError)
    assert (err.path, err.problem, str(err)) == ("a/b.tif", "is truncated",
                                                 "a/b.tif: is truncated")


def test_buildings_left_out_as_standing_before_are_reported_alike_by_both_paths(
        tmp_path: Path) -> None:
    from changedet.outputs import write_outputs
    from changedet.synth import SynthParams, write_synthetic_pair

    pair = write_synthetic_pair(SynthParams.for_scenario("demolition", seed=0, size=512),
                                tmp_path / "p")
    whole = run_detection(pair["before"], pair["after"], DetectOptions(window_px=None))
    assert whole.standing_before  # else this test proves nothing
    # Four windows, then sixteen small ones whose cut groups need retries.
    for window_px, n_windows in ((128, 16), (256, 4)):
        windowed = run_detection(pair["before"], pair["after"],
                                 DetectOptions(window_px=window_px))
        assert windowed.summary["parameters"]["windows"]["n"] == n_windows
        assert windowed.summary["standing_before"] == whole.summary["standing_before"]
    assert windowed.summary["parameters"]["outline_before_level"] == 3.0
    # The regions detector records the change threshold it cut at, in noise units.
    for run in (whole, windowed):
        assert run.summary["parameters"]["threshold"] > 0
    assert whole.summary["totals"]["n_standing_before"] == len(whole.standing_before)
    # Left out: neither a new building nor new in change.tif.
    new = shapely.union_all([b.polygon for b in whole.buildings])
    for s in whole.standing_before:
        assert s.polygon.intersection(new).area < 1.0
    write_outputs(windowed, tmp_path / "out")
    with rasterio.open(tmp_path / "out" / "change.tif") as ds:
        change = ds.read(1)
        rows, cols = np.nonzero(change == 1)
        xs, ys = ds.transform @ (cols + 0.5, rows + 0.5)
    drawn = shapely.points(xs, ys)
    for s in windowed.standing_before:
        assert not shapely.contains(s.polygon, drawn).any()
    html = (tmp_path / "out" / "report.html").read_text()
    assert f"Left out: {len(whole.standing_before)} changed area" in html
    # Asked to keep them, both paths report them as new buildings instead.
    for window_px in (None, 256):
        kept = run_detection(pair["before"], pair["after"],
                             DetectOptions(window_px=window_px, keep_standing=True))
        assert not kept.standing_before
        found = shapely.union_all([b.polygon for b in kept.buildings])
        for s in whole.standing_before:
            assert s.polygon.intersection(found).area > 0.9 * s.polygon.area


def test_each_building_of_a_still_cut_group_is_reported_once_from_its_best_view() -> None:
    import shapely

    from changedet.windowed import FoundBuilding, _best_views

    square = shapely.box(0, 0, 10, 10)
    whole = FoundBuilding((0, 0), (0, 0), square, 0.9)
    # A cut view never replaces a building seen whole, however far from its rim.
    seen_again = FoundBuilding((0, 0), (0, 1), shapely.box(0, 0, 10, 8), 0.8, cut=True,
                               rim_px=500)
    elsewhere = FoundBuilding((50, 50), (50, 50), shapely.box(50, 50, 60, 60), 0.7, cut=True)
    # Two views of one building: the one seen farther from its window's rim wins,
    # whether it is the smaller or the larger of the two.
    near_rim = FoundBuilding((90, 0), (90, 0), shapely.box(90, 0, 100, 10), 0.7, cut=True,
                             rim_px=3)
    far_from_rim = FoundBuilding((90, 1), (90, 1), shapely.box(90, 1, 100, 10), 0.7,
                                 cut=True, rim_px=60)
    small_far = FoundBuilding((200, 0), (200, 0), shapely.box(200, 0, 204, 10), 0.7,
                              cut=True, rim_px=80)
    large_near = FoundBuilding((200, 0), (190, 0), shapely.box(200, 0, 210, 10), 0.7,
                               cut=True, rim_px=10)
    kept = _best_views([whole], [seen_again, elsewhere, near_rim, far_from_rim,
                                 large_near, small_far])
    assert [b.first for b in kept] == [(0, 0), (50, 50), (90, 1), (200, 0)]
    assert kept[0] is whole and kept[2] is far_from_rim and kept[3] is small_far


@pytest.mark.slow
def test_change_tif_draws_the_views_of_still_cut_buildings_that_are_reported(
        tmp_path: Path) -> None:
    """Windows so small that groups stay cut after the last retry: each building is
    then seen by several retries, and change.tif must draw the view that is reported,
    not every view."""
    from rasterio.features import geometry_mask

    from changedet.synth import SynthParams, write_synthetic_pair

    pair = write_synthetic_pair(SynthParams.for_scenario("suburb", seed=3, size=512),
                                tmp_path / "p")
    whole = run_detection(pair["before"], pair["after"], DetectOptions(window_px=None))
    windowed = run_detection(pair["before"], pair["after"], DetectOptions(window_px=128))
    assert windowed.summary["parameters"]["windows"]["cut_groups"] > 0  # else moot
    mask = windowed.read_change_mask()
    drawn = shapely.union_all([b.polygon.buffer(1.0) for b in windowed.buildings])
    covered = geometry_mask([drawn], out_shape=mask.shape,
                            transform=windowed.grid.transform, invert=True)
    assert not ((mask == 1) & ~covered).any()
    for b in windowed.buildings:
        inside = geometry_mask([b.polygon.buffer(-0.6)], out_shape=mask.shape,
                               transform=windowed.grid.transform, invert=True)
        assert (mask[inside] == 1).all()
    # Buildings of complete groups are the whole scene's, to the square metre. Those
    # of still-cut groups are measured as the largest window saw them (README "Not
    # done yet"): they may differ from the whole scene's, or be missed, and are
    # flagged partial.
    whole_areas = {round(b.area_m2, 1) for b in whole.buildings}
    assert any(b.partial for b in windowed.buildings)
    assert all(round(b.area_m2, 1) in whole_areas
               for b in windowed.buildings if not b.partial)


def test_windowed_run_keeps_to_the_aoi(tmp_path: Path) -> None:
    import shapely

    from changedet.pipeline import DetectOptions

    pair = _pair(tmp_path)
    whole = run_detection(pair["before"], pair["after"], DetectOptions(window_px=None))
    left, bottom, right, top = whole.grid.bounds
    west = shapely.box(left, bottom, (left + right) / 2, top)
    aoi = tmp_path / "aoi.geojson"
    import pyogrio.raw

    pyogrio.raw.write(aoi, geometry=np.array([shapely.to_wkb(west)], dtype=object),
                      field_data=[], fields=[], crs=whole.grid.crs.to_wkt(),
                      geometry_type="Polygon", driver="GeoJSON")
    result = run_detection(pair["before"], pair["after"], DetectOptions(window_px=256,
                                                                        aoi=str(aoi)))
    assert result.buildings
    for b in result.buildings:
        assert b.polygon.intersection(west).area >= 0.5 * b.polygon.area
    mask = result.read_change_mask()
    cols = np.arange(mask.shape[1])
    x = result.grid.transform.c + (cols + 0.5) * result.grid.transform.a
    assert (mask[:, x > (left + right) / 2 + 1] == 255).all()
    assert (mask[:, x < (left + right) / 2 - 1] != 255).any()


def test_windowed_run_reprojects_a_geographic_after_scene(tmp_path: Path) -> None:
    from changedet.evaluate import match_objects
    from changedet.pipeline import DetectOptions
    from changedet.synth import SynthParams, write_synthetic_pair

    params = replace(SynthParams.for_scenario("suburb", seed=0, size=400),
                     after_crs="EPSG:4326", after_pixel_size_m=0.55)
    pair = write_synthetic_pair(params, tmp_path / "geo")
    whole = run_detection(pair["before"], pair["after"], DetectOptions(window_px=None))
    windowed = run_detection(pair["before"], pair["after"], DetectOptions(window_px=256))
    assert windowed.summary["parameters"]["windows"]["n"] == 4
    a = [b.polygon for b in windowed.buildings]
    b = [b.polygon for b in whole.buildings]
    assert len(b) >= 3
    # Same detector, statistics from chips rather than from every pixel: the same
    # buildings, up to a marginal one.
    assert len(match_objects(a, b)) >= len(b) - 1
    assert abs(len(a) - len(b)) <= 1


@pytest.mark.slow
def test_windows_equal_the_whole_scene_where_the_before_scene_has_nodata(
        tmp_path: Path) -> None:
    """Delivered in Web Mercator, both dates have nodata fringes that differ after
    co-registration: the after scene must be blanked alike on both paths, or the
    evidence filters see other pixels near the fringe."""
    from changedet.synth import SynthParams, write_synthetic_pair

    from .conftest import warp_geotiff

    pair = write_synthetic_pair(SynthParams.for_scenario("suburb", seed=0, size=400),
                                tmp_path / "utm")
    merc = {k: warp_geotiff(pair[k], tmp_path / f"{k}_3857.tif", "EPSG:3857")
            for k in ("before", "after")}
    whole = run_detection(merc["before"], merc["after"], DetectOptions(window_px=None))
    windowed = run_detection(merc["before"], merc["after"], DetectOptions(window_px=256))
    assert whole.registration["applied"] and windowed.summary["parameters"]["windows"]["n"] == 4
    assert windowed.summary["parameters"]["threshold"] == whole.summary["parameters"]["threshold"]
    assert len(whole.buildings) >= 2
    assert sorted(round(b.area_m2, 3) for b in windowed.buildings) == \
        sorted(round(b.area_m2, 3) for b in whole.buildings)


@pytest.mark.parametrize("group", [(400, 700, 640, 1660), (1500, 980, 1760, 1300),
                                   (900, 100, 1880, 400), (2000, 1100, 3000, 2100)])
def test_a_group_that_fits_in_a_window_is_finished_by_the_retries(
        tmp_path: Path, group: tuple[int, int, int, int]) -> None:
    """Retries grow where the cut group goes on, up to a window's size: a retry
    grown on every side and then cut back to a window about its centre could leave
    out the far end of a group that fits in one window."""
    from rasterio.crs import CRS

    from changedet.raster import Grid, Scene
    from changedet.windowed import WindowResult, run_windows

    shape, window_px, halo, margin = (4096, 4096), 1024, 78, 30
    grid = Grid(CRS.from_epsg(32651), Affine(1, 0, 500000, 0, -1, 4300000), *shape)
    header = Scene(np.zeros((3, 0, 0), np.float32), np.zeros((0, 0), bool), grid)
    windows = plan_windows(shape, window_px, halo)
    template = WindowTask(header, header, grid, windows[0], Affine.identity(), False,
                          DetectionParams(), {}, margin, 0)

    def runner(tasks: list[WindowTask]):
        # One group of candidate change of extent ``group``: a window sees the part
        # inside its padded extent, and cannot finish it if it reaches the rim.
        for t in tasks:
            w = t.window
            seen = (max(group[0], w.pad_row0), max(group[1], w.pad_col0),
                    min(group[2], w.pad_row1), min(group[3], w.pad_col1))
            in_core = (seen[0] < w.row1 and seen[2] > w.row0 and seen[1] < w.col1
                       and seen[3] > w.col0)
            on_rim = ((w.pad_row0 > 0 and seen[0] < w.pad_row0 + margin)
                      or (w.pad_col0 > 0 and seen[1] < w.pad_col0 + margin)
                      or (w.pad_row1 < shape[0] and seen[2] > w.pad_row1 - margin)
                      or (w.pad_col1 < shape[1] and seen[3] > w.pad_col1 - margin))
            block = None if t.retry else np.zeros((w.row1 - w.row0, w.col1 - w.col0),
                                                  np.uint8)
            yield WindowResult(w, [], block, [seen] if in_core and on_rim else [])

    result = run_windows(template, windows, halo, runner, str(tmp_path / "change.tif"),
                         window_px)
    assert result.cut_groups == 0


@pytest.mark.slow
def test_a_building_cut_by_the_scene_edge_is_marked_partial_by_both_paths(
        tmp_path: Path) -> None:
    """The fixture cropped through its residence 2: the outline that stops at the
    crop is partial, the residence seen whole is not, windows or not."""
    from rasterio.windows import Window

    from changedet.outputs import to_wgs84

    crop = Window(0, 0, 700, 1200)  # residence 2 spans columns 544-713
    paths = {}
    for date in ("before", "after"):
        with rasterio.open(FIXTURE / f"{date}.tif") as src:
            profile = src.profile | {"width": crop.width, "height": crop.height,
                                     "transform": src.transform}  # the crop starts at 0, 0
            paths[date] = tmp_path / f"{date}.tif"
            with rasterio.open(paths[date], "w", **profile) as dst:
                dst.write(src.read(window=crop))
    truth = json.loads((FIXTURE / "truth.geojson").read_text())["features"]
    flags = {}
    for name, window_px in (("whole", None), ("windows", 256)):
        result = run_detection(paths["before"], paths["after"],
                               DetectOptions(window_px=window_px))
        if window_px:
            assert result.summary["parameters"]["windows"]["n"] > 1
        records = {r["id"]: r for r in result.summary["buildings"]}
        wgs84 = [shapely.geometry.shape(f["geometry"]) for f in truth]
        outlines = to_wgs84([b.polygon for b in result.buildings], result.crs)
        on = {t["properties"]["id"]: [records[b.id]["partial"]
                                      for b, o in zip(result.buildings, outlines)
                                      if o.intersection(w).area > 0.5 * o.area]
              for t, w in zip(truth, wgs84)}
        assert on[1] == [False]  # seen whole, far from the crop
        assert on[2] and all(on[2])  # cut by the crop
        assert result.summary["totals"]["n_partial"] == sum(
            r["partial"] for r in records.values())
        flags[name] = sorted((b.area_m2, records[b.id]["partial"]) for b in result.buildings)
    # The same buildings (areas within the 0.1 % the two paths are held to), alike
    # flagged.
    assert len(flags["windows"]) == len(flags["whole"])
    for (area_w, partial_w), (area, partial) in zip(flags["windows"], flags["whole"]):
        assert area_w == pytest.approx(area, rel=1e-3) and partial_w == partial


def test_windows_on_an_origin_and_pixel_that_floats_round(tmp_path: Path) -> None:
    """A window's before grid (cropped from its padded read) and after grid (a
    window of the analysis grid) name the same pixels through different chains of
    translations: with 0.3 m pixels and an origin off the metre they differ in the
    last bits, and the exact grid comparison refused the windowed run."""
    from affine import Affine

    from changedet.pipeline import DetectOptions
    from changedet.synth import SynthParams, write_synthetic_pair

    pair = write_synthetic_pair(SynthParams.for_scenario("suburb", seed=1, size=640,
                                                         pixel_size=0.3), tmp_path / "p")
    for key in ("before", "after"):
        with rasterio.open(pair[key], "r+") as ds:
            ds.transform = Affine(0.3, 0, 500123.17, 0, -0.3, 4000321.07)
    whole = run_detection(pair["before"], pair["after"], DetectOptions(window_px=None))
    windowed = run_detection(pair["before"], pair["after"], DetectOptions(window_px=256))
    assert len(whole.buildings) > 0
    assert sorted(round(b.area_m2) for b in windowed.buildings) == \
        sorted(round(b.area_m2) for b in whole.buildings)


def test_a_group_whose_owner_sees_only_a_strip_of_it_is_not_lost() -> None:
    """On the fixture with 256 px windows, a seam 13 rows below a residence's top
    left its owner (the window holding its first pixel) a strip too unlike a roof to
    retry, and the window below, which saw it whole, did not own it: the 13,673 m²
    residence vanished from the polygons (change.tif drew most of it). Whole and
    windowed runs now give the same buildings and the same change mask."""
    from changedet.pipeline import DetectOptions

    before, after = FIXTURE / "before.tif", FIXTURE / "after.tif"
    whole = run_detection(before, after, DetectOptions(window_px=None))
    windowed = run_detection(before, after, DetectOptions(window_px=256))
    assert len(whole.buildings) == 3
    assert sorted(b.area_m2 for b in windowed.buildings) == \
        sorted(b.area_m2 for b in whole.buildings)
    np.testing.assert_array_equal(windowed.read_change_mask(), whole.change_mask)


def test_overlap_grid_crops_rotated_and_south_up_grids_by_their_footprints(
        tmp_path: Path) -> None:
    """The windowed path crops the analysis grid to the footprints' overlap. Taken
    from two corners as bounds, a rotated after grid gave a strip of the true box and
    a south-up before grid failed inside rasterio ("internal error")."""
    from .conftest import write_geotiff

    empty = np.zeros((1, 600, 600), np.uint8)
    before = write_geotiff(tmp_path / "before.tif", np.zeros((1, 1000, 1000), np.uint8),
                           transform=Affine(1, 0, 500000, 0, -1, 4001000))
    # 600 x 600 px turned 45 degrees about the before scene's centre: a diamond whose
    # half-diagonal is 300 * sqrt(2) = 424.3 px.
    turned = (Affine.translation(500500, 4000500) @ Affine.rotation(45)
              @ Affine.translation(-300, 300) @ Affine.scale(1, -1))
    after = write_geotiff(tmp_path / "after.tif", empty, transform=turned)
    hb, ha = read_header(before), read_header(after)
    grid, overlap = _overlap_grid(analysis_grid(hb.grid), hb, ha)
    half = 300 * np.sqrt(2)
    assert grid.shape == (850, 850)  # rows and columns 75 .. 925 (500 -+ 424.3)
    assert grid.transform.c == 500000 + np.floor(500 - half)
    assert overlap == pytest.approx(0.36)

    # A south-up before grid (positive row step), the after scene its western half.
    before_up = write_geotiff(tmp_path / "before_up.tif", np.zeros((1, 1000, 1000), np.uint8),
                              transform=Affine(1, 0, 500000, 0, 1, 4000000))
    after_west = write_geotiff(tmp_path / "after_west.tif", np.zeros((1, 1000, 500), np.uint8),
                               transform=Affine(1, 0, 500000, 0, -1, 4001000))
    hb, ha = read_header(before_up), read_header(after_west)
    grid, overlap = _overlap_grid(analysis_grid(hb.grid), hb, ha)
    assert grid.shape == (1000, 500)
    assert grid.transform == hb.grid.transform  # the same corner, still south-up
    assert overlap == pytest.approx(0.5)


def test_windowed_run_of_a_south_up_before_scene_equals_the_whole_run(
        tmp_path: Path) -> None:
    from .conftest import write_geotiff

    with rasterio.open(FIXTURE / "before.tif") as src:
        data, t, crs = src.read(), src.transform, src.crs.to_string()
    flipped = write_geotiff(tmp_path / "before_up.tif", data[:, ::-1].copy(), crs,
                            Affine(t.a, 0, t.c, 0, -t.e, t.f + t.e * src.height))
    after = FIXTURE / "after.tif"
    whole = run_detection(flipped, after, DetectOptions(window_px=None))
    windowed = run_detection(flipped, after, DetectOptions(window_px=512))
    assert windowed.summary["parameters"]["windows"]["n"] == 9
    assert len(whole.buildings) == 3
    assert sorted(round(b.area_m2) for b in windowed.buildings) == \
        sorted(round(b.area_m2) for b in whole.buildings)


def test_a_finer_after_scene_reads_the_same_in_every_window_whatever_its_overviews(
        tmp_path: Path) -> None:
    """An after scene at half the before scene's pixel is read decimated. Windows
    read it with ratios a little apart, so that GDAL took its cubic overviews for some
    and averaged the full pixels for others: one residence came out twice, 99 %
    overlapping (27,380 m² for a site of 13,700)."""
    from rasterio.enums import Resampling
    from rasterio.warp import reproject

    from .conftest import write_geotiff

    with rasterio.open(FIXTURE / "before.tif") as src:
        before, t, crs = src.read(), src.transform, src.crs.to_string()
    with rasterio.open(FIXTURE / "after.tif") as src:
        after = src.read()
    crop_t = t @ Affine.translation(200, 150)
    before_path = write_geotiff(tmp_path / "before.tif", before[:, 150:550, 200:800].copy(),
                                crs, crop_t)
    fine_t = Affine(0.5, 0, crop_t.c - 20, 0, -0.5, crop_t.f + 20)
    fine = np.zeros((3, 880, 1280), np.uint8)
    reproject(after, fine, src_transform=t, src_crs=crs, dst_transform=fine_t, dst_crs=crs,
              resampling=Resampling.cubic)
    plain = write_geotiff(tmp_path / "after.tif", fine, crs, fine_t)
    with_overviews = write_geotiff(tmp_path / "after_ovr.tif", fine, crs, fine_t)
    with rasterio.open(with_overviews, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.cubic)

    def areas(after_path: Path, window_px: int | None) -> list[int]:
        result = run_detection(before_path, after_path, DetectOptions(window_px=window_px))
        return sorted(round(b.area_m2) for b in result.buildings)

    windowed = areas(with_overviews, 256)
    assert windowed == areas(plain, 256)
    # Through a VRT, GDAL's decimated reads took the source's overviews even with
    # the VRT's own hidden.
    from rasterio.shutil import copy as copy_dataset

    vrt = tmp_path / "after_ovr.vrt"
    copy_dataset(with_overviews, vrt, driver="VRT")
    assert areas(vrt, 256) == windowed
    whole = areas(plain, None)
    assert len(whole) == 2
    # The whole-scene path averages the finer pixels over the same blocks as the
    # windows before it resamples them: the same buildings to the m² (it warped the
    # full pixels, and the two differed by 0.19 %).
    assert windowed == whole


@pytest.mark.parametrize("lons", [(-80.0, 100.0), (-180.0, 180.0)])
def test_overlap_grid_of_an_after_scene_beyond_the_utm_domain(lons) -> None:
    """A lon/lat after scene spanning half the world or all of it over a UTM before
    scene: PROJ refuses or wraps the outline's far points ("internal error", or no
    overlap at all); GDAL's bounds stand in."""
    from types import SimpleNamespace

    from rasterio.crs import CRS
    from rasterio.warp import transform

    from changedet.raster import Grid

    x, y = transform("EPSG:4326", "EPSG:32632", [9.0], [45.0])
    before = SimpleNamespace(path="b.tif", grid=Grid(CRS.from_epsg(32632),
                                                     Affine(1, 0, x[0], 0, -1, y[0]), 1000, 1000))
    lon0, lon1 = lons
    after = SimpleNamespace(path="a.tif", grid=Grid(CRS.from_epsg(4326), Affine(
        (lon1 - lon0) / 1000, 0, lon0, 0, -0.1, 80), 1000, 1000))
    grid, overlap = _overlap_grid(analysis_grid(before.grid), before, after)
    assert grid.shape == (1000, 1000) and overlap == pytest.approx(1.0)


def test_overlap_grid_refuses_a_neighbour_in_the_next_utm_zone() -> None:
    """GDAL's bounds (a box around a turned outline) are a fallback for outlines PROJ
    cannot draw, not for pairs that merely do not meet: a scene beside the before
    scene, in the next UTM zone, is refused as the whole-scene path refuses it."""
    from types import SimpleNamespace

    from rasterio.crs import CRS
    from rasterio.warp import transform

    from changedet.errors import ProcessingError
    from changedet.raster import Grid

    x, y = transform("EPSG:4326", "EPSG:32651", [125.0], [60.0])
    xs, ys = transform("EPSG:32651", "EPSG:32652", [x[0]], [y[0]])
    before = SimpleNamespace(path="b.tif", grid=Grid(CRS.from_epsg(32651), Affine(
        10, 0, x[0], 0, -10, y[0]), 1000, 1000))
    after = SimpleNamespace(path="a.tif", grid=Grid(CRS.from_epsg(32652), Affine(
        10, 0, xs[0] - 11000, 0, -10, ys[0] - 8500), 1000, 1000))
    with pytest.raises(ProcessingError, match="overlaps b.tif by only 0 x 0 pixels"):
        _overlap_grid(analysis_grid(before.grid), before, after)


def test_strips_tell_an_island_of_data_in_a_large_frame_which_the_chips_find(tmp_path: Path) -> None:
    from changedet.windowed import VALID_CROP_PAD_PX, data_island, survey_strips

    from .conftest import write_geotiff

    data = np.zeros((3, 2000, 1800), np.uint8)
    data[:, 900:1300, 1500:1790] = 100
    island = read_header(write_geotiff(tmp_path / "island.tif", data, nodata=0))
    data[:] = 100
    full = read_header(write_geotiff(tmp_path / "full.tif", data, nodata=0))
    grid = analysis_grid(full.grid)
    pad = VALID_CROP_PAD_PX
    assert survey_strips(full, island, grid, False, workers=2).sparse
    found = data_island(full, island, grid, False, workers=2)
    assert found.box == (900 - pad, 1500 - pad, 1300 + pad, 1800)
    assert (found.before_valid_px, found.both_valid_px) == (2000 * 1800, 400 * 290)
    assert data_island(full, full, grid, False).box is None  # the whole grid
    dense = survey_strips(full, full, grid, False)
    assert not dense.sparse and dense.both_valid_px == dense.strip_px
    assert dense.differ == (False,) * len(dense.differ)


@pytest.mark.slow
def test_a_scene_clipped_to_a_polygon_at_its_full_extent_is_cropped_to_its_data(
        tmp_path: Path) -> None:
    """The fixture pair inside a 6144 px frame of nodata (as a GIS clips a raster to a
    polygon without cropping it): the central co-registration chip and every sample
    chip of the first pass fell on nodata, and the run failed."""
    from rasterio.windows import Window

    paths = []
    for name in ("before", "after"):
        with rasterio.open(FIXTURE / f"{name}.tif") as src:
            data, profile = src.read(), src.profile
        profile.update(width=6144, height=6144, nodata=0, tiled=True, blockxsize=512,
                       blockysize=512, compress="deflate")
        paths.append(tmp_path / f"{name}.tif")
        with rasterio.open(paths[-1], "w", **profile) as dst:
            dst.write(data, window=Window(4300, 2300, data.shape[2], data.shape[1]))
    windowed = run_detection(*paths, DetectOptions())
    whole = run_detection(FIXTURE / "before.tif", FIXTURE / "after.tif", DetectOptions())
    assert windowed.summary["parameters"]["windows"]["n"] >= 2
    # The after scene covers all of the before scene's data. (Estimated on strips,
    # this frame's share came out right too; the fixture's rows 250-950 in a 12000 px
    # frame gave 0.0, and that case is covered by the scan's counts tested above.)
    assert windowed.summary["overlap_fraction"] == pytest.approx(
        whole.summary["overlap_fraction"], abs=0.01)
    assert len(whole.buildings) == 3
    # The fixture's pixels are 1 m: the frame puts them 4300 m east, 2300 m south.
    # The same buildings, areas within a percent (the
    # windowed run's statistics come from sample chips).
    assert len(windowed.buildings) == 3
    for w in windowed.buildings:
        moved = shapely.affinity.translate(w.polygon, -4300.0, 2300.0)
        match = max(whole.buildings, key=lambda b: b.polygon.intersection(moved).area)
        assert match.polygon.intersection(moved).area > 0.9 * match.polygon.area
        assert w.area_m2 == pytest.approx(match.area_m2, rel=0.01)


def test_paths_for_workers_are_made_absolute_only_for_local_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A subdataset (GTIFF_DIR:1:x.tif) given an absolute prefix no longer opened."""
    from changedet.pipeline import _path_for_workers

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.tif").write_bytes(b"")
    assert _path_for_workers("x.tif") == str(tmp_path / "x.tif")
    for kept in ("GTIFF_DIR:1:x.tif", "/vsis3/bucket/x.tif", "s3://bucket/x.tif",
                 str(tmp_path / "x.tif"), "missing.tif"):
        assert _path_for_workers(kept) == kept


def _first_pass_and_pair_mostly_rebuilt(tmp_path: Path) -> tuple:
    """The first pass (no co-registration) of a 600 px pair 70 % rebuilt
    (``test_radiometry._mostly_rebuilt``), and the pair aligned whole."""
    from changedet.raster import align_pair, read_scene

    from .conftest import write_geotiff
    from .test_radiometry import _mostly_rebuilt

    paths = {name: write_geotiff(tmp_path / f"{name}.tif", data)
             for name, data in zip(("before", "after"), _mostly_rebuilt(size=600))}
    hb, ha = read_header(paths["before"]), read_header(paths["after"])
    grid, _ = _overlap_grid(analysis_grid(hb.grid), hb, ha)
    first = first_pass(hb, ha, grid, "none", False, DetectionParams())
    return first, align_pair(read_scene(paths["before"]), read_scene(paths["after"]))


def test_first_pass_weights_a_changed_majority_as_a_whole_run_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where most of the scene changed the fit is weighted by structure: the strips a
    windowed run reads must give the weights, the share and the fit of the whole
    grid, to the bit."""
    from changedet import radiometry

    monkeypatch.setattr(radiometry, "FIT_SAMPLE_PX", 30_000)
    first, pair = _first_pass_and_pair_mostly_rebuilt(tmp_path)
    valid = pair.before.valid & pair.after.valid
    patches = radiometry.fit_patches(valid.shape)
    assert len(patches) == radiometry.MIN_FIT_STRIPS
    structure = radiometry.structure_on_patches(pair.before.image, pair.after.image, valid,
                                                patches, 0.5)
    whole = radiometry.fit_radiometry(pair.before.image, pair.after.image, valid,
                                      keep_weight=False, patches=patches, structure=structure)
    assert whole.changed_share > radiometry.CHANGED_MAJORITY
    assert first.fit.changed_share == whole.changed_share
    np.testing.assert_array_equal(first.fit.knots_after, whole.knots_after)
    np.testing.assert_array_equal(first.fit.knots_before, whole.knots_before)


def test_first_pass_fits_without_structure_when_a_correction_left_too_much(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dates a correction left further apart than the structure's scale are fitted as
    without structure, on the strips alone."""
    from changedet import radiometry, windowed

    monkeypatch.setattr(radiometry, "FIT_SAMPLE_PX", 30_000)
    monkeypatch.setattr(windowed, "structure_aligned", lambda registration, pixel_m: False)
    first, pair = _first_pass_and_pair_mostly_rebuilt(tmp_path)
    valid = pair.before.valid & pair.after.valid
    whole = radiometry.fit_radiometry(pair.before.image, pair.after.image, valid,
                                      keep_weight=False,
                                      patches=radiometry.fit_patches(valid.shape))
    assert first.fit.changed_share is None
    np.testing.assert_array_equal(first.fit.knots_after, whole.knots_after)
    np.testing.assert_array_equal(first.fit.knots_before, whole.knots_before)


def test_both_paths_report_the_same_overlap_and_coverage_warning(tmp_path: Path) -> None:
    """Windowed runs counted the overlap after co-registration, whose shifted edge is
    nodata: the fixture read 0.9958 against 1.0 whole, and an after scene of two
    thirds of the before scene was warned of as covering 66 % against 67 %."""
    from .conftest import write_geotiff

    with rasterio.open(FIXTURE / "after.tif") as src:
        data, transform, crs = src.read(), src.transform, src.crs.to_string()
    cropped = write_geotiff(tmp_path / "after_800.tif", data[:, :, :800], crs, transform)
    for after, share in ((FIXTURE / "after.tif", 1.0), (cropped, 2 / 3)):
        runs = [run_detection(FIXTURE / "before.tif", after, DetectOptions(window_px=px))
                for px in (None, 600)]
        whole, windowed = (r.summary for r in runs)
        assert windowed["parameters"]["windows"]["n"] > 1
        assert whole["overlap_fraction"] == pytest.approx(share, abs=5e-3)
        assert windowed["overlap_fraction"] == pytest.approx(whole["overlap_fraction"],
                                                             abs=1e-3)
        assert [w for w in windowed["warnings"] if "covers only" in w] == \
            [w for w in whole["warnings"] if "covers only" in w]
