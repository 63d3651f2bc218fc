"""Shared pieces of the command line: logging set-up, error mapping, JSON output."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import warnings
from typing import Any, Callable, TypeVar

import click

from ..errors import ChangedetError

F = TypeVar("F", bound=Callable[..., Any])


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN, which passes every comparison
    (``--min-area-m2 nan`` would otherwise reach the pipeline)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv

    def _describe_range(self) -> str:
        # Unbounded: no "[x<=None]" in the help.
        return "any finite number" if self.min is None and self.max is None else \
            super()._describe_range()


class FolderPath(click.Path):
    """``click.Path`` for an output folder: anything that exists and is not a folder
    is a usage error. (``click.Path(file_okay=False)`` refuses regular files only; a
    device such as ``/dev/null`` or a FIFO went on to fail later with status 1.)"""

    def __init__(self) -> None:
        super().__init__(file_okay=False)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if os.path.exists(rv) and not os.path.isdir(rv):
            self.fail(f"{click.format_filename(rv)!r} exists and is not a folder.", param, ctx)
        return rv


def silence_georeferencing_warnings(ctx: click.Context) -> None:
    """Ignore rasterio's NotGeoreferencedWarning until the command ``ctx`` ends.

    Inputs without georeferencing are refused with a message of our own; rasterio
    also issues this warning about the in-memory arrays it warps, and the library's
    ``warnings.catch_warnings`` around those calls cannot scope it when windows run
    on threads (the context manager swaps process-wide state), so that it leaked to
    stderr now and then in windowed runs. A filter installed before any of them
    survives their restores; it is removed when the command ends, so that a
    notebook calling the CLI keeps its own warnings.
    """
    from rasterio.errors import NotGeoreferencedWarning

    ctx.with_resource(warnings.catch_warnings())
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


def configure_logging(verbosity: int) -> None:
    """The ``changedet`` logger at the level ``verbosity`` asks for, on stderr.

    Within a click command, the logger's level and handlers come back as they were
    when the command ends: a notebook that calls the CLI keeps its own logging.
    """
    level = max(logging.DEBUG, logging.WARNING - 10 * verbosity)
    log = logging.getLogger("changedet")
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        root = ctx.find_root()
        root.ensure_object(dict)
        if "logging_before" not in root.obj:
            root.obj["logging_before"] = (log.level, list(log.handlers))

            def restore() -> None:
                old_level, old_handlers = root.obj.pop("logging_before")
                log.setLevel(old_level)
                log.handlers[:] = old_handlers

            root.call_on_close(restore)
    log.setLevel(level)
    for handler in list(log.handlers):
        if getattr(handler, "_changedet_cli", False):
            log.removeHandler(handler)
    if sys.stderr is None:  # closed (2>&-): nowhere to say anything
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("changedet: %(message)s"))
    handler._changedet_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)


def _asked_verbose(ctx: click.Context) -> bool:
    """Whether ``-v`` was given, before the command (``changedet -v detect``) or after
    it (``changedet detect -v``), read when an error is handled."""
    before = (ctx.find_root().obj or {}).get("verbosity", 0)
    return before > 0 or ctx.params.get("cmd_verbose", 0) > 0


def handle_errors(func: F) -> F:
    """Turn library errors into one-line messages and exit status 1.

    With ``-v`` the traceback is kept (the exception propagates through click's
    standard handling after the message), otherwise the user sees one line.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return func(*args, **kwargs)
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise
        except BrokenPipeError:
            # The reader of stdout left (``| head``): click ends quietly, status 1.
            raise
        except ChangedetError as exc:
            if _asked_verbose(ctx):
                raise
            raise click.ClickException(str(exc)) from None
        except MemoryError:
            if _asked_verbose(ctx):
                raise
            raise click.ClickException("out of memory; try a smaller scene or AOI") from None
        except OSError as exc:
            if _asked_verbose(ctx):
                raise
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}") from None
        except Exception as exc:  # noqa: BLE001 - last line of defence for users
            if _asked_verbose(ctx):
                raise
            raise click.ClickException(
                f"internal error: {type(exc).__name__}: {exc} (rerun with -v for details)"
            ) from None

    return wrapper  # type: ignore[return-value]


def echo_json(obj: Any) -> None:
    """Write one JSON object on stdout (strict JSON: a NaN or infinite number, which
    JSON has not, is written as null)."""
    click.echo(json.dumps(_finite_or_null(obj), indent=2, sort_keys=False, allow_nan=False))


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value
