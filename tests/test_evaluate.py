"""Scoring against truth: object matching, pixel scores, area errors, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import shapely
import shapely.affinity
from affine import Affine
from click.testing import CliRunner
from rasterio.crs import CRS
from shapely.geometry import box

from changedet.cli import main
from changedet.evaluate import evaluate, match_objects
from changedet.raster import Grid

CRS_UTM = CRS.from_epsg(32651)
T = Affine(0.5, 0, 500000.0, 0, -0.5, 4320000.0)
GRID = Grid(CRS_UTM, T, 100, 100)


def pixbox(c0: int, r0: int, c1: int, r1: int) -> shapely.Polygon:
    """Polygon covering pixel columns c0..c1-1 and rows r0..r1-1 of GRID."""
    x0, y0 = T @ (c0, r0)
    x1, y1 = T @ (c1, r1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


@pytest.mark.parametrize("level", [float("nan"), 2.0, 0.0, "0.5"])
def test_an_iou_threshold_out_of_range_is_refused(level):
    """NaN or 2 matched nothing: a perfect prediction scored as all misses."""
    with pytest.raises(ValueError, match="iou_threshold must be a number in"):
        evaluate([pixbox(0, 0, 10, 10)], [pixbox(0, 0, 10, 10)], iou_threshold=level)


def test_match_is_one_to_one_and_greedy_by_iou():
    truth = [box(0, 0, 10, 10)]
    pred = [box(0, 0, 10, 9), box(0, 0, 10, 8)]  # IoU 0.9 and 0.8 with the same truth
    assert match_objects(pred, truth) == [(0, 0, pytest.approx(0.9))]


def test_polygons_match_themselves_at_iou_one():
    """--iou 1.0 is allowed; a polygon's overlay with itself gives an IoU a last bit
    under 1 (28 of 35 synthetic roofs matched themselves)."""
    rng = np.random.default_rng(3)
    polys = [shapely.affinity.rotate(box(x, y, x + w, y + h), a)
             for x, y, w, h, a in zip(rng.uniform(0, 1e5, 40), rng.uniform(4e6, 4.1e6, 40),
                                      rng.uniform(5, 30, 40), rng.uniform(5, 30, 40),
                                      rng.uniform(0, 90, 40))]
    matches = match_objects(polys, polys, iou_threshold=1.0)
    assert sorted((p, t) for p, t, _ in matches) == [(i, i) for i in range(40)]


def test_known_tp_fp_fn_and_area_errors_on_polygons():
    truth = [box(0, 0, 10, 10), box(100, 0, 110, 10), box(200, 0, 210, 10)]
    pred = [
        box(0, 0, 10, 11),            # TP, +10 % area, IoU 100/110
        box(100, 0, 110, 4),          # IoU 0.4: not a match -> FP and truth 1 is FN
        box(200, 0, 210, 10),         # TP, exact
        box(500, 500, 505, 505),      # FP
    ]
    r = evaluate(pred, truth)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 2, 1)
    assert r["precision"] == 0.5
    assert r["recall"] == round(2 / 3, 4)
    assert r["f1"] == round(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3), 4)
    tps = [row for row in r["per_object"] if row["status"] == "tp"]
    assert [(row["pred_id"], row["truth_id"]) for row in tps] == [(0, 0), (2, 2)]
    assert tps[0]["area_error_m2"] == 10.0 and tps[0]["area_error_pct"] == 10.0
    assert tps[1]["area_error_pct"] == 0.0
    assert r["mean_abs_object_area_error_pct"] == 5.0
    # Total: pred 110 + 40 + 100 + 25 = 275, truth 300 -> -8.333 %
    assert r["total_area_error_pct"] == round(100 * (275 - 300) / 300, 2)
    # Exact area overlaps: inter = 100 + 40 + 100 = 240, union = 275 + 300 - 240
    assert r["pixel_basis"] == "area"
    assert r["pixel_iou"] == round(240 / 335, 4)
    assert r["pixel_precision"] == round(240 / 275, 4)
    assert r["pixel_recall"] == round(240 / 300, 4)


def test_mask_truth_and_polygon_prediction_on_grid():
    truth_mask = np.zeros(GRID.shape, dtype=bool)
    truth_mask[10:20, 10:30] = True  # 200 px
    truth_mask[50:60, 50:60] = True  # 100 px, missed
    pred = [(7, pixbox(10, 10, 30, 21))]  # one extra row: 220 px
    r = evaluate(pred, truth_mask, GRID)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)
    row = r["per_object"][0]
    assert row["pred_id"] == 7 and row["iou"] == round(200 / 220, 4)
    assert row["area_error_pct"] == 10.0
    assert r["pixel_basis"] == "pixels"
    assert r["pixel_iou"] == round(200 / 320, 4)
    assert r["truth_area_m2"] == 300 * 0.25
    assert r["pred_area_m2"] == 220 * 0.25


def test_valid_mask_excludes_pixels_and_label_images_are_objects():
    labels = np.zeros(GRID.shape, dtype=np.int32)
    labels[0:10, 0:10] = 5
    labels[0:10, 10:20] = 9  # touches label 5 but is a separate object
    r = evaluate(labels, labels, GRID)
    assert (r["tp"], r["fp"], r["fn"], r["pixel_iou"]) == (2, 0, 0, 1.0)
    pred = np.zeros(GRID.shape, dtype=bool)
    pred[0:10, 0:20] = True
    pred[80:90, 80:90] = True
    valid = np.ones(GRID.shape, bool)
    valid[80:, 80:] = False
    r = evaluate(pred, labels > 0, GRID, valid=valid)
    assert r["pixel_iou"] == 1.0  # the extra blob lies in no data...
    assert r["fp"] == 0           # ...so it is not a false positive either
    assert r["n_outside_valid"] == {"pred": 1, "truth": 0}


def test_empty_prediction():
    r = evaluate([], [box(0, 0, 1, 1)])
    assert (r["tp"], r["fp"], r["fn"], r["precision"], r["recall"], r["f1"]) == (0, 0, 1, 0, 0, 0)
    assert r["total_area_error_pct"] == -100.0


def _write_geojson(path: Path, polys: list[shapely.Polygon], crs: str) -> Path:
    geometry = shapely.to_wkb(np.asarray(polys, dtype=object))
    ids = np.arange(len(polys), dtype=np.int64)
    pyogrio.raw.write(path, geometry, [ids], fields=["id"], geometry_type="Polygon",
                      crs=crs, driver="GeoJSON")
    return path


def test_cli_vector_in_wgs84_against_mask_raster(tmp_path, geotiff):
    truth = np.zeros((100, 100), dtype=np.uint8)
    truth[10:20, 10:30] = 1
    truth[90:, :] = 255  # no data
    truth_path = geotiff("truth.tif", truth, nodata=255)
    # The prediction exactly covers the truth, delivered in lon/lat.
    from changedet.measure import reproject_geoms
    poly_ll = reproject_geoms([pixbox(10, 10, 30, 20)], CRS_UTM, "EPSG:4326")
    pred_path = _write_geojson(tmp_path / "pred.geojson", poly_ll, "EPSG:4326")
    res = CliRunner().invoke(main, ["evaluate", str(pred_path), str(truth_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["tp"], out["fp"], out["fn"]) == (1, 0, 0)
    assert out["pixel_iou"] == 1.0
    assert abs(out["total_area_error_pct"]) < 0.01
    table = CliRunner().invoke(main, ["evaluate", str(pred_path), str(truth_path)])
    assert table.exit_code == 0 and "TP 1  FP 0  FN 0" in table.output


def test_cli_two_vector_files(tmp_path):
    a = _write_geojson(tmp_path / "a.geojson", [box(500000, 4320000, 500010, 4320010)],
                       "EPSG:32651")
    b = _write_geojson(tmp_path / "b.geojson", [box(500000, 4320000, 500010, 4320011)],
                       "EPSG:32651")
    res = CliRunner().invoke(main, ["evaluate", str(a), str(b), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["tp"] == 1 and out["total_area_error_pct"] == round(-10 / 110 * 100, 2)


def test_cli_bad_vector_file_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    good = _write_geojson(tmp_path / "g.geojson", [box(0, 0, 1, 1)], "EPSG:32651")
    res = CliRunner().invoke(main, ["evaluate", str(bad), str(good)])
    assert res.exit_code == 1
    assert "bad.geojson" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["evaluate", str(tmp_path / "missing.geojson"), str(good)])
    assert res.exit_code == 1 and "no such file" in res.output


def test_cli_change_tif_against_truth_mask(geotiff):
    change = np.zeros((100, 100), dtype=np.uint8)
    change[10:20, 10:30] = 1
    change[40:50, 40:50] = 1      # a false positive
    change[:, 90:] = 255          # no data, even without a nodata tag
    truth = np.zeros((100, 100), dtype=np.uint8)
    truth[10:20, 10:30] = 1
    truth[:, 95:] = 1             # lies in the prediction's no data: not scored as pixels
    pred_path = geotiff("change.tif", change)
    truth_path = geotiff("truth_mask.tif", truth)
    res = CliRunner().invoke(main, ["evaluate", str(pred_path), str(truth_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    # The truth strip in no data is neither a miss nor scored pixels.
    assert (out["tp"], out["fp"], out["fn"]) == (1, 1, 0)
    assert out["n_outside_valid"] == {"pred": 0, "truth": 1}
    assert out["pixel_iou"] == round(200 / 300, 4)
    # The table says so too (only --json did).
    table = CliRunner().invoke(main, ["evaluate", str(pred_path), str(truth_path)]).output
    assert "not counted, less than half on valid pixels of the raster side: 0 predicted, " \
        "1 true" in table


def test_stage_losses_split_each_building_by_stage() -> None:
    from changedet.evaluate import stage_losses

    truth = np.zeros((40, 60), bool)
    truth[5:15, 5:15] = True      # building 1: 100 px
    truth[20:30, 30:50] = True    # building 2: 200 px
    regions = np.zeros(truth.shape, np.int32)
    regions[5:15, 5:10] = 1       # half of building 1 is a candidate (rejected)
    regions[20:30, 30:40] = 2     # building 2: one kept region ...
    regions[20:30, 40:50] = 3     # ... and one rejected
    regions[20:30, 50:55] = 2     # the kept region also covers 50 px of ground
    labels = np.where(regions == 2, 1, 0)
    labels[24:26, 34:36] = 1      # a filled hole of building 2: kept, not a candidate
    regions[24:26, 34:36] = 0
    first, second = stage_losses(truth, regions, labels)
    assert first == {"area_px": 100.0, "not_candidate": 0.5, "rejected": 0.5,
                     "kept": 0.0, "overgrowth": 0.0}
    assert second == {"area_px": 200.0, "not_candidate": 0.0, "rejected": 0.5,
                      "kept": 0.5, "overgrowth": 0.25}


def test_stage_losses_read_a_stored_mask_as_a_mask_and_check_shapes() -> None:
    """truth_mask.tif reads as 0/1 uint8: taken for a label image, its buildings were
    one; and arrays of other shapes failed in numpy's broadcasting."""
    from changedet.evaluate import stage_losses

    truth = np.zeros((100, 120), bool)
    truth[10:30, 10:40] = True
    truth[50:60, 50:60] = True
    found = np.where(truth & (np.arange(120) < 45), 1, 0).astype(np.int32)
    as_bool = stage_losses(truth, found, found)
    assert [(d["area_px"], d["kept"]) for d in as_bool] == [(600.0, 1.0), (100.0, 0.0)]
    for stored in (truth.astype(np.uint8), truth.astype(np.uint8) * 255):
        assert stage_losses(stored, found, found) == as_bool
    with pytest.raises(ValueError, match=r"labels has shape \(50, 120\).*\(100, 120\)"):
        stage_losses(truth, found, found[:50])
    with pytest.raises(ValueError, match="quiet has shape"):
        stage_losses(truth, found, found, quiet=np.zeros((3, 3), bool))


