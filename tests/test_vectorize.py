"""Polygons from label images: faithful to the pixels, right angles only when honest."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio.crs import CRS
from shapely import affinity
from shapely.geometry import Polygon, box

from changedet.raster import Grid
from changedet.vectorize import labels_at_edge, polygons_from_labels, regularise_polygon

GRID = Grid(CRS.from_epsg(32651), Affine(0.5, 0, 500000.0, 0, -0.5, 4320100.0), 200, 200)
ORIGIN = (500050.0, 4320050.0)


def burn(polys, grid=GRID):
    return rasterio.features.rasterize([(p, i + 1) for i, p in enumerate(polys)],
                                       out_shape=grid.shape, transform=grid.transform,
                                       dtype="int32")


def place(p):
    return affinity.translate(p, 500000.0, 4320000.0)


@settings(max_examples=25, deadline=None)
@given(arrays(np.int32, (12, 14), elements=st.integers(0, 3)))
def test_unsimplified_polygons_rasterise_back_to_the_labels(labels):
    grid = GRID.window(0, 0, 12, 14)
    out = polygons_from_labels(labels, grid, simplify_px=0.0, regularise=False)
    back = np.zeros_like(labels)
    if out:
        back = rasterio.features.rasterize([(p, v) for v, p in out], out_shape=labels.shape,
                                           transform=grid.transform, dtype="int32")
    np.testing.assert_array_equal(back, labels)
    # Area is the pixel count: the evidence, exactly.
    for value in np.unique(labels[labels > 0]):
        area = sum(p.area for v, p in out if v == value)
        assert area == pytest.approx((labels == value).sum() * grid.pixel_area)


def test_axis_aligned_shapes_come_out_exact_with_courtyard():
    court = place(box(60, 5, 90, 35).difference(box(70, 15, 80, 25)))
    ell = place(Polygon([(10, 10), (40, 10), (40, 20), (20, 20), (20, 40), (10, 40)]))
    out = polygons_from_labels(burn([court, ell]), GRID)
    assert [v for v, _ in out] == [1, 2]
    assert out[0][1].equals(court) and len(out[0][1].interiors) == 1
    assert out[1][1].equals(ell)
    assert out[0][1].exterior.is_ccw  # RFC 7946 orientation


@pytest.mark.parametrize("angle", [7.0, 20.0, 33.0])
def test_rotated_rectangle_is_regularised_within_half_pixel(angle):
    truth = place(affinity.rotate(box(35, 40, 65, 60), angle, origin=(50, 50)))
    labels = burn([truth])
    raw = polygons_from_labels(labels, GRID, simplify_px=0.0, regularise=False)[0][1]
    ((_, poly),) = polygons_from_labels(labels, GRID)
    assert len(poly.exterior.coords) == 5  # four right-angled corners
    xy = np.asarray(poly.exterior.coords)
    d = np.diff(xy, axis=0)
    dots = np.einsum("ij,ij->i", d, np.roll(d, 1, axis=0))
    assert np.all(np.abs(dots) < 1e-6 * np.hypot(*d.T).max() ** 2)
    # Within the half-pixel band of the evidence, and close to the truth.
    assert abs(poly.area - raw.area) <= poly.length * 0.5 / 2
    assert poly.intersection(truth).area / poly.union(truth).area > 0.96


def test_regularisation_refuses_to_move_area():
    # A triangle cannot be squared within half a pixel: it is left alone.
    tri = place(Polygon([(0, 0), (40, 0), (0, 40)]))
    assert regularise_polygon(tri, 0.5) is tri


def test_empty_and_bool_input():
    assert polygons_from_labels(np.zeros((5, 5), np.int32), GRID.window(0, 0, 5, 5)) == []
    mask = np.zeros((5, 5), bool)
    mask[1:3, 1:4] = True
    ((value, poly),) = polygons_from_labels(mask, GRID.window(0, 0, 5, 5))
    assert value == 1 and poly.area == pytest.approx(6 * 0.25)


def test_thin_pixel_rectangles_are_kept_as_traced():
    labels = np.zeros((6, 6), np.int32)
    labels[1, 1:3] = 1          # 1 x 2 px
    labels[3:5, 0:6] = 2        # 2 x 6 px
    grid = GRID.window(0, 0, 6, 6)
    out = polygons_from_labels(labels, grid)
    raw = polygons_from_labels(labels, grid, simplify_px=0, regularise=False)
    assert [v for v, _ in out] == [1, 2]
    for (_, p), (_, q) in zip(out, raw):
        assert p.equals(q)


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, (16, 16)))
def test_default_polygons_are_valid_and_keep_the_pixel_count_area(mask):
    grid = GRID.window(0, 0, 16, 16)
    from scipy import ndimage

    labels, _ = ndimage.label(mask)
    out = polygons_from_labels(labels, grid)
    raw = dict(polygons_from_labels(labels, grid, simplify_px=0, regularise=False))
    for value, poly in out:
        assert poly.is_valid and poly.geom_type == "Polygon"
        assert poly.area == pytest.approx((labels == value).sum() * grid.pixel_area, rel=1e-4)
        assert poly.intersection(raw[value]).area / poly.union(raw[value]).area > 0.5


def test_labels_at_edge_are_those_touching_nodata_or_the_imagery_border():
    labels = np.zeros((20, 30), np.int32)
    labels[0:4, 5:9] = 1  # on the top row
    labels[8:12, 8:12] = 2  # inside, one pixel from the nodata hole
    labels[8:12, 14:18] = 3  # next to the hole (4-adjacent)
    labels[15:19, 25:29] = 4  # a pixel short of the bottom and right sides
    labels[5:7, 26:30] = 5  # on the right side
    valid = np.ones(labels.shape, bool)
    valid[9:11, 13] = False
    valid[12, 12] = False  # diagonal to label 2's corner only: not adjacent
    at_edge = labels_at_edge(labels, valid)
    assert at_edge.tolist() == [False, True, False, True, False, True]
    # A window's side inside a larger grid is not the imagery's edge.
    inside = labels_at_edge(labels, valid, sides=(False, True, True, False))
    assert inside.tolist() == [False, False, False, True, False, False]
    assert labels_at_edge(np.zeros((5, 5), np.int32), valid[:5, :5]).tolist() == [False]


def test_labels_that_are_not_whole_numbers_in_range_are_refused() -> None:
    """Float labels were cut to integers (a 0.5 region vanished) and a label beyond
    int32 wrapped onto another building's."""
    from affine import Affine
    from rasterio.crs import CRS

    from changedet.raster import Grid

    grid = Grid(CRS.from_epsg(32651), Affine(1.0, 0, 500000.0, 0, -1.0, 4320000.0), 20, 20)
    labels = np.zeros((20, 20), np.float64)
    labels[2:6, 2:6] = 0.5
    with pytest.raises(ValueError, match="integer or bool array, got float64"):
        polygons_from_labels(labels, grid)
    big = np.zeros((20, 20), np.int64)
    big[2:6, 2:6] = 2**32 + 1
    with pytest.raises(ValueError, match="must lie in 0.."):
        polygons_from_labels(big, grid)
    big[2:6, 2:6] = -3
    big[10:12, 10:12] = 1
    with pytest.raises(ValueError, match="must lie in 0.."):
        polygons_from_labels(big, grid)
    assert len(polygons_from_labels(big.clip(0), grid)) == 1


def test_labels_off_the_grid_are_refused() -> None:
    from affine import Affine
    from rasterio.crs import CRS

    from changedet.raster import Grid

    grid = Grid(CRS.from_epsg(32651), Affine(1.0, 0, 500000.0, 0, -1.0, 4320000.0), 50, 50)
    labels = np.zeros((40, 50), np.int32)
    labels[5:10, 5:10] = 1
    with pytest.raises(ValueError, match="not on the grid"):
        polygons_from_labels(labels, grid)


@pytest.mark.parametrize("pixel", [0.0, float("nan")])
def test_a_grid_without_area_per_pixel_is_refused(pixel: float) -> None:
    """A zero pixel size gave no polygon and a NaN one a GEOS error."""
    from affine import Affine
    from rasterio.crs import CRS

    from changedet.raster import Grid
    from changedet.vectorize import polygons_from_labels

    labels = np.zeros((20, 20), np.int32)
    labels[5:15, 5:15] = 1
    grid = Grid(CRS.from_epsg(32651), Affine(pixel, 0, 500000.0, 0, -1.0, 4300000.0), 20, 20)
    with pytest.raises(ValueError, match="no area per pixel or is not finite"):
        polygons_from_labels(labels, grid)
