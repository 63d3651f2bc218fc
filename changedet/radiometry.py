"""Relative radiometric normalisation of the after scene onto the before scene.

Two dates of the same place differ in gain, offset, gamma, haze and colour balance.
Those differences are monotone per band, so on pixels that did not change the after
value is a monotone function of the before value. We estimate that function by
*weighted quantile matching*: the weighted quantiles of the before and after values of
the same (unchanged) pixels are paired, which recovers any monotone transfer exactly,
not only a linear one. Which pixels are unchanged is not known beforehand, so the fit
is iterated like IR-MAD: pixels whose normalised residual is improbable under a
chi-square law with one degree of freedom per band get little weight in the next round.

The fit is a small object (a few knots per band) computed once and applied to any
window of the after scene. On a large scene it is measured on strips spread over it
(:func:`fit_patches`): a whole-scene run and a windowed one read the same patches, so
they normalise with the same fit.

The fit needs most of the scene unchanged. Where it is not (a wood cleared for a new
suburb), the dates' structure says so: a change of radiometry, monotone in each
band, keeps the direction of every band's gradient, and new ground does not
(:func:`structure_maps`). When more than half of the textured ground changed that
way, the fit weights each pixel by how well its structure agrees
(:func:`structure_prior`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats

from ._log import RunThreadPool, logger, warn_analyst
from .errors import ProcessingError

#: Quantile levels paired between the dates (the ends are handled by extrapolation).
_QUANTILES = np.linspace(0.01, 0.99, 50)
#: Pixels used to fit; a strided sample beyond this keeps the fit fast on large scenes.
_MAX_SAMPLES = 400_000
#: Larger scenes are fitted on about this many pixels, in strips of FIT_STRIP_ROWS
#: rows across the whole width spread evenly down the grid (at least
#: MIN_FIT_STRIPS of them): a near-uniform sample, as the bright tail of the fit
#: (roofs) needs, that a windowed run reads cheaply.
FIT_SAMPLE_PX = 1_572_864
FIT_STRIP_ROWS = 8
MIN_FIT_STRIPS = 16
#: Gaussian scale of the gradients whose directions :func:`structure_maps` compares,
#: metres (at least a pixel): that of a roof's edge, above the texture of grass and
#: gravel. They are compared over a Gaussian window 1.5 times as wide.
STRUCTURE_SCALE_M = 1.0
#: The fit matches the dates where they agree, so it needs an unchanged majority (its
#: breakdown point): where the structure of more than this share of the textured
#: ground differs, the fit is weighted by structure, and the run warns.
CHANGED_MAJORITY = 0.5


@dataclass
class RadiometricFit:
    """A per-band monotone map from after-scene values to before-scene radiometry.

    Attributes
    ----------
    knots_after, knots_before : (B, K) ndarray of float64
        Paired quantiles: after value ``knots_after[b, k]`` maps onto
        ``knots_before[b, k]``; between knots the map is linear, beyond the ends it
        continues with the slope of the outer tenth of the knots; trailing NaNs pad bands
        that needed fewer knots.
    sigma : (B,) ndarray of float64
        Robust standard deviation of the residual (before - normalised after) on
        unchanged pixels, per band, in before-scene units: the noise scale for change
        tests.
    weight : (H, W) ndarray of float32 or None
        No-change probability of each pixel of the fitted scenes (0 for invalid
        pixels), for display; None when the fit was made on a sample only.
    iterations : int
        Reweighting rounds run.
    clip_after, clip_before : (B, 2) ndarray of float64 or None
        Per band, the ``[low, high]`` values at which each date is clipped (a
        saturated band), NaN where it is not (:func:`clip_levels`); None: unknown.
        :meth:`normalise` reads a clipped value as a bound, not a measurement.
    changed_share : float or None
        Share of the textured ground whose structure differs between the dates
        (:func:`changed_share`), on the fitted pixels; None when not measured, NaN
        when there was nothing to compare. Above :data:`CHANGED_MAJORITY` the fit was
        weighted by structure (:func:`structure_prior`).
    """

    knots_after: np.ndarray
    knots_before: np.ndarray
    sigma: np.ndarray
    weight: np.ndarray | None = None
    iterations: int = 0
    clip_after: np.ndarray | None = None
    clip_before: np.ndarray | None = None
    changed_share: float | None = None

    def apply(self, after: np.ndarray) -> np.ndarray:
        """Map after-scene bands onto the before scene's radiometry.

        Parameters
        ----------
        after : (B, H, W) ndarray
            After-scene bands in the order used for the fit.

        Returns
        -------
        (B, H, W) ndarray of float32
        """
        if after.shape[0] != self.knots_after.shape[0]:
            raise ProcessingError(
                f"radiometric fit has {self.knots_after.shape[0]} band(s), "
                f"image has {after.shape[0]}"
            )
        out = np.empty(after.shape, dtype=np.float32)
        for b in range(after.shape[0]):
            out[b] = _monotone_map(after[b], self.knots_after[b], self.knots_before[b])
        return out

    def normalise(self, after: np.ndarray, before: np.ndarray) -> np.ndarray:
        """The after bands mapped onto the before radiometry (:meth:`apply`), with
        clipped values read as the bounds they are.

        An after value at its band's upper clip says only that the true value is at
        least the map of the clip level: where the before value is above that, the
        two dates agree, and the before value is taken; below it, the map of the clip
        level is the least change there can be. Lower clips (and clips of the before
        date, seen from the after side) are read the same way. Without clips this is
        :meth:`apply`.

        Parameters
        ----------
        after, before : (B, H, W) ndarray
            After bands as delivered, and before bands, on one grid.

        Returns
        -------
        (B, H, W) ndarray of float32
        """
        out = self.apply(after)
        dates = ((self.clip_after, after, True), (self.clip_before, before, False))
        for b in range(out.shape[0]):
            for (clip, date, is_after), high in itertools.product(dates, (True, False)):
                level = np.nan if clip is None else clip[b, 1 if high else 0]
                if not np.isfinite(level):
                    continue
                at = date[b] >= level if high else date[b] <= level
                if not at.any():
                    continue
                # After clipped high: its true value is out or more, so the dates
                # agree if before is; out = max(out, before). Before clipped high: its
                # true value is before or more, so out = min(out, before).
                agree = np.maximum if high == is_after else np.minimum
                out[b][at] = agree(out[b][at], before[b][at])
        return out

    def residual_z2(self, before: np.ndarray, normalised_after: np.ndarray) -> np.ndarray:
        """Sum over bands of squared noise-normalised differences.

        Parameters
        ----------
        before, normalised_after : (B, H, W) ndarray

        Returns
        -------
        (H, W) ndarray of float32
            Chi-square distributed with B degrees of freedom where nothing changed.
        """
        z2 = np.zeros(before.shape[1:], dtype=np.float32)
        for b in range(before.shape[0]):
            d = (normalised_after[b] - before[b]) / np.float32(self.sigma[b])
            z2 += d * d
        return z2


def _monotone_map(x: np.ndarray, xk: np.ndarray, yk: np.ndarray) -> np.ndarray:
    """Piecewise-linear map through knots, extended linearly beyond both ends.

    NaN knots (padding) are ignored.
    """
    keep = np.isfinite(xk)
    xk, yk = xk[keep], yk[keep]
    y = np.interp(x, xk, yk).astype(np.float32)
    # Slopes over the outer tenth of the knots: the last segment alone is too
    # noisy to carry bright roofs or deep shadows far beyond the fitted range.
    k = max(1, min(xk.size - 1, xk.size // 10))
    lo_slope = (yk[k] - yk[0]) / max(xk[k] - xk[0], 1e-12)
    hi_slope = (yk[-1] - yk[-1 - k]) / max(xk[-1] - xk[-1 - k], 1e-12)
    lo = x < xk[0]
    hi = x > xk[-1]
    y[lo] = yk[0] + lo_slope * (x[lo] - xk[0])
    y[hi] = yk[-1] + hi_slope * (x[hi] - xk[-1])
    return y


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, q: np.ndarray,
                        order: np.ndarray | None = None) -> np.ndarray:
    """Quantiles ``q`` of ``values`` weighted by ``weights``; ``order``, when given, is
    their stable argsort (values that stay fixed while the weights change)."""
    if order is None:
        order = np.argsort(values, kind="stable")
    v = values[order]
    cw = np.cumsum(weights[order])
    cw = (cw - 0.5 * weights[order]) / cw[-1]
    return np.interp(q, cw, v)


def _strictly_increasing(xk: np.ndarray, yk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated after-knots (flat histograms, saturated bands) so interp is defined."""
    keep = np.concatenate([[True], np.diff(xk) > 1e-9 * max(1.0, abs(xk).max())])
    xk, yk = xk[keep], yk[keep]
    if xk.size < 2:
        # A constant band: only an offset can be recovered.
        xk = np.array([xk[0], xk[0] + 1.0])
        yk = np.array([yk[0], yk[0] + 1.0])
    return xk, np.maximum.accumulate(yk)


