"""Bad input gets a clear answer, nothing is lost, nothing is trusted.

The matrix of issue 8: every bad input to ``changedet detect`` ends with exit status
1 (2 for usage), one line on stderr naming the file and the problem, no traceback
unless ``-v``, and OUTDIR exactly as it was before (names and bytes). Inputs that look
odd but are fine (panchromatic, uint16, float32 with NaN, geographic near the pole)
must work.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner, Result
from pyproj import CRS, Geod, Transformer
from rasterio.warp import Resampling, reproject

from changedet import outputs
from changedet.cli import main
from changedet.errors import InputError, ProcessingError
from changedet.raster import Grid, Scene, align_pair, analysis_grid, read_scene, warp_scene

from .conftest import write_geotiff

SIZE = 192  # big enough for a 64 px overlap and a few buildings, small enough to be fast


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small synthetic suburb pair, its arrays and georeference (written once)."""
    from changedet.synth import SynthParams, write_synthetic_pair

    out = tmp_path_factory.mktemp("reliab") / "pair"
    paths = write_synthetic_pair(SynthParams.for_scenario("suburb", seed=1, size=SIZE), out)
    info: dict[str, Any] = {"dir": out, **paths}
    for key in ("before", "after"):
        with rasterio.open(paths[key]) as ds:
            info[key + "_data"] = ds.read()
            info[key + "_crs"] = ds.crs
            info[key + "_transform"] = ds.transform
    return info


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (and the folder's siblings' names) with its bytes."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    return files | {"..": "\n".join(sorted(p.name for p in folder.parent.iterdir())).encode()}


@pytest.fixture
def outdir(tmp_path: Path) -> Path:
    """An existing OUTDIR with a sentinel file from an earlier run."""
    out = tmp_path / "results" / "out"
    out.mkdir(parents=True)
    (out / "summary.json").write_text('{"earlier": "run"}\n')
    return out


def _detect(before: Path | str, after: Path | str, out: Path, *extra: str,
            verbose: bool = False) -> Result:
    args = (["-v"] if verbose else []) + ["detect", str(before), str(after), "-o", str(out),
                                          "--overwrite", *extra]
    return CliRunner().invoke(main, args)


