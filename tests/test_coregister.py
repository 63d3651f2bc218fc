"""Co-registration (changedet.coregister) against the synthetic generator's truth."""

from __future__ import annotations

import json
import logging
import math
import os
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from click.testing import CliRunner
from scipy import ndimage

from changedet.cli import main
from changedet.coregister import coregister, estimate_local, estimate_shift
from changedet.raster import align_pair, read_scene, warp_scene
from changedet.synth import SynthParams, make_synthetic_pair, write_synthetic_pair


def _pair(scenario: str, seed: int, shift: tuple[float, float], size: int = 640):
    sp = make_synthetic_pair(SynthParams.for_scenario(scenario, seed=seed, size=size,
                                                      shift=shift))
    return sp, align_pair(sp.before, sp.after)


@pytest.mark.parametrize(
    ("scenario", "seed", "shift"),
    [("compound", 21, (2.6, -1.8)), ("suburb", 22, (-20.0, 17.3)),
     ("suburb", 23, (13.45, 19.9)), ("none", 24, (-0.35, 0.6))],
)
def test_global_shift_within_a_tenth_of_a_pixel(scenario, seed, shift):
    # Radiometric change, noise, moved shadows and new buildings are in every pair.
    sp, pair = _pair(scenario, seed, shift)
    reg = estimate_shift(pair.before.image, pair.after.image, pair.before.valid)
    err = np.abs(np.array(reg.shift_px) - np.array(sp.shift_px))
    assert err.max() <= 0.1, (reg.shift_px, sp.shift_px)
    assert reg.reliability > 0.5 and not reg.low_reliability
    assert reg.correction == Affine.translation(*reg.shift_px)


def test_coregister_resamples_after_once_onto_before():
    sp, pair = _pair("none", 25, (4.2, -3.1))
    registered, reg = coregister(pair, "global")
    assert registered.grid == pair.grid
    both = registered.before.valid & registered.after.valid
    assert np.array_equal(registered.before.valid, registered.after.valid)
    # Once registered, the residual shift between the dates is (almost) nothing.
    rest = estimate_shift(registered.before.image, registered.after.image, both)
    assert np.abs(rest.shift_px).max() <= 0.1
    summary = reg.summary(pair.grid)
    px = pair.grid.pixel_size[0]
    assert summary["shift_m"] == pytest.approx([reg.shift_px[0] * px, -reg.shift_px[1] * px],
                                               abs=1e-3)
    assert summary["method"] == "global" and summary["applied"] is True


