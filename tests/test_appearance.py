"""The appearance detector: its tree evaluator, segmentation, statistics and wiring."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from click.testing import CliRunner
from rasterio.crs import CRS
from scipy import ndimage

from changedet import appearance
from changedet.appearance import (APPEARANCE_FEATURE_NAMES, RoofRedraw, appearance_features,
                                  appearance_statistics, confirm_new_roofs, date_segments,
                                  load_appearance_model, new_roof_mask,
                                  redraw_found_roofs, roofs_before, tree_ensemble_logit)
from changedet.change import SceneStatistics
from changedet.raster import Grid, Scene


def _two_trees() -> dict[str, np.ndarray]:
    """Tree 0 splits feature 0 at 0.5 (NaN left), tree 1 feature 1 at 2.0 (NaN right)."""
    return {
        "baseline": np.array([0.1]),
        "roots": np.array([0, 3]),
        "feature": np.array([0, 0, 0, 1, 0, 0]),
        "threshold": np.array([0.5, 0, 0, 2.0, 0, 0]),
        "left": np.array([1, 0, 0, 4, 0, 0]),
        "right": np.array([2, 0, 0, 5, 0, 0]),
        "missing_left": np.array([1, 0, 0, 0, 0, 0], np.uint8),
        "is_leaf": np.array([0, 1, 1, 0, 1, 1], np.uint8),
        "value": np.array([0, 1.0, -1.0, 0, 0.5, 0.25]),
    }


def test_tree_ensemble_sums_the_leaves_reached() -> None:
    x = np.array([[0.2, 1.0], [0.7, 3.0], [0.5, 2.0], [np.nan, np.nan]])
    got = tree_ensemble_logit(x, _two_trees())
    # A value equal to the threshold goes left, as in scikit-learn.
    np.testing.assert_allclose(got, [1.6, -0.65, 1.6, 1.35])


def test_trees_walked_together_sum_as_each_tree_walked_alone() -> None:
    model = load_appearance_model()
    rng = np.random.default_rng(3)
    # More rows than one step takes, some features missing (NaN).
    x = rng.normal(0.0, 2.0, (appearance._TREE_ROWS_PER_STEP * 2 + 5,
                              len(APPEARANCE_FEATURE_NAMES)))
    x[rng.random(x.shape) < 0.1] = np.nan
    expected = np.full(x.shape[0], float(model["baseline"][0]))
    for root in model["roots"]:
        for i, row in enumerate(x):
            node = int(root)
            while not model["is_leaf"][node]:
                v = row[model["feature"][node]]
                left = (bool(model["missing_left"][node]) if np.isnan(v)
                        else v <= model["threshold"][node])
                node = int(model["left"][node] if left else model["right"][node])
            expected[i] += model["value"][node]
    np.testing.assert_array_equal(tree_ensemble_logit(x, model), expected)


def test_shipped_trees_are_consistent() -> None:
    model = load_appearance_model()
    assert tuple(model["feature_names"]) == APPEARANCE_FEATURE_NAMES
    n = model["value"].size
    inner = ~model["is_leaf"].astype(bool)
    assert (model["left"][inner] < n).all() and (model["right"][inner] < n).all()
    assert (model["feature"][inner] < len(APPEARANCE_FEATURE_NAMES)).all()
    assert model["roots"].size > 0 and model["baseline"].shape == (1,)


def _scene(img: np.ndarray, valid: np.ndarray | None = None, pixel: float = 0.5) -> Scene:
    h, w = img.shape[1:]
    grid = Grid(CRS.from_epsg(32651), Affine(pixel, 0, 500000.0, 0, -pixel, 4300000.0), h, w)
    return Scene(img.astype(np.float32), np.ones((h, w), bool) if valid is None else valid, grid)


def _grass(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tex = ndimage.gaussian_filter(rng.normal(size=shape), 3.0)
    tex = tex / tex.std()
    return (np.stack([70 + 5 * tex, 110 + 7 * tex, 50 + 4 * tex])
            + rng.normal(0, 1.5, (3,) + shape))


def test_segments_keep_to_a_roof_outline_and_nodata_is_none() -> None:
    img = _grass((160, 160), 0)
    roof = np.zeros((160, 160), bool)
    roof[50:90, 40:120] = True
    img[:, roof] = (np.array([190.0, 90.0, 70.0])[:, None]
                    + np.random.default_rng(1).normal(0, 1.5, (3, int(roof.sum()))))
    valid = np.ones((160, 160), bool)
    valid[:, :10] = False
    segments, n = date_segments(_scene(img, valid), 0.5)
    assert n > 1 and (segments[~valid] == 0).all() and (segments[valid] > 0).all()
    ids, counts = np.unique(segments[roof], return_counts=True)
    # Most of the roof is one segment; the blurred step at its outline may form thin
    # segments of its own, but no segment straddles the outline.
    assert counts.max() >= 0.85 * roof.sum()
    for k, inside in zip(ids, counts):
        total = (segments == k).sum()
        assert inside >= 0.9 * total or inside <= 0.1 * total


def test_first_pass_statistics_are_all_the_features_need() -> None:
    before = _scene(_grass((120, 120), 1))
    after = _scene(_grass((120, 120), 2))
    stats = SceneStatistics()
    appearance_statistics(before, after, 0.5, stats)
    known = set(stats.values)
    _, feats = appearance_features(after, 0.5, stats, "after")
    appearance_features(before, 0.5, stats, "before")
    assert set(stats.values) == known  # nothing measured on the window itself
    assert feats.shape[1] == len(APPEARANCE_FEATURE_NAMES) and np.isfinite(feats).all()
    # Given scene statistics, a window is stretched by them, not by its own pixels.
    darker = SceneStatistics({k: (v * 0.5 if k.startswith("stretch") else v)
                              for k, v in stats.values.items()})
    assert not np.array_equal(date_segments(after, 0.5, stats, "after")[0],
                              date_segments(after, 0.5, darker, "after")[0])


def test_nothing_new_on_an_unchanged_pair() -> None:
    img, _ = _roof_with_shadow()  # an old roof and its shadow, in both dates
    rng = np.random.default_rng(4)
    before = _scene(img + rng.normal(0, 1.5, img.shape))
    after = _scene(img + rng.normal(0, 1.5, img.shape))
    mask, prob = new_roof_mask(before, after, 0.5)
    assert not mask.any()
    assert prob[50:70, 50:90].min() >= 0.5  # the old roof is a roof in both dates


def _synthetic_pair(tmp_path: Path) -> dict[str, Path]:
    from changedet.synth import SynthParams, write_synthetic_pair

    return write_synthetic_pair(SynthParams.for_scenario("suburb", seed=2, size=400),
                                tmp_path / "p")


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """A list that grows by one at each call of ``changedet.appearance.<name>``."""
    from changedet import appearance

    calls: list[int] = []
    real = getattr(appearance, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(appearance, name, counted)
    return calls


def _cli_summary(pair: dict[str, Path], out: Path, *options: str) -> dict:
    """``changedet detect`` of ``pair`` into ``out`` with ``options``; its summary.json."""
    from changedet.cli import main

    res = CliRunner().invoke(main, ["-q", "detect", str(pair["before"]), str(pair["after"]),
                                    "-o", str(out), *options])
    assert res.exit_code == 0, res.output
    return json.loads((out / "summary.json").read_text())


def test_cli_detector_option_is_used_and_recorded(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet.cli import main

    calls = _count_calls(monkeypatch, "new_roof_mask")
    pair = _synthetic_pair(tmp_path)
    summary = _cli_summary(pair, tmp_path / "out", "--detector", "appearance")
    assert summary["parameters"]["detector"] == "appearance"
    # The change threshold is the regions detector's; this one never used it.
    assert summary["parameters"]["threshold"] is None
    assert summary["totals"]["n_buildings"] >= 1
    assert calls  # the appearance detector ran, not only its name was recorded
    bad = CliRunner().invoke(main, ["detect", str(pair["before"]), str(pair["after"]),
                                    "-o", str(tmp_path / "o2"), "--detector", "magic"])
    assert bad.exit_code == 2 and "magic" in bad.output


@pytest.mark.slow
def test_windowed_appearance_run_finds_what_the_whole_scene_run_finds(tmp_path: Path) -> None:
    from changedet.evaluate import match_objects
    from changedet.pipeline import DetectOptions, run_detection

    pair = _synthetic_pair(tmp_path)
    whole = run_detection(pair["before"], pair["after"],
                          DetectOptions(window_px=None, detector="appearance"))
    windowed = run_detection(pair["before"], pair["after"],
                             DetectOptions(window_px=256, detector="appearance"))
    assert windowed.summary["parameters"]["windows"]["n"] == 4
    assert windowed.summary["parameters"]["threshold"] is None
    a = [b.polygon for b in whole.buildings]
    b = [b.polygon for b in windowed.buildings]
    assert len(a) >= 3
    # Felzenszwalb's segmentation is not local: buildings at the seams may differ, but
    # not be reported twice.
    assert len(match_objects(a, b)) >= 0.8 * len(a)
    assert abs(len(b) - len(a)) <= 0.2 * len(a)


def test_an_unknown_detector_is_refused_before_any_work() -> None:
    from changedet.pipeline import DetectOptions

    with pytest.raises(ValueError, match="unknown detector 'magic'"):
        DetectOptions(detector="magic")


def test_first_pass_gives_windows_the_appearance_statistics() -> None:
    from changedet.change import DetectionParams
    from changedet.pipeline import _overlap_grid
    from changedet.raster import analysis_grid, read_header
    from changedet.windowed import first_pass

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "compound"
    hb, ha = read_header(fixture / "before.tif"), read_header(fixture / "after.tif")
    grid, _ = _overlap_grid(analysis_grid(hb.grid), hb, ha)
    first = first_pass(hb, ha, grid, "none", False, DetectionParams(detector="appearance"))
    keys = set(first.statistics.values)
    for date in ("before", "after"):
        assert {f"stretch_low_{date}_{i}" for i in range(3)} <= keys
        assert {f"stretch_high_{date}_{i}" for i in range(3)} <= keys
        assert {f"appearance_median_bright_{date}",
                f"appearance_median_gradient_{date}"} <= keys


def _roof_with_shadow(size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Grass with a roof (rows 40-80, cols 40-100) whose shadow falls south and east."""
    img = _grass((size, size), 3)
    img[:, 80:86, 44:104] *= 0.35
    img[:, 44:86, 100:104] *= 0.35
    img[:, 40:80, 40:100] = np.array([150.0, 150.0, 155.0])[:, None, None]
    roof = np.zeros((size, size), bool)
    roof[40:80, 40:100] = True
    return img, roof


