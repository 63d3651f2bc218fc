"""Bounded fuzzing of raster headers: corrupted GeoTIFFs give clean errors only.

Random byte corruption of a small GeoTIFF must either read as a valid scene or raise
:class:`changedet.errors.InputError` naming the file; never another exception.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from changedet.errors import InputError
from changedet.raster import read_scene

from .conftest import write_geotiff

_HEADER_BYTES = 1024  # TIFF header, IFD and GeoTIFF keys of a small file live here


def _template(tmp: Path) -> bytes:
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, size=(3, 64, 64), dtype=np.uint8)
    return write_geotiff(tmp / "template.tif", data).read_bytes()


@settings(max_examples=2000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.integers(0, _HEADER_BYTES - 1), st.integers(0, 255)),
        min_size=1, max_size=8,
    ),
    truncate=st.one_of(st.none(), st.integers(0, 40000)),
)
def test_corrupted_header_reads_or_fails_cleanly(tmp_path_factory, edits, truncate):
    tmp = tmp_path_factory.mktemp("fuzz", numbered=True)
    raw = bytearray(_template(tmp))
    for offset, value in edits:
        if offset < len(raw):
            raw[offset] = value
    if truncate is not None:
        raw = raw[:truncate]
    path = tmp / "corrupt.tif"
    path.write_bytes(bytes(raw))
    try:
        scene = read_scene(path)
    except InputError as exc:
        assert str(path) in str(exc)
        assert "\n" not in str(exc)
    else:
        assert scene.image.dtype == np.float32
        assert scene.valid.any()


def test_corrupted_metadata_bytes_fail_cleanly(tmp_path):
    # Found by the fuzz run: edits at these offsets made GDAL hand back undecodable
    # metadata, which once escaped as a UnicodeDecodeError.
    raw = bytearray(_template(tmp_path))
    raw[300] = 0xFF
    raw[350] = 0xFE
    path = tmp_path / "corrupt.tif"
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError) as info:
        read_scene(path)
    assert str(path) in str(info.value)
