"""Writing the outputs of a detection: GeoJSON, GeoPackage, COG, summary, report.

Everything goes first into a temporary folder beside OUTDIR and takes its place only
when complete (a new OUTDIR renamed whole; an existing one filled with staged files),
so that a failed run (bad input, full disk, interruption) leaves OUTDIR as it was.
The file list is the Contract of ``design.md``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyogrio.errors
import pyogrio.raw
import rasterio
import rasterio.shutil
import shapely
from pyproj import CRS, Transformer
from rasterio.io import MemoryFile

from ._log import logger
from .errors import OutputError
from .measure import polygonal, site_of_buildings
from .raster import Grid

if TYPE_CHECKING:
    from .pipeline import DetectionResult

#: Decimal places of lon/lat in GeoJSON: 1e-7 degree is about 1 cm (RFC 7946 §11.2).
GEOJSON_DECIMALS = 7
#: Value of ``change.tif`` outside the analysed area.
CHANGE_NODATA = 255
#: Band tags of ``change.tif``.
CHANGE_TAGS = {"CLASSES": "0=no new building,1=new building,255=no data"}
CHANGE_DESCRIPTION = "new building (1), none (0), no data (255)"
#: change.tif's colours: QGIS shows the band as classes (new buildings red on black,
#: no data grey and transparent) instead of a grey stretch of 0 to 255. A TIFF
#: palette holds no alpha.
CHANGE_COLOURS = {0: (0, 0, 0), 1: (230, 25, 75), 255: (128, 128, 128)}


def describe_change_band(dataset: Any) -> None:
    """Give band 1 of an open, writable change raster its name, class tags and
    colours (QGIS shows the name instead of "Band 1")."""
    dataset.set_band_description(1, CHANGE_DESCRIPTION)
    dataset.update_tags(1, **CHANGE_TAGS)
    dataset.write_colormap(1, CHANGE_COLOURS)

OUTPUT_FILES = (
    "new_buildings.geojson",
    "sites.geojson",
    "new_buildings.gpkg",
    "change.tif",
    "summary.json",
    "report.html",
)

Properties = Sequence[Mapping[str, Any]]


def _plain(value: Any) -> Any:
    """Turn numpy scalars and tuples into JSON-native values, recursively."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_wgs84(geometries: Sequence[shapely.Geometry], crs: Any) -> np.ndarray:
    """Reproject geometries to lon/lat the RFC 7946 way.

    Parameters
    ----------
    geometries : sequence of shapely geometries
        In ``crs``.
    crs : anything pyproj understands
        Their coordinate reference system.

    Returns
    -------
    (N,) ndarray of shapely geometries
        In WGS84 longitude, latitude, rounded to :data:`GEOJSON_DECIMALS` and with
        counter-clockwise exteriors and clockwise holes (oriented after rounding, so
        that rounding cannot flip a ring); a polygon across the antimeridian cut there
        (:func:`split_at_antimeridian`).
    """
    geoms = np.asarray(list(geometries), dtype=object)
    if geoms.size == 0:
        return geoms
    transformer = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326),
                                       always_xy=True)
    lonlat = shapely.transform(geoms, lambda xy: np.column_stack(transformer.transform(
        xy[:, 0], xy[:, 1])))
    lonlat = np.array([split_at_antimeridian(g) for g in lonlat], dtype=object)
    # Rounding each vertex on its own can make a narrow part cross itself; snapping to
    # the grid of the decimals written keeps every geometry valid. The decimal round
    # after it only drops the float residue of the snapped values.
    snapped = shapely.set_precision(lonlat, 10.0**-GEOJSON_DECIMALS)
    # A part narrower than the grid could vanish: such a geometry keeps plain rounding.
    snapped = np.where(shapely.is_empty(snapped) & ~shapely.is_empty(lonlat), lonlat, snapped)
    rounded = shapely.transform(snapped, lambda xy: np.round(xy, GEOJSON_DECIMALS))
    return shapely.orient_polygons(rounded, exterior_cw=False)


