"""Outlines redrawn through the pixels a roof covers by half.

Segmentation draws every outline at one change level for the whole scene, which
takes in a bright roof's blurred fringe and leaves out a faint roof's. Here each
outline pixel is read as a mix of its roof and its ground colours, both taken near
it, and kept when the roof covers it by half (:func:`half_cover_outlines`);
:func:`redraw_outlines` redraws new buildings and those standing before together.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .morphology import at_least, relabel


#: Half-cover outlines: the band either side of an outline that is redrawn, and how
#: far inside a building its roof colour is read and outside it its ground colour
#: (pixels). The ground is read closer, within a narrow shadow along the outline,
#: and the roof further in, beyond a parapet; both beyond a blur of about a pixel.
OUTLINE_BAND_PX = 1.5
OUTLINE_REFERENCE_PX = 3.0
OUTLINE_GROUND_PX = 2.0
#: Smallest roof-to-ground colour contrast, in after-date noise deviations, at which
#: an outline pixel is redrawn (below it the half-cover level is lost in the noise).
OUTLINE_MIN_CONTRAST = 4.0
#: How far, as a share of the roof-to-ground contrast, a pixel may lie beyond either
#: colour, and off the line between them (beyond three noise deviations per band),
#: and still be read as a mix of the two.
OUTLINE_MIX_SLACK = 0.5
OUTLINE_OFF_LINE = 0.25


def _masked_mean3(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, H, W) mean of each pixel's 3 x 3 neighbours within ``mask`` (NaN where none)."""
    weight = ndimage.uniform_filter(mask.astype(np.float32), 3, mode="constant")
    # Zeros outside the mask, not products: a NaN there would spread along the rows.
    total = ndimage.uniform_filter(np.where(mask, image, np.float32(0)), size=(1, 3, 3),
                                   mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / weight


def half_cover_outlines(labels: np.ndarray, image: np.ndarray, valid: np.ndarray,
                        noise: np.ndarray) -> np.ndarray:
    """Each building's outline redrawn through the pixels its roof covers by half.

    The optics blur a roof's edge over the pixels beside it, so a pixel on the
    outline is a mix ``f * roof + (1 - f) * ground``. Candidates come from one change
    level for the whole scene, which takes in pixels that a bright roof covers by a
    fifth and leaves out pixels that a faint one covers by three quarters; areas then
    run high or low by up to a pixel's width of outline. Here a pixel within
    :data:`OUTLINE_BAND_PX` of the outline belongs to the building when ``f >= 0.5``:
    for a straight edge under a symmetric blur, exactly the pixels whose centre lies
    on the roof. The roof and ground colours are read near each pixel (the mean of
    the reference pixels in the 3 x 3 about the nearest one: at least
    :data:`OUTLINE_REFERENCE_PX` inside the building, and :data:`OUTLINE_GROUND_PX`
    outside it and every other), so a gable's two facets, and a shadow along one
    side, are each their own reference. A pixel that is no such mix keeps its side:
    a dark roof's shadow on bright earth (between the two in brightness, but of the
    earth's colour), a dark parapet, a third material. Where the two colours differ
    by less than :data:`OUTLINE_MIN_CONTRAST` noise deviations, at a pixel or along
    most of a building's outline, the outline is kept.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, 1..N buildings.
    image : (B, H, W) ndarray
        The after date (on the before date's radiometry).
    valid : (H, W) ndarray of bool
    noise : (B,) ndarray
        Per-band noise deviation of ``image``.

    Returns
    -------
    (H, W) ndarray of int32
        The buildings' labels with their outlines redrawn; no two of them touch
        where they did not, and each keeps one body (specks of the band left apart
        from it are dropped).
    """
    out = labels.astype(np.int32, copy=True)
    unit = np.maximum(np.asarray(noise, np.float64), 1e-12).astype(np.float32)
    reach = int(np.ceil(OUTLINE_REFERENCE_PX)) + 3
    height, width = labels.shape
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        box = (slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height)),
               slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width)))
        lab = labels[box]
        own = lab == k
        ok = valid[box]
        free = (lab == 0) & ok
        depth = ndimage.distance_transform_edt(own)
        away = ndimage.distance_transform_edt(~own)
        # Nodata is no colour: a patch of it filled into a roof is no roof reference.
        roof_ref = own & ok & (depth >= OUTLINE_REFERENCE_PX)
        ground_ref = free & (away >= OUTLINE_GROUND_PX) & (away <= OUTLINE_GROUND_PX + 2)
        others = (lab > 0) & ~own
        if others.any():
            # Beside another building the ground is blurred with its roof.
            ground_ref &= ndimage.distance_transform_edt(~others) >= OUTLINE_GROUND_PX
        if not roof_ref.any() or not ground_ref.any():
            continue
        band = (own & (depth <= OUTLINE_BAND_PX)) | (free & (away <= OUTLINE_BAND_PX))
        # A reference farther than the band's far side is another place's colour.
        far = OUTLINE_REFERENCE_PX + OUTLINE_BAND_PX + 1.0
        dist_r, at_r = ndimage.distance_transform_edt(~roof_ref, return_indices=True)
        dist_g, at_g = ndimage.distance_transform_edt(~ground_ref, return_indices=True)
        band &= (dist_r <= far) & (dist_g <= far)
        rows, cols = np.nonzero(band)
        if rows.size == 0:
            continue
        # In noise units, so that every band weighs by what it can tell.
        pixels = image[(slice(None),) + box].astype(np.float32) / unit[:, None, None]
        here = pixels[:, rows, cols]
        roof = _masked_mean3(pixels, roof_ref)[:, at_r[0][rows, cols], at_r[1][rows, cols]]
        ground = _masked_mean3(pixels, ground_ref)[:, at_g[0][rows, cols], at_g[1][rows, cols]]
        step = roof - ground
        contrast2 = (step * step).sum(axis=0)
        # A building whose outline is mostly too faint is left as it is: the few
        # pixels passing on their own would pass on ground texture.
        if np.median(contrast2) < OUTLINE_MIN_CONTRAST**2:
            continue
        cover = ((here - ground) * step).sum(axis=0) / np.maximum(contrast2, 1e-12)
        # Only a pixel that is such a mix is judged: one far beyond either colour (a
        # shadow darker than both, a dark parapet) or far off the line between them
        # (a shadow of the earth's colour, a third material) keeps its side.
        off_line = here - ground - cover * step
        mixed = ((cover >= -OUTLINE_MIX_SLACK) & (cover <= 1 + OUTLINE_MIX_SLACK)
                 & ((off_line * off_line).sum(axis=0)
                    <= (OUTLINE_OFF_LINE * np.sqrt(contrast2) + 3.0 * np.sqrt(len(unit)))**2))
        decided = (contrast2 >= OUTLINE_MIN_CONTRAST**2) & mixed
        rows, cols, inside = rows[decided], cols[decided], cover[decided] >= 0.5
        target = out[box]
        was_own = own[rows, cols]
        drop = was_own & ~inside
        # A pixel is added only where it leaves a gap to every other building as it
        # now stands, so that no two buildings grow into one.
        others_now = ndimage.binary_dilation((target > 0) & (target != k),
                                             structure=np.ones((3, 3), bool))
        add = ~was_own & inside & (target[rows, cols] == 0) & ~others_now[rows, cols]
        redrawn = own.copy()
        redrawn[rows[drop], cols[drop]] = False
        redrawn[rows[add], cols[add]] = True
        parts, n_parts = ndimage.label(redrawn)
        if n_parts > 1 and ndimage.label(own)[1] == 1:
            size = np.bincount(parts.ravel())
            size[0] = 0
            body = int(size.argmax())
            # A part that could hold a roof reference is a neck thinner than the band,
            # cut through: such a building keeps the outline it had, not to become two.
            # Smaller parts are specks of the band (a pixel added beside a corner, a
            # notch's tip) and go.
            side = np.delete(size, [0, body])
            if (side >= np.pi * OUTLINE_REFERENCE_PX**2).any():
                continue
            redrawn = parts == body
        target[own & ~redrawn] = 0
        target[redrawn & ~own] = k
    return out



