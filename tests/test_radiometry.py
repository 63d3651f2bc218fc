"""Radiometric normalisation: a monotone per-band map fitted on unchanged pixels."""

from __future__ import annotations

import numpy as np
import pytest

from changedet.errors import ProcessingError
from changedet import radiometry
from changedet.radiometry import fit_patches, fit_radiometry


def _scene(seed: int = 0, h: int = 200, w: int = 200) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.normal(size=(3, h, w)), sigma=(0, 4, 4))
    img = (img - img.min()) / np.ptp(img)
    return (20 + 200 * img).astype(np.float32)


def _distort(before: np.ndarray) -> np.ndarray:
    """Gain, offset, gamma and haze, different per band."""
    gain = np.array([1.3, 0.8, 1.1])[:, None, None]
    gamma = np.array([0.8, 1.2, 1.0])[:, None, None]
    haze = np.array([25.0, 10.0, -5.0])[:, None, None]
    return (gain * 255.0 * (before / 255.0) ** gamma + haze).astype(np.float32)


def test_recovers_gain_offset_gamma_haze_despite_changes() -> None:
    before = _scene()
    after = _distort(before)
    # A quarter of the scene changes: bright new roofs and dark new asphalt.
    changed = np.zeros(before.shape[1:], bool)
    changed[20:90, 20:90] = True
    changed[120:170, 100:190] = True
    after[:, 20:90, 20:90] = 250.0
    after[:, 120:170, 100:190] = 15.0
    valid = np.ones(before.shape[1:], bool)
    fit = fit_radiometry(before, after, valid)
    norm = fit.apply(after)
    err = np.abs(norm - before)[:, ~changed]
    # Within 1.5 DN (of a 20-250 DN range) on 99 % of the unchanged pixels.
    assert np.percentile(err, 99) < 1.5
    assert err.mean() < 0.3
    # Changed pixels are told apart: low no-change weight on them, high elsewhere.
    assert fit.weight is not None
    assert np.median(fit.weight[changed]) < 0.01
    assert np.median(fit.weight[~changed]) > 0.3


def test_identity_when_nothing_differs() -> None:
    before = _scene(1)
    fit = fit_radiometry(before, before.copy(), np.ones(before.shape[1:], bool))
    assert np.allclose(fit.apply(before), before, atol=1e-3)


def test_extrapolates_beyond_fitted_range() -> None:
    before = _scene(2)
    after = 2.0 * before + 5.0
    fit = fit_radiometry(before, after, np.ones(before.shape[1:], bool))
    probe = np.full((3, 1, 2), 0.0, np.float32)
    probe[:, 0, 1] = 2.0 * 300.0 + 5.0
    out = fit.apply(probe)
    assert np.allclose(out[:, 0, 0], -2.5, atol=0.5)
    assert np.allclose(out[:, 0, 1], 300.0, atol=1.0)


def test_invalid_pixels_are_ignored() -> None:
    before = _scene(3)
    after = _distort(before)
    valid = np.ones(before.shape[1:], bool)
    valid[:, :60] = False
    after[:, :, :60] = 0.0  # nodata fill must not bend the map
    fit = fit_radiometry(before, after, valid)
    err = np.abs(fit.apply(after) - before)[:, valid]
    assert np.percentile(err, 99) < 1.0


def test_too_few_pixels() -> None:
    before = _scene(4, 20, 20)
    valid = np.zeros((20, 20), bool)
    valid[:5, :5] = True
    with pytest.raises(ProcessingError):
        fit_radiometry(before, before, valid)