def _ring_on_the_globe(ring: shapely.LinearRing) -> shapely.Geometry:
    """What a lon/lat ring encloses, as polygons within [-180, 180] of longitude.

    The ring's longitudes are made continuous (steps under 180°), so that they may run
    past ±180; a ring that then winds round a pole is closed through the pole; and the
    polygon is cut into the parts in [-180, 180] and in the 360° on either side, each
    shifted back into [-180, 180].
    """
    xy = shapely.get_coordinates(ring)
    xy[:, 0] = np.unwrap(xy[:, 0], period=360.0)
    if abs(xy[-1, 0] - xy[0, 0]) > 180.0:
        pole = 90.0 if xy[:, 1].mean() > 0 else -90.0
        xy = np.vstack([xy, [[xy[-1, 0], pole], [xy[0, 0], pole]]])
    whole = shapely.make_valid(shapely.Polygon(xy))
    parts = []
    for turn in (-1, 0, 1):
        band = shapely.box(360.0 * turn - 180.0, -90.0, 360.0 * turn + 180.0, 90.0)
        parts.append(shapely.transform(shapely.intersection(whole, band),
                                       lambda c, t=turn: c - [360.0 * t, 0.0]))
    return shapely.union_all(parts)


def split_at_antimeridian(geom: shapely.Geometry) -> shapely.Geometry:
    """A lon/lat (multi)polygon crossing the antimeridian, cut there (RFC 7946, 3.1.9).

    Parameters
    ----------
    geom : shapely geometry
        In WGS84 longitude, latitude, straight from a vertex-by-vertex transform: an
        edge across the antimeridian jumps by nearly 360° of longitude.

    Returns
    -------
    shapely geometry
        ``geom`` itself when no edge crosses the antimeridian (and for anything but
        polygons); else a Polygon or MultiPolygon with every longitude in [-180, 180]:
        the parts on either side, and a ring round a pole closed through the pole.
    """
    if not isinstance(geom, (shapely.Polygon, shapely.MultiPolygon)):
        return geom
    lon = shapely.get_coordinates(geom)[:, 0]
    # Only an edge across the antimeridian jumps so far: buildings are far smaller.
    if lon.size < 2 or not np.any(np.abs(np.diff(lon)) > 180.0):
        return geom
    regions = []
    for poly in shapely.get_parts(geom):
        region = _ring_on_the_globe(poly.exterior)
        for ring in poly.interiors:
            region = shapely.difference(region, _ring_on_the_globe(ring))
        regions.append(region)
    return polygonal(shapely.union_all(regions))


def geojson_text(geometries: Sequence[shapely.Geometry], properties: Properties,
                 crs: Any) -> str:
    """An RFC 7946 FeatureCollection as text.

    Parameters
    ----------
    geometries : sequence of shapely geometries
        In ``crs``, one per feature.
    properties : sequence of mappings
        One per feature, JSON-serialisable after numpy scalars are made plain.
    crs : anything pyproj understands
        CRS of ``geometries``.

    Returns
    -------
    str
        Deterministic text (same input, same bytes): no ``crs`` member, WGS84
        coordinates with at most 7 decimals, counter-clockwise exteriors.
    """
    if len(geometries) != len(properties):
        raise ValueError("one properties mapping per geometry is needed")
    features = [
        {"type": "Feature", "properties": _plain(props),
         "geometry": shapely.geometry.mapping(geom)}
        for geom, props in zip(to_wgs84(geometries, crs), properties)
    ]
    collection = {"type": "FeatureCollection", "features": features}
    return json.dumps(_plain(collection), ensure_ascii=False, allow_nan=False) + "\n"


def write_geojson(path: str | os.PathLike[str], geometries: Sequence[shapely.Geometry],
                  properties: Properties, crs: Any) -> Path:
    """Write :func:`geojson_text` to ``path`` and return the path."""
    path = Path(path)
    path.write_text(geojson_text(geometries, properties, crs), encoding="utf-8")
    return path


