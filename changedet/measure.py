"""Square metres with honest uncertainty, sites, and the claim check.

Areas are computed on a projected CRS whose local scale is true (the input's when it
is projected and not a Mercator, else the local UTM zone, or an equal-area projection
near the poles) and cross-checked with the geodesic area on the WGS84 ellipsoid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import shapely
import shapely.affinity
from pyproj import CRS as ProjCRS
from pyproj import Proj, Transformer
from rasterio.crs import CRS
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._log import warn_analyst
from .errors import ProcessingError
from .raster import Grid, _local_projected_crs

#: Largest departure of the areal scale factor from 1 accepted in an input CRS before
#: the polygons are re-projected to the local UTM zone (UTM itself stays below 0.3%).
MAX_AREAL_SCALE_ERROR = 0.005
#: The same for the scale of lengths in every direction (Tissot's semi-axes): an
#: equal-area CRS far from its standard lines keeps areas but not perimeters.
MAX_LINEAR_SCALE_ERROR = 0.005


def _as_crs(crs: object) -> CRS:
    return crs if isinstance(crs, CRS) else CRS.from_user_input(crs)


def _is_mercator(crs: CRS) -> bool:
    """True for Mercator projections (Web Mercator included), whose metres are not."""
    proj = ProjCRS.from_wkt(crs.to_wkt())
    op = proj.coordinate_operation
    name = (op.method_name if op is not None else "").lower()
    return "mercator" in name and "transverse" not in name and "oblique" not in name


def _in_metres(crs: CRS) -> bool:
    """True when the projected CRS's linear unit is the metre (not US feet...)."""
    try:
        return abs(crs.linear_units_factor[1] - 1.0) < 1e-9
    except Exception:  # noqa: BLE001 - CRSs without a defined linear unit
        return False


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
        ``crs`` itself when it is projected in metres, not a Mercator, and at the
        centre of ``bounds`` its areal scale is within ``MAX_AREAL_SCALE_ERROR`` of 1
        and its scale of lengths within ``MAX_LINEAR_SCALE_ERROR`` in every direction;
        otherwise the local UTM zone (or a local Lambert equal-area beyond UTM's
        latitudes).
    """
    crs = _as_crs(crs)
    minx, miny, maxx, maxy = (float(b) for b in bounds)
    cx, cy = (minx + maxx) / 2.0, (miny + maxy) / 2.0
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(cx, cy)
    if _fit_for_measuring(crs, np.array([lon]), np.array([lat]))[0]:
        return crs
    return _local_projected_crs(lon, lat)


def _fit_for_measuring(crs: CRS, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Whether lengths and areas in ``crs`` are true at each point.

    Parameters
    ----------
    crs : CRS
    lon, lat : ndarray, shape (n,)
        Points in degrees (WGS84).

    Returns
    -------
    ndarray of bool, shape (n,)
        True where ``crs`` is projected in metres, not a Mercator, and its areal
        scale and Tissot's semi-axes are within ``MAX_AREAL_SCALE_ERROR`` and
        ``MAX_LINEAR_SCALE_ERROR`` of 1.
    """
    fit = np.zeros(np.shape(lon), dtype=bool)
    if crs.is_geographic or not _in_metres(crs) or _is_mercator(crs):
        return fit
    try:
        factors = Proj(ProjCRS.from_wkt(crs.to_wkt())).get_factors(
            np.asarray(lon, dtype=float), np.asarray(lat, dtype=float))
        areal = np.asarray(factors.areal_scale, dtype=float)
        lengths = (np.asarray(factors.tissot_semimajor, dtype=float),
                   np.asarray(factors.tissot_semiminor, dtype=float))
    except Exception:  # noqa: BLE001 - projections pyproj cannot differentiate
        return fit
    with np.errstate(invalid="ignore"):
        fit = np.abs(areal - 1.0) <= MAX_AREAL_SCALE_ERROR
        for k in lengths:
            fit &= np.abs(k - 1.0) <= MAX_LINEAR_SCALE_ERROR
    return fit