def redraw_outlines(labels: np.ndarray, standing: np.ndarray | None, image: np.ndarray,
                    valid: np.ndarray, noise: np.ndarray, min_area_px: float
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """New buildings and those left out as standing before, redrawn together by
    :func:`half_cover_outlines`.

    The buildings standing before are reported too (and kept as new ones on
    request), so they are measured alike; in one call with the new ones, so that
    neither takes the other's roof for ground or grows into it.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        New buildings, 0 background, 1..N.
    standing : (H, W) ndarray of int or None
        Buildings left out as standing before, 0 background, 1..M.
    image, valid, noise
        As for :func:`half_cover_outlines`.
    min_area_px : float
        Buildings (new or standing) redrawn smaller than this are dropped.

    Returns
    -------
    labels : (H, W) ndarray of int32
        New buildings relabelled 1..N'.
    standing : (H, W) ndarray of int32 or None
        Standing buildings relabelled 1..M'.
    """
    n_new = int(labels.max())
    both = labels if standing is None else np.where(standing > 0, standing + n_new, labels)
    both = half_cover_outlines(both, image, valid, noise)
    new, _ = at_least(np.where(both <= n_new, both, 0), n_new, min_area_px)
    if standing is not None:
        # Held to the same minimum: kept as new on request, they would be dropped.
        standing = np.where(both > n_new, both - n_new, 0)
        large = np.bincount(standing.ravel()) >= min_area_px
        large[0] = False
        standing, _ = relabel(np.where(large[standing], standing, 0))
    return new.astype(np.int32), standing