#: The GeoPackage columns of each output layer and their kinds, so that every run
#: writes one schema: an empty layer keeps its columns, and a column whose values
#: are all null keeps its type (QGIS joins and merges runs by these).
BUILDING_FIELDS: dict[str, str] = {
    "id": "int", "area_m2": "float", "area_m2_min": "float", "area_m2_max": "float",
    "perimeter_m": "float", "geodesic_area_m2": "float", "site_id": "int",
    "score": "float", "partial": "bool",
}
SITE_FIELDS: dict[str, str] = {
    "site_id": "int", "n_buildings": "int", "building_ids": "str",
    "built_area_m2": "float", "built_area_m2_min": "float", "built_area_m2_max": "float",
    "envelope_area_m2": "float", "envelope_area_m2_min": "float",
    "envelope_area_m2_max": "float",
}
#: The sites' column when a claim was checked.
VERDICT_FIELD: dict[str, str] = {"verdict": "str"}


def _field_arrays(properties: Properties, kinds: Mapping[str, str] | None = None
                  ) -> tuple[list[str], list[np.ndarray]]:
    """Columns of a list of uniform property mappings, typed for OGR.

    ``kinds`` (column name to ``"bool"``, ``"int"``, ``"float"`` or ``"str"``) fixes
    the columns and their types; without it they are read off the values.
    """
    names = list(kinds) if kinds is not None else \
        list(properties[0].keys()) if properties else []
    arrays: list[np.ndarray] = []
    for name in names:
        values = [_plain(p.get(name)) for p in properties]
        kinds_seen = {type(v) for v in values if v is not None}
        kind = kinds[name] if kinds is not None else None
        if kind == "bool" or kind is None and kinds_seen == {bool} and None not in values:
            arrays.append(np.asarray(values, dtype=bool))  # OGR's boolean subtype
        elif (kind == "int" or kind is None and kinds_seen <= {int, bool}) and None not in values:
            arrays.append(np.asarray(values, dtype=np.int64))
        elif kind in ("int", "float") or kind is None and kinds_seen <= {int, float, bool}:
            # (An integer column with nulls is written as real, its nulls as NaN.)
            arrays.append(np.asarray([np.nan if v is None else v for v in values],
                                     dtype=np.float64))
        else:
            # None stays None, which OGR writes as NULL: an empty string would read
            # as a value (a site beyond --claim-sites has no verdict, not "").
            arrays.append(np.asarray([None if v is None else
                                      (json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                                      for v in values], dtype=object))
    return names, arrays


def write_gpkg(path: str | os.PathLike[str],
               layers: Mapping[str, tuple[Sequence[shapely.Geometry], Properties]],
               crs: Any, fields: Mapping[str, Mapping[str, str]] | None = None) -> Path:
    """Write several polygon layers into one GeoPackage, in ``crs`` (metres).

    Parameters
    ----------
    path : str or path-like
        The ``.gpkg`` file; must not exist yet.
    layers : mapping of name to (geometries, properties)
        Written in the mapping's order.
    crs : anything pyproj understands
        Written as WKT so that any reader recovers it.
    fields : mapping of layer name to its column kinds, optional
        As :data:`BUILDING_FIELDS`; a layer without them takes its columns from its
        rows, and an empty one gets a single ``id`` column.
    """
    path = Path(path)
    wkt = CRS.from_user_input(crs).to_wkt()
    for i, (name, (geoms, props)) in enumerate(layers.items()):
        geoms = list(geoms)
        if len(geoms) != len(props):
            raise ValueError(f"layer {name}: one properties mapping per geometry is needed")
        names, arrays = _field_arrays(props, (fields or {}).get(name))
        if not names:
            names, arrays = ["id"], [np.zeros(0, dtype=np.int64)]
        # Polygons and MultiPolygons mix in one layer only as MultiPolygon; rings
        # counter-clockwise outside, clockwise in holes, as in the GeoJSON (a convex
        # hull's envelope came out clockwise).
        multi = [g if isinstance(g, shapely.MultiPolygon) else shapely.MultiPolygon([g])
                 for g in shapely.orient_polygons(np.asarray(geoms, dtype=object),
                                                  exterior_cw=False)] if geoms else []
        try:
            pyogrio.raw.write(
                path, geometry=np.asarray(shapely.to_wkb(multi), dtype=object) if multi
                else np.zeros(0, dtype=object),
                field_data=arrays, fields=names, layer=name, driver="GPKG",
                geometry_type="MultiPolygon", crs=wkt, append=i > 0, promote_to_multi=False,
                # GeoPackage 1.2, which every GDAL since 2.2 reads in full: GDAL's
                # default of 1.4 is "only partially supported" by GDAL 3.6 (the QGIS of
                # Debian 12), which says so on opening.
                dataset_options=None if i > 0 else {"VERSION": "1.2"},
            )
        except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError,
                pyogrio.errors.FeatureError, pyogrio.errors.FieldError) as exc:
            # (SQLite's own limits, such as a path too long for it, surface here.)
            raise OSError(errno.EIO, str(exc).splitlines()[0] if str(exc) else "GDAL error",
                          str(path)) from exc
    return path


