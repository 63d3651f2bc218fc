"""From a label image of new buildings to one polygon per building.

The polygons are traced on pixel edges (``rasterio.features.shapes``), so before any
simplification each polygon's area is exactly its pixel count times the pixel area:
the evidence. Simplification (about one pixel, topology preserved) removes the
staircase, and the optional right-angle regularisation is accepted only when it moves
the area by less than the half-pixel boundary uncertainty.

``buildingregulariser`` (PyPI) was considered for the right angles; it depends on
geopandas, which changedet does not, so a compact orthogonaliser lives here.
"""

from __future__ import annotations

import math

import numpy as np
import rasterio.features
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, shape

from ._log import logger
from .raster import Grid

#: Parts smaller than this share of one pixel are numerical dust from make_valid.
_DUST_PX = 0.05
#: Narrowest outline, in pixels, worth simplifying or squaring.
_MIN_SHAPE_PX = 3.0


def _polygon_parts(geom: shapely.Geometry) -> list[Polygon]:
    """The polygons inside any geometry (a make_valid result may be a collection)."""
    if isinstance(geom, Polygon):
        return [geom] if not geom.is_empty else []
    if isinstance(geom, MultiPolygon):
        return [g for g in geom.geoms if not g.is_empty]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in _polygon_parts(g)]
    return []


def _clean(geom: shapely.Geometry, min_area: float) -> list[Polygon]:
    """Valid polygon parts of ``geom`` larger than ``min_area``."""
    return [p for p in _polygon_parts(shapely.make_valid(geom)) if p.area > min_area]


def _dominant_angle(poly: Polygon) -> float:
    """Orientation of the building in radians, in [0, pi/2).

    Edge directions modulo 90°, weighted by edge length, averaged on the circle (angles
    multiplied by 4 so that 0° and 90° vote alike): robust to the odd diagonal edge.
    """
    xy = np.asarray(poly.exterior.coords)
    d = np.diff(xy, axis=0)
    length = np.hypot(d[:, 0], d[:, 1])
    theta = np.arctan2(d[:, 1], d[:, 0])
    c = np.sum(length * np.cos(4 * theta))
    s = np.sum(length * np.sin(4 * theta))
    return (math.atan2(s, c) / 4.0) % (math.pi / 2)


def _orthogonal_ring(xy: np.ndarray, angle: float) -> np.ndarray | None:
    """Snap a closed ring to edges at ``angle`` and ``angle + 90°``.

    Each edge is classified as running along u or v (the rotated axes); runs of edges
    with the same class merge into one straight side at the length-weighted mean
    offset, and consecutive sides meet at their intersection, which is a right angle.

    Returns ``None`` when the ring degenerates (fewer than four sides).
    """
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    rot = np.array([[cos_a, sin_a], [-sin_a, cos_a]])  # world -> (u, v)
    uv = (xy[:-1] - xy[0]) @ rot.T
    d = np.diff(np.vstack([uv, uv[:1]]), axis=0)
    length = np.hypot(d[:, 0], d[:, 1])
    along_u = np.abs(d[:, 0]) >= np.abs(d[:, 1])
    # Start at a change of direction so that no run wraps around the ring end.
    changes = np.flatnonzero(along_u != np.roll(along_u, 1))
    if len(changes) < 4:
        return None
    start = int(changes[0])
    order = np.roll(np.arange(len(uv)), -start)
    sides: list[tuple[bool, float]] = []  # (runs along u, constant coordinate)
    i = 0
    n = len(order)
    while i < n:
        j = i
        kind = along_u[order[i]]
        while j < n and along_u[order[j]] == kind:
            j += 1
        idx = order[i:j]
        mid = (uv[idx] + uv[(idx + 1) % len(uv)]) / 2.0
        w = length[idx] + 1e-12
        # A side along u has constant v, and conversely.
        offset = float(np.average(mid[:, 1] if kind else mid[:, 0], weights=w))
        sides.append((bool(kind), offset))
        i = j
    if len(sides) < 4 or len(sides) % 2:
        return None
    corners = []
    for k, (kind, offset) in enumerate(sides):
        next_kind, next_offset = sides[(k + 1) % len(sides)]
        if kind == next_kind:
            return None
        corners.append((next_offset, offset) if kind else (offset, next_offset))
    corners_uv = np.asarray(corners + corners[:1])
    return corners_uv @ rot + xy[0]


