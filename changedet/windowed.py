"""Detection of whole scenes in windows: bounded memory, both cores, or a dask cluster.

A scene too large to hold in memory is cut into core windows that tile it, each read
with a halo (:func:`plan_windows`). Everything the evidence compares against the scene
(radiometric fit, noise, medians, the threshold, the co-registration shift) is measured
first on sample chips spread over the scene (:func:`first_pass`) and given to every
window, so that a window is judged exactly as the whole scene would be. The
whole-scene path measures them on the same chips
(:func:`changedet.coregister.register_on_chips`,
:func:`changedet.change.scene_statistics`).

What makes a building depends on its neighbourhood: its candidate regions, their
colour outline, the shadow beside them. The unit that must be seen whole is therefore
the *group*: candidate regions joined within the reach of the region features. A
window trusts the pixels at least ``margin`` away from its edges (where every filter
saw the same pixels as on the whole scene); a group lying in that trusted part is
*complete* and comes out exactly as from the whole scene. Each complete group belongs
to the one window whose core holds its first pixel (raster order), so nothing is
reported twice. A group that reaches into a window's untrusted rim, and may hold a
roof, is detected again in a window grown around it (:func:`run_windows`): at most
three rounds, the last window-sized, so that memory stays bounded by the window size.
A group still cut then is reported as seen; of the several views last retries give of
one of its buildings, the one farthest from its window's rim is kept, and is the one
``change.tif`` draws (:func:`_best_views`).

Each window is a plain function of picklable inputs (:func:`detect_window`): threads
run them locally, and a dask.distributed cluster runs them as tasks, reading the
inputs by path or URL on the workers.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from scipy import ndimage

from ._log import RunThreadPool, logger, recorded_warnings, warn_analyst
from .aoi import keep_labels_in_aoi
from .change import (CHIP_PX, DetectionParams, SceneStatistics, building_scores,
                     chip_statistics, detect_new_buildings, statistics_chips)
from .coregister import COREG_CHIP_PX
from .errors import ProcessingError
from .morphology import dilate_disk
from .outputs import describe_change_band
from .radiometry import (STRUCTURE_MAPS, RadiometricFit, fit_patches, fit_radiometry,
                         structure_aligned, structure_box, structure_maps)
from .raster import (Grid, OpenDatasets, Scene, check_not_blank, correction_on_window,
                     crop_scene, identical_scenes_error, read_region, same_pixels,
                     sample_chips, valid_box)
from .vectorize import labels_at_edge

#: Core window side in pixels, by default.
DEFAULT_WINDOW_PX = 1024
#: Pixels kept around the data found valid in both scenes before co-registration,
#: which moves the after scene by up to about a tenth of the chip it measures on
#: (the reach of its coarse search).
VALID_CROP_PAD_PX = COREG_CHIP_PX // 8
#: Cut groups are retried when a region in them reaches this fraction of the
#: classifier's cut (a generous margin: a region's probability moves a little when
#: more of its group is seen).
RETRY_PROBABILITY = 0.4
#: Longest side of the display images of a windowed run.
QUICKLOOK_PX = 2048
#: When fewer than this share of the fit's strips hold data in both scenes, the grid
#: is scanned for where they do and cropped to it (a scene clipped to a polygon but
#: kept at its full extent): the central co-registration chip and the sample chips
#: would otherwise fall on nodata.
SPARSE_VALID_SHARE = 0.25


@dataclass(frozen=True)
class Window:
    """A core window of the analysis grid and the padded window read around it.

    All in pixels of the analysis grid: rows ``row0:row1`` and columns
    ``col0:col1`` (end-exclusive) for the core, ``pad_*`` for the padded window.
    """

    row0: int
    col0: int
    row1: int
    col1: int
    pad_row0: int
    pad_col0: int
    pad_row1: int
    pad_col1: int

    @property
    def pad_shape(self) -> tuple[int, int]:
        return (self.pad_row1 - self.pad_row0, self.pad_col1 - self.pad_col0)


def plan_windows(shape: tuple[int, int], window_px: int, halo_px: int) -> list[Window]:
    """Core windows that tile a grid, each padded by ``halo_px`` (clipped to the grid).

    Parameters
    ----------
    shape : (int, int)
        ``(height, width)`` of the analysis grid.
    window_px : int
        Largest core side; cores are made equal in size along each axis.
    halo_px : int
        Pixels read beyond each side of a core.
    """
    h, w = shape
    ny, nx = math.ceil(h / window_px), math.ceil(w / window_px)
    rows = np.linspace(0, h, ny + 1).round().astype(int)
    cols = np.linspace(0, w, nx + 1).round().astype(int)
    return [padded(int(r0), int(c0), int(r1), int(c1), shape, halo_px)
            for r0, r1 in zip(rows[:-1], rows[1:]) for c0, c1 in zip(cols[:-1], cols[1:])]


def padded(row0: int, col0: int, row1: int, col1: int, shape: tuple[int, int],
           halo_px: int) -> Window:
    """The window with core ``row0:row1, col0:col1`` and a halo clipped to ``shape``."""
    return Window(row0, col0, row1, col1, max(0, row0 - halo_px), max(0, col0 - halo_px),
                  min(shape[0], row1 + halo_px), min(shape[1], col1 + halo_px))


def context_px(pixel_m: float, params: DetectionParams) -> tuple[int, int]:
    """How far a window's pixels depend on their surroundings, in pixels.

    Returns
    -------
    margin : int
        Width of the untrusted rim of a window: the reach of the pixel filters (at
        most eight Gaussian deviations: two stacked blurs of four each) plus that of
        the candidate morphology and of the region features (shadow beside a region,
        the brightest ground within 7.5 m around it), in metres. It also holds the
        box of :data:`~changedet.appearance.CONFIRM_MARGIN_M` around a region or
        building in which the appearance check and the completion of roofs judge it
        (tested for pixels of 0.05 to 5 m).
    group : int
        Radius that joins candidate regions whose features see each other.
    """
    sigma = max(1.0, 0.5 / pixel_m, 0.5 * max(0.7, 1.0 / pixel_m))
    filters = math.ceil(8 * sigma) + 1
    features_m = max(2 * params.min_width_m + 2.0, params.shadow_reach_m + 7.5 + 1.5 + 1.0) + 3.0
    group = math.ceil(max(1.5, 1.5 / pixel_m)) + 1
    return filters + math.ceil(features_m / pixel_m) + group + 2, group


@dataclass
class WindowTask:
    """Everything one window needs; picklable, for threads or dask workers."""

    before: Scene  # header (empty image) of the before scene
    after: Scene  # header of the after scene
    grid: Grid  # the whole analysis grid
    window: Window
    correction: Affine  # co-registration on the analysis grid
    resample_before: bool
    params: DetectionParams  # with the radiometric fit
    statistics: dict[str, float]
    margin_px: int
    group_px: int
    aoi: Any | None = None  # shapely geometry in the grid's CRS
    retry: bool = False
    last_try: bool = False
    # Main-pass windows also send their core's pixels summed over the cells of the
    # display grid (this many pixels a side), so that the report's images need no
    # second read of the scene; 0: none.
    quicklook_factor: int = 0


@dataclass
class FoundBuilding:
    """A new building found in a window, on the analysis grid.

    ``first`` is its first pixel (row, col) in raster order and ``group`` that of its
    group: the keys that make the stitching independent of the windows.
    """

    first: tuple[int, int]
    group: tuple[int, int]
    polygon: shapely.Polygon
    score: float
    row0: int = 0
    col0: int = 0
    mask: np.ndarray | None = field(default=None, repr=False)
    cut: bool = False  # its group was still cut by the largest retry window
    at_edge: bool = False  # it reaches the imagery's edge (vectorize.labels_at_edge)
    # For a cut building: how far (px) it lies from the untrusted rim of the window
    # that saw it. Of several views of one cut building, the farthest is the best.
    rim_px: int = 0
    # Left out as standing before (its outline or roof already in the before date):
    # reported apart, never drawn in change.tif.
    standing_before: bool = False


@dataclass
class WindowResult:
    """What a window sends back: its buildings, its core of ``change.tif`` and the
    bounding boxes ``(row0, col0, row1, col1)`` of the groups it could not finish."""

    window: Window
    buildings: list[FoundBuilding]
    change_block: np.ndarray | None
    incomplete: list[tuple[int, int, int, int]]
    quicklook: CellSums | None = None
    # Buildings of groups this window saw whole but does not own (their first pixel
    # lies in another window's core): used only if no window reports their group.
    spares: list[FoundBuilding] = field(default_factory=list)
    # What :func:`detect_window` warned about, in order.
    warnings: list[str] = field(default_factory=list)


@dataclass
class CellSums:
    """Pixel sums of both dates over the cells of a coarser grid that a block covers.

    Cell ``(i, j)`` of the coarse grid covers rows ``i*f:(i+1)*f`` and columns
    ``j*f:(j+1)*f`` of the fine one; a block's first and last cells may be partly
    outside it (their other pixels belong to neighbouring blocks).
    """

    row0: int  # first cell row
    col0: int  # first cell column
    sums: np.ndarray  # (2, B, h, w) float32: before, after; valid pixels only
    counts: np.ndarray  # (2, h, w) int32: valid pixels in each cell


def cell_sums(images: Sequence[np.ndarray], valids: Sequence[np.ndarray], row0: int,
              col0: int, factor: int) -> CellSums:
    """Sum the valid pixels of a block over the cells of a grid ``factor`` times coarser.

    Parameters
    ----------
    images : sequence of (B, H, W) ndarray
        One per date, the block at rows ``row0:row0+H`` and columns ``col0:col0+W``
        of the fine grid.
    valids : sequence of (H, W) ndarray of bool
    row0, col0 : int
        The block's origin on the fine grid.
    factor : int
        Fine pixels per cell side.
    """
    nb, h, w = images[0].shape
    r_off, c_off = row0 % factor, col0 % factor
    nr, nc = -(-(r_off + h) // factor), -(-(c_off + w) // factor)
    sums = np.empty((len(images), nb, nr, nc), np.float32)
    counts = np.empty((len(images), nr, nc), np.int32)
    for k, (image, valid) in enumerate(zip(images, valids)):
        # Aligned on the cells by zero padding, the valid mask as one more layer.
        layers = np.zeros((nb + 1, nr * factor, nc * factor), np.float32)
        np.copyto(layers[:nb, r_off:r_off + h, c_off:c_off + w], image, where=valid)
        layers[nb, r_off:r_off + h, c_off:c_off + w] = valid
        cells = _cell_totals(layers, factor)
        sums[k], counts[k] = cells[:nb], cells[nb]
    return CellSums(row0 // factor, col0 // factor, sums, counts)


def _cell_totals(layers: np.ndarray, factor: int) -> np.ndarray:
    """``(L, R*f, C*f)`` -> ``(L, R, C)``: the sum over each ``f`` x ``f`` cell.

    Strided slices added row offset by row offset, then column by column: a
    reduction over a reshaped axis of length ``f`` is several times slower.
    """
    if factor == 1:
        return layers
    rows = layers[:, 0::factor].copy()
    for i in range(1, factor):
        rows += layers[:, i::factor]
    out = rows[:, :, 0::factor].copy()
    for j in range(1, factor):
        out += rows[:, :, j::factor]
    return out


class CellMeans:
    """Collects :class:`CellSums` of blocks tiling a grid into per-cell means.

    Parameters
    ----------
    shape : (int, int)
        The coarse grid's ``(height, width)``.
    n_bands : int
    """

    def __init__(self, shape: tuple[int, int], n_bands: int):
        self.sums = np.zeros((2, n_bands) + tuple(shape), np.float32)
        self.counts = np.zeros((2,) + tuple(shape), np.int32)

    def add(self, part: CellSums) -> None:
        _, _, h, w = part.sums.shape
        rows, cols = slice(part.row0, part.row0 + h), slice(part.col0, part.col0 + w)
        self.sums[:, :, rows, cols] += part.sums
        self.counts[:, rows, cols] += part.counts

    def date(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean of the valid pixels of date ``k`` (0 before, 1 after) in each cell,
        ``(B, h, w)`` float32 (0 where none), and where there was one, ``(h, w)`` bool."""
        n = self.counts[k]
        return (self.sums[k] / np.maximum(n, 1)).astype(np.float32), n > 0