def measured_where_true(geoms: Sequence[shapely.Geometry], crs: object
                        ) -> list[shapely.Geometry]:
    """Each geometry in a CRS whose areas and lengths are true where it lies.

    A geometry stays in ``crs`` when ``crs`` is fit for measuring at the centre of its
    bounds (:func:`metric_crs`'s test); otherwise it is re-projected to the local
    projected CRS of that centre (its UTM zone). This is how a file whose polygons
    span several UTM zones, or reach where a national projection stretches, is
    measured polygon by polygon.

    Parameters
    ----------
    geoms : sequence of shapely geometries, in ``crs``
    crs : CRS-like

    Returns
    -------
    list of shapely geometries
        Each one's ``area`` (m²) and ``length`` (m) are true; their CRSs may differ,
        so use them for measuring only.
    """
    crs = _as_crs(crs)
    geoms = list(geoms)
    if not geoms:
        return []
    bounds = shapely.bounds(np.asarray(geoms, dtype=object))
    cx, cy = (bounds[:, 0] + bounds[:, 2]) / 2.0, (bounds[:, 1] + bounds[:, 3]) / 2.0
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(cx, cy)
    lon, lat = np.atleast_1d(lon), np.atleast_1d(lat)
    unfit = ~_fit_for_measuring(crs, lon, lat) & np.isfinite(lon) & np.isfinite(lat)
    by_target: dict[str, tuple[CRS, list[int]]] = {}
    for k in np.flatnonzero(unfit).tolist():
        target = _local_projected_crs(float(lon[k]), float(lat[k]))
        by_target.setdefault(target.to_wkt(), (target, []))[1].append(k)
    out = list(geoms)
    for target, members in by_target.values():
        for k, g in zip(members, reproject_geoms([geoms[k] for k in members], crs, target)):
            out[k] = g
    return out


def coordinate_range_problem(crs: CRS, bounds: Sequence[float]) -> str | None:
    """What is wrong with ``bounds`` for ``crs``, or None: for a geographic CRS,
    projected coordinates labelled lon/lat, or latitude and longitude swapped; for a
    projected one, coordinates it places nowhere on Earth (a unit slip of 10**6).

    Longitudes up to ±540° pass: a ring across the antimeridian may be written with
    longitudes past ±180.
    """
    minx, miny, maxx, maxy = (float(b) for b in bounds)
    where = f"(x {minx:.6g} to {maxx:.6g}, y {miny:.6g} to {maxy:.6g})"
    if crs.is_geographic:
        if -90.0 <= miny and maxy <= 90.0 and -540.0 <= minx and maxx <= 540.0:
            return None
        return f"coordinates out of range for its geographic CRS {where}"
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
        [minx, maxx, minx, maxx], [miny, miny, maxy, maxy])
    if np.all(np.isfinite(lon)) and np.all(np.isfinite(lat)):
        return None
    # (PROJ then fails deep inside, about a projection the caller never named.)
    return f"coordinates its CRS places nowhere on Earth {where}"


def to_metric(
    geoms: Sequence[shapely.Geometry], crs: object, metric: object | None = None
) -> tuple[list[shapely.Geometry], CRS]:
    """Geometries re-projected (if needed) into :func:`metric_crs`, or into ``metric``
    when given (so that several sets of geometries share one CRS).

    Returns
    -------
    (list of geometries, CRS)
        The geometries in metres and the CRS they are in.

    Raises
    ------
    ProcessingError
        When there is no geometry to place, or a geographic ``crs`` cannot hold the
        geometries' coordinates.
    """
    crs = _as_crs(crs)
    geoms = list(geoms)
    if not geoms:
        raise ProcessingError("no geometry to measure")
    bounds = shapely.total_bounds(np.asarray(geoms, dtype=object))
    if not np.all(np.isfinite(bounds)):
        raise ProcessingError("geometries are empty; nothing to measure")
    problem = coordinate_range_problem(crs, bounds)
    if problem:
        # (PROJ fails deep inside on them, about a projection the caller never named.)
        hint = "(lon, lat) " if crs.is_geographic else ""
        raise ProcessingError(f"{problem}: are they {hint}in {crs.to_string()}?")
    target = metric_crs(crs, bounds) if metric is None else _as_crs(metric)
    if target == crs:
        return geoms, crs
    return reproject_geoms(geoms, crs, target), target


