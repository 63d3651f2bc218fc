"""New buildings by what each date looks like: roofs in the after date that were not
roofs in the before date (the "appearance" detector).

The default ("regions") detector measures change in units of sensor noise, and its
classifier learned from synthetic pairs that a new roof changes by ten noise units or
more. On real imagery (the LEVIR pairs) a new roof and the lawn and road around it
all change by two to four such units, and it finds few roofs. This detector judges
each date on its own, in units of the date itself:

1. each date is over-segmented (Felzenszwalb's graph segmentation of the visible
   bands stretched between their 2nd and 98th percentiles; segments of 8 m² and
   more), :func:`date_segments`;
2. each segment is described by its shape and by its appearance relative to the
   date (:func:`appearance_features`);
3. gradient-boosted trees, trained on both dates of synthetic pairs
   (``benchmarks/train_appearance.py``) and shipped as flat node arrays
   (``models/appearance.npz``), give each segment a probability of roof
   (:func:`roof_probability`);
4. a new building is a roof-like segment of the after date whose pixels were not
   roof-like in the before date, opened by a 3 x 3 square (:func:`new_roof_mask`).

On the LEVIR development pairs it reaches three times the region classifier's pixel
F1; it is worse on every synthetic scenario and reports debris on scenes of
destruction as new buildings (README, Benchmarks, "A second detector for real
imagery"). Its segmentation is not local: in windowed runs a building at a window
seam may come out otherwise than from the whole scene.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.segmentation import felzenszwalb

# change.py imports this module only inside a function: no import cycle.
from .change import (MAX_AREA_FEATURE_M2, SceneStatistics, _labelled_pixels, _region_shape,
                     _shadow_side_fractions, load_model)
from .errors import ProcessingError
from .morphology import relabel
from .raster import Scene, crop_scene

#: Smallest segment, m²: a roof facet of a small house.
MIN_SEGMENT_M2 = 8.0
#: Names of the per-segment features, in the order of the model's columns.
APPEARANCE_FEATURE_NAMES: tuple[str, ...] = (
    "log_area_m2", "rectangularity", "solidity", "compactness", "elongation",
    "log_bright", "bright_spread", "saturation", "greenness", "relative_texture",
    "log_rim_gradient", "dark_side_contrast", "dark_side")
_MODEL_PATH = Path(__file__).with_name("models") / "appearance.npz"


def visible_bands(scene: Scene) -> np.ndarray:
    """(3, H, W) float64: the first three bands that are not near-infrared, negatives
    clipped.

    Raises
    ------
    ProcessingError
        The scene has fewer than three visible bands.
    """
    vis = [i for i in range(scene.image.shape[0]) if i != scene.nir][:3]
    if len(vis) < 3:
        raise ProcessingError(f"{scene.path}: the appearance detector needs three visible "
                              f"bands, the scene has {len(vis)} (use --detector regions)")
    # One pass, cast and clip together, over a view of the bands when they lead.
    bands = scene.image[:3] if vis == [0, 1, 2] else scene.image[vis]
    return np.maximum(bands, 0.0, dtype=np.float64)


def date_segments(scene: Scene, pixel_m: float, stats: SceneStatistics | None = None,
                  date: str = "after") -> tuple[np.ndarray, int]:
    """Over-segmentation of one date's visible bands.

    Parameters
    ----------
    scene : Scene
        One date; its first three visible bands are used (:func:`visible_bands`).
    pixel_m : float
        Ground size of a pixel, metres.
    stats : SceneStatistics, optional
        Scene-wide statistics (the bands' 2nd and 98th percentiles of ``date``), so
        that every window of a scene is stretched alike; measured here if absent.
    date : str
        Name of the date in ``stats``.

    Returns
    -------
    segments : (H, W) ndarray of int
        1..n, 0 off the valid pixels.
    n : int
    """
    return _segments(visible_bands(scene), scene.valid, pixel_m,
                     stats if stats is not None else SceneStatistics(), date)


def _segments(vis: np.ndarray, valid: np.ndarray, pixel_m: float, stats: SceneStatistics,
              date: str) -> tuple[np.ndarray, int]:
    """:func:`date_segments` of the visible bands ``vis`` (3, H, W)."""
    if not valid.any():
        return np.zeros(valid.shape, np.int32), 0
    lo, hi = _stretch(vis, valid, stats, date)
    rgb = np.clip((vis - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None], 0, 1)
    seg = felzenszwalb(np.moveaxis(rgb, 0, -1), scale=100, sigma=max(0.5, 0.4 / pixel_m),
                       min_size=int(round(MIN_SEGMENT_M2 / pixel_m**2))) + 1
    seg[~valid] = 0
    return relabel(seg)


def _texture_sigma_px(pixel_m: float) -> float:
    """Gaussian deviation of the texture and gradient: half a metre, at least 0.7 px."""
    return max(0.7, 0.5 / pixel_m)


def _brightness_and_gradient(rgb: np.ndarray, valid: np.ndarray, pixel_m: float
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Mean brightness of the visible bands ``rgb`` (3, H, W) and its gradient
    magnitude, both (H, W).

    Nodata pixels take the brightness of the nearest valid pixel, so that the edge of
    the data is not read as an outline (gradient), as texture or as a bright
    neighbour by the segments along it.
    """
    bright = rgb.mean(axis=0)
    if valid.any() and not valid.all():
        nearest = ndimage.distance_transform_edt(~valid, return_distances=False,
                                                 return_indices=True)
        bright = bright[tuple(nearest)]
    return bright, ndimage.gaussian_gradient_magnitude(bright, _texture_sigma_px(pixel_m))


def _median_gradient(gradient: np.ndarray, valid: np.ndarray, stats: SceneStatistics,
                     date: str) -> float:
    return stats.get(f"appearance_median_gradient_{date}", lambda: gradient[valid][::3])


def _median_bright(bright: np.ndarray, valid: np.ndarray, stats: SceneStatistics,
                   date: str) -> float:
    return stats.get(f"appearance_median_bright_{date}", lambda: bright[valid][::3])


def _stretch(vis: np.ndarray, valid: np.ndarray, stats: SceneStatistics,
             date: str) -> tuple[np.ndarray, np.ndarray]:
    """Per visible band, the 2nd and 98th percentiles of the valid pixels (3,) each."""
    lo = np.array([stats.get(f"stretch_low_{date}_{i}", lambda b=b: b[valid][::3],
                             lambda v: float(np.percentile(v, 2))) for i, b in enumerate(vis)])
    hi = np.array([stats.get(f"stretch_high_{date}_{i}", lambda b=b: b[valid][::3],
                             lambda v: float(np.percentile(v, 98))) for i, b in enumerate(vis)])
    return lo, hi


def appearance_features(scene: Scene, pixel_m: float, stats: SceneStatistics | None = None,
                        date: str = "after", segments: np.ndarray | None = None,
                        only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Segments of one date and their features.

    The shape is that of the region classifier (area, rectangularity, solidity,
    compactness, elongation); the rest is measured in units of the date itself, not
    of its noise: brightness over the scene median, the spread of brightness and the
    fine texture over the local brightness, saturation and greenness of the colour,
    the gradient near the segment's rim (the largest within a metre) over the scene's
    median gradient, and the
    darkness (against the brightest ground within 15 m) of a strip 2 m beyond the
    segment on its darkest side (the pixels of the neighbouring segments; nodata is
    left out), minus that of the opposite side. Ratios to brightness have a floor of
    a thousandth of the scene's median brightness, so that the features are the same
    for counts and reflectances.

    ``stats`` and ``date`` are as in :func:`date_segments` (medians of brightness and
    gradient too). ``segments`` (H, W), labels 1..n and 0 off the data, replaces the
    date's own segmentation; every valid pixel should be in one, since the strip
    beside a segment is made of the others. ``only`` (n + 1,) bool, with ``segments``:
    the segments to describe (their rows are those they have when all are described;
    the others' rows are zero).

    Returns
    -------
    segments : (H, W) ndarray of int
        From :func:`date_segments`, or as given.
    features : (n + 1, F) ndarray of float64
        Row k for segment k (row 0 unused), columns :data:`APPEARANCE_FEATURE_NAMES`.
    """
    stats = stats if stats is not None else SceneStatistics()
    valid = scene.valid
    rgb = visible_bands(scene)
    if segments is None:
        segments, n = _segments(rgb, valid, pixel_m, stats, date)
    else:
        n = int(segments.max())
    if n == 0:
        return segments, np.zeros((1, len(APPEARANCE_FEATURE_NAMES)))
    chosen = None if only is None else np.asarray(only, bool)
    at, lab = _labelled_pixels(segments)
    if chosen is not None:
        # Shapes and the strips beside segments cost per segment pixel: only the
        # chosen segments' pixels, whose counts and shapes are those among all.
        keep = chosen[lab]
        at, lab = at[keep], lab[keep]
    count, *shape = _region_shape(segments, n, at, lab)
    shape = [np.log(np.clip(count * pixel_m**2, 1.0, MAX_AREA_FEATURE_M2)), *shape]

    def mean(x: np.ndarray) -> np.ndarray:
        return np.bincount(segments.ravel(), weights=x.ravel(), minlength=n + 1) / count

    bright, gradient = _brightness_and_gradient(rgb, valid, pixel_m)
    total = rgb.sum(axis=0) + 1e-6
    saturation = (rgb.max(axis=0) - rgb.min(axis=0)) / (rgb.max(axis=0) + 1e-6)
    greenness = (rgb[1] - 0.5 * (rgb[0] + rgb[2])) / total
    median_bright = _median_bright(bright, valid, stats, date)
    # Ratios to brightness need a floor against the dark; a thousandth of the scene's
    # median brightness, so that reflectances (0-1) and counts (0-10000) are alike.
    floor = 1e-3 * median_bright + 1e-12
    s = _texture_sigma_px(pixel_m)
    local = ndimage.gaussian_filter(bright, s)
    texture = np.sqrt(ndimage.gaussian_filter((bright - local) ** 2, s)) / (local + floor)
    gradient /= _median_gradient(gradient, valid, stats, date) + 1e-12
    rim = ((ndimage.grey_erosion(segments, size=3) != segments)
           | (ndimage.grey_dilation(segments, size=3) != segments))
    rim_count = np.maximum(np.bincount(segments[rim], minlength=n + 1), 1)
    # The strongest gradient within a metre of each rim pixel: the outline of a roof
    # may fall a pixel inside or outside a segment from one date to the next (the
    # blurred step can form a thin segment of its own), which must not change it.
    reach = 2 * int(np.ceil(1.0 / pixel_m)) + 1
    near_edge = ndimage.maximum_filter(gradient, size=reach)
    rim_gradient = np.bincount(segments[rim], weights=near_edge[rim], minlength=n + 1) / rim_count
    ref = ndimage.maximum_filter(ndimage.uniform_filter(bright, 3),
                                 max(3, int(round(15.0 / pixel_m)) | 1))
    dark = np.clip(1.0 - bright / np.maximum(ref, floor), 0.0, 1.0)
    # Every valid pixel is in some segment: the strip beside a segment is made of its
    # neighbours' pixels (nodata, label 0, is left out).
    sides = _shadow_side_fractions(segments, n, dark, max(1.0, 2.0 / pixel_m),
                                   among_others=True, only=chosen)
    half = sides.shape[1] // 2
    mean_bright = mean(bright)
    spread = np.sqrt(np.maximum(mean(bright**2) - mean_bright**2, 0.0)) / (mean_bright + floor)
    appearance = [
        np.log(np.maximum(mean_bright, floor) / (median_bright + 1e-12)), spread,
        mean(saturation), mean(greenness), mean(texture), np.log1p(rim_gradient),
        (sides - np.roll(sides, half, axis=1)).max(axis=1), sides.max(axis=1)]
    # Rounded to float32, as the features the trees were trained on were.
    feats = np.stack([*shape, *appearance], axis=1).astype(np.float32).astype(np.float64)
    if chosen is not None:
        feats[~chosen] = 0.0
    return segments, feats


def load_appearance_model(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Trees of the appearance classifier as flat node arrays (the shipped ones by default).

    Keys: ``baseline`` (1,), and per node (all trees concatenated) ``feature``,
    ``threshold``, ``left``, ``right`` (absolute node indices), ``missing_left``,
    ``is_leaf``, ``value``; ``roots`` (T,) the first node of each tree.
    """
    return load_model(_MODEL_PATH if path is None else path)


#: Rows of features that :func:`tree_ensemble_logit` walks through the trees together.
_TREE_ROWS_PER_STEP = 64


def tree_ensemble_logit(features: np.ndarray, model: dict[str, np.ndarray]) -> np.ndarray:
    """Sum of the trees' leaf values plus the baseline, for each row of ``features``.

    Parameters
    ----------
    features : (N, F) ndarray
    model : dict
        From :func:`load_appearance_model`. A sample goes left where its feature is
        at most the node's threshold (NaN goes where ``missing_left`` says).

    Returns
    -------
    (N,) ndarray of float64
        The log-odds of roof.
    """
    x = np.asarray(features, dtype=np.float64)
    out = np.full(x.shape[0], float(model["baseline"][0]))
    feature, threshold = model["feature"], model["threshold"]
    left, right, missing = model["left"], model["right"], model["missing_left"].astype(bool)
    is_leaf, value = model["is_leaf"].astype(bool), model["value"]
    roots = np.asarray(model["roots"], np.int64)
    # Every (row, tree) pair descends one level per step, all trees at once: the
    # confirmation calls this on a few rows many times, and a step per level of each
    # tree cost more than the rows themselves. Chunks of rows keep a step in cache.
    n_trees = roots.size
    for start in range(0, x.shape[0], _TREE_ROWS_PER_STEP):
        chunk = x[start:start + _TREE_ROWS_PER_STEP]
        node = np.tile(roots, chunk.shape[0])  # pair row * n_trees + tree
        row = np.repeat(np.arange(chunk.shape[0]), n_trees)
        pairs = np.flatnonzero(~is_leaf[node])
        while pairs.size:
            at = node[pairs]
            v = chunk[row[pairs], feature[at]]
            go_left = np.where(np.isnan(v), missing[at], v <= threshold[at])
            node[pairs] = np.where(go_left, left[at], right[at])
            pairs = pairs[~is_leaf[node[pairs]]]
        leaf_values = value[node].reshape(chunk.shape[0], n_trees)
        # Added tree by tree, in the trees' order: the same sum to the last bit as
        # when each tree was walked on its own.
        part = out[start:start + _TREE_ROWS_PER_STEP]
        for t in range(n_trees):
            part += leaf_values[:, t]
    return out


def roof_probability(scene: Scene, pixel_m: float, model: dict[str, np.ndarray] | None = None,
                     stats: SceneStatistics | None = None, date: str = "after",
                     segments: np.ndarray | None = None, only: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Segments of one date and the probability of roof of each (``stats``, ``date``,
    ``segments``, ``only``: see :func:`appearance_features`).

    Returns
    -------
    segments : (H, W) ndarray of int
    probability : (n + 1,) ndarray of float64
        Entry k for segment k; entry 0 (off data), and those not in ``only``, 0.
    """
    segments, feats = appearance_features(scene, pixel_m, stats, date, segments, only)
    model = model if model is not None else load_appearance_model()
    rows = slice(None) if only is None else np.flatnonzero(only)
    prob = np.zeros(feats.shape[0])
    prob[rows] = 1.0 / (1.0 + np.exp(-tree_ensemble_logit(feats[rows], model)))
    prob[0] = 0.0
    return segments, prob


def new_roof_mask(before: Scene, after: Scene, pixel_m: float,
                  model: dict[str, np.ndarray] | None = None, level: float = 0.5,
                  stats: SceneStatistics | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Roof-like segments of the after date that were not roofs in the before date.

    Parameters
    ----------
    before, after : Scene
        One grid; ``after`` registered (its own radiometry: the features are relative
        to each date).
    pixel_m : float
    model : dict, optional
        From :func:`load_appearance_model`; the shipped trees by default.
    level : float
        Probability of roof a segment needs (after), and must not have had (before,
        averaged over the after segment's pixels valid in both dates).
    stats : SceneStatistics, optional
        Scene-wide statistics of both dates (see :func:`appearance_statistics`).

    Returns
    -------
    mask : (H, W) ndarray of bool
        New roof pixels, opened by a 3 x 3 square.
    probability : (H, W) ndarray of float32
        The after date's probability of roof of each pixel's segment.
    """
    model = model if model is not None else load_appearance_model()
    valid = before.valid & after.valid
    segments, p_after, was_roof = _roof_after_and_before(before, after, pixel_m, model, stats)
    new = (p_after >= level) & (was_roof < level)
    new[0] = False
    mask = ndimage.binary_opening(new[segments] & valid, np.ones((3, 3), bool))
    return mask, p_after[segments].astype(np.float32)


def _roof_after_and_before(before: Scene, after: Scene, pixel_m: float,
                           model: dict[str, np.ndarray], stats: SceneStatistics | None
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segments of the after date, the probability of roof of each, and that of the
    before date averaged over each segment's pixels valid in both dates.

    Returns
    -------
    segments : (H, W) ndarray of int
        0 off the after date's data, 1..n.
    p_after, was_roof : (n + 1,) ndarray of float64
    """
    valid = before.valid & after.valid
    segments, p_after = roof_probability(after, pixel_m, model, stats, "after")
    seg_b, p_before = roof_probability(before, pixel_m, model, stats, "before")
    n = int(segments.max())
    # Over the pixels valid in both dates: where the before date has no data, it
    # says nothing about what stood there.
    both = np.where(valid, segments, 0).ravel()
    count = np.maximum(np.bincount(both, minlength=n + 1), 1)
    was_roof = np.bincount(both, weights=p_before[seg_b].ravel(), minlength=n + 1) / count
    return segments, p_after, was_roof


#: Margin around a region within which :func:`confirm_new_roofs` segments both dates,
#: metres: about twice the reach of the features of a segment beside the region (the
#: strip of 2 m beside it, darkened against the brightest ground within 7.5 m), so
#: that the segments next to the region are seen whole enough to be judged.
CONFIRM_MARGIN_M = 17.0
#: Probability of roof the region itself must have in the after date for
#: :func:`confirm_new_roofs` to overrule the region classifier.
CONFIDENT_ROOF = 0.9


def confirm_new_roofs(before: Scene, after: Scene, regions: np.ndarray,
                      candidates: np.ndarray, pixel_m: float,
                      stats: SceneStatistics | None = None,
                      model: dict[str, np.ndarray] | None = None,
                      level: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Which candidate regions the appearance detector also finds to be new roofs.

    Two tests, the second only for regions that pass the first (it costs a
    segmentation of both dates):

    1. the region itself, taken as a segment of each date (every other valid pixel in
       a segment of the ground around it), looks like a roof in the after date with
       confidence (probability at least :data:`CONFIDENT_ROOF`) and did not in the
       before date (below ``level``);
    2. :func:`new_roof_mask` on the box of the region and :data:`CONFIRM_MARGIN_M`
       around it covers at least half of the region.

    The after date of test 1 is described over the whole scene, for the candidate
    regions only; its before date, and test 2, only on the boxes of the regions that
    pass the after date. A region's answer depends only on what lies within the
    margin of it (and on the scene-wide statistics), so a windowed run that holds
    that box gives what the whole scene gives.

    Parameters
    ----------
    before, after : Scene
        One grid; ``after`` registered, as delivered (each date in its own units).
    regions : (H, W) ndarray of int
        0 background, 1..n.
    candidates : (n + 1,) ndarray of bool
        The regions to test (entry 0 unused).
    pixel_m : float
        Ground size of a pixel, metres.
    stats : SceneStatistics, optional
        Scene-wide statistics of both dates (:func:`appearance_statistics`); measured
        on the given scenes' pixels valid in both dates when absent (and added to
        ``stats``), never on a box.
    model : dict, optional
        The appearance trees (the shipped ones by default).
    level : float
        Probability of roof, as in :func:`new_roof_mask`.

    Returns
    -------
    confirmed : (n + 1,) ndarray of bool
    probability : (n + 1,) ndarray of float32
        Mean after-date probability of roof over each confirmed region's pixels valid
        in both dates, from the segmentation of its box (0 elsewhere).

    Raises
    ------
    ValueError
        ``candidates`` is not one entry per label 0..n.
    """
    n = int(regions.max()) if regions.size else 0
    candidates = np.asarray(candidates, bool).copy()
    if candidates.shape != (n + 1,):
        raise ValueError(f"candidates must have one entry per label 0..{n} ({n + 1}), "
                         f"got shape {candidates.shape}")
    confirmed = np.zeros(n + 1, bool)
    probability = np.zeros(n + 1, np.float32)
    candidates[0] = False
    if not candidates.any():
        return confirmed, probability
    model = model if model is not None else load_appearance_model()
    before, after, valid, stats = _on_common_pixels(before, after, pixel_m, stats)
    segments = _with_ground_pieces(regions, n, valid)
    # Only the candidates are described: the ground pieces are there to be beside them.
    described = np.zeros(int(segments.max()) + 1, bool)
    described[:n + 1] = candidates
    p_after = roof_probability(after, pixel_m, model, stats, "after", segments,
                               described)[1][:n + 1]
    boxes = ndimage.find_objects(regions, max_label=n)
    for k in np.flatnonzero(candidates & (p_after >= max(level, CONFIDENT_ROOF))):
        # The before date of test 1 on the box only: what a segment's features see
        # lies within the margin, and few regions get this far.
        box, own, p_before = _before_date_on_box(before, regions, k, boxes[k - 1], segments,
                                                 valid, pixel_m, model, stats)
        if not own.any() or p_before >= level:
            continue
        # Test 2: each date segmented on the box around the region.
        r0, c0 = box[0].start, box[1].start
        height, width = own.shape
        mask, prob = new_roof_mask(crop_scene(before, r0, c0, height, width),
                                   crop_scene(after, r0, c0, height, width),
                                   pixel_m, model, level, stats)
        if mask[own].mean() >= 0.5:
            confirmed[k] = True
            probability[k] = float(prob[own].mean())
    return confirmed, probability


#: Share of an after-date segment that a found building must cover for the segment
#: to complete it (:func:`redraw_found_roofs`): enough that the segment is the
#: building's own roof rather than ground that merely touches it.
COMPLETION_SHARE = 0.25
#: Largest share of a found building that :func:`redraw_found_roofs` cuts out as
#: ground: a building the trees find mostly ground is the classifier's word against
#: theirs, and is left as found.
TRIM_MOST = 0.75


@dataclass
class RoofRedraw:
    """What :func:`redraw_found_roofs` changes in the found buildings.

    Attributes
    ----------
    added : (H, W) ndarray of bool
        Pixels to add to the buildings (none already in them).
    removed : (H, W) ndarray of bool
        Pixels of the buildings to cut out of them (none added).
    probability : (H, W) ndarray of float32
        The after date's probability of roof of the added pixels' segments (0
        elsewhere).
    """

    added: np.ndarray
    removed: np.ndarray
    probability: np.ndarray


def redraw_found_roofs(before: Scene, after: Scene, labels: np.ndarray,
                       change: np.ndarray, change_level: float, pixel_m: float,
                       stats: SceneStatistics | None = None,
                       model: dict[str, np.ndarray] | None = None,
                       level: float = 0.5, removable: np.ndarray | None = None
                       ) -> RoofRedraw:
    """The rest of the roofs of found buildings, and the ground in them, from the
    after date's segments.

    The region classifier often keeps only part of a real roof: a sunlit facet, or
    the part that changed most (a grey roof on dark trees changes by less than the
    lawn around it). It also keeps, when unsure, a roof with the new lawn or paving
    around it in one colour region (a grey roof on a grey-green lawn). Around each
    found building, the after date is segmented on its box with
    :data:`CONFIRM_MARGIN_M` around it.

    *Added*: an after-date segment joins the building when its mean change reaches
    ``change_level``, when the building covers :data:`COMPLETION_SHARE` of it or
    more, when the appearance trees find it a roof with confidence
    (:data:`CONFIDENT_ROOF`) and when it was none before (below ``level``), tested
    in that order: the trees judge only the segments the first two tests leave, and
    the before date is segmented only under those they find roofs.

    *Removed* (only where ``removable``): the building's pixels in a segment the
    trees find surely not roof (``1 - CONFIDENT_ROOF`` or less), unless that would
    cut more than :data:`TRIM_MOST` of the building.

    Segments touching the box's edge inside the array are not judged (the box cut
    them). A building's answer depends only on the pixels of its box, so a window
    holding that box, given the same pixels, gives what the whole scene gives. The
    segmentation is not stable under small changes of the pixels: where a window's
    pixels differ from the whole scene's (a group of candidate regions cut by every
    window), a segment can split or join, and a building be redrawn in one run and
    not the other.

    Parameters
    ----------
    before, after : Scene
        One grid; ``after`` registered, as delivered (each date in its own units).
    labels : (H, W) ndarray of int
        Found buildings, 0 background, 1..n.
    change : (H, W) ndarray of float
        The evidence's change, in noise units (``Evidence.change``).
    change_level : float
        Mean change a segment needs, in the same units.
    pixel_m : float
    stats, model :
        As in :func:`confirm_new_roofs`.
    level : float
        Probability of roof in the before date a segment must stay below.
    removable : (H, W) ndarray of bool, optional
        The pixels that may be cut out (the detector passes those of the regions kept
        without confidence, by its classifier or by the appearance check); none when
        absent.

    Returns
    -------
    RoofRedraw
        ``added`` opened by a 3 x 3 square, as the appearance detector's new roofs
        are.
    """
    if removable is not None:
        removable = np.asarray(removable, bool)
        if removable.shape != labels.shape:
            raise ValueError(f"removable must be on the labels' grid {labels.shape}, "
                             f"got shape {removable.shape}")
    n = int(labels.max()) if labels.size else 0
    added = np.zeros(labels.shape, bool)
    removed = np.zeros(labels.shape, bool)
    probability = np.zeros(labels.shape, np.float32)
    if n == 0:
        return RoofRedraw(added, removed, probability)
    model = model if model is not None else load_appearance_model()
    before, after, valid, stats = _on_common_pixels(before, after, pixel_m, stats)
    h, w = labels.shape
    for k, found in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if found is None:
            continue  # a label missing from 1..n
        r0, c0, r1, c1 = _margin_box(found, pixel_m, (h, w))
        box = (slice(r0, r1), slice(c0, c1))
        before_box = crop_scene(before, r0, c0, r1 - r0, c1 - c0)
        after_box = crop_scene(after, r0, c0, r1 - r0, c1 - c0)
        segments, m = date_segments(after_box, pixel_m, stats, "after")
        own = labels[box] == k
        on = np.where(valid[box], segments, 0).ravel()
        count = np.maximum(np.bincount(on, minlength=m + 1), 1)
        mean_change = np.bincount(on, weights=change[box].ravel(), minlength=m + 1) / count
        covered = np.bincount(on, weights=own.ravel(), minlength=m + 1) / count
        new = (mean_change >= change_level) & (covered >= COMPLETION_SHARE)
        cut = _edges_inside(r0, c0, r1, c1, (h, w))
        boxed = np.zeros(m + 1, bool)
        boxed[np.unique(segments[cut & (segments > 0)])] = True
        new &= ~boxed
        new[0] = False
        # Segments under the building's removable pixels, judged for what to cut.
        under = np.zeros(m + 1, bool)
        if removable is not None:
            under[segments[own & removable[box]]] = True
            under &= ~boxed
            under[0] = False
        # The trees judge only the segments the cheaper tests left and those under
        # the removable pixels, and the before date only under those they find roofs
        # (most boxes have none): a segment's probability is the same whichever
        # others are described.
        if not (new.any() or under.any()):
            continue
        _, p_after = roof_probability(after_box, pixel_m, model, stats, "after",
                                      segments, new | under)
        ground = under & (p_after <= 1.0 - CONFIDENT_ROOF)
        if ground.any():
            ground_px = own & removable[box] & ground[segments]
            if ground_px.sum() <= TRIM_MOST * own.sum():
                removed[box] |= ground_px
        new &= p_after >= max(level, CONFIDENT_ROOF)
        if not new.any():
            continue
        seg_b, _ = date_segments(before_box, pixel_m, stats, "before")
        roofs_under = np.zeros(int(seg_b.max()) + 1, bool)
        roofs_under[seg_b[new[segments] & valid[box]]] = True
        roofs_under[0] = False
        _, p_before = roof_probability(before_box, pixel_m, model, stats, "before",
                                       seg_b, roofs_under)
        # Over the pixels valid in both dates: where the before date has no data, it
        # says nothing about what stood there.
        was_roof = np.bincount(on, weights=p_before[seg_b].ravel(), minlength=m + 1) / count
        new &= was_roof < level
        if new.any():
            chosen = new[segments] & valid[box]
            added[box] |= chosen
            probability[box] = np.where(chosen, np.maximum(probability[box],
                                                           p_after[segments]), probability[box])
    added = ndimage.binary_opening(added, np.ones((3, 3), bool)) & (labels == 0)
    probability[~added] = 0.0
    return RoofRedraw(added, removed, probability)


def _edges_inside(r0: int, c0: int, r1: int, c1: int, shape: tuple[int, int]) -> np.ndarray:
    """(r1 - r0, c1 - c0) bool: the edges of the box that lie inside an array of
    ``shape``, which cut the segments there short (the array's own edges do not)."""
    cut = np.zeros((r1 - r0, c1 - c0), bool)
    cut[0, :], cut[-1, :] = r0 > 0, r1 < shape[0]
    cut[:, 0] |= c0 > 0
    cut[:, -1] |= c1 < shape[1]
    return cut


def roofs_before(before: Scene, after: Scene, labels: np.ndarray, pixel_m: float,
                 stats: SceneStatistics | None = None,
                 model: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Probability of roof that each labelled object has in the before date.

    Each object is taken as a segment of the before date, among the ground around it
    in connected pieces, as test 1 of :func:`confirm_new_roofs` takes a region: a new
    building's footprint was ground, trees or earth, not a roof. Like that test, an
    object's answer depends only on the box of :data:`CONFIRM_MARGIN_M` around it
    (and on the scene-wide statistics).

    Parameters
    ----------
    before, after : Scene
        One grid; ``after`` registered. The after date's valid pixels limit the
        before date's, and both dates give the statistics when ``stats`` lacks them.
    labels : (H, W) ndarray of int
        0 background, 1..n.
    pixel_m : float
    stats : SceneStatistics, optional
        As in :func:`confirm_new_roofs` (measured when absent, and added).
    model : dict, optional
        The appearance trees (the shipped ones by default).

    Returns
    -------
    (n + 1,) ndarray of float64
        Entry k for object k; 0 for entry 0 and for an object with no pixel valid in
        both dates.
    """
    n = int(labels.max()) if labels.size else 0
    out = np.zeros(n + 1)
    if n == 0:
        return out
    model = model if model is not None else load_appearance_model()
    before, after, valid, stats = _on_common_pixels(before, after, pixel_m, stats)
    segments = _with_ground_pieces(labels, n, valid)
    for k, rows_cols in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if rows_cols is not None:
            out[k] = _before_date_on_box(before, labels, k, rows_cols, segments, valid,
                                         pixel_m, model, stats)[2]
    return out


def roof_share_before(before: Scene, after: Scene, labels: np.ndarray, pixel_m: float,
                      stats: SceneStatistics | None = None,
                      model: dict[str, np.ndarray] | None = None,
                      only: np.ndarray | None = None, level: float = 0.5) -> np.ndarray:
    """Share of each labelled object that lay on roofs in the before date.

    The before date is segmented on the box of :data:`CONFIRM_MARGIN_M` around the
    object, and the segments under the object are judged by the appearance trees.
    Unlike :func:`roofs_before`, which takes the object itself as the segment, this
    sees an old roof that the object only partly covers: a demolition's remains are
    found over part of the house pulled down, and their outline need not follow its
    walls. A new house on a lawn, a drive or a yard lies on none. An object's answer
    depends only on the pixels of its box (and on the scene-wide statistics).

    Parameters
    ----------
    before, after : Scene
        One grid; ``after`` registered (its valid pixels limit the before date's).
    labels : (H, W) ndarray of int
        0 background, 1..n.
    pixel_m : float
    stats, model :
        As in :func:`confirm_new_roofs`.
    only : (n + 1,) ndarray of bool, optional
        Measure these objects only (the others stay 0).
    level : float
        Probability of roof a segment of the before date needs.

    Returns
    -------
    (n + 1,) ndarray of float64
        Entry k: the share of object k's pixels valid in both dates that lie on such
        segments; 0 for entry 0, for an object not measured and for one with no such
        pixel.
    """
    n = int(labels.max()) if labels.size else 0
    out = np.zeros(n + 1)
    if n == 0 or (only is not None and not np.asarray(only, bool)[1:].any()):
        return out
    model = model if model is not None else load_appearance_model()
    before, after, valid, stats = _on_common_pixels(before, after, pixel_m, stats)
    for k, found in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if found is None or (only is not None and not only[k]):
            continue
        r0, c0, r1, c1 = _margin_box(found, pixel_m, labels.shape)
        own = (labels[r0:r1, c0:c1] == k) & valid[r0:r1, c0:c1]
        if not own.any():
            continue
        before_box = crop_scene(before, r0, c0, r1 - r0, c1 - c0)
        segments, m = date_segments(before_box, pixel_m, stats, "before")
        under = np.zeros(m + 1, bool)
        under[segments[own]] = True
        under[0] = False
        _, p_before = roof_probability(before_box, pixel_m, model, stats, "before",
                                       segments, under)
        out[k] = float((p_before[segments[own]] >= level).mean())
    return out


def _margin_box(found: tuple[slice, slice], pixel_m: float, shape: tuple[int, int]
                ) -> tuple[int, int, int, int]:
    """Rows and columns (r0, c0, r1, c1) of an object's bounding box grown by
    :data:`CONFIRM_MARGIN_M`, within an array of ``shape``."""
    margin = int(np.ceil(CONFIRM_MARGIN_M / pixel_m))
    rows, cols = found
    return (max(rows.start - margin, 0), max(cols.start - margin, 0),
            min(rows.stop + margin, shape[0]), min(cols.stop + margin, shape[1]))


def _on_common_pixels(before: Scene, after: Scene, pixel_m: float,
                      stats: SceneStatistics | None
                      ) -> tuple[Scene, Scene, np.ndarray, SceneStatistics]:
    """Both dates restricted to the pixels valid in both, their common valid mask, and
    ``stats`` holding the appearance statistics (measured there when absent)."""
    stats = stats if stats is not None else SceneStatistics()
    valid = before.valid & after.valid
    before, after = replace(before, valid=valid), replace(after, valid=valid)
    # As the windowed first pass and the appearance detector measure them: on the
    # pixels valid in both dates.
    if "appearance_median_gradient_after" not in stats.values:
        appearance_statistics(before, after, pixel_m, stats)
    return before, after, valid, stats


def _with_ground_pieces(labels: np.ndarray, n: int, valid: np.ndarray) -> np.ndarray:
    """Segments of a date: the objects 1..n as they are, the valid ground between them
    in connected pieces (n + 1 on), 0 off the valid pixels."""
    ground, _ = ndimage.label(valid & (labels == 0))
    return np.where(valid & (labels > 0), labels, np.where(ground > 0, ground + n, 0))


def _before_date_on_box(before: Scene, labels: np.ndarray, k: int,
                        rows_cols: tuple[slice, slice], segments: np.ndarray,
                        valid: np.ndarray, pixel_m: float, model: dict[str, np.ndarray],
                        stats: SceneStatistics
                        ) -> tuple[tuple[slice, slice], np.ndarray, float]:
    """Object ``k`` (bounding box ``rows_cols``) judged in the before date on its box
    and :data:`CONFIRM_MARGIN_M` around it.

    Returns
    -------
    box : (slice, slice)
        The box with its margin, within the array.
    own : (h, w) ndarray of bool
        The object's pixels valid in both dates, on the box.
    probability : float
        Its probability of roof in the before date; 0 when ``own`` is empty.
    """
    r0, c0, r1, c1 = _margin_box(rows_cols, pixel_m, labels.shape)
    box = (slice(r0, r1), slice(c0, c1))
    own = (labels[box] == k) & valid[box]
    if not own.any():
        return box, own, 0.0
    box_segments, n_box = relabel(segments[box])
    # Only the object is described (its row is the one it has among all).
    segment = box_segments[own][0]
    only = np.zeros(n_box + 1, bool)
    only[segment] = True
    p_before = roof_probability(crop_scene(before, r0, c0, r1 - r0, c1 - c0), pixel_m,
                                model, stats, "before", box_segments, only)[1]
    return box, own, float(p_before[segment])


def appearance_statistics(before: Scene, after: Scene, pixel_m: float,
                          stats: SceneStatistics) -> None:
    """Measure on a pair (a sample chip of a larger scene) the statistics the appearance
    features take from the whole scene, into ``stats``."""
    for date, scene in (("before", before), ("after", after)):
        valid = scene.valid
        rgb = visible_bands(scene)
        _stretch(rgb, valid, stats, date)
        bright, gradient = _brightness_and_gradient(rgb, valid, pixel_m)
        _median_bright(bright, valid, stats, date)
        _median_gradient(gradient, valid, stats, date)
