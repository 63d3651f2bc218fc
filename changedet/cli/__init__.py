"""The ``changedet`` command line (also ``rio changedet``).

One module per command, as in ``rasterio/rio``; only option parsing and error
mapping live here, the work is done by the library. Messages and progress go to
stderr so that stdout carries only results.
"""

from __future__ import annotations

import signal
import threading

import click

from .. import __version__
from .options import configure_logging, silence_georeferencing_warnings


@click.group(name="changedet", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More messages (repeat for debug); keeps tracebacks.")
@click.option("-q", "--quiet", count=True, help="Errors only, no progress bars.")
@click.version_option(__version__, prog_name="changedet")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Check claims about new construction from two georeferenced scenes."""
    verbosity = verbose - quiet
    ctx.ensure_object(dict)
    ctx.obj["verbosity"] = verbosity
    configure_logging(verbosity)
    silence_georeferencing_warnings(ctx)
    _terminate_as_interrupt(ctx)


def _terminate_as_interrupt(ctx: click.Context) -> None:
    """Make SIGTERM (a job scheduler's or ``kill``'s stop) unwind as Ctrl-C does.

    Killed outright, a run would leave its scratch files behind; raised as
    KeyboardInterrupt, every clean-up runs and click reports "Aborted!" (status 1).
    The previous handler comes back when the command ends.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    # None: a handler set from C, which Python cannot put back; the default then.
    ctx.call_on_close(lambda: signal.signal(
        signal.SIGTERM, previous if previous is not None else signal.SIG_DFL))


# One line per command module; each module defines a plain @click.command.
from .synth import synth  # noqa: E402

main.add_command(synth)
from .evaluate import evaluate  # noqa: E402

main.add_command(evaluate)
from .detect import detect  # noqa: E402

main.add_command(detect)
from .measure import measure  # noqa: E402

main.add_command(measure)
from .demo import demo  # noqa: E402

main.add_command(demo)
from .coregister import coregister  # noqa: E402

main.add_command(coregister)
