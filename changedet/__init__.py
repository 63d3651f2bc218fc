"""changedet: check claims about new construction from two georeferenced scenes.

The stages (see ``design.md``) are plain functions on arrays plus a small
georeference object; :mod:`changedet.pipeline` chains them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import ChangedetError, InputError, OutputError, ProcessingError
from .raster import AlignedPair, Grid, Scene, align_pair, read_scene
from .pipeline import DetectionResult, DetectOptions, detect  # noqa: E402 - needs __version__

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
