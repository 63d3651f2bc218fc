"""The ``changedet`` command line (also ``rio changedet``).

Only option parsing and error mapping live here; the work is done by the library.
Messages and progress go to stderr so that stdout carries only results.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable, TypeVar

import click

from . import __version__
from .errors import ChangedetError

F = TypeVar("F", bound=Callable[..., Any])


def _configure_logging(verbosity: int) -> None:
    level = max(logging.DEBUG, logging.WARNING - 10 * verbosity)
    log = logging.getLogger("changedet")
    log.setLevel(level)
    for handler in list(log.handlers):
        if getattr(handler, "_changedet_cli", False):
            log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("changedet: %(message)s"))
    handler._changedet_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)


def handle_errors(func: F) -> F:
    """Turn library errors into one-line messages and exit status 1.

    With ``-v`` the traceback is kept (the exception propagates through click's
    standard handling after the message), otherwise the user sees one line.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        verbose = (ctx.find_root().obj or {}).get("verbosity", 0) > 0
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise
        except ChangedetError as exc:
            if verbose:
                raise
            raise click.ClickException(str(exc)) from None
        except MemoryError:
            if verbose:
                raise
            raise click.ClickException("out of memory; try a smaller AOI") from None
        except OSError as exc:
            if verbose:
                raise
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None
        except Exception as exc:  # noqa: BLE001 - last line of defence for users
            if verbose:
                raise
            raise click.ClickException(
                f"internal error: {type(exc).__name__}: {exc} (rerun with -v for details)"
            ) from None

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More messages (repeat for debug); keeps tracebacks.")
@click.option("-q", "--quiet", count=True, help="Fewer messages (no progress bars).")
@click.version_option(__version__, prog_name="changedet")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Check claims about new construction from two georeferenced scenes."""
    verbosity = verbose - quiet
    ctx.ensure_object(dict)
    ctx.obj["verbosity"] = verbosity
    _configure_logging(verbosity)


def echo_json(obj: Any) -> None:
    """Write one JSON object on stdout."""
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


@main.command()
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--scenario", type=click.Choice(["compound", "suburb", "none"]),
              default="compound", show_default=True, help="What the scene contains.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--size", type=click.IntRange(128, 65536), default=None,
              help="Scene width and height in pixels (default: the scenario's).")
@click.option("--pixel-size", type=click.FloatRange(0.05, 30.0), default=None,
              help="Pixel size in metres (default: the scenario's).")
@click.option("--shift", nargs=2, type=float, default=None, metavar="DX DY",
              help="Misregistration of the after scene in pixels (default: random, a few px).")
@click.option("--after-crs", default=None,
              help="Deliver the after scene in this CRS (e.g. EPSG:4326).")
@click.option("--nir/--no-nir", default=False, help="Add a near-infrared band.")
@click.option("--nodata-margin", type=click.IntRange(0, None), default=0,
              help="Width in pixels of a nodata margin on the after scene.")
@click.option("--overwrite", is_flag=True, help="Replace files in OUTDIR.")
@handle_errors
def synth(outdir: str, scenario: str, seed: int, size: int | None, pixel_size: float | None,
          shift: tuple[float, float] | None, after_crs: str | None, nir: bool,
          nodata_margin: int, overwrite: bool) -> None:
    """Make a synthetic before/after pair with exact truth in OUTDIR."""
    from .synth import SynthParams, write_synthetic_pair

    params = SynthParams.for_scenario(
        scenario, seed=seed, size=size, pixel_size=pixel_size, shift=shift,
        after_crs=after_crs, nir=nir, nodata_margin=nodata_margin,
    )
    paths = write_synthetic_pair(params, outdir, overwrite=overwrite)
    echo_json({k: str(v) for k, v in paths.items()})
