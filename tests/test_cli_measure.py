"""``changedet measure``: hand-traced polygons in any format and CRS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from click.testing import CliRunner
from pyproj import Transformer

from changedet.cli import main

# Three rectangles in UTM 51N (metres): 100 x 130, 100 x 100 and 60 x 50 m.
RECTS = [shapely.box(740800, 4328000, 740900, 4328130),
         shapely.box(741100, 4328000, 741200, 4328100),
         shapely.box(741400, 4328000, 741460, 4328050)]
AREAS = [13000.0, 10000.0, 3000.0]


def _write(path: Path, geoms: list, crs: str, driver: str, names: bool = True) -> Path:
    kwargs = {"field_data": [], "fields": []}
    if names:
        kwargs = {"field_data": [np.asarray([f"R{i + 1}" for i in range(len(geoms))],
                                            dtype=object)], "fields": ["name"]}
    pyogrio.raw.write(path, geometry=np.asarray(shapely.to_wkb(geoms), dtype=object),
                      driver=driver, crs=crs, **kwargs,
                      geometry_type="Point" if shapely.get_type_id(geoms[0]) == 0 else "Polygon")
    return path


def _lonlat(geoms: list) -> list:
    tr = Transformer.from_crs(32651, 4326, always_xy=True)
    return [shapely.transform(g, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
            for g in geoms]


@pytest.mark.parametrize("name, driver, crs, geoms", [
    ("traced.geojson", "GeoJSON", "EPSG:4326", _lonlat(RECTS)),
    ("traced.gpkg", "GPKG", "EPSG:32651", RECTS),
    ("traced.shp", "ESRI Shapefile", "EPSG:32651", RECTS),
])
def test_areas_in_any_format_and_crs(name: str, driver: str, crs: str, geoms: list,
                                     tmp_path: Path) -> None:
    path = _write(tmp_path / name, geoms, crs, driver)
    result = CliRunner().invoke(main, ["measure", str(path), "--json", "--pixel-size", "0"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [p["name"] for p in doc["polygons"]] == ["R1", "R2", "R3"]
    got = [p["area_m2"] for p in doc["polygons"]]
    np.testing.assert_allclose(got, AREAS, rtol=1e-4)
    for p in doc["polygons"]:
        assert p["geodesic_area_m2"] == pytest.approx(p["area_m2"], rel=5e-3)
    assert [p["perimeter_m"] for p in doc["polygons"]] == pytest.approx([460, 400, 220], rel=1e-4)


def test_uncertainty_from_pixel_size(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.gpkg", RECTS[:1], "EPSG:32651", "GPKG")
    result = CliRunner().invoke(main, ["measure", str(path), "--json", "--pixel-size", "1"])
    poly = json.loads(result.stdout)["polygons"][0]
    # Each edge known to half a pixel: (100 -/+ 1) x (130 -/+ 1).
    assert poly["area_m2_min"] == pytest.approx(99 * 129)
    assert poly["area_m2_max"] == pytest.approx(101 * 131)


@pytest.mark.parametrize("claim, sites, expected", [
    ("13000", "1", ["consistent"]),
    ("10000", "3", ["larger than claimed", "consistent", "smaller than claimed"]),
    ("13000", "4", ["consistent", "smaller than claimed", "smaller than claimed",
                    "not found"]),
    ("2000", "1", ["larger than claimed"]),
])
def test_claim_verdicts(claim: str, sites: str, expected: list[str], tmp_path: Path) -> None:
    path = _write(tmp_path / "t.geojson", _lonlat(RECTS), "EPSG:4326", "GeoJSON")
    args = ["measure", str(path), "--claim-m2", claim, "--claim-sites", sites,
            "--site-gap-m", "20", "--pixel-size", "0.5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"Claim: {sites} site" in result.stdout
    verdicts = [v["verdict"] for v in json.loads(
        CliRunner().invoke(main, args + ["--json"]).stdout)["claim"]["verdicts"]]
    assert verdicts == expected
    for v in set(expected):
        assert v in result.stdout


def test_envelope_basis_and_tolerance(tmp_path: Path) -> None:
    # Two 50 x 50 m buildings 10 m apart: footprint 5,000 m², envelope the 110 x 50 m
    # bar, 5,500 m² (the yard between them is filled straight across). On the zone's
    # central meridian, where UTM's areas are measured as they are (far from it, the
    # local zone's true ground areas would differ by UTM's scale).
    geoms = [shapely.box(500000, 4000000, 500050, 4000050),
             shapely.box(500060, 4000000, 500110, 4000050)]
    path = _write(tmp_path / "pair.gpkg", geoms, "EPSG:32651", "GPKG")
    base = ["measure", str(path), "--json", "--pixel-size", "0", "--site-gap-m", "20",
            "--claim-m2", "5450", "--claim-tolerance", "0.01"]
    footprint = json.loads(CliRunner().invoke(main, base).stdout)
    envelope = json.loads(CliRunner().invoke(main, base + ["--claim-basis", "envelope"]).stdout)
    assert footprint["claim"]["verdicts"][0]["verdict"] == "smaller than claimed"
    assert envelope["claim"]["verdicts"][0]["verdict"] == "consistent"
    assert envelope["sites"][0]["envelope_area_m2"] == pytest.approx(5500.0, abs=0.01)


def test_errors_are_one_line(tmp_path: Path) -> None:
    points = _write(tmp_path / "points.geojson", [shapely.Point(1, 2)], "EPSG:4326", "GeoJSON")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    for path, message in ((points, "no polygons"), (text, "not vector data"),
                          (tmp_path / "nope.gpkg", "no such file")):
        result = CliRunner().invoke(main, ["measure", str(path)])
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and message in lines[0], lines


def test_a_building_cut_at_the_antimeridian_is_measured_whole(tmp_path: Path) -> None:
    """detect writes a building across ±180° cut in two (RFC 7946); measure counted
    the two parts as two buildings, each with the cut in its perimeter."""
    whole = shapely.box(179.999, 65.0, 180.001, 65.001)
    cut = shapely.MultiPolygon([shapely.box(179.999, 65.0, 180.0, 65.001),
                                shapely.box(-180.0, 65.0, -179.999, 65.001)])
    far_apart = shapely.MultiPolygon([shapely.box(179.0, 65.0, 179.001, 65.001),
                                      shapely.box(-179.001, 65.0, -179.0, 65.001)])
    results = []
    for name, geom in (("whole", whole), ("cut", cut), ("apart", far_apart)):
        path = tmp_path / f"{name}.geojson"
        pyogrio.raw.write(path, geometry=np.asarray(shapely.to_wkb([geom]), dtype=object),
                          field_data=[], fields=[], driver="GeoJSON", crs="EPSG:4326",
                          geometry_type=geom.geom_type)
        result = CliRunner().invoke(main, ["measure", str(path), "--json"])
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.stdout)["polygons"])
    (whole_m,), (cut_m,) = results[0], results[1]
    assert cut_m["area_m2"] == pytest.approx(whole_m["area_m2"], rel=1e-6)
    assert cut_m["perimeter_m"] == pytest.approx(whole_m["perimeter_m"], rel=1e-6)
    assert len(results[2]) == 2  # two buildings either side of the meridian stay two


def test_a_file_of_no_feature_measures_as_nothing(tmp_path: Path) -> None:
    """detect's new_buildings.geojson of a scene where nothing new was found: measure
    refused it ("contains no features", exit 1)."""
    empty = tmp_path / "new_buildings.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    result = CliRunner().invoke(main, ["measure", str(empty), "--claim-m2", "13000"])
    assert result.exit_code == 0, result.output
    assert "Not consistent with the claim" in result.stdout
    out = json.loads(CliRunner().invoke(main, ["measure", str(empty), "--json"]).stdout)
    assert (out["polygons"], out["sites"]) == ([], [])


def test_coordinates_nowhere_and_not_numbers_are_named(tmp_path: Path) -> None:
    """Coordinates a projected CRS places nowhere on Earth (a unit slip) failed inside
    PROJ as an internal error; a polygon with a NaN coordinate was dropped by the
    repair of invalid geometries and went unmeasured, exit 0."""
    far = _write(tmp_path / "far.geojson", [shapely.box(1e12, 1e12, 1e12 + 100, 1e12 + 100)],
                 "EPSG:32651", "GeoJSON")
    # Written as text: GDAL writes a NaN geometry as null. (GDAL reads NaN literals.)
    ring = [[740800, 4328000], [740900, float("nan")], [740900, 4328130], [740800, 4328000]]
    features = [{"type": "Feature", "properties": {"name": name},
                 "geometry": {"type": "Polygon", "coordinates": coords}}
                for name, coords in (("R1", [[list(xy) for xy in RECTS[0].exterior.coords]]),
                                     ("R2", [ring]))]
    holed = tmp_path / "nan.geojson"
    holed.write_text(json.dumps({"type": "FeatureCollection", "features": features, "crs": {
        "type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32651"}}}))
    for path, message in ((far, "places nowhere on Earth"),
                          (holed, "feature R2 has a coordinate that is not a number")):
        result = CliRunner().invoke(main, ["measure", str(path)])
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and message in lines[0], lines
        assert "internal error" not in lines[0]


@pytest.mark.parametrize("args", [["--claim-m2", "-1"], ["--claim-sites", "2"],
                                  ["--pixel-size", "-1"], ["--claim-m2", "5", "--claim-tolerance", "2"]])
def test_bad_values(args: list[str], tmp_path: Path) -> None:
    path = _write(tmp_path / "t.gpkg", RECTS, "EPSG:32651", "GPKG")
    assert CliRunner().invoke(main, ["measure", str(path), *args]).exit_code == 2


def test_table_output(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.gpkg", RECTS, "EPSG:32651", "GPKG", names=False)
    result = CliRunner().invoke(main, ["measure", str(path), "--pixel-size", "0"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["Polygon", "Area"]
    assert lines[1].split()[:2] == ["1", "13,000.0"]


def test_a_closed_stdout_ends_quietly(capsys: "pytest.CaptureFixture[str]") -> None:
    """``changedet measure FILE | head -1`` printed "Error: Broken pipe": the broken
    pipe is left to click, which ends quietly with status 1."""
    import click
    import pytest

    from changedet.cli.options import handle_errors

    @click.command()
    @handle_errors
    def table() -> None:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(SystemExit) as stop:
        table.main([])
    assert stop.value.code == 1
    assert "Error" not in capsys.readouterr().err


def test_overlapping_polygons_are_warned_of(tmp_path: Path) -> None:
    """A roof traced twice counts twice in its site's built area: said, with the
    overlap, so that a verdict of 'larger than claimed' is not taken at face value."""
    square = shapely.box(500000, 4320000, 500090, 4320090)
    path = _write(tmp_path / "dup.gpkg", [square, square, shapely.box(501000, 4320000,
                                                                       501010, 4320010)],
                  "EPSG:32651", "GPKG")
    result = CliRunner().invoke(main, ["measure", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert "overlap by 8100.0 m²" in result.stderr
    assert result.stderr.count("overlap") == 1


def test_a_file_across_three_utm_zones_is_measured_polygon_by_polygon(tmp_path: Path) -> None:
    """100 m squares at 120.5, 126.4 and 131.5 E in one lon/lat file (centred in zone
    52): each measures 10,000 m², not the +1.3 % of zone 52's metres at 120.5 E."""
    squares = []
    for lon in (120.5, 126.4, 131.5):
        zone = 32600 + int((lon + 180) // 6) + 1
        x, y = Transformer.from_crs(4326, zone, always_xy=True).transform(lon, 37.0)
        back = Transformer.from_crs(zone, 4326, always_xy=True)
        squares.append(shapely.transform(shapely.box(x, y, x + 100, y + 100),
                                         lambda xy: np.column_stack(back.transform(xy[:, 0],
                                                                                   xy[:, 1]))))
    path = _write(tmp_path / "zones.geojson", squares, "EPSG:4326", "GeoJSON")
    result = CliRunner().invoke(main, ["measure", str(path), "--json", "--pixel-size", "0",
                                       "--claim-m2", "10000", "--claim-sites", "3"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [p["area_m2"] for p in doc["polygons"]] == [10000.0] * 3
    assert [p["perimeter_m"] for p in doc["polygons"]] == [400.0] * 3
    assert [s["envelope_area_m2"] for s in doc["sites"]] == [10000.0] * 3
    assert [v["verdict"] for v in doc["claim"]["verdicts"]] == ["consistent"] * 3
    assert "geodesic" not in result.stderr