def test_pooled_stage_losses_weigh_by_area() -> None:
    from changedet.evaluate import pooled_stage_losses

    losses = [{"area_px": 100.0, "not_candidate": 1.0, "rejected": 0.0, "kept": 0.0,
               "overgrowth": 0.0},
              {"area_px": 300.0, "not_candidate": 0.0, "rejected": 0.0, "kept": 1.0,
               "overgrowth": 0.4}]
    assert pooled_stage_losses(losses) == {"area_px": 400.0, "not_candidate": 0.25,
                                           "rejected": 0.0, "kept": 0.75,
                                           "overgrowth": pytest.approx(0.3)}
    assert pooled_stage_losses([])["kept"] == 0.0


def test_a_web_mercator_mask_is_measured_in_ground_metres(geotiff):
    """Web-Mercator units are 1/cos(latitude) ground metres: at 50° N a 100 m square
    spans 2.42 times its area in grid units. Areas are measured as detect measures
    them, in the local metric CRS."""
    from changedet.measure import reproject_geoms

    utm = CRS.from_epsg(32633)                       # 15° E, 50° N
    square = box(500000, 5538000, 500100, 5538100)   # 10,000 m² on the ground
    merc = CRS.from_epsg(3857)
    (square_m,) = reproject_geoms([square], utm, merc)
    x0, y0, x1, y1 = square_m.bounds
    step = 0.5                                       # Mercator units, about 0.32 m
    transform = Affine(step, 0, x0 - 20 * step, 0, -step, y1 + 20 * step)
    h, w = int((y1 - y0) / step) + 40, int((x1 - x0) / step) + 40
    grid = Grid(merc, transform, h, w)
    import rasterio.features
    mask = rasterio.features.rasterize([(square_m, 1)], out_shape=(h, w),
                                       transform=transform, dtype="uint8")
    r = evaluate(mask, [square_m], grid)
    assert r["tp"] == 1
    assert r["truth_area_m2"] == pytest.approx(10_000, rel=1e-3)
    # The mask's outline follows pixel edges: within a pixel row around it.
    assert r["pred_area_m2"] == pytest.approx(10_000, rel=0.02)
    path = geotiff("merc_mask.tif", mask, crs="EPSG:3857", transform=transform)
    res = CliRunner().invoke(main, ["evaluate", str(path), str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["truth_area_m2"] == pytest.approx(10_000, rel=0.02)


def test_predictions_off_the_grid_are_outside_not_false(tmp_path):
    """A polygon that covers no pixel centre of the grid because it lies beyond it
    was not seen: counted outside, not as a false building."""
    truth = np.zeros((100, 100), bool)
    truth[10:20, 10:30] = True
    off = shapely.affinity.translate(pixbox(10, 10, 30, 20), xoff=1000.0)
    r = evaluate([pixbox(10, 10, 30, 20), off], truth, GRID,
                 valid=np.ones((100, 100), bool))
    assert (r["tp"], r["fp"], r["n_outside_valid"]["pred"]) == (1, 0, 1)
    # A sliver between pixel centres inside the grid is still scored.
    sliver = box(*(T @ (50, 50)), *(T @ (50.3, 50.3)))
    r = evaluate([pixbox(10, 10, 30, 20), sliver], truth, GRID,
                 valid=np.ones((100, 100), bool))
    assert (r["tp"], r["fp"], r["n_outside_valid"]["pred"]) == (1, 1, 0)


def test_an_object_mostly_beyond_the_raster_counts_as_unseen_as_on_nodata():
    """A truth building three quarters beyond the edge of the raster was not seen whole,
    like one three quarters on nodata: outside, not a miss."""
    cut = pixbox(90, 10, 130, 30)  # columns 90..129 of a 100-column grid
    empty = np.zeros(GRID.shape, bool)
    r = evaluate(empty, [cut], GRID, valid=np.ones(GRID.shape, bool))
    assert (r["fn"], r["n_outside_valid"]["truth"]) == (0, 1)
    on_nodata = pixbox(60, 10, 100, 30)
    valid = np.ones(GRID.shape, bool)
    valid[:, 70:] = False
    r = evaluate(empty, [on_nodata], GRID, valid=valid)
    assert (r["fn"], r["n_outside_valid"]["truth"]) == (0, 1)
    # Half or more on the raster's valid pixels: scored, a miss.
    half = pixbox(80, 10, 120, 30)
    r = evaluate(empty, [half], GRID, valid=np.ones(GRID.shape, bool))
    assert (r["fn"], r["n_outside_valid"]["truth"]) == (1, 0)


@pytest.mark.parametrize("cut", ["nodata", "edge"])
def test_an_object_partly_unseen_is_compared_where_it_was_seen(cut: str) -> None:
    """A raster side's objects stop at its nodata and its edge; a polygon side's were
    compared whole: the same building, 70 % seen, scored 30 % too large, and at a
    stricter IoU as a miss and a false building at once."""
    house = pixbox(20, 10, 60, 30) if cut == "nodata" else pixbox(72, 10, 112, 30)
    valid = np.ones(GRID.shape, bool)
    if cut == "nodata":
        valid[:, :32] = False  # 12 of the house's 40 columns
    mask = np.zeros(GRID.shape, bool)
    if cut == "nodata":
        mask[10:30, 20:60] = True
        mask &= valid
    else:
        mask[10:30, 72:100] = True  # columns 72..111: its part on the grid
    r = evaluate([house], mask, GRID, valid=valid, iou_threshold=0.8)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 0)
    assert r["per_object"][0]["area_error_pct"] == pytest.approx(0.0, abs=1e-6)
    assert r["pred_area_m2"] == pytest.approx(28 * 20 * 0.25)


def test_cli_refuses_sides_that_do_not_meet_and_images_as_masks(tmp_path, geotiff,
                                                                textured_image):
    truth = np.zeros((100, 100), dtype=np.uint8)
    truth[10:20, 10:30] = 1
    truth_path = geotiff("truth.tif", truth)
    far = _write_geojson(tmp_path / "far.geojson",
                         [shapely.affinity.translate(pixbox(10, 10, 30, 20), xoff=5000.0)],
                         "EPSG:32651")
    res = CliRunner().invoke(main, ["evaluate", str(far), str(truth_path), "--json"])
    assert res.exit_code == 1
    assert "far.geojson: no polygon lies within" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    moved = geotiff("moved.tif", truth, transform=Affine(0.5, 0, 510000.0, 0, -0.5, 4320000.0))
    res = CliRunner().invoke(main, ["evaluate", str(moved), str(truth_path)])
    assert res.exit_code == 1 and "truth.tif: does not overlap" in res.output
    image = geotiff("image.tif", textured_image(100, 100, bands=3))
    res = CliRunner().invoke(main, ["evaluate", str(far), str(image)])
    assert res.exit_code == 1 and "image.tif: has 3 bands" in res.output


def test_cli_reads_the_buildings_layer_of_a_geopackage(tmp_path):
    gpkg = tmp_path / "out.gpkg"
    for layer, polys in (("sites", [box(500000, 4320000, 500100, 4320100)]),
                         ("new_buildings", [box(500000, 4320000, 500010, 4320010)])):
        pyogrio.raw.write(gpkg, shapely.to_wkb(np.asarray(polys, dtype=object)),
                          [np.arange(len(polys), dtype=np.int64)], fields=["id"],
                          geometry_type="Polygon", crs="EPSG:32651", driver="GPKG",
                          layer=layer)
    truth = _write_geojson(tmp_path / "t.geojson", [box(500000, 4320000, 500010, 4320010)],
                           "EPSG:32651")
    res = CliRunner().invoke(main, ["evaluate", str(gpkg), str(truth), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["tp"] == 1 and out["pred_area_m2"] == 100.0


def test_a_mask_of_more_than_two_dimensions_is_named() -> None:
    with pytest.raises(ValueError, match="must be 2-D"):
        evaluate(np.zeros((1, 100, 100), np.uint8), np.zeros((100, 100), np.uint8), GRID)


def test_nothing_to_find_and_nothing_found_is_perfect():
    for g in (None, GRID):
        r = evaluate([], [], grid=g)
        assert (r["precision"], r["recall"], r["f1"]) == (1.0, 1.0, 1.0)
        assert (r["pixel_precision"], r["pixel_recall"], r["pixel_f1"], r["pixel_iou"]) == (
            1.0, 1.0, 1.0, 1.0)
        # One side empty is still a complete miss.
        r = evaluate([box(500000, 4319995, 500005, 4320000)], [], grid=g)
        assert (r["precision"], r["recall"], r["f1"], r["pixel_f1"]) == (0.0, 0.0, 0.0, 0.0)


def test_cli_reads_a_0_255_mask_as_buildings_at_255(tmp_path, geotiff):
    """LEVIR-CD's masks (and most exports) are 0/255 without a nodata tag: 255 is
    building, each connected part an object. They were read as change.tif (255 = no
    data), so that any two such masks scored 1.0."""
    truth = np.zeros((100, 100), dtype=np.uint8)
    truth[10:20, 10:30] = 255
    truth[50:60, 50:60] = 255
    pred = np.zeros_like(truth)
    pred[10:20, 10:30] = 255
    t = geotiff("truth_0_255.tif", truth)
    p = geotiff("pred_0_255.tif", pred)
    out = json.loads(CliRunner().invoke(main, ["evaluate", str(p), str(t), "--json"]).output)
    assert (out["tp"], out["fp"], out["fn"]) == (1, 0, 1)
    assert out["pixel_recall"] == round(200 / 300, 4)
    # Polygons against it, too.
    poly = _write_geojson(tmp_path / "p.geojson", [pixbox(10, 10, 30, 20)], "EPSG:32651")
    out = json.loads(CliRunner().invoke(main, ["evaluate", str(poly), str(t), "--json"]).output)
    assert (out["n_truth"], out["tp"]) == (2, 1)


def test_cli_reads_nodata_0_of_a_mask_as_background(geotiff):
    truth = np.zeros((100, 100), dtype=np.uint8)
    truth[10:20, 10:30] = 1
    pred = truth.copy()
    pred[50:60, 50:60] = 1  # a false building on the background
    t = geotiff("truth.tif", truth, nodata=0)
    p = geotiff("pred.tif", pred, nodata=0)
    res = CliRunner().invoke(main, ["evaluate", str(p), str(t), "--json"])
    out = json.loads(res.stdout)
    assert (out["tp"], out["fp"], out["fn"]) == (1, 1, 0)
    assert "read as background" in res.stderr


def test_cli_two_vector_files_one_or_both_empty(tmp_path):
    """The `none` scenario's CI case: empty truth (its CRS lon/lat) against empty or
    non-empty predictions in UTM."""
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    pred = _write_geojson(tmp_path / "p.geojson", [box(500000, 4320000, 500010, 4320010)],
                          "EPSG:32651")
    out = json.loads(CliRunner().invoke(main, ["evaluate", str(empty), str(empty),
                                               "--json"]).output)
    assert (out["precision"], out["recall"], out["f1"]) == (1.0, 1.0, 1.0)
    res = CliRunner().invoke(main, ["evaluate", str(pred), str(empty), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["fp"], out["f1"]) == (1, 0.0) and out["pred_area_m2"] == pytest.approx(100, 1e-3)
    res = CliRunner().invoke(main, ["evaluate", str(empty), str(pred), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["fn"] == 1


def test_cli_refuses_points_and_warns_of_polygons_elsewhere(tmp_path):
    import pyogrio.raw
    import shapely

    points = tmp_path / "points.geojson"
    geometry = shapely.to_wkb(np.asarray([shapely.Point(500005, 4320005)], dtype=object))
    pyogrio.raw.write(points, geometry, [np.arange(1)], fields=["id"],
                      geometry_type="Point", crs="EPSG:32651", driver="GeoJSON")
    here = _write_geojson(tmp_path / "a.geojson", [box(500000, 4320000, 500010, 4320010)],
                          "EPSG:32651")
    far = _write_geojson(tmp_path / "b.geojson", [box(600000, 4320000, 600010, 4320010)],
                         "EPSG:32651")
    res = CliRunner().invoke(main, ["evaluate", str(here), str(points)])
    assert res.exit_code == 1 and "points.geojson: contains no polygon with an area" in res.output
    res = CliRunner().invoke(main, ["evaluate", str(far), str(here), "--json"])
    assert res.exit_code == 0 and "same place" in res.stderr


def test_cli_reads_collections_drops_flat_polygons_and_writes_strict_json(tmp_path):
    """A GeometryCollection (as PostGIS's ST_MakeValid writes) was dropped unsaid, a
    polygon without area scored as a false building of 0 m² (two identical files
    scored object F1 0), and a null id made --json write NaN, which is no JSON."""
    house = box(500000, 4320000, 500010, 4320010)
    shed = box(500020, 4320000, 500030, 4320010)
    flat = shapely.Polygon([(500040, 4320000), (500045, 4320000), (500050, 4320000)])
    pred = tmp_path / "pred.geojson"
    geoms = [house, shapely.GeometryCollection([shed, shapely.LineString([(0, 0), (1, 1)])]),
             flat]
    pyogrio.raw.write(pred, shapely.to_wkb(np.asarray(geoms, dtype=object)),
                      [np.array([1.0, np.nan, 3.0])], fields=["id"], geometry_type="Unknown",
                      crs="EPSG:32651", driver="GeoJSON")
    truth = _write_geojson(tmp_path / "truth.geojson", [house, shed], "EPSG:32651")
    res = CliRunner().invoke(main, ["evaluate", str(pred), str(truth), "--json"])
    assert res.exit_code == 0, res.output

    def no_constant(name: str) -> None:
        raise AssertionError(f"{name} in --json output")

    out = json.loads(res.stdout, parse_constant=no_constant)
    assert (out["n_pred"], out["tp"], out["fp"]) == (2, 2, 0)
    assert "1 polygon(s) without area left out" in res.stderr
    same = CliRunner().invoke(main, ["evaluate", str(pred), str(pred), "--json"])
    assert json.loads(same.stdout)["f1"] == 1.0


def test_cli_reads_an_interpolated_mask_as_a_mask_and_touching_labels_as_labels(geotiff):
    """A 0/255 mask resampled bilinearly (grey values along the edges) was read as a
    label image: hundreds of objects, object F1 0."""
    from scipy import ndimage

    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[10:30, 10:40] = 1
    mask[50:70, 50:80] = 1
    smooth = ndimage.shift(mask.astype(float) * 255, (0.3, 0.45), order=1)
    smooth = ndimage.zoom(smooth, 1.07, order=1)[:100, :100]
    smooth = np.clip(smooth, 0, 255).round().astype(np.uint8)
    assert np.unique(smooth).size > 20  # else this proves nothing
    t = geotiff("truth.tif", (smooth >= 128).astype(np.uint8))
    res = CliRunner().invoke(main, ["evaluate", str(geotiff("grey.tif", smooth)), str(t),
                                    "--json"])
    out = json.loads(res.stdout)
    assert (out["n_pred"], out["tp"]) == (2, 2) and "resampled with interpolation" in res.stderr
    # Houses that touch, one label each, share a part: still a label image.
    labels = np.zeros((100, 100), dtype=np.uint16)
    for k in range(6):
        labels[10:30, 10 + 12 * k:22 + 12 * k] = k + 1
    res = CliRunner().invoke(main, ["evaluate", str(geotiff("labels.tif", labels)),
                                    str(geotiff("same.tif", labels)), "--json"])
    assert json.loads(res.stdout)["n_pred"] == 6 and "interpolation" not in res.stderr


def test_cli_names_utm_coordinates_labelled_lon_lat(tmp_path):
    """Scored as a false building of 0 m² against a truth elsewhere, and an internal
    PROJ error when on both sides."""
    house = box(500000, 4320000, 500010, 4320010)
    slip = _write_geojson(tmp_path / "slip.geojson", [house], "EPSG:4326")
    truth = _write_geojson(tmp_path / "truth.geojson", [house], "EPSG:32651")
    for args in ([slip, truth], [slip, slip]):
        res = CliRunner().invoke(main, ["evaluate", *map(str, args)])
        assert res.exit_code == 1
        assert "slip.geojson: has coordinates out of range for its geographic CRS" in res.output
        assert "internal error" not in res.output


def test_cli_two_vector_files_measure_each_polygon_where_its_area_is_true(tmp_path):
    """Both sides were measured in one projection chosen from the truth's whole extent:
    one stray polygon at (0, 0) made a 13,588 m² building 25,907 m²."""
    house = box(125.785, 39.072, 125.7865, 39.073)  # about 130 x 111 m in Pyongyang
    stray = box(0.0, 0.0, 0.0001, 0.0001)
    truth = _write_geojson(tmp_path / "truth.geojson", [house, stray], "EPSG:4326")
    pred = _write_geojson(tmp_path / "pred.geojson", [house], "EPSG:4326")
    res = CliRunner().invoke(main, ["evaluate", str(pred), str(truth), "--json"])
    out = json.loads(res.stdout)
    measured = CliRunner().invoke(main, ["measure", str(truth), "--json"])
    areas = [p["area_m2"] for p in json.loads(measured.stdout)["polygons"]]
    rows = {r["status"]: r for r in out["per_object"]}
    assert rows["tp"]["truth_area_m2"] == pytest.approx(areas[0], abs=0.1)
    assert rows["fn"]["truth_area_m2"] == pytest.approx(areas[1], abs=0.1)
    assert rows["tp"]["area_error_pct"] == 0.0 and out["pixel_precision"] == 1.0


def test_cli_refuses_a_raster_of_no_data_and_keeps_labels_past_int32(geotiff):
    """A mask of nothing but no data scored a perfect 1.0; label ids past 2**31 wrapped
    when moved to another grid, and every building was lost."""
    truth = np.zeros((100, 100), dtype=np.uint8)
    truth[10:20, 10:30] = 1
    t = geotiff("truth.tif", truth)
    blank = geotiff("blank.tif", np.full((100, 100), 255, np.uint8), nodata=255)
    res = CliRunner().invoke(main, ["evaluate", str(blank), str(t)])
    assert res.exit_code == 1 and "blank.tif: has no valid pixel" in res.output
    labels = np.zeros((100, 100), dtype=np.uint32)
    labels[10:20, 10:30] = 3_000_000_001
    labels[50:60, 50:60] = 3_000_000_002
    shifted = Affine(0.5, 0, 500000.25, 0, -0.5, 4320000.0)  # another grid: regridded
    big = geotiff("big.tif", labels, transform=shifted)
    res = CliRunner().invoke(main, ["evaluate", str(big), str(t), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["n_pred"], out["tp"], out["fp"]) == (2, 1, 1)


@pytest.mark.parametrize("value", [1, 255])
def test_cli_a_nodata_tag_on_a_masks_only_value_is_followed_and_said(geotiff, value):
    """A 0/1 mask tagged nodata 1 (or 0/255 tagged 255) may be buildings wrongly
    tagged, or an empty prediction with a nodata margin: the file cannot tell. The tag
    is followed (as GDAL reads it), with a warning saying how to read it otherwise."""
    pred = np.zeros((100, 100), dtype=np.uint8)
    pred[:, 90:] = value  # a margin, or a building
    truth = np.zeros_like(pred)
    truth[10:20, 10:30] = 1
    p = geotiff("pred.tif", pred, nodata=value)
    t = geotiff("truth.tif", truth)
    res = CliRunner().invoke(main, ["evaluate", str(p), str(t), "--json"])
    out = json.loads(res.stdout)
    assert (out["n_pred"], out["fn"]) == (0, 1)
    assert "read as no data (no building)" in res.stderr and "-unsetnodata" in res.stderr


def test_cli_reads_the_polygon_layer_after_a_point_layer(tmp_path):
    gpkg = tmp_path / "two.gpkg"
    square = box(500000, 4320000, 500010, 4320010)
    for layer, geom, kind in (("pts", shapely.Point(500005, 4320005), "Point"),
                              ("area", square, "Polygon")):
        pyogrio.raw.write(gpkg, shapely.to_wkb(np.asarray([geom], dtype=object)),
                          [np.arange(1)], fields=["id"], geometry_type=kind,
                          crs="EPSG:32651", driver="GPKG", layer=layer,
                          append=layer == "area")
    same = _write_geojson(tmp_path / "a.geojson", [square], "EPSG:32651")
    res = CliRunner().invoke(main, ["evaluate", str(gpkg), str(same), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["tp"] == 1


def test_a_valid_mask_off_the_grid_is_a_value_error():
    with pytest.raises(ValueError, match="does not fit the grid"):
        evaluate([], [], GRID, valid=np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="shape"):
        evaluate(np.zeros((10, 10), np.uint8), [], GRID)


def test_stage_losses_tell_too_little_change_among_the_pixels_no_candidate() -> None:
    from changedet.evaluate import pooled_stage_losses, stage_losses

    # Truth as a label image with a gap in its labels (1 is absent).
    truth = np.zeros((30, 60), np.int32)
    truth[5:15, 5:15] = 2         # building 2: 100 px, none of it a candidate
    truth[18:28, 20:30] = 3       # building 3: 100 px, kept, rejected and a hole
    regions = np.zeros(truth.shape, np.int32)
    regions[18:28, 20:25] = 1     # kept region (50 px) ...
    regions[18:28, 25:30] = 2     # ... and a rejected one (50 px)
    labels = (regions == 1).astype(np.int32)
    regions[20:22, 21:23] = 0     # a filled hole of the kept region: found, no candidate
    quiet = np.zeros(truth.shape, bool)
    quiet[5:10, 5:15] = True      # half of building 2 changed too little
    quiet[18:28, 20:30] = True    # all of building 3: kept, rejected and hole alike
    second, third = stage_losses(truth, regions, labels, quiet=quiet)
    # Only pixels that are no candidate and not found count as quiet: neither the
    # kept region, nor its filled hole, nor the rejected region.
    assert second["quiet"] == 0.5 and second["not_candidate"] == 1.0
    assert third["quiet"] == 0.0 and third["kept"] == 0.5 and third["rejected"] == 0.5
    assert pooled_stage_losses([second, third])["quiet"] == 0.25
    # Without the map the fractions are as before, and no quiet share is made up.
    assert "quiet" not in stage_losses(truth, regions, labels)[0]
    assert "quiet" not in pooled_stage_losses(stage_losses(truth, regions, labels))
