"""Outlines redrawn through the half-covered pixels, on hand-made blurred roofs with
exact cover."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from changedet.outline import half_cover_outlines, redraw_outlines
from tests.test_change import GRASS, ROOF_NEW, ROOF_OLD, _base, _paint, _shadow


def _blurred_roofs(boxes, colours, pixel: float = 0.5, size_m: float = 60.0,
                   blur_px: float = 0.8, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """After image of roofs (boxes in metres) on textured grass under an optical blur,
    and each roof's exact cover of every pixel, (N, H, W)."""
    img = _base(size_m, pixel, seed)
    cover = []
    for box, colour in zip(boxes, colours):
        _paint(img, box, colour, pixel)
        one = np.zeros_like(img)
        _paint(one, box, (1.0, 1.0, 1.0), pixel)
        cover.append(one[0])
    img = np.stack([ndimage.gaussian_filter(b, blur_px) for b in img])
    rng = np.random.default_rng(seed)
    return (img + rng.normal(0, 1.5, img.shape)).astype(np.float32), np.stack(cover)


@pytest.mark.parametrize("start_cover", [0.15, 0.85])
def test_outlines_are_redrawn_through_the_half_covered_pixels(start_cover: float) -> None:
    """A roof drawn too wide (its blurred fringe taken in) or too narrow comes back to
    its true area within a small fraction of a pixel per metre of outline."""
    box = (10.3, 12.6, 31.1, 27.9)                       # 20.8 x 15.3 m
    image, cover = _blurred_roofs([box], [ROOF_NEW])
    blurred = ndimage.gaussian_filter(cover[0], 0.8)
    labels = (blurred > start_cover).astype(np.int32)
    true_px = cover[0].sum()
    outline_px = 2 * (20.8 + 15.3) / 0.5
    before_err = (labels.sum() - true_px) / outline_px
    assert abs(before_err) > 0.5                         # the start is a pixel off
    redrawn = half_cover_outlines(labels, image, np.ones(labels.shape, bool),
                                  np.full(3, 1.5))
    after_err = (np.count_nonzero(redrawn) - true_px) / outline_px
    assert abs(after_err) < 0.1, (before_err, after_err)
    # The pixels kept are those the roof covers by about half or more; of a start
    # too narrow, the four corner pixels lie beyond the band and stay out.
    kept = redrawn > 0
    assert not (kept & (cover[0] <= 0.3)).any()
    assert np.count_nonzero(~kept & (cover[0] >= 0.7)) <= (4 if start_cover > 0.5 else 0)


def test_gable_facets_and_a_shadow_beside_are_each_their_own_reference() -> None:
    """Two facets of one roof, lit unlike, and a cast shadow along one side: each
    outline pixel is judged between its own facet and its own ground."""
    pixel = 0.5
    img = _base(60.0, pixel, 5)
    box_a, box_b = (10.3, 12.6, 31.1, 20.2), (10.3, 20.2, 31.1, 27.9)
    _shadow(img, (10.3, 12.6, 31.1, 27.9), (0.7071, -0.7071), 4.0, pixel)
    _paint(img, box_a, tuple(1.15 * c for c in ROOF_OLD), pixel)
    _paint(img, box_b, tuple(0.7 * c for c in ROOF_OLD), pixel)
    one = np.zeros_like(img)
    _paint(one, (10.3, 12.6, 31.1, 27.9), (1.0, 1.0, 1.0), pixel)
    image = np.stack([ndimage.gaussian_filter(b, 0.8) for b in img]).astype(np.float32)
    labels = (ndimage.gaussian_filter(one[0], 0.8) > 0.15).astype(np.int32)
    redrawn = half_cover_outlines(labels, image, np.ones(labels.shape, bool), np.full(3, 1.5))
    outline_px = 2 * (20.8 + 15.3) / pixel
    assert abs(np.count_nonzero(redrawn) - one[0].sum()) / outline_px < 0.15
    assert ndimage.label(redrawn > 0)[1] == 1


def test_redrawn_outlines_neither_join_nor_split_buildings() -> None:
    """Two roofs that meet inside a one-pixel gap stay two buildings; a roof whose
    neck the band would cut through keeps its outline."""
    # A red roof and a grey one abutting at x = 15.3 m (pixel 30 is 60 % red): drawn
    # with that pixel left open, each would take it by half cover.
    boxes = [(5.0, 5.0, 15.3, 20.0), (15.3, 5.0, 26.0, 20.0)]
    image, cover = _blurred_roofs(boxes, [ROOF_NEW, ROOF_OLD])
    labels = np.zeros(cover.shape[1:], np.int32)
    cols = np.arange(labels.shape[1])
    labels[(cover[0] > 0.5) & (cols < 30)] = 1
    labels[(cover[1] > 0.5) & (cols > 30)] = 2
    assert ndimage.label(labels > 0)[1] == 2
    redrawn = half_cover_outlines(labels, image, np.ones(labels.shape, bool), np.full(3, 1.5))
    assert set(np.unique(redrawn)) == {0, 1, 2}
    assert ndimage.label(redrawn > 0)[1] == 2
    # A dumb-bell: two roofs joined by a strip of bare earth one pixel wide, a blurred
    # colour between roof and grass. Cut, the building would fall in two.
    image, cover = _blurred_roofs([(10.0, 10.0, 20.0, 20.0), (22.0, 10.0, 32.0, 20.0)],
                                  [ROOF_NEW, ROOF_NEW])
    labels = ((cover[0] + cover[1]) > 0.5).astype(np.int32)
    labels[int(15.0 / 0.5), int(20.0 / 0.5):int(22.0 / 0.5)] = 1
    redrawn = half_cover_outlines(labels, image, np.ones(labels.shape, bool), np.full(3, 1.5))
    assert np.array_equal(redrawn, labels)


