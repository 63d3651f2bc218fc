"""``changedet evaluate PRED TRUTH``: score detections against truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .._log import logger
from .detect import apply_verbosity, verbosity_options
from .options import FiniteFloatRange, echo_json, handle_errors

_RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".png"}


def _read_vector(path: str) -> tuple[list[Any], Any]:
    """Polygons (one per feature, with its id) and the CRS of a vector file."""
    import warnings

    import numpy as np
    import pyogrio
    import pyogrio.errors
    import shapely
    from rasterio.crs import CRS

    from ..aoi import polygon_layer
    from ..errors import InputError
    from ..measure import coordinate_range_problem, polygonal

    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
        # A file of several layers (detect's GeoPackage holds new_buildings and
        # sites): the buildings' layer when there is one, else the first polygon one.
        layer = "new_buildings" if "new_buildings" in layers else polygon_layer(path)
        meta, _fids, geometry, field_data = pyogrio.raw.read(path, layer=layer)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:
        raise InputError(path, f"not a vector file GDAL can read ({exc})") from exc
    if geometry is None:
        raise InputError(path, "has no geometry column")
    if meta.get("crs") is None:
        raise InputError(path, "has no CRS; assign one first (e.g. with ogr2ogr -a_srs)")
    crs = CRS.from_user_input(meta["crs"])
    with warnings.catch_warnings():
        # shapely warns of a NaN coordinate; such a feature is named just below.
        warnings.simplefilter("ignore", RuntimeWarning)
        geoms = shapely.from_wkb(geometry)
    fields = list(meta.get("fields", []))
    id_col = next((i for i, f in enumerate(fields) if f in ("id", "ID", "fid")), None)
    out = []
    others = flat = 0
    for k, g in enumerate(geoms):
        if g is None or g.is_empty:
            continue
        if not np.isfinite(shapely.get_coordinates(g)).all():
            raise InputError(path, f"feature {k + 1} has a coordinate that is not a number")
        # The polygons of a collection (as PostGIS's ST_MakeValid gives) are its
        # footprint; a polygon without area (collinear vertices) is none, and would
        # be scored as a false building of 0 m².
        area = polygonal(g)
        if area.is_empty:
            others += 1
            continue
        if area.area == 0:
            flat += 1
            continue
        ident = field_data[id_col][k] if id_col is not None else k
        ident = ident.item() if hasattr(ident, "item") else ident
        if isinstance(ident, float):
            # A null id in a numeric column comes as NaN, and the others as floats.
            ident = None if not np.isfinite(ident) else int(ident) if ident.is_integer() \
                else ident
        out.append((ident, g if g.geom_type in ("Polygon", "MultiPolygon") else area))
    if flat:
        logger.warning("%s: %d polygon(s) without area left out", path, flat)
    if (others or flat) and not out:
        # Points or lines are no footprints: scoring them as "nothing" would read as
        # a detector that found nothing.
        raise InputError(path, "contains no polygon with an area (only points, lines "
                               "or flat polygons)")
    if out:
        # Projected coordinates labelled lon/lat (a common slip) fail deep in PROJ,
        # or lie nowhere near the other side and score as false buildings.
        problem = coordinate_range_problem(
            crs, shapely.total_bounds(np.asarray([g for _, g in out], dtype=object)))
        if problem:
            raise InputError(path, f"has {problem}: is its CRS right?")
    return out, crs


def _read_mask(path: str) -> tuple[Any, Any, Any]:
    """(H, W) int array (0 = background), valid mask and Grid of a mask raster."""
    import warnings

    import numpy as np
    import rasterio
    from rasterio.errors import RasterioIOError

    from ..errors import InputError
    from ..raster import Grid

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as ds:
                if ds.crs is None:
                    raise InputError(path, "has no CRS")
                if ds.count != 1:
                    raise InputError(path, f"has {ds.count} bands; a mask or label raster "
                                           "has one (is this an image?)")
                data = ds.read(1)
                is_change_tif = "CLASSES" in ds.tags(1)
                nodata = ds.nodata
                values = np.unique(data)
                foreground = values[values != 0]
                if nodata == 0:
                    # In a mask, 0 is the background: a nodata tag of 0 (as GIS
                    # rasterisers often write) would leave nothing but buildings to score.
                    logger.warning("%s: nodata value 0 read as background, not no data", path)
                    valid = np.ones(data.shape, bool)
                else:
                    valid = ds.read_masks(1) > 0
                    if (not is_change_tif and nodata is not None
                            and foreground.size == 1 and foreground[0] == nodata):
                        # An empty prediction with a nodata margin, or a 0/255 mask
                        # wrongly tagged 255 (its buildings then all vanish): the file
                        # cannot tell; its tag is followed, and the choice said.
                        logger.warning(
                            "%s: its only non-zero value is its nodata value %g, read as "
                            "no data (no building); if those pixels are buildings, remove "
                            "the tag (gdal_edit.py -unsetnodata)", path, nodata)
                grid = Grid(ds.crs, ds.transform, ds.height, ds.width)
    except RasterioIOError as exc:
        raise InputError(path, f"not a raster GDAL can read ({exc})") from exc
    if data.dtype == np.uint8:
        present = set(values.tolist())
        # change.tif's convention (0, 1, 255 = no data) even when the nodata tag was
        # lost on the way; but a plain 0/255 mask (LEVIR-CD's, and most exports) has
        # its buildings at 255.
        if present <= {0, 1, 255} and (is_change_tif or 1 in present):
            valid &= data != 255
    if not valid.any():
        # Else every score would be perfect: nothing to find, nothing found.
        raise InputError(path, "has no valid pixel (all no data)")
    if not is_change_tif and foreground.size > 2:
        # A mask resampled with interpolation (one value inside the buildings, grey
        # ones along their edges) would score as hundreds of objects. A label image
        # has one value per object: objects that touch share a part, but no value
        # holds a quarter of the pixels while far more values than parts are seen.
        from scipy import ndimage

        _, n_parts = ndimage.label((data > 0) & valid)
        _, counts = np.unique(data[(data > 0) & valid], return_counts=True)
        if foreground.size > 4 * n_parts + 2 and counts.max() > 0.25 * counts.sum():
            top = float(data[valid].max())
            logger.warning("%s: %d values in %d object(s): read as a mask resampled with "
                           "interpolation, buildings where the value is %g or more", path,
                           foreground.size, n_parts, top / 2)
            data = (data >= top / 2).astype(np.uint8)
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(np.nan_to_num(data)).astype(np.int64)
    data = np.where(valid & (data > 0), data, 0)  # values > 0 are buildings
    if data.max() > np.iinfo(np.int32).max:
        # Labels are moved between grids as int32: ids past its range are renumbered
        # 1..n first, in the same order.
        ids, inverse = np.unique(data, return_inverse=True)
        data = inverse.reshape(data.shape) + (0 if ids[0] == 0 else 1)
    return data, valid, grid


def _is_raster(path: str) -> bool:
    return Path(path).suffix.lower() in _RASTER_SUFFIXES


def _load(pred: str, truth: str) -> tuple[Any, Any, Any, Any, Any]:
    """Both sides in one metric frame: (pred, truth, grid or None, valid or None, the
    polygons' CRS when neither side is a raster)."""
    import numpy as np
    import shapely
    from rasterio.warp import Resampling, reproject, transform_bounds

    from ..errors import InputError
    from ..measure import metric_crs, reproject_geoms
    from ..raster import analysis_grid, check_path

    for path in (pred, truth):
        check_path(path)
    sides: list[Any] = []
    for path in (pred, truth):
        sides.append(("raster", *_read_mask(path)) if _is_raster(path)
                     else ("vector", *_read_vector(path)))
    rasters = [s for s in sides if s[0] == "raster"]
    if rasters:
        grid0 = rasters[0][3]
        grid = analysis_grid(grid0)
    else:
        grid = None
    # A raster side has an extent: the other side must reach into it, or there is
    # nothing to compare (every score would be 0 or undefined without saying why).
    if grid is not None:
        first = pred if sides[0][0] == "raster" else truth
        extent = shapely.box(*grid.bounds)
        for path, side in zip((pred, truth), sides):
            if path == first and side[0] == "raster":
                continue
            if side[0] == "raster":
                g = side[3]
                bounds = transform_bounds(g.crs, grid.crs, *g.bounds, densify_pts=21)
                if not extent.intersects(shapely.box(*bounds)):
                    raise InputError(path, f"does not overlap {first}")
            elif side[1]:
                geoms = [g for _, g in side[1]]
                if side[2] != grid.crs:
                    geoms = reproject_geoms(geoms, side[2], grid.crs)
                if not any(extent.intersects(g) for g in geoms):
                    raise InputError(path, f"no polygon lies within {first}")
    out: list[Any] = []
    valid = None
    for side in sides:
        if side[0] == "raster":
            _, data, ok, g = side
            if g != grid:
                # Masks move between grids by nearest neighbour: labels stay labels.
                moved = np.zeros(grid.shape, dtype=np.int32)
                reproject(data.astype(np.int32), moved, src_transform=g.transform,
                          src_crs=g.crs, dst_transform=grid.transform, dst_crs=grid.crs,
                          resampling=Resampling.nearest)
                okm = np.zeros(grid.shape, dtype=np.uint8)
                reproject(ok.astype(np.uint8), okm, src_transform=g.transform,
                          src_crs=g.crs, dst_transform=grid.transform, dst_crs=grid.crs,
                          resampling=Resampling.nearest)
                data, ok = moved, okm.astype(bool)
            valid = ok if valid is None else (valid & ok)
            out.append(data)
        else:
            out.append(side)
    # Vectors go to the grid's CRS, or (both vectors) to a metric CRS chosen from truth.
    if grid is not None:
        target = grid.crs
    else:
        # The truth's polygons choose the frame; the prediction's when there are none.
        items, crs = next(((s[1], s[2]) for s in (sides[1], sides[0]) if s[1]),
                          ([], None))
        if not items:  # nothing on either side: nothing to measure
            return [], [], None, None, None
        geoms = [g for _, g in items]
        target = metric_crs(crs, shapely.total_bounds(np.asarray(geoms, dtype=object)))
    for k, side in enumerate(out):
        if isinstance(side, tuple):
            _, items, crs = side
            geoms = reproject_geoms([g for _, g in items], crs, target) if crs != target \
                else [g for _, g in items]
            out[k] = [(i, g) for (i, _), g in zip(items, geoms)]
    if grid is None and out[0] and out[1]:
        extent = [shapely.box(*shapely.total_bounds(np.asarray([g for _, g in side],
                                                                dtype=object)))
                  for side in out]
        if not extent[0].intersects(extent[1]):
            logger.warning("%s: no polygon lies within the extent of %s; are they of "
                           "the same place?", pred, truth)
    return out[0], out[1], grid, valid, (target if grid is None else None)


#: How the pixel scores were counted, as the table names it.
_BASIS = {"pixels": "counted on the raster's grid", "area": "from the polygons' areas"}


def _table(result: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "-" if v is None else str(v)

    lines = [
        f"objects (IoU >= {result['iou_threshold']}): "
        f"{result['n_pred']} predicted, {result['n_truth']} true",
        f"  TP {result['tp']}  FP {result['fp']}  FN {result['fn']}",
        f"  precision {result['precision']:.3f}  recall {result['recall']:.3f}  "
        f"F1 {result['f1']:.3f}",
        f"pixels ({_BASIS.get(result['pixel_basis'], result['pixel_basis'])}): "
        f"IoU {result['pixel_iou']:.3f}  "
        f"F1 {result['pixel_f1']:.3f}  precision {result['pixel_precision']:.3f}  "
        f"recall {result['pixel_recall']:.3f}",
        f"area: predicted {result['pred_area_m2']} m², true {result['truth_area_m2']} m², "
        f"error {fmt(result['total_area_error_pct'])} %",
        f"mean |object area error|: {fmt(result['mean_abs_object_area_error_pct'])} %",
    ]
    outside = result.get("n_outside_valid") or {}
    if any(outside.values()):
        # Else only --json said why the counts fall short of the files' objects.
        lines.insert(2, f"  not counted, less than half on valid pixels of the raster side: "
                        f"{outside.get('pred', 0)} predicted, {outside.get('truth', 0)} true")
    rows = result["per_object"]
    if rows:
        head = ("status", "pred_id", "truth_id", "iou", "pred_m2", "truth_m2", "err_%")
        keys = ("status", "pred_id", "truth_id", "iou", "pred_area_m2", "truth_area_m2",
                "area_error_pct")
        body = [[fmt(r[k]) for k in keys] for r in rows]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        lines.append("")
        lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths)))
        lines.extend("  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body)
    return "\n".join(lines)


@click.command()
@click.argument("pred", type=click.Path(dir_okay=False))
@click.argument("truth", type=click.Path(dir_okay=False))
@click.option("--iou", "iou_threshold", type=FiniteFloatRange(0.0, 1.0, min_open=True),
              default=0.5, show_default=True, help="Object matching threshold (SpaceNet: 0.5).")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@verbosity_options
@handle_errors
def evaluate(pred: str, truth: str, iou_threshold: float, as_json: bool, cmd_verbose: int,
             cmd_quiet: int) -> None:
    """Score PRED (polygons or a mask raster such as change.tif) against TRUTH.

    Vectors may be in any CRS; they are compared in the raster's grid when either side
    is a raster (values > 0 are buildings, no data is ignored), else in a metric CRS
    (the truth's where it is projected in metres with true scale, otherwise the local
    UTM zone).
    """
    from ..evaluate import evaluate as run_evaluate

    apply_verbosity(cmd_verbose, cmd_quiet)

    p, t, grid, valid, crs = _load(pred, truth)
    result = run_evaluate(p, t, grid, valid=valid, iou_threshold=iou_threshold, crs=crs)
    if as_json:
        echo_json(result)
    else:
        click.echo(_table(result))