def test_fit_on_patches_is_the_fit_on_their_pooled_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """A windowed run pools the patches it reads; the same fit must come out."""
    monkeypatch.setattr(radiometry, "_MAX_SAMPLES", 3000)  # the stride is exercised too
    before = _scene(5, 240, 240)
    after = _distort(before)
    after[:, 100:160, 30:200] = 240.0
    valid = np.ones(before.shape[1:], bool)
    valid[:50, :70] = False
    patches = [(0, 0, 80, 80), (0, 160, 80, 240), (160, 80, 240, 160), (100, 100, 140, 240)]
    on_patches = fit_radiometry(before, after, valid, keep_weight=False, patches=patches)
    pooled_b = np.concatenate([before[:, r0:r1, c0:c1][:, valid[r0:r1, c0:c1]]
                               for r0, c0, r1, c1 in patches], axis=1)
    pooled_a = np.concatenate([after[:, r0:r1, c0:c1][:, valid[r0:r1, c0:c1]]
                               for r0, c0, r1, c1 in patches], axis=1)
    pooled = fit_radiometry(pooled_b[:, None, :], pooled_a[:, None, :],
                            np.ones((1, pooled_b.shape[1]), bool), keep_weight=False)
    np.testing.assert_array_equal(on_patches.knots_after, pooled.knots_after)
    np.testing.assert_array_equal(on_patches.knots_before, pooled.knots_before)
    # And the default, the whole grid, is the one patch covering it.
    whole = fit_radiometry(before, after, valid, keep_weight=False)
    one = fit_radiometry(before, after, valid, keep_weight=False,
                         patches=[(0, 0, 240, 240)])
    np.testing.assert_array_equal(whole.knots_after, one.knots_after)
    assert not np.array_equal(whole.knots_after, on_patches.knots_after)


def test_large_grids_are_fitted_on_strips_spread_down_them() -> None:
    assert fit_patches((1000, 1000)) == [(0, 0, 1000, 1000)]
    strips = fit_patches((20000, 3000))
    rows = radiometry.FIT_STRIP_ROWS
    assert all(c0 == 0 and c1 == 3000 and r1 - r0 == rows for r0, c0, r1, c1 in strips)
    assert len(strips) * rows * 3000 == pytest.approx(radiometry.FIT_SAMPLE_PX, rel=0.05)
    starts = [r0 for r0, _, _, _ in strips]
    assert starts[0] == 0 and starts[-1] == 20000 - rows
    assert np.ptp(np.diff(starts)) <= 1  # evenly spaced
    # A very wide grid still gets strips all the way down.
    assert len(fit_patches((20000, 200000))) == radiometry.MIN_FIT_STRIPS


def test_fit_is_the_same_on_any_number_of_threads() -> None:
    before = _scene(4)
    after = _distort(before)
    after[:, 30:80, 30:80] = 240.0
    valid = np.ones(before.shape[1:], bool)
    one = fit_radiometry(before, after, valid, keep_weight=False)
    two = fit_radiometry(before, after, valid, keep_weight=False, workers=2)
    assert one.iterations == two.iterations > 1
    np.testing.assert_array_equal(one.knots_after, two.knots_after)
    np.testing.assert_array_equal(one.knots_before, two.knots_before)
    np.testing.assert_array_equal(one.sigma, two.sigma)


def test_arrays_of_the_wrong_shape_are_named() -> None:
    """A 2-D band or a mask of another shape failed as a bare IndexError."""
    rng = np.random.default_rng(0)
    before = rng.uniform(0, 255, (3, 32, 32)).astype(np.float32)
    valid = np.ones((32, 32), bool)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        fit_radiometry(before[0], before[0], valid)
    with pytest.raises(ValueError, match="valid of shape"):
        fit_radiometry(before, before, valid[:16])


def test_shapes_and_mask_type_are_value_errors() -> None:
    before = _scene(3, 20, 20)
    with pytest.raises(ValueError, match="band shapes differ"):
        fit_radiometry(before, before[:2], np.ones((20, 20), bool))
    with pytest.raises(ValueError, match="bool"):
        fit_radiometry(before, before, np.ones((20, 20)))


