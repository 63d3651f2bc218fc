"""The synthetic scene-pair generator: determinism, exact truth, exact misregistration."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
import rasterio.features
import shapely
from affine import Affine
from click.testing import CliRunner
from pyproj import Geod, Transformer
from skimage.registration import phase_cross_correlation

from changedet.cli import main
from changedet.errors import OutputError
from changedet.raster import align_pair, read_scene, warp_scene
from changedet.synth import SynthParams, make_synthetic_pair, write_synthetic_pair


@pytest.fixture(scope="module")
def suburb_pair():
    params = SynthParams.for_scenario("suburb", seed=1, size=512)
    return make_synthetic_pair(params)


def test_scenario_defaults():
    p = SynthParams.for_scenario("compound")
    assert (p.size, p.pixel_size, p.crs) == (2400, 0.5, "EPSG:32651")
    assert p.n_new == 3 and p.new_area_m2 == 13000.0
    s = SynthParams.for_scenario("suburb", seed=5)
    assert (s.size, s.pixel_size) == (1024, 0.5)
    assert 1.0 <= abs(s.shift_px[0]) <= 4.0 and 1.0 <= abs(s.shift_px[1]) <= 4.0
    # the two dates differ in sun and season
    assert s.sun_before != s.sun_after and s.greenness_before != s.greenness_after
    with pytest.raises(ValueError, match="unknown scenario"):
        SynthParams.for_scenario("city")


def test_write_is_deterministic(tmp_path: Path):
    params = SynthParams.for_scenario("suburb", seed=7, size=256, nir=True, nodata_margin=8)
    first = write_synthetic_pair(params, tmp_path / "a")
    second = write_synthetic_pair(params, tmp_path / "b")
    assert set(first) == {"before", "after", "truth_geojson", "truth_json", "truth_mask"}
    for key in first:
        assert first[key].read_bytes() == second[key].read_bytes(), key
    other = write_synthetic_pair(SynthParams.for_scenario("suburb", seed=8, size=256),
                                 tmp_path / "c")
    assert other["before"].read_bytes() != first["before"].read_bytes()
    with pytest.raises(OutputError, match="exists"):
        write_synthetic_pair(params, tmp_path / "a")


def test_truth_areas_match_rasterised_masks(suburb_pair):
    pair = suburb_pair
    grid = pair.before.grid
    px = grid.pixel_size[0]
    assert len(pair.truth_polygons) >= 3
    union = np.zeros(grid.shape, bool)
    for poly, rec in zip(pair.truth_polygons, pair.buildings):
        assert rec["area_m2"] == pytest.approx(poly.area)
        assert 120.0 * 0.999 <= rec["area_m2"] <= 400.0 * 1.001
        mask = rasterio.features.rasterize([poly], out_shape=grid.shape,
                                           transform=grid.transform, dtype="uint8") > 0
        bound = poly.length * px / 2
        assert abs(mask.sum() * px * px - rec["area_m2"]) <= bound
        union |= mask
    np.testing.assert_array_equal(union, pair.truth_mask)
    # new buildings do not overlap one another
    polys = pair.truth_polygons
    for i in range(len(polys)):
        for j in range(i + 1, len(polys)):
            assert polys[i].intersection(polys[j]).area < 1e-6


def test_new_buildings_are_drawn(suburb_pair):
    """Where a new building stands the after image changed, for most buildings.

    Not all: a dark roof on dark soil may barely differ, as in real scenes.
    """
    from scipy import ndimage

    pair = suburb_pair
    dx, dy = pair.shift_px
    after = warp_scene(pair.after, pair.before.grid, Affine.translation(dx, dy))
    diff = np.abs(after.image - pair.before.image).mean(0)
    background = np.median(diff[~pair.truth_mask & after.valid])
    labels, n = ndimage.label(ndimage.binary_erosion(pair.truth_mask, iterations=2))
    means = ndimage.mean(diff, labels, index=np.arange(1, n + 1))
    assert n >= 3
    assert (means > 1.5 * background).mean() >= 0.6


def test_compound_has_three_residences():
    params = SynthParams.for_scenario("compound", seed=2, size=600, pixel_size=2.0)
    pair = make_synthetic_pair(params)
    polys = pair.truth_polygons
    assert len(polys) == 3
    for poly, rec in zip(polys, pair.buildings):
        assert rec["kind"] == "residence"
        assert abs(poly.area / 13000.0 - 1) <= 0.05 + 1e-9
        assert rec["n_parts"] >= 3  # a main block with wings
    for i in range(3):
        for j in range(i + 1, 3):
            assert polys[i].distance(polys[j]) > params.site_gap_m


def test_after_in_wgs84_lines_up_once_shift_is_removed():
    # no new building and the same sun on both dates, so that nothing moves: only
    # season, radiometry, parked cars and the misregistration differ, and every
    # feature must line up
    params = SynthParams.for_scenario("none", seed=4, size=320, shift=(2.3, -1.6),
                                      after_crs="EPSG:4326")
    params = dataclasses.replace(params, sun_after=params.sun_before)
    pair = make_synthetic_pair(params)
    assert pair.after.grid.crs.to_epsg() == 4326
    assert not pair.after.grid.crs.is_projected
    aligned = align_pair(pair.before, pair.after)
    dx, dy = pair.shift_px
    registered = warp_scene(aligned.after_source, aligned.grid, Affine.translation(dx, dy))
    m = 24
    crop = (slice(m, -m), slice(m, -m))
    b = aligned.before.image.mean(0)[crop]
    a = registered.image.mean(0)[crop]
    assert registered.valid[crop].all()
    residual, _, _ = phase_cross_correlation(b, a, upsample_factor=100, normalization=None)
    assert np.hypot(*residual) < 0.1
    # without the correction the known shift is what is measured
    raw = warp_scene(aligned.after_source, aligned.grid).image.mean(0)[crop]
    measured, _, _ = phase_cross_correlation(b, raw, upsample_factor=100, normalization=None)
    np.testing.assert_allclose(measured, [-dy, -dx], atol=0.15)


def test_nodata_margin_and_nir(tmp_path: Path):
    params = SynthParams.for_scenario("suburb", seed=4, size=320, nir=True, nodata_margin=10)
    paths = write_synthetic_pair(params, tmp_path)
    after = read_scene(paths["after"], bands=(1, 2, 3, 4))
    assert after.image.shape[0] == 4
    assert not after.valid[:10].any() and not after.valid[:, -10:].any()
    assert after.valid[10:-10, 10:-10].all()
    with rasterio.open(paths["after"]) as ds:
        assert ds.nodata == 0 and ds.count == 4 and ds.dtypes[0] == "uint8"
        assert ds.profile["compress"].lower() == "deflate" and ds.profile["tiled"]
        # The near-infrared is a band of data, not an alpha mask.
        assert ds.colorinterp[3] != ColorInterp.alpha
        assert all(MaskFlags.alpha not in flags for flags in ds.mask_flag_enums)
    truth = json.loads(paths["truth_json"].read_text())
    px = params.pixel_size
    grid = params.grid
    # truth buildings stay inside the valid data of both dates
    left, bottom, right, top = grid.bounds
    keep = (10 + 4) * px
    assert truth["buildings"]
    for feat in truth["buildings"]:
        assert feat["area_m2"] > 0
    with rasterio.open(paths["truth_mask"]) as ds:
        mask = ds.read(1) > 0
    rows, cols = np.nonzero(mask)
    assert len(rows)
    assert rows.min() * px >= keep and (grid.height - rows.max()) * px >= keep
    assert cols.min() * px >= keep and (grid.width - cols.max()) * px >= keep
    # near-infrared: vegetation is bright, asphalt and water dark
    before = read_scene(paths["before"], bands=(1, 2, 3, 4), nir_band=4)
    red, nir = before.image[0], before.image[3]
    ndvi = (nir - red) / (nir + red + 1e-6)
    assert ndvi.max() > 0.4 and ndvi.min() < 0.1


def test_truth_files(tmp_path: Path):
    params = SynthParams.for_scenario("suburb", seed=1, size=256)
    paths = write_synthetic_pair(params, tmp_path)
    truth = json.loads(paths["truth_json"].read_text())
    gj = json.loads(paths["truth_geojson"].read_text())
    assert truth["scenario"] == "suburb" and truth["seed"] == 1
    assert truth["shift_px"] == list(params.shift_px)
    assert truth["shift_m"] == pytest.approx([params.shift_px[0] * 0.5,
                                              -params.shift_px[1] * 0.5])
    assert set(truth["sun"]) == {"before", "after"}
    assert truth["params"]["seed"] == 1
    assert len(gj["features"]) == len(truth["buildings"]) == truth["n_new_buildings"]
    geod = Geod(ellps="WGS84")
    for feat, rec in zip(gj["features"], truth["buildings"]):
        props = feat["properties"]
        assert props["area_m2"] == pytest.approx(rec["area_m2"], abs=0.01)
        assert props["kind"] == "house"
        poly = shapely.geometry.shape(feat["geometry"])
        lon, lat = poly.exterior.coords[0]
        assert 125.0 < lon < 127.0 and 38.0 < lat < 40.0
        geodesic, _ = geod.geometry_area_perimeter(poly)
        assert geodesic > 0  # counter-clockwise exterior (RFC 7946)
        # UTM's scale error near Pyongyang is well under 0.5 %
        assert geodesic == pytest.approx(props["area_m2"], rel=5e-3)


def test_truth_geojson_and_truth_mask_draw_the_same_pixels(tmp_path: Path) -> None:
    """truth.geojson keeps 1e-9 degrees (0.1 mm); at 1e-7 (6.5 mm) pixels whose centres
    lay that close to an outline changed side, and the two files scored pixel IoU
    0.9992 against each other on this pair."""
    from changedet.evaluate import evaluate
    from changedet.raster import read_scene as read

    paths = write_synthetic_pair(SynthParams.for_scenario("suburb", seed=1, size=512),
                                 tmp_path)
    gj = json.loads(paths["truth_geojson"].read_text())
    mask = read(paths["truth_mask"], bands=(1,))
    utm = Transformer.from_crs("EPSG:4326", mask.grid.crs, always_xy=True)
    polygons = [shapely.transform(shapely.geometry.shape(f["geometry"]),
                                  lambda xy: np.column_stack(utm.transform(xy[:, 0], xy[:, 1])))
                for f in gj["features"]]
    scores = evaluate(polygons, mask.image[0] > 0, grid=mask.grid)
    assert scores["pixel_iou"] == 1.0, scores


def test_none_scenario_has_no_new_building():
    pair = make_synthetic_pair(SynthParams.for_scenario("none", seed=2, size=256))
    assert pair.truth_polygons == [] and not pair.truth_mask.any()
    assert pair.before.image.shape == pair.after.image.shape


def _footprint_change(pair, buildings: list) -> np.ndarray:
    """Mean absolute difference of the visible bands between the dates, once the after
    scene is registered with the true shift, at the pixels a metre inside the
    footprints of ``buildings`` (1-D)."""
    aligned = align_pair(pair.before, pair.after)
    after = warp_scene(aligned.after_source, aligned.grid, Affine.translation(*pair.shift_px))
    diff = np.abs(pair.before.image[:3] - after.image[:3]).mean(axis=0)
    grid = pair.before.grid
    inside = rasterio.features.rasterize([b.footprint.buffer(-1.0) for b in buildings],
                                         out_shape=grid.shape, transform=grid.transform)
    return diff[inside.astype(bool)]


def test_demolition_scenario_pulls_houses_down_and_builds_nothing():
    from changedet.synth import AFTER, BEFORE, make_world

    params = SynthParams.for_scenario("demolition", seed=1, size=384)
    world = make_world(params)
    gone = [b for b in world.buildings if b.dates == BEFORE]
    assert gone and not any(b.new for b in world.buildings)
    # Each demolished house leaves a slab, soil or rubble on its footprint after.
    remains = [a.geom for a in world.areas if a.dates == AFTER]
    for b in gone:
        assert any(g.contains(b.footprint) for g in remains)
    pair = make_synthetic_pair(params)
    assert pair.truth_polygons == [] and not pair.truth_mask.any()
    # The houses pulled down are in the before image only: once registered, their
    # footprints change between the dates more than those of the houses kept.
    kept = [b for b in world.buildings if b.dates != BEFORE]
    assert (_footprint_change(pair, gone).mean()
            > 1.5 * _footprint_change(pair, kept).mean())


def test_demolition_pulls_down_houses_of_the_none_layout():
    from changedet.synth import make_world

    # The demolitions draw from their own random stream, after the layout: the same
    # seed lays out the same houses as "none", some of them then pulled down.
    kept = make_world(SynthParams.for_scenario("none", seed=1, size=384)).buildings
    pulled = make_world(SynthParams.for_scenario("demolition", seed=1, size=384)).buildings
    assert [b.footprint.wkt for b in kept] == [b.footprint.wkt for b in pulled]


def test_infill_scenario_builds_new_houses_among_unchanged_lawns():
    """Infill: a share of the houses of the "none" layout (the same footprints) are
    new, and nothing else that is new in the after date (the paved lot, the mown
    fields) touches them: a new roof faces the ground that was there. Once registered,
    the new houses' footprints change between the dates, the old ones' much less."""
    from changedet.synth import AFTER, BOTH, make_world

    params = SynthParams.for_scenario("infill", seed=0, size=384)
    world = make_world(params)
    layout = make_world(SynthParams.for_scenario("none", seed=0, size=384)).buildings
    assert [b.footprint.wkt for b in world.buildings] == [b.footprint.wkt for b in layout]
    new = [b for b in world.buildings if b.new]
    kept = [b for b in world.buildings if b.dates == BOTH]
    assert new and kept and all(b.dates == AFTER for b in new)
    changed = [a.geom for a in world.areas if a.dates == AFTER]
    for b in new:
        assert not any(g.intersects(b.footprint.buffer(3.0)) for g in changed)
    pair = make_synthetic_pair(params)
    assert (_footprint_change(pair, new).mean()
            > 3.0 * _footprint_change(pair, kept).mean())


def test_an_infill_scene_that_draws_no_new_house_says_so(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    import logging

    # Seed 1 at 384 px makes none of its ten houses new (each is with probability 1/4).
    with caplog.at_level(logging.WARNING):
        pair = make_synthetic_pair(SynthParams.for_scenario("infill", seed=1, size=384))
    assert pair.truth_polygons == []
    assert "none of the houses of this 384 px scene came out new" in caplog.text


def test_cli_synth(tmp_path: Path):
    runner = CliRunner()
    out = tmp_path / "out"
    args = ["synth", str(out), "--scenario", "suburb", "--seed", "3", "--size", "192",
            "--shift", "1.5", "-2.0"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    truth = json.loads((out / "truth.json").read_text())
    assert truth["shift_px"] == [1.5, -2.0]
    again = runner.invoke(main, args)
    assert again.exit_code == 1 and "exists" in again.output
    assert runner.invoke(main, args + ["--overwrite"]).exit_code == 0
    assert math.isclose(truth["params"]["pixel_size"], 0.5)


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "compound"


def test_committed_fixture_is_consistent():
    files = sorted(FIXTURE.iterdir())
    assert sum(f.stat().st_size for f in files) < 10 * 2**20
    truth = json.loads((FIXTURE / "truth.json").read_text())
    assert truth["scenario"] == "compound" and truth["shift_px"] == [2.6, -1.8]
    before = read_scene(FIXTURE / "before.tif")
    after = read_scene(FIXTURE / "after.tif")
    assert before.grid == after.grid and before.grid.pixel_size == (1.0, 1.0)
    assert before.grid.crs.to_epsg() == 32651
    gj = json.loads((FIXTURE / "truth.geojson").read_text())
    areas = [f["properties"]["area_m2"] for f in gj["features"]]
    assert len(areas) == 3 and all(abs(a / 13000 - 1) <= 0.05 for a in areas)
    with rasterio.open(FIXTURE / "truth_mask.tif") as ds:
        mask_area = float((ds.read(1) > 0).sum()) * abs(ds.transform.determinant)
    perimeter = sum(b["perimeter_m"] for b in truth["buildings"])
    assert abs(mask_area - sum(areas)) <= perimeter * 1.0 / 2


def test_cli_synth_rejects_bad_values(tmp_path: Path):
    runner = CliRunner()
    bad_crs = runner.invoke(main, ["synth", str(tmp_path / "a"), "--size", "192",
                                   "--after-crs", "EPSG:999999"])
    assert bad_crs.exit_code == 2 and "not a CRS" in bad_crs.output
    bad_margin = runner.invoke(main, ["synth", str(tmp_path / "b"), "--size", "192",
                                      "--nodata-margin", "60"])
    assert bad_margin.exit_code == 2 and "margin" in bad_margin.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # A shift beyond the scene ended as "out of memory; try a smaller AOI"; a 15 km
    # scene's layout ran for hours.
    far = runner.invoke(main, ["synth", str(tmp_path / "c"), "--size", "192",
                               "--shift", "1e9", "0"])
    assert far.exit_code == 2 and "more than a quarter" in far.output
    huge = runner.invoke(main, ["synth", str(tmp_path / "d"), "--size", "1024",
                                "--pixel-size", "10"])
    assert huge.exit_code == 2 and "at most 6,000 m" in huge.output
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("size, pixel_size", [(128, 0.5), (256, 0.1), (128, 10.0)])
def test_a_small_compound_scene_is_drawn(tmp_path: Path, size: int,
                                         pixel_size: float) -> None:
    """A compound that fills the whole scene (no city around it) crashed in GEOS
    ("getX called on empty Point"), and one with no room inside its edge for the
    new paved lot crashed in numpy, each leaving an empty OUTDIR behind."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # NaN textures warned only
        pair = make_synthetic_pair(SynthParams.for_scenario(
            "compound", seed=1, size=size, pixel_size=pixel_size))
    assert pair.before.image.shape == (3, size, size)
    assert np.isfinite(pair.before.image).all() and pair.after.image.min() >= 1