def read_pair(task_before: Scene, task_after: Scene, grid: Grid, correction: Affine,
              resample_before: bool, datasets: OpenDatasets | None = None
              ) -> tuple[Scene, Scene]:
    """Both scenes on a window ``grid`` of the analysis grid.

    ``correction`` is the co-registration in the window's own pixels (see
    :func:`changedet.raster.correction_on_window`); ``datasets``, files kept open for many reads.
    """
    before = read_region(task_before, grid, resample=resample_before, datasets=datasets)
    after = read_region(task_after, grid, correction=correction, datasets=datasets)
    # The after scene is zero wherever the before scene is not valid, as on the
    # whole-scene path: the evidence filters see the same pixels near nodata.
    after.image[:, ~before.valid] = 0.0
    return before, after


def detect_window(task: WindowTask) -> WindowResult:
    """Detect the new buildings of one window and keep those it is responsible for.

    A main-pass window reports the complete groups whose first pixel lies in its core;
    a retry window reports every complete group touching its core (with pixel masks,
    for ``change.tif``), the caller dropping those already reported. What the window
    warned about travels with its result (a dask worker's log is not the analyst's).
    """
    with recorded_warnings() as warned:
        result = _detect_window(task)
    result.warnings = list(warned)
    return result


def _detect_window(task: WindowTask) -> WindowResult:
    """:func:`detect_window`, but for its warnings."""
    w = task.window
    ph, pw = w.pad_shape
    pad_grid = task.grid.window(w.pad_row0, w.pad_col0, ph, pw)
    correction = correction_on_window(task.correction, w.pad_row0, w.pad_col0)
    before, after = read_pair(task.before, task.after, pad_grid, correction, task.resample_before)
    valid = before.valid & after.valid
    core = (slice(w.row0 - w.pad_row0, w.row1 - w.pad_row0),
            slice(w.col0 - w.pad_col0, w.col1 - w.pad_col0))
    look = None
    if task.quicklook_factor and not task.retry:
        # Both dates are shown on their common valid pixels, as on the whole-scene path.
        look = cell_sums([before.image[(slice(None),) + core], after.image[(slice(None),) + core]],
                         [valid[core], valid[core]], w.row0, w.col0, task.quicklook_factor)
    aoi_mask = None
    if task.aoi is not None:
        aoi_mask = rasterio.features.geometry_mask(
            [shapely.geometry.mapping(task.aoi)], out_shape=(ph, pw),
            transform=pad_grid.transform, invert=True)
    block = np.where(valid[core] if aoi_mask is None else (valid & aoi_mask)[core],
                     np.uint8(0), np.uint8(255))
    if valid.sum() < 100:
        return WindowResult(w, [], None if task.retry else block, [], look)
    labels, evidence = detect_new_buildings(before, after, task.params,
                                            SceneStatistics(task.statistics))
    standing = evidence.standing_before
    if aoi_mask is not None:
        labels = keep_labels_in_aoi(labels, aoi_mask)
        if standing is not None:
            standing = keep_labels_in_aoi(standing, aoi_mask)
    support = labels > 0
    if evidence.regions is not None:
        support |= evidence.regions > 0
    groups, n_groups = ndimage.label(dilate_disk(support, task.group_px))
    if n_groups == 0:
        return WindowResult(w, [], None if task.retry else block, [], look)
    # The untrusted rim: within margin of a window edge that is not the grid's edge.
    m = task.margin_px
    rim = np.zeros((ph, pw), bool)
    if w.pad_row0 > 0:
        rim[:m] = True
    if w.pad_col0 > 0:
        rim[:, :m] = True
    if w.pad_row1 < task.grid.height:
        rim[ph - m:] = True
    if w.pad_col1 < task.grid.width:
        rim[:, pw - m:] = True
    complete = np.ones(n_groups + 1, bool)
    complete[np.unique(groups[rim])] = False
    complete[0] = False
    in_core = np.zeros(n_groups + 1, bool)
    in_core[np.unique(groups[core])] = True
    in_core[0] = False
    first = _first_pixels(groups, n_groups)
    g_row, g_col = first // pw + w.pad_row0, first % pw + w.pad_col0
    owned = complete & in_core
    if not task.retry:
        owned &= ((g_row >= w.row0) & (g_row < w.row1) & (g_col >= w.col0) & (g_col < w.col1))
    elif task.last_try:
        # The largest retry allowed still cuts the group: report it as seen.
        owned |= in_core & ~complete
    # Only cut groups that may hold a roof are worth a retry: a group whose regions
    # are all far below the classifier's cut (earth, roads, lawns) yields no building
    # however much of it is seen.
    plausible = np.zeros(n_groups + 1, bool)
    if evidence.region_probability is not None:
        plausible[1:] = (_label_max(evidence.region_probability, groups, n_groups)[1:]
                         >= RETRY_PROBABILITY * task.params.region_probability)
    else:
        plausible[:] = True
    incomplete = []
    for gid, sl in enumerate(ndimage.find_objects(groups), start=1):
        if sl is not None and in_core[gid] and not complete[gid] and plausible[gid]:
            incomplete.append((sl[0].start + w.pad_row0, sl[1].start + w.pad_col0,
                               sl[0].stop + w.pad_row0, sl[1].stop + w.pad_col0))
    found: list[FoundBuilding] = []
    spares: list[FoundBuilding] = []
    # The owner of a group may see it cut by its rim and, judging the strip it sees
    # implausible, not retry it, while this window saw it whole: such groups come
    # back as spares (main pass only; a retry owns every complete group it sees).
    spare = complete & ~owned if not task.retry else np.zeros_like(owned)
    # Sides of the window that are the grid's: the imagery's edge there.
    sides = (w.pad_row0 == 0, w.pad_col0 == 0, w.pad_row1 == task.grid.height,
             w.pad_col1 == task.grid.width)
    if labels.any():
        lab_group = _label_groups(labels, groups)
        # change.tif: the buildings of every complete group are exact here; those of
        # unfinished groups come from their retry.
        shown = complete[lab_group]
        shown[0] = False
        block[shown[labels][core] & (block == 0)] = 1
        at_edge = labels_at_edge(labels, valid, sides)
        found = _owned_buildings(labels, lab_group, owned, complete, first, evidence,
                                 pad_grid, w, task.grid.shape, with_masks=task.retry,
                                 at_edge=at_edge)
        # With masks: a spare that is used is drawn where its owner did not draw it.
        spares = _owned_buildings(labels, lab_group, spare, complete, first, evidence,
                                  pad_grid, w, task.grid.shape, with_masks=True,
                                  at_edge=at_edge)
    if standing is not None and standing.any():
        # Left out as standing before: reported as new buildings are, but without
        # masks, since change.tif never shows them.
        standing_groups = _label_groups(standing, groups)
        for keep, out in ((owned, found), (spare, spares)):
            for b in _owned_buildings(standing, standing_groups, keep, complete, first,
                                      evidence, pad_grid, w, task.grid.shape,
                                      with_masks=False):
                b.standing_before = True
                out.append(b)
    return WindowResult(w, found, None if task.retry else block, incomplete, look, spares)


