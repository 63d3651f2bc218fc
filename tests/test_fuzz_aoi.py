"""Bounded fuzzing of the AOI reader: any file gives polygons or a clean InputError.

Three sources of odd input: structurally random GeoJSON (wrong types, missing
members, huge or non-finite numbers, self-intersections, odd CRS names), random byte
corruption of a valid GeoJSON and of a valid GeoPackage. ``read_polygons`` and
``read_aoi`` must return usable polygons or raise :class:`InputError` naming the
file on one line; never another exception.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio.raw
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS

from changedet.aoi import read_aoi, read_polygons
from changedet.errors import InputError
from changedet.raster import Grid

GRID = Grid(CRS.from_epsg(32651), Affine(1.0, 0, 741_000.0, 0, -1.0, 4_328_000.0), 128, 128)
FUZZ = settings(max_examples=500, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _check(path: Path) -> None:
    """Read ``path`` as polygons and as an AOI: valid output or a clean InputError."""
    try:
        vector = read_polygons(path)
    except InputError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc), str(exc)
        return
    assert vector.polygons and len(vector.polygons) == len(vector.names)
    assert all(isinstance(p, shapely.Polygon) and p.is_valid and p.area > 0
               for p in vector.polygons)
    try:
        aoi = read_aoi(path, GRID)
    except InputError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc), str(exc)
        return
    assert aoi.mask.shape == GRID.shape and aoi.mask.dtype == bool and aoi.mask.any()


# ----------------------------------------------------------------- structural fuzz

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(-200, 200), st.integers(-10**20, 10**20),
                    st.sampled_from([123.006, 39.08, 741_050.0, 4_327_950.0]))
positions = st.one_of(st.lists(numbers, min_size=0, max_size=4), numbers, st.text(max_size=3))
rings = st.lists(positions, min_size=0, max_size=7)
geometries = st.one_of(
    st.none(),
    st.fixed_dictionaries({"type": st.sampled_from(["Polygon", "polygon", "LineString", "Foo"]),
                           "coordinates": st.lists(rings, max_size=3)}),
    st.fixed_dictionaries({"type": st.just("MultiPolygon"),
                           "coordinates": st.lists(st.lists(rings, max_size=2), max_size=2)}),
    st.fixed_dictionaries({"type": st.just("Point"), "coordinates": positions}),
    st.fixed_dictionaries({"type": st.just("GeometryCollection"),
                           "geometries": st.lists(st.just({"type": "Polygon", "coordinates": [
                               [[123.0, 39.0], [123.001, 39.0], [123.001, 39.001],
                                [123.0, 39.0]]]}), max_size=2)}),
)
properties = st.one_of(st.none(), st.dictionaries(
    st.sampled_from(["name", "id", "NAME", "fid", "x", ""]),
    st.one_of(st.none(), st.text(max_size=8), st.integers(-2**70, 2**70), st.floats(),
              st.lists(st.integers(), max_size=2)), max_size=3))
crs_members = st.one_of(st.none(), st.sampled_from([
    {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32651"}},
    {"type": "name", "properties": {"name": "EPSG:999999"}},
    {"type": "name", "properties": {"name": "<script>"}},
    {"type": "name"}, "EPSG:4326", 42]))
features = st.fixed_dictionaries({"type": st.sampled_from(["Feature", "feature", "Thing"]),
                                  "properties": properties, "geometry": geometries})
documents = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["FeatureCollection", "Feature", "x"]),
                           "features": st.lists(features, max_size=4)},
                          optional={"crs": crs_members}),
    features, geometries, st.lists(numbers, max_size=3), st.text(max_size=20))


@FUZZ
@given(doc=documents)
def test_structurally_random_geojson(tmp_path_factory, doc: Any) -> None:
    path = tmp_path_factory.mktemp("aoi", numbered=True) / "aoi.geojson"
    path.write_text(json.dumps(doc, allow_nan=True))
    _check(path)


# ------------------------------------------------------------------- byte fuzz

def _valid_geojson() -> bytes:
    ring = [[123.0, 39.08], [123.01, 39.08], [123.01, 39.09], [123.0, 39.09], [123.0, 39.08]]
    bowtie = [[123.0, 39.08], [123.01, 39.09], [123.01, 39.08], [123.0, 39.09], [123.0, 39.08]]
    return json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "site A"},
         "geometry": {"type": "Polygon", "coordinates": [ring]}},
        {"type": "Feature", "properties": {"name": "bowtie"},
         "geometry": {"type": "Polygon", "coordinates": [bowtie]}}]}).encode()


edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6)


def _corrupt(raw: bytes, changes: list[tuple[int, int]], truncate: int | None) -> bytes:
    data = bytearray(raw)
    for offset, value in changes:
        data[offset % len(data)] = value
    return bytes(data[:truncate] if truncate is not None else data)


@FUZZ
@given(changes=edits, truncate=st.one_of(st.none(), st.integers(0, 600)))
def test_corrupted_geojson_bytes(tmp_path_factory, changes, truncate) -> None:
    path = tmp_path_factory.mktemp("aoi", numbered=True) / "aoi.geojson"
    path.write_bytes(_corrupt(_valid_geojson(), changes, truncate))
    _check(path)


_GPKG: dict[str, bytes] = {}


def _valid_gpkg(tmp: Path) -> bytes:
    if "raw" not in _GPKG:
        polys = [shapely.box(741_010, 4_327_900, 741_060, 4_327_950),
                 shapely.box(741_070, 4_327_880, 741_100, 4_327_990)]
        path = tmp / "template.gpkg"
        pyogrio.raw.write(path, geometry=np.asarray(shapely.to_wkb(polys), dtype=object),
                          field_data=[np.asarray(["a", "b"], dtype=object)], fields=["name"],
                          layer="aoi", driver="GPKG", geometry_type="Polygon",
                          crs="EPSG:32651")
        _GPKG["raw"] = path.read_bytes()
    return _GPKG["raw"]


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                        min_size=1, max_size=8),
       truncate=st.one_of(st.none(), st.integers(0, 120_000)))
def test_corrupted_geopackage_bytes(tmp_path_factory, changes, truncate) -> None:
    tmp = tmp_path_factory.mktemp("gpkg", numbered=True)
    path = tmp / "aoi.gpkg"
    path.write_bytes(_corrupt(_valid_gpkg(tmp), changes, truncate))
    _check(path)


def test_the_templates_are_valid(tmp_path: Path) -> None:
    # The fuzz starts from files that read; corruption is what is being tested.
    path = tmp_path / "aoi.geojson"
    path.write_bytes(_valid_geojson())
    vector = read_polygons(path)
    assert vector.names[0] == "site A" and len(vector.polygons) >= 3  # bowtie: 2 parts
    gpkg = tmp_path / "aoi.gpkg"
    gpkg.write_bytes(_valid_gpkg(tmp_path))
    aoi = read_aoi(gpkg, GRID)
    assert math.isclose(aoi.geometry.area, 50 * 50 + 30 * 110)


def test_found_by_fuzzing(tmp_path: Path) -> None:
    # A one-point ring GDAL reads but GEOS cannot build once aborted the whole file
    # with a GEOSException; now that feature is skipped and the others are kept.
    path = tmp_path / "aoi.geojson"
    good = json.loads(_valid_geojson())["features"][0]
    bad = {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
                                                           "coordinates": [[[0.0, 0.0]]]}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [bad, good]}))
    assert read_polygons(path).names == ["site A"]
    path.write_text(json.dumps(bad["geometry"]))
    _check(path)
    # A byte that is not UTF-8 once escaped as a UnicodeDecodeError.
    raw = bytearray(_valid_geojson())
    raw[253] = 0x80
    path.write_bytes(bytes(raw))
    _check(path)