def write_cog(path: str | os.PathLike[str], data: np.ndarray, grid: Grid,
              nodata: int = CHANGE_NODATA) -> Path:
    """Write a uint8 class raster as a Cloud-Optimized GeoTIFF.

    Parameters
    ----------
    path : str or path-like
        Destination file.
    data : (H, W) ndarray of uint8
        On ``grid``.
    grid : Grid
        Georeference of ``data``.
    nodata : int
        Value marking pixels outside the analysed area.

    Notes
    -----
    GDAL's ``COG`` driver lays out the IFDs before the data and builds the
    overviews; they use nearest-neighbour resampling because averaging class codes
    (0, 1, 255) would invent classes.
    """
    if data.shape != grid.shape or data.dtype != np.uint8:
        raise ValueError(f"expected a {grid.shape} uint8 array, got {data.shape} {data.dtype}")
    profile = {"driver": "GTiff", "height": grid.height, "width": grid.width, "count": 1,
               "dtype": "uint8", "crs": grid.crs, "transform": grid.transform,
               "nodata": nodata}
    with MemoryFile() as mem:
        with mem.open(**profile) as src:
            src.write(data, 1)
            describe_change_band(src)
        with mem.open() as src:
            _copy_as_cog(src, path)
    return Path(path)


def copy_as_cog(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Copy a uint8 class raster file (e.g. a windowed run's change mask) as a COG.

    GDAL streams the copy block by block; with a small block cache, memory stays
    small for any size.
    """
    with rasterio.Env(GDAL_CACHEMAX=128 * 2**20), rasterio.open(source) as src:
        _copy_as_cog(src, path)
    return Path(path)


def _copy_as_cog(src: Any, path: str | os.PathLike[str]) -> None:
    # GDAL's COG driver lays out the IFDs before the data and builds the overviews
    # (nearest: averaging class codes would invent classes); tags are copied.
    rasterio.shutil.copy(
        src, os.fspath(path), driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE",
        PREDICTOR="NO", RESAMPLING="NEAREST", OVERVIEW_RESAMPLING="NEAREST",
        NUM_THREADS=1,
    )


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-order-preserving JSON (no NaN)."""
    path = Path(path)
    path.write_text(json.dumps(_plain(obj), indent=2, ensure_ascii=False, allow_nan=False)
                    + "\n", encoding="utf-8")
    return path


def _output_error(exc: OSError, outdir: Path) -> OutputError:
    """The error named after the output folder (the file that failed lay in a
    temporary folder the user never sees, and which is gone by now)."""
    what = f" {Path(exc.filename).name}" if exc.filename else ""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    return OutputError(f"{outdir}: cannot write{what} ({reason}); nothing was changed "
                       "in the output folder")


# GDAL's archive readers, and the URI schemes rasterio maps onto local files: an input
# spelt any of these ways may still be a file inside OUTDIR.
_ARCHIVE_PREFIXES = ("/vsizip/", "/vsitar/", "/vsigzip/", "/vsi7z/", "/vsirar/")
_ARCHIVE_SCHEMES = frozenset({"zip", "tar", "gzip"})
# rasterio's remote schemes (``rasterio._path.REMOTESCHEMES``), last part of "zip+s3".
_REMOTE_SCHEMES = frozenset({"http", "https", "ftp", "s3", "gs", "az", "oss"})


def resolved_path(path: str | os.PathLike[str]) -> Path | None:
    """The local file ``path`` reads from, with links and ".." resolved.

    A GDAL archive path (``/vsizip/a.zip/x.tif``, ``/vsizip/{a.zip}/x.tif``) or a
    rasterio URI (``zip:///a.zip!x.tif``, ``file:///x.tif``, ``vrt:///x.tif?bands=1``)
    gives the archive or file itself; a remote URI (``s3://``, ``https://``) gives
    None: it cannot lie in a local folder.
    """
    text = os.fspath(path)
    scheme, sep, rest = text.partition("://")
    if sep and len(scheme) > 1 and "/" not in scheme and "\\" not in scheme:
        parts = scheme.lower().split("+")
        if parts[-1] in _REMOTE_SCHEMES:
            return None
        if parts[0] == "vrt":  # GDAL's vrt:// connection string: options after "?"
            return resolved_path(rest.split("?", 1)[0])
        # rasterio's archive spelling: the archive before "!", the member after it.
        text = rest.split("!", 1)[0] if parts[0] in _ARCHIVE_SCHEMES else rest
    elif text.startswith("/vsisubfile/"):  # /vsisubfile/offset_size,path
        return resolved_path(text.split(",", 1)[1]) if "," in text else None
    elif text.startswith(_ARCHIVE_PREFIXES):
        while text.startswith(_ARCHIVE_PREFIXES):  # chains: /vsitar//vsigzip/a.tar.gz
            text = text[text.index("/", 1) + 1:]
        if text.startswith("{") and "}" in text:  # GDAL's braces around the archive
            return resolved_path(text[1:text.index("}")])
        rest_path = Path(text)
        # The archive is the longest leading part of the path that is a file.
        for candidate in [rest_path, *rest_path.parents]:
            try:
                is_file = candidate.is_file()
            except OSError:  # e.g. a folder on the way that cannot be read
                is_file = False
            if is_file:
                text = os.fspath(candidate)
                break
    try:
        return Path(text).resolve()
    except (OSError, RuntimeError, ValueError):  # ValueError: an embedded NUL
        return Path(text).absolute()


def _same_folder_on_the_way(source: Path, folder: os.stat_result) -> bool:
    """Whether ``source`` or a folder above it is the folder ``folder`` (by device and
    inode: a bind mount shows one folder at two paths)."""
    for path in (source, *source.parents):
        try:
            if os.path.samestat(path.stat(), folder):
                return True
        except OSError:
            continue
    return False


def check_outdir(outdir: str | os.PathLike[str], overwrite: bool = False,
                 inputs: Sequence[str | os.PathLike[str] | None] = ()) -> Path:
    """Refuse an output folder that cannot be written, before any work is done.

    That includes a place to stage the outputs in (:func:`_staging_parent`).

    Parameters
    ----------
    outdir : str or path-like
    overwrite : bool
        A non-empty ``outdir`` will be replaced.
    inputs : sequence of path-like, optional
        The run's input files: replacing a folder that holds one would delete it.

    Returns
    -------
    Path
        ``outdir`` made absolute, through any symbolic link (the link stays, and the
        folder it points to receives the outputs).

    Raises
    ------
    OutputError
        ``outdir`` is a file, is not empty (without ``overwrite``), holds an input
        (with ``overwrite``), cannot be written, or its parent folder does not
        exist or cannot be written (unless ``outdir`` exists and can be).
    """
    final = _checked_outdir(outdir, overwrite, inputs)
    _staging_parent(final)
    return final


def _checked_outdir(outdir: str | os.PathLike[str], overwrite: bool,
                    inputs: Sequence[str | os.PathLike[str] | None]) -> Path:
    """:func:`check_outdir` without the staging probe (which :func:`atomic_folder`
    runs itself, to learn where to stage)."""
    try:
        # Every link followed and every ".." collapsed, as the inputs' paths are: a
        # symlinked parent folder must not hide that OUTDIR holds an input.
        final = Path(outdir).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop
        raise OutputError(f"{outdir}: cannot be resolved ({exc})") from exc
    if final.exists():
        if not final.is_dir():
            raise OutputError(f"{outdir}: exists and is not a folder")
        try:
            non_empty = any(final.iterdir())
        except OSError as exc:  # e.g. mode 0333
            raise OutputError(f"{outdir}: folder cannot be read ({exc.strerror or exc})"
                              ) from exc
        if not overwrite and non_empty:
            raise OutputError(f"{outdir}: folder is not empty; use --overwrite "
                              "(overwrite=True in Python) to replace it")
        final_stat = final.stat()
        for path in inputs:
            if path is None:
                continue
            source = resolved_path(path)
            # (And as a last resort, OUTDIR spelt out inside a GDAL or URI wrapper
            # that resolved_path does not know.)
            text = os.fspath(path)
            wrapped = text.startswith("/vsi") or "://" in text
            # (OUTDIR itself is an input when the AOI is given as a folder; and one
            # folder may be mounted at two paths, which only the inodes tell.)
            if ((source is not None and (source == final or final in source.parents
                                         or _same_folder_on_the_way(source, final_stat)))
                    or (wrapped and f"{final}{os.sep}" in text)):
                raise OutputError(f"{outdir}: holds the input {path}, which --overwrite "
                                  "(overwrite=True) would delete; write to another folder")
        # An existing folder is filled in place: one that refuses writing
        # (read-only or immutable) would fail only after the whole run.
        if not os.access(final, os.W_OK | os.X_OK):
            raise OutputError(f"{outdir}: folder cannot be written")
    if not final.parent.is_dir():
        raise OutputError(f"{final.parent}: no such folder")
    return final


def _staging_parent(final: Path) -> Path:
    """The folder that takes the temporary folder the outputs are written into.

    Beside ``final``, so that the finished folder replaces it in one rename; inside
    an existing ``final`` when that is a mount point (a container's volume, which
    cannot be renamed and whose parent is often not writable) or when only ``final``
    itself can be written.

    Raises
    ------
    OutputError
        Neither can be written.
    """
    places = [final.parent]
    if final.is_dir():
        places = [final] if os.path.ismount(final) else [final.parent, final]
    error: OSError | None = None
    for place in places:
        try:
            probe = Path(tempfile.mkdtemp(prefix=_hidden_prefix(final, "check"), dir=place))
        except OSError as exc:
            error = exc if error is None else error
            continue
        try:
            # The GeoPackage goes through SQLite, whose path limit is shorter than the
            # system's: found out here, not after the whole run.
            write_gpkg(probe / "new_buildings.gpkg", {"probe": ([], [])}, "EPSG:4326")
        except OSError as exc:
            hint = "; is the path too long?" if len(str(final)) > 1000 else ""
            reason = ("no space left on device" if exc.errno == errno.ENOSPC
                      else exc.strerror or str(exc))
            raise OutputError(f"{final}: cannot write a GeoPackage there ({reason}){hint}"
                              ) from exc
        finally:
            shutil.rmtree(probe, ignore_errors=True)
        return place
    assert error is not None
    raise OutputError(f"{places[0]}: cannot write here ({error.strerror or error})") from error


def _hidden_prefix(final: Path, kind: str) -> str:
    """Prefix of the hidden temporary names made beside or inside ``final``: its name
    cut short, so that a name near the system's 255-byte limit still leaves room."""
    return f".{final.name[:64]}.{kind}-"


def _fill_in_place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Put the files of ``tmp`` into the existing folder ``final``, keeping the folder.

    Every new file is first moved (copied, across file systems) into ``final`` under
    a unique hidden name. Then, all by renames within ``final``: the old content
    (only with ``overwrite``) goes into a hidden folder, the new files take their
    names, and the hidden folder is deleted. A failure or an interruption before
    that last step puts everything back: ``final`` is left as it was.
    """
    # Every step is recorded before it is taken (a Ctrl-C lands between a call and
    # the next statement), and undone only where it took effect.
    staged: list[tuple[Path, Path]] = []
    moved: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    aside: Path | None = None
    done = False
    try:
        for src in sorted(tmp.iterdir()):
            part = final / f".{src.name}.{secrets.token_hex(6)}.part"
            staged.append((part, final / src.name))
            shutil.move(src, part)  # a rename when on the same file system
        # Listed now, after the long copy: another run that filled the folder
        # meanwhile is seen.
        ours = {tmp} | {part for part, _ in staged}
        old = [path for path in final.iterdir() if path not in ours]
        if old and not overwrite:
            raise OutputError(f"{final}: folder is not empty; use --overwrite "
                              "(overwrite=True in Python) to replace it")
        if old:
            aside = final / f"{_hidden_prefix(final, 'old')}{secrets.token_hex(6)}"
            aside.mkdir()
            for path in old:
                moved.append((path, aside / path.name))
                os.rename(path, aside / path.name)
        for part, dst in staged:
            placed.append(dst)
            os.replace(part, dst)
        done = True
    except OSError as exc:
        raise _output_error(exc, final) from exc
    finally:
        if not done:  # also on Ctrl-C: put the folder back as it was
            try:
                for dst in placed:
                    if os.path.lexists(dst):
                        dst.unlink()
                for path, target in reversed(moved):
                    if os.path.lexists(target):
                        os.rename(target, path)
                for part, _ in staged:
                    part.unlink(missing_ok=True)
            except OSError as undo:
                # Nothing deleted yet: the old content waits in the hidden folder.
                raise OutputError(f"{final}: could not put its old content back "
                                  f"({undo.strerror or undo}); it is in {aside}") from undo
        if aside is not None and aside.exists():
            shutil.rmtree(aside, ignore_errors=True)
            if aside.exists():
                logger.warning("%s: part of its old content could not be deleted; it is in "
                               "%s", final, aside.name)
    # Made beside the folder and moved in, the files did not take its group as files
    # made in a setgid folder do. (After the outputs are in place: nothing here may
    # undo them.)
    with contextlib.suppress(OSError):  # e.g. not a member of the group
        folder = final.stat()
        if folder.st_mode & stat.S_ISGID:
            for dst in placed:
                os.chown(dst, -1, folder.st_gid)


@contextlib.contextmanager
def atomic_folder(outdir: str | os.PathLike[str], overwrite: bool = False,
                  inputs: Sequence[str | os.PathLike[str] | None] = ()) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``outdir`` only if the block succeeds.

    Parameters
    ----------
    outdir : str or path-like
        The final folder. It may not exist yet, or be empty; a non-empty one is
        replaced only with ``overwrite``.
    overwrite : bool
        Allow replacing a non-empty ``outdir``: its old content is removed only once
        every new file is staged inside it (an existing folder keeps its mode,
        group and inode; a new one is renamed into place whole).
    inputs : sequence of path-like, optional
        Files that must survive: an ``outdir`` holding one is refused.

    Raises
    ------
    OutputError
        ``outdir`` is a file, is non-empty without ``overwrite``, or its parent is
        not writable; any OSError raised inside the block (full disk...) is turned
        into an OutputError after the temporary folder is removed.
    """
    final = _checked_outdir(outdir, overwrite, inputs)
    parent = _staging_parent(final)  # (the one probe of the run)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_hidden_prefix(final, "part"), dir=parent))
    except OSError as exc:
        raise OutputError(f"{parent}: cannot write here ({exc.strerror or exc})") from exc
    try:
        try:
            yield tmp
        except OSError as exc:
            raise _output_error(exc, final) from exc
        # mkdtemp makes a private (0700) folder; the result is an ordinary folder.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if final.exists():
            # An existing folder keeps its identity (mode, group, ACLs, inode: a
            # shell inside it) and takes the files; without --overwrite it must still
            # be empty (another run may have filled it meanwhile).
            _fill_in_place(tmp, final, overwrite)
            return
        try:
            os.replace(tmp, final)  # atomic; replaces an empty folder made meanwhile
        except OSError as exc:
            if not final.is_dir():
                raise _output_error(exc, final) from exc
            # Another run made and filled it in the meantime: refused, or replaced.
            _fill_in_place(tmp, final, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def building_records(buildings: Sequence[Any], sites: Sequence[Any] | None = None
                     ) -> tuple[list[shapely.Geometry], list[dict]]:
    """Geometries and Contract properties of :class:`changedet.measure.Building` objects.

    With ``sites`` (:class:`changedet.measure.Site`), each building's ``site_id`` is
    that of the site listing it (None if none does), not the building's attribute:
    :func:`changedet.measure.group_sites` run again on a result's buildings (a
    notebook's "what if") renumbers theirs, and the files must still agree with the
    result's sites.
    """
    props = [b.to_properties() for b in buildings]
    if sites is not None:
        site_of = site_of_buildings(sites)
        for b, row in zip(buildings, props):
            row["site_id"] = site_of.get(b.id)
    return [b.polygon for b in buildings], props


def standing_records(buildings: Sequence[Any], crs: Any) -> list[dict]:
    """``summary.json`` records of the buildings left out as standing before.

    Each gives the measured areas and a point inside the outline in WGS84
    (``lon``, ``lat``), enough to find and review it.
    """
    points = to_wgs84([shapely.point_on_surface(b.polygon) for b in buildings], crs)
    return [{"standing_id": b.id, "area_m2": round(float(b.area_m2), 1),
             "area_m2_min": round(float(b.area_m2_min), 1),
             "area_m2_max": round(float(b.area_m2_max), 1),
             "lon": float(p.x), "lat": float(p.y)} for b, p in zip(buildings, points)]


def site_records(sites: Sequence[Any], claim: Any | None) -> tuple[list[shapely.Geometry],
                                                                  list[dict]]:
    """Envelopes and Contract properties of :class:`changedet.measure.Site` objects.

    With a ``claim`` (:class:`changedet.measure.ClaimCheck`) every site has a
    ``verdict``, the claim's (null for sites beyond the number it speaks of), so that
    all features share one schema. The verdicts come from the claim, not from the
    sites: :func:`changedet.measure.check_claim` run again on a result's sites (a
    notebook's "what if") rewrites theirs, and the files must still agree with
    ``summary.json``, which holds the claim.
    """
    verdicts = {} if claim is None else claim.site_verdicts()
    props = []
    for s in sites:
        row = s.to_properties()
        row.pop("verdict", None)
        if claim is not None:
            row["verdict"] = verdicts.get(s.site_id)
        props.append(row)
    return [s.envelope for s in sites], props


def write_outputs(result: DetectionResult, outdir: str | os.PathLike[str],
                  overwrite: bool = False) -> dict[str, Path]:
    """Write every Contract output of a detection into ``outdir``, atomically.

    Parameters
    ----------
    result : changedet.pipeline.DetectionResult
        What :func:`changedet.pipeline.run_detection` returned.
    outdir : str or path-like
        Destination folder (see :func:`atomic_folder` for the overwrite rules).
    overwrite : bool
        Replace a non-empty ``outdir``.

    Returns
    -------
    dict of str to Path
        The final path of each file in :data:`OUTPUT_FILES`.
    """
    from .report import render_report

    crs = result.crs
    b_geoms, b_props = building_records(result.buildings, result.sites)
    s_geoms, s_props = site_records(result.sites, result.claim)
    html = render_report(result)  # before any file is written: a failure changes nothing
    # summary.json's inputs: the scenes' records (with their paths) and the AOI's path.
    inputs = [v.get("path") if isinstance(v, dict) else v
              for v in (result.summary.get("inputs") or {}).values()]
    with atomic_folder(outdir, overwrite, [p for p in inputs if isinstance(p, str)]) as tmp:
        write_geojson(tmp / "new_buildings.geojson", b_geoms, b_props, crs)
        write_geojson(tmp / "sites.geojson", s_geoms, s_props, crs)
        write_gpkg(tmp / "new_buildings.gpkg",
                   {"new_buildings": (b_geoms, b_props), "sites": (s_geoms, s_props)},
                   crs.to_wkt(),
                   {"new_buildings": BUILDING_FIELDS,
                    "sites": SITE_FIELDS | (VERDICT_FIELD if result.claim is not None else {})})
        if result.change_mask is None:
            copy_as_cog(result.change_path, tmp / "change.tif")
        else:
            write_cog(tmp / "change.tif", result.change_mask, result.grid)
        write_json(tmp / "summary.json", result.summary)
        (tmp / "report.html").write_text(html, encoding="utf-8")
    return {name: Path(outdir) / name for name in OUTPUT_FILES}