def _fields(n: int, houses: int, seed: int = 21) -> np.ndarray:
    """(n, n) parallel stripes at 20 degrees (fields), lightly textured, with
    ``houses`` blocks of texture in the left 40 % of the scene."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n].astype(float)
    across = -xx * np.sin(np.radians(20)) + yy * np.cos(np.radians(20))
    edges = np.cumsum(rng.uniform(6, 30, 400)) - 400
    values = rng.uniform(60, 200, 400)
    image = ndimage.gaussian_filter(values[np.clip(np.searchsorted(edges, across), 0, 399)],
                                    0.8)
    image += ndimage.gaussian_filter(rng.normal(0, 1, (n, n)), 1.0) * 3
    for _ in range(houses):
        r, c = rng.integers(0, n - 20), rng.integers(0, int(n * 0.4) - 20)
        image[r:r + rng.integers(8, 20), c:c + rng.integers(8, 20)] = rng.uniform(30, 240)
    return image


@pytest.mark.parametrize("houses", [80, 0])
def test_straight_parallel_edges_do_not_outvote_texture(houses: int) -> None:
    """Windows that see only fields fix the shift across them, and along them repeat
    the coarse whole-pixel guess, all alike: taken as points they outvoted the windows
    of houses (0.76 px off at reliability 0.78); with fields alone, a wrong shift was
    applied at reliability 1.0."""
    rng = np.random.default_rng(5)
    image = _fields(1100, houses)
    moved = ndimage.shift(image, (1.5, 2.5), order=3, mode="reflect")
    crop = (slice(38, 1062), slice(38, 1062))
    before = image[crop] + rng.normal(0, 2, (1024, 1024))
    after = moved[crop] + rng.normal(0, 2, (1024, 1024))
    valid = np.ones(before.shape, bool)
    reg = estimate_shift(before, after, valid)
    if houses:
        assert not reg.low_reliability
        assert np.abs(np.array(reg.shift_px) - (2.5, 1.5)).max() <= 0.1, reg.shift_px
        # An affine fitted to tie points is led astray alike (0.46 px at reliability
        # 0.93): where only fields are, nothing contradicted their coarse guess.
        local = estimate_local(before, after, valid)
        assert not local.low_reliability
        assert np.abs(np.array(local.shift_px) - (2.5, 1.5)).max() <= 0.1, local.shift_px
    else:
        # Along the fields nothing fixes the shift: no confident answer is given.
        assert reg.low_reliability or np.abs(np.array(reg.shift_px) - (2.5, 1.5)).max() <= 0.1


def test_local_without_an_affine_to_fit_falls_back_to_the_global_shift(caplog) -> None:
    """With data in an L-shaped band only, too few tie points are measured for an
    affine: the pair was then used as aligned, and reported 0.0 px misregistered,
    although a global shift could be measured (3.3 px off in the review's pair)."""
    sp, pair = _pair("none", 26, (3.3, -1.2), size=768)
    valid = pair.before.valid & pair.after.valid
    band = np.zeros_like(valid)
    band[-150:, :] = band[:, -150:] = True
    with caplog.at_level(logging.WARNING, logger="changedet"):
        reg = estimate_local(pair.before.image, pair.after.image, valid & band)
    assert not reg.low_reliability and reg.method == "global"
    assert np.abs(np.array(reg.shift_px) - sp.shift_px).max() <= 0.15, reg.shift_px
    assert "the global shift is applied instead" in caplog.text


@pytest.mark.parametrize("second", ["global", "local"])
def test_coregister_again_keeps_the_first_correction(second: str) -> None:
    """A registered pair registered again (a notebook trying "local" after "global")
    was resampled with the small residual alone, misregistered by the whole first
    shift again."""
    sp, pair = _pair("none", 25, (4.2, -3.1))
    once, first = coregister(pair, "global")
    twice, rest = coregister(once, second)
    assert np.abs(np.array(rest.shift_px)).max() <= 0.1
    both = twice.before.valid & twice.after.valid
    left = estimate_shift(twice.before.image, twice.after.image, both)
    assert np.abs(np.array(left.shift_px)).max() <= 0.1, left.shift_px
    if rest.applied:
        assert twice.correction.almost_equals(once.correction @ rest.correction)
    assert once.correction == first.correction and pair.correction == Affine.identity()


@pytest.mark.parametrize("epsg, ground_per_unit", [
    (3857, math.cos(math.radians(39.0))),  # a Web-Mercator metre at 39 degrees north
    (2263, 0.3048006096),  # New York Long Island, US survey feet
])
def test_shift_m_is_in_metres_on_the_ground(epsg: int, ground_per_unit: float) -> None:
    """A grid's own units are no ground metres on a Web-Mercator or foot-based grid:
    ``shift_m`` is scaled as ``pixel_size_m`` is."""
    from rasterio.crs import CRS
    from rasterio.warp import transform

    from changedet.coregister import Registration
    from changedet.raster import Grid

    lon, lat = (125.75, 39.0) if epsg == 3857 else (-73.95, 40.7)
    (x,), (y,) = transform("EPSG:4326", f"EPSG:{epsg}", [lon], [lat])
    grid = Grid(CRS.from_epsg(epsg), Affine(0.6, 0, x, 0, -0.6, y), 200, 200)
    summary = Registration("global", (2.0, -1.0), 0.9, 5).summary(grid)
    assert summary["shift_px"] == [2.0, -1.0]
    assert summary["shift_m"] == pytest.approx([1.2 * ground_per_unit, 0.6 * ground_per_unit],
                                               rel=2e-3)


def test_none_leaves_pair_untouched():
    _, pair = _pair("none", 26, (1.0, 1.0), size=256)
    out, reg = coregister(pair, "none")
    assert out is pair and reg.method == "none" and not reg.applied
    assert reg.summary(pair.grid)["reliability"] is None


def test_unrelated_images_are_unreliable_and_not_applied(textured_image, caplog):
    a = textured_image(512, 512, bands=3, seed=1).astype(np.float32)
    b = textured_image(512, 512, bands=3, seed=2).astype(np.float32)
    valid = np.ones((512, 512), bool)
    with caplog.at_level(logging.WARNING, logger="changedet"):
        reg = estimate_shift(a, b, valid)
    assert reg.low_reliability and reg.reliability < 0.3
    assert reg.correction == Affine.identity()
    assert "unreliable" in caplog.text or "failed" in caplog.text


def test_warp_honours_a_rotated_correction(textured_image):
    # GDAL must apply a rotated destination transform exactly as scipy would.
    from changedet.raster import Grid, Scene
    from rasterio.crs import CRS

    img = textured_image(200, 200, bands=1, seed=3).astype(np.float32)
    grid = Grid(CRS.from_epsg(32651), Affine(0.5, 0, 500000, 0, -0.5, 4300000), 200, 200)
    scene = Scene(img, np.ones((200, 200), bool), grid)
    corr = Affine.translation(100, 100) @ Affine.rotation(2.0) @ Affine.translation(-100, -100)
    out = warp_scene(scene, grid, corr).image[0]
    # scipy: output (row, col) samples input at corr @ (col + .5, row + .5) - .5
    m = np.array([[corr.e, corr.d], [corr.b, corr.a]])
    off = np.array([corr.f + (corr.d + corr.e) * 0.5 - 0.5, corr.c + (corr.a + corr.b) * 0.5 - 0.5])
    ref = ndimage.affine_transform(img[0], m, offset=off, order=3, mode="constant")
    inner = (slice(40, 160), slice(40, 160))
    assert np.abs(out[inner] - ref[inner]).mean() < 0.01 * np.ptp(img)


def test_local_recovers_rotation_and_scale():
    sp, pair = _pair("suburb", 27, (0.0, 0.0), size=768)
    h, w = pair.grid.shape
    cx, cy = w / 2, h / 2
    true = (Affine.translation(cx, cy) @ Affine.rotation(0.3) @ Affine.scale(1.002)
            @ Affine.translation(-cx, -cy) @ Affine.translation(1.7, -2.2))
    warped = warp_scene(pair.after_source, pair.grid, true)
    valid = pair.before.valid & warped.valid
    reg = estimate_local(pair.before.image, warped.image, valid)
    assert not reg.low_reliability
    # A feature at before pixel p lies at true^-1(p) in the warped after image.
    yy, xx = np.mgrid[0:h:16, 0:w:16]
    pts = list(zip(xx.ravel().tolist(), yy.ravel().tolist()))
    est = np.array([reg.correction @ p for p in pts])
    exp = np.array([~true @ p for p in pts])
    rms = float(np.sqrt(np.mean(np.sum((est - exp) ** 2, axis=1))))
    assert rms <= 0.3
    assert reg.residual_rms_px is not None and reg.residual_rms_px <= 0.3


def test_cli_coregister(tmp_path):
    paths = write_synthetic_pair(
        SynthParams.for_scenario("suburb", seed=28, size=384, shift=(3.25, -1.5)),
        tmp_path / "pair")
    out = tmp_path / "registered.tif"
    runner = CliRunner()
    result = runner.invoke(main, ["coregister", str(paths["before"]), str(paths["after"]),
                                  "-o", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["shift_px"] == pytest.approx([3.25, -1.5], abs=0.1)
    before = read_scene(paths["before"])
    assert read_scene(out).grid == before.grid
    # A Cloud-Optimized GeoTIFF with overviews (a large scene opens at any zoom in QGIS).
    import rasterio

    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.dtypes[0] == "float32" and ds.block_shapes[0] == (512, 512)
        assert ds.overviews(1) or max(ds.shape) <= 512  # (none for one tile)
    again = runner.invoke(main, ["coregister", str(paths["before"]), str(paths["after"]),
                                 "-o", str(out)])
    assert again.exit_code == 1 and "--overwrite" in again.output
    bad = runner.invoke(main, ["coregister", str(tmp_path / "nope.tif"), str(paths["after"]),
                               "-o", str(tmp_path / "x.tif")])
    assert bad.exit_code == 1 and "nope.tif" in bad.output and "Traceback" not in bad.output
    # The output has the mode of any new file, not mkstemp's private 0600.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    # A missing folder is refused before the work, naming the output (it named the
    # temporary file after the whole registration); another format than GeoTIFF is a
    # usage error.
    missing = runner.invoke(main, ["coregister", str(paths["before"]), str(paths["after"]),
                                   "-o", str(tmp_path / "nodir" / "r.tif")])
    assert missing.exit_code == 1
    assert missing.output.strip() == f"Error: {tmp_path / 'nodir' / 'r.tif'}: no folder " \
                                     f"{tmp_path / 'nodir'}"
    wrong = runner.invoke(main, ["coregister", str(paths["before"]), str(paths["after"]),
                                 "-o", str(tmp_path / "r.geojson")])
    assert wrong.exit_code == 2 and "GeoTIFF" in wrong.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pair", "registered.tif"]
    # --overwrite never replaces an input, however it is spelt.
    link = tmp_path / "link.tif"
    link.symlink_to(paths["after"])
    kept = paths["after"].read_bytes()
    for spelling in (paths["after"], link, tmp_path / "pair" / ".." / "pair" / "before.tif"):
        own = runner.invoke(main, ["coregister", str(paths["before"]), str(paths["after"]),
                                   "-o", str(spelling), "--overwrite"])
        assert own.exit_code == 1 and "is the input" in own.output, own.output
    assert paths["after"].read_bytes() == kept


def test_cli_coregister_measures_with_near_infrared_as_detect_does(tmp_path):
    """detect --nir-band measures the shift on the colours and near-infrared together;
    coregister had no such option, so it could not give detect's figure."""
    paths = write_synthetic_pair(
        SynthParams.for_scenario("suburb", seed=29, size=320, shift=(1.6, 2.2), nir=True),
        tmp_path / "pair")
    runner = CliRunner()
    result = runner.invoke(main, ["coregister", str(paths["before"]), str(paths["after"]),
                                  "-o", str(tmp_path / "r.tif"), "--nir-band", "4"])
    assert result.exit_code == 0, result.output
    detected = runner.invoke(main, ["detect", str(paths["before"]), str(paths["after"]),
                                    "-o", str(tmp_path / "out"), "--nir-band", "4"])
    assert detected.exit_code == 0, detected.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert json.loads(result.stdout)["shift_px"] == summary["coregistration"]["shift_px"]


def test_cli_coregister_keeps_every_band_and_refuses_what_detect_refuses(tmp_path):
    """The registered scene keeps the after file's near-infrared band and its band
    meanings (it wrote the three colour bands only, tagged grey); a blank after scene
    or the before scene given twice is refused, as detect refuses them (they were
    "registered" with exit status 0)."""
    import rasterio
    from rasterio.enums import ColorInterp

    paths = write_synthetic_pair(
        SynthParams.for_scenario("suburb", seed=28, size=384, shift=(3.25, -1.5)),
        tmp_path / "pair")
    with rasterio.open(paths["after"]) as src:
        rgb, profile = src.read(), src.profile
    bgrn = np.concatenate([rgb[::-1], rgb[:1] // 2])  # blue, green, red, a "NIR" of red/2
    profile.update(count=4, photometric=None)
    four = tmp_path / "bgrn.tif"
    with rasterio.open(four, "w", **profile) as dst:
        dst.write(bgrn)
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red,
                           ColorInterp.undefined]
        dst.descriptions = ("b", "g", "r", "nir")
    runner = CliRunner()
    out = tmp_path / "registered.tif"
    result = runner.invoke(main, ["coregister", str(paths["before"]), str(four), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["shift_px"] == pytest.approx([3.25, -1.5], abs=0.1)
    with rasterio.open(out) as reg:
        assert reg.count == 4
        assert reg.colorinterp == (ColorInterp.blue, ColorInterp.green, ColorInterp.red,
                                   ColorInterp.undefined)
        assert reg.descriptions == ("b", "g", "r", "nir")
        bands = reg.read(masked=True)
    # Each band registered the same way: the fourth is still half the third.
    np.testing.assert_allclose(bands[3].compressed(), bands[2].compressed() / 2, atol=1.0)
    rgb_only = runner.invoke(main, ["coregister", str(paths["before"]), str(four),
                                    "-o", str(tmp_path / "rgb.tif"), "--bands", "3,2,1"])
    assert rgb_only.exit_code == 0, rgb_only.output
    with rasterio.open(tmp_path / "rgb.tif") as reg:
        assert reg.count == 3 and reg.colorinterp[0] == ColorInterp.red

    blank = tmp_path / "blank.tif"
    profile.update(count=3)
    with rasterio.open(blank, "w", **profile) as dst:
        dst.write(np.full_like(rgb, 100))
    for after, message in ((blank, "is blank"), (paths["before"], "holds the same pixels")):
        refused = runner.invoke(main, ["coregister", str(paths["before"]), str(after),
                                       "-o", str(tmp_path / "refused.tif")])
        assert refused.exit_code == 1, refused.output
        assert message in refused.output and "Traceback" not in refused.output
        assert not (tmp_path / "refused.tif").exists()


REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "joplin"


@pytest.mark.skipif(not REAL.exists(), reason="real Joplin tiles not available")
def test_joplin_extra_shift_is_recovered():
    # Real tiles in different CRSs, before and after a tornado: a known extra shift of
    # the after tile must move the estimate by exactly that much.
    pair = align_pair(read_scene(REAL / "pre" / "tile_1361-9136.tif"),
                      read_scene(REAL / "post" / "tile_32524-5137.tif"))
    base = estimate_shift(pair.before.image, pair.after.image, pair.before.valid)
    extra = np.array([1.37, -0.62])
    moved = warp_scene(pair.after_source, pair.grid, Affine.translation(*(-extra)))
    reg = estimate_shift(pair.before.image, moved.image, pair.before.valid & moved.valid)
    assert np.abs(np.array(reg.shift_px) - base.shift_px - extra).max() <= 0.25


def test_flat_scenes_give_an_unreliable_shift_and_no_library_warning() -> None:
    import warnings

    flat = np.full((3, 256, 256), 100.0, np.float32)
    valid = np.ones((256, 256), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        reg = estimate_shift(flat, flat.copy(), valid)
    # Judged unreliable, and so not applied.
    assert reg.low_reliability and not reg.applied
    assert reg.correction == Affine.identity()


def test_coregister_refuses_a_pair_off_its_grid():
    from dataclasses import replace

    sp = make_synthetic_pair(SynthParams.for_scenario("suburb", seed=28, size=256))
    pair = align_pair(sp.before, sp.after)
    moved = replace(pair.after, grid=pair.grid.window(10, 0, *pair.grid.shape))
    with pytest.raises(ValueError, match="must lie on pair.grid"):
        coregister(replace(pair, after=moved))


def test_misregistration_of_an_estimate_applied_unchecked_or_checked(textured_image):
    from changedet.coregister import AlignmentCheck, Registration, _guard

    _, pair = _pair("compound", 25, (2.3, -1.4), size=512)
    found = estimate_shift(pair.before.image, pair.after.image, pair.before.valid)
    assert found.applied and found.alignment is None
    assert found.misregistration_px == pytest.approx(found.residual_rms_px)
    assert found.misregistration_px < 0.3
    # Unreliable and unchecked: the scenes stay as far apart as it measured.
    unchecked = _guard(Registration("global", (3.0, 4.0), 0.1, 2, Affine.identity(), 0.5))
    assert not unchecked.applied and unchecked.misregistration_px == pytest.approx(5.5)
    # Checked: what the check measured, or nothing when the dates share no structure
    # (and then the area ranges allow for none).
    measured = replace(unchecked, alignment=AlignmentCheck((3, -1), 9.0, 25, 5.0,
                                                           (2.8, -1.1), 0.2))
    assert measured.misregistration_px == pytest.approx(math.hypot(2.8, 1.1) + 0.2)
    assert measured.range_residual_px == measured.misregistration_px
    chance = replace(unchecked, alignment=AlignmentCheck((12, 20), 3.5, 25, 5.0,
                                                         (12.1, 19.8), 0.7))
    assert chance.misregistration_px is None and chance.range_residual_px == 0.0
    assert chance.summary(pair.grid)["misregistration_px"] is None
    assert chance.summary(pair.grid)["alignment"] == {
        "measured": False, "offset_px": [12, 20], "shift_px": [12.1, 19.8],
        "precision_px": 0.7, "z": 3.5, "z_needed": 5.0, "search_px": 25}


def _mostly_changed(textured_image, offset: tuple[float, float], kept_cols: int = 85,
                    size: int = 512, seed: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """A textured before date, and an after date that shows it moved by ``offset``
    (dx, dy) px (cubic, no wrap-around) in its first ``kept_cols`` columns and an
    unrelated texture everywhere else."""
    before = textured_image(size, size, bands=3, seed=seed).astype(np.float32)
    after = textured_image(size, size, bands=3, seed=seed + 1).astype(np.float32)
    dx, dy = offset
    moved = ndimage.shift(before, (0, dy, dx), order=3, mode="nearest")
    after[:, :, :kept_cols] = moved[:, :, :kept_cols]
    return before, after


@pytest.mark.parametrize("offset", [(0.0, 0.0), (3.0, -2.0), (-6.6, 4.3)])
def test_alignment_check_finds_what_a_mostly_changed_pair_shares(textured_image, offset):
    from changedet.coregister import check_alignment

    before, after = _mostly_changed(textured_image, offset)
    # Band 2 of the after date inverted: the orientations do not depend on a band's sense.
    after[1] = 255.0 - after[1]
    valid = np.ones((512, 512), bool)
    check = check_alignment(before, after, valid)
    assert check.measured and check.z >= check.z_needed + 5
    assert check.offset_px == (round(offset[0]), round(offset[1]))
    assert np.abs(np.subtract(check.shift_px, offset)).max() <= 0.25
    assert check.precision_px <= 0.3 and check.search_px == 51


def test_alignment_check_reads_every_band_and_the_whole_pair(textured_image):
    from changedet.coregister import check_alignment

    # What the dates share lies in band 3 only (bands 1 and 2 flat in both) ...
    before, after = _mostly_changed(textured_image, (2.0, 1.0))
    before[:2] = 100.0
    after[:2] = 100.0
    check = check_alignment(before, after, np.ones((512, 512), bool))
    assert check.measured and check.offset_px == (2, 1)
    # ... and in the eastern quarter of a 2048 px pair (mirrored: dx changes sign),
    # outside its central and its first squares.
    before, after = _mostly_changed(textured_image, (3.0, -2.0), kept_cols=500, size=2048)
    before, after = (np.ascontiguousarray(x[:, :, ::-1]) for x in (before, after))
    check = check_alignment(before, after, np.ones((2048, 2048), bool))
    assert check.measured and check.offset_px == (-3, -2)


def test_alignment_check_finds_nothing_in_unrelated_dates(textured_image):
    from changedet.coregister import check_alignment

    rng = np.random.default_rng(4)
    collar = np.ones((512, 512), bool)
    collar[:, :40] = False
    collar[400:, :] = False
    rows, cols = np.mgrid[:512, :512]
    masks = {
        # The same nodata in both dates is not structure they share: a collar, holes
        # of a few pixels all over (the edge of nodata must not be read as texture),
        # a narrow diagonal strip of data (few pairs at most offsets).
        "collar": collar,
        "holes": ~ndimage.binary_dilation(rng.random((512, 512)) > 0.998, iterations=3),
        "strip": np.abs(rows - cols) < 40,
    }
    for name, valid in masks.items():
        for seed in (1, 3):
            a = textured_image(512, 512, bands=3, seed=seed).astype(np.float32)
            b = textured_image(512, 512, bands=3, seed=seed + 1).astype(np.float32)
            a[:, ~valid] = 0.0
            b[:, ~valid] = 0.0
            check = check_alignment(a, b, valid)
            assert check is not None and not check.measured, (name, seed, check)
    # At 1024 px, where over 40,000 offsets are searched, chance goes higher (above 4
    # on these two pairs), and the level needed with it.
    for seed in (1, 2):
        a = textured_image(1024, 1024, bands=3, seed=100 + seed).astype(np.float32)
        b = textured_image(1024, 1024, bands=3, seed=200 + seed).astype(np.float32)
        check = check_alignment(a, b, np.ones((1024, 1024), bool))
        assert check.search_px == 102 and check.z_needed > 5.4
        assert not check.measured and check.z < check.z_needed
    flat = np.full((3, 256, 256), 100.0, np.float32)
    assert check_alignment(flat, flat.copy(), np.ones((256, 256), bool)) is None


def test_alignment_check_on_a_long_strip_fields_and_nan(textured_image):
    from changedet.coregister import check_alignment

    # Shared ground only in the middle third of a 1500 x 5000 strip: squares are read
    # along its length.
    before = textured_image(1500, 5000, bands=1, seed=1).astype(np.float32)
    after = textured_image(1500, 5000, bands=1, seed=2).astype(np.float32)
    moved = ndimage.shift(before, (0, 1.3, -2.4), order=3, mode="nearest")
    after[:, :, 1700:3300] = moved[:, :, 1700:3300]
    check = check_alignment(before, after, np.ones((1500, 5000), bool))
    assert check.measured and np.abs(np.subtract(check.shift_px, (-2.4, 1.3))).max() <= 0.2
    # Fields: a texture drawn out along the rows in both dates must not pull the
    # offset towards dx = 0 (the offsets with most pairs).
    rng = np.random.default_rng(3)
    fields = [ndimage.gaussian_filter(rng.normal(size=(3, 512, 512)), (0, 1, 12)) * 1e3 + 100
              for _ in range(2)]
    before, after = (f.astype(np.float32) for f in fields)
    after[:, :, :128] = ndimage.shift(before, (0, -1.7, 2.6), order=3, mode="nearest")[:, :, :128]
    valid = np.ones((512, 512), bool)
    check = check_alignment(before, after, valid)
    assert check.measured
    assert np.abs(np.subtract(check.shift_px, (2.6, -1.7))).max() <= check.precision_px
    # A NaN inside the valid mask is dropped, not spread over the whole correlation.
    before[:, 300:310, 300:310] = np.nan
    after[:, :, 450] = np.inf
    assert check_alignment(before, after, valid).measured


def test_alignment_check_false_alarms_on_small_coarse_pairs():
    # Coarse textures correlate neighbouring offsets' scores, which a spread measured
    # over those offsets understates: at the level of one false alarm in a thousand
    # pairs, 600 unrelated small pairs give none (without the correction for that
    # correlation, 3 of them were read as aligned).
    from changedet.coregister import check_alignment

    rng = np.random.default_rng(11)
    measured = judged = 0
    for size, sigma in ((96, 8), (128, 3)):
        valid = np.ones((size, size), bool)
        for _ in range(300):
            a, b = (ndimage.gaussian_filter(rng.normal(size=(3, size, size)),
                                            (0, sigma, sigma)) * 1e3 for _ in range(2))
            check = check_alignment(a.astype(np.float32), b.astype(np.float32), valid)
            judged += check is not None
            measured += bool(check is not None and check.measured)
    assert judged > 550 and measured == 0


def test_alignment_check_declines_to_judge_on_too_little_or_at_its_edge(textured_image):
    from changedet.coregister import Registration, _guard, check_alignment, check_unreliable

    tiny = textured_image(24, 24, bands=3, seed=1).astype(np.float32)
    assert check_alignment(tiny, np.roll(tiny, 1, axis=2), np.ones((24, 24), bool)) is None
    island = np.zeros((512, 512), bool)
    island[200:230, 300:330] = True
    a = textured_image(512, 512, bands=3, seed=1).astype(np.float32)
    assert check_alignment(a, a.copy(), island) is None
    # Shared structure just beyond the search: the dates may lie further apart still.
    before, after = _mostly_changed(textured_image, (52.0, 0.0))
    assert check_alignment(before, after, np.ones((512, 512), bool)) is None
    # A band of data 40 rows tall: most offsets cannot be scored, and the dates'
    # offset (26 rows) lies among those.
    band = np.zeros((512, 512), bool)
    band[200:240] = True
    a = textured_image(512, 512, bands=3, seed=5).astype(np.float32)
    b = ndimage.shift(a, (0, 26, 1.0), order=3, mode="nearest")
    a[:, ~band] = 0.0
    b[:, ~band] = 0.0
    assert check_alignment(a, b, band) is None
    # Then the estimate keeps its own shift and spread.
    unchecked = _guard(Registration("global", (3.0, 4.0), 0.1, 2, Affine.identity(), 0.5))
    kept = check_unreliable(unchecked, before, after, np.ones((512, 512), bool))
    assert kept.alignment is None and kept.misregistration_px == pytest.approx(5.5)


def test_an_unreliable_estimate_is_checked_and_says_why(textured_image, caplog):
    before, after = _mostly_changed(textured_image, (3.0, -2.0))
    valid = np.ones((512, 512), bool)
    reg = estimate_shift(before, after, valid)
    assert reg.low_reliability and not reg.applied
    assert reg.alignment is not None and reg.alignment.offset_px == (3, -2)
    assert reg.misregistration_px == pytest.approx(
        math.hypot(*reg.alignment.shift_px) + reg.alignment.precision_px)
    assert math.hypot(3, 2) < reg.misregistration_px < math.hypot(3, 2) + 0.5
    a = textured_image(512, 512, bands=3, seed=1).astype(np.float32)
    b = textured_image(512, 512, bands=3, seed=2).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="changedet"):
        unrelated = estimate_shift(a, b, valid)
    assert unrelated.low_reliability and unrelated.misregistration_px is None
    assert "share no structure" in caplog.text
    # The local method is checked alike.
    local = estimate_local(a, b, valid)
    assert local.low_reliability and local.alignment is not None
    assert local.misregistration_px is None


def test_a_grid_larger_than_the_chip_is_registered_on_its_centre(
        monkeypatch: pytest.MonkeyPatch, textured_image) -> None:
    """The shift of a grid larger than COREG_CHIP_PX is measured on its central
    chip, and the windows it was measured in are reported where they lie on the
    grid, not on the chip."""
    from rasterio.crs import CRS

    import changedet.coregister as coregister_module
    from changedet.raster import Grid, Scene

    monkeypatch.setattr(coregister_module, "COREG_CHIP_PX", 256)
    image = textured_image(700, 700, seed=5).astype(np.float32)
    valid = np.ones((700, 700), bool)
    grid = Grid(CRS.from_epsg(32633), Affine(1.0, 0, 500000.0, 0, -1.0, 4000000.0),
                700, 700)
    shifted = np.roll(image, (2, -3), axis=(1, 2))

    def read(box: tuple[int, int, int, int]) -> tuple[Scene, Scene]:
        r0, c0, r1, c1 = box
        sub = grid.window(r0, c0, r1 - r0, c1 - c0)
        return (Scene(image[:, r0:r1, c0:c1], valid[r0:r1, c0:c1], sub),
                Scene(shifted[:, r0:r1, c0:c1], valid[r0:r1, c0:c1], sub))

    reg = coregister_module.register_on_chips(read, (700, 700), "global")
    assert reg.applied and reg.shift_px == pytest.approx((-3.0, 2.0), abs=0.05)
    centres = np.array([w["centre"] for w in reg.windows])
    assert len(centres) >= 9
    assert (centres >= 222).all() and (centres <= 478).all()
