"""New-building evidence and segmentation on small hand-made scenes with exact truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage

from changedet.change import (DetectionParams, SceneStatistics, detect_new_buildings,
                              outline_stage, outline_strength, segment_new_buildings,
                              vegetation_index)
from changedet.raster import Grid, Scene

GRASS = (70.0, 110.0, 50.0)
ROOF_OLD = (150.0, 150.0, 155.0)
ROOF_NEW = (190.0, 90.0, 70.0)
ASPHALT = (95.0, 95.0, 100.0)
BARE = (160.0, 140.0, 110.0)


def _grid(size: int, pixel: float) -> Grid:
    return Grid(CRS.from_epsg(32651), Affine(pixel, 0, 500000.0, 0, -pixel, 4300000.0),
                size, size)


def _paint(img: np.ndarray, box: tuple[float, float, float, float], colour, pixel: float
           ) -> None:
    """Fill a box given in metres (x0, y0, x1, y1; y down) with exact partial cover."""
    h, w = img.shape[1:]
    x0, y0, x1, y1 = (v / pixel for v in box)
    cols = np.clip(np.minimum(np.arange(w) + 1, x1) - np.maximum(np.arange(w), x0), 0, 1)
    rows = np.clip(np.minimum(np.arange(h) + 1, y1) - np.maximum(np.arange(h), y0), 0, 1)
    cov = rows[:, None] * cols[None, :]
    for b in range(3):
        img[b] = img[b] * (1 - cov) + colour[b] * cov


def _shadow(img: np.ndarray, box, sun_dir: tuple[float, float], length: float,
            pixel: float) -> None:
    """Darken the ground a building's shadow covers (the box swept away from the sun)."""
    h, w = img.shape[1:]
    yy, xx = (np.mgrid[0:h, 0:w] + 0.5) * pixel
    x0, y0, x1, y1 = box
    dx, dy = -sun_dir[0], -sun_dir[1]
    inside = np.zeros((h, w), bool)
    for t in np.linspace(0, length, int(length / pixel * 2) + 1):
        inside |= (xx >= x0 + dx * t) & (xx < x1 + dx * t) & (yy >= y0 + dy * t) & (yy < y1 + dy * t)
    on_roof = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    img[:, inside & ~on_roof] *= 0.3


def _base(size_m: float, pixel: float, seed: int) -> np.ndarray:
    n = int(round(size_m / pixel))
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.normal(size=(n, n)), 3.0 / pixel)
    tex = 1 + 0.08 * tex / tex.std()
    return np.stack([c * tex for c in GRASS]).astype(np.float64)


def _scene(img: np.ndarray, pixel: float, rng: np.random.Generator) -> Scene:
    noisy = (img + rng.normal(0, 1.5, img.shape)).astype(np.float32)
    n = img.shape[1]
    return Scene(noisy, np.ones((n, n), bool), _grid(n, pixel))


def _pair(pixel: float = 1.0, seed: int = 0, extra_new: bool = True):
    """Before/after scenes of a 160 m square and the truth mask of new buildings.

    Old building with a shadow that moves (sun from NW before, from NE after); a new
    flat-roofed building with its shadow; new asphalt (no height, no shadow); a
    patch of grass turning to bare earth; a patch whose greenness changes; and
    (optionally) a second, smaller new building.
    """
    size = 160.0
    rng = np.random.default_rng(seed)
    before = _base(size, pixel, seed)
    after = before.copy()
    # Sun direction as (east, south) unit vector pointing towards the sun, y down.
    sun_b = (-0.7071, -0.7071)   # north-west
    sun_a = (0.7071, -0.7071)    # north-east
    old = (20.0, 20.0, 45.0, 40.0)
    _paint(before, old, ROOF_OLD, pixel)
    _paint(after, old, ROOF_OLD, pixel)
    _shadow(before, old, sun_b, 6.0, pixel)
    _shadow(after, old, sun_a, 6.0, pixel)
    new = (80.0, 30.0, 122.0, 58.0)            # 42 x 28 m = 1176 m²
    _paint(after, new, ROOF_NEW, pixel)
    _shadow(after, new, sun_a, 6.0, pixel)
    truth_boxes = [new]
    if extra_new:
        small = (30.0, 110.0, 44.0, 122.0)     # 14 x 12 m = 168 m²
        _paint(after, small, ROOF_OLD, pixel)
        _shadow(after, small, sun_a, 5.0, pixel)
        truth_boxes.append(small)
    _paint(after, (70.0, 100.0, 140.0, 118.0), ASPHALT, pixel)   # new parking lot
    _paint(after, (100.0, 130.0, 150.0, 155.0), BARE, pixel)     # cleared ground
    after[:, int(120 / pixel):int(150 / pixel), int(5 / pixel):int(25 / pixel)] *= (
        np.array([0.8, 1.15, 0.8])[:, None, None])                # greener grass
    # A different date: gain, offset and gamma on every band.
    after = 1.1 * 255 * (after / 255) ** 0.9 + 12
    truth = np.zeros(before.shape[1:])
    for box in truth_boxes:
        one = np.zeros((3,) + before.shape[1:])
        _paint(one, box, (1.0, 1.0, 1.0), pixel)
        truth = np.maximum(truth, one[0])
    return _scene(before, pixel, rng), _scene(after, pixel, rng), truth, truth_boxes


def _areas(labels: np.ndarray, pixel: float) -> list[float]:
    counts = np.bincount(labels.ravel())[1:]
    return sorted(float(c) * pixel * pixel for c in counts if c)


@pytest.mark.parametrize("detector", ["regions", "handcrafted", "appearance"])
@pytest.mark.parametrize("pixel", [1.0, 0.5])
def test_new_buildings_found_and_nothing_else(pixel: float, detector: str) -> None:
    before, after, truth, boxes = _pair(pixel)
    labels, ev = detect_new_buildings(
        before, after, DetectionParams(sun_azimuth_deg=45.0, detector=detector))
    assert labels.dtype == np.int32
    assert labels.max() == 2, _areas(labels, pixel)
    # Each truth building is one label; nothing found on the pavement, bare ground,
    # greener grass or the old building's moved shadow.
    true_area = sorted((b[2] - b[0]) * (b[3] - b[1]) for b in boxes)
    found = _areas(labels, pixel)
    for f, t in zip(found, true_area):
        assert abs(f - t) / t < 0.08, (found, true_area)
    pred = labels > 0
    assert (pred & (truth > 0.5)).sum() / max(pred.sum(), 1) > 0.9
    assert ev.score.shape == truth.shape
    assert ev.threshold > 0


def test_a_nodata_collar_changes_neither_the_noise_nor_the_buildings() -> None:
    """A scene delivered with nodata around its footprint (here 60 % of the array)
    must be judged as the footprint alone: nodata is flat, and counted as pixels it
    read as a noiseless sensor, every change as hugely significant."""
    before, after, _, _ = _pair(1.0)
    n = before.image.shape[1]

    def collared(scene: Scene) -> Scene:
        image = np.zeros((3, n, int(2.5 * n)), np.float32)
        image[:, :, :n] = scene.image
        valid = np.zeros(image.shape[1:], bool)
        valid[:, :n] = scene.valid
        grid = Grid(scene.grid.crs, scene.grid.transform, n, image.shape[2])
        return Scene(image, valid, grid)

    stats_alone, stats_collared = SceneStatistics(), SceneStatistics()
    params = DetectionParams(sun_azimuth_deg=45.0)
    alone, _ = detect_new_buildings(before, after, params, stats_alone)
    with_collar, _ = detect_new_buildings(collared(before), collared(after), params,
                                          stats_collared)
    for name, value in stats_alone.values.items():
        if name.startswith("noise_"):  # the same pixels: exact
            assert stats_collared.values[name] == pytest.approx(value, rel=1e-6), name
        elif name.startswith("median_gradient_"):
            # The footprint's last column sees the step down to nodata.
            assert stats_collared.values[name] == pytest.approx(value, rel=0.02), name
    assert alone.max() == 2
    assert _areas(with_collar, 1.0) == _areas(alone, 1.0)