def test_nan_on_valid_pixels_is_refused_and_ignored_elsewhere() -> None:
    """A NaN on a valid pixel failed deep in np.interp ("array of sample points is
    empty"); on an invalid pixel it is nobody's business."""
    before = _scene(3, 40, 40)
    after = before * 1.1 + 5
    valid = np.ones((40, 40), bool)
    after[:, 3, 4] = np.nan
    with pytest.raises(ValueError, match="after holds NaN or infinite values on valid"):
        fit_radiometry(before, after, valid)
    valid[3, 4] = False
    fit = fit_radiometry(before, after, valid)
    np.testing.assert_allclose(fit.apply(after)[:, valid], before[:, valid], atol=0.5)


def test_clip_levels_find_saturated_ends_and_only_them() -> None:
    """Clips at 0 and at the top of 8 to 16 bits or 1.0, even spread by resampling;
    no clip on natural histograms, nor on a flat surface piled up elsewhere (a bright
    lot at 230, water at 9: read as clips, they hid new roofs built on them)."""
    from changedet.radiometry import clip_levels

    rng = np.random.default_rng(0)
    grey = rng.normal(150, 40, 400_000)
    assert np.isnan(clip_levels(np.sort(grey))).all()                      # continuous
    assert np.isnan(clip_levels(np.sort(np.round(grey)))).all()            # integers
    # A tail running into 0: the 1.6 % that round to 0 are what 0 means, "0 or less".
    dark = clip_levels(np.sort(np.round(rng.exponential(30, 400_000))))
    assert dark[0] < 0.5 and np.isnan(dark[1])
    lot = np.round(grey)
    lot[:12_000] = 230.0                                                   # 3 %, flat
    lot[12_000:56_000] = np.round(rng.normal(9, 0.8, 44_000))              # water, 11 %
    assert np.isnan(clip_levels(np.sort(lot))).all()
    clipped = np.clip(np.round(grey), 0, 255)  # 0.6 % at 255, 0.01 % at 0
    low, high = clip_levels(np.sort(clipped))
    assert np.isnan(low) and 254.5 <= high < 255.0
    # Resampled: the plateau spread by hundredths, with an overshoot beyond it.
    spread = clipped + np.where(clipped == 255, rng.uniform(-0.02, 0.02, clipped.size), 0)
    spread[:2000] = rng.uniform(255, 270, 2000)
    plateau = spread[2000:][clipped[2000:] == 255]
    assert 254.5 <= clip_levels(np.sort(spread))[1] <= plateau.min()
    assert clip_levels(np.sort(np.clip(np.round(rng.normal(20, 30, 400_000)), 0, 255)))[0] < 0.5
    # 11-bit data in 16-bit words, clipped at 2047; reflectances clipped at 1.0.
    eleven = np.clip(np.round(rng.normal(1500, 300, 400_000)), 0, 2047)
    assert 2046.5 <= clip_levels(np.sort(eleven))[1] < 2047
    # Reflectances with an offset run on below 0: zeros among them are no floor.
    offset = np.round(rng.normal(0.05, 0.1, 400_000), 2)
    assert np.isnan(clip_levels(np.sort(offset))[0])
    # ... and unclipped 11-bit data, whose histogram runs on past 511 and 1023.
    assert np.isnan(clip_levels(np.sort(np.round(rng.normal(1000, 300, 400_000))))[1])
    reflectance = np.clip(rng.normal(0.7, 0.2, 400_000), 0, 1.0)
    assert 0.999 < clip_levels(np.sort(reflectance))[1] < 1.0


