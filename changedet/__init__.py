"""changedet: check claims about new construction from two georeferenced scenes.

The stages (see ``design.md``) are plain functions on arrays plus a small
georeference object; :mod:`changedet.pipeline` chains them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The names below are imported on first use (PEP 562): ``import changedet`` stays
# light, so that the command line starts at once and Ctrl-C while it loads the
# numerical stack is an ordinary abort (see changedet._entry).
_EXPORTS = {
    "ChangedetError": ".errors", "InputError": ".errors", "OutputError": ".errors",
    "ProcessingError": ".errors",
    "AlignedPair": ".raster", "Grid": ".raster", "Scene": ".raster",
    "align_pair": ".raster", "read_scene": ".raster",
    "DetectionResult": ".pipeline", "DetectOptions": ".pipeline", "detect": ".pipeline",
}

__all__ = [
    "__version__",
    "AlignedPair",
    "DetectOptions",
    "DetectionResult",
    "ChangedetError",
    "Grid",
    "InputError",
    "OutputError",
    "ProcessingError",
    "Scene",
    "align_pair",
    "detect",
    "read_scene",
]

if TYPE_CHECKING:
    from .errors import ChangedetError, InputError, OutputError, ProcessingError
    from .pipeline import DetectionResult, DetectOptions, detect
    from .raster import AlignedPair, Grid, Scene, align_pair, read_scene


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'changedet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