def test_the_dark_side_is_measured_on_the_neighbouring_segments() -> None:
    img, roof = _roof_with_shadow()
    segments, feats = appearance_features(_scene(img), 0.5)
    k = np.bincount(segments[roof]).argmax()
    dark_side = feats[k, APPEARANCE_FEATURE_NAMES.index("dark_side")]
    contrast = feats[k, APPEARANCE_FEATURE_NAMES.index("dark_side_contrast")]
    # The strip beside the roof crosses the thin segments of its blurred outline
    # before the shadow, so it is only partly dark; but darker on the shadow's side.
    assert dark_side > 0.15 and contrast > 0.05
    # Measured where the strip is valid: nodata beside a segment is not darkness.
    valid = np.ones(roof.shape, bool)
    valid[86:, :] = False
    valid[:, 104:] = False
    seg_v, feats_v = appearance_features(_scene(img, valid), 0.5)
    k = np.bincount(seg_v[roof]).argmax()
    assert feats_v[k, APPEARANCE_FEATURE_NAMES.index("dark_side")] >= 0.5 * dark_side
    beside_nodata = np.unique(seg_v[84:86, :])
    assert (feats_v[beside_nodata[beside_nodata > 0],
                    APPEARANCE_FEATURE_NAMES.index("dark_side")] < 0.99).all()