def ground_pixel_m(grid: Grid, metric: CRS | None = None) -> float:
    """Side in metres of a ground pixel at a grid's centre.

    Parameters
    ----------
    grid : Grid
    metric : CRS, optional
        The CRS to measure in; default :func:`metric_crs` of the grid.

    Returns
    -------
    float
        The grid's own pixel size when ``metric`` is its CRS (a projected grid fit
        for measuring); otherwise the pixel measured in ``metric``, which removes a
        Web-Mercator grid's 1/cos(latitude) scale or a grid's foot units.
    """
    if metric is None:
        metric = metric_crs(grid.crs, grid.bounds)
    if metric == grid.crs:
        return float(np.sqrt(grid.pixel_area))
    col, row = grid.width / 2.0, grid.height / 2.0
    corners = [grid.transform @ (col + dc, row + dr)
               for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1))]
    pixel = reproject_geoms([shapely.Polygon(corners)], grid.crs, metric)[0]
    return float(np.sqrt(pixel.area))


def ground_metres_per_unit(grid: Grid, metric: CRS | None = None) -> float:
    """Ground metres in one unit of the grid's CRS at its centre (1 on a grid fit for
    measuring; cos(latitude) for a Web-Mercator metre, 0.3048 for a foot).

    Parameters and measurement as in :func:`ground_pixel_m`.
    """
    return ground_pixel_m(grid, metric) / math.sqrt(grid.pixel_area)


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


# --------------------------------------------------------------------------- buildings

def _geodesic_areas(geoms: Sequence[shapely.Geometry], crs: CRS) -> list[float]:
    """Areas in m² on the WGS84 ellipsoid (pyproj.Geod), the independent cross-check."""
    from pyproj import Geod

    geod = Geod(ellps="WGS84")

    def ring_m2(ring: shapely.LinearRing) -> float:
        lon, lat = shapely.get_coordinates(ring).T
        return abs(float(geod.polygon_area_perimeter(lon, lat)[0]))

    # Ring by ring, each unsigned: however an analyst's file winds its rings, and
    # however they cross the antimeridian (where a planar orientation of lon/lat
    # rings is meaningless), holes subtract. The geodesic of each edge is what the
    # ellipsoid gives across ±180° as anywhere.
    return [sum(ring_m2(p.exterior) - sum(ring_m2(r) for r in p.interiors)
                for p in shapely.get_parts(shapely.get_parts(g))
                if isinstance(p, shapely.Polygon))
            for g in reproject_geoms(geoms, crs, "EPSG:4326")]


def _r1(x: float) -> float:
    """Round to 0.1 (m or m²), deterministically, as plain float."""
    return round(float(x), 1) + 0.0  # + 0.0 writes -0.0 as 0.0


@dataclass
class Building:
    """One new building, measured.

    Attributes
    ----------
    id : int
        1-based, in the order given to :func:`measure_buildings`.
    polygon : shapely.Polygon
        Outline in the measurement CRS (metres).
    area_m2, area_m2_min, area_m2_max : float
        Planimetric area and its bounds (see :func:`measure_buildings`).
    perimeter_m : float
    geodesic_area_m2 : float
        Area on the WGS84 ellipsoid, the cross-check of ``area_m2``.
    score : float or None
        Detection evidence (mean score inside the building), when given.
    site_id : int or None
        Set by :func:`group_sites`.
    partial : bool
        The outline may not be the whole building: it reaches the edge of the
        imagery (the scene's border, or pixels either date does not cover), or a
        windowed run saw it only as cut by its largest window. The building may go
        on beyond the outline, and its area and bounds then cover only what was seen.
    """

    id: int
    polygon: shapely.Geometry
    area_m2: float
    area_m2_min: float
    area_m2_max: float
    perimeter_m: float
    geodesic_area_m2: float
    score: float | None = None
    site_id: int | None = None
    partial: bool = False

    def to_properties(self) -> dict[str, Any]:
        """The ``new_buildings.geojson`` properties (areas rounded to 0.1 m²)."""
        return {
            "id": self.id,
            "area_m2": _r1(self.area_m2),
            "area_m2_min": _r1(self.area_m2_min),
            "area_m2_max": _r1(self.area_m2_max),
            "perimeter_m": _r1(self.perimeter_m),
            "geodesic_area_m2": _r1(self.geodesic_area_m2),
            "site_id": self.site_id,
            "score": None if self.score is None else float(round(self.score, 3)),
            "partial": self.partial,
        }


