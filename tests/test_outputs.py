"""Writers of the Contract outputs: GeoJSON (RFC 7946), GPKG, COG, atomic folder."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import struct
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from pyproj import CRS, Transformer

from tests._fakes import AREAS, GRID, fake_result
from changedet import outputs
from changedet.errors import OutputError
from changedet.outputs import (OUTPUT_FILES, atomic_folder, geojson_text, write_cog,
                               write_gpkg, write_outputs)


def _ring_area(coords: list) -> float:
    xy = np.asarray(coords)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def test_geojson_is_rfc7946() -> None:
    res = fake_result()
    geoms, props = outputs.building_records(res.buildings)
    # A clockwise exterior in the input must come out counter-clockwise.
    geoms[0] = shapely.orient_polygons(geoms[0], exterior_cw=True)
    doc = json.loads(geojson_text(geoms, props, GRID.crs))
    assert "crs" not in doc and doc["type"] == "FeatureCollection"
    text = geojson_text(geoms, props, GRID.crs)
    decimals = [len(m) for m in re.findall(r"\d\.(\d+)", text.split('"geometry"', 1)[1])]
    assert max(decimals) <= 7
    back = Transformer.from_crs(4326, 32651, always_xy=True)
    for feat, geom, prop in zip(doc["features"], geoms, props):
        rings = feat["geometry"]["coordinates"]
        assert _ring_area(rings[0]) > 0  # counter-clockwise exterior
        for hole in rings[1:]:
            assert _ring_area(hole) < 0
        lon, lat = np.asarray(rings[0]).T
        assert 122 < lon.min() and lon.max() < 124 and 38 < lat.min() < 40
        metres = shapely.Polygon(np.column_stack(back.transform(lon, lat)),
                                 [np.column_stack(back.transform(*np.asarray(h).T))
                                  for h in rings[1:]])
        # 1e-7 degree rounding moves vertices by at most ~1 cm.
        assert metres.area == pytest.approx(geom.area, abs=0.011 * geom.length)
        assert feat["properties"] == prop
    holed = doc["features"][2]["geometry"]["coordinates"]
    assert len(holed) == 2


def test_geojson_same_bytes_twice() -> None:
    a = geojson_text(*outputs.building_records(fake_result().buildings), GRID.crs)
    b = geojson_text(*outputs.building_records(fake_result().buildings), GRID.crs)
    assert a == b


def test_gpkg_layers_crs_and_areas(tmp_path: Path) -> None:
    res = fake_result()
    geoms, props = outputs.building_records(res.buildings)
    sgeoms, sprops = outputs.site_records(res.sites, None)
    path = write_gpkg(tmp_path / "x.gpkg", {"new_buildings": (geoms, props),
                                            "sites": (sgeoms, sprops)}, GRID.crs.to_wkt())
    assert [name for name, _ in pyogrio.list_layers(path)] == ["new_buildings", "sites"]
    meta, _, wkb, fields = pyogrio.raw.read(path, layer="new_buildings")
    assert CRS.from_user_input(meta["crs"]).to_epsg() == 32651
    areas = shapely.area(shapely.from_wkb(wkb))
    np.testing.assert_allclose(areas, AREAS, rtol=1e-9)
    col = list(meta["fields"]).index("area_m2")
    np.testing.assert_allclose(fields[col], [p["area_m2"] for p in props])
    # A yes/no field is OGR's boolean subtype (QGIS shows true/false), not 0/1.
    partial = fields[list(meta["fields"]).index("partial")]
    assert partial.dtype == bool and partial.tolist() == [p["partial"] for p in props]
    meta, _, wkb, _ = pyogrio.raw.read(path, layer="sites")
    assert len(wkb) == 2 and CRS.from_user_input(meta["crs"]).to_epsg() == 32651
    # Rings as in the GeoJSON: exteriors counter-clockwise in both layers.
    for layer in ("new_buildings", "sites"):
        for g in shapely.from_wkb(pyogrio.raw.read(path, layer=layer)[2]):
            for part in g.geoms:
                assert part.exterior.is_ccw and not any(r.is_ccw for r in part.interiors)


def test_gpkg_writes_a_missing_verdict_as_null(tmp_path: Path) -> None:
    """A site beyond --claim-sites has no verdict: NULL in the GeoPackage, as null in
    sites.geojson, not an empty string."""
    import sqlite3

    square = shapely.box(500000.0, 4320000.0, 500010.0, 4320010.0)
    props = [{"id": 1, "verdict": "consistent"}, {"id": 2, "verdict": None}]
    path = write_gpkg(tmp_path / "s.gpkg", {"sites": ([square, square], props)},
                      GRID.crs.to_wkt())
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT id, verdict FROM sites ORDER BY id").fetchall()
    assert rows == [(1, "consistent"), (2, None)]


@pytest.mark.parametrize("claimed", [False, True])
def test_gpkg_layers_keep_one_schema_however_many_buildings(tmp_path: Path,
                                                            claimed: bool) -> None:
    """A run that finds nothing writes the columns, and the types, of one that finds
    buildings (an empty layer had a single id column), and a column of nulls keeps
    its type; so QGIS styles, joins and merges work across runs."""
    from dataclasses import replace

    found = fake_result(claim_m2=10000.0 if claimed else None)
    empty = replace(found, buildings=[], sites=[])
    schemas = []
    for name, result in (("found", found), ("empty", empty)):
        write_outputs(result, tmp_path / name)
        layers = {}
        for layer in ("new_buildings", "sites"):
            info = pyogrio.read_info(tmp_path / name / "new_buildings.gpkg", layer=layer)
            layers[layer] = list(zip(info["fields"], info["dtypes"]))
        schemas.append(layers)
    assert schemas[0] == schemas[1]
    assert [f for f, _ in schemas[1]["new_buildings"]] == \
        list(found.buildings[0].to_properties())
    sites = dict(schemas[1]["sites"])
    assert ("verdict" in sites) == claimed
    assert sites["site_id"] == "int64" and sites["built_area_m2"] == "float64"
    assert dict(schemas[1]["new_buildings"])["partial"] == "bool"
    # GeoPackage 1.2 (GDAL 3.6, as in Debian 12's QGIS, warns on GDAL's default 1.4).
    import sqlite3

    with sqlite3.connect(tmp_path / "empty" / "new_buildings.gpkg") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (10200,)
    # A claim whose every site lies beyond the number it speaks of: verdicts all null,
    # still text.
    if claimed:
        no_verdicts = replace(found, sites=[replace(s, verdict=None) for s in found.sites])
        write_outputs(no_verdicts, tmp_path / "nulls")
        info = pyogrio.read_info(tmp_path / "nulls" / "new_buildings.gpkg", layer="sites")
        assert dict(zip(info["fields"], info["dtypes"]))["verdict"] == "object"


def _tiff_ifds(raw: bytes) -> list[tuple[int, int, int, list[int]]]:
    """(IFD offset, width, height, tile offsets) of each IFD of a little-endian TIFF."""
    ifds = []
    offset = struct.unpack_from("<I", raw, 4)[0]
    while offset:
        (n,) = struct.unpack_from("<H", raw, offset)
        tags = {}
        for k in range(n):
            tag, typ, count, value = struct.unpack_from("<HHII", raw, offset + 2 + 12 * k)
            if tag not in (256, 257, 324):  # width, height, tile offsets
                continue
            size = {3: 2, 4: 4}.get(typ, 4)
            if count * size <= 4:
                vals = list(struct.unpack_from("<" + ("H" if typ == 3 else "I") * count,
                                               raw, offset + 2 + 12 * k + 8))
            else:
                vals = list(struct.unpack_from("<" + ("H" if typ == 3 else "I") * count,
                                               raw, value))
            tags[tag] = vals
        ifds.append((offset, tags[256][0], tags[257][0], tags.get(324, [])))
        offset = struct.unpack_from("<I", raw, offset + 2 + 12 * n)[0]
    return ifds


def _cog_layout_ok(path: Path) -> None:
    """What GDAL's validate_cloud_optimized_geotiff checks, the essential part."""
    raw = path.read_bytes()
    assert raw[:4] == b"II*\x00"
    assert b"LAYOUT=IFDS_BEFORE_DATA" in raw[:400]
    with rasterio.open(path) as ds:
        assert ds.driver == "GTiff" and ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert ds.block_shapes[0] == (256, 256)
        overviews = ds.overviews(1)
    assert overviews, "no overviews"
    ifds = _tiff_ifds(raw)
    assert len(ifds) == 1 + len(overviews)
    widths = [w for _, w, _, _ in ifds]
    assert widths == sorted(widths, reverse=True)  # full resolution first, then overviews
    assert all(t for *_, t in ifds), "not tiled"
    first_data = min(min(t for t in tiles if t) for *_, tiles in ifds)
    assert max(off for off, *_ in ifds) < first_data  # every IFD before any data
    # Smallest overview's data first, full resolution last.
    starts = [min(t for t in tiles if t) for *_, tiles in ifds]
    assert starts == sorted(starts, reverse=True)