def test_a_scene_too_small_for_its_residences_says_so(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    import logging

    with caplog.at_level(logging.WARNING):
        pair = make_synthetic_pair(SynthParams.for_scenario("compound", seed=1, size=800))
    assert len(pair.buildings) < 3
    assert f"only {len(pair.buildings)} of the 3 new building(s) fit" in caplog.text


def test_a_failed_synth_leaves_no_folder_it_made(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet import synth

    def fail(params: SynthParams) -> None:
        raise MemoryError

    monkeypatch.setattr(synth, "make_synthetic_pair", fail)
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "new" / "out"), "--size", "192"])
    assert result.exit_code == 1
    assert not (tmp_path / "new" / "out").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert CliRunner().invoke(main, ["synth", str(kept), "--size", "192"]).exit_code == 1
    assert kept.is_dir()  # a folder the user made stays


def test_an_unknown_after_crs_is_one_message(capfd: pytest.CaptureFixture[str]) -> None:
    """GDAL printed its own "ERROR 1: PROJ: …" line on stderr before the usage error."""
    with pytest.raises(ValueError, match="is not a CRS"):
        SynthParams.for_scenario("suburb", seed=0, size=128, after_crs="EPSG:99999")
    assert "ERROR 1" not in capfd.readouterr().err


@pytest.mark.parametrize(("after_crs", "message"), [
    ("EPSG:4978", "not a map CRS"),  # geocentric: an after scene of no valid pixel
    ("EPSG:5773", "not a map CRS"),  # vertical: a 1 x 1 px after scene
    ("+proj=longlat +a=1", "no transformation"),  # another body: 36 lines of PROJ
])
def test_an_after_crs_that_cannot_hold_the_scene_is_refused(after_crs: str,
                                                            message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SynthParams.for_scenario("none", seed=0, size=256, after_crs=after_crs)


def test_the_nodata_margin_is_counted_in_the_delivered_after_pixels() -> None:
    """A 50 px margin left an after scene of 10 m pixels over 256 m (26 x 26 px) all
    nodata, checked only against the before scene's 256 px."""
    with pytest.raises(ValueError, match="26 x 26 px"):
        SynthParams.for_scenario("none", seed=0, size=256, pixel_size=1.0,
                                 after_crs="EPSG:32651", after_pixel_size=10.0,
                                 nodata_margin=50)
    SynthParams.for_scenario("none", seed=0, size=256, pixel_size=1.0,
                             after_crs="EPSG:32651", after_pixel_size=10.0, nodata_margin=3)


def test_cli_synth_option_mistakes_are_named(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from changedet.cli import main

    seed = CliRunner().invoke(main, ["synth", str(tmp_path / "a"), "--seed", "-5"])
    assert seed.exit_code == 2 and "'--seed'" in seed.output
    alone = CliRunner().invoke(main, ["synth", str(tmp_path / "b"), "--after-pixel-size", "2"])
    assert alone.exit_code == 2 and "needs an after CRS" in alone.output
    assert "[x<=None]" not in CliRunner().invoke(main, ["synth", "--help"]).output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
