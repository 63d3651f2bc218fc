"""The package logger: library code logs, it never prints.

Warnings that bear on a run's results go through :func:`warn_analyst`, which also records
them for the run under way (``summary.json`` ``warnings`` and ``report.html``), so
that they reach the analyst whatever the logging configuration or ``-q``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("changedet")
logger.addHandler(logging.NullHandler())

_records_lock = threading.Lock()
_records: list[list[str]] = []


def warn_analyst(message: str, *args: Any) -> None:
    """``logger.warning(message, *args)``, also recorded by every
    :func:`recorded_warnings` under way (from any thread: windows run on threads)."""
    logger.warning(message, *args)
    text = message % args if args else message
    with _records_lock:
        for record in _records:
            record.append(text)


@contextmanager
def recorded_warnings() -> Iterator[list[str]]:
    """The messages :func:`warn_analyst` is given while the context lasts, in order.

    Two runs at once in one process (threads of a notebook) each record the
    other's warnings too.
    """
    record: list[str] = []
    with _records_lock:
        _records.append(record)
    try:
        yield record
    finally:
        with _records_lock:
            _records.remove(record)
