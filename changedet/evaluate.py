"""Scoring detected buildings against truth.

Object scores follow the SpaceNet rule: a prediction and a truth building match when
their intersection over union is at least 0.5, each one matched at most once, pairs
taken greedily from the highest IoU down. Pixel scores compare the union of the
predictions with the union of the truth, either on a raster grid (rasterised at pixel
centres) or, when both sides are polygons and no grid is given, as exact areas.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import numpy as np
import rasterio.features
import shapely
import shapely.geometry
from scipy import ndimage
from shapely.geometry import Polygon

from .errors import ProcessingError
from .measure import measured_where_true, metric_crs, polygonal, reproject_geoms
from .raster import Grid
from .vectorize import polygons_from_labels

#: The SpaceNet matching threshold.
IOU_THRESHOLD = 0.5

Objects = Union[np.ndarray, Sequence[Any]]


def _objects(
    data: Objects, grid: Grid | None, name: str
) -> tuple[list[Any], list[shapely.Geometry], np.ndarray | None]:
    """Ids, polygons and (if given as a raster) the (H, W) bool mask of one side.

    A raster with one non-zero value (0/1, bool, or 0/255 as LEVIR-CD's masks) is a
    mask: its 4-connected components are the objects. Any other integer raster is a
    label image: one object per value.
    """
    if isinstance(data, np.ndarray) and data.ndim != 2:
        raise ValueError(f"{name} raster must be 2-D (H, W), got shape {data.shape}")
    if isinstance(data, np.ndarray):
        if grid is None:
            raise ValueError(f"{name} is a raster: a grid is needed to evaluate it")
        if data.shape != grid.shape:
            raise ValueError(
                f"{name} raster has shape {data.shape}, the grid {grid.shape}")
        mask = data > 0
        values = data[mask]
        if data.dtype == bool or values.size == 0 or values.min() == values.max():
            labels, _ = ndimage.label(mask)
        else:
            labels = np.where(mask, data, 0)
        pairs = polygons_from_labels(labels, grid, simplify_px=0.0, regularise=False)
        # A label in several parts is one object: merge its parts back.
        merged: dict[int, list[Polygon]] = {}
        for value, poly in pairs:
            merged.setdefault(value, []).append(poly)
        ids = sorted(merged)
        geoms = [shapely.union_all(merged[v]) if len(merged[v]) > 1 else merged[v][0]
                 for v in ids]
        return list(ids), geoms, mask
    ids: list[Any] = []
    geoms: list[shapely.Geometry] = []
    for k, item in enumerate(data):
        if isinstance(item, tuple) and len(item) == 2:
            ids.append(item[0])
            geoms.append(item[1])
        else:
            ids.append(k)
            geoms.append(item)
    keep = [i for i, g in enumerate(geoms) if g is not None and not g.is_empty]
    geoms = [shapely.make_valid(geoms[i]) for i in keep]
    return [ids[i] for i in keep], geoms, None


def match_objects(
    pred: Sequence[shapely.Geometry],
    truth: Sequence[shapely.Geometry],
    iou_threshold: float = IOU_THRESHOLD,
) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(pred_index, truth_index, iou)`` with IoU >= threshold.

    Candidate pairs come from an STRtree of the truth; they are accepted greedily by
    descending IoU (ties by index, so the result is deterministic).
    """
    if not len(pred) or not len(truth):
        return []
    tree = shapely.STRtree(np.asarray(truth, dtype=object))
    p_idx, t_idx = tree.query(np.asarray(pred, dtype=object), predicate="intersects")
    pairs = []
    for p, t in zip(p_idx.tolist(), t_idx.tolist()):
        inter = pred[p].intersection(truth[t]).area
        union = pred[p].area + truth[t].area - inter
        iou = inter / union if union > 0 else 0.0
        # (A polygon's overlay with itself gives 0.9999999999999997: at --iou 1.0 it
        # must still match.)
        if iou >= iou_threshold - 1e-9:
            pairs.append((-iou, p, t))
    pairs.sort()
    used_p: set[int] = set()
    used_t: set[int] = set()
    matches = []
    for neg_iou, p, t in pairs:
        if p in used_p or t in used_t:
            continue
        used_p.add(p)
        used_t.add(t)
        matches.append((p, t, -neg_iou))
    return matches


def _round(x: float, digits: int) -> float:
    """Rounded, with -0.0 written as 0.0 (outputs are compared as text)."""
    return round(float(x), digits) + 0.0


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def _f1(precision: float, recall: float) -> float:
    return _ratio(2 * precision * recall, precision + recall)


def _rasterise(geoms: Sequence[shapely.Geometry], grid: Grid) -> np.ndarray:
    if not geoms:
        return np.zeros(grid.shape, dtype=bool)
    out = rasterio.features.rasterize(
        [(g, 1) for g in geoms], out_shape=grid.shape, transform=grid.transform,
        fill=0, dtype="uint8")
    return out.astype(bool)


def _mostly_valid(geoms: Sequence[shapely.Geometry], grid: Grid,
                  valid: np.ndarray) -> list[int]:
    """Indices of the objects with at least half of their pixels valid.

    An object's pixels beyond the grid count as not valid, as nodata does: a building
    cut by the edge of the raster was not seen whole. Objects too small to hold a
    pixel centre are kept.
    """
    if not geoms:
        return []
    extent = shapely.box(*grid.bounds)
    labels = rasterio.features.rasterize(
        [(g, i + 1) for i, g in enumerate(geoms)], out_shape=grid.shape,
        transform=grid.transform, fill=0, dtype="int32")
    index = np.arange(1, len(geoms) + 1)
    counts = ndimage.sum_labels(np.ones(grid.shape), labels, index)
    good = ndimage.sum_labels(np.asarray(valid, bool), labels, index)
    beyond = shapely.area(shapely.difference(np.asarray(geoms, dtype=object), extent))
    counts = counts + beyond / grid.pixel_area
    return [i for i in range(len(geoms))
            if (counts[i] == 0 and extent.intersects(geoms[i])) or
            (counts[i] > 0 and good[i] >= 0.5 * counts[i])]


def _seen_area(valid: np.ndarray, grid: Grid) -> shapely.Geometry:
    """The valid pixels of ``grid`` as one (multi)polygon."""
    valid = np.asarray(valid, bool)
    if valid.all():
        return shapely.box(*grid.bounds)
    parts = [shapely.geometry.shape(g) for g, _ in rasterio.features.shapes(
        valid.astype(np.uint8), mask=valid, transform=grid.transform)]
    return shapely.union_all(parts) if parts else Polygon()


def _clipped(geom: shapely.Geometry, seen: shapely.Geometry) -> shapely.Geometry:
    """``geom`` within ``seen`` (itself when that would leave no area: an object too
    small to hold a pixel centre, kept by :func:`_mostly_valid`)."""
    inside = polygonal(shapely.intersection(geom, seen))
    return inside if inside.area > 0 else geom


def _areas_m2(geoms: Sequence[shapely.Geometry], grid: Grid | None,
              crs: object | None = None) -> np.ndarray:
    """Areas (m²) of polygons in ``grid.crs`` (or, without a grid, in ``crs`` or a
    metric CRS).

    A Web-Mercator grid's units are not metres on the ground (its areas are
    1/cos²(latitude) too large): there the polygons are measured in
    :func:`changedet.measure.metric_crs`, as ``detect`` measures its buildings. Without
    a grid but with their ``crs``, each polygon is measured where its area is true
    (:func:`changedet.measure.measured_where_true`), as ``changedet measure`` does.
    """
    if not geoms:
        return np.zeros(0)
    if grid is not None:
        metric = metric_crs(grid.crs, grid.bounds)
        if metric != grid.crs:
            geoms = reproject_geoms(geoms, grid.crs, metric)
    elif crs is not None:
        geoms = measured_where_true(geoms, crs)
    return shapely.area(np.asarray(geoms, dtype=object)).astype(float)


def evaluate(
    pred: Objects,
    truth: Objects,
    grid: Grid | None = None,
    *,
    valid: np.ndarray | None = None,
    iou_threshold: float = IOU_THRESHOLD,
    crs: object | None = None,
) -> dict[str, Any]:
    """Score predicted buildings against truth.

    Parameters
    ----------
    pred, truth : sequence of shapely geometries, sequence of (id, geometry), or (H, W) ndarray
        Polygons in ``grid.crs`` (projected; on a Mercator grid the areas are
        measured in the local metric CRS, as ``detect`` measures them), or a raster
        on ``grid``: a bool / 0-1 mask (objects are its 4-connected components) or an
        int label image. Without a grid, polygons in a metric CRS.
    grid : Grid, optional
        Needed when either side is a raster; then pixel scores are counted on it.
        When both sides are polygons and ``grid`` is None, the pixel scores are the
        exact area overlaps of the two unions (m²).
    valid : (H, W) ndarray of bool, optional
        Pixels that count (e.g. excluding no data); default all. Objects with less
        than half of their pixels valid, those beyond the grid counting as not valid,
        are left out of the object scores too (counted in ``n_outside_valid``).
    iou_threshold : float
        Object matching threshold (0.5, SpaceNet).
    crs : CRS-like, optional
        Without a grid, the CRS of the polygons: each is then measured where its area
        is true, so that polygons far apart (a stray one at (0, 0)) are not measured
        in a projection chosen for all of them.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``, ``n_pred``,
        ``n_truth``; ``pixel_precision``, ``pixel_recall``, ``pixel_iou``,
        ``pixel_f1`` (all 1.0 when both sides are empty; 0.0 when one is);
        ``pred_area_m2``, ``truth_area_m2`` (summed object areas),
        ``total_area_error_pct`` (signed, (pred - truth) / truth);
        ``mean_abs_object_area_error_pct`` over
        matches; ``per_object``: one row per match (``status`` "tp") and per
        unmatched prediction ("fp") or truth ("fn"), with ids, IoU, areas and the
        signed area error (m² and %).
    """
    if grid is not None and grid.crs.is_geographic:
        raise ProcessingError("evaluation needs a projected grid (areas in m²)")
    if isinstance(iou_threshold, bool) or not (
            isinstance(iou_threshold, (int, float, np.number)) and 0 < iou_threshold <= 1):
        # (NaN, or 2, matched nothing: every object a miss, silently)
        raise ValueError(f"iou_threshold must be a number in (0, 1], got {iou_threshold!r}")
    if valid is not None and (grid is None or np.shape(valid) != grid.shape):
        raise ValueError(f"valid of shape {np.shape(valid)} does not fit the grid "
                         f"{None if grid is None else grid.shape}")
    p_ids, p_geoms, p_mask = _objects(pred, grid, "prediction")
    t_ids, t_geoms, t_mask = _objects(truth, grid, "truth")
    n_dropped = {"pred": 0, "truth": 0}
    if valid is not None and grid is not None:
        # What lies (mostly) in no data could not be seen: it is neither hit nor miss.
        keep_p = _mostly_valid(p_geoms, grid, valid)
        keep_t = _mostly_valid(t_geoms, grid, valid)
        n_dropped = {"pred": len(p_geoms) - len(keep_p),
                     "truth": len(t_geoms) - len(keep_t)}
        p_ids, p_geoms = [p_ids[i] for i in keep_p], [p_geoms[i] for i in keep_p]
        t_ids, t_geoms = [t_ids[i] for i in keep_t], [t_geoms[i] for i in keep_t]
        # What is kept is compared where it could be seen: a raster side's objects
        # stop at its nodata and its edge, so a polygon side's must too (a building
        # half on nodata was compared whole against its visible half: a perfect
        # prediction scored 49 % too small, or as a miss and a false building).
        seen = _seen_area(valid, grid)
        p_geoms = [_clipped(g, seen) for g in p_geoms]
        t_geoms = [_clipped(g, seen) for g in t_geoms]

    matches = match_objects(p_geoms, t_geoms, iou_threshold)
    tp = len(matches)
    fp = len(p_geoms) - tp
    fn = len(t_geoms) - tp
    # Nothing to find and nothing found is perfect agreement, not a score of 0 (a
    # scene without change, correctly left empty, would otherwise pull a benchmark's
    # mean down); either side empty alone still scores 0.
    both_empty = not p_geoms and not t_geoms
    precision = 1.0 if both_empty else _ratio(tp, tp + fp)
    recall = 1.0 if both_empty else _ratio(tp, tp + fn)

    p_area, t_area = _areas_m2(p_geoms, grid, crs), _areas_m2(t_geoms, grid, crs)
    per_object: list[dict[str, Any]] = []
    abs_errors = []
    for p, t, iou in sorted(matches, key=lambda m: m[1]):
        pa, ta = p_area[p], t_area[t]
        err_pct = 100.0 * _ratio(pa - ta, ta)
        abs_errors.append(abs(err_pct))
        per_object.append({
            "status": "tp", "pred_id": p_ids[p], "truth_id": t_ids[t],
            "iou": _round(iou, 4), "pred_area_m2": _round(pa, 1),
            "truth_area_m2": _round(ta, 1), "area_error_m2": _round(pa - ta, 1),
            "area_error_pct": _round(err_pct, 2),
        })
    matched_p = {m[0] for m in matches}
    matched_t = {m[1] for m in matches}
    for p in range(len(p_geoms)):
        if p not in matched_p:
            per_object.append({"status": "fp", "pred_id": p_ids[p], "truth_id": None,
                               "iou": None, "pred_area_m2": _round(p_area[p], 1),
                               "truth_area_m2": None, "area_error_m2": None,
                               "area_error_pct": None})
    for t in range(len(t_geoms)):
        if t not in matched_t:
            per_object.append({"status": "fn", "pred_id": None, "truth_id": t_ids[t],
                               "iou": None, "pred_area_m2": None,
                               "truth_area_m2": _round(t_area[t], 1),
                               "area_error_m2": None, "area_error_pct": None})

    if grid is None and p_mask is None and t_mask is None:
        pu = shapely.union_all(p_geoms) if p_geoms else Polygon()
        tu = shapely.union_all(t_geoms) if t_geoms else Polygon()
        inter = pu.intersection(tu)
        if crs is not None:
            inter_m2, pu_m2, tu_m2 = (float(a.sum()) for a in (
                _areas_m2(list(shapely.get_parts(inter)), None, crs),
                _areas_m2(list(shapely.get_parts(pu)), None, crs),
                _areas_m2(list(shapely.get_parts(tu)), None, crs)))
        else:
            inter_m2, pu_m2, tu_m2 = inter.area, pu.area, tu.area
        p_only, t_only = pu_m2 - inter_m2, tu_m2 - inter_m2
        inter = inter_m2
        basis = "area"
    else:
        assert grid is not None
        pm = p_mask if p_mask is not None else _rasterise(p_geoms, grid)
        tm = t_mask if t_mask is not None else _rasterise(t_geoms, grid)
        ok = np.ones(grid.shape, bool) if valid is None else np.asarray(valid, bool)
        px = grid.pixel_area
        inter = float(np.count_nonzero(pm & tm & ok)) * px
        p_only = float(np.count_nonzero(pm & ~tm & ok)) * px
        t_only = float(np.count_nonzero(tm & ~pm & ok)) * px
        basis = "pixels"
    # Total areas are those of the objects (as an analyst would sum them); for a
    # raster they equal the pixel counts, since its polygons follow pixel edges.
    pred_area = float(p_area.sum())
    truth_area = float(t_area.sum())
    pixels_empty = inter + p_only + t_only == 0
    pixel_precision = 1.0 if pixels_empty else _ratio(inter, inter + p_only)
    pixel_recall = 1.0 if pixels_empty else _ratio(inter, inter + t_only)
    return {
        "iou_threshold": iou_threshold,
        "n_pred": len(p_geoms),
        "n_outside_valid": n_dropped,
        "n_truth": len(t_geoms),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _round(precision, 4),
        "recall": _round(recall, 4),
        "f1": _round(_f1(precision, recall), 4),
        "pixel_basis": basis,
        "pixel_precision": _round(pixel_precision, 4),
        "pixel_recall": _round(pixel_recall, 4),
        "pixel_iou": _round(1.0 if pixels_empty else _ratio(inter, inter + p_only + t_only),
                            4),
        "pixel_f1": _round(_f1(pixel_precision, pixel_recall), 4),
        "pred_area_m2": _round(pred_area, 1),
        "truth_area_m2": _round(truth_area, 1),
        "total_area_error_pct": (_round(100.0 * _ratio(pred_area - truth_area, truth_area), 2)
                                 if truth_area > 0 else None),
        "mean_abs_object_area_error_pct": (_round(float(np.mean(abs_errors)), 2)
                                           if abs_errors else None),
        "per_object": per_object,
    }


def stage_losses(truth: np.ndarray, regions: np.ndarray, labels: np.ndarray,
                 quiet: np.ndarray | None = None) -> list[dict[str, float]]:
    """Where each true building's area went in the region detector, stage by stage.

    A building's pixels are either not candidates at all (too little change once
    shadow and texture are discounted, or lost to the clean-up of the candidates), in
    candidate regions the classifier rejected, or in the buildings found (kept
    regions and their filled holes); what the buildings found on it cover beyond
    every true building is its overgrowth. This tells a missing facet from a rejected
    roof and a roof merged with the ground around it.

    Parameters
    ----------
    truth : (H, W) ndarray of bool or int
        True buildings: a mask (bool, or one non-zero value as 0/1 or 0/255), split
        into 8-connected objects, or a label image.
    regions : (H, W) ndarray of int
        Candidate regions (``Evidence.regions``), 0 where no candidate.
    labels : (H, W) ndarray of int
        Detected buildings, 0 background.
    quiet : (H, W) ndarray of bool, optional
        Pixels whose change itself (before the shadow and texture discounts) is at or
        below the candidates' level (``Evidence.change <= change.candidate_level(...)``).
        Tells a roof that did not change enough from one whose change was discounted
        (or lost to the candidates' closing and opening).

    Returns
    -------
    list of dict
        One per true building, in label order: ``area_px``, and the fractions of that
        area ``not_candidate``, ``rejected`` and ``kept`` (summing to 1), and
        ``overgrowth`` (pixels, as a fraction of the area; 0 when nothing was kept).
        Given ``quiet``, also ``quiet``: the fraction that is no candidate and quiet
        (part of ``not_candidate``).
    """
    truth, regions, labels = (np.asarray(a) for a in (truth, regions, labels))
    named = {"truth": truth, "regions": regions, "labels": labels}
    if quiet is not None:
        named["quiet"] = quiet = np.asarray(quiet, dtype=bool)
    for name, array in named.items():
        if array.ndim != 2 or array.shape != truth.shape:
            raise ValueError(f"{name} has shape {array.shape}; every array must be 2-D "
                             f"and of the truth's shape {truth.shape}")
    values = truth[truth > 0]
    if truth.dtype == bool or values.size == 0 or values.min() == values.max():
        # A mask, however stored (truth_mask.tif reads as 0/1 uint8), as evaluate reads one.
        truth_labels, n = ndimage.label(truth > 0, np.ones((3, 3), bool))
    else:
        truth_labels, n = truth.astype(np.int64), int(truth.max())
    inside = truth_labels > 0
    found = labels > 0
    area = np.bincount(truth_labels.ravel(), minlength=n + 1).astype(float)
    # Kept pixels need not be candidates: small holes in a building are filled.
    rejected = np.bincount(truth_labels[(regions > 0) & ~found], minlength=n + 1)
    kept = np.bincount(truth_labels[found], minlength=n + 1)
    # Each found building's pixels outside all truth, summed over the (true, found)
    # pairs that overlap.
    outside = np.bincount(labels[~inside], minlength=int(labels.max()) + 1)
    both = inside & found
    pairs = np.unique(np.stack([truth_labels[both], labels[both]]), axis=1)
    overgrowth = np.bincount(pairs[0], weights=outside[pairs[1]], minlength=n + 1)
    ids = [j for j in range(1, n + 1) if area[j] > 0]
    losses = [{"area_px": float(area[j]),
               "not_candidate": (area[j] - rejected[j] - kept[j]) / area[j],
               "rejected": rejected[j] / area[j],
               "kept": kept[j] / area[j],
               "overgrowth": overgrowth[j] / area[j]} for j in ids]
    if quiet is not None:
        still = np.bincount(truth_labels[(regions == 0) & ~found & np.asarray(quiet, bool)],
                            minlength=n + 1)
        for loss, j in zip(losses, ids):
            loss["quiet"] = still[j] / area[j]
    return losses


def pooled_stage_losses(losses: Sequence[dict[str, float]]) -> dict[str, float]:
    """Several buildings' :func:`stage_losses` as one: their total area and the
    area-weighted mean of each fraction (zeros when there are none; ``quiet`` when
    every building has it)."""
    area = np.array([b["area_px"] for b in losses], dtype=float)
    keys = ("not_candidate", "rejected", "kept", "overgrowth")
    if losses and all("quiet" in b for b in losses):
        keys += ("quiet",)
    if area.sum() == 0:
        return {"area_px": 0.0, **{k: 0.0 for k in keys}}
    return {"area_px": float(area.sum()),
            **{k: float(np.average([b[k] for b in losses], weights=area)) for k in keys}}