def _orthogonal_polygon(poly: Polygon, angle: float) -> Polygon | None:
    """``poly`` with every ring snapped to ``angle`` / ``angle + 90°``, or None."""
    rings = []
    for k, ring in enumerate([poly.exterior, *poly.interiors]):
        new = _orthogonal_ring(np.asarray(ring.coords), angle)
        if new is None:
            if k == 0:
                return None
            continue  # a hole that does not square up is dropped (area check follows)
        rings.append(new)
    candidate = Polygon(rings[0], rings[1:])
    if candidate.is_empty or not candidate.is_valid:
        return None
    return candidate


def _too_narrow(poly: Polygon, pixel_size: float) -> bool:
    """True when ``poly`` is under ``_MIN_SHAPE_PX`` pixels across (its minimum
    rotated rectangle's short side): such a blob has no straight sides or orientation
    to recover, and a one-pixel tolerance would only deform it."""
    rect = shapely.minimum_rotated_rectangle(poly)
    if not isinstance(rect, Polygon):
        return True
    xy = np.asarray(rect.exterior.coords)
    short = min(math.hypot(*(xy[1] - xy[0])), math.hypot(*(xy[2] - xy[1])))
    return short < _MIN_SHAPE_PX * pixel_size


def _match_area(poly: Polygon, area: float) -> Polygon | None:
    """``poly`` offset uniformly (mitred, so right angles stay) to have ``area``.

    The side offsets of the orthogonal outline come from simplified edges, which cut
    the pixel staircase on one side; the pixel count is the unbiased evidence of area.
    """
    for _ in range(8):
        if poly.length <= 0:
            return None
        d = (area - poly.area) / poly.length
        if abs(d) < 1e-9 * math.sqrt(max(area, 1e-12)):
            break
        moved = shapely.buffer(poly, d, join_style="mitre", mitre_limit=2.0)
        if not isinstance(moved, Polygon) or moved.is_empty:
            return None
        poly = moved
    return poly


def regularise_polygon(
    poly: Polygon, pixel_size: float, reference: Polygon | None = None
) -> Polygon:
    """Right-angle version of a building polygon, or the polygon itself.

    The orientation starts from the length-weighted edge directions and is refined
    within ±3° to the angle whose right-angled outline departs least (symmetric
    difference) from ``reference``, the pixel-edge outline that is the evidence.

    Parameters
    ----------
    poly : shapely.Polygon
        Building outline in a metric CRS, usually simplified (holes allowed).
    pixel_size : float
        Ground size of one pixel in metres.
    reference : shapely.Polygon, optional
        The unsimplified outline (area = pixel count); default ``poly``.

    Returns
    -------
    shapely.Polygon
        The orthogonalised polygon when the reference is at least three pixels
        across, the result is valid, stays within 1.5 pixels of the reference
        everywhere, and both its area difference and its symmetric difference with
        the reference are within the half-pixel band ``perimeter * pixel_size / 2``
        (perimeter of the simplified outline); otherwise ``poly`` unchanged.
    """
    reference = poly if reference is None else reference
    if _too_narrow(reference, pixel_size):
        return poly
    base = _dominant_angle(poly)
    best: Polygon | None = None
    best_cost = math.inf
    for delta in np.deg2rad(np.linspace(-3.0, 3.0, 7)):
        candidate = _orthogonal_polygon(poly, base + float(delta))
        if candidate is None:
            continue
        candidate = _match_area(candidate, reference.area)
        if candidate is None:
            continue
        cost = candidate.symmetric_difference(reference).area
        if cost < best_cost:
            best, best_cost = candidate, cost
    if best is None:
        return poly
    band = poly.length * pixel_size / 2.0
    if abs(best.area - reference.area) > band or best_cost > band:
        return poly
    if shapely.hausdorff_distance(best, reference) > 1.5 * pixel_size:
        return poly
    return best


def labels_at_edge(labels: np.ndarray, valid: np.ndarray,
                   sides: tuple[bool, bool, bool, bool] = (True, True, True, True)
                   ) -> np.ndarray:
    """Which buildings reach the edge of the imagery and may go on beyond it.

    A label reaches it when one of its pixels is 4-adjacent to an invalid pixel
    (nodata, outside either date) or lies on a side of the array that is the
    imagery's edge.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, 1..N buildings.
    valid : (H, W) ndarray of bool
        Pixels both dates cover.
    sides : (top, left, bottom, right) of bool
        Whether each side of the array is the edge of the imagery (False for a side
        of a window inside a larger grid).

    Returns
    -------
    (N + 1,) ndarray of bool
        Entry ``k`` for label ``k``; entry 0 is False.
    """
    n = int(labels.max()) if labels.size else 0
    edge = ndimage.binary_dilation(~valid)
    top, left, bottom, right = sides
    edge[0] |= top
    edge[:, 0] |= left
    edge[-1] |= bottom
    edge[:, -1] |= right
    out = np.zeros(n + 1, bool)
    out[labels[edge]] = True
    out[0] = False
    return out