def test_cog_valid_uint8_nearest(tmp_path: Path) -> None:
    data = np.zeros(GRID.shape, dtype=np.uint8)
    data[100:300, 200:260] = 1
    data[:, :50] = 255
    path = write_cog(tmp_path / "change.tif", data, GRID)
    _cog_layout_ok(path)
    with rasterio.open(path) as ds:
        assert ds.dtypes == ("uint8",) and ds.nodata == 255 and ds.crs.to_epsg() == 32651
        assert ds.transform == GRID.transform
        # Classes with colours, which QGIS shows as such (not a grey stretch).
        assert ds.colorinterp[0] == rasterio.enums.ColorInterp.palette
        assert ds.colormap(1)[1][:3] == outputs.CHANGE_COLOURS[1]
        assert ds.descriptions == (outputs.CHANGE_DESCRIPTION,)  # not "Band 1" in QGIS
        np.testing.assert_array_equal(ds.read(1), data)
        # Nearest-neighbour overviews hold only the class codes.
        assert set(np.unique(ds.read(1, out_shape=(GRID.height // 4, GRID.width // 4)))) \
            <= {0, 1, 255}
    with rasterio.open(path, OVERVIEW_LEVEL=0) as ov:
        assert set(np.unique(ov.read(1, masked=False))) <= {0, 1, 255}


def test_write_outputs_contract(tmp_path: Path) -> None:
    res = fake_result(8000.0)  # site 1 (12,375 m²) larger, site 2 (8,000 m²) consistent
    out = tmp_path / "out"
    paths = write_outputs(res, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert set(paths) == set(OUTPUT_FILES)
    sites = json.loads((out / "sites.geojson").read_text())
    assert [f["properties"]["verdict"] for f in sites["features"]] == \
        ["larger than claimed", "consistent"]
    buildings = json.loads((out / "new_buildings.geojson").read_text())
    assert [f["properties"]["area_m2"] for f in buildings["features"]] == AREAS
    assert [f["properties"]["site_id"] for f in buildings["features"]] == [2, 2, 1]
    meta, _, wkb, _ = pyogrio.raw.read(out / "new_buildings.gpkg", layer="sites")
    assert CRS.from_user_input(meta["crs"]).to_epsg() == 32651
    np.testing.assert_allclose(shapely.area(shapely.from_wkb(wkb)),
                               [s.envelope.area for s in res.sites])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["coregistration"]["shift_m"] == [0.625, 0.25]
    assert summary["totals"]["n_buildings"] == 3
    assert summary["totals"]["built_area_m2"] == sum(AREAS)
    assert [v["verdict"] for v in summary["claim"]["verdicts"]] == \
        ["larger than claimed", "consistent"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers
    _cog_layout_ok(out / "change.tif")


def test_a_second_claim_check_in_a_notebook_leaves_the_files_agreeing(tmp_path: Path
                                                                      ) -> None:
    """check_claim sets the verdicts of the sites it is given: run again on a result's
    sites ("what if the claim were one site of 20,000 m²?"), it made sites.geojson
    say one thing and summary.json, which holds the result's claim, another."""
    from changedet.measure import check_claim

    res = fake_result(8000.0)
    check_claim(res.sites, 20000.0, n_sites=1)
    assert [s.verdict for s in res.sites] != ["larger than claimed", "consistent"]
    write_outputs(res, tmp_path / "o")
    sites = json.loads((tmp_path / "o" / "sites.geojson").read_text())
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    expected = ["larger than claimed", "consistent"]
    assert [f["properties"]["verdict"] for f in sites["features"]] == expected
    assert [v["verdict"] for v in summary["claim"]["verdicts"]] == expected
    _, _, _, fields = pyogrio.raw.read(tmp_path / "o" / "new_buildings.gpkg", layer="sites",
                                       columns=["verdict"])
    assert list(fields[0]) == expected


def test_sites_grouped_again_in_a_notebook_leave_the_files_agreeing(tmp_path: Path
                                                                    ) -> None:
    """group_sites numbers the buildings it is given: run again on a result's
    buildings with another gap, it made new_buildings.geojson put every building in
    site 1 while sites.geojson and summary.json listed the result's two sites."""
    from changedet.measure import group_sites

    res = fake_result()
    group_sites(res.buildings, 5000.0, pixel_size_m=0.5)
    assert {b.site_id for b in res.buildings} == {1}
    write_outputs(res, tmp_path / "o")
    expected = {i: s.site_id for s in res.sites for i in s.building_ids}
    assert set(expected.values()) == {1, 2}
    buildings = json.loads((tmp_path / "o" / "new_buildings.geojson").read_text())
    assert {f["properties"]["id"]: f["properties"]["site_id"]
            for f in buildings["features"]} == expected
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert {b["id"]: b["site_id"] for b in summary["buildings"]} == expected
    _, _, _, fields = pyogrio.raw.read(tmp_path / "o" / "new_buildings.gpkg",
                                       layer="new_buildings", columns=["id", "site_id"])
    assert dict(zip(fields[0].tolist(), fields[1].tolist())) == expected


def test_no_verdict_property_without_claim(tmp_path: Path) -> None:
    write_outputs(fake_result(), tmp_path / "o")
    sites = json.loads((tmp_path / "o" / "sites.geojson").read_text())
    assert all("verdict" not in f["properties"] for f in sites["features"])


def test_refuses_non_empty_folder_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    # The message names the way out in both callers' terms.
    with pytest.raises(OutputError, match=r"not empty; use --overwrite \(overwrite=True"):
        write_outputs(fake_result(), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    write_outputs(fake_result(), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_empty_existing_folder_is_fine(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    write_outputs(fake_result(), tmp_path / "out")
    assert (tmp_path / "out" / "report.html").exists()


def test_outdir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        write_outputs(fake_result(), tmp_path / "f", overwrite=True)


def test_full_disk_leaves_outdir_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "change.tif"))

    monkeypatch.setattr(outputs, "write_cog", full)
    with pytest.raises(OutputError, match="no space left on device") as caught:
        write_outputs(fake_result(), out, overwrite=True)
    # Named after the output folder, not the temporary one it was written into.
    assert str(caught.value).startswith(f"{out}: cannot write change.tif")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_in_block_removes_temporary(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "new") as tmp:
            (tmp / "a").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, who can write anywhere: simulate the refusal.
    def refuse(*args: object, **kwargs: object) -> str:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(outputs.tempfile, "mkdtemp", refuse)
    with pytest.raises(OutputError, match="cannot write here"):
        write_outputs(fake_result(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_missing_parent(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="no such folder"):
        write_outputs(fake_result(), tmp_path / "a" / "b")


def test_no_building_found(tmp_path: Path) -> None:
    from changedet.measure import check_claim

    res = fake_result()
    res.buildings, res.sites = [], []
    res.claim = check_claim([], 13000.0, n_sites=3)
    write_outputs(res, tmp_path / "o")
    doc = json.loads((tmp_path / "o" / "new_buildings.geojson").read_text())
    assert doc == {"type": "FeatureCollection", "features": []}
    assert [n for n, _ in pyogrio.list_layers(tmp_path / "o" / "new_buildings.gpkg")] == \
        ["new_buildings", "sites"]
    html = (tmp_path / "o" / "report.html").read_text()
    assert "3 not found" in html


def test_rounding_to_seven_decimals_keeps_every_geometry_valid() -> None:
    from changedet.outputs import to_wgs84

    # Irregular polygons whose vertices lie a few 1e-7 degrees apart: rounding each
    # vertex on its own made some of them cross themselves.
    rng = np.random.default_rng(0)
    polygons = []
    for _ in range(300):
        n = int(rng.integers(5, 12))
        angle = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(5e-7, 2e-6, n)
        poly = shapely.Polygon(np.c_[10 + radius * np.cos(angle), 50 + radius * np.sin(angle)])
        if poly.is_valid:
            polygons.append(poly)
    out = to_wgs84(polygons, "EPSG:4326")
    assert all(g.is_valid and not g.is_empty for g in out)
    for g in out:
        xy = shapely.get_coordinates(g)
        np.testing.assert_array_equal(xy, np.round(xy, 7))


def _ring_area_m2(lonlat: np.ndarray) -> float:
    """Geodesic area of one lon/lat ring, which the ellipsoid's geodesics give right
    however its edges cross the antimeridian."""
    from pyproj import Geod

    return abs(Geod(ellps="WGS84").polygon_area_perimeter(lonlat[:, 0], lonlat[:, 1])[0])


def test_a_building_across_the_antimeridian_is_cut_there() -> None:
    from changedet.outputs import to_wgs84

    # A 100 m square with a hole astride 180 degrees, in UTM 60S (Fiji): a vertex-by-
    # vertex transform gives edges that jump round the globe, which made the GeoJSON
    # writer fail ("side location conflict") and the run lose every output.
    x, y = Transformer.from_crs(4326, 32760, always_xy=True).transform(180.0, -17.0)
    shell, hole = shapely.box(x - 50, y - 50, x + 50, y + 50), shapely.box(x + 10, y - 10,
                                                                          x + 30, y + 10)
    (out,) = to_wgs84([shell.difference(hole)], "EPSG:32760")
    assert out.is_valid and out.geom_type == "MultiPolygon" and len(out.geoms) == 2
    lon = shapely.get_coordinates(out)[:, 0]
    assert lon.min() >= -180.0 and lon.max() <= 180.0
    west, east = sorted(out.geoms, key=lambda g: g.centroid.x)
    assert east.bounds[2] == 180.0 and west.bounds[0] == -180.0
    assert sum(len(g.interiors) for g in out.geoms) == 1
    # The parts together cover the ground the square does.
    to_lonlat = Transformer.from_crs(32760, 4326, always_xy=True)

    def lonlat(ring: shapely.Geometry) -> np.ndarray:
        return np.column_stack(to_lonlat.transform(*shapely.get_coordinates(ring).T))

    expected = _ring_area_m2(lonlat(shell.exterior)) - _ring_area_m2(lonlat(hole.exterior))
    got = sum(_ring_area_m2(shapely.get_coordinates(g.exterior))
              - sum(_ring_area_m2(shapely.get_coordinates(r)) for r in g.interiors)
              for g in out.geoms)
    assert got == pytest.approx(expected, rel=1e-4)


def test_a_polygon_round_the_pole_is_closed_through_it() -> None:
    from changedet.outputs import to_wgs84

    # EPSG:3413 (north polar stereographic): a site round the North Pole, and one with
    # a hole round the pole (the pole then lies outside it).
    cap = shapely.box(-50, -60, 70, 40)
    ring = cap.difference(shapely.box(-10, -10, 10, 10))
    cap_out, ring_out = to_wgs84([cap, ring], "EPSG:3413")
    to_lonlat = Transformer.from_crs(3413, 4326, always_xy=True)
    inside = shapely.points(np.column_stack(to_lonlat.transform(
        [60.0, -40.0, 0.0, -40.0], [30.0, -50.0, 30.0, 30.0])))
    near_pole = shapely.Point(to_lonlat.transform(1.0, 1.0))
    for out in (cap_out, ring_out):
        assert out.is_valid and not out.is_empty
        lon = shapely.get_coordinates(out)[:, 0]
        assert lon.min() >= -180.0 and lon.max() <= 180.0
        assert out.bounds[0] == -180.0 and out.bounds[2] == 180.0
        assert shapely.contains(out, inside).all()
    assert cap_out.bounds[3] == 90.0 and cap_out.contains(near_pole)
    assert ring_out.bounds[3] < 90.0 and not ring_out.contains(near_pole)


def test_overwrite_never_deletes_the_inputs(tmp_path: Path) -> None:
    """An analyst keeping the scenes in the output folder must not lose them."""
    folder = tmp_path / "job"
    folder.mkdir()
    scene = folder / "after.tif"
    scene.write_bytes(b"pixels")
    result = fake_result()
    result.summary = {"inputs": {"before": {"path": str(tmp_path / "b.tif")},
                                 "after": {"path": str(scene)}, "aoi": None}}
    with pytest.raises(OutputError, match="holds the input"):
        write_outputs(result, folder, overwrite=True)
    assert scene.read_bytes() == b"pixels"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job"]


def test_a_symlinked_outdir_receives_the_outputs_and_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    paths = write_outputs(fake_result(), link)
    assert link.is_symlink() and link.resolve() == real
    assert sorted(p.name for p in real.iterdir()) == sorted(OUTPUT_FILES)
    assert all(p.exists() for p in paths.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


@pytest.mark.parametrize("spelling", ["link/job", "x/../real/job", "archive"])
def test_overwrite_never_deletes_inputs_reached_through_links_dots_or_archives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str) -> None:
    """OUTDIR and the input spelt through a symlinked parent folder, with "..", or
    the input read from a zip inside OUTDIR: the guard must still see it."""
    from changedet.outputs import check_outdir

    job = tmp_path / "real" / "job"
    job.mkdir(parents=True)
    (tmp_path / "x").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (job / "b.tif").write_bytes(b"pixels")
    (job / "scenes.zip").write_bytes(b"zip")
    monkeypatch.chdir(tmp_path)
    outdir = "real/job" if spelling == "archive" else spelling
    scene = ("/vsizip/real/job/scenes.zip/b.tif" if spelling == "archive"
             else f"{spelling}/b.tif")
    with pytest.raises(OutputError, match="holds the input"):
        check_outdir(outdir, overwrite=True, inputs=(scene,))
    assert (job / "b.tif").read_bytes() == b"pixels"


@pytest.mark.parametrize("scene", [
    "zip://real/job/scenes.zip!b.tif",
    "zip+file://{root}/real/job/scenes.zip!/inner/b.tif",
    "tar://{root}/real/job/scenes.zip!b.tif",
    "file://{root}/real/job/b.tif",
    "/vsizip/{{real/job/scenes.zip}}/b.tif",
    "/vsizip/{{{root}/real/job/scenes.zip}}/inner/b.tif",
    "/vsitar//vsigzip/{root}/real/job/scenes.zip/b.tif",
    "/vsitar/{{/vsigzip/{root}/real/job/scenes.zip}}/b.tif",
    "vrt://{root}/real/job/b.tif?bands=1",
    "/vsisubfile/0_100,{root}/real/job/b.tif",
    "/vsicrypt/key=x,file={root}/real/job/b.tif",
    "file://{root}/real/job/a!b/b.tif",
])
def test_overwrite_never_deletes_inputs_spelt_as_uris_or_braced_archives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scene: str) -> None:
    """rasterio's URIs (archive before "!") and GDAL's braces name a file in OUTDIR
    as surely as a plain path does."""
    from changedet.outputs import check_outdir

    job = tmp_path / "real" / "job"
    job.mkdir(parents=True)
    (job / "b.tif").write_bytes(b"pixels")
    (job / "scenes.zip").write_bytes(b"zip")
    (job / "a!b").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="holds the input"):
        check_outdir("real/job", overwrite=True, inputs=(scene.format(root=tmp_path),))


def test_remote_inputs_and_unreadable_folders_do_not_stop_an_overwrite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scene on S3 or over HTTP cannot lie in OUTDIR; a folder on an archive path
    that cannot be read is no reason for a traceback."""
    from changedet.outputs import check_outdir

    job = tmp_path / "job"
    job.mkdir()
    (job / "old.txt").write_text("x")

    def unreadable(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "is_file", unreadable)
    inputs = ("s3://bucket/job/b.tif", "https://example.org/job/b.tif",
              "zip+https://example.org/job/a.zip!b.tif",
              "/vsicurl/https://example.org/job/b.tif", "/vsizip/locked/a.zip/b.tif",
              "C://elsewhere/b.tif")
    assert check_outdir(job, overwrite=True, inputs=inputs) == job.resolve()


def test_a_drive_letter_is_not_a_scheme(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``C://data/job/b.tif`` (a Windows path) is local, not a remote URI: resolved
    here as the relative path it is on Linux, inside the folder "C:"."""
    from changedet.outputs import check_outdir

    job = tmp_path / "C:" / "data" / "job"
    job.mkdir(parents=True)
    (job / "b.tif").write_bytes(b"pixels")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputError, match="holds the input"):
        check_outdir(job, overwrite=True, inputs=("C://data/job/b.tif",))


def test_an_outdir_in_a_symlink_loop_is_a_one_line_error(tmp_path: Path) -> None:
    from changedet.outputs import check_outdir

    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    with pytest.raises(OutputError, match="loop1"):
        check_outdir(tmp_path / "loop1")


def test_a_mounted_outdir_is_filled_in_place(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A container's volume (``docker run -v ...:/out``) cannot be renamed, and its
    # parent is often not writable: the outputs are staged inside it.
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_mkdtemp = outputs.tempfile.mkdtemp

    def parent_refuses(*args: object, dir: object = None, **kwargs: object) -> str:
        if Path(str(dir)) == tmp_path:
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(outputs.os.path, "ismount", lambda p: Path(p) == out)
    monkeypatch.setattr(outputs.tempfile, "mkdtemp", parent_refuses)
    with pytest.raises(OutputError, match="not empty"):
        write_outputs(fake_result(), out)
    paths = write_outputs(fake_result(), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert all(p.exists() and p.parent == out for p in paths.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_outdir_that_cannot_be_renamed_still_gets_the_outputs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    real_replace = outputs.os.replace

    def busy(src: object, dst: object) -> None:
        if Path(str(src)) == out:
            raise OSError(errno.EBUSY, "Device or resource busy", str(src))
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", busy)
    write_outputs(fake_result(), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_unwritable_outdir_is_refused_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, for whom permission bits (but not chattr +i) give way.
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(outputs.os, "access", lambda p, mode: Path(p) != out)
    with pytest.raises(OutputError, match="out: folder cannot be written"):
        outputs.check_outdir(out)


def test_a_mounted_outdir_with_leftovers_and_a_folder_in_the_way_is_replaced_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed run's hidden part file and a folder named like an output: the staged
    files took the part file's name and were then deleted with the old content, and
    the folder stopped the renames half way, leaving old and new files mixed."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".summary.json.part").write_text("left by a killed run")
    (out / "report.html").mkdir()
    (out / "notes.txt").write_text("old")
    monkeypatch.setattr(outputs.os.path, "ismount", lambda p: Path(p) == out)
    write_outputs(fake_result(), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert (out / "report.html").is_file()
    assert json.loads((out / "summary.json").read_text())["buildings"]


def test_overwrite_refuses_an_outdir_that_is_the_aoi_folder(tmp_path: Path) -> None:
    aoi = tmp_path / "aoi"
    aoi.mkdir()
    (aoi / "aoi.shp").write_bytes(b"")
    with pytest.raises(OutputError, match="holds the input"):
        outputs.check_outdir(aoi, overwrite=True, inputs=[str(aoi)])
    assert (aoi / "aoi.shp").exists()


@pytest.mark.parametrize("when", ["aside", "placing"])
@pytest.mark.parametrize("error", [PermissionError, KeyboardInterrupt])
def test_an_overwrite_stopped_half_way_puts_the_old_content_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, error: type) -> None:
    """The old content was deleted entry by entry before the new files took their
    names: a failure (a read-only subfolder) or a Ctrl-C in between left OUTDIR with
    part of the old content and none or some of the new outputs."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.txt", "b.txt", "summary.json"):
        (out / name).write_text(name)
    (out / "sub").mkdir()
    (out / "sub" / "c.txt").write_text("c")
    real_rename, real_replace = outputs.os.rename, outputs.os.replace
    calls = {"n": 0}

    def rename(src: object, dst: object) -> None:
        # The third of the old entries moved aside (staging also renames, and
        # shutil.move falls back to copying on an OSError).
        aside = Path(str(dst)).parent.name.startswith(".out.old-")
        calls["n"] += aside
        if when == "aside" and aside and calls["n"] == 3:
            raise error(errno.EACCES, "Permission denied", str(src)) \
                if error is PermissionError else error()
        real_rename(src, dst)

    def replace(src: object, dst: object) -> None:
        if when == "placing" and Path(str(dst)).name == "report.html":
            raise error(errno.EACCES, "Permission denied", str(dst)) \
                if error is PermissionError else error()
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "rename", rename)
    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(OutputError if error is PermissionError else KeyboardInterrupt):
        write_outputs(fake_result(), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt", "sub", "summary.json"]
    assert (out / "summary.json").read_text() == "summary.json"
    assert (out / "sub" / "c.txt").read_text() == "c"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_existing_outdir_keeps_its_mode_and_inode(tmp_path: Path) -> None:
    """It was swapped for a new folder: a private (0750) OUTDIR came back 0755, and a
    shell inside it was left in a deleted folder."""
    out = tmp_path / "out"
    out.mkdir(mode=0o750)
    os.chmod(out, 0o750)
    inode = out.stat().st_ino
    write_outputs(fake_result(), out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750 and out.stat().st_ino == inode
    (out / "mine.txt").write_text("x")
    write_outputs(fake_result(), out, overwrite=True)
    assert out.stat().st_ino == inode
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_run_that_finds_its_new_outdir_filled_meanwhile_is_refused(tmp_path: Path) -> None:
    """Two runs into one new OUTDIR: the second moved the first's folder aside and
    both 'succeeded' without --overwrite."""
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="not empty"):
        with atomic_folder(out) as tmp:
            (tmp / "mine.txt").write_text("second run")
            out.mkdir()  # the first run lands meanwhile
            (out / "theirs.txt").write_text("first run")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_path_too_long_for_the_geopackage_is_refused_before_any_work(tmp_path: Path
                                                                      ) -> None:
    """SQLite's path limit is shorter than the system's: at about 2,000 characters
    the run did all its work and then failed as an 'internal error'."""
    deep = tmp_path.joinpath(*["d" * 200] * 10)
    deep.mkdir(parents=True)
    with pytest.raises(OutputError, match="cannot write a GeoPackage there"):
        outputs.check_outdir(deep / "out")
    assert list(deep.iterdir()) == []
    outputs.check_outdir(tmp_path / "out")  # a plain path passes


def test_overwrite_refuses_an_outdir_that_is_the_inputs_folder_mounted_elsewhere(
        tmp_path: Path) -> None:
    """A bind mount shows one folder at two paths (a container given the host folder
    twice): the paths differ, the inputs were deleted. The inodes tell."""
    import subprocess

    data, view = tmp_path / "data", tmp_path / "view"
    data.mkdir()
    view.mkdir()
    (data / "before.tif").write_bytes(b"scene")
    if subprocess.run(["mount", "--bind", str(data), str(view)],
                      capture_output=True).returncode != 0:
        pytest.skip("bind mounts need privileges")
    try:
        with pytest.raises(OutputError, match="holds the input"):
            outputs.check_outdir(view, overwrite=True, inputs=[str(data / "before.tif")])
    finally:
        subprocess.run(["umount", str(view)], check=True)
    assert (data / "before.tif").read_bytes() == b"scene"


def test_an_outdir_that_cannot_be_read_is_one_line(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    real_iterdir = Path.iterdir

    def refuse(self: Path):  # mode 0333, for a user who is not root
        if self == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    with pytest.raises(OutputError, match="folder cannot be read"):
        outputs.check_outdir(out)


def test_an_outdir_name_near_the_limit_is_written(tmp_path: Path) -> None:
    """The hidden temporary names added 16 characters to OUTDIR's: a name of 240 to
    255 characters was refused as 'cannot write here (File name too long)'."""
    out = tmp_path / ("n" * 250)
    write_outputs(fake_result(), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    write_outputs(fake_result(), out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.parametrize("step", range(10))  # 4 old entries aside, 6 outputs placed
def test_a_ctrl_c_just_after_any_step_of_an_overwrite_leaves_outdir_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """A signal is raised when the call it interrupted returns: a step taken but not
    yet recorded was not undone (an old entry then deleted with the hidden folder, or
    a new file left behind)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("old report")
    (out / "mine.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "a").write_text("a")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("keep")
    (out / "link").symlink_to(elsewhere)
    real_rename, real_replace = outputs.os.rename, outputs.os.replace
    calls = {"n": -1}

    def after(real):  # take the step, then be interrupted
        def call(src: object, dst: object) -> None:
            real(src, dst)
            if Path(str(dst)).parent.name.startswith(".out.old-") or \
                    Path(str(src)).name.endswith(".part"):
                calls["n"] += 1
                if calls["n"] == step:
                    raise KeyboardInterrupt
        return call

    monkeypatch.setattr(outputs.os, "rename", after(real_rename))
    monkeypatch.setattr(outputs.os, "replace", after(real_replace))
    with pytest.raises(KeyboardInterrupt):
        write_outputs(fake_result(), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["link", "mine.txt", "report.html", "sub"]
    assert (out / "report.html").read_text() == "old report"
    assert (out / "sub" / "a").read_text() == "a" and (elsewhere / "keep").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "out"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a folder's group needs root here")
def test_the_outputs_take_the_group_of_a_setgid_outdir(tmp_path: Path) -> None:
    """Files made in a setgid folder take its group; the outputs, made beside it and
    moved in, kept the creator's."""
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, -1, 100)
    os.chmod(out, 0o2770)
    write_outputs(fake_result(), out)
    assert {p.stat().st_gid for p in out.iterdir()} == {100}