def test_features_do_not_depend_on_the_units_or_on_a_near_infrared_layer() -> None:
    img, _ = _roof_with_shadow()
    segments, feats = appearance_features(_scene(img), 0.5)
    # Reflectances (0-1) instead of counts.
    seg_r, feats_r = appearance_features(_scene(img / 255.0), 0.5)
    np.testing.assert_array_equal(seg_r, segments)
    np.testing.assert_allclose(feats_r, feats, rtol=1e-5, atol=1e-6)
    # A near-infrared layer first: left out.
    with_nir = np.concatenate([np.full((1,) + img.shape[1:], 200.0), img])
    scene = replace(_scene(with_nir), nir=0)
    seg_n, feats_n = appearance_features(scene, 0.5)
    np.testing.assert_array_equal(seg_n, segments)
    np.testing.assert_allclose(feats_n, feats, rtol=1e-6)


def test_fewer_than_three_visible_bands_is_a_clear_error() -> None:
    from changedet.change import DetectionParams, detect_new_buildings
    from changedet.errors import ProcessingError

    two = _scene(_grass((64, 64), 5)[:2])
    with pytest.raises(ProcessingError, match="three visible bands"):
        detect_new_buildings(two, two, DetectionParams(detector="appearance"))


def test_nodata_in_the_before_date_does_not_make_a_roof_new() -> None:
    img, _ = _roof_with_shadow()
    rng = np.random.default_rng(6)
    valid_b = np.ones(img.shape[1:], bool)
    valid_b[:, :70] = False  # half the roof unseen before
    before = _scene(img + rng.normal(0, 1.5, img.shape), valid_b)
    after = _scene(img + rng.normal(0, 1.5, img.shape))
    mask, _ = new_roof_mask(before, after, 0.5)
    assert not mask.any()


def test_the_edge_of_the_data_is_not_an_outline() -> None:
    img = _grass((160, 160), 7)
    valid = np.ones((160, 160), bool)
    valid[:, :40] = False
    img[:, ~valid] = 0.0  # nodata as it is read: far darker than any ground
    stats = SceneStatistics()
    segments, feats = appearance_features(_scene(img, valid), 0.5, stats)
    rim = APPEARANCE_FEATURE_NAMES.index("log_rim_gradient")
    texture = APPEARANCE_FEATURE_NAMES.index("relative_texture")
    at_edge = np.unique(segments[:, 40])
    inside = np.setdiff1d(np.unique(segments[segments > 0]), at_edge)
    assert at_edge.size and inside.size  # else this test proves nothing
    # Segments along the nodata look like the grass inside, not like roof outlines.
    # (A step to nodata counted as an outline: rim gradient 2.3 to 2.7 and texture ten
    # times the inside's, against about 1.1 and 0.011 inside.)
    for k in (rim, texture):
        assert feats[at_edge, k].mean() <= 1.2 * feats[inside, k].mean()


def _new_roof_old_roof_and_earth(seed: int = 5) -> tuple[Scene, Scene, np.ndarray]:
    """Grass; a new grey roof with its shadow (region 1), an old roof standing in both
    dates (region 2), and a mottled patch of new bare earth (region 3)."""
    size = 240
    img, _ = _roof_with_shadow(size)  # the new roof: rows 40-80, cols 40-100
    rng = np.random.default_rng(seed)
    before_img = _grass((size, size), 3)
    after_img = img.copy()
    for date in (before_img, after_img):
        date[:, 160:165, 44:94] *= 0.35
        date[:, 130:160, 40:90] = np.array([160.0, 110.0, 90.0])[:, None, None]
    rows, cols = np.mgrid[0:size, 0:size]
    wobble = ndimage.gaussian_filter(rng.normal(size=(size, size)), 4.0)
    earth = ((rows - 165) / 32.0) ** 2 + ((cols - 180) / 38.0) ** 2 + 2.4 * wobble < 1
    mottle = ndimage.gaussian_filter(rng.normal(size=(size, size)), 1.0)
    mottle /= mottle.std()
    after_img[:, earth] = np.array([150.0, 130.0, 100.0])[:, None] * (1 + 0.12 * mottle[earth])
    regions = np.zeros((size, size), np.int32)
    regions[40:80, 40:100] = 1
    regions[130:160, 40:90] = 2
    regions[earth] = 3
    return (_scene(before_img + rng.normal(0, 1.5, img.shape)),
            _scene(after_img + rng.normal(0, 1.5, img.shape)), regions)


def test_appearance_confirms_a_new_roof_but_not_an_old_one_or_bare_earth() -> None:
    before, after, regions = _new_roof_old_roof_and_earth()
    confirmed, prob = confirm_new_roofs(before, after, regions, np.ones(4, bool), 0.5)
    assert confirmed.tolist() == [False, True, False, False]
    assert prob[1] >= 0.5 and prob[2] == prob[3] == 0.0
    # Only candidates are judged.
    confirmed, _ = confirm_new_roofs(before, after, regions, np.array([0, 0, 1, 1], bool), 0.5)
    assert not confirmed.any()