def area_bounds(
    geom: shapely.Geometry, pixel_size_m: float, coreg_residual_px: float = 0.0
) -> tuple[float, float]:
    """Smallest and largest area the evidence allows, in m².

    The outline is known to half a pixel: each edge could lie anywhere in a band
    ``w = pixel_size_m * (0.5 + coreg_residual_px)`` wide on either side (the
    co-registration residual moves the after image, hence the boundary, by that many
    pixels more). The bounds are the areas of the polygon buffered inward and
    outward by ``w`` with mitred corners, i.e. ``A - P w + ...`` and ``A + P w + ...``
    (exact for rectangles: ``(a - 2w)(b - 2w)`` and ``(a + 2w)(b + 2w)``).
    """
    w = pixel_size_m * (0.5 + max(float(coreg_residual_px), 0.0))
    if w <= 0:
        return float(geom.area), float(geom.area)
    grow = shapely.buffer(geom, w, join_style="mitre", mitre_limit=2.0)
    shrink = shapely.buffer(geom, -w, join_style="mitre", mitre_limit=2.0)
    return float(shrink.area), float(grow.area)


def _check_length_m(name: str, value: float) -> None:
    """Raise ValueError unless ``value`` is a finite number >= 0 (NaN passes every
    comparison, and a negative size turned an area's range inside out)."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or \
            not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def measure_buildings(
    polygons: Sequence[shapely.Geometry],
    crs: object,
    pixel_size_m: float,
    *,
    coreg_residual_px: float = 0.0,
    scores: Sequence[float | None] | None = None,
    partial: Sequence[bool] | None = None,
    measure_crs: object | None = None,
) -> list[Building]:
    """Measure building outlines in m² with their uncertainty.

    Parameters
    ----------
    polygons : sequence of shapely Polygon or MultiPolygon
        Outlines in ``crs``; any CRS: geographic and Mercator inputs are projected to
        the local UTM zone (:func:`metric_crs`) before measuring.
    crs : CRS-like
        CRS of ``polygons``.
    pixel_size_m : float
        Ground pixel size of the imagery the outlines come from, in metres (0 for
        outlines known exactly, e.g. surveyed).
    coreg_residual_px : float
        Co-registration residual (RMS, pixels) added to the half-pixel band.
    scores : sequence of float, optional
        One detection score per polygon.
    partial : sequence of bool, optional
        One per polygon: whether it may be only part of its building
        (:attr:`Building.partial`); default all False.
    measure_crs : CRS-like, optional
        The metric CRS to measure in; default :func:`metric_crs` of the polygons'
        extent. Give it to put several sets of outlines in one CRS.

    Returns
    -------
    list of Building
        In input order, ids 1..N, polygons in the measurement CRS. ``area_m2`` is the
        planimetric area there, or in the polygon's own UTM zone where that CRS's
        scale is not true (:func:`measured_where_true`: a file spanning several
        zones); ``area_m2_min``/``max`` from :func:`area_bounds`, ``perimeter_m``
        likewise;
        ``geodesic_area_m2`` on the WGS84 ellipsoid (a warning is logged when the two
        differ by more than 0.5 %).
    """
    _check_length_m("pixel_size_m", pixel_size_m)
    _check_length_m("coreg_residual_px", coreg_residual_px)
    if not len(polygons):
        return []
    if scores is not None and len(scores) != len(polygons):
        raise ValueError(f"{len(scores)} scores for {len(polygons)} polygons")
    if partial is not None and len(partial) != len(polygons):
        raise ValueError(f"{len(partial)} partial flags for {len(polygons)} polygons")
    crs = _as_crs(crs)
    # Only the polygons of a repaired outline have an area and a perimeter: a spike
    # drawn out and back, repaired, is a line that would count in both.
    areas = [polygonal(shapely.make_valid(p)) for p in polygons]
    empty = [k + 1 for k, p in enumerate(areas) if p.is_empty]
    if empty:
        raise ValueError(f"polygon(s) {', '.join(map(str, empty[:5]))}"
                         f"{' ...' if len(empty) > 5 else ''} of {len(areas)} enclose no "
                         "area (empty, or only lines and points once repaired)")
    metric, mcrs = to_metric(areas, crs, measure_crs)
    geodesics = _geodesic_areas(metric, mcrs)
    local = measured_where_true(metric, mcrs)
    out = []
    for k, (geom, true_geom, geodesic) in enumerate(zip(metric, local, geodesics)):
        area = float(true_geom.area)
        lo, hi = area_bounds(true_geom, pixel_size_m, coreg_residual_px)
        if area > 0 and abs(geodesic - area) > 0.005 * area:
            warn_analyst("building %d: planimetric %.1f m² vs geodesic %.1f m²",
                         k + 1, area, geodesic)
        score = None if scores is None or scores[k] is None else float(scores[k])
        out.append(Building(k + 1, geom, area, min(lo, area), max(hi, area),
                            float(true_geom.length), geodesic, score,
                            partial=bool(partial[k]) if partial is not None else False))
    return out


# --------------------------------------------------------------------------- sites


@dataclass
class Site:
    """Buildings within ``gap_m`` of each other (transitively).

    Attributes
    ----------
    site_id : int
        1-based, by descending built area (ties: west to east, then north to south).
    building_ids : list of int
    envelope : shapely.Polygon
        The site's footprint as an analyst would draw it: the union of its buildings
        closed by a square of side ``gap_m`` turned to the direction of its walls
        (:func:`square_closing`), which fills the yards between the buildings of the
        site straight across but follows its outline, unlike a convex hull.
    built_area_m2, built_area_m2_min, built_area_m2_max : float
        Summed building areas and summed bounds.
    envelope_area_m2, envelope_area_m2_min, envelope_area_m2_max : float
        Envelope area and its half-pixel bounds (:func:`area_bounds` of the envelope).
    verdict : str or None
        Set by :func:`check_claim`.
    """

    site_id: int
    building_ids: list[int]
    envelope: shapely.Geometry
    n_buildings: int
    built_area_m2: float
    built_area_m2_min: float
    built_area_m2_max: float
    envelope_area_m2: float
    envelope_area_m2_min: float
    envelope_area_m2_max: float
    verdict: str | None = None

    def interval(self, basis: str = "footprint") -> tuple[float, float]:
        """``(min, max)`` area in m² on the claim basis ("footprint" or "envelope")."""
        if basis == "footprint":
            return self.built_area_m2_min, self.built_area_m2_max
        if basis == "envelope":
            return self.envelope_area_m2_min, self.envelope_area_m2_max
        raise ValueError(f"basis must be 'footprint' or 'envelope', got {basis!r}")

    def to_properties(self) -> dict[str, Any]:
        """The ``sites.geojson`` properties (areas rounded to 0.1 m²).

        ``building_ids`` is a comma-separated string ("1,4,7") so that GeoPackage,
        which has no list fields, stores it as GeoJSON does.
        """
        props: dict[str, Any] = {
            "site_id": self.site_id,
            "n_buildings": self.n_buildings,
            "building_ids": ",".join(str(i) for i in self.building_ids),
            "built_area_m2": _r1(self.built_area_m2),
            "built_area_m2_min": _r1(self.built_area_m2_min),
            "built_area_m2_max": _r1(self.built_area_m2_max),
            "envelope_area_m2": _r1(self.envelope_area_m2),
            "envelope_area_m2_min": _r1(self.envelope_area_m2_min),
            "envelope_area_m2_max": _r1(self.envelope_area_m2_max),
        }
        if self.verdict is not None:
            props["verdict"] = self.verdict
        return props


def _edge_squares(geom: shapely.Geometry, half: float) -> shapely.Geometry:
    """Union of every edge of ``geom``'s rings swept by an axis-aligned square of
    half-side ``half``: the convex hull of the square's corners at both ends."""
    corners = np.array([(-half, -half), (-half, half), (half, -half), (half, half)])
    rings = shapely.get_rings(shapely.get_parts(geom))
    hulls = []
    for ring in rings:
        xy = shapely.get_coordinates(ring)
        ends = np.concatenate([xy[:-1, None, :] + corners, xy[1:, None, :] + corners], axis=1)
        hulls.append(shapely.convex_hull(shapely.multipoints(ends)))
    return shapely.union_all(np.concatenate(hulls)) if hulls else shapely.Polygon()