#: A band is clipped at an end of its range when at least this share of the sample
#: sits on a value where sensors and products clip (below).
MIN_CLIPPED_SHARE = 0.001
#: Where bands are clipped: 0 below; above, the largest value of 8 to 16 bits, or 1.0
#: for reflectances. Only there: a flat surface (water, a bright lot) piles up on one
#: value too, and reading it as a clip hid new roofs built on it.
CLIP_FLOOR = 0.0
CLIP_CEILINGS = (1.0, *(float(2**bits - 1) for bits in range(8, 17)))
#: At most this many times as much of the sample beyond a ceiling as on it: the
#: overshoot of a cubic resampling along small clipped roofs, not a histogram running
#: on past a value that happens to be a ceiling of fewer bits.
CLIP_OVERSHOOT = 4.0
#: Half-width of "on the value": a thousandth of the band's 1-99 % range, at most half
#: a level of integer data (resampling spreads a clipped plateau by hundredths).
CLIP_WIDTH = 1e-3


def clip_levels(sorted_values: np.ndarray) -> tuple[float, float]:
    """The values at and beyond which a band is clipped, ``(low, high)``; NaN for an
    end that is not.

    Parameters
    ----------
    sorted_values : (N,) ndarray
        A sample of the band's valid pixels, sorted.

    Returns
    -------
    (float, float)
        8-bit products clip bright roofs at 255 and deep shadows at 0. An end is
        clipped when at least ``MIN_CLIPPED_SHARE`` of the sample lies within a
        half-width of ``CLIP_FLOOR`` or of one of ``CLIP_CEILINGS`` (the one holding
        most), with at most ``CLIP_OVERSHOOT`` times as much beyond it. The
        level returned is that value less (or plus) the half-width, so
        that a resampling's overshoot beyond it is clipped too. Clipped objects
        only a few pixels wide, whose plateau a cubic resampling does not keep, are
        not found.
    """
    n = sorted_values.size
    if n < 2:
        return np.nan, np.nan
    p01, p99 = (float(sorted_values[int(q * (n - 1))]) for q in (0.01, 0.99))
    half = min(0.5, CLIP_WIDTH * (p99 - p01)) if p99 > p01 else 0.5

    def held(value: float) -> int:
        return int(np.searchsorted(sorted_values, value + half, side="right")
                   - np.searchsorted(sorted_values, value - half, side="left"))

    on = held(CLIP_FLOOR)
    below = int(np.searchsorted(sorted_values, CLIP_FLOOR - half, side="left"))
    # (Values below the floor in number, as in surface reflectances with an offset:
    # 0 is then no floor.)
    low = (CLIP_FLOOR + half if on >= MIN_CLIPPED_SHARE * n and below <= CLIP_OVERSHOOT * on
           else np.nan)
    # A ceiling is at the top of the data: little lies beyond it (a resampling's
    # overshoot along the clipped objects' edges). 511 inside 11-bit data is no clip.
    high, most = np.nan, MIN_CLIPPED_SHARE * n
    for ceiling in CLIP_CEILINGS:
        on = held(ceiling)
        beyond = n - int(np.searchsorted(sorted_values, ceiling + half, side="right"))
        if on >= most and beyond <= CLIP_OVERSHOOT * on:
            high, most = ceiling - half, on
    return float(low), float(high)