def polygons_from_labels(
    labels: np.ndarray,
    grid: Grid,
    *,
    simplify_px: float = 1.0,
    regularise: bool = True,
) -> list[tuple[int, Polygon]]:
    """Trace one polygon per labelled building.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 is background, each positive value one building (a bool mask is taken as one
        label per 4-connected component only if labelled first; here ``True`` = 1).
    grid : Grid
        Georeference of ``labels``; polygons come out in ``grid.crs``.
    simplify_px : float
        Douglas-Peucker tolerance in pixels (topology preserved), followed by a
        uniform sub-pixel offset that restores the pixel-count area; the result is
        kept only when it differs from the pixel outline by less than the
        half-pixel band. Pixel rectangles and parts under three pixels across keep
        their pixel outline. 0 keeps the exact pixel-edge
        outline, whose area equals the pixel count.
    regularise : bool
        Snap outlines to right angles when that keeps the area within the half-pixel
        uncertainty (see :func:`regularise_polygon`).

    Returns
    -------
    list of (int, shapely.Polygon)
        Sorted by label then by descending area; holes (courtyards) are kept. A label
        whose pixels form several 4-connected parts yields one entry per part.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    if labels.shape != grid.shape:
        raise ValueError(f"labels of shape {labels.shape} are not on the grid of shape "
                         f"{grid.shape}")
    t = grid.transform
    if not (np.all(np.isfinite(tuple(t)[:6])) and t.determinant != 0):
        # (A zero pixel gave no polygon at all, a NaN one an error from GEOS.)
        raise ValueError(f"the grid's transform has no area per pixel or is not finite: {t!r}")
    if labels.dtype == bool:
        labels = labels.astype(np.int32)
    if not np.issubdtype(labels.dtype, np.integer):
        # Float labels were cut to integers: a 0.5 region vanished.
        raise ValueError(f"labels must be an integer or bool array, got {labels.dtype}")
    if not np.any(labels > 0):
        return []
    # shapes() takes int32: a larger label would wrap onto another building's.
    if labels.min() < 0 or labels.max() > np.iinfo(np.int32).max:
        raise ValueError(f"labels must lie in 0..{np.iinfo(np.int32).max}, got "
                         f"{labels.min()}..{labels.max()}")
    image = labels.astype(np.int32, copy=False)
    pixel = float(np.sqrt(grid.pixel_area))
    dust = _DUST_PX * grid.pixel_area
    out: list[tuple[int, Polygon]] = []
    for geom, value in rasterio.features.shapes(
        image, mask=image > 0, connectivity=4, transform=grid.transform
    ):
        raw = shape(geom)
        for part in _clean(raw, dust):
            poly = part
            if (len(part.interiors) == 0 and part.area >= (1 - 1e-9) * part.envelope.area) \
                    or _too_narrow(part, pixel):
                # A pixel rectangle is already straight and square, and a blob under
                # three pixels across has no shape to recover: both stay as traced.
                out.append((int(value), shapely.orient_polygons(part)))
                continue
            if simplify_px > 0:
                simple = shapely.simplify(part, simplify_px * pixel, preserve_topology=True)
                cleaned = _clean(simple, dust)
                if len(cleaned) == 1:
                    # Simplification cuts the staircase unevenly; a sub-pixel mitred
                    # offset gives the area back its evidence, the pixel count.
                    matched = _match_area(cleaned[0], part.area)
                    if matched is not None and matched.is_valid:
                        poly = matched
                    # Tiny parts can collapse under a one-pixel tolerance: keep the
                    # simplified outline only within the half-pixel band of the pixels.
                    if poly.symmetric_difference(part).area > part.length * pixel / 2:
                        poly = part
            if regularise:
                poly = regularise_polygon(poly, pixel, reference=part)
            out.append((int(value), shapely.orient_polygons(poly)))
    out.sort(key=lambda item: (item[0], -item[1].area))
    logger.debug("vectorised %d polygon(s) from %d label(s)", len(out),
                 len({v for v, _ in out}))
    return out