def test_nodata_is_neither_a_reference_nor_added() -> None:
    """Nodata read as zeros: specks of it filled into a roof must not pull the roof's
    colour towards black (a pixel the roof covers by a third then looked half
    covered), and nodata beside a roof is never added to it."""
    box = (10.3, 10.35, 30.3, 25.3)                       # row 20 covered by 0.3
    image, cover = _blurred_roofs([box], [(230.0, 230.0, 230.0)])
    labels = (ndimage.gaussian_filter(cover[0], 0.8) > 0.5).astype(np.int32)
    top = int(np.nonzero(labels.any(axis=1))[0][0])
    valid = np.ones(labels.shape, bool)
    valid[top + 2, 21:61:2] = False                       # the roof's reference row
    valid[int(25.3 / 0.5) + 1, 25:55] = False             # a nodata strip beside it
    image = np.where(valid, image, 0).astype(np.float32)
    redrawn = half_cover_outlines(labels, image, valid, np.full(3, 1.5))
    assert not ((redrawn > 0) & (cover[0] < 0.45) & valid).any()
    assert not ((redrawn > 0) & ~valid & (labels == 0)).any()


def test_an_outline_too_faint_to_place_is_kept() -> None:
    """A roof whose colour is within a few noise deviations of its ground keeps the
    outline it was given: no pixel is judged on a contrast the noise could make."""
    pixel, n = 0.5, 120
    img = np.stack([np.full((n, n), c) for c in GRASS])
    one = np.zeros_like(img)
    _paint(one, (10.3, 12.6, 31.1, 27.9), (1.0, 1.0, 1.0), pixel)
    img = img + 2.0 * one[0]                              # 2 levels up, noise 1.5
    rng = np.random.default_rng(0)
    image = (np.stack([ndimage.gaussian_filter(b, 0.8) for b in img])
             + rng.normal(0, 1.5, img.shape)).astype(np.float32)
    labels = (ndimage.gaussian_filter(one[0], 0.8) > 0.15).astype(np.int32)
    redrawn = half_cover_outlines(labels, image, np.ones(labels.shape, bool), np.full(3, 1.5))
    assert np.array_equal(redrawn, labels)


def test_a_dark_roof_does_not_grow_into_its_own_shadow() -> None:
    """A dark roof casting its shadow on bright earth: the shadow lies between the two
    colours in brightness but is no mix of them (it keeps the earth's colour), and
    the outline stays on the roof."""
    pixel, n = 0.5, 120
    earth, roof = (150.0, 134.0, 110.0), (58.0, 96.0, 78.0)
    img = np.stack([np.full((n, n), c) for c in earth])
    box = (10.3, 12.6, 31.1, 27.9)
    _shadow(img, box, (1.0, 0.0), 1.5, pixel)             # sun in the east: shadow west
    _paint(img, box, roof, pixel)
    one = np.zeros_like(img)
    _paint(one, box, (1.0, 1.0, 1.0), pixel)
    rng = np.random.default_rng(1)
    image = (np.stack([ndimage.gaussian_filter(b, 0.8) for b in img])
             + rng.normal(0, 1.5, img.shape)).astype(np.float32)
    # Drawn too wide, as one change level for the whole scene draws a dark roof on
    # bright earth: over the fringe of the shadow as well.
    labels = (ndimage.gaussian_filter(one[0], 0.8) > 0.2).astype(np.int32)
    redrawn = half_cover_outlines(labels, image, np.ones(labels.shape, bool), np.full(3, 1.5))
    outline_px = 2 * (20.8 + 15.3) / pixel
    assert abs(np.count_nonzero(redrawn) - one[0].sum()) / outline_px < 0.25
    assert not ((redrawn > 0) & (one[0] <= 0.3)).any()


def test_new_and_standing_buildings_are_redrawn_together() -> None:
    """A new roof one pixel from a roof left out as standing before: redrawn apart,
    each took the other's roof for ground and could grow into the gap; together
    they stay apart, and both are redrawn."""
    boxes = [(5.0, 5.0, 15.3, 20.0), (15.3, 5.0, 26.0, 20.0)]
    image, cover = _blurred_roofs(boxes, [ROOF_NEW, ROOF_OLD])
    cols = np.arange(cover.shape[2])
    new = ((cover[0] > 0.5) & (cols < 30)).astype(np.int32)
    standing = ((cover[1] > 0.5) & (cols > 30)).astype(np.int32)
    valid, noise = np.ones(new.shape, bool), np.full(3, 1.5)
    new_after, standing_after = redraw_outlines(new, standing, image, valid, noise, 10.0)
    assert new_after.max() == 1 and standing_after.max() == 1
    assert ndimage.label((new_after > 0) | (standing_after > 0))[1] == 2
    # Each alone is redrawn as half_cover_outlines draws it with the other present.
    both = half_cover_outlines(np.where(standing > 0, 2, new), image, valid, noise)
    np.testing.assert_array_equal(new_after, (both == 1).astype(np.int32))
    np.testing.assert_array_equal(standing_after, (both == 2).astype(np.int32))
    # Without standing buildings it is half_cover_outlines and the area filter.
    alone, none = redraw_outlines(new, None, image, valid, noise, 10.0)
    assert none is None
    np.testing.assert_array_equal(alone, half_cover_outlines(new, image, valid, noise))
    # Both are held to the minimum area: a standing building redrawn smaller than it
    # is dropped as a new one would be (kept as new on request, it would be).
    standing_px = int((both == 2).sum())
    assert redraw_outlines(new, standing, image, valid, noise, standing_px)[1].max() == 1
    assert redraw_outlines(new, standing, image, valid, noise, standing_px + 1)[1].max() == 0
