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
    grid = Grid(CRS.from_epsg(32651), Affine(1.0, 0, 741_000.0, 0, -1.0, 4_328_000.0),
                128, 128)
    path = tmp_path / "aoi.geojson"
    pyogrio.raw.write(path, geometry=np.asarray(shapely.to_wkb([shapely.box(*lonlat_box)]),
                                                dtype=object),
                      field_data=[], fields=[], driver="GeoJSON", geometry_type="Polygon",
                      crs="EPSG:4326")
    aoi = read_aoi(path, grid)
    assert aoi.mask.all()
    # Its geometry (drawn in the report) still holds the whole grid.
    assert aoi.geometry.contains(shapely.box(*grid.bounds))


def test_an_aoi_beside_the_scene_is_still_refused(tmp_path: Path) -> None:
    grid = Grid(CRS.from_epsg(32651), Affine(1.0, 0, 741_000.0, 0, -1.0, 4_328_000.0),
                128, 128)
    path = tmp_path / "far.geojson"
    pyogrio.raw.write(path, geometry=np.asarray(shapely.to_wkb([shapely.box(10, 10, 11, 11)]),
                                                dtype=object),
                      field_data=[], fields=[], driver="GeoJSON", geometry_type="Polygon",
                      crs="EPSG:4326")
    with pytest.raises(InputError, match="lies outside the scenes"):
        read_aoi(path, grid)


def test_projected_coordinates_labelled_lon_lat_are_named(tmp_path: Path) -> None:
    """UTM metres in a file that says EPSG:4326 failed deep in PROJ ("internal
    error: CRSError: Invalid projection: +proj=laea +lat_0=…")."""
    from changedet.aoi import read_polygons

    path = tmp_path / "utm_as_lonlat.geojson"
    pyogrio.raw.write(path, geometry=np.asarray(shapely.to_wkb(
        [shapely.box(741_000, 4_327_900, 741_100, 4_328_000)]), dtype=object),
        field_data=[], fields=[], driver="GeoJSON", geometry_type="Polygon", crs="EPSG:4326")
    with pytest.raises(InputError, match="out of range for its geographic CRS"):
        read_polygons(path)


def test_an_aoi_in_0_to_360_longitudes_still_covers_its_scene(tmp_path: Path) -> None:
    """Longitude 261 is -99: PROJ wraps it, and clipping to the scene's extent in
    -180..180 (tried first in a draft) would have thrown it away."""
    grid = Grid(CRS.from_epsg(32614), Affine(1.0, 0, 500_000.0, 0, -1.0, 3_500_000.0),
                128, 128)                                  # about 99° W, 31.6° N
    path = tmp_path / "aoi360.geojson"
    pyogrio.raw.write(path, geometry=np.asarray(shapely.to_wkb([shapely.box(260, 31, 262, 32)]),
                                                dtype=object),
                      field_data=[], fields=[], driver="GeoJSON", geometry_type="Polygon",
                      crs="EPSG:4326")
    assert read_aoi(path, grid).mask.all()


def test_an_aoi_in_an_archive_or_after_a_point_layer_is_read(tmp_path: Path) -> None:
    """GDAL's spellings of a file in a zip (as the scenes may be given) were refused as
    "no such file", and a GeoPackage whose first layer is points as "no polygons"."""
    import zipfile

    from changedet.aoi import read_polygons

    square = shapely.box(741_010.0, 4_327_900.0, 741_050.0, 4_327_950.0)
    shp = tmp_path / "aoi.shp"
    pyogrio.raw.write(shp, geometry=np.asarray(shapely.to_wkb([square]), dtype=object),
                      field_data=[], fields=[], driver="ESRI Shapefile",
                      geometry_type="Polygon", crs="EPSG:32651")
    archive = tmp_path / "aoi.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for part in tmp_path.glob("aoi.*"):
            if part != archive:
                zf.write(part, part.name)
    gpkg = tmp_path / "two.gpkg"
    point = shapely.Point(741_000.0, 4_327_000.0)
    pyogrio.raw.write(gpkg, geometry=np.asarray(shapely.to_wkb([point]), dtype=object),
                      field_data=[], fields=[], driver="GPKG", geometry_type="Point",
                      crs="EPSG:32651", layer="pts")
    pyogrio.raw.write(gpkg, geometry=np.asarray(shapely.to_wkb([square]), dtype=object),
                      field_data=[], fields=[], driver="GPKG", geometry_type="Polygon",
                      crs="EPSG:32651", layer="area", append=True)
    for spelling in (f"/vsizip/{archive}/aoi.shp", f"zip://{archive}!aoi.shp", str(gpkg),
                     str(tmp_path)):
        vector = read_polygons(spelling)
        assert len(vector.polygons) == 1
        assert vector.polygons[0].normalize().equals_exact(square.normalize(), 1e-6), spelling
    with pytest.raises(InputError, match="no such file"):
        read_polygons(tmp_path / "missing.geojson")


def test_an_aoi_smaller_than_a_pixel_is_not_said_to_lie_outside(tmp_path: Path) -> None:
    grid = Grid(CRS.from_epsg(32651), Affine(1.0, 0, 741_000.0, 0, -1.0, 4_328_000.0),
                128, 128)
    path = tmp_path / "tiny.geojson"
    tiny = shapely.box(741_010.1, 4_327_950.1, 741_010.3, 4_327_950.3)
    pyogrio.raw.write(path, geometry=np.asarray(shapely.to_wkb([tiny]), dtype=object),
                      field_data=[], fields=[], driver="GeoJSON", geometry_type="Polygon",
                      crs="EPSG:32651")
    with pytest.raises(InputError, match="smaller than a pixel"):
        read_aoi(path, grid)


def test_an_aoi_that_only_touches_the_scenes_lies_outside(tmp_path: Path) -> None:
    grid = Grid(CRS.from_epsg(32651), Affine(1.0, 0, 741_000.0, 0, -1.0, 4_328_000.0),
                128, 128)
    path = tmp_path / "beside.geojson"
    beside = shapely.box(741_128.0, 4_327_900.0, 742_128.0, 4_328_000.0)  # shares an edge
    pyogrio.raw.write(path, geometry=np.asarray(shapely.to_wkb([beside]), dtype=object),
                      field_data=[], fields=[], driver="GeoJSON", geometry_type="Polygon",
                      crs="EPSG:32651")
    with pytest.raises(InputError, match="lies outside the scenes"):
        read_aoi(path, grid)


def test_a_field_less_shapefile_is_numbered_from_one(tmp_path: Path) -> None:
    from changedet.aoi import read_polygons

    shp = tmp_path / "bare.shp"
    boxes = [shapely.box(741_000.0 + 20 * k, 4_327_900.0, 741_010.0 + 20 * k, 4_327_910.0)
             for k in range(3)]
    pyogrio.raw.write(shp, geometry=np.asarray(shapely.to_wkb(boxes), dtype=object),
                      field_data=[], fields=[], driver="ESRI Shapefile",
                      geometry_type="Polygon", crs="EPSG:32651")
    assert read_polygons(shp).names == ["1", "2", "3"]