def test_the_noise_median_of_integer_pixels_moves_smoothly_with_the_noise() -> None:
    """Residuals of integer pixels lie on multiples of 0.25: the plain median jumps a
    whole step (a tenth of a typical noise) where the grouped median follows the
    continuous one."""
    from changedet.change import _lattice_median

    rng = np.random.default_rng(0)
    worst_plain = worst_grouped = 0.0
    for scale in np.linspace(1.0, 1.5, 21):
        continuous = np.abs(rng.normal(0.0, scale, 200_000))
        on_lattice = np.round(continuous / 0.25) * 0.25
        truth = float(np.median(continuous))
        worst_plain = max(worst_plain, abs(float(np.median(on_lattice)) - truth))
        worst_grouped = max(worst_grouped, abs(_lattice_median(on_lattice, 0.25) - truth))
    assert worst_grouped < 0.01 < 0.08 < worst_plain
    off_lattice = np.array([0.1, 0.3, 0.7])
    assert _lattice_median(off_lattice, 0.25) == pytest.approx(0.3)
    assert np.isnan(_lattice_median(np.array([]), 0.25))


def test_the_lattice_step_is_the_datas_own() -> None:
    """Residuals of counts lie on multiples of 0.25, of counts stretched by 4 on
    multiples of 1, of counts rescaled to reflectance near multiples of 0.25/255;
    continuous values lie on no lattice."""
    from changedet.change import _lattice_step

    rng = np.random.default_rng(1)
    counts = np.round(rng.normal(100.0, 3.0, (3, 200, 200)))

    def residual(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        return np.abs(x[:, 1:-1, 1:-1] - 0.25 * (x[:, :-2, 1:-1] + x[:, 2:, 1:-1]
                                                 + x[:, 1:-1, :-2] + x[:, 1:-1, 2:])).ravel()

    assert _lattice_step(residual(counts)) == 0.25
    assert _lattice_step(residual(4 * counts)) == 1.0
    assert _lattice_step(residual(counts / 255)) == pytest.approx(0.25 / 255, rel=1e-5)
    assert _lattice_step(residual(rng.normal(100.0, 3.0, (3, 200, 200)))) is None
    assert _lattice_step(np.zeros(10, np.float32)) is None
    assert _lattice_step(np.array([np.inf, np.nan, 0.0], np.float32)) is None
    # A few saturated pixels that are no multiple of the stretch (65535 among counts
    # times 4), and 12-bit counts rescaled (float32 rounding near the lattice).
    stretched = 4 * counts
    stretched.ravel()[::1000] = 65535
    assert _lattice_step(residual(stretched)) == 1.0
    twelve_bit = np.round(rng.normal(2000.0, 6.0, (3, 200, 200)))
    assert _lattice_step(residual(twelve_bit / 10000)) == pytest.approx(0.25 / 10000,
                                                                        rel=1e-4)


@pytest.mark.parametrize("scale", [4.0, 1 / 255, 1 / 25500])
def test_counts_stretched_or_rescaled_measure_the_same_noise_and_buildings(
        scale: float) -> None:
    """One 8-bit scene delivered as counts times 4 in 16 bits, as reflectance (counts
    / 255), or as a dim reflectance (noise about 6e-5): the same noise in its own
    units, and the same buildings as the counts. (With the lattice fixed at 0.25 the
    reflectance's noise was the plain median's, some per cent off; with floors fixed
    at 1e-3, the dim one's noise and radiometric fit were the floors'.)"""
    before, after, _, _ = _pair(1.0)

    def run(scale: float) -> tuple[dict[str, float], list[float]]:
        def delivered(scene: Scene) -> Scene:
            counts = np.clip(np.round(scene.image), 0, 255)
            return replace(scene, image=(counts * scale).astype(np.float32))

        stats = SceneStatistics()
        labels, _ = detect_new_buildings(delivered(before), delivered(after),
                                         DetectionParams(sun_azimuth_deg=45.0), stats)
        noise = {k: v / scale for k, v in stats.values.items() if k.startswith("noise_")}
        return noise, _areas(labels, 1.0)

    counts_noise, counts_areas = run(1.0)
    noise, areas = run(scale)
    assert len(counts_areas) == 2
    for name, value in counts_noise.items():
        assert noise[name] == pytest.approx(value, rel=1e-5), name
    assert areas == pytest.approx(counts_areas, rel=1e-3)


@pytest.mark.parametrize("turned", [False, True])
def test_sun_azimuth_estimated_from_shadows(turned: bool) -> None:
    before, after, truth, _ = _pair(1.0)
    sun = 45.0
    if turned:
        # The scene turned half a turn: the sun comes from the south-west. Two suns
        # three quarters of the circle apart, so that no fixed answer passes both.
        before, after = (replace(s, image=np.ascontiguousarray(s.image[:, ::-1, ::-1]))
                         for s in (before, after))
        sun = 225.0
    labels, ev = detect_new_buildings(before, after, DetectionParams(detector="handcrafted"))
    assert ev.sun_azimuth_deg is not None
    # A box's shadow seen along the diagonal shows on two sides, so the estimate may
    # be off by up to two probe steps.
    assert abs(((ev.sun_azimuth_deg - sun) + 180) % 360 - 180) <= 46.0
    assert labels.max() == 2


@pytest.mark.parametrize("j", range(16))
def test_the_sun_is_opposite_the_side_in_shadow(j: int) -> None:
    from changedet.change import _N_DIRECTIONS, _estimate_sun

    rng = np.random.default_rng(j)
    # Per candidate (row 0 unused) and probe direction, the share of shadow beside it.
    frac = rng.uniform(0.0, 0.1, (4, _N_DIRECTIONS))
    frac[1:, j] = [0.8, 0.6, 0.7]
    areas = np.array([0.0, 500.0, 300.0, 800.0])
    assert _estimate_sun(frac, areas) == pytest.approx((j * 360 / _N_DIRECTIONS + 180) % 360)
    # No clear shadow beside any candidate: no estimate.
    assert _estimate_sun(rng.uniform(0.0, 0.1, (4, _N_DIRECTIONS)), areas) is None


def test_min_area_respected() -> None:
    before, after, _, _ = _pair(1.0)
    params = DetectionParams(sun_azimuth_deg=45.0, min_area_m2=300.0)
    labels, _ = detect_new_buildings(before, after, params)
    assert labels.max() == 1
    assert _areas(labels, 1.0)[0] > 1000


def test_threshold_override_is_used() -> None:
    before, after, _, _ = _pair(1.0)
    labels, ev = detect_new_buildings(
        before, after, DetectionParams(sun_azimuth_deg=45.0, threshold=1e6))
    assert ev.threshold == 1e6
    assert labels.max() == 0


def test_nothing_new_when_nothing_changed() -> None:
    before, _, _, _ = _pair(1.0)
    rng = np.random.default_rng(5)
    after = Scene(before.image + rng.normal(0, 1.5, before.image.shape).astype(np.float32),
                  before.valid.copy(), before.grid)
    labels, _ = detect_new_buildings(before, after, DetectionParams())
    assert labels.max() == 0


def test_vegetation_index_without_and_with_nir() -> None:
    img = np.zeros((4, 1, 2), np.float32)
    img[:, 0, 0] = (60, 120, 50, 200)   # leaf: green, bright in near-infrared
    img[:, 0, 1] = (150, 150, 150, 150)  # grey roof
    vis, is_ndvi = vegetation_index(img[:3], None)
    assert not is_ndvi and vis[0, 0] > 0.1 and abs(vis[0, 1]) < 1e-6
    ndvi, is_ndvi = vegetation_index(img, 3)
    assert is_ndvi and ndvi[0, 0] > 0.5 and abs(ndvi[0, 1]) < 1e-6


def test_learned_detector_finds_the_new_buildings() -> None:
    before, after, truth, boxes = _pair(1.0)
    labels, ev = detect_new_buildings(before, after, DetectionParams(detector="learned"))
    assert ev.probability is not None and ev.threshold == 0.5
    assert float(ev.probability.min()) >= 0.0 and float(ev.probability.max()) <= 1.0
    tl, nt = ndimage.label(truth > 0.5)
    for j in range(1, nt + 1):
        hit = np.unique(labels[tl == j])
        hit = hit[hit > 0]
        assert hit.size == 1
        found = float((labels == hit[0]).sum())
        true = float((tl == j).sum())
        assert abs(found - true) / true < 0.08, (found, true)
    # Nothing of 100 m² or more on the pavement, bare ground, greener grass or the
    # old building's moved shadow (smaller specks remain: see benchmarks).
    for k in range(1, int(labels.max()) + 1):
        m = labels == k
        if not (truth[m] > 0.5).any():
            assert m.sum() < 100


def test_shipped_model_matches_the_features() -> None:
    from changedet.change import FEATURE_NAMES, load_model

    model = load_model()
    assert tuple(str(n) for n in model["feature_names"]) == FEATURE_NAMES
    assert model["W0"].shape[0] == len(FEATURE_NAMES)


def test_shipped_region_model_matches_the_features() -> None:
    from changedet.change import REGION_FEATURE_NAMES, _load_region_model

    model = _load_region_model()
    assert tuple(str(n) for n in model["feature_names"]) == REGION_FEATURE_NAMES
    first = "m0_W0" if "m0_W0" in model else "W0"
    assert model[first].shape[0] == len(REGION_FEATURE_NAMES)


def test_colour_regions_split_along_the_colour_edge() -> None:
    from changedet.change import chroma_edges, colour_regions

    pixel = 0.5
    img = _base(60.0, pixel, 3)
    roof = (10.0, 10.0, 30.0, 40.0)
    earth = (30.0, 10.0, 50.0, 40.0)
    _paint(img, roof, ROOF_NEW, pixel)
    _paint(img, earth, BARE, pixel)
    scene = _scene(img, pixel, np.random.default_rng(1))
    domain = np.zeros(scene.valid.shape, bool)
    domain[int(10 / pixel):int(40 / pixel), int(10 / pixel):int(50 / pixel)] = True
    regions = colour_regions(domain, chroma_edges(scene.image, None, scene.valid), pixel)
    assert set(np.unique(regions[domain])) >= {1, 2}
    # The biggest region inside each box covers that box and (almost) nothing else.
    for box in (roof, earth):
        inside = np.zeros_like(domain)
        inside[int(box[1] / pixel):int(box[3] / pixel), int(box[0] / pixel):int(box[2] / pixel)] = True
        ids, counts = np.unique(regions[inside], return_counts=True)
        k = ids[np.argmax(counts)]
        iou = (inside & (regions == k)).sum() / (inside | (regions == k)).sum()
        assert iou > 0.93, (box, iou)


def test_roof_told_from_the_construction_earth_around_it() -> None:
    """A new roof on a new patch of bare earth: only the roof is a building."""
    pixel = 0.5
    before = _base(160.0, pixel, 4)
    after = before.copy()
    roof = (60.0, 50.0, 100.0, 80.0)           # 40 x 30 m = 1200 m²
    _paint(after, (45.0, 38.0, 118.0, 96.0), BARE, pixel)
    _shadow(after, roof, (0.7071, -0.7071), 6.0, pixel)
    _paint(after, roof, ROOF_NEW, pixel)
    rng = np.random.default_rng(2)
    labels, _ = detect_new_buildings(_scene(before, pixel, rng), _scene(after, pixel, rng))
    areas = _areas(labels, pixel)
    assert len(areas) == 1, areas
    assert abs(areas[0] - 1200.0) / 1200.0 < 0.03, areas


SLAB = (200.0, 195.0, 185.0)


def _slab_and_new_house(pixel: float) -> tuple[Scene, Scene]:
    """A house pulled down to its slab (30 x 22 m at 30, 30 m) and a new one
    (35 x 28 m = 980 m² at 90, 90 m)."""
    before = _base(160.0, pixel, 7)
    sun = (0.7071, -0.7071)
    house = (30.0, 30.0, 60.0, 52.0)           # before only
    _shadow(before, house, sun, 6.0, pixel)
    _paint(before, house, ROOF_NEW, pixel)
    after = _base(160.0, pixel, 7)
    _paint(after, house, SLAB, pixel)
    new = (90.0, 90.0, 125.0, 118.0)           # after only
    _shadow(after, new, sun, 6.0, pixel)
    _paint(after, new, ROOF_OLD, pixel)
    rng = np.random.default_rng(3)
    return _scene(before, pixel, rng), _scene(after, pixel, rng)


@pytest.mark.parametrize("pixel", [1.0, 0.5])
def test_demolished_house_is_not_a_new_building(pixel: float) -> None:
    """A house pulled down to its slab changes as much as a new roof; its outline,
    already an edge in the before date, tells it from one."""
    before, after = _slab_and_new_house(pixel)

    def found(params: DetectionParams) -> tuple[np.ndarray, int]:
        labels, ev = detect_new_buildings(before, after, params)
        return labels, ev.outlined_before

    kept_all, n_left = found(DetectionParams(outline_before=None))
    on_slab = np.zeros_like(kept_all, bool)
    on_slab[int(30 / pixel):int(52 / pixel), int(30 / pixel):int(60 / pixel)] = True
    # Without the test the slab is reported (else this test would prove nothing).
    assert (kept_all[on_slab] > 0).mean() > 0.5
    assert n_left == 0
    labels, n_left = found(DetectionParams())
    assert n_left == 1
    assert not (labels[on_slab] > 0).any()
    areas = _areas(labels, pixel)
    assert len(areas) == 1 and abs(areas[0] - 980.0) / 980.0 < 0.05, areas


def test_a_second_segmentation_of_one_evidence_starts_afresh() -> None:
    """A notebook re-runs the segmentation on the evidence of a first run with other
    parameters: what the first left out as standing before was laid over the second's
    buildings by the outline stage (42 buildings of 221 px where a fresh run found 6
    of 3,677 on a synthetic demolition)."""
    before, after = _slab_and_new_house(1.0)
    keep = DetectionParams(outline_before=None)
    fresh, _ = detect_new_buildings(before, after, keep)
    _, ev = detect_new_buildings(before, after, DetectionParams())
    assert ev.outlined_before == 1  # the slab (else this proves nothing)
    valid = before.valid & after.valid
    again = outline_stage(segment_new_buildings(ev, valid, 1.0, keep, (before, after)),
                          ev, valid, 1.0, keep)
    assert ev.outlined_before == 0
    np.testing.assert_array_equal(again > 0, fresh > 0)


def test_the_outline_stage_called_again_redraws_what_segmentation_left() -> None:
    """A notebook cell re-run: the outline stage redrew the buildings left out as
    standing from its own last redraw, so that they shrank at each call."""
    from changedet.coregister import coregister
    from changedet.raster import align_pair
    from changedet.synth import SynthParams, make_synthetic_pair

    sp = make_synthetic_pair(SynthParams.for_scenario("infill", seed=0, size=700))
    pair, _ = coregister(align_pair(sp.before, sp.after))
    before, after, px = pair.before, pair.after, pair.grid.pixel_size[0]
    params = DetectionParams()
    valid = before.valid & after.valid
    _, ev = detect_new_buildings(before, after, params)
    segmented = segment_new_buildings(ev, valid, px, params, (before, after))
    assert ev.outlined_before > 0  # else this proves nothing
    first = outline_stage(segmented, ev, valid, px, params)
    standing = ev.standing_before.copy()
    for _ in range(2):
        np.testing.assert_array_equal(outline_stage(segmented, ev, valid, px, params), first)
        np.testing.assert_array_equal(ev.standing_before, standing)


@pytest.mark.parametrize("kwargs, message", [
    ({"detector": "region"}, "detector must be one of"),
    ({"min_area_m2": float("nan")}, "min_area_m2 must be a finite number of 0 or more"),
    ({"region_probability": 1.5}, "region_probability must be a finite number from 0 to 1"),
    ({"ground_pixel_m": 0.0}, "ground_pixel_m must be a finite number above 0"),
    ({"threshold": float("inf")}, "threshold must be a finite number"),
])
def test_detection_params_refuse_what_no_stage_can_use(kwargs: dict, message: str) -> None:
    """A misspelt detector ran another one and a NaN level kept nothing, silently,
    when the stages were called one by one."""
    with pytest.raises(ValueError, match=message):
        DetectionParams(**kwargs)
    with pytest.raises(ValueError, match=message):
        replace(DetectionParams(), **kwargs)


HEDGE = (25.0, 40.0, 20.0)


@pytest.mark.parametrize("pixel", [1.0, 0.5])
def test_new_house_over_a_drive_and_lot_lines_is_new(pixel: float) -> None:
    """A house built among old ones stands where a drive and hedges ran: its outline
    crosses their edges, which makes the band around it edgy in the before date, but
    no edge ran along the outline."""
    before = _base(160.0, pixel, 11)
    _paint(before, (58.0, 0.0, 62.0, 160.0), (205.0, 200.0, 190.0), pixel)   # a drive
    for hedge in ((66.0, 0.0, 67.0, 160.0), (0.0, 44.0, 160.0, 45.5),
                  (0.0, 52.0, 160.0, 53.5)):
        _paint(before, hedge, HEDGE, pixel)
    after = before.copy()
    house = (48.0, 36.0, 76.0, 58.0)           # 28 x 22 m = 616 m²
    _shadow(after, house, (0.7071, -0.7071), 6.0, pixel)
    _paint(after, house, ROOF_NEW, pixel)
    rng = np.random.default_rng(3)
    labels, ev = detect_new_buildings(_scene(before, pixel, rng), _scene(after, pixel, rng))
    truth = np.zeros(labels.shape, np.int32)
    truth[int(36 / pixel):int(58 / pixel), int(48 / pixel):int(76 / pixel)] = 1
    # The band's mean alone would call it standing (else this proves nothing).
    assert outline_strength(truth, 1, ev.edges_before, pixel)[1] >= DetectionParams().outline_before
    assert ev.outlined_before == 0
    areas = _areas(labels, pixel)
    assert len(areas) == 1 and abs(areas[0] - 616.0) / 616.0 < 0.03, areas


@pytest.mark.parametrize("last_row", [160, 100])
def test_new_building_beside_nodata_is_not_taken_for_one_standing_before(last_row: int
                                                                         ) -> None:
    """The step to zeroed nodata pixels is no outline of the before date, and however
    much nodata there is (60 % with last_row=100), edges are compared with valid
    ground."""
    before = _base(160.0, 1.0, 7)
    after = before.copy()
    new = (60.0, 40.0, 100.0, 70.0)            # 40 x 30 m = 1200 m²
    _shadow(after, new, (0.7071, -0.7071), 6.0, 1.0)
    _paint(after, new, ROOF_OLD, 1.0)
    rng = np.random.default_rng(3)
    b, a = _scene(before, 1.0, rng), _scene(after, 1.0, rng)
    b.valid[:, :59] = False                    # nodata from 1 m west of the roof
    b.valid[last_row:] = False
    b.image[:, ~b.valid] = 0.0
    labels, ev = detect_new_buildings(b, a)
    assert ev.outlined_before == 0
    areas = _areas(labels, 1.0)
    assert len(areas) == 1 and abs(areas[0] - 1200.0) / 1200.0 < 0.03, areas


def test_outline_strength_is_the_mean_of_the_band_around_each_object() -> None:
    labels = np.zeros((60, 80), np.int32)
    labels[10:30, 10:30] = 1
    labels[10:30, 32:50] = 2                   # 2 px from object 1
    labels[40:55, 60:75] = 3
    ring = np.zeros(labels.shape, bool)
    ring[8:32, 8:32] = True
    ring[12:28, 12:28] = False
    edges = np.where(ring, 5.0, 1.0)
    strength = outline_strength(labels, 3, edges, 1.0)
    assert strength[0] == 0.0
    assert strength[1] > 3.0
    assert strength[3] == pytest.approx(1.0)
    # Each object is measured on its own band in full, whatever lies beside it.
    alone = np.where(labels == 2, 1, 0)
    assert strength[2] == pytest.approx(outline_strength(alone, 1, edges, 1.0)[1])
    assert 1.0 < strength[2] < strength[1]
    # Only the measured pixels count; an object with none measures 0.
    measured = np.ones(labels.shape, bool)
    measured[:, :32] = False                   # object 2's band off the ring
    partial = outline_strength(labels, 3, edges, 1.0, measured=measured)
    assert partial[2] == pytest.approx(1.0) and partial[1] == 0.0


def test_outline_along_counts_edges_along_most_of_the_outline() -> None:
    from changedet.change import _gradient, outline_along

    labels = np.zeros((70, 100), np.int32)
    labels[10:30, 10:30] = 1                   # on the slab of a building pulled down
    labels[10:30, 32:50] = 2                   # 2 px from object 1, no slab of its own
    labels[48:54, 30:80] = 3                   # across stripes (lot lines, tracks)
    labels[10:30, 70:90] = 4                   # a drive's edge along its north side only
    bright = np.full(labels.shape, 100.0)
    bright[10:30, 10:30] = 200.0
    bright[4:11, 66:94] = 200.0
    stripes = (np.arange(labels.shape[1]) // 2) % 2 == 1
    bright[40:62, 24:86] += 60.0 * stripes[24:86]
    edges = _gradient(bright.astype(np.float32), 1.0) / 5.0
    along = outline_along(labels, 4, edges, bright, 1.0)
    mean = outline_strength(labels, 4, edges, 1.0)
    assert along[0] == 0.0
    # The slab's edge all round: its full strength, the peak of the step's gradient.
    assert along[1] == pytest.approx(edges[20, 8:12].max(), rel=0.05)
    # An edge along one side of four is not an outline: the median, not the mean.
    assert along[4] < 0.1 * along[1] and mean[4] > 1.0
    assert along[2] < 0.1 * along[1]
    # Stripes across the long sides make an edgy band, but no edge along the outline.
    assert mean[3] > 2.0 and along[3] < 0.1 * mean[3]
    # Each object is measured on its own band in full, whatever lies beside it.
    alone = np.where(labels == 1, 1, 0)
    assert along[1] == pytest.approx(outline_along(alone, 1, edges, bright, 1.0)[1])
    # Only the measured pixels count: object 1 not at all; of object 2 only the side
    # that faces the slab's edge, which runs along it.
    measured = np.zeros(labels.shape, bool)
    measured[:, 31:34] = True
    partial = outline_along(labels, 4, edges, bright, 1.0, measured=measured)
    assert partial[1] == 0.0 and partial[2] > 0.2 * along[1]
    # Only the chosen objects are measured.
    chosen = outline_along(labels, 4, edges, bright, 1.0, only=np.array([0, 0, 1, 1, 0], bool))
    assert chosen[1] == 0.0 and chosen[3] == pytest.approx(along[3])


def test_fixed_bin_otsu_splits_two_populations_and_ignores_the_sample_extremes() -> None:
    from changedet.change import _auto_threshold

    rng = np.random.default_rng(0)
    # Nuisance change around 3 noise units, new roofs around 30 (log-normal).
    nuisance = np.exp(rng.normal(np.log(3.0), 0.3, 200_000))
    roofs = np.exp(rng.normal(np.log(30.0), 0.3, 40_000))
    sample = np.concatenate([nuisance, roofs])
    t = _auto_threshold(sample[sample > 1.0], 1.0)
    assert 6.0 < t < 15.0
    # Another sample of the same scene whose extremes differ (one huge score): the
    # bins do not move with them, so the threshold barely does.
    other = np.concatenate([sample[::2], [1e6]])
    # (Bins fitted to each sample's range put these two 0.8 % apart.)
    assert _auto_threshold(other[other > 1.0], 1.0) == pytest.approx(t, rel=0.004)
    # Too few scores above the floor: the floor.
    assert _auto_threshold(np.array([2.0, 3.0]), 1.5) == 1.5


def test_region_rim_on_the_edge_of_the_data_is_measured() -> None:
    """data_edge: the share of a region's rim on nodata (not on the array's border,
    which in a windowed run is a window's edge inside the scene)."""
    from changedet.change import (REGION_FEATURE_NAMES, candidate_regions,
                                  new_building_evidence, region_features)

    pixel = 0.5
    before = _base(80.0, pixel, 5)
    after = before.copy()
    inner = (20.0, 20.0, 40.0, 40.0)            # well inside the data
    at_edge = (60.0, 10.0, 80.0, 30.0)          # cut by the array's right edge
    for box in (inner, at_edge):
        _paint(after, box, ROOF_NEW, pixel)
    rng = np.random.default_rng(3)
    b, a = _scene(before, pixel, rng), _scene(after, pixel, rng)
    # Nodata along the bottom rows: a third roof cut by it.
    nodata_cut = (20.0, 70.0, 40.0, 80.0)
    _paint(a.image, nodata_cut, ROOF_NEW, pixel)
    valid = np.ones(b.valid.shape, bool)
    valid[int(76 / pixel):] = False
    b.valid[:] = valid
    a.valid[:] = valid
    params = DetectionParams()
    evidence = new_building_evidence(b, a, params, after_raw=a.image)
    regions, n = candidate_regions(evidence, valid, pixel, params)
    feats = region_features(regions, n, evidence, valid, pixel)
    share = feats[REGION_FEATURE_NAMES.index("data_edge"), :, 0]

    def region_of(box: tuple[float, float, float, float]) -> int:
        x0, y0, x1, y1 = (int(v / pixel) for v in box)
        ids, counts = np.unique(regions[y0:y1, x0:x1], return_counts=True)
        k = int(ids[np.argmax(counts)])
        assert k > 0, box  # the roof is a candidate region
        return k

    assert share[region_of(inner)] == 0.0
    assert share[region_of(at_edge)] == 0.0
    # One of the four sides of the roof cut by nodata lies on it.
    assert 0.1 < share[region_of(nodata_cut)] < 0.5


def _blobs(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, int]:
    """Many small labelled objects, some on the array's border, some touching."""
    rng = np.random.default_rng(seed)
    labels, n = ndimage.label(ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.52)
    return labels.astype(np.int32), n


def test_sums_over_the_labelled_pixels_equal_sums_over_the_array() -> None:
    """Per-label sums on the pixel list are bit-identical to sums over every pixel."""
    from changedet.change import _labelled_pixels

    labels, n = _blobs((90, 70), 1)
    values = np.random.default_rng(2).random(labels.shape) * 1e3
    at, lab = _labelled_pixels(labels)
    got = np.bincount(lab, weights=values.ravel()[at], minlength=n + 1)
    whole = np.bincount(labels.ravel(), weights=values.ravel(), minlength=n + 1)
    assert n > 20
    np.testing.assert_array_equal(got[1:], whole[1:])


def test_shadow_side_fractions_equal_shifted_copies_of_the_array() -> None:
    """Each direction's strip, from the pixel list, sums exactly as a shifted copy
    of the whole label array does."""
    import math

    from changedet.change import _N_DIRECTIONS, _shadow_side_fractions

    labels, n = _blobs((80, 96), 3)
    shadow = np.random.default_rng(4).random(labels.shape).astype(np.float32)
    reach = 3.0
    got = _shadow_side_fractions(labels, n, shadow, reach)
    # Several maps at once: each as if alone.
    pair = _shadow_side_fractions(labels, n, [shadow, 1 - shadow], reach)
    np.testing.assert_array_equal(pair[0], got)
    np.testing.assert_array_equal(pair[1], _shadow_side_fractions(labels, n, 1 - shadow, reach))
    h, w = labels.shape
    for j in range(_N_DIRECTIONS):
        az = math.radians(j * 360.0 / _N_DIRECTIONS)
        dc, dr = int(round(reach * math.sin(az))), int(round(-reach * math.cos(az)))
        shifted = np.zeros_like(labels)
        shifted[max(0, dr):h + min(0, dr), max(0, dc):w + min(0, dc)] = \
            labels[max(0, -dr):h - max(0, dr), max(0, -dc):w - max(0, dc)]
        ring = (shifted > 0) & (labels == 0)
        tot = np.bincount(shifted[ring], minlength=n + 1)
        sh = np.bincount(shifted[ring], weights=shadow[ring], minlength=n + 1)
        np.testing.assert_array_equal(got[:, j], sh / np.maximum(tot, 1))


def test_pooled_statistics_of_a_single_chip_are_measured_on_all_its_pixels() -> None:
    """A small grid is one chip: its statistics must be those of every pixel, as a
    whole-scene run measures them, not of the subsample kept for pooling."""
    from changedet.change import SceneStatistics

    values = np.random.default_rng(0).gamma(2.0, size=1_000_003)
    chip = SceneStatistics(collect=True)
    measured = chip.get("noise", lambda: values)
    assert measured == pytest.approx(float(np.median(values.astype(np.float32))))
    assert SceneStatistics.pooled([chip]).values["noise"] == measured


def _mean_column_features(judged: list | None = None, described: list | None = None):
    """A stand-in for ``region_features``: each described region's mean column (one
    feature), recording how many regions each call saw and which it described."""
    def features(labels, n, evidence, valid, pixel_m, dark=None, only=None):
        cols = np.broadcast_to(np.arange(labels.shape[1]), labels.shape)
        mean_col = np.bincount(labels.ravel(), cols.ravel(), n + 1) / np.maximum(
            np.bincount(labels.ravel(), minlength=n + 1), 1)
        if judged is not None:
            judged.append(n)
            described.append(only)
        return np.where(only, mean_col, 0.0)[None, :, None]
    return features


def test_kept_regions_are_split_along_fainter_edges_and_their_parts_judged_anew(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A roof joined to the ground beside it through a faint edge (2.2 medians: below
    the first split's 2.5) is split at 2.0 and each part judged on its own. A part of
    a region kept with confidence is cut off only when surely not roof; a part of a
    marginal region needs a roof's probability; specks of a confident region that
    the cut leaves apart from its roof are left out; no pixel is lost."""
    from types import SimpleNamespace

    import changedet.change as change

    regions = np.zeros((80, 90), np.int32)
    regions[10:30, 5:85] = 1  # marginal: the roof (columns 5-44) and the ground (45-84)
    regions[32:50, 5:85] = 2  # confident: the same
    regions[52:58, 5:25] = 3  # confident, no faint edge within
    regions[52:58, 30:66] = 4  # confident: a roof and a part judged 0.4
    regions[62:78, 5:85] = 5  # confident: a roof, ground, and a speck beyond it
    edges = np.ones(regions.shape, np.float32)
    edges[:, 44:46] = 2.2
    edges[62:78, 74:76] = 2.2
    judged: list = []
    described: list = []

    def classify(feats, model=None):
        col = feats[0, :, 0]
        return np.select([col < 45, col < 58, col < 75], [0.95, 0.4, 0.05], 0.6)

    monkeypatch.setattr(change, "region_features", _mean_column_features(judged, described))
    monkeypatch.setattr(change, "classify_regions", classify)
    prob = np.array([0.0, 0.6, 0.9, 0.9, 0.8, 0.9])
    new, n, new_prob = change._split_kept_regions(
        regions, 5, prob, SimpleNamespace(colour_edges=edges), np.ones(regions.shape, bool),
        1.0, DetectionParams())
    assert judged == [n] and n == 10
    # Only the parts of the regions that split are described.
    parts = np.unique(new[np.isin(regions, [1, 2, 4, 5])])
    np.testing.assert_array_equal(np.flatnonzero(described[0]), parts)
    np.testing.assert_array_equal(new > 0, regions > 0)
    p = new_prob[new]
    # Marginal: each part by its own probability.
    assert (p[10:30, 5:44] == 0.95).all() and (p[10:30, 46:85] == 0.05).all()
    # Confident: the ground cut off, the roof keeps the region's probability.
    assert (p[32:50, 5:44] == 0.9).all() and (p[32:50, 46:85] == 0.05).all()
    # Confident and no part surely ground: all of it kept as it was judged whole.
    assert (p[52:58, 5:25] == 0.9).all() and (p[52:58, 30:66] == 0.8).all()
    # The speck (judged 0.6 alone) is cut apart from the roof by the ground: left out.
    assert (p[62:78, 5:44] == 0.9).all() and (p[62:78, 46:74] == 0.05).all()
    assert (p[62:78, 77:85] == 0.0).all()
    # Nothing kept: nothing judged again.
    judged.clear()
    same = change._split_kept_regions(regions, 5, np.array([0.0, 0.4, 0.2, 0.1, 0.0, 0.3]),
                                      None, np.ones(regions.shape, bool), 1.0,
                                      DetectionParams())
    assert same[0] is regions and judged == []


def test_the_roof_stays_when_a_larger_doubtful_part_is_cut_apart_from_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A confident region of roof (judged 0.95 alone), a dark strip (0.05, cut off) and
    wider ground beyond it (0.3): the roof keeps the region's verdict, and the ground,
    the larger piece left, is what goes."""
    from types import SimpleNamespace

    import changedet.change as change

    regions = np.zeros((30, 90), np.int32)
    regions[5:25, 5:85] = 1
    edges = np.ones(regions.shape, np.float32)
    edges[:, 20:22] = 2.2
    edges[:, 27:29] = 2.2

    def classify(feats, model=None):
        col = feats[0, :, 0]
        return np.select([col < 20, col < 28], [0.95, 0.05], 0.3)

    monkeypatch.setattr(change, "region_features", _mean_column_features())
    monkeypatch.setattr(change, "classify_regions", classify)
    new, n, new_prob = change._split_kept_regions(
        regions, 1, np.array([0.0, 0.9]), SimpleNamespace(colour_edges=edges),
        np.ones(regions.shape, bool), 1.0, DetectionParams())
    assert n == 3
    p = new_prob[new]
    assert (p[5:25, 5:20] == 0.9).all()
    assert (p[5:25, 23:27] == 0.05).all() and (p[5:25, 30:85] == 0.0).all()


def test_features_of_some_regions_are_those_they_have_among_all() -> None:
    """``region_features(only=...)`` (the parts of split regions are described on
    the box around them) gives the chosen regions' columns bit for bit."""
    from changedet.change import candidate_regions, new_building_evidence, region_features
    from changedet.raster import align_pair
    from changedet.synth import SynthParams, make_synthetic_pair

    sp = make_synthetic_pair(SynthParams.for_scenario("suburb", seed=4, size=400))
    pair = align_pair(sp.before, sp.after)
    valid = pair.before.valid & pair.after.valid
    pixel = pair.grid.pixel_size[0]
    params = DetectionParams()
    evidence = new_building_evidence(pair.before, pair.after, params,
                                     after_raw=pair.after.image)
    regions, n = candidate_regions(evidence, valid, pixel, params)
    assert n > 20
    every = region_features(regions, n, evidence, valid, pixel)
    rng = np.random.default_rng(0)
    for share in (0.05, 0.5):
        only = rng.random(n + 1) < share
        only[0] = False
        some = region_features(regions, n, evidence, valid, pixel, only=only)
        np.testing.assert_array_equal(some[:, only], every[:, only])
        assert not some[:, ~only].any()


def test_scenes_off_one_grid_are_refused() -> None:
    """An after scene on another grid of the same shape (5 km away, or in another CRS)
    gave buildings as if the two lay on one another."""
    before, after, _, _ = _pair(1.0, seed=3)
    moved = replace(after, grid=replace(after.grid, transform=Affine.translation(5000, 0)
                                        @ after.grid.transform))
    with pytest.raises(ValueError, match="one grid"):
        detect_new_buildings(before, moved, DetectionParams())
    with pytest.raises(ValueError, match="one grid"):
        detect_new_buildings(before, replace(after, image=after.image[:2]), DetectionParams())
    # Both on one grid of other rows and columns than their arrays: passed.
    small = before.grid.window(0, 0, before.grid.height - 10, before.grid.width)
    with pytest.raises(ValueError, match="must be the same rows x columns"):
        detect_new_buildings(replace(before, grid=small), replace(after, grid=small),
                             DetectionParams())


def test_stages_called_alone_refuse_what_does_not_fit() -> None:
    """The stages a notebook calls one by one check their inputs: a 0/1 mask gave no
    buildings, a pixel size of NaN none either, integer scenes wrapped around when
    subtracted, and a NaN pixel made the whole score NaN, all without an error."""
    from changedet.change import new_building_evidence, outline_stage, segment_new_buildings

    before, after, _, _ = _pair(1.0, seed=3)
    labels, evidence = detect_new_buildings(before, after)
    assert labels.max() > 0
    valid = before.valid & after.valid
    for stage in (lambda v, px: segment_new_buildings(evidence, v, px, scenes=(before, after)),
                  lambda v, px: outline_stage(labels, evidence, v, px)):
        with pytest.raises(ValueError, match="valid must be a bool array, got uint8"):
            stage(valid.astype(np.uint8), 1.0)
        with pytest.raises(ValueError, match="not on the evidence's grid"):
            stage(valid[:-1], 1.0)
        for bad in (float("nan"), -1.0, 0.0, "1"):
            with pytest.raises(ValueError, match="pixel_size_m must be a finite number"):
                stage(valid, bad)
    with pytest.raises(ValueError, match="labels must be an integer array"):
        outline_stage(labels.astype(np.float32), evidence, valid, 1.0)
    assert outline_stage(labels.astype(np.int64), evidence, valid, 1.0).dtype == np.int32
    assert outline_stage(labels.astype(np.int64), evidence, valid, 1.0,
                         DetectionParams(half_cover_outlines=False)).dtype == np.int32

    with pytest.raises(ValueError, match="after.image must be floating point"):
        new_building_evidence(before, replace(after, image=after.image.astype(np.uint8)))
    with pytest.raises(ValueError, match="one grid"):
        new_building_evidence(before, replace(after, image=after.image[:2]))
    with pytest.raises(ValueError, match="after_raw"):
        new_building_evidence(before, after, after_raw=after.image[:, :-1])
    holed = after.image.copy()
    holed[:, 10:20, 10:20] = np.nan
    with pytest.raises(ValueError, match="after.image holds 300 NaN or infinite values"):
        new_building_evidence(before, replace(after, image=holed))
    with pytest.raises(ValueError, match="before.image holds 300 NaN"):
        detect_new_buildings(replace(before, image=holed), after)
    with pytest.raises(TypeError, match="before must be a changedet.raster.Scene, got ndarray"):
        detect_new_buildings(before.image, after)


def test_a_smaller_minimum_area_only_adds_buildings() -> None:
    """--min-area-m2 filters the buildings reported: lowered far below the default,
    it changed the candidate regions and lost a 176 m² house (suburb seed 1)."""
    from affine import Affine

    from changedet.raster import align_pair, warp_scene
    from changedet.synth import SynthParams, make_synthetic_pair

    sp = make_synthetic_pair(SynthParams.for_scenario("suburb", seed=1, size=600))
    pair = align_pair(sp.before, sp.after)
    after = warp_scene(pair.after_source, pair.grid, Affine.translation(*sp.shift_px))
    labels = {}
    for min_area in (None, 10.0, 0.0001):
        labels[min_area], _ = detect_new_buildings(pair.before, after,
                                                   DetectionParams(min_area_m2=min_area))
    default = labels[None]
    assert default.max() >= 5
    for small in (labels[10.0], labels[0.0001]):
        for k in range(1, default.max() + 1):
            inside = np.unique(small[default == k])
            assert inside.size == 1 and inside[0] > 0
            np.testing.assert_array_equal(small == inside[0], default == k)


@pytest.mark.parametrize("outlines", [True, False])
def test_a_larger_minimum_area_only_removes_the_smaller_buildings(outlines: bool) -> None:
    """Raised above the default, --min-area-m2 also kept the appearance check from
    looking at smaller pieces: a 197.5 m² house whose 39 m² piece went unchecked came
    out as 115.7 m², or vanished (suburb seed 4, a review's case). With or without
    the outline stage (which applies the minimum again after the ground is cut out)."""
    from affine import Affine

    from changedet.raster import align_pair, warp_scene
    from changedet.synth import SynthParams, make_synthetic_pair

    sp = make_synthetic_pair(SynthParams.for_scenario("suburb", seed=4, size=512))
    pair = align_pair(sp.before, sp.after)
    after = warp_scene(pair.after_source, pair.grid, Affine.translation(*sp.shift_px))
    default, _ = detect_new_buildings(pair.before, after,
                                      DetectionParams(half_cover_outlines=outlines))
    pixel_m2 = pair.grid.pixel_area
    areas = np.bincount(default.ravel())[1:] * pixel_m2
    assert areas.size >= 5
    # Between consecutive areas of the default's buildings, and 100 m² (the review's).
    ranked = np.sort(areas)
    between = (ranked[:-1] + ranked[1:]) / 2
    for min_area in sorted({100.0, *between[[0, between.size // 2, -1]]}):
        labels, _ = detect_new_buildings(pair.before, after, DetectionParams(
            min_area_m2=float(min_area), half_cover_outlines=outlines))
        expected = np.flatnonzero(areas >= min_area) + 1
        assert labels.max() == expected.size, min_area
        for k in expected:
            inside = np.unique(labels[default == k])
            assert inside.size == 1 and inside[0] > 0
            np.testing.assert_array_equal(labels == inside[0], default == k)


def test_the_appearance_check_looks_at_pieces_down_to_the_smaller_minimum(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pieces the appearance check looks at: down to the default minimum building
    whatever a larger --min-area-m2, and down to a smaller one when it is smaller (a
    user lowering it to find small buildings lost the check on the pieces between)."""
    from affine import Affine

    import changedet.appearance as appearance
    from changedet.raster import align_pair, warp_scene
    from changedet.synth import SynthParams, make_synthetic_pair

    sp = make_synthetic_pair(SynthParams.for_scenario("suburb", seed=4, size=384))
    pair = align_pair(sp.before, sp.after)
    before = pair.before
    after = warp_scene(pair.after_source, pair.grid, Affine.translation(*sp.shift_px))
    pixel_m2 = pair.grid.pixel_area
    smallest = {}
    confirm = appearance.confirm_new_roofs

    def spy(b, a, regions, candidates, *args, **kwargs):
        sizes = np.bincount(regions.ravel(), minlength=candidates.size)
        smallest[key] = int(sizes[candidates].min()) if candidates.any() else None
        return confirm(b, a, regions, candidates, *args, **kwargs)

    monkeypatch.setattr(appearance, "confirm_new_roofs", spy)
    default_px = DetectionParams().piece_scale_m2(np.sqrt(pixel_m2)) / pixel_m2
    for key, min_area in (("default", None), ("larger", 200.0), ("smaller", 5.0)):
        detect_new_buildings(before, after, DetectionParams(min_area_m2=min_area))
    assert smallest["default"] >= default_px and smallest["larger"] == smallest["default"]
    assert 5.0 / pixel_m2 <= smallest["smaller"] < default_px


def test_detection_areas_come_closer_with_half_cover_outlines() -> None:
    """On the blurred test pair the buildings found keep their count and come closer
    to their true areas than the outlines of one scene-wide change level."""
    before, after, truth, boxes = _pair(0.5)
    blur = lambda s: replace(s, image=np.stack([ndimage.gaussian_filter(b, 0.8)
                                                for b in s.image]).astype(np.float32))
    before, after = blur(before), blur(after)
    true_area = sorted((b[2] - b[0]) * (b[3] - b[1]) for b in boxes)
    errors = {}
    for redraw in (False, True):
        labels, _ = detect_new_buildings(before, after, DetectionParams(
            sun_azimuth_deg=45.0, half_cover_outlines=redraw))
        found = _areas(labels, 0.5)
        assert len(found) == 2
        errors[redraw] = sum(abs(f - t) for f, t in zip(found, true_area))
    assert errors[True] < errors[False], errors


def test_building_scores_count_only_the_pixels_the_classifier_judged() -> None:
    """Pixels a building took in after the classifier (a redrawn fringe, a filled
    hole) have no probability of their own and do not pull its score down."""
    from changedet.change import Evidence, building_scores

    labels = np.zeros((20, 20), np.int32)
    labels[2:12, 2:12] = 1                       # judged 6 x 6 core, fringe added
    labels[14:18, 14:18] = 2                     # never judged: plain mean (0)
    prob = np.zeros((20, 20), np.float32)
    prob[4:10, 4:10] = 0.9
    prob[5, 5] = 0.6
    zeros = np.zeros((20, 20), np.float32)
    ev = Evidence(change=zeros, built_before=zeros, built_after=zeros, vegetation=zeros,
                  shadow=zeros, score=zeros + 7.0, threshold=1.0, region_probability=prob)
    scores = building_scores(labels, ev, np.array([1, 2]))
    assert scores[0] == pytest.approx((35 * 0.9 + 0.6) / 36)
    assert scores[1] == 0.0
    # Without a probability map, the mean change score.
    ev.region_probability = None
    assert building_scores(labels, ev, np.array([2, 1])).tolist() == [7.0, 7.0]
    assert building_scores(labels, ev, np.array([], int)).size == 0


def test_outline_stage_is_what_detection_runs_after_segmentation() -> None:
    """Segmentation rerun alone, then the outline stage, gives detect_new_buildings'
    labels; labels off the evidence's grid are refused."""
    from changedet.change import outline_stage, segment_new_buildings

    before, after, _, _ = _pair(0.5)
    params = DetectionParams(sun_azimuth_deg=45.0)
    labels, ev = detect_new_buildings(before, after, params)
    valid = before.valid & after.valid
    scenes = (before, after)  # for the appearance check, as detection gives them
    again = outline_stage(segment_new_buildings(ev, valid, 0.5, params, scenes), ev, valid,
                          0.5, params)
    np.testing.assert_array_equal(again, labels)
    unredrawn = segment_new_buildings(ev, valid, 0.5, params, scenes)
    assert not np.array_equal(unredrawn, labels)          # else this proves nothing
    with pytest.raises(ValueError, match="one grid"):
        outline_stage(unredrawn[:-1], ev, valid, 0.5, params)
    with pytest.raises(ValueError, match="not on the evidence's grid"):
        outline_stage(unredrawn[:-1], ev, valid[:-1], 0.5, params)


def test_redrawn_outlines_leave_no_pinholes() -> None:
    """A ground-coloured pixel inside a roof, touching the ground outside only at a
    corner, is a hole in the candidates that segmentation fills; the outline redraw
    read it as ground again and left a pinhole in the building (0.5 m² holes in the
    fixture's outlines)."""
    before, after, truth, boxes = _pair(1.0)
    image = after.image.copy()
    # The new roof (x 80-122 m, y 30-58 m) grows a wing to the north over x 100-122 m,
    # in the after date's colours (taken from the roof); the pixel in the wing's inner
    # corner, at row 30, column 100, touches the grass only at its corner (29, 99).
    image[:, 20:30, 100:122] = image[:, 45:55, 100:122]
    image[:, 30, 100] = image[:, 25, 90]  # grass, in the after date's colours
    after = replace(after, image=image)
    labels, _ = detect_new_buildings(before, after, DetectionParams(sun_azimuth_deg=45.0))
    roof = labels == labels[40, 100]
    assert labels[40, 100] > 0 and roof[22, 110]
    assert (ndimage.binary_fill_holes(roof) == roof).all()


def test_pooled_statistics_weigh_each_chip_by_its_number_of_values() -> None:
    """A chip with ten times the values of another (much more change above the
    floor) must weigh ten times as much, though its sample is capped: a threshold
    pooled from 2400 px compound chips fell from 13.4 to 8.9 when it did not."""
    rng = np.random.default_rng(0)
    busy = rng.normal(10.0, 1.0, 1_000_000)
    quiet = rng.normal(0.0, 1.0, 100_000)
    parts = []
    # A chip with no value at all (none above the floor) counts for nothing.
    for values in (busy, quiet, np.zeros(0)):
        stats = SceneStatistics(collect=True)
        stats.get("level", lambda v=values: v, lambda v: float(np.median(v)) if v.size else 0.0)
        parts.append(stats)
    assert parts[0].samples["level"].size < busy.size  # the cap applied
    pooled = SceneStatistics.pooled(parts).values["level"]
    assert pooled == pytest.approx(float(np.median(np.r_[busy, quiet])), abs=0.02)


def test_scene_statistics_of_one_chip_or_of_chips_without_data_are_left_to_the_arrays(
        ) -> None:
    """None (measure on the arrays at hand) for a grid of one chip, and for a larger
    grid whose chips each hold fewer than 100 valid pixels, which a whole-scene run
    can still analyse."""
    from affine import Affine
    from rasterio.crs import CRS

    from changedet.change import scene_statistics
    from changedet.raster import Grid, Scene

    def scene(size: int, valid: np.ndarray) -> Scene:
        grid = Grid(CRS.from_epsg(32633), Affine(0.5, 0, 500000.0, 0, -0.5, 4000000.0),
                    size, size)
        return Scene(np.zeros((3, size, size), np.float32), valid, grid)

    one = scene(1535, np.ones((1535, 1535), bool))
    assert scene_statistics(one, one, DetectionParams()) is None
    sparse = np.zeros((1600, 1600), bool)
    sparse[795:805, 795:805] = True  # 100 valid pixels, 25 in each of the four chips
    few = scene(1600, sparse)
    assert scene_statistics(few, few, DetectionParams()) is None


def test_pickled_statistics_keep_their_values_and_refuse_to_be_pooled() -> None:
    import pickle

    rng = np.random.default_rng(0)
    parts = []
    for _ in range(2):
        stats = SceneStatistics(collect=True)
        data = rng.normal(size=1000)
        # A closure, as the evidence's reducers are: pickle cannot carry it.
        stats.get("level", lambda: data, lambda v, k=len(parts): float(np.median(v)) + k)
        parts.append(stats)
    again = pickle.loads(pickle.dumps(parts[0]))
    assert again.values == parts[0].values
    np.testing.assert_array_equal(again.samples["level"], parts[0].samples["level"])
    assert SceneStatistics.pooled(parts).values["level"] == pytest.approx(
        float(np.median(np.concatenate([p.samples["level"] for p in parts]))), abs=0.2)
    with pytest.raises(ValueError, match="went through pickle cannot be pooled"):
        SceneStatistics.pooled([again, pickle.loads(pickle.dumps(parts[1]))])