def test_a_saturated_after_date_is_read_as_a_bound() -> None:
    """An after date 1.6 times as bright, clipped at 255: its clipped pixels were all
    mapped onto the bottom of the range they came from (35 levels dark on average);
    where nothing changed they now agree with the before date, and a change that the
    clip cannot hide (grass under a new white roof) stays."""
    rng = np.random.default_rng(3)
    before = _scene(4, 300, 300)
    before[:, :, :40] = rng.uniform(170, 250, (3, 300, 40))   # bright unchanged surfaces
    before[:, 200:230, 200:230] = rng.uniform(70, 90, (3, 30, 30))  # grass, to be built on
    after = np.clip(np.round(before * 1.6 + rng.normal(0, 1, before.shape)), 0, 255)
    after = after.astype(np.float32)
    after[:, 200:230, 200:230] = 255.0          # a new white roof on darker ground
    valid = np.ones((300, 300), bool)
    fit = fit_radiometry(before, after, valid, keep_weight=False)
    assert ((254.5 <= fit.clip_after[:, 1]) & (fit.clip_after[:, 1] < 255)).all()
    assert np.isnan(fit.clip_after[:, 0]).all()
    clipped = (after == 255).all(axis=0)
    clipped[200:230, 200:230] = False
    plain = fit.apply(after)
    read = fit.normalise(after, before)
    assert (before[:, clipped] - plain[:, clipped]).mean() > 20   # the old bias
    np.testing.assert_array_equal(read[:, clipped], before[:, clipped])
    roof = (slice(None), slice(200, 230), slice(200, 230))
    assert (read[roof] - before[roof]).min() > 50
    untouched = ~(after == 255).any(axis=0)
    np.testing.assert_array_equal(read[:, untouched], plain[:, untouched])


