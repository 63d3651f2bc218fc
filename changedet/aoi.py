"""Areas of interest and hand-traced polygons: reading vector files in any CRS.

An analyst's AOI or footprints come as GeoJSON, GeoPackage, Shapefile... in whatever
CRS they were drawn in. They are read with pyogrio, repaired with ``make_valid`` when
needed, reprojected with pyproj and rasterised onto the analysis grid.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyogrio.errors
import pyogrio.raw
import rasterio.features
import shapely
import shapely.affinity
from pyproj import CRS
from pyproj.exceptions import CRSError
from rasterio.warp import transform_bounds
from scipy import ndimage

from ._log import logger, warn_analyst
from .errors import InputError
from .measure import coordinate_range_problem, reproject_geoms
from .raster import Grid, check_path


@dataclass
class VectorPolygons:
    """Polygons read from a vector file.

    Attributes
    ----------
    polygons : list of shapely.Polygon
        Valid polygons (multi-polygons are split into their parts), in ``crs``.
    crs : pyproj.CRS
        The file's CRS.
    names : list of str
        One label per polygon: the value of a ``name``/``id`` attribute when the file
        has one, else the 1-based feature number.
    path : str
        Where they came from.
    """

    polygons: list[shapely.Polygon]
    crs: CRS
    names: list[str]
    path: str


def polygon_layer(path: str) -> str | int:
    """The first layer of a vector source whose geometry type is polygonal, else the
    first (a GeoPackage may hold points before its areas; a folder, shapefiles)."""
    try:
        layers = pyogrio.list_layers(path)
    except Exception:  # noqa: BLE001 - the read that follows names what is wrong
        return 0
    kinds = [str(t).lower() if t is not None else "" for _, t in layers]
    # Curved and polyhedral ones too.
    areal = [str(name) for (name, _), kind in zip(layers, kinds)
             if "polygon" in kind or "surface" in kind]
    if not areal:
        # A layer of no declared type (GeoPackage's generic "GEOMETRY") holds
        # polygons when its first features do.
        areal = [str(name) for (name, _), kind in zip(layers, kinds)
                 if not any(k in kind for k in ("point", "line", "curve"))
                 and _holds_polygons(path, str(name))]
    if not areal:
        return 0
    if len(areal) > 1 and areal[0] != "new_buildings":
        # The wrong one read is silently the wrong answer (an AOI scored as
        # buildings): say which.
        logger.warning("%s: %d polygon layers (%s); reading the first, %r", path,
                       len(areal), ", ".join(areal), areal[0])
    return areal[0]


def _holds_polygons(path: str, layer: str, first: int = 100) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, _, wkb, _ = pyogrio.raw.read(path, layer=layer, max_features=first,
                                            columns=[])
    except Exception:  # noqa: BLE001 - such a layer is just not chosen
        return False
    if wkb is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        types = shapely.get_type_id(shapely.from_wkb(wkb, on_invalid="ignore"))
    # Polygon, MultiPolygon, GeometryCollection.
    return bool(np.isin(types, (3, 6, 7)).any())


def read_polygons(path: str | os.PathLike[str], allow_empty: bool = False) -> VectorPolygons:
    """Read the polygons of the first polygon layer of any vector source pyogrio opens.

    Parameters
    ----------
    path : str or path-like
        GeoJSON, GeoPackage, Shapefile, KML... in any CRS.
    allow_empty : bool
        A layer without features gives no polygons instead of an error (``changedet
        detect``'s outputs of a scene without new building are such).

    Returns
    -------
    VectorPolygons
        Invalid geometries are repaired with :func:`shapely.make_valid` (and a
        warning is logged); non-polygonal parts are dropped.

    Raises
    ------
    InputError
        Missing file, not vector data, no CRS, or no polygon at all.
    """
    path = os.fspath(path)
    check_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GDAL chatter on odd files; errors still raise
            meta, _, wkb, field_data = pyogrio.raw.read(path, layer=polygon_layer(path))
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise InputError(path, "not vector data (no layer GDAL/OGR can read)") from exc
    except pyogrio.errors.GeometryError as exc:
        raise InputError(path, f"unreadable geometry ({exc})") from exc
    except (pyogrio.errors.FieldError, pyogrio.errors.CRSError, UnicodeError, ValueError,
            RuntimeError) as exc:
        # Corrupt files also fail while decoding attributes, text or the CRS.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"not readable vector data ({first})") from exc
    if not meta.get("crs"):
        raise InputError(path, "has no coordinate reference system; save it with one")
    try:
        crs = CRS.from_user_input(meta["crs"])
    except CRSError as exc:
        raise InputError(path, f"has an unknown CRS ({meta['crs']})") from exc
    if wkb is None or len(wkb) == 0:
        if allow_empty:
            return VectorPolygons([], crs, [], path)
        raise InputError(path, "contains no features")
    # A feature GDAL reads but GEOS cannot build (a one-point ring...) is dropped like
    # a feature without geometry, not allowed to abort the whole file.
    with warnings.catch_warnings():
        # shapely warns of a NaN coordinate; such a feature is named just below.
        warnings.simplefilter("ignore", RuntimeWarning)
        geoms = shapely.from_wkb(wkb, on_invalid="ignore")
    unreadable = shapely.is_missing(geoms) & np.asarray([w is not None for w in wkb])
    if unreadable.any():
        warn_analyst("%s: skipped %d feature(s) whose geometry cannot be built", path,
                     int(unreadable.sum()))
    labels = _feature_labels(list(meta["fields"]), field_data, len(geoms))
    for geom, label in zip(geoms, labels):
        # make_valid would drop such a polygon, and it would go unmeasured unsaid.
        if geom is not None and not np.isfinite(shapely.get_coordinates(geom)).all():
            raise InputError(path, f"feature {label} has a coordinate that is not a number")
    invalid = ~shapely.is_valid(geoms) & ~shapely.is_missing(geoms)
    if invalid.any():
        warn_analyst("%s: repaired %d invalid geometr%s with make_valid", path,
                     int(invalid.sum()), "y" if invalid.sum() == 1 else "ies")
        geoms[invalid] = shapely.make_valid(geoms[invalid])
    polygons: list[shapely.Polygon] = []
    names: list[str] = []
    for geom, label in zip(geoms, labels):
        if crs.is_geographic:
            geom = _rejoined_at_antimeridian(geom)
        parts = [p for p in _polygon_parts(geom) if p.area > 0]
        for k, part in enumerate(parts):
            polygons.append(part)
            names.append(label if len(parts) == 1 else f"{label}.{k + 1}")
    if not polygons:
        raise InputError(path, "contains no polygons (points or lines cannot bound an area)")
    # Projected coordinates labelled lon/lat (a common slip) fail deep in PROJ.
    problem = coordinate_range_problem(
        crs, shapely.total_bounds(np.asarray(polygons, dtype=object)))
    if problem:
        raise InputError(path, f"has {problem}: is its CRS right?")
    return VectorPolygons(polygons, crs, names, path)


def _rejoined_at_antimeridian(geom: shapely.Geometry | None) -> shapely.Geometry | None:
    """A lon/lat feature cut at ±180° (as RFC 7946 asks, and ``detect`` writes) made
    whole again, its western parts moved past 180°; else ``geom`` as it is.

    Measured part by part, one building would count as two, each with the cut in its
    perimeter.
    """
    parts = _polygon_parts(geom)
    if len(parts) < 2:
        return geom
    west = [p.bounds[0] <= -180.0 + 1e-9 for p in parts]
    east = [p.bounds[2] >= 180.0 - 1e-9 for p in parts]
    if not (any(west) and any(east)):
        return geom
    moved = [shapely.affinity.translate(p, 360.0) if w else p for p, w in zip(parts, west)]
    joined = shapely.union_all(moved)
    # Only parts that meet along the meridian join; two buildings either side of it
    # stay two.
    return joined if len(_polygon_parts(joined)) < len(parts) else geom


def _feature_labels(fields: list[str], data: list[np.ndarray], n: int) -> list[str]:
    lower = [f.lower() for f in fields]
    for key in ("name", "label", "id", "site", "fid"):
        if key in lower:
            column = data[lower.index(key)]
            if key == "fid" and [str(v) for v in column] == [str(i) for i in range(n)]:
                # GDAL's own 0-based FID of a shapefile without fields: not a name,
                # and off by one from the numbers the messages and tables use.
                break
            return [str(v) if v is not None and str(v) != "" else str(i + 1)
                    for i, v in enumerate(column)]
    return [str(i + 1) for i in range(n)]


def _polygon_parts(geom: shapely.Geometry | None) -> list[shapely.Polygon]:
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, shapely.Polygon):
        return [geom]
    if isinstance(geom, (shapely.MultiPolygon, shapely.GeometryCollection)):
        return [p for g in geom.geoms for p in _polygon_parts(g)]
    return []


@dataclass
class AOI:
    """An area of interest on the analysis grid.

    Attributes
    ----------
    mask : (H, W) ndarray of bool
        True for pixels whose centre lies inside the AOI.
    geometry : shapely geometry
        Union of the AOI polygons in the grid's CRS.
    path : str
        The file it came from.
    """

    mask: np.ndarray
    geometry: shapely.Geometry
    path: str


def read_aoi(path: str | os.PathLike[str], grid: Grid, fine: Grid | None = None) -> AOI:
    """Read an AOI file and rasterise it onto ``grid``.

    Parameters
    ----------
    path : str or path-like
        Polygons in any CRS and any vector format pyogrio reads.
    grid : Grid
        The analysis grid, or a coarsened copy of it (``fine``).
    fine : Grid, optional
        The analysis grid when ``grid`` is coarser (a windowed run keeps no mask of
        the whole scene): an AOI that covers no pixel centre of ``grid`` is refused
        only if it covers none of ``fine`` either (its mask then stays empty).

    Returns
    -------
    AOI

    Raises
    ------
    InputError
        Everything :func:`read_polygons` raises, plus an AOI that covers no pixel
        of the scenes.
    """
    vector = read_polygons(path)
    failure: Exception | None = None
    union, mask = None, np.zeros(grid.shape, bool)
    # Reprojected whole first; if that reaches no pixel (vertices the grid's
    # projection cannot reach, as a world box in lon/lat has, come out infinite),
    # again with only the part of the AOI around the scenes.
    for polygons in (vector.polygons, None):
        if polygons is None:
            polygons = _near_the_grid(vector.polygons, vector.crs, grid)
            if not polygons:
                break
        try:
            union, mask = _on_grid(polygons, vector.crs, grid)
        except Exception as exc:  # noqa: BLE001 - pyproj raises several types
            failure = exc
            continue
        if mask.any():
            break
    if not mask.any():
        if failure is not None and union is None:
            raise InputError(vector.path, f"cannot be reprojected to the scenes' CRS "
                                          f"({failure})") from failure
        if (union is not None and not union.is_empty and np.all(np.isfinite(union.bounds))
                and union.intersection(shapely.box(*grid.bounds)).area > 0):
            if fine is not None and _covers_a_pixel_centre(union, fine):
                logger.info("AOI %s: thinner than a pixel of the %d x %d grid it was "
                            "checked on, it covers pixels of the scenes", vector.path,
                            *grid.shape)
                return AOI(mask, union, vector.path)
            raise InputError(vector.path, "covers no pixel centre of the scenes: what lies "
                                          "within them is smaller than a pixel, or too thin")
        raise InputError(vector.path, "lies outside the scenes (the AOI covers no pixel of the overlap)")
    logger.info("AOI %s: %d polygon(s), %.0f m², %d px", vector.path, len(vector.polygons),
                union.area, int(mask.sum()))
    return AOI(mask, union, vector.path)


def _covers_a_pixel_centre(geometry: shapely.Geometry, grid: Grid, tile_px: int = 2048
                           ) -> bool:
    """Whether ``geometry`` (in the grid's CRS) covers a pixel centre of ``grid``,
    rasterised tile by tile over its bounding box, so that memory stays bounded."""
    # Its bounds in pixel space, whatever the transform (south-up, rotated).
    inv = ~grid.transform
    left, top, right, bottom = shapely.affinity.affine_transform(
        geometry, [inv.a, inv.b, inv.d, inv.e, inv.xoff, inv.yoff]).bounds
    r0, c0 = max(int(np.floor(top)), 0), max(int(np.floor(left)), 0)
    r1, c1 = min(int(np.ceil(bottom)), grid.height), min(int(np.ceil(right)), grid.width)
    shape = [shapely.geometry.mapping(geometry)]
    for row in range(r0, r1, tile_px):
        for col in range(c0, c1, tile_px):
            part = grid.window(row, col, min(tile_px, r1 - row), min(tile_px, c1 - col))
            if rasterio.features.geometry_mask(shape, out_shape=part.shape,
                                               transform=part.transform, invert=True).any():
                return True
    return False


def _on_grid(polygons: list[shapely.Polygon], crs: Any,
             grid: Grid) -> tuple[shapely.Geometry, np.ndarray]:
    """The polygons' union in the grid's CRS and its (H, W) mask of pixel centres.

    Their edges are densified first (:func:`_densified`), so that they keep their
    line through the reprojection.
    """
    geoms = reproject_geoms(_densified(polygons, crs), crs.to_wkt(), grid.crs)
    union = shapely.union_all(shapely.make_valid(np.asarray(geoms, dtype=object)))
    if union.is_empty or not np.all(np.isfinite(union.bounds)):
        return union, np.zeros(grid.shape, bool)
    mask = rasterio.features.geometry_mask(
        [shapely.geometry.mapping(union)], out_shape=grid.shape, transform=grid.transform,
        invert=True)
    return union, mask


#: Longest edge of an AOI reprojected as a straight line, metres: reprojection moves
#: vertices, and an edge kilometres long drawn in another CRS (a parallel in lon/lat)
#: would become a chord tens of metres off its line.
AOI_EDGE_M = 100.0
#: Most vertices :func:`_densified` adds to an AOI.
MAX_AOI_VERTICES = 200_000


def _densified(polygons: list[shapely.Polygon], crs: Any) -> list[shapely.Polygon]:
    """The polygons with vertices added, in their own CRS, so that no edge is longer
    than about :data:`AOI_EDGE_M` (a thousandth of a degree in a geographic CRS).

    Left as they are when that would add more than :data:`MAX_AOI_VERTICES`: an AOI
    far larger than the scenes (a continent, the world). When such an AOI reaches
    no pixel reprojected whole, :func:`read_aoi` tries again with its part around
    the scenes, which is densified.
    """
    if not polygons:
        return polygons
    own = CRS.from_user_input(crs.to_wkt())
    if own.is_geographic:
        step = AOI_EDGE_M / 111_000.0
    else:
        step = AOI_EDGE_M / (own.axis_info[0].unit_conversion_factor if own.axis_info else 1.0)
    shapes = np.asarray(polygons, dtype=object)
    if float(np.sum(shapely.length(shapes))) / step > MAX_AOI_VERTICES:
        return polygons
    return list(shapely.segmentize(shapes, step))


def _near_the_grid(polygons: list[shapely.Polygon], crs: Any,
                   grid: Grid) -> list[shapely.Polygon]:
    """The polygons clipped, in their own CRS, to the grid's extent and as much again
    on every side.

    For an AOI far larger than the scenes (a country, the whole world in lon/lat)
    whose far vertices the grid's projection cannot reach: clipped, only its part
    around the scenes is reprojected; the margin keeps the cut far from every pixel.
    Unclipped when the grid's extent cannot be expressed in ``crs``.
    """
    left, bottom, right, top = grid.bounds
    dx, dy = right - left, top - bottom
    try:
        box = transform_bounds(grid.crs, crs, left - dx, bottom - dy, right + dx, top + dy,
                               densify_pts=21)
    except Exception:  # noqa: BLE001 - pyproj/GDAL raise several types
        return polygons
    if not all(np.isfinite(box)) or box[0] >= box[2] or box[1] >= box[3]:
        return polygons
    # Clip only what reaches beyond the box: the rest keeps its vertices as given.
    clip = shapely.box(*box)
    out = []
    for p in polygons:
        if clip.contains(p):
            out.append(p)
        else:
            out.extend(q for q in _polygon_parts(shapely.intersection(p, clip)) if q.area > 0)
    return out


def keep_labels_in_aoi(labels: np.ndarray, aoi_mask: np.ndarray) -> np.ndarray:
    """Zero the labels of objects lying mostly outside the AOI (kept whole otherwise)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return labels
    inside = ndimage.mean(aoi_mask, labels=labels, index=ids)
    lut = np.zeros(int(labels.max()) + 1, dtype=labels.dtype)
    keep = ids[np.asarray(inside) >= 0.5]
    lut[keep] = keep
    return lut[labels]
