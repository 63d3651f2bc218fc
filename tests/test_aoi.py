"""AOI helpers (reading AOI files is fuzzed in test_fuzz_aoi.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

from changedet.aoi import keep_labels_in_aoi, read_aoi
from changedet.errors import InputError
from changedet.raster import Grid

#: A 128 m square of UTM 51N, 1 m pixels.
GRID = Grid(CRS.from_epsg(32651), Affine(1.0, 0, 741_000.0, 0, -1.0, 4_328_000.0), 128, 128)


def _write(path: Path, geoms: list, crs: str, driver: str = "GeoJSON",
           **kwargs: object) -> Path:
    """Write geometries, one feature each and no fields, as a vector file."""
    kind = geoms[0].geom_type if geoms else "Polygon"
    pyogrio.raw.write(path, geometry=np.asarray(shapely.to_wkb(geoms), dtype=object),
                      field_data=[], fields=[], driver=driver, geometry_type=kind, crs=crs,
                      **kwargs)
    return path


def test_layers_of_no_declared_type_and_several_polygon_layers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A GeoPackage whose layers are of the generic type (as some tools write them)
    was read at its first layer, points, and refused; of two polygon layers the first
    was read without saying so (an AOI layer measured as the buildings)."""
    from changedet.aoi import read_polygons

    square = shapely.box(741_010.0, 4_327_900.0, 741_050.0, 4_327_950.0)
    generic = tmp_path / "generic.gpkg"
    pyogrio.raw.write(generic, geometry=np.asarray(shapely.to_wkb(
        [shapely.Point(741_000.0, 4_327_000.0)]), dtype=object), field_data=[], fields=[],
        driver="GPKG", geometry_type="Unknown", crs="EPSG:32651", layer="labels")
    pyogrio.raw.write(generic, geometry=np.asarray(shapely.to_wkb([square]), dtype=object),
                      field_data=[], fields=[], driver="GPKG", geometry_type="Unknown",
                      crs="EPSG:32651", layer="truth", append=True)
    assert read_polygons(generic).polygons[0].equals(square)
    two = _write(tmp_path / "two.gpkg", [square.buffer(500)], "EPSG:32651", "GPKG",
                 layer="aoi")
    _write(two, [square], "EPSG:32651", "GPKG", layer="buildings", append=True)
    with caplog.at_level("WARNING", logger="changedet"):
        read_polygons(two)
    assert "2 polygon layers (aoi, buildings); reading the first, 'aoi'" in caplog.text


def test_keep_labels_in_aoi() -> None:
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[0:4, 0:4] = 1  # fully inside
    labels[0:4, 5:9] = 2  # 3/4 inside: kept whole
    labels[6:10, 0:4] = 3  # 1/4 inside: dropped
    aoi = np.zeros((10, 10), dtype=bool)
    aoi[0:4, 0:8] = True
    aoi[6:7, 0:4] = True
    out = keep_labels_in_aoi(labels, aoi)
    assert set(np.unique(out)) == {0, 1, 2}
    assert (out == 2).sum() == 16


@pytest.mark.parametrize("lonlat_box", [(-180, -90, 180, 90), (0, 0, 170, 80),
                                        (125, 38.5, 126.5, 39.5)])
def test_an_aoi_larger_than_the_scene_covers_all_of_it(tmp_path: Path,
                                                       lonlat_box: tuple) -> None:
    """A world or hemisphere box in lon/lat has vertices UTM cannot reach: reprojected
    whole it came out empty and was refused as lying outside the scenes."""
    path = _write(tmp_path / "aoi.geojson", [shapely.box(*lonlat_box)], "EPSG:4326")
    aoi = read_aoi(path, GRID)
    assert aoi.mask.all()
    # Its geometry (drawn in the report) still holds the whole grid.
    assert aoi.geometry.contains(shapely.box(*GRID.bounds))


def test_a_long_edge_drawn_in_lon_lat_keeps_its_line_on_the_grid(tmp_path: Path) -> None:
    """An AOI 50 km wide in lon/lat whose southern edge (a parallel) crosses the scene:
    reprojected by its corners alone, that edge became a chord tens of metres south of
    the parallel. The mask follows the parallel to within a pixel."""
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs(GRID.crs, "EPSG:4326", always_xy=True)
    cols, rows = np.meshgrid(np.arange(GRID.width) + 0.5, np.arange(GRID.height) + 0.5)
    lon, lat = to_lonlat.transform(*(GRID.transform @ (cols, rows)))
    lon0, lat0 = float(np.median(lon)), float(np.median(lat))
    path = _write(tmp_path / "wide.geojson",
                  [shapely.box(lon0 - 0.3, lat0, lon0 + 0.3, lat0 + 0.2)], "EPSG:4326")
    mask = read_aoi(path, GRID).mask
    differ = np.count_nonzero(mask != (lat >= lat0))
    assert differ <= GRID.width  # a row of pixel centres on the line, at most


