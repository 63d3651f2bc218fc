"""The ``changedet`` script: the command line, loaded inside a guard.

Loading the command line imports the numerical stack (about a second); a Ctrl-C in
that second would end in a traceback from the import machinery, before click could
turn it into "Aborted!". This module is light (``changedet/__init__`` imports
nothing heavy) and does the loading itself.
"""

from __future__ import annotations

import sys
from typing import Any


def main(*args: Any, **kwargs: Any) -> Any:
    """Load :func:`changedet.cli.main` and run it (arguments passed through)."""
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        # As click reports an interrupt while a command runs: one line, status 1.
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    return cli_main(*args, **kwargs)
