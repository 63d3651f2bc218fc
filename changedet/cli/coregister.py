"""``changedet coregister``: the after scene registered onto the before scene's grid."""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace

import click
import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp
from rasterio.io import MemoryFile

from ..errors import OutputError
from ..outputs import resolved_path
from .detect import apply_verbosity, verbosity_options
from .options import echo_json, handle_errors


@click.command()
@click.argument("before", type=click.Path(dir_okay=False))
@click.argument("after", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="GeoTIFF to write: the after scene on the before scene's analysis grid.")
@click.option("--coreg", "method", type=click.Choice(["global", "local", "none"]),
              default="global", show_default=True, help="Co-registration model.")
@click.option("--bands", default=None,
              help="1-based bands to use, e.g. 3,2,1 (default: those tagged red, green, "
                   "blue, else the first three not alpha).")
@click.option("--nir-band", type=click.IntRange(1, None), default=None,
              help="1-based near-infrared band, if the scenes have one (measured with the "
                   "colours, as detect --nir-band measures the shift).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@verbosity_options
@handle_errors
def coregister(before: str, after: str, output: str, method: str, bands: str | None,
               nir_band: int | None, overwrite: bool, cmd_verbose: int,
               cmd_quiet: int) -> None:
    """Register AFTER onto BEFORE and print the shift as JSON on stdout."""
    from ..coregister import coregister as run_coregister
    from ..raster import (align_checked_pair, coarsened_for, data_bands, parse_bands,
                          read_scene, warp_scene)

    apply_verbosity(cmd_verbose, cmd_quiet)
    if os.path.splitext(output)[1].lower() not in (".tif", ".tiff"):
        raise click.BadParameter(f"{output}: the registered scene is written as a GeoTIFF; "
                                 "name it .tif", param_hint="-o/--output")
    if os.path.exists(output) and not overwrite:
        raise OutputError(f"{output} exists; use --overwrite to replace it")
    # However they are spelt (links, "..", archives): replacing an input loses it.
    target = resolved_path(output)
    for path in (before, after):
        if target is not None and resolved_path(path) == target:
            raise OutputError(f"{output}: is the input {path}, which --overwrite would "
                              "replace; write to another file")
    folder = os.path.dirname(os.path.abspath(output))
    # Checked before the work, not after it.
    if not os.path.isdir(folder):
        raise OutputError(f"{output}: no folder {folder}")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"{output}: cannot write in {folder}")
    try:
        chosen = parse_bands(bands)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bands") from None
    # As detect: a blank scene has no noise to register against, and one scene given
    # as both dates registers perfectly onto itself.
    pair = align_checked_pair(*(read_scene(path, chosen, nir_band) for path in (before, after)))
    registered, registration = run_coregister(pair, method)
    scene = registered.after
    with rasterio.open(after) as src:
        every, colours, descriptions = data_bands(src), src.colorinterp, src.descriptions
    if chosen is None and tuple(every) != tuple(scene.bands):
        # The registration is measured on the colour bands, but the registered scene
        # keeps the file's others (near-infrared...), resampled the same way.
        every_band = coarsened_for(read_scene(after, every, warn=False), scene.grid)
        warped = warp_scene(every_band, scene.grid, registration.correction)
        scene = replace(warped, valid=warped.valid & scene.valid)
    data = np.where(scene.valid, scene.image, np.nan).astype(np.float32)
    profile = {
        "driver": "GTiff", "height": scene.grid.height, "width": scene.grid.width,
        "count": data.shape[0], "dtype": "float32", "crs": scene.grid.crs,
        "transform": scene.grid.transform, "nodata": float("nan"), "tiled": True,
        "compress": "deflate", "predictor": 3,
    }
    # Written beside the target and renamed: an interrupted run leaves no half file.
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(suffix=".tif", dir=folder)
        os.close(fd)
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(data)
                # The after file's band meanings, so QGIS shows the colours as they were.
                dst.colorinterp = [ColorInterp.undefined if colours[b - 1] == ColorInterp.alpha
                                   else colours[b - 1] for b in scene.bands]
                dst.descriptions = [descriptions[b - 1] for b in scene.bands]
            with mem.open() as src:
                # A Cloud-Optimized GeoTIFF with overviews: QGIS draws a large scene
                # at any zoom without reading it whole.
                rasterio.shutil.copy(src, tmp, driver="COG", COMPRESS="DEFLATE",
                                     PREDICTOR="FLOATING_POINT", BLOCKSIZE=512,
                                     OVERVIEW_RESAMPLING="AVERAGE", NUM_THREADS=1)
        # mkstemp makes the file private (0600); give it the mode of any new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, output)
    except OSError as exc:
        raise OutputError(f"{output}: cannot write ({exc.strerror or exc})") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    echo_json(registration.summary(registered.grid))
