"""Sub-pixel co-registration of the after scene onto the before scene.

Matching is done on structure (gradient magnitude of the luminance), which survives
gain, offset, gamma and haze differences between dates, in many windows spread over
the overlap (over its central :data:`COREG_CHIP_PX` pixels when it is larger:
:func:`register_on_chips`, which the whole-scene and windowed paths share). Each
window gives a phase-correlation shift with an upsampled sub-pixel peak and a peak
height; a robust consensus over windows rejects the windows spoilt by new buildings,
moved shadows or seasonal vegetation. A coarse pass on decimated images first brings
large shifts (up to ~10% of the overlap or chip measured) within a window's reach.

Sign convention (design.md): a feature at column ``c``, row ``r`` of the before image
appears at ``c + dx``, ``r + dy`` of the after image on the analysis grid. The
correction handed to :func:`changedet.raster.warp_scene` maps an output pixel to the
place where it must be sampled in the after image, so a global shift is
``Affine.translation(dx, dy)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
from affine import Affine
from scipy import fft as sfft
from scipy import ndimage, stats
from skimage.registration import phase_cross_correlation

from ._log import logger, warn_analyst
from .raster import (AlignedPair, Grid, Scene, central_chip, check_scene, correction_on_window,
                     crop_scene, lattice_chips, valid_box, warp_scene)

#: Below this reliability a shift is reported but not applied.
MIN_RELIABILITY = 0.3
#: An unreliable estimate is checked against the dates' common structure
#: (:func:`check_alignment`): its best offset counts as structure both dates share when
#: chance would put any of the offsets searched that high less than once in this many
#: pairs (each offset's score is near normal by chance: unrelated textures and pairs
#: with nothing left in common score as the largest of that many normal draws).
ALIGNMENT_FALSE_ALARM = 1e-3
#: The alignment check reads squares of this many pixels a side, up to
#: ALIGNMENT_SQUARES of them spread over the pair, and pools their votes.
ALIGNMENT_CHIP_PX = 1024
ALIGNMENT_SQUARES = 4
#: Offsets whose textured pairs are fewer than this share of the best-covered
#: offset's, or than ALIGNMENT_MIN_PAIRS, are not scored: a mean over few pairs is
#: noise. Fewer than ALIGNMENT_MIN_OFFSETS scored offsets, and the check cannot judge.
ALIGNMENT_MIN_COVER = 0.5
ALIGNMENT_MIN_PAIRS = 256
ALIGNMENT_MIN_OFFSETS = 50
#: The alignment check's precision is never taken as better than this, pixels: what
#: its sub-pixel fit leaves of bias on sharp peaks.
ALIGNMENT_MIN_PRECISION_PX = 0.1
#: Lags over which each date's orientations are taken as correlated with their
#: neighbours' when the chance spread of the scores is estimated, pixels.
ALIGNMENT_LAG_PX = 12
#: Sub-pixel precision of the upsampled cross-correlation peak (1/100 px).
UPSAMPLE = 100
METHODS = ("global", "local", "none")
#: A shift is measured on a central chip of at most this side (a larger grid's shift
#: would cost more and gain nothing); "local" co-registration of a larger grid on a
#: lattice of LOCAL_CHIPS_SIDE squared chips of LOCAL_CHIP_PX spread over it, with
#: LOCAL_POINTS_SIDE squared tie points in each.
COREG_CHIP_PX = 2048
LOCAL_CHIP_PX = 768
LOCAL_CHIPS_SIDE = 3
LOCAL_POINTS_SIDE = 3


@dataclass(frozen=True)
class AlignmentCheck:
    """Where the dates' common structure agrees best, when an estimate was unreliable.

    Attributes
    ----------
    offset_px : (int, int)
        Whole-pixel ``(dx, dy)`` (design.md's sign) at which the orientations of the
        dates' gradients agree best.
    z : float
        Height of that peak in robust standard deviations of the other offsets' scores.
    search_px : int
        Largest offset searched, pixels (each way, in x and y).
    z_needed : float
        The height chance reaches with probability :data:`ALIGNMENT_FALSE_ALARM` over
        the offsets searched.
    shift_px : (float, float)
        The offset refined to a fraction of a pixel (a Gaussian through the peak and
        its neighbours on each axis).
    precision_px : float
        Standard error of ``shift_px`` from the peak's curvature against the other
        offsets' spread, per axis at least :data:`ALIGNMENT_MIN_PRECISION_PX` and at
        most a pixel, combined.
    """

    offset_px: tuple[int, int]
    z: float
    search_px: int
    z_needed: float
    shift_px: tuple[float, float]
    precision_px: float

    @property
    def measured(self) -> bool:
        """Whether the peak is common structure, not chance."""
        return self.z >= self.z_needed

    @property
    def misregistration_px(self) -> float | None:
        """How far apart the dates may lie, pixels: the refined shift's length plus its
        precision; None when nothing common was found."""
        if not self.measured:
            return None
        return float(np.hypot(*self.shift_px)) + self.precision_px

    def summary(self) -> dict[str, Any]:
        return {"measured": self.measured, "offset_px": list(self.offset_px),
                "shift_px": [round(v, 3) for v in self.shift_px],
                "precision_px": round(self.precision_px, 3), "z": round(self.z, 2),
                "z_needed": round(self.z_needed, 2), "search_px": self.search_px}


@dataclass
class Registration:
    """Result of co-registration.

    Attributes
    ----------
    method : str
        ``"global"``, ``"local"`` or ``"none"``.
    shift_px : tuple of float
        ``(dx, dy)`` in analysis-grid pixels (for ``local``, the shift at the centre).
    reliability : float or None
        0 (no trust) to 1, from the agreement between windows and their peak
        strength; None when no registration was attempted.
    n_windows : int
        Windows that agreed with the consensus (tie points kept, in local mode).
    correction : affine.Affine
        Pixel-space map for :func:`changedet.raster.warp_scene`; the identity when
        nothing was applied.
    residual_rms_px : float or None
        RMS distance (px) of the kept windows' shifts from the fitted model (see
        :attr:`misregistration_px` for what is left once the correction is applied, or
        not).
    low_reliability : bool
        True when the estimate was judged unreliable and was therefore not applied.
    windows : list of dict
        Per window: ``centre`` (col, row), ``shift`` (dx, dy), ``peak``, ``used``,
        ``size`` (px), and for the global estimate ``information``, the directions the
        window fixes (:func:`_shift_information`).
    n_windows_total : int
        Windows measured (with enough valid data).
    alignment : AlignmentCheck or None
        For an estimate judged unreliable, what the dates' common structure says of
        their alignment (:func:`check_alignment`); None when not checked.
    """

    method: str
    shift_px: tuple[float, float]
    reliability: float | None
    n_windows: int
    correction: Affine = field(default_factory=Affine.identity)
    residual_rms_px: float | None = None
    low_reliability: bool = False
    windows: list[dict[str, Any]] = field(default_factory=list)
    n_windows_total: int = 0
    alignment: AlignmentCheck | None = None

    @property
    def applied(self) -> bool:
        """Whether the correction differs from the identity."""
        return not self.correction.almost_equals(Affine.identity(), precision=1e-12)

    @property
    def misregistration_px(self) -> float | None:
        """Misregistration left in the pair the detector sees, pixels.

        The residual RMS of the fit when its correction was applied (or found no shift
        to apply); 0 when no registration was asked for. An estimate judged unreliable
        and not applied says little of where the dates lie (on a scene most of which
        changed, the changed windows make its shift): what its :attr:`alignment` check
        measured, or None when the dates share no structure to measure it by; without
        a check, the estimated shift plus its residual.
        """
        rms = self.residual_rms_px or 0.0
        if self.low_reliability and not self.applied:
            if self.alignment is not None:
                return self.alignment.misregistration_px
            return float(np.hypot(*self.shift_px)) + rms
        return rms

    @property
    def range_residual_px(self) -> float:
        """What widens each outline's uncertainty band, pixels: :attr:`misregistration_px`,
        or 0 when the dates share no structure to measure it by, since there is then
        none for a misregistration to misplace onto a new building's outline."""
        measured = self.misregistration_px
        return 0.0 if measured is None else measured

    def summary(self, grid: Grid) -> dict[str, Any]:
        """The ``coregistration`` block of ``summary.json``.

        ``shift_m`` is ``[east, north]`` in metres on the ground: the grid's own units
        scaled as ``summary.json`` ``pixel_size_m`` is (a Web-Mercator metre is
        1/cos(latitude) ground metres, a foot-based grid's unit 0.3048 m).
        """
        from .measure import ground_metres_per_unit

        dx, dy = self.shift_px
        t = grid.transform
        to_ground = ground_metres_per_unit(grid)
        east = (dx * t.a + dy * t.b) * to_ground
        north = (dx * t.d + dy * t.e) * to_ground
        out: dict[str, Any] = {
            "shift_px": [round(dx, 4), round(dy, 4)],
            "shift_m": [round(east, 4), round(north, 4)],
            "reliability": None if self.reliability is None else round(self.reliability, 3),
            "method": self.method,
            "n_windows": self.n_windows,
            "n_windows_total": self.n_windows_total,
            "residual_rms_px": None if self.residual_rms_px is None
            else round(self.residual_rms_px, 4),
            "misregistration_px": None if self.misregistration_px is None
            else round(self.misregistration_px, 4),
            "low_reliability": self.low_reliability,
            "applied": self.applied,
        }
        if self.alignment is not None:
            out["alignment"] = self.alignment.summary()
        if self.method == "local" and self.applied:
            c = self.correction
            out["affine_px"] = [round(v, 8) for v in (c.a, c.b, c.c, c.d, c.e, c.f)]
        return out


