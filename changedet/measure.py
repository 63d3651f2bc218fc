"""Square metres with honest uncertainty, sites, and the claim check.

Areas are computed on a projected CRS whose local scale is true (the input's when it
is projected and not a Mercator, else the local UTM zone, or an equal-area projection
near the poles) and cross-checked with the geodesic area on the WGS84 ellipsoid.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Proj, Transformer
from rasterio.crs import CRS

from .errors import ProcessingError
from .raster import _local_projected_crs

#: Largest departure of the areal scale factor from 1 accepted in an input CRS before
#: the polygons are re-projected to the local UTM zone (UTM itself stays below 0.3%).
MAX_AREAL_SCALE_ERROR = 0.005


def _as_crs(crs: object) -> CRS:
    return crs if isinstance(crs, CRS) else CRS.from_user_input(crs)


def _is_mercator(crs: CRS) -> bool:
    """True for Mercator projections (Web Mercator included), whose metres are not."""
    proj = ProjCRS.from_wkt(crs.to_wkt())
    op = proj.coordinate_operation
    name = (op.method_name if op is not None else "").lower()
    return "mercator" in name and "transverse" not in name and "oblique" not in name


def metric_crs(crs: object, bounds: Sequence[float]) -> CRS:
    """The CRS in which to measure geometries that lie within ``bounds`` of ``crs``.

    Parameters
    ----------
    crs : CRS-like
        CRS of the geometries.
    bounds : (minx, miny, maxx, maxy)
        Their extent in ``crs`` units.

    Returns
    -------
    rasterio.crs.CRS
        ``crs`` itself when it is projected, not a Mercator, and its areal scale at the
        centre of ``bounds`` is within ``MAX_AREAL_SCALE_ERROR`` of 1; otherwise the
        local UTM zone (or a local Lambert equal-area beyond UTM's latitudes).
    """
    crs = _as_crs(crs)
    minx, miny, maxx, maxy = (float(b) for b in bounds)
    cx, cy = (minx + maxx) / 2.0, (miny + maxy) / 2.0
    if crs.is_geographic:
        lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(cx, cy)
        return _local_projected_crs(lon, lat)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(cx, cy)
    if not _is_mercator(crs):
        try:
            factors = Proj(ProjCRS.from_wkt(crs.to_wkt())).get_factors(lon, lat)
            scale = float(factors.areal_scale)
        except Exception:  # noqa: BLE001 - projections pyproj cannot differentiate
            scale = math.nan
        if math.isfinite(scale) and abs(scale - 1.0) <= MAX_AREAL_SCALE_ERROR:
            return crs
    return _local_projected_crs(lon, lat)


def to_metric(
    geoms: Sequence[shapely.Geometry], crs: object
) -> tuple[list[shapely.Geometry], CRS]:
    """Geometries re-projected (if needed) into :func:`metric_crs`.

    Returns
    -------
    (list of geometries, CRS)
        The geometries in metres and the CRS they are in.

    Raises
    ------
    ProcessingError
        When there is no geometry to place.
    """
    crs = _as_crs(crs)
    geoms = list(geoms)
    if not geoms:
        raise ProcessingError("no geometry to measure")
    bounds = shapely.total_bounds(np.asarray(geoms, dtype=object))
    if not np.all(np.isfinite(bounds)):
        raise ProcessingError("geometries are empty; nothing to measure")
    target = metric_crs(crs, bounds)
    if target == crs:
        return geoms, crs
    return reproject_geoms(geoms, crs, target), target


def reproject_geoms(
    geoms: Iterable[shapely.Geometry], src: object, dst: object
) -> list[shapely.Geometry]:
    """Geometries from ``src`` to ``dst`` CRS, vertex by vertex.

    Edges are not densified: over a building (< 1 km) the curvature of a straight
    edge between two conformal or geographic CRSs changes its area by far less than
    the half-pixel uncertainty.
    """
    tr = Transformer.from_crs(_as_crs(src), _as_crs(dst), always_xy=True)

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return [shapely.transform(g, project) for g in geoms]