def _robust_sigma(r: np.ndarray, w: np.ndarray) -> float:
    """Scale of the unchanged pixels' residuals, robust to a changed majority.

    The first quartile of absolute deviations from the weighted median, divided by
    that of a unit normal (0.3186): changed pixels deviate more than unchanged ones,
    so it grows only slowly with the changed share (measured on a synthetic pair
    whose unchanged residuals have a scale of 1.75: 2.43 with 30 % of the pixels
    changed, 3.18 with 50 %, 5.44 with 70 %), and unlike soft-weighted scales it is
    not shrunk by the reweighting it feeds. Floored so a noiseless fit stays finite.
    """
    med = _weighted_quantiles(r, w, np.array([0.5]))[0]
    q1 = float(np.quantile(np.abs(r - med), 0.25))
    # (The floor scales with the residuals: a floor of 1e-3 was far below the noise
    # of counts but above that of reflectances, whose fit it loosened.)
    return max(q1 / 0.3186, 1e-3 * float(np.abs(r).max()), 1e-12)


def fit_patches(shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Windows ``(row0, col0, row1, col1)`` of a grid whose pixels the fit is measured on.

    The whole grid when it has at most :data:`FIT_SAMPLE_PX` pixels; otherwise strips
    of :data:`FIT_STRIP_ROWS` rows across the grid, evenly spaced from its top to its
    bottom, about :data:`FIT_SAMPLE_PX` pixels in all.
    """
    h, w = shape
    if h * w <= FIT_SAMPLE_PX:
        return [(0, 0, h, w)]
    rows = min(FIT_STRIP_ROWS, h)
    n = max(MIN_FIT_STRIPS, FIT_SAMPLE_PX // (rows * w))
    starts = np.unique(np.linspace(0, h - rows, n).round().astype(int))
    return [(int(r), 0, int(r) + rows, w) for r in starts]


#: The maps :func:`structure_maps` gives, in order.
STRUCTURE_MAPS = ("cosine", "energy_before", "energy_after", "noise_before", "noise_after")
#: A date's pixel is textured when its gradient energy is above this many times the
#: energy its noise alone gives (twice the noise's gradient magnitude), and above the
#: date's median energy.
TEXTURE_OVER_NOISE = 4.0
#: A share measured on fewer textured pixels than this share of the pixels measured
#: says nothing of the ground's majority (a flat or pure-noise scene has a handful of
#: noise outliers above the bar, and they cross at random).
MIN_TEXTURED_SHARE = 0.01
#: Weight of a pixel whose structure crosses in a fit weighted by structure, at least.
MIN_PRIOR = 0.01
#: Tiles :func:`structure_maps` works in (grown by the reach), pixels a side: its
#: temporaries take about 60 bytes a pixel.
STRUCTURE_TILE_PX = 1024


def _gaussian_radius(sigma: float) -> int:
    """Reach of :func:`scipy.ndimage.gaussian_filter` (truncate 4), pixels."""
    return int(4.0 * sigma + 0.5)


def _structure_sigma_px(pixel_m: float) -> float:
    return max(1.0, STRUCTURE_SCALE_M / pixel_m)


def _structure_reach_px(pixel_m: float) -> int:
    """How far from a pixel :func:`structure_maps` looks, pixels."""
    s = _structure_sigma_px(pixel_m)
    return _gaussian_radius(s) + _gaussian_radius(1.5 * s)


def structure_aligned(registration: object, pixel_m: float) -> bool:
    """Whether the dates may be taken as aligned well enough to compare their
    structure (at :data:`STRUCTURE_SCALE_M`, at least a pixel).

    An applied correction must have left a residual within that scale. An estimate
    judged unreliable and not applied measures nothing itself (on a scene most of
    which changed, the changed windows make both its shift and its spread): what its
    alignment check measured must lie within that scale; when the dates share no
    structure to measure it by, or no check was made, the pair is compared as it is,
    as it is with ``--coreg none``.

    Parameters
    ----------
    registration : changedet.coregister.Registration
    pixel_m : float
    """
    scale = _structure_sigma_px(pixel_m)
    if registration.applied:
        return (registration.residual_rms_px or 0.0) <= scale
    check = getattr(registration, "alignment", None)
    if check is not None and check.measured:
        return check.misregistration_px <= scale
    return True


def structure_box(patch: tuple[int, int, int, int], shape: tuple[int, int],
                  pixel_m: float) -> tuple[tuple[int, int, int, int], slice, slice]:
    """The box to read around a fit patch so that :func:`structure_maps` of the box
    gives, on the patch, what it gives on the whole grid.

    Returns
    -------
    box : (row0, col0, row1, col1)
        The patch grown by the maps' reach, within the grid.
    rows, cols : slice
        The patch within the box.
    """
    reach = _structure_reach_px(pixel_m)
    r0, c0, r1, c1 = patch
    h, w = shape
    box = (max(0, r0 - reach), max(0, c0 - reach), min(h, r1 + reach), min(w, c1 + reach))
    return box, slice(r0 - box[0], r1 - box[0]), slice(c0 - box[1], c1 - box[1])


def structure_maps(before: np.ndarray, after: np.ndarray, valid: np.ndarray,
                   pixel_m: float, region: tuple[slice, slice] | None = None) -> np.ndarray:
    """How well each pixel's local structure agrees between the dates.

    A change of radiometry that is monotone increasing in each band keeps the
    direction of every band's gradient; new buildings, cleared woods and debris do
    not. Each band's gradients (Gaussian derivatives at :data:`STRUCTURE_SCALE_M`) of
    the two dates are compared over a Gaussian window 1.5 times as wide, summed over
    the bands (a structure tensor): their cosine is 1 where they agree, 0 or less
    where they cross. Each date's noise, as gradient energy, comes from the residual
    of each pixel to its four neighbours. Every filter is local (a box grown by the
    reach, :func:`structure_box`, gives the same values, to the bit), so that a
    windowed run's fit strips see what the whole scene's do; the maps are computed in
    tiles of :data:`STRUCTURE_TILE_PX`, which gives the same values too.

    Parameters
    ----------
    before, after : (B, H, W) ndarray
        Both dates on one grid.
    valid : (H, W) ndarray of bool
    pixel_m : float
    region : (slice, slice), optional
        Only this part of the grid is described (default: all of it).

    Returns
    -------
    (5, h, w) ndarray of float32
        :data:`STRUCTURE_MAPS` on the region: the cosine, each date's gradient energy
        over the window, and each date's noise as the gradient energy white noise of
        that residual would give (one pixel's estimate; its median over many pixels
        is the date's noise level, or more where the scene is textured). NaN where
        the reach touches nodata.
    """
    h, w = valid.shape
    rows, cols = region if region is not None else (slice(0, h), slice(0, w))
    r_start, r_stop, _ = rows.indices(h)
    c_start, c_stop, _ = cols.indices(w)
    reach = _structure_reach_px(pixel_m)
    out = np.full((len(STRUCTURE_MAPS), r_stop - r_start, c_stop - c_start), np.nan,
                  np.float32)
    for r0 in range(r_start, r_stop, STRUCTURE_TILE_PX):
        for c0 in range(c_start, c_stop, STRUCTURE_TILE_PX):
            r1, c1 = min(r0 + STRUCTURE_TILE_PX, r_stop), min(c0 + STRUCTURE_TILE_PX, c_stop)
            b0, k0 = max(0, r0 - reach), max(0, c0 - reach)
            b1, k1 = min(h, r1 + reach), min(w, c1 + reach)
            tile = _structure_tile(before[:, b0:b1, k0:k1], after[:, b0:b1, k0:k1],
                                   valid[b0:b1, k0:k1], pixel_m)
            out[:, r0 - r_start:r1 - r_start, c0 - c_start:c1 - c_start] = \
                tile[:, r0 - b0:r1 - b0, c0 - k0:c1 - k0]
    return out


def _noise_energy_per_residual(sigma: float, n_bands: int) -> float:
    """Gradient energy (summed over ``n_bands`` bands) that white noise gives through
    the derivative filters at ``sigma``, per unit of the median squared residual of a
    pixel to its four neighbours (summed over the bands).

    The window keeps the energy's expectation (its weights sum to 1). A residual of
    white noise of variance v has variance 1.25 v; summed over the bands, its square
    is 1.25 v times a chi-square of ``n_bands`` degrees of freedom.
    """
    size = 2 * _gaussian_radius(sigma) + 1
    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1.0
    per_band = sum(float((ndimage.gaussian_filter(impulse, sigma, order=o) ** 2).sum())
                   for o in ((0, 1), (1, 0)))
    return per_band * n_bands / (1.25 * float(stats.chi2.median(n_bands)))


def _structure_tile(before: np.ndarray, after: np.ndarray, valid: np.ndarray,
                    pixel_m: float) -> np.ndarray:
    """:func:`structure_maps` of one array, whole."""
    s = _structure_sigma_px(pixel_m)
    window = 1.5 * s
    shape = valid.shape
    cross = np.zeros(shape, np.float32)
    energy = [np.zeros(shape, np.float32), np.zeros(shape, np.float32)]
    residual = [np.zeros(shape, np.float32), np.zeros(shape, np.float32)]
    for band_b, band_a in zip(before, after):
        grads = []
        for k, band in enumerate((band_b, band_a)):
            band = np.asarray(band, np.float32)
            gx = ndimage.gaussian_filter(band, s, order=(0, 1))
            gy = ndimage.gaussian_filter(band, s, order=(1, 0))
            grads.append((gx, gy))
            energy[k] += gx * gx + gy * gy
            # The residual to the four neighbours' mean is a quarter of the Laplacian.
            residual[k] += (ndimage.laplace(band) * np.float32(0.25)) ** 2
        (bx, by), (ax, ay) = grads
        cross += bx * ax + by * ay
    cross = ndimage.gaussian_filter(cross, window)
    energy_b, energy_a = (ndimage.gaussian_filter(e, window) for e in energy)
    cosine = cross / np.sqrt(np.maximum(energy_b * energy_a, 0.0) + np.float32(1e-30))
    gain = np.float32(_noise_energy_per_residual(s, before.shape[0]))
    maps = (cosine, energy_b, energy_a, residual[0] * gain, residual[1] * gain)
    reach = _structure_reach_px(pixel_m)
    # (At the grid's border the filters reflect the data: the border is not nodata.)
    inside = ndimage.minimum_filter(valid.astype(np.uint8), 2 * reach + 1) > 0
    out = np.full((len(maps),) + shape, np.nan, np.float32)
    for k, m in enumerate(maps):
        out[k][inside] = m[inside]
    return out


def structure_on_patches(before: np.ndarray, after: np.ndarray, valid: np.ndarray,
                         patches: list[tuple[int, int, int, int]], pixel_m: float
                         ) -> list[np.ndarray]:
    """:func:`structure_maps` on each fit patch (through its :func:`structure_box`):
    the values the whole grid gives there.

    Returns
    -------
    list of (5, h, w) ndarray of float32
        One per patch.
    """
    out = []
    for patch in patches:
        (b0, c0, b1, c1), rows, cols = structure_box(patch, valid.shape, pixel_m)
        out.append(structure_maps(before[:, b0:b1, c0:c1], after[:, b0:b1, c0:c1],
                                  valid[b0:b1, c0:c1], pixel_m, (rows, cols)))
    return out


def changed_share(structure: np.ndarray) -> float:
    """Share of the textured ground whose structure differs between the dates.

    Parameters
    ----------
    structure : (5, N) ndarray
        :func:`structure_maps` of N pixels.

    Returns
    -------
    float
        Of the pixels textured in either date (gradient energy above that date's
        median, and above :data:`TEXTURE_OVER_NOISE` times its noise level, the median
        of its noise map), the share whose cosine is under 0.5 (more than 60 degrees
        apart); NaN when none was measured, or fewer than
        :data:`MIN_TEXTURED_SHARE` of those measured are textured.
    """
    measured = np.isfinite(structure[0])
    if not measured.any():
        return float("nan")
    cosine, energy_b, energy_a, noise_b, noise_a = structure[:, measured]
    textured = np.zeros(cosine.shape, bool)
    for energy, noise in ((energy_b, noise_b), (energy_a, noise_a)):
        textured |= energy > max(float(np.median(energy)),
                                 TEXTURE_OVER_NOISE * float(np.median(noise)))
    if not textured.sum() >= max(1.0, MIN_TEXTURED_SHARE * textured.size):
        return float("nan")
    return float((cosine[textured] < 0.5).mean())


def structure_prior(structure: np.ndarray, share: float) -> np.ndarray:
    """No-change weights from structure, for a scene whose majority changed.

    A pixel whose structure agrees weighs 1, one whose structure crosses (or is not
    measured) weighs ``(1 - share) / (2 * share)`` (at least :data:`MIN_PRIOR`),
    linearly between: the textured pixels that agree then outweigh those that do not
    two to one.

    Parameters
    ----------
    structure : (5, N) ndarray
        :func:`structure_maps` of N pixels.
    share : float
        :func:`changed_share` of them, above :data:`CHANGED_MAJORITY`.

    Returns
    -------
    (N,) ndarray of float64
    """
    floor = max((1.0 - share) / (2.0 * share), MIN_PRIOR)
    agree = np.clip(np.nan_to_num(structure[0].astype(np.float64), nan=0.0), 0.0, 1.0)
    return floor + (1.0 - floor) * agree


def fit_radiometry(
    before: np.ndarray,
    after: np.ndarray,
    valid: np.ndarray,
    *,
    iterations: int = 6,
    keep_weight: bool = True,
    patches: list[tuple[int, int, int, int]] | None = None,
    workers: int = 1,
    structure: Sequence[np.ndarray] | None = None,
) -> RadiometricFit:
    """Fit the after-to-before radiometric map on pixels that did not change.

    Parameters
    ----------
    before, after : (B, H, W) ndarray
        The two scenes on one grid, co-registered.
    valid : (H, W) ndarray of bool
        Pixels valid in both scenes.
    iterations : int
        Reweighting rounds (the weights settle in 3 to 5 rounds in practice).
    keep_weight : bool
        Compute and keep the full-resolution no-change weight map.
    patches : list of (row0, col0, row1, col1), optional
        Windows whose valid pixels are pooled for the fit (default: the whole grid);
        see :func:`fit_patches`.
    workers : int
        Threads fitting the bands (the result is the same for any number).
    structure : list of (5, h, w) ndarray, optional
        :func:`structure_maps` of each patch (of the whole grid when ``patches`` is
        None), as the whole grid gives them (:func:`structure_on_patches`). When the
        structure of more than :data:`CHANGED_MAJORITY` of the textured ground
        differs, each pixel's no-change weight is multiplied by
        :func:`structure_prior`, the first round's median and spread included.

    Returns
    -------
    RadiometricFit

    Raises
    ------
    ProcessingError
        When fewer than 100 valid pixels are available.
    """
    before, after, valid = np.asarray(before), np.asarray(after), np.asarray(valid)
    if before.ndim != 3:
        raise ValueError(f"before must be (B, H, W), got shape {before.shape}")
    if before.shape != after.shape:
        raise ValueError(f"band shapes differ: {before.shape} vs {after.shape}")
    if valid.dtype != bool:
        raise ValueError(f"valid must be a bool array, got {valid.dtype}")
    if valid.shape != before.shape[1:]:
        raise ValueError(f"valid of shape {valid.shape} does not match the bands "
                         f"{before.shape[1:]}")
    for name, bands in (("before", before), ("after", after)):
        # One sum finds a NaN or infinity; only then is the mask looked at.
        if not np.isfinite(np.add.reduce(bands, axis=None, dtype=np.float64)) \
                and not np.isfinite(bands[:, valid]).all():
            raise ValueError(f"{name} holds NaN or infinite values on valid pixels: "
                             "mark them invalid")
    nb = before.shape[0]
    if patches is None:
        patches = [(0, 0, *valid.shape)]
    if structure is not None:
        shapes = [np.shape(m) for m in structure]
        wanted = [(len(STRUCTURE_MAPS), r1 - r0, c1 - c0) for r0, c0, r1, c1 in patches]
        if shapes != wanted:
            raise ValueError(f"structure must be one {len(STRUCTURE_MAPS)}-map array per "
                             f"patch, shaped {wanted}, got {shapes}")
    # Pixel indices into the patches laid end to end, in patch then raster order: the
    # order a windowed run pools its reads of the same patches in.
    counts = [int(valid[r0:r1, c0:c1].sum()) for r0, c0, r1, c1 in patches]
    total = sum(counts)
    if total < 100:
        raise ProcessingError("fewer than 100 valid pixels in common: cannot normalise")
    step = int(np.ceil(total / _MAX_SAMPLES)) if total > _MAX_SAMPLES else 1
    # Every step-th of those pixels: in each patch, from the first whose index in the
    # whole sequence is a multiple of step.
    parts_b, parts_a, parts_s = [], [], []
    start = 0
    for k, ((r0, c0, r1, c1), count) in enumerate(zip(patches, counts)):
        idx = np.flatnonzero(valid[r0:r1, c0:c1].ravel())[(-start) % step::step]
        parts_b.append(before[:, r0:r1, c0:c1].reshape(nb, -1)[:, idx])
        parts_a.append(after[:, r0:r1, c0:c1].reshape(nb, -1)[:, idx])
        if structure is not None:
            parts_s.append(structure[k].reshape(len(STRUCTURE_MAPS), -1)[:, idx])
        start += count
    xb = np.concatenate(parts_b, axis=1).astype(np.float64)
    xa = np.concatenate(parts_a, axis=1).astype(np.float64)
    del parts_a, parts_b
    n = xb.shape[1]
    share = None
    prior = None
    if structure is not None:
        sample = np.concatenate(parts_s, axis=1)
        share = changed_share(sample)
        if share > CHANGED_MAJORITY:
            # Most of the scene changed: the weights alone would match the change.
            prior = structure_prior(sample, share)
            logger.info("radiometry: the structure of %.0f %% of the textured ground "
                        "differs; the fit is weighted by structure", 100 * share)
        del sample, parts_s
    w = np.ones(n) if prior is None else prior.copy()
    with RunThreadPool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        run_bands = map if pool is None else pool.map
        # The samples stay fixed while the weights change: sort them once.
        order_a = list(run_bands(lambda x: np.argsort(x, kind="stable"), xa))
        order_b = list(run_bands(lambda x: np.argsort(x, kind="stable"), xb))
        ka: list[np.ndarray] = []
        kb: list[np.ndarray] = []
        sigma = np.ones(nb)
        done = 0
        for done in range(1, iterations + 1):
            ka, kb = [], []
            z2 = np.zeros(n)
            # Quantiles only over pixels that are plausibly unchanged: a changed
            # minority sits in the tails and would otherwise be matched onto the other
            # date.
            use = w > 0.01

            def fit_band(b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
                if done == 1 and prior is not None:
                    # The same, weighted by structure: the changed majority must not
                    # set the first match.
                    half = np.array([0.5])
                    ma = _weighted_quantiles(xa[b], prior, half)[0]
                    mb = _weighted_quantiles(xb[b], prior, half)[0]
                    sa = max(1.4826 * _weighted_quantiles(np.abs(xa[b] - ma), prior,
                                                          half)[0], 1e-6)
                    sb = 1.4826 * _weighted_quantiles(np.abs(xb[b] - mb), prior, half)[0]
                    xk = np.array([ma - sa, ma + sa])
                    yk = np.array([mb - sb, mb + sb])
                elif done == 1:
                    # First round: robust location/scale matching (median, MAD), which a
                    # changed minority hardly moves, to get first no-change weights.
                    ma, mb = np.median(xa[b]), np.median(xb[b])
                    sa = max(1.4826 * np.median(np.abs(xa[b] - ma)), 1e-6)
                    sb = 1.4826 * np.median(np.abs(xb[b] - mb))
                    xk = np.array([ma - sa, ma + sa])
                    yk = np.array([mb - sb, mb + sb])
                else:
                    # The stable order of the kept samples is the full order, filtered.
                    used_a = order_a[b][use[order_a[b]]]
                    used_b = order_b[b][use[order_b[b]]]
                    xk, yk = _strictly_increasing(
                        _weighted_quantiles(xa[b], w, _QUANTILES, used_a),
                        _weighted_quantiles(xb[b], w, _QUANTILES, used_b),
                    )
                r = _monotone_map(xa[b], xk, yk) - xb[b]
                return xk, yk, r, _robust_sigma(r, w)

            # Bands are fitted independently (on threads: numpy's sorts release the GIL)
            # and summed in band order, so the result does not depend on ``workers``.
            for b, (xk, yk, r, sigma_b) in enumerate(run_bands(fit_band, range(nb))):
                ka.append(xk)
                kb.append(yk)
                sigma[b] = sigma_b
                z2 += (r / sigma_b) ** 2
            # No-change probability, as in IR-MAD: the chi-square tail of the residual.
            new_w = stats.chi2.sf(z2, df=nb)
            if prior is not None:
                new_w *= prior
            if not new_w.sum() >= 0.01 * n:  # (NaN included)
                warn_analyst("radiometry: almost every pixel looks changed; keeping "
                             "the previous weights")
                break
            shift = float(np.abs(new_w - w).mean())
            w = new_w
            if shift < 1e-3:
                break
    # Pad the knot arrays with NaN to a rectangle so the fit is two plain arrays.
    k = max(x.size for x in ka)
    knots_a = np.stack([np.pad(x, (0, k - x.size), constant_values=np.nan) for x in ka])
    knots_b = np.stack([np.pad(y, (0, k - y.size), constant_values=np.nan) for y in kb])
    clips = [np.array([clip_levels(x[o]) for x, o in zip(xs, orders)])
             for xs, orders in ((xa, order_a), (xb, order_b))]
    fit = RadiometricFit(knots_a, knots_b, sigma.copy(), None, done, clips[0], clips[1],
                         share)
    for name, clip in (("after", clips[0]), ("before", clips[1])):
        if np.isfinite(clip).any():
            # One line: "band 1 -/255, band 2 0/255" (- where that end is not clipped).
            levels = ", ".join(f"band {i} " + "/".join("-" if not np.isfinite(v) else f"{v:.4g}"
                                                       for v in band)
                               for i, band in enumerate(clip.tolist(), start=1))
            logger.info("radiometry: the %s date is clipped at %s (low/high): clipped "
                        "values are read as bounds", name, levels)
    if keep_weight:
        z2full = fit.residual_z2(before, fit.normalise(after, before))
        weight = stats.chi2.sf(z2full, df=nb).astype(np.float32)
        weight[~valid] = 0.0
        fit.weight = weight
    logger.info("radiometry: %d rounds, residual sigma %s", done,
                np.array2string(sigma, precision=3))
    return fit
