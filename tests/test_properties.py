"""Properties that must hold for any input (hypothesis).

- rasterise(polygonise(mask)) gives back the mask (exactly with no simplification,
  within the one-pixel boundary band with the default simplification);
- measured areas do not change when the scene is translated, or when it is
  delivered in another CRS (within the half-pixel bound);
- the estimated co-registration shift follows a known applied shift.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio.features
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject
from scipy import ndimage

from changedet.measure import ground_pixel_m, measure_buildings, metric_crs
from changedet.raster import Grid, Scene, align_pair, analysis_grid, warp_scene
from changedet.vectorize import polygons_from_labels

UTM = CRS.from_epsg(32651)

#: Building-like masks: a union of a few axis-aligned rectangles on a small grid.
rectangles = st.lists(
    st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(2, 18), st.integers(2, 18)),
    min_size=1, max_size=4)


def _mask(rects: list[tuple[int, int, int, int]], shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for c, r, w, h in rects:
        mask[r:r + h, c:c + w] = True
    return mask


def _burn(polys: list, grid: Grid) -> np.ndarray:
    if not polys:
        return np.zeros(grid.shape, dtype=bool)
    return rasterio.features.rasterize([(p, 1) for p in polys], out_shape=grid.shape,
                                       transform=grid.transform, dtype="uint8").astype(bool)


grids = st.builds(
    lambda x0, y0, px: Grid(UTM, Affine(px, 0, x0, 0, -px, y0), 64, 64),
    st.floats(300_000, 700_000), st.floats(1_000_000, 5_000_000),
    st.sampled_from([0.3, 0.5, 1.0, 2.5, 10.0]))


@settings(max_examples=60, deadline=None)
@given(rects=rectangles, grid=grids)
def test_polygonise_then_rasterise_gives_the_mask(rects, grid) -> None:
    mask = _mask(rects)
    labels, _ = ndimage.label(mask)
    exact = [p for _, p in polygons_from_labels(labels, grid, simplify_px=0.0, regularise=False)]
    np.testing.assert_array_equal(_burn(exact, grid), mask)
    # Default outlines (simplified, regularised) differ from the pixels only within
    # the one-pixel band along the boundary.
    default = [p for _, p in polygons_from_labels(labels, grid)]
    differ = _burn(default, grid) ^ mask
    boundary = mask ^ ndimage.binary_erosion(mask) | ndimage.binary_dilation(mask) ^ mask
    assert not (differ & ~boundary).any()


@settings(max_examples=60, deadline=None)
@given(rects=rectangles, grid=grids, shift=st.tuples(st.floats(-5000, 5000),
                                                    st.floats(-5000, 5000)))
def test_areas_do_not_change_under_translation(rects, grid, shift) -> None:
    labels, n = ndimage.label(_mask(rects))
    moved = Grid(grid.crs, Affine.translation(*shift) @ grid.transform, grid.height, grid.width)
    px = grid.pixel_size[0]
    here = measure_buildings([p for _, p in polygons_from_labels(labels, grid)], grid.crs, px)
    there = measure_buildings([p for _, p in polygons_from_labels(labels, moved)], moved.crs, px)
    assert len(here) == len(there) == len(polygons_from_labels(labels, grid))
    for a, b in zip(sorted(here, key=lambda b: b.area_m2), sorted(there, key=lambda b: b.area_m2)):
        assert b.area_m2 == pytest.approx(a.area_m2, rel=1e-6)
        assert b.area_m2_min == pytest.approx(a.area_m2_min, rel=1e-6)
        assert b.area_m2_max == pytest.approx(a.area_m2_max, rel=1e-6)


@settings(max_examples=20, deadline=None)
@given(w=st.integers(8, 30), h=st.integers(8, 30), c=st.integers(10, 50), r=st.integers(10, 50),
       delivered=st.sampled_from(["EPSG:4326", "EPSG:32652", "EPSG:3857"]))
def test_areas_do_not_change_in_another_crs(w, h, c, r, delivered) -> None:
    # A building of w x h pixels on a 1 m UTM grid, delivered in another CRS (resampled
    # once, nearest), analysed on the grid changedet chooses and measured: its area
    # stays within the half-pixel band of the truth.
    grid = Grid(UTM, Affine(1.0, 0, 741_000.0, 0, -1.0, 4_328_000.0), 100, 100)
    truth = np.zeros(grid.shape, dtype=np.float32)
    truth[r:r + h, c:c + w] = 1.0
    true_area = float(w * h)
    from rasterio.warp import calculate_default_transform

    with warnings.catch_warnings():  # rasterio's own use of affine's `*`
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        t, width, height = calculate_default_transform(UTM, delivered, 100, 100, *grid.bounds)
    data = np.zeros((1, height, width), dtype=np.float32)
    reproject(truth, data[0], src_transform=grid.transform, src_crs=UTM, dst_transform=t,
              dst_crs=delivered, resampling=Resampling.bilinear)
    scene = Scene(data, np.ones((height, width), bool), Grid(CRS.from_user_input(delivered),
                  t, height, width), "delivered.tif", (1,), None, {})
    # What the pipeline does: analysis grid, one warp, outlines, metric CRS, ground pixel.
    target = analysis_grid(scene.grid)
    on_grid = scene if target == scene.grid else warp_scene(scene, target,
                                                            resampling=Resampling.bilinear)
    labels, _ = ndimage.label(on_grid.image[0] > 0.5)
    polys = [p for _, p in polygons_from_labels(labels, target)]
    ground_px = ground_pixel_m(target, metric_crs(target.crs, target.bounds))
    (b,) = measure_buildings(polys, target.crs, ground_px)
    assert b.area_m2_min <= true_area <= b.area_m2_max, (b.area_m2, true_area)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dx=st.floats(-3.0, 3.0), dy=st.floats(-3.0, 3.0))
def test_estimated_shift_follows_the_applied_shift(dx, dy) -> None:
    coregister = pytest.importorskip("changedet.coregister").coregister
    rng = np.random.default_rng(7)
    noise = ndimage.gaussian_filter(rng.normal(size=(3, 160, 160)), sigma=(0, 2, 2))
    image = ((noise - noise.min()) / np.ptp(noise) * 200 + 20).astype(np.float32)
    grid = Grid(UTM, Affine(0.5, 0, 741_000.0, 0, -0.5, 4_328_000.0), 160, 160)
    before = Scene(image, np.ones((160, 160), bool), grid, "b.tif", (1, 2, 3), None, {})
    # A feature at (c, r) of before appears at (c + dx, r + dy) of after.
    after = warp_scene(before, grid, correction=Affine.translation(-dx, -dy))
    after = Scene(after.image, after.valid, grid, "a.tif", (1, 2, 3), None, {})
    _, registration = coregister(align_pair(before, after), method="global")
    assert registration.shift_px[0] == pytest.approx(dx, abs=0.1)
    assert registration.shift_px[1] == pytest.approx(dy, abs=0.1)