def _luminance(image: np.ndarray) -> np.ndarray:
    """(H, W) float32 mean of the bands of a (B, H, W) or (H, W) array."""
    if image.ndim == 2:
        return image.astype(np.float32, copy=False)
    return image.mean(axis=0, dtype=np.float32)


def _structure(lum: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Gradient magnitude, normalised to unit median inside ``valid``.

    Edges keep their place whatever the gain, offset or gamma of a date, which makes
    this a far better thing to correlate than brightness.
    """
    gx = ndimage.sobel(lum, axis=1, output=np.float32)
    gy = ndimage.sobel(lum, axis=0, output=np.float32)
    mag = np.hypot(gx, gy)
    # Pixels next to invalid data carry a fake edge.
    mag[~ndimage.binary_erosion(valid, iterations=2)] = 0.0
    scale = float(np.median(mag[mag > 0])) if np.any(mag > 0) else 1.0
    return mag / max(scale, 1e-12)


def _peak_height(ref: np.ndarray, mov: np.ndarray) -> float:
    """Height of the phase-correlation peak (1 for identical images, ~5/N for noise)."""
    f1 = sfft.rfft2(ref, workers=2)
    f2 = sfft.rfft2(mov, workers=2)
    cross = f1 * np.conj(f2)
    cross /= np.maximum(np.abs(cross), 1e-12)
    corr = sfft.irfft2(cross, s=ref.shape, workers=2)
    return float(corr.max())


def _window_shift(ref: np.ndarray, mov: np.ndarray) -> tuple[float, float, float]:
    """(dx, dy, peak) of ``mov`` relative to ``ref`` (both (N, N) structure images)."""
    taper = np.outer(np.hanning(ref.shape[0]), np.hanning(ref.shape[1])).astype(np.float32)
    a = (ref - ref.mean()) * taper
    b = (mov - mov.mean()) * taper
    # Plain cross-correlation of structure images: on synthetic pairs with moved
    # shadows it was less biased than pure phase correlation (mean error 0.03 px
    # against 0.05 px); the phase-normalised peak is still used for reliability.
    with warnings.catch_warnings():
        # A flat chip (no structure) makes skimage warn about its error estimate; the
        # peak height below already marks such a shift unreliable, and the user sees
        # that instead of a library's warning.
        warnings.simplefilter("ignore", UserWarning)
        shift, _, _ = phase_cross_correlation(a, b, upsample_factor=UPSAMPLE,
                                              normalization=None)
    # skimage gives the shift that moves `mov` onto `ref`: the feature displacement
    # from before to after is its negative.
    return -float(shift[1]), -float(shift[0]), _peak_height(a, b)


def _shift_information(ref: np.ndarray) -> np.ndarray:
    """How well correlating a window fixes each direction of its shift: the structure
    tensor of the tapered image it correlates, ``[[xx, xy], [xy, yy]]``, scaled to unit
    trace (0.5 and 0.5 for texture alike in every direction; 1 and 0 for straight
    parallel edges, which fix the shift across them only)."""
    taper = np.outer(np.hanning(ref.shape[0]), np.hanning(ref.shape[1])).astype(np.float32)
    gy, gx = np.gradient((ref - ref.mean()) * taper)
    xx, yy, xy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
    trace = xx + yy
    if not (trace > 0 and math.isfinite(trace)):
        return np.eye(2) / 2.0
    return np.array([[xx, xy], [xy, yy]]) / trace


#: Ratios of a window's structure-tensor eigenvalues (weaker over stronger) below which
#: its shift along its edges counts for nothing, and from which it counts fully
#: (:func:`_fixed_directions`).
ALONG_EDGES_ONLY = 0.04
ALONG_EDGES_SOME = 0.1


def _fixed_directions(windows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Each window's information on its shift, and the same over its largest
    eigenvalue (to measure a distance in pixels in the directions it fixes).

    Along straight edges a window's shift is not noisy but the coarse guess: where the
    tensor's weaker eigenvalue is under :data:`ALONG_EDGES_ONLY` of the stronger (a
    correlation peak over five times longer than wide), that direction counts for
    nothing, and fully again from :data:`ALONG_EDGES_SOME` (a peak three times longer
    than wide: fields with a few houses), linearly between.

    Returns
    -------
    info, across : (N, 2, 2) ndarray
    """
    info = np.array([w.get("information", np.eye(2) / 2.0) for w in windows], dtype=float)
    values, vectors = np.linalg.eigh(info)
    strong = np.maximum(values[:, 1], 1e-12)
    weak = np.clip(values[:, 0], 0.0, None)
    weak *= np.clip((weak / strong - ALONG_EDGES_ONLY) / (ALONG_EDGES_SOME - ALONG_EDGES_ONLY),
                    0.0, 1.0)
    info = np.einsum("nik,nk,njk->nij", vectors, np.stack([weak, strong], axis=1), vectors)
    return info, info / strong[:, None, None]


def _coarse_shift(before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> tuple[int, int]:
    """Whole-pixel (dx, dy) from decimated images; handles shifts up to ~10% of size."""
    h, w = valid.shape
    factor = max(1, int(math.ceil(max(h, w) / 512)))
    if factor == 1 and max(h, w) <= 512:
        small_b, small_a, small_v = before, after, valid
    else:
        hh, ww = (h // factor) * factor, (w // factor) * factor

        def down(x: np.ndarray) -> np.ndarray:
            return x[:hh, :ww].reshape(hh // factor, factor, ww // factor, factor).mean(
                axis=(1, 3), dtype=np.float32)

        small_v = down(valid.astype(np.float32)) > 0.999
        small_b, small_a = down(before), down(after)
    sb = _structure(small_b, small_v)
    sa = _structure(small_a, small_v)
    dx, dy, _ = _window_shift(sb, sa)
    return int(round(dx * factor)), int(round(dy * factor))


def _window_size(shape: tuple[int, int]) -> int:
    side = min(shape)
    size = 256
    while size > 64 and size * 2.5 > side:
        size //= 2
    return size


def _measure_windows(
    before: np.ndarray, after: np.ndarray, valid: np.ndarray, coarse: tuple[int, int],
    n_side: int, size: int | None = None,
) -> list[dict[str, Any]]:
    """Correlate ``n_side`` x ``n_side`` windows of ``size`` px; shifts include the coarse one."""
    h, w = valid.shape
    size = size or _window_size((h, w))
    pad = 3  # room for the Sobel kernel
    cdx, cdy = coarse
    # Window origins such that the after window (displaced by the coarse shift) fits.
    r_lo, r_hi = max(pad, pad - cdy), min(h - size - pad, h - size - pad - cdy)
    c_lo, c_hi = max(pad, pad - cdx), min(w - size - pad, w - size - pad - cdx)
    if r_hi < r_lo or c_hi < c_lo:
        return []
    rows = np.unique(np.linspace(r_lo, r_hi, n_side).round().astype(int))
    cols = np.unique(np.linspace(c_lo, c_hi, n_side).round().astype(int))
    out = []
    for r0 in rows:
        for c0 in cols:
            rb = slice(r0 - pad, r0 + size + pad)
            cb = slice(c0 - pad, c0 + size + pad)
            ra = slice(r0 - pad + cdy, r0 + size + pad + cdy)
            ca = slice(c0 - pad + cdx, c0 + size + pad + cdx)
            vb = valid[rb, cb]
            va = valid[ra, ca]
            if vb.mean() < 0.9 or va.mean() < 0.9:
                continue
            sb = _structure(_luminance(before[..., rb, cb]), vb)[pad:-pad, pad:-pad]
            sa = _structure(_luminance(after[..., ra, ca]), va)[pad:-pad, pad:-pad]
            if not np.isfinite(sb).all() or sb.std() < 1e-6 or sa.std() < 1e-6:
                continue
            dx, dy, peak = _window_shift(sb, sa)
            out.append({
                "centre": (float(c0 + size / 2), float(r0 + size / 2)),
                "shift": (dx + cdx, dy + cdy),
                "peak": peak,
                "size": size,
                "used": False,
                "information": _shift_information(sb).tolist(),
            })
    return out


def _reliability(peaks: np.ndarray, n_inliers: int, n_total: int, spread_px: float,
                 size: int, constraining: float | None = None) -> float:
    """Trust in the consensus, 0 to 1.

    Combines the share of windows that agree, how far their correlation peaks rise
    above the noise level of a window (about 5 / size for unrelated images), how
    tightly they agree, and how many of them fix the shift in the direction they fix
    least (``constraining``, in windows of texture alike in every direction; by
    default ``n_inliers``).
    """
    if n_total == 0 or n_inliers < 3:
        return 0.0
    n_fixing = float(n_inliers if constraining is None else constraining)
    if n_fixing <= 0:
        return 0.0
    agree = n_inliers / n_total
    noise_floor = 5.0 / size
    strength = float(np.clip((np.median(peaks) / noise_floor - 1.2) / 1.5, 0.0, 1.0))
    # What matters is the standard error of the consensus, not one window's scatter.
    precision = math.exp(-((spread_px / math.sqrt(n_fixing) / 0.15) ** 2))
    support = min(1.0, n_fixing / 6.0)
    return float(np.clip(agree, 0, 1) ** 0.5 * strength * precision * support)


def estimate_shift(before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> Registration:
    """Global sub-pixel translation of the after image relative to the before image.

    Parameters
    ----------
    before, after : (H, W) or (B, H, W) ndarray
        On the same analysis grid.
    valid : (H, W) ndarray of bool
        Pixels valid in both.

    Returns
    -------
    Registration
        ``method="global"``; when reliability is below :data:`MIN_RELIABILITY` the
        correction is the identity and ``low_reliability`` is set.
    """
    lum_b, lum_a = _luminance(before), _luminance(after)
    coarse = _coarse_shift(lum_b, lum_a, valid)
    reg = _consensus(_measure_windows(lum_b, lum_a, valid, coarse, n_side=5))
    if reg.reliability is not None and reg.reliability >= MIN_RELIABILITY:
        return reg
    # Where small windows are dominated by clutter (debris, foliage, new roofs), fewer
    # and larger windows average it out and let long edges such as roads decide.
    h, w = valid.shape
    large = min(1024, int(min(h, w) * 0.6) // 16 * 16)
    if large > _window_size((h, w)):
        bigger = _consensus(_measure_windows(lum_b, lum_a, valid, coarse, n_side=3,
                                             size=large))
        if (bigger.reliability or 0.0) > (reg.reliability or 0.0):
            reg = bigger
    if (reg.reliability or 0.0) < MIN_RELIABILITY:
        # Last resort: the whole overlap as one window. Its shift is the most precise
        # one available on such scenes; its reliability comes from how well the four
        # halves of the overlap agree with it.
        whole = _whole_overlap(lum_b, lum_a, valid, coarse)
        if whole is not None:
            reg = whole
    return check_unreliable(_guard(reg), before, after, valid)


def _orientations(image: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit double-angle orientation of each textured pixel's gradient, and the
    textured pixels.

    The bands' gradients are summed as a structure tensor, so that a change of
    radiometry monotone in each band (whatever its sense) keeps each orientation.
    A pixel is textured where the gradient energy is above the date's median over
    its valid pixels (those beyond the filter's reach of nodata: nodata's edge is no
    structure).

    Returns
    -------
    orientation : (H, W) ndarray of complex64
        ``exp(2i theta)`` on textured pixels, 0 elsewhere.
    textured : (H, W) ndarray of bool
    """
    jxx = np.zeros(valid.shape, np.float32)
    jyy = np.zeros(valid.shape, np.float32)
    jxy = np.zeros(valid.shape, np.float32)
    for band in image.reshape(-1, *valid.shape):
        band = np.where(valid, band, 0).astype(np.float32, copy=False)
        gx = ndimage.gaussian_filter(band, 1.0, order=(0, 1))
        gy = ndimage.gaussian_filter(band, 1.0, order=(1, 0))
        jxx += gx * gx
        jyy += gy * gy
        jxy += gx * gy
    energy = jxx + jyy
    inner = ndimage.binary_erosion(valid, iterations=5)  # the derivatives reach 4 px
    textured = inner & (energy > np.median(energy[inner])) if inner.any() else inner
    double = ((jxx - jyy) + 2j * jxy).astype(np.complex64)
    length = np.abs(double)
    # An isotropic tensor (bands whose gradients cross at right angles) has none.
    textured &= length > 0
    orientation = np.zeros(valid.shape, np.complex64)
    np.divide(double, length, out=orientation, where=textured)
    return orientation, textured


def _alignment_squares(shape: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Up to :data:`ALIGNMENT_SQUARES` squares of :data:`ALIGNMENT_CHIP_PX` spread over
    a grid of ``shape``, more of them along its longer side (one, the grid itself, when
    it is no larger)."""
    h, w = shape
    side = ALIGNMENT_CHIP_PX
    need_r, need_c = max(1, math.ceil(h / side)), max(1, math.ceil(w / side))
    n_r = min(need_r, max(1, round(math.sqrt(ALIGNMENT_SQUARES * h / w))))
    n_c = min(need_c, max(1, ALIGNMENT_SQUARES // n_r))
    n_r = min(need_r, max(1, ALIGNMENT_SQUARES // n_c))
    rows = np.unique(np.linspace(0, max(0, h - side), n_r).round().astype(int))
    cols = np.unique(np.linspace(0, max(0, w - side), n_c).round().astype(int))
    return [(slice(r, r + side), slice(c, c + side)) for r in rows for c in cols]


def _orientation_autocorrelation(spectrum: np.ndarray, textured_spectrum: np.ndarray,
                                  size: tuple[int, int]) -> np.ndarray:
    """Normalised autocorrelation of an orientation field over lags up to
    :data:`ALIGNMENT_LAG_PX` each way ((2L + 1, 2L + 1) complex, 1 at lag 0), from the
    field's zero-padded ``fft2`` and its textured mask's ``rfft2`` (both of ``size``,
    as the votes and pairs of :func:`check_alignment` use them)."""
    lags = np.r_[-ALIGNMENT_LAG_PX:ALIGNMENT_LAG_PX + 1]
    auto = sfft.ifft2(np.conj(spectrum) * spectrum, workers=2)[np.ix_(lags, lags)]
    count = sfft.irfft2(np.abs(textured_spectrum) ** 2, size, workers=2)[np.ix_(lags, lags)]
    auto = auto / np.maximum(np.rint(count), 1.0)
    centre = auto[ALIGNMENT_LAG_PX, ALIGNMENT_LAG_PX].real
    return auto / centre if centre > 0 else np.zeros_like(auto)


def _peak_vertex(left: float, peak: float, right: float) -> tuple[float, float] | None:
    """Sub-pixel offset of a peak from its middle sample (a Gaussian through the three
    scores when all are positive, else a parabola), and the parabola's curvature (< 0);
    None when the peak is flat."""
    curvature = left - 2.0 * peak + right
    if not (np.isfinite(curvature) and curvature < 0):
        return None
    if min(left, peak, right) > 0:
        # A correlation peak is closer to a Gaussian than to a parabola, which pulls
        # the vertex towards the whole pixel.
        ll, lp, lr = math.log(left), math.log(peak), math.log(right)
        if ll - 2.0 * lp + lr < 0:
            return float(np.clip(0.5 * (ll - lr) / (ll - 2.0 * lp + lr), -0.5, 0.5)), curvature
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5)), curvature


def check_alignment(before: np.ndarray, after: np.ndarray, valid: np.ndarray
                    ) -> AlignmentCheck | None:
    """Find the offset at which the dates' structure agrees best, and how clearly.

    Orientation correlation: each textured pixel votes with the orientation of its
    gradient (:func:`_orientations`, less the date's mean orientation, so that a
    texture's prevailing direction does not favour the offsets with most pairs),
    whatever its contrast, so roads and roofs that both dates hold add up at their
    offset, while what changed adds only noise at every offset. It needs no unchanged
    majority, which is why an estimate judged unreliable (on scenes most of which
    changed) is checked by it. Each offset's score is its votes over their standard
    deviation by chance (from the number of pairs and each date's own orientation
    autocorrelation, so a standard normal variable); the best offset's height is taken
    against the others' spread, never below that unit. Offsets up to a tenth of the side
    of the squares read (at least 8 px, at most 102) are searched, on up to
    :data:`ALIGNMENT_SQUARES` squares of :data:`ALIGNMENT_CHIP_PX` spread over the pair,
    whose votes are pooled.

    Parameters
    ----------
    before, after : (B, H, W) or (H, W) ndarray
        On one grid.
    valid : (H, W) ndarray of bool
        Pixels valid in both.

    Returns
    -------
    AlignmentCheck or None
        None when the check cannot judge: too few textured pixels in common at half or
        more of the offsets searched, or shared structure found on the edge of the
        search or next to offsets it could not score (the dates may lie further
        apart).
    """
    squares = _alignment_squares(valid.shape)
    h, w = valid[squares[0]].shape
    search = min(max(8, int(0.1 * min(h, w))), (min(h, w) - 1) // 2)
    if search < 2:
        return None
    offsets = np.r_[-search:search + 1]
    votes = np.zeros((offsets.size, offsets.size))
    pairs = np.zeros((offsets.size, offsets.size))
    chance = np.zeros((offsets.size, offsets.size))  # variance of the votes by chance
    for rows, cols in squares:
        chip_b, chip_a = before[..., rows, cols], after[..., rows, cols]
        # Only the squares read are looked at for NaN or infinity, not the whole pair.
        part = valid[rows, cols] & np.isfinite(chip_b).all(axis=tuple(range(chip_b.ndim - 2))) \
            & np.isfinite(chip_a).all(axis=tuple(range(chip_a.ndim - 2)))
        ub, tb = _orientations(chip_b, part)
        ua, ta = _orientations(chip_a, part)
        if tb.sum() < 2 or ta.sum() < 2:
            continue
        ub = np.where(tb, ub - ub[tb].mean(), 0).astype(np.complex64)
        ua = np.where(ta, ua - ua[ta].mean(), 0).astype(np.complex64)
        size = (2 * part.shape[0], 2 * part.shape[1])  # zero-padded: no wrap-around
        # Each spectrum serves the votes (or pairs) and the date's autocorrelation.
        fb, fa = sfft.fft2(ub, size, workers=2), sfft.fft2(ua, size, workers=2)
        rb = sfft.rfft2(tb.astype(np.float32), size, workers=2)
        ra = sfft.rfft2(ta.astype(np.float32), size, workers=2)
        # Entry [dy, dx] (negative offsets wrapped) sums conj(before(x)) * after(x + d).
        v = sfft.ifft2(np.conj(fb) * fa, workers=2).real
        n = np.rint(sfft.irfft2(np.conj(rb) * ra, size, workers=2)[np.ix_(offsets, offsets)])
        # By chance each vote has variance |ub|^2 |ua|^2 / 2 on average, and neighbouring
        # votes are correlated as the dates' orientations are with their neighbours'.
        related = float(np.sum((_orientation_autocorrelation(fb, rb, size)
                                * np.conj(_orientation_autocorrelation(fa, ra, size))).real))
        power = float(np.mean(np.abs(ub[tb]) ** 2) * np.mean(np.abs(ua[ta]) ** 2))
        votes += v[np.ix_(offsets, offsets)]
        pairs += n
        chance += 0.5 * n * power * max(related, 1.0)
    scored = pairs >= max(ALIGNMENT_MIN_COVER * pairs.max(), ALIGNMENT_MIN_PAIRS)
    # Where most offsets cannot be scored (a narrow band of data), the dates' offset
    # may well lie among those.
    if scored.sum() < max(ALIGNMENT_MIN_OFFSETS, 0.5 * scored.size):
        return None
    score = np.where(scored, votes / np.sqrt(np.maximum(chance, 1e-12)), -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    on_edge = min(iy, ix) == 0 or max(iy, ix) == offsets.size - 1 \
        or not scored[max(0, iy - 1):iy + 2, max(0, ix - 1):ix + 2].all()
    background = scored.copy()
    background[max(0, iy - 2):iy + 3, max(0, ix - 2):ix + 3] = False
    rest = score[background]
    if rest.size < ALIGNMENT_MIN_OFFSETS:
        return None
    centre = float(np.median(rest))
    # The spread of the other offsets' scores, but never below their unit: correlated
    # neighbours make the median deviation understate what chance gives.
    spread = max(1.4826 * float(np.median(np.abs(rest - centre))), 1.0)
    z = (float(score[iy, ix]) - centre) / spread
    z_needed = float(stats.norm.isf(ALIGNMENT_FALSE_ALARM / rest.size))
    if on_edge:
        if z >= z_needed:
            return None  # shared structure, perhaps further off than the search reaches
        # Chance's best landed on the edge: no more a sign of anything than elsewhere.
        return AlignmentCheck((int(offsets[ix]), int(offsets[iy])), z, search, z_needed,
                              (float(offsets[ix]), float(offsets[iy])), math.sqrt(0.5))
    along_x = _peak_vertex(score[iy, ix - 1], score[iy, ix], score[iy, ix + 1])
    along_y = _peak_vertex(score[iy - 1, ix], score[iy, ix], score[iy + 1, ix])
    if along_x is None or along_y is None:
        return None
    # The vertex moves by about sqrt(2) times the neighbours' noise over the curvature
    # (more than that on sharp peaks, whose fit keeps a bias: a tenth of a pixel at
    # least); a peak flatter than that places its offset to a pixel at best.
    per_axis = [min(max(math.sqrt(0.5) * spread / -c, ALIGNMENT_MIN_PRECISION_PX), 1.0)
                for _, c in (along_x, along_y)]
    return AlignmentCheck((int(offsets[ix]), int(offsets[iy])), z, search, z_needed,
                          (float(offsets[ix] + along_x[0]), float(offsets[iy] + along_y[0])),
                          math.hypot(*per_axis))


def check_unreliable(reg: Registration, before: np.ndarray, after: np.ndarray,
                     valid: np.ndarray) -> Registration:
    """``reg`` with its :func:`check_alignment` when it was judged unreliable and not
    applied (``reg`` itself otherwise, or when the check cannot judge); warns when the
    dates share nothing to align."""
    if not (reg.low_reliability and not reg.applied):
        return reg
    check = check_alignment(before, after, valid)
    if check is None:
        logger.info("co-registration check: too little in common to judge; the "
                    "unreliable estimate's shift and spread stand")
        return reg
    if check.measured:
        logger.info("co-registration check: the dates' structure agrees best at dx=%.2f "
                    "dy=%.2f px (+/- %.2f; %.1f standard deviations above the other "
                    "offsets, %.1f needed): misregistration %.2f px", *check.shift_px,
                    check.precision_px, check.z, check.z_needed, check.misregistration_px)
    else:
        warn_analyst("the dates share no structure within %d px of each other by which to "
                     "measure their alignment: if they lie further apart, nothing here "
                     "can tell; the area ranges of detect do not allow for "
                     "misregistration, which has nothing the dates share to misplace; "
                     "check the alignment by eye", check.search_px)
    return replace(reg, alignment=check)


def _whole_overlap(lum_b: np.ndarray, lum_a: np.ndarray, valid: np.ndarray,
                   coarse: tuple[int, int]) -> Registration | None:
    h, w = valid.shape
    cdx, cdy = coarse
    rb = slice(max(0, -cdy), min(h, h - cdy))
    cb = slice(max(0, -cdx), min(w, w - cdx))
    ra = slice(rb.start + cdy, rb.stop + cdy)
    ca = slice(cb.start + cdx, cb.stop + cdx)
    if rb.stop - rb.start < 64 or cb.stop - cb.start < 64:
        return None
    both = valid[rb, cb] & valid[ra, ca]
    sb = _structure(lum_b[rb, cb], both)
    sa = _structure(lum_a[ra, ca], both)
    hh, ww = both.shape
    parts = [(slice(0, hh), slice(0, ww)), (slice(0, hh), slice(0, ww // 2)),
             (slice(0, hh), slice(ww // 2, ww)), (slice(0, hh // 2), slice(0, ww)),
             (slice(hh // 2, hh), slice(0, ww))]
    found = []
    for r, c in parts:
        dx, dy, peak = _window_shift(sb[r, c], sa[r, c])
        found.append({"centre": ((c.start + c.stop) / 2 + cb.start, (r.start + r.stop) / 2 + rb.start),
                      "shift": (dx + cdx, dy + cdy), "peak": peak, "size": min(hh, ww),
                      "used": True})
    shifts = np.array([f["shift"] for f in found])
    dx, dy = shifts[0]
    spread = float(np.sqrt(np.mean(np.sum((shifts[1:] - shifts[0]) ** 2, axis=1))))
    rel = _reliability(np.array([found[0]["peak"]]) * 4, 4, 4, spread * 2, min(hh, ww))
    return Registration("global", (float(dx), float(dy)), rel, 1,
                        Affine.translation(float(dx), float(dy)), spread, False, found, 5)


def _consensus(windows: list[dict[str, Any]]) -> Registration:
    """Robust weighted mean of window shifts, each counted in the directions its
    window fixes, with its reliability.

    A window that sees only straight parallel edges (fields, a road, a wall) fixes
    the shift across them; along them its correlation peak is a ridge, and its shift
    there is whatever the coarse whole-pixel guess was, the same in every such
    window. Taken as points, those windows agreed with one another and outvoted the
    windows of texture, whose shift was right (a 1024 px scene of fields: 0.8 px off
    at reliability 0.78). Each window's shift is therefore a constraint weighted by
    its structure tensor (:func:`_shift_information`): the consensus is their
    weighted least-squares solution, a window's distance to it is measured in the
    directions it fixes, and the reliability counts the windows that fix the
    direction fixed least.
    """
    if not windows:
        return Registration("global", (0.0, 0.0), 0.0, 0, Affine.identity(), None, True,
                            windows, 0)
    shifts = np.array([w["shift"] for w in windows])
    peaks = np.array([w["peak"] for w in windows])
    # Distances in pixels along each window's fixed directions (1 across an edge, 0
    # along it).
    info, across = _fixed_directions(windows)

    def distances(centre: np.ndarray) -> np.ndarray:
        r = shifts - centre
        return np.sqrt(np.maximum(np.einsum("ni,nij,nj->n", r, across, r), 0.0))

    def solve(keep: np.ndarray) -> np.ndarray:
        weights = info[keep] * peaks[keep][:, None, None]
        lhs = weights.sum(axis=0)
        rhs = np.einsum("nij,nj->i", weights, shifts[keep])
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0]

    # A robust start: of the windows' own shifts and their median, the one the others
    # agree with best (each window's disagreement capped at a pixel).
    candidates = np.vstack([shifts, np.median(shifts, axis=0)])
    costs = [np.minimum(distances(c), 1.0).sum() for c in candidates]
    centre = candidates[int(np.argmin(costs))]
    keep = np.ones(len(windows), bool)
    for _ in range(3):
        d = distances(centre)
        keep = d <= max(0.3, 3.0 * 1.4826 * float(np.median(d)))
        if keep.sum() < 2:
            break
        centre = solve(keep)
    for w, k in zip(windows, keep):
        w["used"] = bool(k)
    dx, dy = (float(v) for v in centre)
    rms = float(np.sqrt(np.mean(distances(centre)[keep] ** 2))) if keep.any() else 0.0
    # In windows of texture alike in every direction, each of which holds 0.5 of
    # information in each direction.
    fixing = 2.0 * float(np.linalg.eigvalsh(info[keep].sum(axis=0))[0]) if keep.any() else 0.0
    rel = _reliability(peaks[keep], int(keep.sum()), len(windows), rms, windows[0]["size"],
                       constraining=fixing)
    return Registration("global", (dx, dy), rel, int(keep.sum()),
                        Affine.translation(dx, dy), rms, False, windows, len(windows))


def estimate_local(before: np.ndarray, after: np.ndarray, valid: np.ndarray) -> Registration:
    """Affine co-registration from a grid of tie points with RANSAC.

    For pairs with a small rotation, scale difference or smooth warp. Tie points are
    windowed phase-correlation shifts on a 7 x 7 grid; an affine map from before
    pixel coordinates to after pixel coordinates is fitted robustly.

    Returns
    -------
    Registration
        ``method="local"``; ``correction`` is the fitted pixel-space affine,
        ``shift_px`` its displacement at the centre of the grid and
        ``residual_rms_px`` the RMS residual of the kept tie points.
    """
    reg = fit_local(tie_points(before, after, valid, n_side=7), valid.shape)
    if _no_fit(reg):
        glob = estimate_shift(before, after, valid)
        if not glob.low_reliability:
            warn_analyst(_LOCAL_FELL_BACK, *glob.shift_px)
            return glob
        warn_analyst(_LOCAL_FAILED)
    return check_unreliable(reg, before, after, valid)


#: Said when "local" found no affine to fit (too few tie points, none consistent).
_LOCAL_FELL_BACK = ("local co-registration found no consistent affine among its tie points; "
                    "the global shift is applied instead (dx=%.2f dy=%.2f px)")
_LOCAL_FAILED = ("co-registration failed (no consistent affine among the tie points, and "
                 "no reliable global shift); the after scene is used as aligned")


def _no_fit(reg: Registration) -> bool:
    """Whether :func:`fit_local` could fit no affine at all (not merely an unreliable one)."""
    return reg.method == "local" and reg.low_reliability and reg.n_windows == 0


def tie_points(before: np.ndarray, after: np.ndarray, valid: np.ndarray,
               n_side: int) -> list[dict[str, Any]]:
    """Sub-pixel shifts of ``n_side`` x ``n_side`` windows spread over a pair.

    Returns
    -------
    list of dict
        One per window that could be measured: ``centre`` (col, row) in pixels,
        ``shift`` (dx, dy) of the after scene in pixels, correlation ``peak``,
        window ``size`` and ``used`` (set by the fit).
    """
    lum_b, lum_a = _luminance(before), _luminance(after)
    coarse = _coarse_shift(lum_b, lum_a, valid)
    return _measure_windows(lum_b, lum_a, valid, coarse, n_side=n_side)


def fit_local(windows: list[dict[str, Any]], shape: tuple[int, int]) -> Registration:
    """Affine co-registration fitted with RANSAC to tie points on a grid of ``shape``.

    Parameters
    ----------
    windows : list of dict
        From :func:`tie_points`, with centres in the grid's pixels (tie points of
        several chips of one grid may be pooled).
    shape : (int, int)
        Height and width of the grid; the reported shift is the one at its centre.
    """
    if len(windows) < 6:
        return _unreliable("local", windows, "fewer than 6 tie points")
    src = np.array([w["centre"] for w in windows])
    dst = src + np.array([w["shift"] for w in windows])
    # As in the global consensus (_consensus): a tie point counts in the directions its
    # window fixes (along straight edges its shift is the coarse guess's).
    info, across = _fixed_directions(windows)
    origin, scale = src.mean(axis=0), max(float(np.ptp(src, axis=0).max()), 1.0)
    design = np.zeros((len(windows), 2, 6))
    design[:, 0, :2] = design[:, 1, 3:5] = (src - origin) / scale
    design[:, 0, 2] = design[:, 1, 5] = 1.0

    def fit(chosen: np.ndarray) -> np.ndarray | None:
        lhs = np.einsum("kai,kab,kbj->ij", design[chosen], across[chosen], design[chosen])
        if np.linalg.matrix_rank(lhs, tol=1e-9 * max(np.abs(lhs).max(), 1e-300)) < 6:
            return None
        return np.linalg.solve(lhs, np.einsum("kai,kab,kb->i", design[chosen],
                                              across[chosen], dst[chosen]))

    def distances(params: np.ndarray) -> np.ndarray:
        r = np.einsum("kai,i->ka", design, params) - dst
        return np.sqrt(np.maximum(np.einsum("ka,kab,kb->k", r, across, r), 0.0))

    # RANSAC on triples of tie points (skimage's counts distances in every direction).
    rng = np.random.default_rng(0)
    best: np.ndarray | None = None
    best_score = (0, 0.0)
    for _ in range(500):
        params = fit(rng.choice(len(windows), 3, replace=False))
        if params is None:
            continue
        d = distances(params)
        near = d <= 0.5
        score = (int(near.sum()), -float(d[near].sum()))
        if score > best_score:
            best, best_score = near, score
    if best is None or best.sum() < 6:
        return _unreliable("local", windows, "no consistent affine among tie points")
    inliers = best
    params = None
    for _ in range(2):  # refit on the inliers (least squares), then once more
        params = fit(inliers)
        if params is None:
            return _unreliable("local", windows, "degenerate tie-point geometry")
        if (distances(params) <= 0.5).sum() < 6:
            break
        inliers = distances(params) <= 0.5
    for w, k in zip(windows, inliers):
        w["used"] = bool(k)
    rms = float(np.sqrt(np.mean(distances(params)[inliers] ** 2)))
    # Back from the centred, scaled coordinates of the fit to the grid's pixels.
    a, b, c, d_, e, f = params
    linear = np.array([[a, b], [d_, e]]) / scale
    offset = np.array([c, f]) - linear @ origin
    correction = Affine(linear[0, 0], linear[0, 1], offset[0],
                        linear[1, 0], linear[1, 1], offset[1])
    h, w = shape
    cx, cy = w / 2.0, h / 2.0
    px, py = correction @ (cx, cy)
    peaks = np.array([w_["peak"] for w_ in windows])[inliers]
    fixing = 2.0 * float(np.linalg.eigvalsh(info[inliers].sum(axis=0))[0])
    rel = _reliability(peaks, int(inliers.sum()), len(windows), rms, windows[0]["size"],
                       constraining=fixing)
    reg = Registration("local", (float(px - cx), float(py - cy)), rel, int(inliers.sum()),
                       correction, rms, False, windows, len(windows))
    return _guard(reg)


def _unreliable(method: str, windows: list[dict[str, Any]], why: str) -> Registration:
    # The caller says what is done instead (the global shift, or nothing).
    logger.info("local co-registration: %s", why)
    return Registration(method, (0.0, 0.0), 0.0, 0, Affine.identity(), None, True,
                        windows, len(windows))


def _guard(reg: Registration) -> Registration:
    """Never apply an unreliable correction silently."""
    if reg.reliability is not None and reg.reliability < MIN_RELIABILITY:
        warn_analyst(
            "co-registration is unreliable (reliability %.2f, estimate dx=%.2f dy=%.2f px); "
            "not applied: check the inputs or use --coreg %s", reg.reliability,
            *reg.shift_px, "none" if reg.method == "local" else "none/local")
        return replace(reg, correction=Affine.identity(), low_reliability=True)
    return reg


def register_on_chips(read: Callable[[tuple[int, int, int, int]], tuple[Scene, Scene]],
                      shape: tuple[int, int], method: str = "global") -> Registration:
    """Co-registration of a grid, measured on chips of it.

    The one estimate of the whole-scene and the windowed paths (which cannot hold the
    grid), so that both register a pair alike. A global shift, and the affine of
    "local" on a grid no larger than :data:`COREG_CHIP_PX`, are measured on the
    central chip of at most :data:`COREG_CHIP_PX` pixels a side; "local" on a larger
    grid fits tie points (:data:`LOCAL_POINTS_SIDE` squared on each) from
    :data:`LOCAL_CHIPS_SIDE` squared chips spread from corner to corner.

    Parameters
    ----------
    read : callable
        ``read((row0, col0, row1, col1))``: the (before, after) Scenes on that box of
        the grid, end-exclusive, the after scene resampled without correction.
    shape : (int, int)
        ``(height, width)`` of the grid, pixels.
    method : {"global", "local", "none"}

    Returns
    -------
    Registration
        Its correction in the grid's pixels.
    """
    if method not in METHODS:
        raise ValueError(f"unknown co-registration method {method!r}; use one of {METHODS}")
    if method == "none":
        reg = Registration("none", (0.0, 0.0), None, 0)
    elif method == "local" and max(shape) > COREG_CHIP_PX:
        # An affine measured on a central chip would be extrapolated over the scene,
        # its rotation and scale errors growing with the distance: the tie points
        # come from chips spread over the whole grid instead.
        points = []
        for r0, c0, r1, c1 in lattice_chips(shape, LOCAL_CHIP_PX, LOCAL_CHIPS_SIDE):
            b, a = read((r0, c0, r1, c1))
            for p in tie_points(b.image, a.image, b.valid & a.valid, LOCAL_POINTS_SIDE):
                p["centre"] = (p["centre"][0] + c0, p["centre"][1] + r0)
                points.append(p)
            del b, a
        reg = fit_local(points, shape)
        if _no_fit(reg):
            glob = register_on_chips(read, shape, "global")
            if not glob.low_reliability:
                warn_analyst(_LOCAL_FELL_BACK, *glob.shift_px)
                return glob
            warn_analyst(_LOCAL_FAILED)
        if reg.low_reliability and not reg.applied:
            b, a = read(central_chip(shape, COREG_CHIP_PX))
            reg = check_unreliable(reg, b.image, a.image, b.valid & a.valid)
            del b, a
        logger.info("co-registration (local) from %d tie points on %d chips spread over "
                    "the scene: dx=%.3f dy=%.3f px at its centre, reliability %.2f",
                    len(points), LOCAL_CHIPS_SIDE**2, *reg.shift_px,
                    reg.reliability or 0.0)
    else:
        r0, c0, r1, c1 = central_chip(shape, COREG_CHIP_PX)
        b, a = read((r0, c0, r1, c1))
        # Measured on the chip's valid pixels' bounding box, as the whole-scene path
        # measures on the valid overlap: a nodata collar inside the chip (a scene
        # warped from another CRS) would move the measuring windows and reject those
        # it touches, and the two paths would register the same pair differently.
        box = valid_box(b.valid & a.valid)
        if box is not None and box != (0, 0) + b.valid.shape:
            vr0, vc0, vr1, vc1 = box
            b = crop_scene(b, vr0, vc0, vr1 - vr0, vc1 - vc0)
            a = crop_scene(a, vr0, vc0, vr1 - vr0, vc1 - vc0)
            r0, c0, r1, c1 = r0 + vr0, c0 + vc0, r0 + vr1, c0 + vc1
        estimate = estimate_local if method == "local" else estimate_shift
        reg = estimate(b.image, a.image, b.valid & a.valid)
        del b, a
        # The estimate is in the chip's pixels; the caller needs it, and the
        # windows' centres, on the grid.
        for window in reg.windows:
            window["centre"] = (window["centre"][0] + c0, window["centre"][1] + r0)
        reg = replace(reg, correction=correction_on_window(reg.correction, -r0, -c0))
        logger.info("co-registration (%s) on a %d x %d chip: dx=%.3f dy=%.3f px, "
                    "reliability %.2f", reg.method, c1 - c0, r1 - r0,
                    *reg.shift_px, reg.reliability or 0.0)
    return reg


def coregister(pair: AlignedPair, method: str = "global") -> tuple[AlignedPair, Registration]:
    """Co-register a pair and resample the after scene once from its source pixels.

    Parameters
    ----------
    pair : AlignedPair
        From :func:`changedet.raster.align_pair`.
    method : {"global", "local", "none"}

    Returns
    -------
    (AlignedPair, Registration)
        The registered pair (both ``valid`` masks set to the common valid mask, its
        ``correction`` the one applied) and the registration report.

    Notes
    -----
    A pair registered already (trying "local" after "global") is registered further:
    the report gives what was left to correct, and the after scene is resampled from
    its source once, with the correction applied before composed with the new one.
    """
    if method not in METHODS:
        raise ValueError(f"unknown co-registration method {method!r}; use one of {METHODS}")
    check_scene(pair.before, "pair.before")
    check_scene(pair.after, "pair.after")
    check_scene(pair.after_source, "pair.after_source")
    if not (pair.before.grid.coincides(pair.grid) and pair.after.grid.coincides(pair.grid)):
        raise ValueError(f"pair.before and pair.after must lie on pair.grid {pair.grid} "
                         "(use raster.align_pair)")
    if method == "none":
        return pair, Registration("none", (0.0, 0.0), None, 0)

    def read(box: tuple[int, int, int, int]) -> tuple[Scene, Scene]:
        if box == (0, 0) + pair.grid.shape:
            return pair.before, pair.after  # read only: no copy of the whole pair
        r0, c0, r1, c1 = box
        return (crop_scene(pair.before, r0, c0, r1 - r0, c1 - c0),
                crop_scene(pair.after, r0, c0, r1 - r0, c1 - c0))

    # On the chips a windowed run of the same grid measures on: both paths then
    # register a large scene alike (0.03 px apart otherwise on a 2400 px pair, which
    # tipped a building's outline).
    reg = register_on_chips(read, pair.grid.shape, method)
    if not reg.applied:
        return pair, reg
    # Measured on an after scene that may carry a correction already: resampled
    # with the new one alone, it would lose the first (warp_scene's output pixel p
    # takes the source at correction @ p, so the earlier one is applied last).
    correction = pair.correction @ reg.correction
    after = warp_scene(pair.after_source, pair.grid, correction)
    # The before scene's own mask, not the common one of the uncorrected pair: a strip
    # as wide as the shift along the after scene's edge is valid once corrected (as
    # the windows, which read the corrected after scene only, see it).
    own = pair.before.valid if pair.before_valid is None else pair.before_valid
    common = own & after.valid
    before = replace(pair.before, valid=common)
    after = replace(after, valid=common.copy())
    after.image[:, ~common] = 0.0
    return replace(pair, before=before, after=after, correction=correction), reg
