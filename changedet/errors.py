"""Exceptions raised by changedet.

Every error a user can cause derives from :class:`ChangedetError`; the command line
turns it into a one-line message and exit status 1.
"""

from __future__ import annotations

import os


class ChangedetError(Exception):
    """Base class of every error changedet raises on purpose."""


class InputError(ChangedetError):
    """An input file is missing, unreadable, or unusable for the analysis.

    Parameters
    ----------
    path : str or os.PathLike
        The offending file; it is named first in the message.
    problem : str
        What is wrong with it, and where possible how to fix it.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuilt from both fields: a dask worker's error crosses to the client pickled,
        # and the default (the message alone) failed to unpickle into "internal error".
        return type(self), (self.path, self.problem)


class ProcessingError(ChangedetError):
    """The inputs are readable but the analysis cannot proceed (e.g. no overlap)."""


class OutputError(ChangedetError):
    """Outputs could not be written (existing folder, permissions, full disk)."""