def test_an_aoi_thinner_than_a_coarse_pixel_is_checked_on_the_fine_grid(
        tmp_path: Path) -> None:
    """A windowed run checks the AOI on its scene coarsened to 2048 px (8 x here). A
    3 m square between the coarse pixel centres still covers 36 of the scene's own."""
    from changedet.pipeline import _decimated

    x0, y0 = 741_000.0, 4_328_000.0
    fine = Grid(CRS.from_epsg(32651), Affine(0.5, 0, x0, 0, -0.5, y0), 16384, 16384)
    coarse = _decimated(fine, 2048)  # 4 m pixels, centres 2 m off each 4 m line
    path = _write(tmp_path / "small.geojson",
                  [shapely.box(x0 + 6.5, y0 - 9.5, x0 + 9.5, y0 - 6.5)], "EPSG:32651")
    with pytest.raises(InputError, match="covers no pixel centre"):
        read_aoi(path, coarse)
    aoi = read_aoi(path, coarse, fine=fine)
    assert aoi.geometry.area == pytest.approx(9.0)
    # The same on a south-up grid (rows run north), which a scene may have.
    south_up = Grid(fine.crs, Affine(0.5, 0, x0, 0, 0.5, y0 - 8192.0), 16384, 16384)
    assert read_aoi(path, _decimated(south_up, 2048), fine=south_up).geometry.area \
        == pytest.approx(9.0)
    # Beside the scene it is still refused, fine grid or not.
    far = _write(tmp_path / "far.geojson", [shapely.box(x0 - 99, y0 + 50, x0 - 90, y0 + 59)],
                 "EPSG:32651")
    with pytest.raises(InputError, match="lies outside the scenes"):
        read_aoi(far, coarse, fine=fine)


def test_an_aoi_beside_the_scene_is_still_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "far.geojson", [shapely.box(10, 10, 11, 11)], "EPSG:4326")
    with pytest.raises(InputError, match="lies outside the scenes"):
        read_aoi(path, GRID)


def test_projected_coordinates_labelled_lon_lat_are_named(tmp_path: Path) -> None:
    """UTM metres in a file that says EPSG:4326 failed deep in PROJ ("internal
    error: CRSError: Invalid projection: +proj=laea +lat_0=…")."""
    from changedet.aoi import read_polygons

    path = _write(tmp_path / "utm_as_lonlat.geojson",
                  [shapely.box(741_000, 4_327_900, 741_100, 4_328_000)], "EPSG:4326")
    with pytest.raises(InputError, match="out of range for its geographic CRS"):
        read_polygons(path)


def test_an_aoi_in_0_to_360_longitudes_still_covers_its_scene(tmp_path: Path) -> None:
    """Longitude 261 is -99: PROJ wraps it, and clipping to the scene's extent in
    -180..180 (tried first in a draft) would have thrown it away."""
    grid = Grid(CRS.from_epsg(32614), Affine(1.0, 0, 500_000.0, 0, -1.0, 3_500_000.0),
                128, 128)                                  # about 99° W, 31.6° N
    path = _write(tmp_path / "aoi360.geojson", [shapely.box(260, 31, 262, 32)], "EPSG:4326")
    assert read_aoi(path, grid).mask.all()


def test_an_aoi_in_an_archive_or_after_a_point_layer_is_read(tmp_path: Path) -> None:
    """GDAL's spellings of a file in a zip (as the scenes may be given) were refused as
    "no such file", and a GeoPackage whose first layer is points as "no polygons"."""
    import zipfile

    from changedet.aoi import read_polygons

    square = shapely.box(741_010.0, 4_327_900.0, 741_050.0, 4_327_950.0)
    _write(tmp_path / "aoi.shp", [square], "EPSG:32651", "ESRI Shapefile")
    archive = tmp_path / "aoi.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for part in tmp_path.glob("aoi.*"):
            if part != archive:
                zf.write(part, part.name)
    gpkg = _write(tmp_path / "two.gpkg", [shapely.Point(741_000.0, 4_327_000.0)],
                  "EPSG:32651", "GPKG", layer="pts")
    _write(gpkg, [square], "EPSG:32651", "GPKG", layer="area", append=True)
    for spelling in (f"/vsizip/{archive}/aoi.shp", f"zip://{archive}!aoi.shp", str(gpkg),
                     str(tmp_path)):
        vector = read_polygons(spelling)
        assert len(vector.polygons) == 1
        assert vector.polygons[0].normalize().equals_exact(square.normalize(), 1e-6), spelling
    with pytest.raises(InputError, match="no such file"):
        read_polygons(tmp_path / "missing.geojson")


def test_an_aoi_smaller_than_a_pixel_is_not_said_to_lie_outside(tmp_path: Path) -> None:
    tiny = shapely.box(741_010.1, 4_327_950.1, 741_010.3, 4_327_950.3)
    path = _write(tmp_path / "tiny.geojson", [tiny], "EPSG:32651")
    with pytest.raises(InputError, match="smaller than a pixel"):
        read_aoi(path, GRID)


def test_an_aoi_that_only_touches_the_scenes_lies_outside(tmp_path: Path) -> None:
    beside = shapely.box(741_128.0, 4_327_900.0, 742_128.0, 4_328_000.0)  # shares an edge
    path = _write(tmp_path / "beside.geojson", [beside], "EPSG:32651")
    with pytest.raises(InputError, match="lies outside the scenes"):
        read_aoi(path, GRID)


def test_a_field_less_shapefile_is_numbered_from_one(tmp_path: Path) -> None:
    from changedet.aoi import read_polygons

    boxes = [shapely.box(741_000.0 + 20 * k, 4_327_900.0, 741_010.0 + 20 * k, 4_327_910.0)
             for k in range(3)]
    shp = _write(tmp_path / "bare.shp", boxes, "EPSG:32651", "ESRI Shapefile")
    assert read_polygons(shp).names == ["1", "2", "3"]