def _mostly_rebuilt(seed: int = 1, size: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Before, and an after scene whose right 70 % is new ground of another brightness
    (the rest the before scene under gain, offset, gamma and haze, with noise)."""
    before = _scene(seed, size, size)
    after = _distort(before)
    new = _distort(0.5 * _scene(seed + 1, size, size) + 120)
    after[:, :, int(0.3 * size):] = new[:, :, int(0.3 * size):]
    after += np.random.default_rng(seed).normal(0, 1, after.shape).astype(np.float32)
    return before, after


def test_structure_maps_see_a_change_of_ground_not_of_radiometry() -> None:
    before, after = _mostly_rebuilt()
    valid = np.ones(before.shape[1:], bool)
    rng = np.random.default_rng(3)
    same = _distort(before) + rng.normal(0, 1, before.shape)
    assert radiometry.changed_share(
        radiometry.structure_maps(before, same.astype(np.float32), valid, 0.5)
        .reshape(5, -1)) < 0.05
    assert 0.5 < radiometry.changed_share(
        radiometry.structure_maps(before, after, valid, 0.5).reshape(5, -1)) < 0.8
    # Two bands whose gradients point opposite ways, one's gain halved: the mean of
    # the bands would turn its gradient round, each band keeps its own.
    x = before[0]
    crossed = np.stack([x, 0.6 * (255 - x)])
    regained = np.stack([0.3 * x + 3, 0.6 * (255 - x)]) + rng.normal(0, 1, (2,) + x.shape)
    assert radiometry.changed_share(radiometry.structure_maps(
        crossed, regained.astype(np.float32), valid, 0.5).reshape(5, -1)) < 0.05
    # Nothing valid, nothing measured.
    nothing = radiometry.structure_maps(before, after, np.zeros_like(valid), 0.5)
    assert np.isnan(nothing).all() and np.isnan(radiometry.changed_share(nothing.reshape(5, -1)))


def test_noise_on_flat_ground_is_not_texture() -> None:
    # An unchanged pair, mostly flat: its noise differs between the dates, and must not
    # count as structure that changed.
    rng = np.random.default_rng(8)
    before = np.full((3, 300, 300), 70.0, np.float32)
    before[:, :, :60] = _scene(9, 300, 300)[:, :, :60]
    before_noisy = before + rng.normal(0, 2, before.shape).astype(np.float32)
    after = _distort(before) + rng.normal(0, 2, before.shape).astype(np.float32)
    maps = radiometry.structure_maps(before_noisy, after, np.ones((300, 300), bool), 0.5)
    assert radiometry.changed_share(maps.reshape(5, -1)) < 0.2
    # Noise alone, everywhere: nothing is textured.
    flat = radiometry.structure_maps(rng.normal(70, 2, before.shape).astype(np.float32),
                                     rng.normal(90, 2, before.shape).astype(np.float32),
                                     np.ones((300, 300), bool), 0.5)
    assert np.isnan(radiometry.changed_share(flat.reshape(5, -1)))
    # One band of noise alone: a handful of its outliers clear the bar, and they cross
    # at random; they say nothing of the ground's majority, and the fit is not weighted.
    for seed in range(3):
        noise = np.random.default_rng(seed).normal(100, 5, (2, 1, 512, 512)).astype(np.float32)
        valid = np.ones((512, 512), bool)
        maps = radiometry.structure_maps(noise[0], noise[1], valid, 0.5)
        assert 0 < _textured(maps) < radiometry.MIN_TEXTURED_SHARE * valid.size
        assert np.isnan(radiometry.changed_share(maps.reshape(5, -1)))
        fit = fit_radiometry(noise[0], noise[1], valid, keep_weight=False, structure=[maps])
        plain = fit_radiometry(noise[0], noise[1], valid, keep_weight=False)
        np.testing.assert_array_equal(fit.knots_after, plain.knots_after)


def _textured(maps: np.ndarray) -> int:
    """Pixels textured in either date, as :func:`radiometry.changed_share` counts them."""
    cosine, energy_b, energy_a, noise_b, noise_a = maps.reshape(5, -1)
    return int(sum((energy > max(np.median(energy), radiometry.TEXTURE_OVER_NOISE
                                 * np.median(noise)))
                   for energy, noise in ((energy_b, noise_b), (energy_a, noise_a))).astype(bool)
               .sum())


def test_structure_maps_of_a_patch_read_with_its_box_are_the_whole_grids(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A windowed run reads each fit strip through its box: its maps must be the
    # whole grid's, nodata included, to the bit; and so must tiles.
    before, after = _mostly_rebuilt()
    valid = np.random.default_rng(5).uniform(size=before.shape[1:]) > 0.0002
    valid[:, :12] = False
    whole = radiometry.structure_maps(before, after, valid, 0.5)
    assert 100 < np.isfinite(whole[0, 150]).sum() < 280
    for patch in ((0, 0, 8, 300), (150, 0, 158, 300), (292, 0, 300, 300), (40, 30, 60, 90)):
        (b0, c0, b1, c1), rows, cols = radiometry.structure_box(patch, valid.shape, 0.5)
        maps = radiometry.structure_maps(before[:, b0:b1, c0:c1], after[:, b0:b1, c0:c1],
                                         valid[b0:b1, c0:c1], 0.5, (rows, cols))
        r0, k0, r1, k1 = patch
        np.testing.assert_array_equal(maps, whole[:, r0:r1, k0:k1])
    patches = [(0, 0, 8, 300), (150, 0, 158, 300)]
    on_patches = radiometry.structure_on_patches(before, after, valid, patches, 0.5)
    np.testing.assert_array_equal(on_patches[1], whole[:, 150:158])
    monkeypatch.setattr(radiometry, "STRUCTURE_TILE_PX", 64)
    np.testing.assert_array_equal(radiometry.structure_maps(before, after, valid, 0.5), whole)


def test_a_changed_majority_is_fitted_on_the_unchanged_structure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    before, after = _mostly_rebuilt()
    valid = np.ones(before.shape[1:], bool)
    maps = [radiometry.structure_maps(before, after, valid, 0.5)]
    plain = fit_radiometry(before, after, valid, keep_weight=False)
    weighted = fit_radiometry(before, after, valid, keep_weight=False, structure=maps)
    assert plain.changed_share is None and weighted.changed_share > radiometry.CHANGED_MAJORITY
    # The unchanged 30 % (away from the new ground's edge): the plain fit matched
    # the new ground and is many levels off there; weighted, within the noise.
    unchanged = (slice(None), slice(20, 280), slice(10, 75))
    plain_err = np.median(np.abs(plain.normalise(after, before) - before)[unchanged])
    weighted_err = np.median(np.abs(weighted.normalise(after, before) - before)[unchanged])
    assert weighted_err < 1.0 < 5.0 < plain_err
    # Weighted from the first round on (its match of median and spread): after one
    # round, a third as far off as the plain fit's first round.
    once = [fit_radiometry(before, after, valid, keep_weight=False, structure=st,
                           iterations=1) for st in (None, maps)]
    plain_once, weighted_once = (np.median(np.abs(f.normalise(after, before) - before)
                                           [unchanged]) for f in once)
    assert weighted_once < plain_once / 2


def test_a_scene_changed_everywhere_is_still_fitted() -> None:
    # Every textured pixel crosses (an inverted date): the weights keep a floor.
    before = _scene(4)
    after = (255 - before).astype(np.float32)
    valid = np.ones(before.shape[1:], bool)
    maps = [radiometry.structure_maps(before, after, valid, 0.5)]
    fit = fit_radiometry(before, after, valid, keep_weight=False, structure=maps)
    assert fit.changed_share > 0.95
    assert np.isfinite(fit.knots_after[:, :2]).all() and np.isfinite(fit.sigma).all()
    assert np.isfinite(fit.normalise(after, before)).all()


def test_structure_must_be_one_array_per_patch() -> None:
    before = _scene(7)
    valid = np.ones(before.shape[1:], bool)
    with pytest.raises(ValueError, match="one 5-map array per patch"):
        fit_radiometry(before, _distort(before), valid,
                       structure=[np.zeros((5, 400, 200), np.float32)])


def test_an_unchanged_majority_is_fitted_as_without_structure() -> None:
    # Below the breakdown point the structure only measures: the fit is the same.
    before = _scene(7)
    after = _distort(before)
    after[:, 50:90, 60:120] = 230.0  # a new roof
    valid = np.ones(before.shape[1:], bool)
    maps = [radiometry.structure_maps(before, after, valid, 0.5)]
    plain = fit_radiometry(before, after, valid, keep_weight=False)
    measured = fit_radiometry(before, after, valid, keep_weight=False, structure=maps)
    assert measured.changed_share < radiometry.CHANGED_MAJORITY
    np.testing.assert_array_equal(plain.knots_after, measured.knots_after)
    np.testing.assert_array_equal(plain.knots_before, measured.knots_before)


def test_structure_is_compared_unless_the_dates_lie_further_apart_than_its_scale(
) -> None:
    from types import SimpleNamespace

    from changedet.coregister import AlignmentCheck

    def reg(applied: bool, rms: float | None, alignment: AlignmentCheck | None = None
            ) -> SimpleNamespace:
        return SimpleNamespace(applied=applied, residual_rms_px=rms, alignment=alignment)

    assert radiometry.structure_aligned(reg(True, 0.3), 0.5)
    assert radiometry.structure_aligned(reg(True, 2.0), 0.5)  # 1 m is 2 px
    assert not radiometry.structure_aligned(reg(True, 2.1), 0.5)
    assert radiometry.structure_aligned(reg(True, 1.0), 2.0)  # at least a pixel
    assert not radiometry.structure_aligned(reg(True, 1.1), 2.0)
    # Not applied (none asked, or judged unreliable and not checked): compared as it is.
    assert radiometry.structure_aligned(reg(False, 25.0), 0.5)
    assert radiometry.structure_aligned(reg(False, None), 0.5)
    # Judged unreliable and checked: what the check measured (its shift plus precision).
    def check(shift: tuple[float, float], z: float = 9.0) -> AlignmentCheck:
        return AlignmentCheck((round(shift[0]), round(shift[1])), z, 25, 5.0, shift, 0.3)

    assert radiometry.structure_aligned(reg(False, 25.0, check((1.2, 0.0))), 0.5)
    assert not radiometry.structure_aligned(reg(False, 0.2, check((1.5, 1.5))), 0.5)
    assert not radiometry.structure_aligned(reg(False, 0.2, check((0.0, 0.8))), 1.0)
    # ... or, when the dates share nothing measurable, compared as it is.
    assert radiometry.structure_aligned(reg(False, 0.2, check((9.0, 9.0), z=3.0)), 1.0)
