"""``changedet detect``: find, measure and check new buildings between two scenes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from ..pipeline import (CLAIM_BASES, CLAIM_M2_RANGE, CLAIM_SITES_RANGE, DETECTORS,
                        MIN_AREA_M2_RANGE, SITE_GAP_M_RANGE, WINDOW_PX_RANGE,
                        WORKERS_RANGE)
from ..windowed import DEFAULT_WINDOW_PX
from .options import FiniteFloatRange, FolderPath, configure_logging, handle_errors


def verbosity_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-v``/``-q`` on a command too (``changedet detect ... -v``), added to the group's."""
    func = click.option("-q", "--quiet", "cmd_quiet", count=True,
                        help="Errors only, no progress bars.")(func)
    return click.option("-v", "--verbose", "cmd_verbose", count=True,
                        help="More messages; keeps tracebacks.")(func)


def apply_verbosity(cmd_verbose: int, cmd_quiet: int) -> int:
    """Combine the command's -v/-q with the group's and configure logging."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    root.ensure_object(dict)
    verbosity = root.obj.get("verbosity", 0) + cmd_verbose - cmd_quiet
    root.obj["verbosity"] = verbosity
    configure_logging(verbosity)
    return verbosity


def _positive(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    low, high = CLAIM_M2_RANGE
    if value is not None and not (low < value < high):
        raise click.BadParameter("must be a positive area in m² below 10⁹", ctx, param)
    return value


def claim_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--claim-*`` options shared by ``detect``, ``measure`` and ``demo``."""
    opts = [
        click.option("--claim-m2", type=float, default=None, callback=_positive,
                     metavar="AREA", help="Claimed area of each site, m²."),
        click.option("--claim-tolerance", type=FiniteFloatRange(0, 1, max_open=True),
                     default=0.10, show_default=True, metavar="FRACTION",
                     help="Relative tolerance of the claim."),
        click.option("--claim-sites", type=click.IntRange(*CLAIM_SITES_RANGE), default=None,
                     metavar="N", help="Number of sites claimed (default: the sites found)."),
        click.option("--claim-basis", type=click.Choice(CLAIM_BASES),
                     default="footprint", show_default=True,
                     help="Compare the claim with built footprints or site envelopes."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def check_claim_usage(claim_m2: float | None, claim_sites: int | None) -> None:
    """Refuse a claim option given without --claim-m2: it would be ignored, and the
    analyst who forgot --claim-m2 would get no verdict and no word why."""
    if claim_m2 is not None:
        return
    if claim_sites is not None:
        raise click.UsageError("--claim-sites needs --claim-m2")
    ctx = click.get_current_context()
    for name in ("claim_tolerance", "claim_basis"):
        if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT):
            raise click.UsageError(f"--{name.replace('_', '-')} needs --claim-m2")


@contextmanager
def progress_bar(verbosity: int) -> Iterator[Callable[[str, float], None] | None]:
    """A progress callback drawing a bar on stderr, or None when quiet or not a terminal."""
    # (stderr may be closed: a cron job's 2>&-.)
    if verbosity < 0 or sys.stderr is None or not sys.stderr.isatty():
        yield None
        return
    # width=0: as wide as the terminal (a fixed bar wrapped on narrow ones).
    with click.progressbar(length=1000, label="changedet", file=sys.stderr,
                           show_eta=False, width=0) as bar:
        state = {"done": 0}

        def update(stage: str, fraction: float) -> None:
            bar.label = f"{stage:<15}"
            target = int(round(fraction * 1000))
            bar.update(max(target - state["done"], 0))
            state["done"] = max(state["done"], target)

        yield update


@click.command()
@click.argument("before", type=click.Path(dir_okay=False))
@click.argument("after", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "outdir", required=True, type=FolderPath(),
              help="Output folder (created in an existing folder; refused if not empty "
                   "without --overwrite).")
@click.option("--aoi", type=click.Path(), default=None,
              help="Analyse only inside these polygons (any vector format or folder of "
                   "shapefiles GDAL reads, any CRS; the first polygon layer).")
@click.option("--bands", default=None, metavar="LIST",
              help="1-based bands to use, e.g. 3,2,1, for both dates (default: those tagged red, "
                   "green, blue, else the first three not alpha).")
@click.option("--nir-band", type=click.IntRange(1, None), default=None,
              help="1-based near-infrared band, if the scenes have one.")
@click.option("--coreg", type=click.Choice(["global", "local", "none"]), default="global",
              show_default=True, help="Co-registration of the after scene.")
@click.option("--min-area-m2", type=FiniteFloatRange(*MIN_AREA_M2_RANGE, min_open=True),
              default=None,
              help="Smallest building kept, m² (default: from the pixel size).")
@click.option("--site-gap-m", type=FiniteFloatRange(*SITE_GAP_M_RANGE), default=None,
              help="Buildings closer than this form one site, metres (default: 30 m or 10 px).")
@claim_options
@click.option("--window-px", type=click.IntRange(256, WINDOW_PX_RANGE[1]),
              default=DEFAULT_WINDOW_PX, show_default=True,
              help="Scenes larger than about two windows this wide are processed in "
                   "windows, in bounded memory.")
@click.option("--workers", type=click.IntRange(*WORKERS_RANGE), default=None,
              help="Windows processed at once (default: up to 2).")
@click.option("--dask-scheduler", default=None, metavar="ADDRESS",
              help="Run the windows on this dask.distributed scheduler "
                   "(e.g. tcp://10.0.0.5:8786); inputs are read by path or URL on the workers.")
@click.option("--keep-standing", is_flag=True,
              help="Report changed areas whose outline or roof was already in BEFORE (a "
                   "rebuild on an old footprint, a demolition's remains) as new buildings; "
                   "by default they are left out and listed in summary.json.")
@click.option("--detector", type=click.Choice(DETECTORS), default="regions",
              show_default=True,
              help="regions: changed areas judged by the shipped region classifier "
                   "(best on the synthetic benchmarks); appearance: areas that look like "
                   "roofs in AFTER and did not in BEFORE, each date judged on its own "
                   "(twice the default's pixel F1 on real LEVIR pairs, worse on synthetic).")
@click.option("--appearance-check/--no-appearance-check", default=True, show_default=True,
              help="regions detector: also keep changed areas the classifier rejects "
                   "when the appearance detector confidently finds a new roof there "
                   "(about twice as many roofs of unfamiliar kinds found; a few more "
                   "false buildings, debris on scenes of destruction; 1.4 to 2 times the "
                   "time), complete a building found in part with the rest of its roof "
                   "as that detector draws it, and leave out those whose footprint "
                   "looked like a roof in BEFORE.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUTDIR.")
@verbosity_options
@handle_errors
def detect(before: str, after: str, outdir: str, aoi: str | None, bands: str | None,
           nir_band: int | None, coreg: str, min_area_m2: float | None,
           site_gap_m: float | None, claim_m2: float | None, claim_tolerance: float,
           claim_sites: int | None, claim_basis: str, window_px: int, workers: int | None,
           dask_scheduler: str | None, keep_standing: bool, detector: str,
           appearance_check: bool, overwrite: bool, cmd_verbose: int, cmd_quiet: int) -> None:
    """Find the buildings new in AFTER compared with BEFORE, measure them, check a claim.

    Writes new_buildings.geojson, sites.geojson, new_buildings.gpkg, change.tif,
    summary.json and report.html into OUTDIR (all or nothing), and prints the site
    table with the claim verdicts on stdout.
    """
    from ..outputs import check_outdir, write_outputs
    from ..pipeline import DetectOptions, run_detection
    from ..raster import parse_bands
    from ..report import format_table

    verbosity = apply_verbosity(cmd_verbose, cmd_quiet)
    check_claim_usage(claim_m2, claim_sites)
    try:
        band_list = parse_bands(bands)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bands") from None
    check_outdir(outdir, overwrite, (before, after, aoi))  # before minutes of work
    options = DetectOptions(
        bands=band_list, nir_band=nir_band, coreg=coreg, min_area_m2=min_area_m2,
        site_gap_m=site_gap_m, aoi=aoi, claim_m2=claim_m2, claim_tolerance=claim_tolerance,
        claim_sites=claim_sites, claim_basis=claim_basis, window_px=window_px,
        workers=workers, dask_scheduler=dask_scheduler, keep_standing=keep_standing,
        detector=detector, appearance_check=appearance_check)
    with progress_bar(verbosity) as progress:
        result = run_detection(before, after, options, progress=progress)
    write_outputs(result, outdir, overwrite=overwrite)
    try:
        click.echo(format_table(result.sites, result.claim), nl=False)
    except BrokenPipeError:
        raise
    except OSError as exc:  # stdout on a full device: the work itself is done
        raise click.ClickException(f"cannot print the site table on stdout "
                                   f"({exc.strerror or exc}); the outputs are in {outdir}"
                                   ) from None
    # (With -v the run's log has said so already.)
    if result.standing_before and verbosity == 0:
        click.echo(f"changedet: {len(result.standing_before)} changed area(s) in the shape of "
                   "a building left out, their outline or roof already in BEFORE (summary.json "
                   "standing_before; --keep-standing reports them as new)", err=True)
    if verbosity >= 0:
        click.echo(f"changedet: wrote {outdir}", err=True)