def _label_groups(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The group of each label (entry 0 is 0): every labelled object lies in one group,
    since the groups grow from the regions and labels."""
    lab_group = np.maximum(_label_max(groups, labels, int(labels.max())), 0).astype(np.int64)
    lab_group[0] = 0
    return lab_group


def _owned_buildings(labels: np.ndarray, lab_group: np.ndarray, owned: np.ndarray,
                     complete: np.ndarray, group_first: np.ndarray, evidence: Any,
                     grid: Grid, w: Window, grid_shape: tuple[int, int],
                     with_masks: bool, at_edge: np.ndarray | None = None
                     ) -> list[FoundBuilding]:
    """The labelled objects of the groups this window owns, as FoundBuilding records,
    each marked ``cut`` (with its ``rim_px``) when its group was not seen whole.

    ``grid`` is the window's padded grid and ``grid_shape`` the whole grid's shape;
    ``at_edge`` (one entry per label, :func:`changedet.vectorize.labels_at_edge`)
    marks the records ``at_edge``.
    """
    keep = owned[lab_group]
    keep[0] = False
    if not keep.any():
        return []
    found = _buildings(np.where(keep[labels], labels, 0), keep, lab_group, group_first,
                       evidence, grid, w, with_masks=with_masks)
    for b, lab, box in found:
        b.cut = not complete[lab_group[lab]]
        b.at_edge = at_edge is not None and bool(at_edge[lab])
        if b.cut:
            b.rim_px = _rim_distance(box, w, grid_shape)
    return [b for b, _, _ in found]


def _rim_distance(sl: tuple[slice, slice], w: Window, grid_shape: tuple[int, int]) -> int:
    """Pixels between a bounding box ``sl`` (in the padded window ``w``) and the
    nearest edge of ``w`` that is not an edge of the grid (a large number if none)."""
    ph, pw = w.pad_shape
    gaps = [1 << 30]
    if w.pad_row0 > 0:
        gaps.append(sl[0].start)
    if w.pad_col0 > 0:
        gaps.append(sl[1].start)
    if w.pad_row1 < grid_shape[0]:
        gaps.append(ph - sl[0].stop)
    if w.pad_col1 < grid_shape[1]:
        gaps.append(pw - sl[1].stop)
    return int(min(gaps))


def _first_pixels(labels: np.ndarray, n: int) -> np.ndarray:
    """Flat index of each label's first pixel in raster order.

    Returns
    -------
    (n + 1,) ndarray of int64
        Entry ``k`` for label ``k`` (``labels.size`` for an absent label or 0).
    """
    flat = labels.ravel()
    at = np.flatnonzero(flat)
    out = np.full(n + 1, flat.size, np.int64)
    # ufunc.at, not ndimage.minimum: the latter sorts every pixel by label.
    np.minimum.at(out, flat[at], at)
    return out


def _label_max(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Largest of ``values`` (H, W) over each label of ``labels`` (H, W), 0..n.

    Returns
    -------
    (n + 1,) ndarray of ``values.dtype``
        Entry ``k`` for label ``k``; the dtype's lowest value for an absent label.
        Entry 0 is not measured.
    """
    flat = labels.ravel()
    at = np.flatnonzero(flat)
    low = (np.finfo(values.dtype).min if np.issubdtype(values.dtype, np.floating)
           else np.iinfo(values.dtype).min)
    out = np.full(n + 1, low, values.dtype)
    np.maximum.at(out, flat[at], values.ravel()[at])
    return out


def _buildings(labels: np.ndarray, keep: np.ndarray, lab_group: np.ndarray,
               group_first: np.ndarray, evidence: Any, grid: Grid, w: Window,
               with_masks: bool) -> list[tuple[FoundBuilding, int, tuple[slice, slice]]]:
    """The kept labels as FoundBuilding records (polygons on the analysis grid's CRS),
    each with its label and its bounding box in the padded window."""
    from .vectorize import polygons_from_labels

    ph, pw = labels.shape
    ids = np.flatnonzero(keep)
    firsts = dict(zip(ids.tolist(), _first_pixels(labels, int(labels.max()))[ids]))
    scores = dict(zip(ids.tolist(), building_scores(labels, evidence, ids).tolist()))
    slices = ndimage.find_objects(labels)
    out = []
    for lab, poly in polygons_from_labels(labels, grid):
        f = int(firsts[lab])
        g = int(group_first[lab_group[lab]])
        rec = FoundBuilding((f // pw + w.pad_row0, f % pw + w.pad_col0),
                            (g // pw + w.pad_row0, g % pw + w.pad_col0), poly, scores[lab])
        sl = slices[lab - 1]
        if with_masks:
            rec.row0, rec.col0 = sl[0].start + w.pad_row0, sl[1].start + w.pad_col0
            rec.mask = labels[sl] == lab
        out.append((rec, lab, sl))
    return out


# --------------------------------------------------------------------------------------
# First pass: registration and scene-wide statistics from sample chips


@dataclass
class FirstPass:
    """Scene-wide quantities measured before the windows run."""

    registration: Any  # changedet.coregister.Registration
    fit: RadiometricFit
    statistics: SceneStatistics
    n_chips: int
    # Pixels valid in both scenes on the fit's strips.
    both_valid_px: int = 0


@dataclass(frozen=True)
class StripSurvey:
    """The fit's strips of a grid as read before co-registration.

    ``both_valid_px`` of their ``strip_px`` pixels are valid in both scenes;
    ``differ`` holds, per strip, whether those pixels differ between the scenes
    (None: the strip has none).
    """

    both_valid_px: int
    strip_px: int
    differ: tuple[bool | None, ...]

    @property
    def sparse(self) -> bool:
        """Fewer than :data:`SPARSE_VALID_SHARE` of the strips' pixels valid in both."""
        return self.both_valid_px < SPARSE_VALID_SHARE * self.strip_px


def _read_unregistered(before: Scene, after: Scene, grid: Grid, resample_before: bool,
                       datasets: OpenDatasets
                       ) -> Callable[[tuple[int, int, int, int]], tuple[Scene, Scene]]:
    def read(box: tuple[int, int, int, int]) -> tuple[Scene, Scene]:
        r0, c0, r1, c1 = box
        return read_pair(before, after, grid.window(r0, c0, r1 - r0, c1 - c0),
                         Affine.identity(), resample_before, datasets)
    return read


def survey_strips(before: Scene, after: Scene, grid: Grid, resample_before: bool,
                  workers: int = 1) -> StripSurvey:
    """Read the fit's strips of ``grid`` (no co-registration): see :class:`StripSurvey`."""
    def survey(box: tuple[int, int, int, int]) -> tuple[int, bool | None]:
        b, a = read(box)
        both = b.valid & a.valid
        return int(both.sum()), (not same_pixels(b, a) if both.any() else None)

    strips = fit_patches(grid.shape)
    with OpenDatasets() as datasets, RunThreadPool(max(1, workers)) as pool:
        read = _read_unregistered(before, after, grid, resample_before, datasets)
        found = list(pool.map(survey, strips))
    return StripSurvey(sum(n for n, _ in found),
                       sum((r1 - r0) * (c1 - c0) for r0, c0, r1, c1 in strips),
                       tuple(d for _, d in found))


@dataclass(frozen=True)
class DataIsland:
    """Where both scenes hold data on a grid, from a scan of all of it.

    ``box`` is ``(row0, col0, row1, col1)`` of the pixels valid in both, padded by
    :data:`VALID_CROP_PAD_PX` and clipped to the grid (None when there is no such
    pixel, or the box is the whole grid); ``before_valid_px`` and ``both_valid_px``
    count the grid's pixels valid in the before scene and in both (before
    co-registration).
    """

    box: tuple[int, int, int, int] | None
    before_valid_px: int
    both_valid_px: int


def data_island(before: Scene, after: Scene, grid: Grid, resample_before: bool,
                workers: int = 1, pad: int = VALID_CROP_PAD_PX) -> DataIsland:
    """Scan ``grid`` chip by chip for where both scenes hold data.

    For a grid whose strips are sparse (:attr:`StripSurvey.sparse`): a scene clipped
    to a polygon but kept at its full extent, where the central co-registration chip
    and the sample chips of the first pass would fall on nodata, and where the strips
    would misjudge how much of the before scene the after scene covers. With
    ``pad=0``, for a grid whose strips meet nodata: the box is then exactly the one
    the whole-scene path crops to (:func:`changedet.raster.align_pair`), so that both
    place their chips alike.
    """
    def scan(chip: tuple[int, int, int, int]) -> tuple[tuple[int, int, int, int] | None,
                                                       int, int]:
        b, a = read(chip)
        both = b.valid & a.valid
        box = valid_box(both)
        if box is not None:
            box = (box[0] + chip[0], box[1] + chip[1], box[2] + chip[0], box[3] + chip[1])
        return box, int(b.valid.sum()), int(both.sum())

    chips = sample_chips(grid.shape, CHIP_PX, grid.shape[0] * grid.shape[1])
    with OpenDatasets() as datasets, RunThreadPool(max(1, workers)) as pool:
        read = _read_unregistered(before, after, grid, resample_before, datasets)
        found = list(pool.map(scan, chips))
    boxes = [box for box, _, _ in found if box is not None]
    before_px = sum(n for _, n, _ in found)
    both_px = sum(n for _, _, n in found)
    if not boxes:
        return DataIsland(None, before_px, both_px)
    box = (max(0, min(b[0] for b in boxes) - pad), max(0, min(b[1] for b in boxes) - pad),
           min(grid.height, max(b[2] for b in boxes) + pad),
           min(grid.width, max(b[3] for b in boxes) + pad))
    return DataIsland(None if box == (0, 0) + grid.shape else box, before_px, both_px)


def first_pass(before: Scene, after: Scene, grid: Grid, method: str,
               resample_before: bool, params: DetectionParams,
               workers: int = 1, survey: StripSurvey | None = None) -> FirstPass:
    """Co-registration, radiometric fit and evidence statistics from sample chips.

    Parameters
    ----------
    before, after : Scene
        Headers (see :func:`changedet.raster.read_header`).
    grid : Grid
        The analysis grid (cropped to the overlap).
    method : {"global", "local", "none"}
        Co-registration, as :func:`changedet.coregister.register_on_chips`
        measures it.
    resample_before : bool
        Whether the before scene must be resampled onto ``grid``.
    params : DetectionParams
    workers : int
        Threads reading and measuring the patches and chips.
    survey : StripSurvey, optional
        The strips of ``grid`` as already read by :func:`survey_strips` (read here
        otherwise).
    """
    from .coregister import METHODS

    if method not in METHODS:
        raise ValueError(f"unknown co-registration method {method!r}; use one of {METHODS}")
    # The strips and chips are read from files kept open: the fit's strips, a few
    # rows each, share the files' compressed blocks.
    with OpenDatasets() as datasets:
        return _first_pass(before, after, grid, method, resample_before, params, workers,
                           datasets, survey)


def _check_not_identical(before: Scene, after: Scene, grid: Grid,
                         read: Callable[[tuple[int, int, int, int]], tuple[Scene, Scene]],
                         survey: StripSurvey) -> None:
    """:func:`changedet.raster.check_not_identical` over the whole grid, as read
    before any co-registration (as the whole-scene path checks it).

    The fit's strips are compared first (``survey``); only when they hold the same
    pixels is the rest of the grid read, tile by tile, until a tile differs.
    """
    def verdict(box: tuple[int, int, int, int]) -> bool | None:
        """True: the tile's common pixels differ; False: the same; None: none."""
        b, a = read(box)
        return not same_pixels(b, a) if (b.valid & a.valid).any() else None

    if any(survey.differ):
        return
    seen_same = False
    for box in sample_chips(grid.shape, CHIP_PX, grid.shape[0] * grid.shape[1]):
        v = verdict(box)
        if v:
            return
        seen_same |= v is False
    if seen_same:
        raise identical_scenes_error(before.path, after.path)


def _first_pass(before: Scene, after: Scene, grid: Grid, method: str,
                resample_before: bool, params: DetectionParams, workers: int,
                datasets: OpenDatasets, survey: StripSurvey | None) -> FirstPass:
    """:func:`first_pass`, reading through ``datasets``."""
    from .coregister import register_on_chips

    def read(box: tuple[int, int, int, int],
             correction: Affine = Affine.identity()) -> tuple[Scene, Scene]:
        """The pair on a box of the grid, with a correction on the grid's pixels."""
        r0, c0, r1, c1 = box
        return read_pair(before, after, grid.window(r0, c0, r1 - r0, c1 - c0),
                         correction_on_window(correction, r0, c0), resample_before, datasets)

    registration = register_on_chips(read, grid.shape, method)
    correction = registration.correction if registration.applied else Affine.identity()
    pixel_m = params.pixel_m(grid)
    params = replace(params, structure_aligned=structure_aligned(registration, pixel_m))

    def read_registered(box: tuple[int, int, int, int]) -> tuple[Scene, Scene]:
        return read(box, correction)

    def read_patch(patch: tuple[int, int, int, int]
                   ) -> tuple[Scene, Scene, np.ndarray | None]:
        """The pair on a fit patch, with its structure maps (read through a box grown
        by their reach, so that they are the whole grid's), when they are compared."""
        if not params.structure_aligned:
            return (*read_registered(patch), None)
        box, rows, cols = structure_box(patch, grid.shape, pixel_m)
        b, a = read_registered(box)
        structure = structure_maps(b.image, a.image, b.valid & a.valid, pixel_m,
                                   (rows, cols))
        height, width = rows.stop - rows.start, cols.stop - cols.start
        return (crop_scene(b, rows.start, cols.start, height, width),
                crop_scene(a, rows.start, cols.start, height, width), structure)

    with RunThreadPool(max(1, workers)) as pool:
        # The fit is measured on the patches a whole-scene run of the same grid fits
        # on, pooled in the same order, so that both normalise with the same fit.
        pooled_b, pooled_a, pooled_s = [], [], []
        both_valid_px = 0
        for b, a, structure in pool.map(read_patch, fit_patches(grid.shape)):
            valid = b.valid & a.valid
            both_valid_px += int(valid.sum())
            pooled_b.append(b.image[:, valid])
            pooled_a.append(a.image[:, valid])
            if structure is not None:
                pooled_s.append(structure[:, valid])
        nb = pooled_b[0].shape[0]
        fit_b, fit_a = np.concatenate(pooled_b, axis=1), np.concatenate(pooled_a, axis=1)
        fit_s = ([np.concatenate(pooled_s, axis=1).reshape(len(STRUCTURE_MAPS), 1, -1)]
                 if pooled_s else None)
        del pooled_a, pooled_b, pooled_s
        # The strips run across the whole grid: a scene blank on all of them is blank.
        everywhere = np.ones((1, fit_b.shape[1]), bool)
        for header, values in ((before, fit_b), (after, fit_a)):
            check_not_blank(replace(header, image=values[:, None, :], valid=everywhere))
        if survey is None:
            survey = survey_strips(before, after, grid, resample_before, workers)
        _check_not_identical(before, after, grid, read, survey)
        fit = fit_radiometry(fit_b.reshape(nb, 1, -1), fit_a.reshape(nb, 1, -1),
                             np.ones((1, fit_b.shape[1]), bool), keep_weight=False,
                             workers=workers, structure=fit_s)
        del fit_a, fit_b, fit_s
        params = replace(params, fit=fit)

        chip_params = replace(params, ground_pixel_m=pixel_m)

        def measure(box: tuple[int, int, int, int]) -> SceneStatistics | None:
            return chip_statistics(*read_registered(box), chip_params)

        parts = [st for st in pool.map(measure, statistics_chips(grid.shape))
                 if st is not None]
    if not parts:
        raise ProcessingError(f"{after.path} and {before.path} share no valid pixels "
                              "in the sample chips")
    stats = SceneStatistics.pooled(parts)
    logger.info("first pass on %d chip(s): threshold %.2f", len(parts), stats.values["threshold"])
    return FirstPass(registration, fit, stats, len(parts), both_valid_px)


# --------------------------------------------------------------------------------------
# Running the windows and stitching


Runner = Callable[[list[WindowTask]], Iterator[WindowResult]]


def thread_runner(workers: int) -> Runner:
    """Run window tasks on a pool of threads (results as they complete)."""
    def run(tasks: list[WindowTask]) -> Iterator[WindowResult]:
        if workers <= 1:
            yield from map(detect_window, tasks)
            return
        from concurrent.futures import FIRST_COMPLETED, wait

        # A few windows in flight at a time, and no reference kept to a result once
        # it is handed on: memory must not grow with the number of windows.
        todo = iter(tasks)
        with RunThreadPool(max_workers=workers) as pool:
            running = {pool.submit(detect_window, t) for t in itertools.islice(todo, 2 * workers)}
            while running:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()
                    del fut
                    nxt = next(todo, None)
                    if nxt is not None:
                        running.add(pool.submit(detect_window, nxt))
                    yield result
                    del result
                del done
    return run


class DaskRunner:
    """Runs window tasks on a dask.distributed cluster (connects at once; ``close()``).

    Raises
    ------
    ProcessingError
        The scheduler cannot be reached.
    """

    def __init__(self, address: str, timeout_s: float = 10.0):
        try:
            from distributed import Client
        except ImportError as exc:
            raise ProcessingError("--dask-scheduler needs the 'distributed' package: "
                                  "pip install 'changedet[dask]'") from exc

        _probe_scheduler(address, timeout_s)
        try:
            self.client = Client(address, timeout=f"{timeout_s}s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ProcessingError(
                f"cannot reach the dask scheduler at {address} ({_first_line(exc)})") from exc
        self.address = address

    def __call__(self, tasks: list[WindowTask]) -> Iterator[WindowResult]:
        from distributed import as_completed

        with self.client.as_current():
            futures = self.client.map(detect_window, tasks, pure=False)
            for fut in as_completed(futures):
                result = fut.result()
                fut.release()
                # Warned on a worker, where neither the analyst's log nor this run's
                # record is: warned again here.
                for text in result.warnings:
                    warn_analyst("%s", text)
                yield result

    def close(self) -> None:
        self.client.close()


def _probe_scheduler(address: str, timeout_s: float) -> None:
    """Raise ProcessingError unless a dask scheduler answers at ``address`` within
    ``timeout_s`` seconds.

    The client's own timeout covers the TCP connection only: a port where another
    service listens (a web server, a proxy) kept it waiting for ever, and a malformed
    address left a half-built client that took 20 s to give up at exit.
    """
    import asyncio

    from distributed.comm import connect

    async def identity() -> object:
        comm = await connect(address, timeout=timeout_s)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    try:
        # On a thread of its own: in a notebook, this thread's event loop is running.
        with ThreadPoolExecutor(1) as pool:
            reply = pool.submit(asyncio.run, asyncio.wait_for(identity(), timeout_s)).result()
    except asyncio.TimeoutError:
        raise ProcessingError(f"cannot reach the dask scheduler at {address} (no answer "
                              f"within {timeout_s:g} s)") from None
    except MemoryError as exc:  # another service's answer read as a frame length
        raise ProcessingError(f"no dask scheduler at {address} (what answers there does "
                              "not speak dask)") from exc
    except Exception as exc:  # noqa: BLE001 - anything else is "not a scheduler"
        raise ProcessingError(f"cannot reach the dask scheduler at {address} "
                              f"({_first_line(exc)})") from exc
    kind = reply.get("type") if isinstance(reply, dict) else type(reply).__name__
    if kind != "Scheduler":
        raise ProcessingError(f"no dask scheduler at {address} (what answers there is "
                              f"{kind!r})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def merge_boxes(boxes: Iterable[tuple[int, int, int, int]],
                max_side: int | None = None) -> list[tuple[int, int, int, int]]:
    """Union overlapping or touching boxes ``(row0, col0, row1, col1)`` until none do.

    With ``max_side``, two boxes are merged only if their union is no wider or
    taller than that (so that retry windows stay as small as main windows).
    """
    out = sorted({tuple(b) for b in boxes})
    merged = True
    while merged:
        merged = False
        result: list[tuple[int, int, int, int]] = []
        for box in out:
            for i, other in enumerate(result):
                union = (min(box[0], other[0]), min(box[1], other[1]),
                         max(box[2], other[2]), max(box[3], other[3]))
                touch = (box[0] <= other[2] and other[0] <= box[2]
                         and box[1] <= other[3] and other[1] <= box[3])
                small = max_side is None or max(union[2] - union[0], union[3] - union[1]) <= max_side
                if touch and small:
                    result[i] = union
                    merged = True
                    break
            else:
                result.append(box)
        out = result
    return sorted(out)


@dataclass
class WindowedDetection:
    """The stitched result of a windowed run."""

    buildings: list[FoundBuilding]
    change_path: str
    n_windows: int
    n_retries: int
    cut_groups: int


#: The share of ``run_windows``' progress taken by the main pass: retries are about a
#: quarter of the windows' work on dense scenes (``bench_scale.py``) and none on most.
MAIN_PASS_SHARE = 0.75


def run_windows(template: WindowTask, windows: list[Window], halo_px: int, runner: Runner,
                change_path: str, max_retry_px: int,
                progress: Callable[[float], None] | None = None,
                quicklook: CellMeans | None = None) -> WindowedDetection:
    """Run every window, retry the groups cut by window edges, write ``change.tif``.

    Parameters
    ----------
    template : WindowTask
        Everything but the window.
    windows : list of Window
        From :func:`plan_windows`.
    halo_px : int
        Halo of the retry windows (larger than the untrusted margin, so that each
        retry sees more of a cut group than the window that cut it).
    runner : callable
        :func:`thread_runner` or a :class:`DaskRunner`.
    change_path : str
        A tiled GeoTIFF to create on the analysis grid (0, 1, 255 nodata).
    max_retry_px : int
        Largest core side of a retry window (the main window size keeps memory
        bounded by it); a group still cut at that size is reported as seen, with a
        warning.
    progress : callable, optional
        Called with the fraction of the work done, 0 to 1: the main pass takes it to
        ``MAIN_PASS_SHARE``, each round of retries half the way from there to 1 (the
        last round all of it), as its windows finish.
    quicklook : CellMeans, optional
        Collects the display images from the main-pass windows (whose template has
        a ``quicklook_factor``).
    """
    grid = template.grid
    profile = {"driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1,
               "dtype": "uint8", "crs": grid.crs, "transform": grid.transform,
               "nodata": 255, "tiled": True, "blockxsize": 256, "blockysize": 256,
               "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    # A cut group's extent beyond what a window saw is unknown: each retry looks a
    # quarter window further where the group went on, and the last allowed one is
    # window-sized, so that a group costs at most MAX_RETRY_ROUNDS windows.
    grow = max(halo_px, max_retry_px // 4)
    found: dict[tuple[int, int], FoundBuilding] = {}
    reported: set[tuple[int, int]] = set()
    # group -> (window, its buildings) of the windows that saw it whole without owning
    # it: the first window in raster order, so that the choice does not depend on
    # which thread finished first (the views agree, their coordinates to the last bit
    # need not).
    spares: dict[tuple[int, int], tuple[tuple[int, int], list[FoundBuilding]]] = {}
    cut_views: list[FoundBuilding] = []
    pending: list[tuple[int, int, int, int]] = []
    with rasterio.open(change_path, "w+", **profile) as dst:
        describe_change_band(dst)
        tasks = [replace(template, window=w) for w in windows]
        for done, res in enumerate(runner(tasks), start=1):
            w = res.window
            dst.write(res.change_block, 1, window=rasterio.windows.Window(
                w.col0, w.row0, w.col1 - w.col0, w.row1 - w.row0))
            for b in res.buildings:
                found[b.first] = b
                reported.add(b.group)
            offered: dict[tuple[int, int], list[FoundBuilding]] = {}
            for b in res.spares:
                offered.setdefault(b.group, []).append(b)
            for group, views in offered.items():
                if group not in spares or (w.row0, w.col0) < spares[group][0]:
                    spares[group] = ((w.row0, w.col0), views)
            if quicklook is not None and res.quicklook is not None:
                quicklook.add(res.quicklook)
            pending.extend(_next_try(box, w, grow, max_retry_px, template.margin_px,
                                     grid.shape) for box in res.incomplete)
            if progress is not None:
                progress(MAIN_PASS_SHARE * done / len(tasks))
        n_retries = cut = 0
        pending = merge_boxes(pending, max_retry_px)
        level = MAIN_PASS_SHARE
        for round_ in range(MAX_RETRY_ROUNDS):
            if not pending:
                break
            # How many rounds follow is unknown: each takes half of what is left.
            span = (1.0 - level) / (1 if round_ == MAX_RETRY_ROUNDS - 1 else 2)
            tasks = []
            for box in pending:
                last = (round_ == MAX_RETRY_ROUNDS - 1
                        or max(box[2] - box[0], box[3] - box[1]) >= max_retry_px)
                box = _capped(box, max_retry_px) if last else box
                tasks.append(replace(template, window=padded(*box, grid.shape, halo_px),
                                     retry=True, last_try=last))
            last_try = {t.window: t.last_try for t in tasks}
            n_retries += len(tasks)
            grown = []
            for done, res in enumerate(runner(tasks), start=1):
                if progress is not None:
                    progress(level + span * done / len(tasks))
                new_groups = {b.group for b in res.buildings if not b.cut} - reported
                for b in res.buildings:
                    if b.cut:
                        # Every view of a still-cut group is kept until all are in:
                        # the best view of each building is chosen, then drawn.
                        cut_views.append(b)
                        continue
                    _paste(dst, b)
                    if b.group in new_groups:
                        found[b.first] = b
                reported |= new_groups
                w = res.window
                if last_try[w]:
                    cut += len(res.incomplete)
                    continue
                grown += [_next_try(box, w, grow, max_retry_px, template.margin_px,
                                    grid.shape) for box in res.incomplete]
            pending = merge_boxes(grown, max_retry_px)
            level += span
        if progress is not None:
            progress(1.0)
        # A group no window reported, though one saw it whole (its owner judged the
        # strip it saw too unlike a roof to retry): that whole view, already drawn in
        # change.tif, is the whole scene's.
        n_spared = 0
        for group, (_, views) in spares.items():
            if group not in reported:
                for b in views:
                    found[b.first] = b
                    _paste(dst, b)
                reported.add(group)
                n_spared += 1
        if n_spared:
            logger.debug("%d group(s) taken from a window that saw them whole but did "
                         "not own them", n_spared)
        buildings = _best_views(list(found.values()), cut_views)
        # change.tif draws the same view of a cut building as its polygon.
        for b in buildings:
            if b.cut:
                _paste(dst, b)
    if cut:
        warn_analyst("%d group(s) of candidate regions exceed the largest retry window "
                     "(%d px) and were measured as cut by it", cut, max_retry_px)
    for b in buildings:
        b.mask = None
    return WindowedDetection(buildings, change_path, len(windows), n_retries, cut)


def _best_views(complete: list[FoundBuilding], cut_views: list[FoundBuilding]
                ) -> list[FoundBuilding]:
    """The buildings of complete groups, and the best view of each building of a
    still-cut group, in raster order of their first pixel.

    Last retries around one oversized group each report its buildings as they saw
    them, under keys of their own. A cut view is kept unless it overlaps a building
    already kept by more than half the smaller of the two; complete buildings come
    first, then the cut views farthest from the rim of the window that saw them (the
    rim is where a window's view of a building departs from the whole scene's).
    """
    complete_polys = [b.polygon for b in complete]
    tree = shapely.STRtree(complete_polys)

    def overlaps(poly: shapely.Polygon, others: Iterable[shapely.Polygon]) -> bool:
        return any(poly.intersection(o).area > 0.5 * min(poly.area, o.area) for o in others)

    kept_cut: list[FoundBuilding] = []
    for b in sorted(cut_views, key=lambda b: (-b.rim_px, b.first, -b.polygon.area)):
        near = [complete_polys[i] for i in tree.query(b.polygon, predicate="intersects")]
        near += [k.polygon for k in kept_cut if k.polygon.intersects(b.polygon)]
        if not overlaps(b.polygon, near):
            kept_cut.append(b)
    return sorted(complete + kept_cut, key=lambda b: b.first)


#: Retry rounds for groups cut by window edges (the last one window-sized).
MAX_RETRY_ROUNDS = 3


def _next_try(seen: tuple[int, int, int, int], window: Window, grow: int, cap: int,
              margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The core box of the next retry of a group a window could not finish.

    The group goes on beyond the sides where what the window saw of it (``seen``,
    ``(row0, col0, row1, col1)``) reaches the window's untrusted rim, and ends on the
    others. The box grows by ``grow`` on the former only, and no further than
    ``cap`` a side: a box grown on every side and then cut back to ``cap`` about its
    centre could leave out the far end of a group that fits in ``cap``.
    """
    def axis(lo: int, hi: int, pad_lo: int, pad_hi: int, size: int) -> tuple[int, int]:
        on_lo = pad_lo > 0 and lo < pad_lo + margin
        on_hi = pad_hi < size and hi > pad_hi - margin
        room = max(0, cap - (hi - lo))
        if on_lo and on_hi:
            room //= 2
        return (max(0, lo - min(grow, room)) if on_lo else lo,
                min(size, hi + min(grow, room)) if on_hi else hi)

    r0, r1 = axis(seen[0], seen[2], window.pad_row0, window.pad_row1, shape[0])
    c0, c1 = axis(seen[1], seen[3], window.pad_col0, window.pad_col1, shape[1])
    return r0, c0, r1, c1


def _capped(box: tuple[int, int, int, int], side: int) -> tuple[int, int, int, int]:
    """At most ``side`` pixels a side, centred on ``box``."""
    r0, c0, r1, c1 = box
    if r1 - r0 > side:
        r0 = (r0 + r1 - side) // 2
        r1 = r0 + side
    if c1 - c0 > side:
        c0 = (c0 + c1 - side) // 2
        c1 = c0 + side
    return r0, c0, r1, c1


def _paste(dst: Any, b: FoundBuilding) -> None:
    """Mark a building's pixels in the open ``change.tif``."""
    if b.mask is None:
        return
    h, w = b.mask.shape
    win = rasterio.windows.Window(b.col0, b.row0, w, h)
    block = dst.read(1, window=win)
    block[b.mask & (block == 0)] = 1  # nodata and outside the AOI stay 255
    dst.write(block, 1, window=win)


class ScratchFolder:
    """A temporary folder, removed when this object is garbage-collected or at exit."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="changedet-")
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def cleanup(self) -> None:
        """Remove the folder now."""
        self._finalizer()


def temporary_change_path() -> tuple[ScratchFolder, str]:
    """A scratch folder (removed with the returned object) and a change.tif path in it."""
    scratch = ScratchFolder()
    return scratch, os.path.join(scratch.path, "change.tif")