def _assert_clean_failure(result: Result, before: dict[str, bytes], out: Path, names: str,
                          code: int = 1) -> str:
    """Exit ``code``, one ``Error:`` line naming ``names``, no traceback, OUTDIR unchanged."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    if code == 1:
        assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.output
    error_lines = [line for line in lines if line.startswith("Error:")]
    assert len(error_lines) == 1, result.stderr
    if code == 1:
        # Usage errors print the usage lines first; other failures print one line only
        # (warnings from the logger aside).
        assert [line for line in lines if not line.startswith("changedet:")] == error_lines
    assert names in error_lines[0], (names, error_lines[0])
    assert result.stdout == ""
    assert _snapshot(out) == before
    return error_lines[0]


def _write(path: Path, data: np.ndarray, pair: dict[str, Any], key: str = "before",
           **kwargs: Any) -> Path:
    kwargs.setdefault("crs", pair[key + "_crs"])
    kwargs.setdefault("transform", pair[key + "_transform"])
    return write_geotiff(path, data, **kwargs)


# --------------------------------------------------------------------- failures: files


def test_missing_file(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    before = _snapshot(outdir)
    missing = tmp_path / "nowhere.tif"
    msg = _assert_clean_failure(_detect(missing, pair["after"], outdir), before, outdir,
                                str(missing))
    assert "no such file" in msg


def test_not_a_raster(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    before = _snapshot(outdir)
    text = tmp_path / "notes.tif"
    text.write_text("these are my field notes, not an image\n")
    msg = _assert_clean_failure(_detect(pair["before"], text, outdir), before, outdir, str(text))
    assert "not a raster" in msg


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_geotiff(pair: dict[str, Any], outdir: Path, tmp_path: Path,
                           keep: float) -> None:
    before = _snapshot(outdir)
    raw = Path(pair["after"]).read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: int(len(raw) * keep)])
    msg = _assert_clean_failure(_detect(pair["before"], cut, outdir), before, outdir, str(cut))
    # GDAL's own reason, not rasterio's "See previous exception for details".
    assert "previous exception" not in msg


def test_a_cog_cut_in_its_tiles_names_the_failed_read(pair: dict[str, Any], outdir: Path,
                                                      tmp_path: Path) -> None:
    """A COG keeps its header at the start: cut short, it opens and fails in a tile."""
    import rasterio.shutil

    before = _snapshot(outdir)
    cog = tmp_path / "cog.tif"
    rasterio.shutil.copy(pair["after"], cog, driver="COG", blocksize=64)
    cut = tmp_path / "cut_cog.tif"
    cut.write_bytes(cog.read_bytes()[: int(cog.stat().st_size * 0.6)])
    msg = _assert_clean_failure(_detect(pair["before"], cut, outdir), before, outdir, str(cut))
    assert "truncated or corrupt" in msg and "previous exception" not in msg


@pytest.mark.parametrize("windows", [[], ["--window-px", "256"]], ids=["whole", "windowed"])
def test_a_blank_scene_is_refused(pair: dict[str, Any], outdir: Path, tmp_path: Path,
                                  windows: list[str]) -> None:
    """An all-black tile without nodata has no noise to measure change against: it
    used to give 'new buildings' (190 and 50 m² on the fixture)."""
    # The committed fixture (1200 px): large enough to be read in 256 px windows.
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "compound"
    before = _snapshot(outdir)
    with rasterio.open(fixture / "after.tif") as src:
        profile = src.profile
        blank_pixels = np.zeros((src.count, src.height, src.width), np.uint8)
    blank = tmp_path / "black.tif"
    with rasterio.open(blank, "w", **profile) as dst:
        dst.write(blank_pixels)
    msg = _assert_clean_failure(_detect(fixture / "before.tif", blank, outdir, *windows),
                                before, outdir, str(blank))
    assert "is blank: every valid pixel is (0, 0, 0)" in msg


def test_no_crs(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    before = _snapshot(outdir)
    path = _write(tmp_path / "nocrs.tif", pair["after_data"], pair, "after", crs=None)
    msg = _assert_clean_failure(_detect(pair["before"], path, outdir), before, outdir, str(path))
    assert "CRS" in msg


def test_no_geotransform(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    before = _snapshot(outdir)
    path = _write(tmp_path / "nogt.tif", pair["before_data"], pair, transform=None, crs=None)
    msg = _assert_clean_failure(_detect(path, pair["after"], outdir), before, outdir, str(path))
    assert "geotransform" in msg


def test_scenes_do_not_overlap(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    before = _snapshot(outdir)
    far = pair["after_transform"] @ Affine.translation(10 * SIZE, 0)
    path = _write(tmp_path / "far.tif", pair["after_data"], pair, "after", transform=far)
    msg = _assert_clean_failure(_detect(pair["before"], path, outdir), before, outdir, str(path))
    assert "does not overlap" in msg


def test_overlap_under_64_pixels(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    before = _snapshot(outdir)
    # Shifted so that only a 40 x 40 px corner is shared.
    t = pair["before_transform"] @ Affine.translation(SIZE - 40, SIZE - 40)
    path = _write(tmp_path / "corner.tif", pair["after_data"], pair, "after", transform=t,
                  crs=pair["before_crs"])
    msg = _assert_clean_failure(_detect(pair["before"], path, outdir), before, outdir, str(path))
    assert "64 x 64" in msg


def test_all_nodata_scene(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    before = _snapshot(outdir)
    empty = np.zeros_like(pair["before_data"])
    path = _write(tmp_path / "empty.tif", empty, pair, nodata=0)
    msg = _assert_clean_failure(_detect(path, pair["after"], outdir), before, outdir, str(path))
    assert "no valid pixels" in msg


def test_overlap_all_nodata(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    before = _snapshot(outdir)
    half = SIZE // 2
    b = pair["before_data"].copy()
    b[:, :, half:] = 0  # the before scene has data only in its left half
    a = pair["after_data"].copy()
    a[:, :, :half + 8] = 0  # the after scene only in its right half
    pb = _write(tmp_path / "left.tif", b, pair, nodata=0)
    pa = _write(tmp_path / "right.tif", a, pair, crs=pair["before_crs"], nodata=0)
    msg = _assert_clean_failure(_detect(pb, pa, outdir), before, outdir, str(pa))
    assert "no valid pixel in common" in msg


def test_different_band_counts_without_bands(pair: dict[str, Any], outdir: Path,
                                             tmp_path: Path) -> None:
    before = _snapshot(outdir)
    pan = _write(tmp_path / "pan.tif", pair["before_data"][:1], pair)
    msg = _assert_clean_failure(_detect(pan, pair["after"], outdir), before, outdir,
                                str(pair["after"]))
    assert "--bands" in msg


def test_different_band_counts_with_bands_work(pair: dict[str, Any], tmp_path: Path) -> None:
    # What the error above advises: --bands picks matching bands from both scenes.
    four = np.concatenate([pair["before_data"], pair["before_data"][:1]])
    path = _write(tmp_path / "four.tif", four, pair)
    summary = _ok(_detect(path, pair["after"], tmp_path / "out", "--bands", "1,2,3"))
    assert summary["inputs"]["before"]["bands"] == [1, 2, 3]


def test_band_out_of_range(pair: dict[str, Any], outdir: Path) -> None:
    before = _snapshot(outdir)
    msg = _assert_clean_failure(_detect(pair["before"], pair["after"], outdir, "--bands", "1,2,5"),
                                before, outdir, str(pair["before"]))
    assert "band 5" in msg


# ------------------------------------------------------------------------ failures: AOI


def _aoi_file(path: Path, geometry: shapely.Geometry, crs: Any, props: dict | None = None) -> Path:
    """A one-feature GeoJSON (with a named CRS when not WGS84, as GDAL reads it)."""
    epsg = CRS.from_user_input(crs).to_epsg()
    doc = {"type": "FeatureCollection",
           "crs": {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{epsg}"}},
           "features": [{"type": "Feature", "properties": props or {"name": "aoi"},
                         "geometry": shapely.geometry.mapping(geometry)}]}
    path.write_text(json.dumps(doc))
    return path


def test_aoi_outside_the_scenes(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    before = _snapshot(outdir)
    x0, y0 = pair["before_transform"] @ (0, 0)
    box = shapely.box(x0 - 5000, y0 + 5000, x0 - 4000, y0 + 6000)
    aoi = _aoi_file(tmp_path / "away.geojson", box, pair["before_crs"])
    msg = _assert_clean_failure(_detect(pair["before"], pair["after"], outdir, "--aoi", str(aoi)),
                                before, outdir, str(aoi))
    assert "outside" in msg


def test_aoi_degenerate_geometry(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    # A "polygon" whose ring is a line: invalid, and repairing it leaves no area.
    before = _snapshot(outdir)
    x0, y0 = pair["before_transform"] @ (10, 10)
    flat = shapely.Polygon([(x0, y0), (x0 + 50, y0), (x0 + 20, y0), (x0, y0)])
    aoi = _aoi_file(tmp_path / "flat.geojson", flat, pair["before_crs"])
    msg = _assert_clean_failure(_detect(pair["before"], pair["after"], outdir, "--aoi", str(aoi)),
                                before, outdir, str(aoi))
    assert "no polygons" in msg


@pytest.mark.parametrize("content", [b"just some text\n", b"\x89PNG\r\n\x1a\n\x00\x00garbage",
                                     b'{"type": "FeatureCollection", "features": ['])
def test_aoi_not_vector_data(pair: dict[str, Any], outdir: Path, tmp_path: Path,
                             content: bytes) -> None:
    before = _snapshot(outdir)
    aoi = tmp_path / "aoi.geojson"
    aoi.write_bytes(content)
    _assert_clean_failure(_detect(pair["before"], pair["after"], outdir, "--aoi", str(aoi)),
                          before, outdir, str(aoi))


def test_aoi_is_a_raster(pair: dict[str, Any], outdir: Path) -> None:
    before = _snapshot(outdir)
    msg = _assert_clean_failure(
        _detect(pair["before"], pair["after"], outdir, "--aoi", str(pair["before"])),
        before, outdir, str(pair["before"]))
    assert "not vector data" in msg


def test_aoi_without_crs(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    import pyogrio.raw

    before = _snapshot(outdir)
    x0, y0 = pair["before_transform"] @ (10, 10)
    aoi = tmp_path / "noprj.shp"
    geometry = np.asarray([shapely.to_wkb(shapely.box(x0, y0 - 50, x0 + 50, y0))], dtype=object)
    with pytest.warns(UserWarning, match="crs"):  # pyogrio's own warning: that is the point
        pyogrio.raw.write(aoi, geometry=geometry, field_data=[], fields=[],
                          driver="ESRI Shapefile", geometry_type="Polygon", crs=None)
    msg = _assert_clean_failure(_detect(pair["before"], pair["after"], outdir, "--aoi", str(aoi)),
                                before, outdir, str(aoi))
    assert "coordinate reference system" in msg


def test_aoi_missing(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    before = _snapshot(outdir)
    aoi = tmp_path / "none.gpkg"
    _assert_clean_failure(_detect(pair["before"], pair["after"], outdir, "--aoi", str(aoi)),
                          before, outdir, str(aoi))


# -------------------------------------------------------------------- failures: usage


@pytest.mark.parametrize("option,value", [
    ("--claim-m2", "-13000"), ("--claim-m2", "0"), ("--claim-m2", "1e12"),
    ("--claim-m2", "nan"), ("--claim-m2", "inf"), ("--claim-m2", "lots"),
    ("--claim-tolerance", "-0.1"), ("--claim-tolerance", "5"), ("--claim-sites", "0"),
    ("--claim-sites", "-3"), ("--min-area-m2", "-1"), ("--bands", "3,x,1"), ("--bands", "0,1,2"),
])
def test_negative_or_absurd_values_are_usage_errors(pair: dict[str, Any], outdir: Path,
                                                    option: str, value: str) -> None:
    before = _snapshot(outdir)
    result = _detect(pair["before"], pair["after"], outdir, option, value)
    _assert_clean_failure(result, before, outdir, option, code=2)


# ----------------------------------------------------------------- failures: outputs


def test_output_folder_is_a_file(pair: dict[str, Any], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    target = work / "out.txt"
    target.write_text("keep me\n")
    before = _snapshot(work)
    result = _detect(pair["before"], pair["after"], target)
    _assert_clean_failure(result, before, work, str(target), code=2)


def test_output_parent_missing(pair: dict[str, Any], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    target = work / "no" / "such" / "out"
    before = _snapshot(work)
    _assert_clean_failure(_detect(pair["before"], pair["after"], target), before, work,
                          "no such folder")


def test_unwritable_output_folder(pair: dict[str, Any], outdir: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, which ignores permission bits: refuse the way the OS would.
    before = _snapshot(outdir)

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise PermissionError(errno.EACCES, "Permission denied", str(kwargs.get("dir")))

    monkeypatch.setattr(outputs.tempfile, "mkdtemp", refuse)
    msg = _assert_clean_failure(_detect(pair["before"], pair["after"], outdir), before, outdir,
                                str(outdir.parent))
    assert "Permission denied" in msg


@pytest.mark.parametrize("victim", ["write_cog", "write_json", "write_gpkg"])
def test_full_disk_while_writing(pair: dict[str, Any], outdir: Path,
                                 monkeypatch: pytest.MonkeyPatch, victim: str) -> None:
    before = _snapshot(outdir)

    def half_written(path: Any, *args: Any, **kwargs: Any) -> Any:
        Path(path).write_bytes(b"\0" * 100)  # the disk fills after a first block
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(outputs, victim, half_written)
    _assert_clean_failure(_detect(pair["before"], pair["after"], outdir), before, outdir,
                          "no space left on device")
    # No temporary folder left beside OUTDIR (the snapshot lists OUTDIR's siblings too).
    assert not [n for n in os.listdir(outdir.parent) if ".part-" in n]


def test_verbose_keeps_the_traceback(pair: dict[str, Any], outdir: Path, tmp_path: Path) -> None:
    before = _snapshot(outdir)
    missing = tmp_path / "nowhere.tif"
    result = _detect(missing, pair["after"], outdir, verbose=True)
    assert result.exit_code == 1
    assert isinstance(result.exception, InputError)
    assert _snapshot(outdir) == before


# ---------------------------------------------------------------- inputs that must work


def _ok(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, (result.output, result.exception)
    out = Path(result.stderr.strip().splitlines()[-1].split("wrote ", 1)[1])
    return json.loads((out / "summary.json").read_text())


def test_single_band_panchromatic_pair(pair: dict[str, Any], tmp_path: Path) -> None:
    pan = [_write(tmp_path / f"{k}_pan.tif",
                  pair[k + "_data"].astype(np.float32).mean(axis=0).astype(np.uint8), pair, k)
           for k in ("before", "after")]
    summary = _ok(_detect(*pan, tmp_path / "out"))
    assert summary["inputs"]["before"]["bands"] == [1]
    # Windowed too: the appearance check, which needs three visible bands, is skipped
    # in the first pass as in the windows.
    from changedet.pipeline import DetectOptions, run_detection

    windowed = run_detection(*pan, DetectOptions(window_px=128))
    assert windowed.summary["parameters"]["windows"]["n"] > 1
    # Asked for (the default) but not applied, and the summary says so.
    for parameters in (summary["parameters"], windowed.summary["parameters"]):
        assert parameters["appearance_check"] is True
        assert parameters["appearance_check_applied"] is False


def test_uint16_and_nan_filled_float32(pair: dict[str, Any], tmp_path: Path) -> None:
    b16 = (pair["before_data"].astype(np.uint16) * 40 + 1000).astype(np.uint16)
    a32 = pair["after_data"].astype(np.float32) / 255.0
    a32[:, 80:100, 60:120] = np.nan  # a hole of missing data, marked only by NaN
    pb = _write(tmp_path / "b16.tif", b16, pair)
    pa = _write(tmp_path / "a32.tif", a32, pair, "after")
    summary = _ok(_detect(pb, pa, tmp_path / "out"))
    assert summary["totals"]["n_buildings"] >= 1
    with rasterio.open(tmp_path / "out" / "change.tif") as ds:
        change = ds.read(1)
    # The hole lies where the registered after scene puts it: analysis pixel (c, r)
    # shows after pixel (c + dx, r + dy).
    dx, dy = summary["coregistration"]["shift_px"]
    rows = slice(int(np.ceil(80 - dy)), int(np.floor(100 - dy)))
    cols = slice(int(np.ceil(60 - dx)), int(np.floor(120 - dx)))
    assert (change[rows, cols] == 255).all()
    assert (change != 255).mean() > 0.9


def test_nan_pixels_are_invalid_not_values(tmp_path: Path) -> None:
    data = np.ones((3, 80, 80), dtype=np.float32)
    data[:, 10:20, 10:20] = np.nan
    data[1, 50, 50] = np.inf
    scene = read_scene(write_geotiff(tmp_path / "nan.tif", data))
    assert not scene.valid[10:20, 10:20].any() and not scene.valid[50, 50]
    assert scene.valid.sum() == 80 * 80 - 100 - 1
    assert np.isfinite(scene.image).all()


# ------------------------------------------------------------------ high latitude


def _polar_geographic(tmp_path: Path, lat0: float, building: shapely.Polygon | None,
                      laea: CRS, name: str) -> tuple[Path, Grid]:
    """A textured geographic scene near ``lat0`` with an optional bright building and its shadow.

    The building is drawn in ``laea`` metres (an equal-area CRS centred on the scene)
    and warped into lon/lat, so its true ground area is ``building.area``.
    """
    n = 160
    px_m = 1.0
    rng = np.random.default_rng(3)
    from scipy import ndimage

    texture = ndimage.gaussian_filter(rng.normal(size=(n, n)), 3)
    texture = (texture - texture.min()) / np.ptp(texture) * 80 + 60
    src_t = Affine(px_m, 0, -n / 2 * px_m, 0, -px_m, n / 2 * px_m)
    if building is not None:
        from rasterio.features import geometry_mask

        inside = geometry_mask([building], (n, n), src_t, invert=True)
        # Its shadow (a building has height; a bright flat patch would not be one).
        from shapely import affinity

        cast = geometry_mask([affinity.translate(building, 5.0, -5.0)], (n, n), src_t,
                             invert=True)
        texture[cast & ~inside] *= 0.35
        texture[inside] = 230.0
    src = np.repeat(texture[None].astype(np.float32), 3, axis=0)
    # Geographic grid covering the same ground: at 86°N one degree of longitude is
    # about 7.8 km, one of latitude about 111.7 km.
    to_geo = Transformer.from_crs(laea, "EPSG:4326", always_xy=True)
    lon0, lat_c = to_geo.transform(0.0, 0.0)
    dlat = px_m / 111_700.0
    dlon = px_m / (111_700.0 * math.cos(math.radians(lat_c)))
    h = n + 20
    w = int(n * 1.3)
    dst_t = Affine(dlon, 0, lon0 - w / 2 * dlon, 0, -dlat, lat_c + h / 2 * dlat)
    dst = np.zeros((3, h, w), dtype=np.float32)
    reproject(src, dst, src_transform=src_t, src_crs=laea, dst_transform=dst_t,
              dst_crs="EPSG:4326", resampling=Resampling.bilinear, src_nodata=None,
              dst_nodata=0)
    path = write_geotiff(tmp_path / name, dst, crs="EPSG:4326", transform=dst_t, nodata=0)
    return path, Grid(CRS.from_epsg(4326), dst_t, h, w)


def test_high_latitude_analysis_grid_is_equal_area() -> None:
    # A 0.001° x 0.00005° grid at 86°N: UTM is beyond its limits, LAEA is used and a
    # pixel's area is its ellipsoidal area.
    t = Affine(0.0002, 0, 30.0, 0, -0.00001, 86.0)
    src = Grid(CRS.from_epsg(4326), t, 200, 200)
    grid = analysis_grid(src)
    assert grid.crs.is_projected and "laea" in grid.crs.to_proj4()
    lon, lat = t @ (100, 100)
    cell = shapely.box(lon, lat - 0.00001, lon + 0.0002, lat)
    true_area = abs(Geod(ellps="WGS84").geometry_area_perimeter(cell)[0])
    assert grid.pixel_area == pytest.approx(true_area, rel=0.01)


def test_building_at_86_north_measures_right(tmp_path: Path) -> None:
    laea = CRS.from_proj4("+proj=laea +lat_0=86 +lon_0=30 +x_0=0 +y_0=0 +ellps=WGS84 +units=m")
    building = shapely.box(-20.0, -15.0, 20.0, 15.0)  # 40 m x 30 m = 1,200 m²
    path, _ = _polar_geographic(tmp_path, 86.0, building, laea, "polar.tif")
    scene = read_scene(path)
    grid = analysis_grid(scene.grid)
    assert "laea" in grid.crs.to_proj4()
    on_grid = warp_scene(scene, grid, resampling=Resampling.bilinear)
    bright = (on_grid.image[0] > 145.0) & on_grid.valid
    from scipy import ndimage

    labels, _ = ndimage.label(bright)
    biggest = np.bincount(labels.ravel())[1:].argmax() + 1
    area = float((labels == biggest).sum()) * grid.pixel_area
    # Half-pixel bound on the 140 m perimeter.
    half_band = 0.5 * grid.pixel_size[0] * 140.0
    assert abs(area - building.area) <= half_band + grid.pixel_area


def test_high_latitude_detect_runs_in_an_equal_area_crs(tmp_path: Path) -> None:
    laea = CRS.from_proj4("+proj=laea +lat_0=86 +lon_0=30 +x_0=0 +y_0=0 +ellps=WGS84 +units=m")
    building = shapely.box(-20.0, -15.0, 20.0, 15.0)
    pb, _ = _polar_geographic(tmp_path, 86.0, None, laea, "polar_before.tif")
    pa, _ = _polar_geographic(tmp_path, 86.0, building, laea, "polar_after.tif")
    summary = _ok(_detect(pb, pa, tmp_path / "out", "--coreg", "none"))
    assert "laea" in summary["measurement_crs"] or "laea" in summary["analysis_crs"].lower() \
        or "Lambert" in summary["analysis_crs"]
    for b in summary["buildings"]:
        assert b["area_m2_min"] <= b["area_m2"] <= b["area_m2_max"]
    # Planar areas in the equal-area CRS agree with the ellipsoidal (geodesic) ones;
    # in a UTM zone 16 zones away they would be off by several per cent.
    assert summary["buildings"]
    for b in summary["buildings"]:
        assert b["area_m2"] == pytest.approx(b["geodesic_area_m2"], rel=0.002, abs=0.2)
    # The one building painted, of 1,200 m² on the ground (the CRS is equal-area).
    [found] = summary["buildings"]
    assert found["area_m2_min"] <= building.area <= found["area_m2_max"]


# ------------------------------------------------------------ library-level matrix


def test_library_errors_name_the_file(pair: dict[str, Any], tmp_path: Path) -> None:
    scene_b = read_scene(pair["before"])
    far = Scene(scene_b.image, scene_b.valid,
                Grid(scene_b.grid.crs, scene_b.grid.transform @ Affine.translation(5000, 0),
                     SIZE, SIZE), "far.tif", scene_b.bands, None, {})
    with pytest.raises(ProcessingError, match="far.tif"):
        align_pair(scene_b, far)
    with pytest.raises(InputError) as info:
        read_scene(tmp_path / "missing.tif")
    assert info.value.path == str(tmp_path / "missing.tif")
    assert "\n" not in str(info.value)
