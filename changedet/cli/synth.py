"""``changedet synth``: a synthetic scene pair with exact truth."""

from __future__ import annotations

import click

from ..synth import SCENARIOS
from .detect import apply_verbosity, verbosity_options
from .options import FiniteFloatRange, FolderPath, echo_json, handle_errors


@click.command()
@click.argument("outdir", type=FolderPath())
@click.option("--scenario", type=click.Choice(SCENARIOS), default="compound",
              show_default=True, help="What the scene contains.")
@click.option("--seed", type=click.IntRange(0, None), default=0, show_default=True,
              help="Random seed.")
@click.option("--size", type=click.IntRange(128, 65536), default=None,
              help="Scene width and height in pixels (default: the scenario's).")
@click.option("--pixel-size", type=FiniteFloatRange(0.1, 10.0), default=None,
              help="Pixel size in metres (default: the scenario's).")
@click.option("--shift", nargs=2, type=FiniteFloatRange(), default=None, metavar="DX DY",
              help="Misregistration of the after scene in pixels (default: random, a few px).")
@click.option("--after-crs", default=None,
              help="Deliver the after scene in this CRS (e.g. EPSG:4326).")
@click.option("--after-pixel-size", type=FiniteFloatRange(0.1, 10.0), default=None,
              help="Size of the delivered after pixel with --after-crs (default 1.1 x "
                   "--pixel-size): metres on the ground for a geographic CRS (converted to "
                   "degrees), the CRS's own units for a projected one (Web Mercator's "
                   "metres shrink on the ground away from the equator).")
@click.option("--nir/--no-nir", default=False, help="Add a near-infrared band.")
@click.option("--nodata-margin", type=click.IntRange(0, None), default=0,
              help="Width in pixels of a nodata margin on the after scene.")
@click.option("--overwrite", is_flag=True, help="Replace files in OUTDIR.")
@verbosity_options
@handle_errors
def synth(outdir: str, scenario: str, seed: int, size: int | None, pixel_size: float | None,
          shift: tuple[float, float] | None, after_crs: str | None,
          after_pixel_size: float | None, nir: bool, nodata_margin: int,
          overwrite: bool, cmd_verbose: int, cmd_quiet: int) -> None:
    """Make a synthetic before/after pair with exact truth in OUTDIR."""
    apply_verbosity(cmd_verbose, cmd_quiet)
    from ..synth import SynthParams, write_synthetic_pair

    try:
        params = SynthParams.for_scenario(
            scenario, seed=seed, size=size, pixel_size=pixel_size, shift=shift,
            after_crs=after_crs, nir=nir, nodata_margin=nodata_margin,
            after_pixel_size=after_pixel_size,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    paths = write_synthetic_pair(params, outdir, overwrite=overwrite)
    echo_json({k: str(v) for k, v in paths.items()})
