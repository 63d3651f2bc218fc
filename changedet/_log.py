"""The package logger: library code logs, it never prints.

Warnings that bear on a run's results go through :func:`warn_analyst`, which also records
them for the run under way (``summary.json`` ``warnings`` and ``report.html``), so
that they reach the analyst whatever the logging configuration or ``-q``.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("changedet")
logger.addHandler(logging.NullHandler())

_records_lock = threading.Lock()
#: The records of the runs under way in this context, outermost first: a context
#: variable, so that two runs at once (threads of a notebook) keep their own.
_records: contextvars.ContextVar[tuple[list[str], ...]] = contextvars.ContextVar(
    "changedet_recorded_warnings", default=())


def warn_analyst(message: str, *args: Any) -> None:
    """``logger.warning(message, *args)``, also recorded by the :func:`recorded_warnings`
    under way in this context (tasks of a :class:`RunThreadPool` run in the context
    that submitted them)."""
    logger.warning(message, *args)
    records = _records.get()
    if records:
        text = message % args if args else message
        with _records_lock:
            for record in records:
                record.append(text)


@contextmanager
def recorded_warnings() -> Iterator[list[str]]:
    """The messages :func:`warn_analyst` is given in this context while the context
    manager lasts, in order (a run's own: another thread's run records its own)."""
    record: list[str] = []
    token = _records.set(_records.get() + (record,))
    try:
        yield record
    finally:
        _records.reset(token)


class RunThreadPool(ThreadPoolExecutor):
    """A thread pool whose tasks run in the context of the thread that submits them,
    so that what they warn about is recorded for the run that asked for them."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)


def percent_text(fraction: float) -> str:
    """A share as the analyst reads it, ``"40"`` or ``"0.28"`` (percent, no sign): whole
    percent from 10 % up, two figures below, so that a small share is not shown as 0."""
    return f"{100 * fraction:.0f}" if fraction >= 0.1 else f"{100 * fraction:.2g}"
