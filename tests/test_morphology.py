"""Disk morphology and label helpers against scipy's general filters."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from changedet.morphology import (dilate_disk, disk, erode_disk, fill_holes, fill_small_holes,
                                  grey_disk)


def test_small_holes_take_the_label_of_the_nearest_surrounding_pixel() -> None:
    """Filling over each hole's box gives what a distance transform of the whole image
    gives (the nearest labelled pixel of an enclosed hole lies within one pixel of its
    box)."""
    rng = np.random.default_rng(4)
    blobs = ndimage.gaussian_filter(rng.random((300, 300)), 3) > 0.5
    labels, _ = ndimage.label(blobs)
    labels[rng.random(labels.shape) < 0.03] = 0  # pinholes inside the objects
    labels[100:104, 100:130] = 0  # a wider hole, if inside an object
    max_hole = 40
    filled = fill_small_holes(labels, max_hole)
    holes, n = ndimage.label(ndimage.binary_fill_holes(labels > 0) & (labels == 0))
    sizes = np.bincount(holes.ravel(), minlength=n + 1)
    small = (sizes < max_hole) & (np.arange(n + 1) > 0)
    idx = ndimage.distance_transform_edt(labels == 0, return_distances=False,
                                         return_indices=True)
    expected = labels.copy()
    fill = small[holes]
    expected[fill] = labels[idx[0][fill], idx[1][fill]]
    assert fill.sum() > 100
    np.testing.assert_array_equal(filled, expected)
    # Large holes stay open.
    assert (filled[(holes > 0) & ~fill] == 0).all()


@pytest.mark.parametrize("seed", [5, 6])
def test_fill_holes_equals_scipy(seed: int) -> None:
    """Holes found by labelling the background are scipy's, border cases included."""
    rng = np.random.default_rng(seed)
    mask = ndimage.gaussian_filter(rng.random((64, 80)), 1.0) > 0.5
    mask[0, :] = mask[:, -1] = False  # open sides next to closed ones
    mask[-1, :] = True
    assert (ndimage.binary_fill_holes(mask) & ~mask).any()
    np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))
    for empty_or_full in (np.zeros((5, 7), bool), np.ones((5, 7), bool)):
        np.testing.assert_array_equal(fill_holes(empty_or_full),
                                      ndimage.binary_fill_holes(empty_or_full))


@pytest.mark.parametrize("radius", [0.2, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.99, 5.0, 7.5])
def test_disk_is_no_larger_than_the_disk(radius: float) -> None:
    """No ring of False around the disk (it would only slow the filters down)."""
    d = disk(radius)
    n = d.shape[0] // 2
    yy, xx = np.mgrid[-n:n + 1, -n:n + 1]
    r = max(radius, 0.5)
    np.testing.assert_array_equal(d, xx * xx + yy * yy <= r * r + 1e-9)
    assert d[0].any() and d[:, 0].any()
    # Nothing beyond the array is within the radius.
    assert (n + 1) ** 2 > r * r + 1e-9


@pytest.mark.parametrize("shape", [(50, 61), (7, 3), (1, 9), (30, 1)])
@pytest.mark.parametrize("radius", [0.5, 1.5, 2.0, 3.0, 4.2, 7.5])
def test_disk_morphology_equals_scipy(shape: tuple[int, int], radius: float) -> None:
    """Dilation and erosion by a disk from shifted slices are scipy's, at the border too."""
    rng = np.random.default_rng(7)
    footprint = disk(radius)
    for level in (0.3, 0.6, 0.9):
        mask = ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.5 if level == 0.6 \
            else rng.random(shape) > level
        np.testing.assert_array_equal(dilate_disk(mask, radius),
                                      ndimage.binary_dilation(mask, footprint))
        for border in (0, 1):
            np.testing.assert_array_equal(erode_disk(mask, radius, border),
                                          ndimage.binary_erosion(mask, footprint,
                                                                 border_value=border))


@pytest.mark.parametrize("shape", [(50, 61), (7, 3), (1, 9), (30, 1), (2, 2)])
@pytest.mark.parametrize("radius", [0.5, 1.5, 2.0, 3.0, 4.2, 7.5])
def test_grey_disk_filters_equal_scipy(shape: tuple[int, int], radius: float) -> None:
    """Grey dilation and erosion by a disk, leaving the outside out, are scipy's
    (which reflects the array at its border)."""
    labels = np.random.default_rng(8).integers(0, 20, shape).astype(np.int32)
    footprint = disk(radius)
    np.testing.assert_array_equal(grey_disk(labels, radius, np.maximum),
                                  ndimage.grey_dilation(labels, footprint=footprint))
    np.testing.assert_array_equal(grey_disk(labels, radius, np.minimum),
                                  ndimage.grey_erosion(labels, footprint=footprint))