def test_features_of_some_segments_are_those_they_have_among_all() -> None:
    """``appearance_features(only=...)`` (the check describes its candidates only)
    gives the chosen segments' rows bit for bit, and zero rows to the others."""
    _, after, regions = _new_roof_old_roof_and_earth()
    ground, _ = ndimage.label(regions == 0)
    segments = np.where(regions > 0, regions, ground + 3)
    n = int(segments.max())
    _, every = appearance_features(after, 0.5, segments=segments)
    chosen = np.zeros(n + 1, bool)
    chosen[[1, 3]] = True
    _, some = appearance_features(after, 0.5, segments=segments, only=chosen)
    np.testing.assert_array_equal(some[chosen], every[chosen])
    assert not some[~chosen].any() and every[2].any()


def test_each_of_the_two_appearance_tests_rejects_on_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The earth and the old roof fail the first test (the region as a segment) and the
    second (the box segmented) apart: with either test made to pass everything, the
    other still keeps only the new roof."""
    from changedet import appearance

    before, after, regions = _new_roof_old_roof_and_earth()
    with monkeypatch.context() as patch:  # the second test passes everything
        patch.setattr(appearance, "new_roof_mask",
                      lambda b, a, *args, **kw: (np.ones(b.valid.shape, bool),
                                                 np.ones(b.valid.shape, np.float32)))
        confirmed, _ = confirm_new_roofs(before, after, regions, np.ones(4, bool), 0.5)
    assert confirmed.tolist() == [False, True, False, False]
    real = appearance.roof_probability

    def first_passes(scene, pixel_m, model=None, stats=None, date="after", segments=None,
                     only=None):
        if segments is None:
            return real(scene, pixel_m, model, stats, date)
        prob = np.full(int(segments.max()) + 1, 1.0 if date == "after" else 0.0)
        return segments, prob

    monkeypatch.setattr(appearance, "roof_probability", first_passes)
    confirmed, _ = confirm_new_roofs(before, after, regions, np.ones(4, bool), 0.5)
    assert confirmed.tolist() == [False, True, False, False]


def test_confirmation_statistics_and_probability_leave_nodata_out() -> None:
    """Statistics measured on the pixels valid in both dates (as the windowed first
    pass measures them), and a confirmed region's probability over its valid pixels."""
    before, after, regions = _new_roof_old_roof_and_earth()
    cut = np.ones(regions.shape, bool)
    cut[:, 70:] = False  # the after date has no data right of column 70
    after_cut = replace(after, valid=cut)
    stats = SceneStatistics()
    confirmed, prob = confirm_new_roofs(before, after_cut, regions, np.ones(4, bool), 0.5,
                                        stats)
    expected = SceneStatistics()
    appearance_statistics(replace(before, valid=cut), after_cut, 0.5, expected)
    assert stats.values == expected.values
    assert confirmed[1] and prob[1] >= 0.5  # half the roof, judged on what is seen
    with pytest.raises(ValueError, match="one entry per label"):
        confirm_new_roofs(before, after, regions, np.ones(3, bool), 0.5)