def _dominant_angle(geom: shapely.Geometry) -> float:
    """Direction (radians, modulo 90°) of ``geom``'s edges, weighted by their length:
    the argument of the sum of ``length * exp(4 i angle)``, which a square turned
    by a right angle leaves alone."""
    total = 0j
    for ring in shapely.get_rings(shapely.get_parts(geom)):
        d = np.diff(shapely.get_coordinates(ring), axis=0)
        total += np.sum(np.hypot(d[:, 0], d[:, 1]) * np.exp(4j * np.arctan2(d[:, 1], d[:, 0])))
    return float(np.angle(total) / 4.0) if abs(total) > 0 else 0.0


def square_closing(geom: shapely.Geometry, half: float) -> shapely.Geometry:
    """Morphological closing of ``geom`` by a square of half-side ``half``, turned to
    the direction of its edges.

    A yard narrower than ``2 * half`` between buildings that face each other is
    filled straight across, as an analyst would draw a compound's outline: a disk
    dips into a yard between short walls, and bridged none between two 10 m houses
    25 m apart at a 30 m gap. Unlike a buffer with mitred joins (a mitre depends on
    each corner's angle, and outlines moved by 1 cm changed an envelope by up to
    4 %), a Minkowski sum moves no further than the outlines do. The square is
    turned by the length-weighted direction of the edges (modulo 90°), so that a
    compound's closing does not depend on how the grid is oriented.

    Parameters
    ----------
    geom : shapely Polygon or MultiPolygon
        In a metric CRS.
    half : float
        Half the side of the square, in the CRS's units.

    Returns
    -------
    shapely Polygon or MultiPolygon
    """
    if geom.is_empty or half <= 0:
        return geom
    angle = np.degrees(_dominant_angle(geom))
    origin = geom.centroid
    square = shapely.affinity.rotate(geom, -angle, origin=origin)
    dilated = shapely.union(square, _edge_squares(square, half))
    # Erosion: what lies farther than ``half`` (in the square's norm) inside the
    # dilation's outline.
    closed = polygonal(shapely.difference(dilated, _edge_squares(dilated, half)))
    return shapely.affinity.rotate(closed, angle, origin=origin)


def polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """The polygons of ``geom`` (an overlay of outlines that share edges may also give
    lines and points where they graze; an area has none)."""
    # Twice: a collection's parts may be multipolygons (shapely.make_valid gives such).
    parts = [g for g in shapely.get_parts(shapely.get_parts(geom))
             if isinstance(g, shapely.Polygon) and not g.is_empty]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def group_sites(
    buildings: Sequence[Building],
    gap_m: float,
    *,
    pixel_size_m: float = 0.0,
    coreg_residual_px: float = 0.0,
    crs: object | None = None,
) -> list[Site]:
    """Group buildings closer than ``gap_m`` (edge to edge, transitively) into sites.

    Parameters
    ----------
    buildings : sequence of Building
        All in one metric CRS (as returned by :func:`measure_buildings`).
    gap_m : float
        Largest distance between two buildings of one site, in metres.
    pixel_size_m, coreg_residual_px : float
        For the envelope's area bounds (see :func:`area_bounds`).
    crs : CRS-like, optional
        The buildings' CRS. When given, each envelope is measured where its area is
        true (:func:`measured_where_true`), as :func:`measure_buildings` measures
        each building; without it, in the buildings' CRS as it is.

    Returns
    -------
    list of Site
        Ordered and numbered 1.. by descending built area; each building's
        ``site_id`` is set.
    """
    for name, value in (("gap_m", gap_m), ("pixel_size_m", pixel_size_m),
                        ("coreg_residual_px", coreg_residual_px)):
        _check_length_m(name, value)
    if not buildings:
        return []
    geoms = np.asarray([b.polygon for b in buildings], dtype=object)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="dwithin", distance=max(float(gap_m), 0.0))
    n = len(buildings)
    graph = coo_matrix((np.ones(len(left)), (left, right)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(component.tolist()):
        groups.setdefault(c, []).append(i)
    half = max(float(gap_m), 0.0) / 2.0
    members_of = list(groups.values())
    unions = [shapely.union_all([buildings[i].polygon for i in members])
              for members in members_of]
    envelopes = unions
    if half > 0:
        # Never less than the buildings themselves.
        envelopes = [polygonal(shapely.union(square_closing(union, half), union))
                     for union in unions]
    # All measured at once: one transformation for every site of the scene.
    true_envelopes = envelopes if crs is None else measured_where_true(envelopes, crs)
    drafts = []
    for members, union, envelope, true_envelope in zip(members_of, unions, envelopes,
                                                       true_envelopes):
        elo, ehi = area_bounds(true_envelope, pixel_size_m, coreg_residual_px)
        built = sum(buildings[i].area_m2 for i in members)
        cx, cy = union.centroid.x, union.centroid.y
        drafts.append((-built, cx, -cy, members, envelope, built, float(true_envelope.area),
                       elo, ehi))
    drafts.sort(key=lambda d: d[:3])
    sites = []
    for k, (_, _, _, members, envelope, built, env_area, elo, ehi) in enumerate(drafts,
                                                                               start=1):
        ids = sorted(buildings[i].id for i in members)
        for i in members:
            buildings[i].site_id = k
        sites.append(Site(
            site_id=k, building_ids=ids, envelope=envelope, n_buildings=len(members),
            built_area_m2=float(built),
            built_area_m2_min=float(sum(buildings[i].area_m2_min for i in members)),
            built_area_m2_max=float(sum(buildings[i].area_m2_max for i in members)),
            envelope_area_m2=env_area, envelope_area_m2_min=min(elo, env_area),
            envelope_area_m2_max=max(ehi, env_area),
        ))
    return sites


# --------------------------------------------------------------------------- claim

CONSISTENT = "consistent"
SMALLER = "smaller than claimed"
LARGER = "larger than claimed"
NOT_FOUND = "not found"


@dataclass
class ClaimCheck:
    """The verdict on a claim of ``n_sites`` sites of about ``claim_m2`` each.

    Attributes
    ----------
    claim_m2, tolerance : float
        The claim and its relative tolerance: claimed interval
        ``[claim_m2 * (1 - tolerance), claim_m2 * (1 + tolerance)]``.
    n_sites : int
        Number of sites the claim speaks of.
    basis : str
        "footprint" (summed building areas) or "envelope" (site envelope area).
    verdicts : list of dict
        One per claimed site: ``site_id`` (None when not found), ``verdict``,
        ``measured_m2``, ``measured_m2_min``, ``measured_m2_max``, ``claimed_m2_min``,
        ``claimed_m2_max``.
    """

    claim_m2: float
    tolerance: float
    n_sites: int
    basis: str
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def overall(self) -> str:
        """"consistent" when every claimed site is, else "not consistent"."""
        for v in self.verdicts:
            if v["verdict"] != CONSISTENT:
                return "not consistent"
        return CONSISTENT

    def site_verdicts(self) -> dict[int, str]:
        """Verdict of each claimed site found, by ``site_id``.

        The claim's own record: :func:`check_claim` run again on the same sites
        rewrites their ``verdict`` attributes, not this.
        """
        return {v["site_id"]: v["verdict"] for v in self.verdicts if v["site_id"] is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"claim_m2": self.claim_m2, "tolerance": self.tolerance,
                "n_sites": self.n_sites, "basis": self.basis, "overall": self.overall,
                "verdicts": [dict(v) for v in self.verdicts]}


def compare_intervals(measured: tuple[float, float], claimed: tuple[float, float]) -> str:
    """Verdict of a measured ``[min, max]`` against a claimed ``[min, max]`` (m²)."""
    if measured[1] < claimed[0]:
        return SMALLER
    if measured[0] > claimed[1]:
        return LARGER
    return CONSISTENT


def site_of_buildings(sites: Sequence[Site]) -> dict[int, int]:
    """``site_id`` of each building listed by ``sites``, by building ``id``."""
    return {i: s.site_id for s in sites for i in s.building_ids}


def check_claim(
    sites: Sequence[Site],
    claim_m2: float,
    *,
    tolerance: float = 0.10,
    n_sites: int | None = None,
    basis: str = "footprint",
) -> ClaimCheck:
    """Compare each site's measured area interval with the claimed one.

    Rule for which sites the claim speaks of: the ``n_sites`` largest by the chosen
    basis (measured area, ties by site id). When fewer sites were found, the missing
    ones are reported as "not found". Sites beyond the claimed ``n_sites`` keep
    ``verdict = None``. ``n_sites`` defaults to the number of sites found (at least 1).

    Verdicts: "consistent" when the intervals overlap, "smaller than claimed" when the
    whole measured interval lies below the claimed one, "larger than claimed" above.
    Sets ``site.verdict`` on the claimed sites.
    """
    if not claim_m2 > 0:
        raise ValueError(f"the claimed area must be positive, got {claim_m2}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    if basis not in ("footprint", "envelope"):
        raise ValueError(f"basis must be 'footprint' or 'envelope', got {basis!r}")
    if n_sites is not None and (isinstance(n_sites, bool) or int(n_sites) != n_sites):
        raise ValueError(f"the number of claimed sites must be a whole number, got {n_sites!r}")
    n = max(len(sites), 1) if n_sites is None else int(n_sites)
    if n < 1:
        raise ValueError(f"the claim must speak of at least one site, got {n}")
    claimed = (claim_m2 * (1 - tolerance), claim_m2 * (1 + tolerance))

    def measured(s: Site) -> float:
        return s.built_area_m2 if basis == "footprint" else s.envelope_area_m2

    for s in sites:
        s.verdict = None
    chosen = sorted(sites, key=lambda s: (-measured(s), s.site_id))[:n]
    verdicts = []
    for s in sorted(chosen, key=lambda s: s.site_id):
        lo, hi = s.interval(basis)
        s.verdict = compare_intervals((lo, hi), claimed)
        verdicts.append({"site_id": s.site_id, "verdict": s.verdict,
                         "measured_m2": _r1(measured(s)), "measured_m2_min": _r1(lo),
                         "measured_m2_max": _r1(hi), "claimed_m2_min": _r1(claimed[0]),
                         "claimed_m2_max": _r1(claimed[1])})
    for _ in range(n - len(chosen)):
        verdicts.append({"site_id": None, "verdict": NOT_FOUND, "measured_m2": None,
                         "measured_m2_min": None, "measured_m2_max": None,
                         "claimed_m2_min": _r1(claimed[0]),
                         "claimed_m2_max": _r1(claimed[1])})
    return ClaimCheck(float(claim_m2), float(tolerance), n, basis, verdicts)
