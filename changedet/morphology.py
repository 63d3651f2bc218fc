"""Binary, grey and label morphology with disks sized in pixels.

The detector's neighbourhoods are disks of a given radius in metres; these filters
give the same result as scipy's general ones (``ndimage.binary_dilation``,
``grey_erosion``, ``binary_fill_holes``, ...) with the footprint :func:`disk`, a few
times faster: a disk is a union of rectangles, and a rectangle is separable into
shifted slices that numpy runs on whole rows (tested against scipy in
``tests/test_morphology.py``). Label helpers renumber, filter and fill labelled
objects.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def disk(radius_px: float) -> np.ndarray:
    """Pixels within ``radius_px`` of the centre (at least the centre itself).

    The array is no larger than the disk: a ring of False around it would only make
    scipy's filters slower (and keeps a full square, e.g. radius 1.5, from their
    separable path).
    """
    r = max(radius_px, 0.5)
    n = int(math.floor(math.sqrt(r * r + 1e-9)))
    yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
    return (xx * xx + yy * yy) <= r * r + 1e-9


def disk_rectangles(radius_px: float) -> list[tuple[int, int]]:
    """Half-heights and half-widths of the rectangles whose union is ``disk(radius_px)``.

    The disk's half-width shrinks from its middle row outwards, so each rectangle
    spans the rows up to ``dy`` from the middle at the half-width of row ``dy``;
    those within a wider and as tall one are left out.
    """
    shape = disk(radius_px)
    n = shape.shape[0] // 2
    half_widths = shape[n:].sum(axis=1) // 2
    return [(dy, int(half_widths[dy])) for dy in range(n + 1)
            if dy == n or half_widths[dy] > half_widths[dy + 1]]


def _spread(image: np.ndarray, k: int, axis: int, combine: np.ufunc,
            border: bool | None = None) -> np.ndarray:
    """``combine`` (e.g. np.logical_or, np.minimum) of ``image`` shifted by -k..k
    along ``axis``. Pixels beyond the array are left out; with ``border``, the
    pixels within ``k`` of either end are set to it instead (a binary erosion with
    ``border_value=0``)."""
    out = image.copy()
    if k == 0:
        return out
    o = np.moveaxis(out, axis, 0)
    m = np.moveaxis(image, axis, 0)
    for s in range(1, k + 1):
        combine(o[s:], m[:-s], out=o[s:])
        combine(o[:-s], m[s:], out=o[:-s])
    if border is not None:
        o[:k] = border
        o[-k:] = border
    return out


def disk_filter(image: np.ndarray, radius_px: float, combine: np.ufunc,
                 border: bool | None = None) -> np.ndarray:
    """``combine`` of ``image`` over ``disk(radius_px)`` around each pixel.

    A disk is a union of rectangles (:func:`disk_rectangles`), and a rectangle is
    separable: each step combines shifted slices, which numpy runs on whole rows,
    where scipy visits every offset of the disk at every pixel. With an OR or a
    maximum the result over the union is that of the parts; with an AND or a
    minimum too. Pixels beyond the array are left out (see :func:`_spread`).
    """
    out = None
    for dy, dx in disk_rectangles(radius_px):
        part = _spread(_spread(image, dy, 0, combine, border), dx, 1, combine, border)
        out = part if out is None else combine(out, part, out=out)
    return out


def dilate_disk(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """``ndimage.binary_dilation(mask, disk(radius_px))``, a few times faster
    (:func:`disk_filter`); pure set operations, so the result is identical."""
    return disk_filter(np.asarray(mask, bool), radius_px, np.logical_or)


def erode_disk(mask: np.ndarray, radius_px: float, border_value: int = 0) -> np.ndarray:
    """``ndimage.binary_erosion(mask, disk(radius_px), border_value=border_value)``,
    a few times faster (:func:`disk_filter`)."""
    return disk_filter(np.asarray(mask, bool), radius_px, np.logical_and,
                        None if border_value else False)


def grey_disk(image: np.ndarray, radius_px: float, combine: np.ufunc) -> np.ndarray:
    """``ndimage.grey_dilation`` (``combine=np.maximum``) or ``grey_erosion``
    (``np.minimum``) with ``footprint=disk(radius_px)``, a few times faster.

    scipy reflects the array at its border; for a disk, which holds every offset
    nearer the centre along each axis, the reflected pixels are among those the
    disk already covers inside the array, so leaving the outside out is the same.
    """
    return disk_filter(image, radius_px, combine)


def at_least(labels: np.ndarray, n: int, min_area_px: float) -> tuple[np.ndarray, int]:
    """The connected objects of ``labels`` (1..n) of at least ``min_area_px`` pixels,
    labelled anew 1..n."""
    big = np.bincount(labels.ravel(), minlength=n + 1) >= min_area_px
    big[0] = False
    return ndimage.label(big[labels])



def relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber the labels present as 1..N (0 stays background)."""
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    new_ids = np.cumsum(present).astype(np.int32)
    new_ids[~present] = 0
    # The largest label is present (or is the background), so the last id is N.
    return new_ids[labels], int(new_ids[-1])


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with its holes filled: ``ndimage.binary_fill_holes(mask)``, faster.

    A hole is a component of the background (4-connected, as scipy's default
    structure) that does not touch the array's border. One labelling of the
    background finds them all at once, where scipy propagates the background
    inwards from the border by repeated dilations.
    """
    background, n = ndimage.label(~mask)
    reaches_border = np.zeros(n + 1, bool)
    for side in (background[0], background[-1], background[:, 0], background[:, -1]):
        reaches_border[side] = True
    reaches_border[0] = False  # the mask's own pixels
    return ~reaches_border[background]


def fill_small_holes(labels: np.ndarray, max_hole_px: float) -> np.ndarray:
    """(H, W) ``labels`` with each hole of fewer than ``max_hole_px`` pixels given the
    label of the object around it (the nearest labelled pixel)."""
    mask = labels > 0
    holes = fill_holes(mask) & ~mask
    hl, nh = ndimage.label(holes)
    if nh == 0:
        return labels
    sizes = np.bincount(hl.ravel(), minlength=nh + 1)
    small = (sizes < max_hole_px) & (np.arange(nh + 1) > 0)
    # A filled hole takes the label of the object around it.
    out = labels.copy()
    for k, box in enumerate(ndimage.find_objects(hl), start=1):
        if box is None or not small[k]:
            continue
        # The hole is enclosed, so its nearest labelled pixels lie within one pixel of
        # its box: the distance transform of that box alone gives the same labels.
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        around = labels[box]
        idx = ndimage.distance_transform_edt(around == 0, return_distances=False,
                                             return_indices=True)
        hole = hl[box] == k
        out[box][hole] = around[idx[0][hole], idx[1][hole]]
    return out