def test_windows_confirm_with_the_first_pass_statistics(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    from changedet import appearance
    from changedet.pipeline import DetectOptions, run_detection

    seen = []
    real = appearance.confirm_new_roofs

    def recorded(before, after, regions, candidates, pixel_m, stats=None, *args, **kw):
        seen.append(stats is not None and "appearance_median_gradient_after" in stats.values)
        return real(before, after, regions, candidates, pixel_m, stats, *args, **kw)

    monkeypatch.setattr(appearance, "confirm_new_roofs", recorded)
    pair = _synthetic_pair(tmp_path)
    result = run_detection(pair["before"], pair["after"],
                           DetectOptions(window_px=256, appearance_check=True))
    assert result.summary["parameters"]["windows"]["n"] == 4
    # Every window was judged with the scene's statistics, none with its own.
    assert len(seen) >= 4 and all(seen)


def test_appearance_confirmation_depends_only_on_the_box_around_the_region() -> None:
    """A window that holds the region and its margin answers as the whole scene does
    (with the scene's statistics): windowed and whole runs agree."""
    from changedet.appearance import CONFIRM_MARGIN_M
    from changedet.raster import crop_scene

    before, after, regions = _new_roof_old_roof_and_earth()
    stats = SceneStatistics()
    appearance_statistics(before, after, 0.5, stats)
    whole = confirm_new_roofs(before, after, regions, np.ones(4, bool), 0.5, stats)
    reach = 80 + int(np.ceil(CONFIRM_MARGIN_M / 0.5)) + 3  # the roof's last row, margin
    window = [crop_scene(s, 0, 0, reach, 150) for s in (before, after)]
    only_roof = np.where(regions[:reach, :150] == 1, 1, 0)
    part = confirm_new_roofs(*window, only_roof, np.ones(2, bool), 0.5, stats)
    assert part[0][1] and whole[0][1]
    assert part[1][1] == pytest.approx(whole[1][1], abs=1e-6)


def test_appearance_check_keeps_what_the_classifier_rejects_unless_turned_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from changedet import change
    from changedet.change import DetectionParams, detect_new_buildings

    before, after, _ = _new_roof_old_roof_and_earth()
    # A classifier that rejects every region: only the appearance check can keep one.
    monkeypatch.setattr(change, "classify_regions",
                        lambda features, model=None: np.zeros(features.shape[1], np.float32))
    labels, _ = detect_new_buildings(
        before, after, DetectionParams(ground_pixel_m=0.5, appearance_check=False))
    assert labels.max() == 0
    labels, evidence = detect_new_buildings(before, after, DetectionParams(ground_pixel_m=0.5))
    assert labels.max() == 1
    found = labels > 0
    roof = np.zeros(found.shape, bool)
    roof[40:80, 40:100] = True
    assert (found & roof).sum() / roof.sum() > 0.95
    assert (found & ~roof).sum() < 0.05 * roof.sum()  # not the earth, a candidate too
    # The building's score is the appearance detector's probability of roof.
    assert evidence.region_probability[60, 70] >= 0.5


def _part_of_the_new_roof(last_col: int) -> np.ndarray:
    """Labels: the new roof of :func:`_new_roof_old_roof_and_earth` left of a column."""
    _, _, regions = _new_roof_old_roof_and_earth()
    return ((regions == 1) & (np.arange(regions.shape[1])[None, :] < last_col)).astype(np.int32)


def test_completion_draws_the_rest_of_a_new_roof_and_nothing_else() -> None:
    """Two thirds of the new roof found: the appearance trees add most of the rest of
    it; nothing is added when that roof stood in the before date too, when its change
    is below the level, or when the found part is of the old roof or of the earth."""
    before, after, regions = _new_roof_old_roof_and_earth()
    change = np.full(regions.shape, 10.0, np.float32)
    labels = _part_of_the_new_roof(80)
    redraw = redraw_found_roofs(before, after, labels, change, 5.0, 0.5)
    added, prob = redraw.added, redraw.probability
    rest = (regions == 1) & (labels == 0)
    assert (added & rest).sum() > 0.8 * rest.sum()
    assert not (added & ~rest).any()
    assert (prob[added] >= 0.9).all() and not prob[~added].any()
    assert not redraw_found_roofs(before, after, labels, change, 11.0, 0.5).added.any()
    # The same roof standing in the before date too (given its change all the same).
    assert not redraw_found_roofs(after, after, labels, change, 5.0, 0.5).added.any()
    cols = np.arange(regions.shape[1])[None, :]
    for other in (2, 3):
        part = ((regions == other) & (cols < 70)).astype(np.int32)
        assert not redraw_found_roofs(before, after, part, change, 5.0, 0.5).added.any()
    # A "building" of two strips of grass above and below the new roof: the roof lies
    # in its box whole, but it covers none of it.
    strips = np.zeros(regions.shape, np.int32)
    strips[34:37, 40:100] = strips[83:86, 40:100] = 1
    assert not redraw_found_roofs(before, after, strips, change, 5.0, 0.5).added.any()


def _completion_judging_every_segment(before: Scene, after: Scene, labels: np.ndarray,
                                      change: np.ndarray, change_level: float,
                                      pixel_m: float, stats: SceneStatistics) -> np.ndarray:
    """What :func:`redraw_found_roofs` adds, with every segment of both dates judged in
    every box (as it was first written): the reference for the one that judges only
    the segments its other tests leave."""
    from changedet.appearance import (COMPLETION_SHARE, CONFIDENT_ROOF, CONFIRM_MARGIN_M,
                                      _edges_inside, _roof_after_and_before,
                                      load_appearance_model)
    from changedet.raster import crop_scene

    model = load_appearance_model()
    valid = before.valid & after.valid
    before, after = replace(before, valid=valid), replace(after, valid=valid)
    margin = int(np.ceil(CONFIRM_MARGIN_M / pixel_m))
    h, w = labels.shape
    added = np.zeros(labels.shape, bool)
    for k, (rows, cols) in enumerate(ndimage.find_objects(labels), start=1):
        r0, c0 = max(rows.start - margin, 0), max(cols.start - margin, 0)
        r1, c1 = min(rows.stop + margin, h), min(cols.stop + margin, w)
        box = (slice(r0, r1), slice(c0, c1))
        segments, p_after, was_roof = _roof_after_and_before(
            crop_scene(before, r0, c0, r1 - r0, c1 - c0),
            crop_scene(after, r0, c0, r1 - r0, c1 - c0), pixel_m, model, stats)
        m = int(segments.max())
        on = np.where(valid[box], segments, 0).ravel()
        count = np.maximum(np.bincount(on, minlength=m + 1), 1)
        mean_change = np.bincount(on, weights=change[box].ravel(), minlength=m + 1) / count
        covered = np.bincount(on, weights=(labels[box] == k).ravel(), minlength=m + 1) / count
        new = ((p_after >= CONFIDENT_ROOF) & (was_roof < 0.5)
               & (mean_change >= change_level) & (covered >= COMPLETION_SHARE))
        cut = _edges_inside(r0, c0, r1, c1, (h, w))
        new[np.unique(segments[cut & (segments > 0)])] = False
        new[0] = False
        added[box] |= new[segments] & valid[box]
    return ndimage.binary_opening(added, np.ones((3, 3), bool)) & (labels == 0)


def test_completion_judges_only_what_its_other_tests_leave_with_the_same_answer() -> None:
    """The completion describes a segment only when its change and the building's
    cover of it pass, and the before date only under the segments the trees find
    roofs: it adds exactly what judging every segment of both dates adds. Three found
    buildings at once: part of the new roof (completed), part of the old roof and the
    earth, with the change above the level on the left half of the scene only; then
    the same with the new roof standing in the before date too."""
    before, after, regions = _new_roof_old_roof_and_earth()
    change = np.where(np.arange(regions.shape[1])[None, :] < 120, 10.0, 2.0
                      ).astype(np.float32) * np.ones(regions.shape, np.float32)
    cols = np.arange(regions.shape[1])[None, :]
    labels = np.zeros(regions.shape, np.int32)
    labels[(regions == 1) & (cols < 80)] = 1
    labels[(regions == 2) & (cols < 70)] = 2
    labels[(regions == 3) & (cols < 190)] = 3
    # And the same with the new roof standing in the before date too: nothing added.
    for first, adds in ((before, True), (after, False)):
        stats = SceneStatistics()
        appearance_statistics(first, after, 0.5, stats)
        added = redraw_found_roofs(first, after, labels, change, 5.0, 0.5, stats).added
        reference = _completion_judging_every_segment(first, after, labels, change, 5.0,
                                                      0.5, stats)
        assert reference.any() == adds
        np.testing.assert_array_equal(added, reference)


def test_completion_takes_labels_with_gaps() -> None:
    """Labels need not run 1..n without a gap: the part of the new roof labelled 2
    (no 1) is completed as when it is labelled 1."""
    before, after, regions = _new_roof_old_roof_and_earth()
    change = np.full(regions.shape, 10.0, np.float32)
    labels = _part_of_the_new_roof(80)
    added = redraw_found_roofs(before, after, labels, change, 5.0, 0.5).added
    gapped = redraw_found_roofs(before, after, 2 * labels, change, 5.0, 0.5).added
    assert added.any()
    np.testing.assert_array_equal(gapped, added)


def test_completion_leaves_segments_the_box_cuts_and_depends_only_on_the_box() -> None:
    """A third of the roof found: its box (the found part and the margin) cuts the
    roof's segment, which is therefore not judged. With two thirds found, a window
    holding the box answers as the whole scene does."""
    from changedet.appearance import CONFIRM_MARGIN_M
    from changedet.raster import crop_scene

    before, after, regions = _new_roof_old_roof_and_earth()
    change = np.full(regions.shape, 10.0, np.float32)
    assert not redraw_found_roofs(before, after, _part_of_the_new_roof(60), change, 5.0,
                                  0.5).added.any()
    stats = SceneStatistics()
    appearance_statistics(before, after, 0.5, stats)
    labels = _part_of_the_new_roof(80)
    whole = redraw_found_roofs(before, after, labels, change, 5.0, 0.5, stats).added
    reach = int(np.ceil(CONFIRM_MARGIN_M / 0.5)) + 3
    rows, cols = 80 + reach, 80 + reach
    window = [crop_scene(s, 0, 0, rows, cols) for s in (before, after)]
    part = redraw_found_roofs(*window, labels[:rows, :cols], change[:rows, :cols], 5.0,
                              0.5, stats).added
    assert whole.any()
    np.testing.assert_array_equal(part, whole[:rows, :cols])


def test_detection_redraws_found_roofs_with_the_appearance_check_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The redraw's added pixels join the building they complete, with its probability
    as their score, and its removed pixels leave it; only the pixels of regions the
    classifier kept without confidence may be removed. Without the appearance check it
    is not asked."""
    from changedet import change
    from changedet.change import CONFIDENT_REGION, DetectionParams, detect_new_buildings

    before, after, _ = _new_roof_old_roof_and_earth()
    calls, given, removable_given = [], [], []

    def ring_beside(before, after, labels, change_map, level, pixel_m, stats=None,
                    removable=None, **kw):
        calls.append(level)
        removable_given.append(removable)
        # A ring around the new roof's building, outside every building; its last
        # ten columns cut out.
        roof = labels == labels[60, 70]
        added = ndimage.binary_dilation(roof, iterations=3) & (labels == 0)
        removed = roof & (np.arange(roof.shape[1])[None, :] >= 90)
        given.append((added, removed))
        return RoofRedraw(added, removed, np.where(added, np.float32(0.97), np.float32(0.0)))

    monkeypatch.setattr(appearance, "redraw_found_roofs", ring_beside)
    # A classifier that keeps every candidate region at 0.6, so that there is a
    # building, kept without confidence.
    monkeypatch.setattr(change, "classify_regions",
                        lambda features, model=None: np.where(
                            np.arange(features.shape[1]) > 0, 0.6, 0.0).astype(np.float32))
    params = DetectionParams(ground_pixel_m=0.5)
    labels, evidence = detect_new_buildings(before, after, params)
    assert len(calls) == 1 and calls[0] >= params.min_sigma
    assert 0.6 < CONFIDENT_REGION and removable_given[0][45:75, 45:95].all()
    # The outline stage redraws the grown outline, moving a pixel here and there.
    ring, removed = given[-1]
    joined = ring & (labels == labels[60, 70])
    assert ring.any() and joined.sum() > 0.75 * ring.sum()
    assert evidence.region_probability[joined].min() == pytest.approx(0.97)
    inner = ndimage.binary_erosion(removed, iterations=3)
    assert inner.any() and not (labels[inner] > 0).any()
    # Kept with confidence: nothing of it may be cut.
    monkeypatch.setattr(change, "classify_regions",
                        lambda features, model=None: np.where(
                            np.arange(features.shape[1]) > 0, 0.9, 0.0).astype(np.float32))
    detect_new_buildings(before, after, params)
    assert 0.9 >= CONFIDENT_REGION and not removable_given[-1][45:75, 45:95].any()
    calls.clear()
    alone, _ = detect_new_buildings(before, after, replace(params, appearance_check=False))
    assert not calls and (alone == alone[60, 70]).sum() < (labels == labels[60, 70]).sum()


def test_redraw_cuts_out_the_ground_it_may_and_nothing_else(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A building of the new roof and its shadow beside it: the shadow is cut out when
    its pixels may be, the roof never; nothing is cut when nothing may be, nor when the
    ground would be more than three quarters of the building."""
    before, after, regions = _new_roof_old_roof_and_earth()
    change = np.full(regions.shape, 10.0, np.float32)
    roof = regions == 1
    shadow = np.zeros(roof.shape, bool)
    shadow[40:80, 100:104] = True  # the roof's cast shadow: 4 px of dark grass
    labels = (roof | shadow).astype(np.int32)
    redraw = redraw_found_roofs(before, after, labels, change, 5.0, 0.5, removable=shadow)
    np.testing.assert_array_equal(redraw.removed, shadow)
    # A mask of 0 and 1 is a mask.
    np.testing.assert_array_equal(redraw_found_roofs(
        before, after, labels, change, 5.0, 0.5, removable=shadow.astype(np.uint8)).removed,
        shadow)
    everything = redraw_found_roofs(before, after, labels, change, 5.0, 0.5,
                                    removable=labels > 0)
    np.testing.assert_array_equal(everything.removed, shadow)
    assert not redraw_found_roofs(before, after, labels, change, 5.0, 0.5,
                                  removable=roof).removed.any()
    assert not redraw_found_roofs(before, after, labels, change, 5.0, 0.5).removed.any()
    with pytest.raises(ValueError, match="removable"):
        redraw_found_roofs(before, after, labels, change, 5.0, 0.5, removable=shadow[:-1])
    # The new earth is ground too, cut out of a building it is a part of...
    earth = regions == 3
    with_earth = (roof | shadow | earth).astype(np.int32)
    cut = redraw_found_roofs(before, after, with_earth, change, 5.0, 0.5,
                             removable=with_earth > 0).removed
    assert not (cut & roof).any() and (cut & earth).sum() > 0.9 * earth.sum()
    # ...but not out of one that is mostly ground: a sliver of the roof with them
    # (cut out when the cap is lifted).
    sliver = (roof & (np.arange(roof.shape[1])[None, :] >= 97)) | shadow | earth
    assert (sliver & ~roof).sum() > appearance.TRIM_MOST * sliver.sum()
    assert not redraw_found_roofs(before, after, sliver.astype(np.int32), change, 5.0, 0.5,
                                  removable=sliver).removed.any()
    monkeypatch.setattr(appearance, "TRIM_MOST", 1.0)
    assert redraw_found_roofs(before, after, sliver.astype(np.int32), change, 5.0, 0.5,
                              removable=sliver).removed.any()


def test_redraw_adds_what_the_completion_adds_and_cuts_within_the_box() -> None:
    """Two thirds of the new roof and its shadow found: what is added does not depend
    on what may be cut (it is the completion's), and a window holding the building's
    box (with the same statistics) cuts and adds what the whole scene does."""
    from changedet.appearance import CONFIRM_MARGIN_M
    from changedet.raster import crop_scene

    before, after, regions = _new_roof_old_roof_and_earth()
    change = np.full(regions.shape, 10.0, np.float32)
    stats = SceneStatistics()
    appearance_statistics(before, after, 0.5, stats)
    labels = _part_of_the_new_roof(80)
    labels[40:80, 100:104] = 1  # and the shadow beside the roof
    removable = labels > 0
    whole = redraw_found_roofs(before, after, labels, change, 5.0, 0.5, stats,
                               removable=removable)
    completion = redraw_found_roofs(before, after, labels, change, 5.0, 0.5, stats)
    added, prob = completion.added, completion.probability
    assert added.any() and whole.removed.any()
    np.testing.assert_array_equal(whole.added, added)
    np.testing.assert_array_equal(whole.probability, prob)
    reach = int(np.ceil(CONFIRM_MARGIN_M / 0.5)) + 3
    rows, cols = 80 + reach, 104 + reach
    window = [crop_scene(s, 0, 0, rows, cols) for s in (before, after)]
    part = redraw_found_roofs(*window, labels[:rows, :cols], change[:rows, :cols], 5.0, 0.5,
                              stats, removable=removable[:rows, :cols])
    np.testing.assert_array_equal(part.removed, whole.removed[:rows, :cols])
    np.testing.assert_array_equal(part.added, whole.added[:rows, :cols])


def test_roofs_before_finds_the_roof_that_stood_there_and_only_it() -> None:
    from changedet.appearance import CONFIRM_MARGIN_M
    from changedet.change import ROOF_BEFORE_LEVEL
    from changedet.raster import crop_scene

    before, after, regions = _new_roof_old_roof_and_earth()
    stats = SceneStatistics()
    appearance_statistics(before, after, 0.5, stats)
    prob = roofs_before(before, after, regions, 0.5, stats)
    # Grass before the new roof and the earth; the old roof stood in both dates.
    assert prob[0] == 0.0 and prob[1] < 0.1 and prob[3] < 0.1
    assert prob[2] >= ROOF_BEFORE_LEVEL
    # Only the box around the object counts: a window holding it and its margin
    # answers as the whole scene does.
    margin = int(np.ceil(CONFIRM_MARGIN_M / 0.5)) + 3
    top, right = 130 - margin, 90 + margin
    window = [crop_scene(s, top, 0, 240 - top, right) for s in (before, after)]
    only_old = np.where(regions[top:, :right] == 2, 1, 0)
    assert roofs_before(*window, only_old, 0.5, stats)[1] == pytest.approx(prob[2], abs=1e-9)


def _half_on_a_pulled_down_roof() -> tuple[Scene, Scene, np.ndarray]:
    """The new roof of :func:`_new_roof_old_roof_and_earth` (rows 40-80, cols 40-100)
    pulled down instead: the dates swapped. Object 1 lies half on it, object 2 on the
    lawn and the earth of the before date."""
    after, before, _ = _new_roof_old_roof_and_earth()
    labels = np.zeros(before.valid.shape, np.int32)
    labels[38:82, 70:120] = 1
    labels[130:160, 150:200] = 2
    return before, after, labels


def test_roof_share_before_sees_an_old_roof_the_object_only_partly_covers() -> None:
    from changedet.appearance import CONFIRM_MARGIN_M, roof_share_before
    from changedet.raster import crop_scene

    before, after, labels = _half_on_a_pulled_down_roof()
    stats = SceneStatistics()
    appearance_statistics(before, after, 0.5, stats)
    share = roof_share_before(before, after, labels, 0.5, stats)
    on_roof = (labels == 1)[40:80, 40:100].sum() / (labels == 1).sum()
    assert share[0] == 0.0 and share[2] == 0.0
    assert share[1] == pytest.approx(on_roof, abs=0.05)
    # Only the chosen objects are measured.
    chosen = roof_share_before(before, after, labels, 0.5, stats,
                               only=np.array([False, False, True]))
    assert chosen[1] == 0.0 and chosen[2] == share[2]
    # Only the box around the object counts.
    margin = int(np.ceil(CONFIRM_MARGIN_M / 0.5)) + 3
    bottom, right = 82 + margin, 120 + margin
    window = [crop_scene(s, 0, 0, bottom, right) for s in (before, after)]
    alone = np.where(labels[:bottom, :right] == 1, 1, 0)
    assert roof_share_before(*window, alone, 0.5, stats)[1] == pytest.approx(share[1])
    # Only the pixels valid in both dates count: the after date's nodata east of the
    # old roof leaves the part over it.
    valid = after.valid.copy()
    valid[30:90, 101:130] = False
    image = np.where(valid, after.image, 0.0)
    gap = roof_share_before(before, replace(after, image=image, valid=valid), labels, 0.5,
                            stats)
    counted = (labels == 1) & valid
    assert gap[1] == pytest.approx(counted[40:80, 40:100].sum() / counted.sum(), abs=0.05)
    assert gap[1] > share[1] + 0.2


def test_an_edgy_outline_stood_before_only_along_it_or_over_an_old_roof(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the appearance check, an object whose outline was an edgy band in the before
    date but no edge along it stood before when a quarter of it lay on an old roof."""
    from changedet import change
    from changedet.change import DetectionParams, _leave_out_standing, new_building_evidence

    before, after, labels = _half_on_a_pulled_down_roof()
    params = DetectionParams(ground_pixel_m=0.5, outline_before=1e-6)  # all edgy
    monkeypatch.setattr(change, "outline_along", lambda labels, n, *a, **k: np.zeros(n + 1))

    def standing(scenes: tuple | None) -> set[int]:
        evidence = new_building_evidence(before, after, params)
        kept, _ = _leave_out_standing(labels.copy(), 2, evidence, before.valid, 0.5,
                                      params, scenes)
        return {k for k in (1, 2) if not (kept[labels == k] > 0).any()}

    assert standing((before, after)) == {1}
    # Without the appearance check the band's mean alone decides.
    assert standing(None) == {1, 2}
    # It is the share that tells (the object as one segment was no roof before).
    monkeypatch.setattr(change, "ROOF_UNDER_SHARE", 1.01)
    assert standing((before, after)) == set()
    # An edge along the outline is enough on its own.
    monkeypatch.setattr(change, "outline_along", lambda labels, n, *a, **k: np.full(n + 1, 5.0))
    assert standing((before, after)) == {1, 2}


def test_a_building_whose_roof_stood_before_is_left_out_with_the_appearance_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The old roof re-covered in another colour: a change in a building's shape. With
    the outline test set aside, the appearance check still finds its roof in the before
    date and leaves it out as standing; without the check it is reported new."""
    from changedet import change
    from changedet.change import DetectionParams, detect_new_buildings

    before, after, _ = _new_roof_old_roof_and_earth()
    img = after.image.copy()
    rng = np.random.default_rng(1)
    img[:, 130:160, 40:90] = (np.array([90.0, 60.0, 50.0])[:, None, None]
                              + rng.normal(0, 1.5, (3, 30, 50)))
    after = replace(after, image=img)
    # A classifier that keeps every candidate region.
    monkeypatch.setattr(change, "classify_regions",
                        lambda features, model=None: (np.arange(features.shape[1]) > 0
                                                      ).astype(np.float32))
    no_outline_test = DetectionParams(ground_pixel_m=0.5, outline_before=1e9)
    labels, evidence = detect_new_buildings(before, after, no_outline_test)
    assert labels[60, 70] > 0  # the new roof
    assert labels[145, 65] == 0 and evidence.standing_before[145, 65] > 0
    labels, evidence = detect_new_buildings(before, after,
                                            replace(no_outline_test, appearance_check=False))
    assert labels[60, 70] > 0 and labels[145, 65] > 0 and evidence.outlined_before == 0
    # --keep-standing keeps it too: both tests of what stood before are off.
    labels, evidence = detect_new_buildings(before, after,
                                            replace(no_outline_test, outline_before=None))
    assert labels[145, 65] > 0 and evidence.outlined_before == 0


def test_the_roof_test_needs_no_edges_of_the_before_date() -> None:
    """Evidence made without the before date's edges (a caller's own) still gets the
    roof test: the outline test alone is skipped."""
    from changedet.change import (DetectionParams, _leave_out_standing,
                                  new_building_evidence)

    before, after, regions = _new_roof_old_roof_and_earth()
    evidence = new_building_evidence(before, after, DetectionParams(ground_pixel_m=0.5))
    evidence = replace(evidence, edges_before=None)
    labels = np.where(regions == 3, 0, regions)  # the new roof and the old one
    kept, n = _leave_out_standing(labels.copy(), 2, evidence, before.valid, 0.5,
                                  DetectionParams(ground_pixel_m=0.5), (before, after))
    assert n == 1 and kept[60, 70] > 0 and kept[145, 65] == 0
    assert evidence.standing_before[145, 65] > 0


def test_cli_appearance_check_is_used_and_recorded(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_calls(monkeypatch, "confirm_new_roofs")
    pair = _synthetic_pair(tmp_path)
    summary = _cli_summary(pair, tmp_path / "out")
    assert summary["parameters"]["appearance_check"] is True  # the default
    assert summary["parameters"]["appearance_check_applied"] is True
    assert calls
    calls.clear()
    summary = _cli_summary(pair, tmp_path / "o2", "--no-appearance-check")
    assert summary["parameters"]["appearance_check"] is False
    assert not calls
