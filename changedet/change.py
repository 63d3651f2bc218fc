"""Evidence of new buildings, and their segmentation into labelled objects.

A new building is built-up in the after scene and was not in the before scene. Per
pixel we first compute hand-crafted evidence: how much the (radiometrically
normalised) colour changed in units of the sensor noise, vegetation (NDVI, or a
visible-band green-dominance index without near-infrared, judged on each date's own
colours), shadow on each date and cast shadow (darkening that keeps the before
colour's spectral direction), fine texture, homogeneity.

The default detector ("regions") then works on objects, not pixels. A roof and the
ground disturbed around it (construction earth, new paving, a cleared lot) change
together and form one blob of change; chromaticity, which ignores the shading of roof
facets, tells them apart. Candidate pixels (discounted change above half the Otsu
threshold) are split into regions of one colour by a watershed on the chromaticity
edges (:func:`colour_regions`); each region is described by about twenty scale-free
features (shape, change, texture, vegetation, brightness, outline strength, one-sided
shadow, neighbourhood: :func:`region_features`) and a small perceptron shipped in
``changedet/models/regions.npz`` (trained on two independent synthetic generators by
``benchmarks/train_regions.py``; evaluated here in plain numpy) gives its probability
of being a roof. Kept regions that touch form one building.

Two older detectors remain selectable: "handcrafted" thresholds the discounted change
score and keeps objects that cast a shadow on the anti-sun side (the sun azimuth is
estimated from the shadows beside the objects); "learned" is a per-pixel perceptron on
about 30 features (``changedet/models/detector.npz``).

After segmentation, outlines are redrawn through the pixels each roof covers by half
(:mod:`changedet.outline`); the disk-shaped morphology used throughout is in
:mod:`changedet.morphology`.

Every size is given in metres and converted with the pixel size, so the same defaults
work at 0.3 m, 0.5 m or 2 m. Every stage can run on a window with a halo when given the
global quantities of a first pass (``DetectionParams.threshold`` and a
:class:`~changedet.radiometry.RadiometricFit`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from ._log import logger, warn_analyst
from .morphology import (at_least, dilate_disk, disk, erode_disk, fill_holes, fill_small_holes,
                         grey_disk, relabel)
from .outline import redraw_outlines
from .radiometry import RadiometricFit, fit_patches, fit_radiometry, structure_on_patches
from .raster import Grid, Scene, check_scene

#: The shipped pixel detector (trained by ``benchmarks/train_detector.py``).
_MODEL_PATH = Path(__file__).resolve().parent / "models" / "detector.npz"
#: The shipped region classifier (trained by ``benchmarks/train_regions.py``).
_REGION_MODEL_PATH = Path(__file__).resolve().parent / "models" / "regions.npz"

#: Directions probed for the shadow a roof casts (every 22.5 degrees).
_N_DIRECTIONS = 16

#: Largest pixel sample kept per statistic for pooling (a strided subsample beyond).
_MAX_POOLED_SAMPLE = 200_000


def _median(sample: np.ndarray) -> float:
    return float(np.median(sample)) if sample.size else float("nan")


def _lattice_step(sample: np.ndarray) -> float | None:
    """The spacing of the lattice the values of ``sample`` lie on, or None.

    Residuals to the 4-neighbour mean of quantised pixels lie on multiples of a
    quarter of the quantum: 0.25 for counts, 1.0 for counts stretched by 4 into
    16 bits, 0.25/255 for 8-bit counts rescaled to reflectance. The smallest value
    clearly above zero is that spacing (zero residuals computed in floating point
    can come out a rounding error above it).

    Parameters
    ----------
    sample : (N,) ndarray of non-negative values

    Returns
    -------
    float or None
        None for continuous values (or no positive finite value).
    """
    positive = sample[(sample > 0) & np.isfinite(sample)]
    if not positive.size:
        return None
    # (The median only scales "clearly above zero": every 16th value will do.)
    positive = positive[positive > 1e-3 * float(np.median(positive[::16]))]
    step = float(positive.min())
    cells = np.rint(sample / step)
    if np.array_equal(cells * step, sample):  # counts: exact
        return step
    # Values computed from rescaled counts: the smallest carries its own rounding
    # error, which the far cells multiply. Each value over its cell estimates the
    # spacing; their median ignores the few values off the lattice.
    on = cells > 0
    step = float(np.median(sample[on] / cells[on]))
    return step if _lattice_cells(sample, step) is not None else None


def _lattice_cells(sample: np.ndarray, step: float) -> np.ndarray | None:
    """``sample`` in whole steps, when 99 % of it lies within a twentieth of a step of
    the lattice; None otherwise.

    Some slack: a few pixels off the lattice (a saturated value that is not a
    multiple of a stretch) and the rounding of floating point (rescaled 16-bit
    counts) must not hide it; continuous values lie within a twentieth of a step
    only a tenth of the time.
    """
    cells = np.rint(sample / step)
    near = np.abs(cells * step - sample) <= 0.05 * step
    return cells if int(np.count_nonzero(near)) >= 0.99 * sample.size else None


def _lattice_median(sample: np.ndarray, step: float | None) -> float:
    """Median of ``sample``, interpolated within its lattice cell when its values lie
    on multiples of ``step`` (the grouped-data median); the plain median otherwise.

    Parameters
    ----------
    sample : (N,) ndarray
    step : float or None
        The lattice's spacing (:func:`_lattice_step`); None: the plain median.

    Returns
    -------
    float
        NaN for an empty sample.
    """
    if not sample.size:
        return float("nan")
    cells = None if step is None else _lattice_cells(sample, step)
    if cells is None:
        return float(np.median(sample))
    k = (sample.size - 1) // 2
    m = float(np.partition(cells, k)[k])  # a lattice cell, unlike a mean of two
    # The median's cell is [m - 1/2, m + 1/2); the sample's half-way point is placed
    # in it as if the values in the cell were spread evenly across it.
    below = int(np.count_nonzero(cells < m))
    at = int(np.count_nonzero(cells == m))
    return (m - 0.5 + (0.5 * sample.size - below) / max(at, 1)) * step


class SceneStatistics:
    """Scene-wide yardsticks of the evidence: noise, medians, levels, the threshold.

    Each statistic is reduced from a pixel sample (a median, an Otsu level...),
    measured when first asked for on the arrays at hand. A scene larger than one chip
    has them measured once, on its sample chips (:func:`scene_statistics`;
    ``collect=True`` keeps each chip's samples, :meth:`pooled` reduces them
    together): whole, and by a windowed run's first pass, which gives the same values
    to every window, so that each window is judged as the whole scene is.

    Parameters
    ----------
    values : dict of str to float, optional
        Statistics already known; the others are measured when first asked for.
    collect : bool
        Keep the pixel sample behind each measured statistic (subsampled to at most
        about ``_MAX_POOLED_SAMPLE`` values) and how many values it was drawn from,
        for :meth:`pooled`.
    """

    def __init__(self, values: dict[str, float] | None = None, collect: bool = False):
        self.values: dict[str, float] = dict(values or {})
        self.samples: dict[str, np.ndarray] | None = {} if collect else None
        # How many values each collected sample stands for (before subsampling).
        self.sampled_from: dict[str, int] = {}
        self._reducers: dict[str, Callable[[np.ndarray], float]] = {}

    def get(self, name: str, sample: Callable[[], np.ndarray],
            reduce: Callable[[np.ndarray], float] = _median) -> float:
        """The statistic ``name``: given, or ``reduce(sample())`` measured now."""
        if name in self.values:
            return self.values[name]
        values = np.asarray(sample(), dtype=np.float32).ravel()
        value = float(reduce(values))
        self.values[name] = value
        self._reducers[name] = reduce
        if self.samples is not None:
            step = max(1, values.size // _MAX_POOLED_SAMPLE)
            self.samples[name] = values[::step].copy()
            self.sampled_from[name] = values.size
        return value

    def __getstate__(self) -> dict[str, Any]:
        # The reducers may be closures, which pickle cannot carry; without them the
        # statistics keep their values and samples, and only pooling needs them (a
        # first pass pools its chips before anything is pickled). A result pickled
        # by a notebook (joblib's cache, a process pool) then carries its evidence.
        state = dict(self.__dict__)
        state["_reducers"] = {}
        return state

    @classmethod
    def pooled(cls, parts: Sequence["SceneStatistics"]) -> "SceneStatistics":
        """Statistics of the union of the chips measured by ``parts`` (collected)."""
        if len(parts) == 1:
            # One chip (a small grid, read whole): its values, measured on every
            # pixel, as a whole-scene run measures them, not on the subsample kept.
            return cls(dict(parts[0].values))
        if any(p.samples for p in parts) and not parts[0]._reducers:
            raise ValueError("statistics that went through pickle cannot be pooled: "
                             "pool them before (their reducers stay behind)")
        out = cls()
        for name, reduce in parts[0]._reducers.items():
            held = [p for p in parts if p.samples and name in p.samples]
            # Every chip is taken at the sparsest chip's sampling rate, so that each
            # weighs by its number of values: capped alone, a chip with much change
            # weighed as little as one with little, and the threshold of a 2400 px
            # compound pair fell from 13.4 (all pixels) to 8.9.
            # (A chip without values, say none above the noise floor, sets no rate.)
            rate = min((p.samples[name].size / p.sampled_from[name] for p in held
                        if p.sampled_from[name]), default=1.0)
            chunks = []
            for p in held:
                sample = p.samples[name]
                keep = min(sample.size, round(rate * p.sampled_from[name]))
                chunks.append(sample[np.linspace(0, sample.size - 1, keep).round().astype(int)]
                              if keep < sample.size else sample)
            out.values[name] = float(reduce(np.concatenate(chunks)))
        return out



#: The detectors :class:`DetectionParams` knows: the command line offers "regions" and
#: "appearance"; "handcrafted" and "learned" are the earlier ones, kept for comparison.
DETECTOR_NAMES = ("regions", "appearance", "handcrafted", "learned")


@dataclass
class DetectionParams:
    """Knobs of the detector; every default derives from the pixel size or the data.

    Attributes
    ----------
    min_area_m2 : float or None
        Smallest new building reported. None: the larger of 20 m² and 36 pixels
        (a building must span about six pixels a side to be told from noise).
    threshold : float or None
        Threshold on ``Evidence.score``. None: automatic (hand-crafted: Otsu on the
        log score, never below ``min_sigma``; learned: probability 0.5).
    min_sigma : float
        Floor of the automatic hand-crafted threshold, in noise standard deviations.
    min_width_m : float
        Narrowest roof part kept; thinner links (driveways, fences, slivers of moved
        shadow) are cut by an opening of this width.
    shadow_reach_m : float
        How far beyond a roof's edge its cast shadow is looked for.
    sun_azimuth_deg : float or None
        Direction from the scene towards the sun, clockwise from grid north. None:
        estimated from the candidates' shadows; if no direction stands out the
        shadow test is skipped.
    require_shadow : bool
        Drop candidates that cast no shadow when a sun direction is known or found
        (hand-crafted detector only: the learned one weighs new shadow nearby).
    refine_edges : bool
        Without a probability map only: re-draw each outline on the change evidence
        without the texture term, at half the detection threshold.
    fit : RadiometricFit or None
        A precomputed radiometric fit (e.g. from a decimated first pass); None: fit
        on the given scenes.
    detector : {"regions", "appearance", "handcrafted", "learned"}
        "regions" (default): candidates from the discounted change score (half the
        Otsu threshold) split into regions of one colour, each kept when the shipped
        region classifier gives it a probability of roof of at least
        ``region_probability``; "handcrafted": threshold the discounted change score
        (noise units, Otsu) with a cast-shadow test; "learned": the shipped per-pixel
        perceptron's probability of new building (0.5); "appearance": segments that
        look like roofs in the after date and did not in the before date, each date
        judged in its own units (:mod:`changedet.appearance`; better on real imagery,
        worse on the synthetic scenes; it keeps segments of probability 0.5 and
        opens them by 3 x 3 pixels, whatever ``region_probability`` and
        ``min_width_m``).
    region_probability : float
        Regions detector: smallest probability of roof of a kept region.
    min_object_probability : float
        Learned detector: smallest mean probability of a kept object.
    model : dict or None
        Weights of the "learned" pixel detector (as in ``detector.npz``), of the
        "regions" classifier (as in ``regions.npz``) or of the "appearance" trees (as
        in ``appearance.npz``); None: the shipped model.
    keep_features : bool
        Keep the (F, H, W) feature stack in ``Evidence.features`` (for training).
    outline_before : float or None
        Regions and appearance detectors: a building whose outline was on average at
        least this strong an edge in the before date (in scene medians of the
        brightness gradient; :func:`outline_strength`) was already there, and is left
        out; with the appearance check, only when the edge is as strong along most of
        the outline too (:func:`outline_along`) or a quarter or more of the building
        lay on the before date's roofs (:data:`ROOF_UNDER_SHARE`), and so is a
        building whose footprint looked like a roof in the before date
        (:func:`changedet.appearance.roofs_before`). None keeps every building.
    ground_pixel_m : float or None
        Ground side of a pixel, metres, behind every size in metres; None: measured
        at the centre of the scene's grid (:func:`changedet.measure.ground_pixel_m`).
        A run sets it once for the whole scene, so that its windows agree.
    half_cover_outlines : bool
        Regions and appearance detectors: redraw each outline through the pixels its
        roof half covers in the after date (:func:`half_cover_outlines`).
    appearance_check : bool
        Regions detector, when the scenes are given: a candidate region of at least
        the minimum area that the classifier rejects is kept when the appearance
        detector, judging each date in its own units, also finds a new roof there
        confidently (:func:`changedet.appearance.confirm_new_roofs`; scenes with
        three visible bands or more, others are judged by the classifier alone), and
        a building whose footprint looked like a roof before is left out (see
        ``outline_before``). It finds about twice as many of the roofs unlike the
        classifier's training scenes, at the cost of a few more false buildings
        (debris on scenes of destruction) and 1.4 to 2 times the time (README, "A
        second opinion").
    structure_aligned : bool
        The dates are aligned better than :data:`changedet.radiometry.STRUCTURE_SCALE_M`,
        so that the radiometric fit may compare their structure (and weight itself by
        it where most of the scene changed). A run turns it off when the dates lie
        further apart than that scale (:func:`changedet.radiometry.structure_aligned`:
        an applied correction's residual, or an unreliable estimate's alignment check):
        gradients a few pixels apart cross, changed or not.
    """

    min_area_m2: float | None = None
    threshold: float | None = None
    min_sigma: float = 3.0
    min_width_m: float = 3.0
    shadow_reach_m: float = 3.0
    sun_azimuth_deg: float | None = None
    require_shadow: bool = True
    refine_edges: bool = True
    fit: RadiometricFit | None = field(default=None, repr=False)
    detector: str = "regions"
    region_probability: float = 0.5
    min_object_probability: float = 0.7
    model: dict[str, np.ndarray] | None = field(default=None, repr=False)
    keep_features: bool = False
    outline_before: float | None = 3.0
    ground_pixel_m: float | None = None
    half_cover_outlines: bool = True
    appearance_check: bool = True
    structure_aligned: bool = True

    def __post_init__(self) -> None:
        # The stages are called one by one from notebooks: a misspelt detector ran
        # another one, and a NaN level kept nothing, without a word.
        if self.detector not in DETECTOR_NAMES:
            raise ValueError(f"detector must be one of {', '.join(DETECTOR_NAMES)}, "
                             f"got {self.detector!r}")
        ranges = {  # name: (lowest, highest); None is "automatic" where the type allows
            "min_area_m2": (0.0, math.inf), "threshold": (0.0, math.inf),
            "min_sigma": (0.0, math.inf), "min_width_m": (0.0, math.inf),
            "shadow_reach_m": (0.0, math.inf), "sun_azimuth_deg": (-math.inf, math.inf),
            "region_probability": (0.0, 1.0), "min_object_probability": (0.0, 1.0),
            "outline_before": (0.0, math.inf), "ground_pixel_m": (0.0, math.inf),
        }
        optional = ("min_area_m2", "threshold", "sun_azimuth_deg", "outline_before",
                    "ground_pixel_m")
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            number = float("nan") if value is None else float(value)
            if not (math.isfinite(number) and low <= number <= high) or \
                    (name == "ground_pixel_m" and number == 0.0):
                if name == "ground_pixel_m":
                    bounds = f" above {low:g}"
                elif math.isinf(low):
                    bounds = ""
                elif math.isinf(high):
                    bounds = f" of {low:g} or more"
                else:
                    bounds = f" from {low:g} to {high:g}"
                raise ValueError(f"DetectionParams.{name} must be a finite number{bounds}, "
                                 f"got {value!r}")

    def pixel_m(self, grid: Grid) -> float:
        """Ground side of a pixel of ``grid``, metres: ``ground_pixel_m`` if set.

        Not the grid's pixel size in its CRS units: a Web-Mercator pixel covers
        cos(latitude) of it on the ground, and a foot-based CRS counts in feet.
        """
        if self.ground_pixel_m is not None:
            return float(self.ground_pixel_m)
        from .measure import ground_pixel_m

        return ground_pixel_m(grid)

    def resolved_min_area_m2(self, pixel_size_m: float) -> float:
        """The minimum building area in m² at this pixel size."""
        if self.min_area_m2 is not None:
            return float(self.min_area_m2)
        return _default_min_area_m2(pixel_size_m)

    def piece_scale_m2(self, pixel_size_m: float) -> float:
        """Area in m² that sizes the segmentation's steps on pieces of buildings
        (slivers left out, holes filled): the default minimum building area, whatever
        ``min_area_m2``, which only filters the buildings reported. A larger one
        applied to the facets would drop buildings larger than it; a smaller one
        changed the regions and with them other buildings' outlines (a 176 m² house
        lost at 0.0001 m²)."""
        return _default_min_area_m2(pixel_size_m)


def appearance_check_applies(params: "DetectionParams", before: Scene, after: Scene) -> bool:
    """Whether ``params.appearance_check`` is applied to this pair: regions detector,
    and three visible bands or more in both dates (what the appearance detector needs)."""
    return (params.detector == "regions" and params.appearance_check
            and all(s.image.shape[0] - (s.nir is not None) >= 3 for s in (before, after)))


def _default_min_area_m2(pixel_size_m: float) -> float:
    """Default minimum building area: 36 pixels, and at least 20 m²."""
    return max(20.0, 36.0 * pixel_size_m**2)


@dataclass
class Evidence:
    """Per-pixel maps behind the detection, on the analysis grid.

    Attributes
    ----------
    change : (H, W) ndarray of float32
        Colour change in no-change noise standard deviations.
    built_before, built_after : (H, W) ndarray of float32
        Roof-likeness in each date, 0..1 (not vegetation, not shadow, locally
        homogeneous).
    vegetation : (H, W) ndarray of float32
        Vegetation in either date, 0..1.
    shadow : (H, W) ndarray of float32
        Shadow in either date, 0..1.
    score : (H, W) ndarray of float32
        Combined new-building evidence. For the ``learned`` detector the probability
        of new building, 0..1; for the others the change in units of the pixel
        noise, discounted where it looks like vegetation, shadow or texture (0 and
        up; the fixture's automatic threshold is 9.5).
    threshold : float
        The threshold applied to ``score``, in its units.
    sun_azimuth_deg : float or None
        Sun azimuth used for the shadow test (given or estimated), None if none.
    after_normalised : (B, H, W) ndarray of float32 or None
        The after scene on the before scene's radiometry.
    extent : (H, W) ndarray of float32 or None
        Change discounted by vegetation and shadow (noise standard deviations).
    probability : (H, W) ndarray of float32 or None
        Probability of new building from the learned detector (same as ``score``).
    features : (F, H, W) ndarray of float32 or None
        The detector's input features, when ``keep_features`` was asked.
    edges_before : (H, W) ndarray of float32 or None
        Brightness gradient of the before date over its median on valid pixels.
    regions : (H, W) ndarray of int32 or None
        Regions detector: the candidate regions (0 background).
    region_probability : (H, W) ndarray of float32 or None
        Regions detector: each pixel's candidate region's probability of roof (from
        the classifier, or for a region kept by the appearance check, the appearance
        detector's); appearance detector: that of its segment of the after date.
    standing_before : (H, W) ndarray of int32 or None
        Regions and appearance detectors: labels (0 background) of the buildings left
        out because their outline (or, with the appearance check, their roof) was
        already in the before date (a demolition's remains, a re-roofed building), to
        report them apart; ``outlined_before`` counts them. Redrawn by
        :func:`outline_stage`.
    standing_segmented : (H, W) ndarray of int32 or None
        ``standing_before`` as the segmentation left it, kept by
        :func:`outline_stage`, which redraws from it each time it is called.
    statistics : SceneStatistics or None
        The scene-wide statistics the maps were computed with.
    fit : RadiometricFit or None
        The radiometric fit the after scene was normalised with
        (:func:`detect_new_buildings` sets it).
    """

    change: np.ndarray
    built_before: np.ndarray
    built_after: np.ndarray
    vegetation: np.ndarray
    shadow: np.ndarray
    score: np.ndarray
    threshold: float
    sun_azimuth_deg: float | None = None
    after_normalised: np.ndarray | None = field(default=None, repr=False)
    veg_after: np.ndarray | None = field(default=None, repr=False)
    shadow_after: np.ndarray | None = field(default=None, repr=False)
    shadow_before: np.ndarray | None = field(default=None, repr=False)
    diff: np.ndarray | None = field(default=None, repr=False)
    new_shadow: np.ndarray | None = field(default=None, repr=False)
    extent: np.ndarray | None = field(default=None, repr=False)
    probability: np.ndarray | None = field(default=None, repr=False)
    features: np.ndarray | None = field(default=None, repr=False)
    veg_before: np.ndarray | None = field(default=None, repr=False)
    smooth_after: np.ndarray | None = field(default=None, repr=False)
    colour_edges: np.ndarray | None = field(default=None, repr=False)
    bright_after: np.ndarray | None = field(default=None, repr=False)
    bright_before: np.ndarray | None = field(default=None, repr=False)
    edges_before: np.ndarray | None = field(default=None, repr=False)
    region_probability: np.ndarray | None = field(default=None, repr=False)
    regions: np.ndarray | None = field(default=None, repr=False)
    standing_before: np.ndarray | None = field(default=None, repr=False)
    standing_segmented: np.ndarray | None = field(default=None, repr=False)
    statistics: SceneStatistics | None = field(default=None, repr=False)
    fit: RadiometricFit | None = field(default=None, repr=False)

    @property
    def outlined_before(self) -> int:
        """How many buildings of these arrays were left out as standing before."""
        return 0 if self.standing_before is None else int(self.standing_before.max())


def vegetation_index(image: np.ndarray, nir: int | None) -> tuple[np.ndarray, bool]:
    """NDVI when a near-infrared band exists, else a normalised green-dominance index.

    Parameters
    ----------
    image : (B, H, W) ndarray
        Bands with red, green, blue first (in that order) among the visible ones.
    nir : int or None
        Index of the near-infrared layer.

    Returns
    -------
    index : (H, W) ndarray of float32
        In -1..1: NDVI, or ``(G - max(R, B)) / (G + max(R, B))``. Green must exceed
        both red and blue: leaves do, while teal or cyan roofs (green about equal to
        blue) and grey surfaces do not, unlike the excess-green index.
    is_ndvi : bool
    """
    eps = np.float32(1e-6)
    if nir is not None:
        vis = [i for i in range(image.shape[0]) if i != nir]
        red = np.maximum(image[vis[0]], 0)
        n = np.maximum(image[nir], 0)
        return ((n - red) / (n + red + eps)).astype(np.float32), True
    if image.shape[0] < 3:
        return np.zeros(image.shape[1:], np.float32), False
    r, g, b = (np.maximum(image[i], 0) for i in range(3))
    rb = np.maximum(r, b)
    return ((g - rb) / (g + rb + eps)).astype(np.float32), False


def _vegetation_level(idx_before: np.ndarray, idx_after: np.ndarray, valid: np.ndarray,
                      is_ndvi: bool, stats: SceneStatistics) -> float:
    """Index level that separates vegetation from the rest.

    Otsu on both dates together, kept within the physically sensible range for the
    index (NDVI of green leaves exceeds 0.2-0.5; green dominance of foliage 0.02-0.1),
    so a scene without vegetation does not turn its greenest roofs into trees.
    """
    lo, hi = (0.2, 0.5) if is_ndvi else (0.02, 0.10)

    def level(v: np.ndarray) -> float:
        # Both indices lie in [-1, 1].
        t = _otsu_on_fixed_bins(v, -1.0, 1.0) if v.size else None
        return float(np.clip(lo if t is None else t, lo, hi))

    return stats.get("vegetation_level_ndvi" if is_ndvi else "vegetation_level_visible",
                     lambda: np.concatenate([idx_before[valid][::7], idx_after[valid][::7]]),
                     level)


def _soft_above(x: np.ndarray, level: float, width: float) -> np.ndarray:
    """A ramp from 0 at ``level - width`` to 1 at ``level + width``."""
    return np.clip((x - (level - width)) / (2 * width), 0.0, 1.0).astype(np.float32)


def _brightness(image: np.ndarray, nir: int | None) -> np.ndarray:
    keep = [i for i in range(image.shape[0]) if i != nir]
    return image[keep].mean(axis=0).astype(np.float32)


def _shadow_map(bright: np.ndarray, median: float) -> np.ndarray:
    """Shadow likelihood 0..1 from brightness.

    A surface in shadow receives only skylight, a fraction of the sunlit irradiance;
    we call a pixel shadow when it is darker than half the scene's median brightness
    ``median`` (most of a scene is sunlit), with a soft ramp of a tenth of it.
    """
    return 1.0 - _soft_above(bright, 0.5 * median, 0.1 * median)


def _gradient_sigma_px(pixel_m: float) -> float:
    """Deviation of the Gaussian of the brightness gradient: a metre, at least 0.7 px."""
    return max(0.7, 1.0 / pixel_m)


def _gradient(bright: np.ndarray, pixel_m: float) -> np.ndarray:
    """(H, W) brightness gradient magnitude, Gaussian of :func:`_gradient_sigma_px`."""
    return ndimage.gaussian_gradient_magnitude(bright, _gradient_sigma_px(pixel_m))


def _homogeneity(grad: np.ndarray, median: float) -> np.ndarray:
    """1 where the local gradient is low compared with the scene's typical gradient."""
    return np.clip(1.5 - grad / (2 * (median + 1e-6)), 0.0, 1.0).astype(np.float32)


def _same_direction(a: np.ndarray, b: np.ndarray, nir: int | None) -> np.ndarray:
    """1 where two colour vectors point the same way (within about 5 degrees),
    0 beyond about 10 degrees; visible bands only."""
    keep = [i for i in range(a.shape[0]) if i != nir]
    dot = np.zeros(a.shape[1:], np.float32)
    na = np.zeros_like(dot)
    nb = np.zeros_like(dot)
    for i in keep:
        dot += a[i] * b[i]
        na += a[i] * a[i]
        nb += b[i] * b[i]
    # (A floor far below any colour, in any units: a fixed 1e-6 outweighed the
    # product of two reflectance vectors' squared norms.)
    cos = dot / np.sqrt(np.maximum(na * nb, np.float32(1e-30)))
    return np.clip((cos - math.cos(math.radians(10))) /
                   (math.cos(math.radians(5)) - math.cos(math.radians(10))), 0, 1
                   ).astype(np.float32)


def chroma_edges(image: np.ndarray, nir: int | None, valid: np.ndarray,
                 stats: SceneStatistics | None = None) -> np.ndarray:
    """Strength of colour (chromaticity) edges, in units of the scene's median.

    Chromaticity (each visible band over their sum) ignores shading, so the facets of
    one roof, lit differently, are one colour, while the edge between a roof and the
    bare earth or pavement around it stands out even where their brightness is alike.

    Parameters
    ----------
    image : (B, H, W) ndarray
    nir : int or None
        Near-infrared layer (left out).
    valid : (H, W) ndarray of bool
    stats : SceneStatistics, optional
        Scene-wide medians (measured here when not given).

    Returns
    -------
    (H, W) ndarray of float32
        Gradient magnitude of the chromaticity (1-pixel Gaussian) over its median in
        the valid area: about 1 on uniform ground, tens on a roof outline.
    """
    vis = [i for i in range(image.shape[0]) if i != nir][:3]
    smooth = np.stack([ndimage.gaussian_filter(np.maximum(image[i], 0), 1.0) for i in vis])
    total = smooth.sum(axis=0)
    # Chromaticity is meaningless in the dark; a floor of a twentieth of the median
    # brightness keeps shadows from turning into a field of edges.
    stats = stats if stats is not None else SceneStatistics()
    floor = 0.05 * stats.get("median_visible_sum", lambda: total[valid][::7])
    # No valid pixel: no median (NaN); a unit floor then.
    chroma = smooth / (total + (max(floor, 1e-6) if np.isfinite(floor) else 1.0))
    grad2 = np.zeros(valid.shape, np.float32)
    for c in chroma:
        grad2 += ndimage.gaussian_gradient_magnitude(c, 1.0) ** 2
    grad = np.sqrt(grad2)
    ref = stats.get("median_chroma_gradient", lambda: grad[valid][::7])
    return (grad / (max(ref, 1e-6) if np.isfinite(ref) else 1.0)).astype(np.float32)


def colour_regions(domain: np.ndarray, colour_edges: np.ndarray, pixel_m: float,
                   edge_level: float = 2.5, neck_m: float = 2.0) -> np.ndarray:
    """Split candidate pixels into regions of one colour along the colour edges.

    The cores of the regions are the candidate pixels away from any colour edge,
    cut at necks narrower than ``2 * neck_m`` (a faint stretch of a roof outline
    must not join the roof to the earth beside it); the watershed of the edge map
    then gives every candidate pixel to the core it reaches without crossing an
    edge, so region boundaries sit on the edge ridges.

    Parameters
    ----------
    domain : (H, W) ndarray of bool
        Candidate pixels.
    colour_edges : (H, W) ndarray
        From :func:`chroma_edges`.
    pixel_m : float
        Pixel size in metres.
    edge_level : float
        Edge strength (in scene medians) that separates regions.
    neck_m : float
        Half-width of the narrowest link kept inside one core, in metres.

    Returns
    -------
    (H, W) ndarray of int32
        0 outside ``domain``, 1..N regions.
    """
    from skimage.segmentation import watershed

    core = domain & (colour_edges < edge_level)
    core_labels, n_core = ndimage.label(core)
    if n_core == 0:
        return np.zeros(domain.shape, np.int32)
    # Pixels farther than the neck from any non-core pixel: an erosion by a disk, the
    # same set as thresholding the distance transform at a fraction of its cost.
    markers, n = ndimage.label(erode_disk(core, max(1.0, neck_m / pixel_m), border_value=1))
    # Cores narrower than the neck everywhere (a small roof) keep one marker each.
    has_marker = np.zeros(n_core + 1, bool)
    has_marker[np.unique(core_labels[markers > 0])] = True
    lonely = ~has_marker[core_labels] & core
    lonely_labels, _ = ndimage.label(lonely)
    markers = np.where(lonely, lonely_labels + n, markers)
    return watershed(colour_edges, markers, mask=domain).astype(np.int32)


def _pixel_noise(image: np.ndarray, valid: np.ndarray, stats: SceneStatistics,
                 date: str) -> np.ndarray:
    """Per-band noise standard deviation from the residual to the 4-neighbour mean.

    For white noise of deviation s that residual has deviation 1.118 s; the median
    absolute residual is robust to edges and texture, which touch few pixels. Only
    pixels that are valid with their four neighbours count: nodata is flat, and a
    scene with a nodata collar would otherwise read as less noisy than it is (with
    half of it nodata, as noiseless, and every change as infinitely significant).

    Parameters
    ----------
    image : (B, H, W) ndarray
    valid : (H, W) ndarray of bool
    stats : SceneStatistics
    date : {"before", "after"}
        Names the statistics (``noise_before_0``...).

    Returns
    -------
    (B,) ndarray of float64
    """
    inner = (valid[1:-1, 1:-1] & valid[:-2, 1:-1] & valid[2:, 1:-1]
             & valid[1:-1, :-2] & valid[1:-1, 2:])
    # (Too few such pixels to measure anything: every pixel, as a last resort.)
    everywhere = bool(inner.all()) or int(inner.sum()) < 100

    def residual(x: np.ndarray) -> np.ndarray:
        r = np.abs(x[1:-1, 1:-1] - 0.25 * (x[:-2, 1:-1] + x[2:, 1:-1]
                                           + x[1:-1, :-2] + x[1:-1, 2:]))
        return r if everywhere else r[inner]

    def deviation(abs_residual: np.ndarray) -> float:
        # Quantised pixels give residuals on a lattice (0.25 for integer counts),
        # where the plain median jumps by a whole step (10 % of a typical noise on
        # 8-bit counts) between two samples of one scene: the grouped-data median
        # interpolates within the step. The step is the data's own, so that counts
        # stretched into 16 bits or rescaled to reflectance measure the same noise.
        # The floor (a noiseless synthetic image) is in the data's own units, a
        # thousandth of the typical non-zero residual: a fixed 1e-3 was a thousandth
        # of a count but the whole noise of reflectances, and a mean would let a few
        # wild pixels (an unflagged -9999) raise it.
        positive = abs_residual[abs_residual > 0]
        floor = max(1e-3 * float(np.median(positive[::16])) if positive.size else 0.0, 1e-30)
        return max(1.4826 * _lattice_median(abs_residual, _lattice_step(abs_residual))
                   / 1.118, floor)

    out = np.empty(image.shape[0])
    for b in range(image.shape[0]):
        # Every pixel, at any scene size: a decimated image has another residual
        # (neighbours two pixels apart), which would put a large scene's change in
        # other units than its windows'.
        out[b] = stats.get(f"noise_{date}_{b}", lambda: residual(image[b]), deviation)
    return out


def _smoothness(image: np.ndarray, nir: int | None, pixel_m: float,
                noise: np.ndarray) -> np.ndarray:
    """1 where the fine texture is within twice the noise, 0 beyond four times.

    Texture is the local RMS of the residual from a half-metre blur, so a single
    straight edge (a roof outline) raises it only within a pixel or two, whereas
    rubble, disturbed earth, cars and foliage raise it everywhere.
    """
    s = max(0.7, 0.5 / pixel_m)
    keep = [i for i in range(image.shape[0]) if i != nir]
    out = np.zeros(image.shape[1:], np.float32)
    for i in keep:
        res = image[i] - ndimage.gaussian_filter(image[i], s)
        sd = np.sqrt(ndimage.gaussian_filter(res * res, s)) / np.float32(noise[i])
        out += np.clip((4.0 - sd) / 2.0, 0.0, 1.0)
    return out / len(keep)


#: Names of the per-region features fed to the region classifier, in order.
REGION_FEATURE_NAMES: tuple[str, ...] = (
    "log_area_m2", "rectangularity", "solidity", "compactness", "elongation",
    "log_change", "smooth_a", "veg_a", "veg_b", "log_bright_a", "log_bright_b",
    "log_edge_inner", "log_edge_mean", "facing_land", "facing_region",
    "shadow_contrast", "dark_contrast", "blob_share", "log_blob_regions",
    "chroma_spread", "new_shadow", "data_edge",
)


#: Regions detector: candidates above this fraction of the automatic threshold.
CANDIDATE_FRACTION = 0.5
#: Region area feature is capped here (m²): beyond a large house, size says nothing.
MAX_AREA_FEATURE_M2 = 1000.0


def candidate_level(evidence: "Evidence", params: "DetectionParams") -> float:
    """The score (noise units) above which the regions detector takes a pixel as a
    candidate: a fraction of the automatic threshold, and at least the floor."""
    return max(params.min_sigma, CANDIDATE_FRACTION * evidence.threshold)


def candidate_regions(evidence: "Evidence", valid: np.ndarray, pixel_m: float,
                      params: "DetectionParams") -> tuple[np.ndarray, int]:
    """Candidate pixels of new building, split into regions of one colour.

    Returns
    -------
    regions : (H, W) ndarray of int32
        0 background, 1..n.
    n : int
    """
    # The regions are classified one by one, so the candidates may be generous:
    # half the automatic threshold keeps roofs on ground that changed as much.
    cand = (evidence.score > candidate_level(evidence, params)) & valid
    # Bridge ridge lines and facet edges, which are not smooth, inside a roof.
    # (Closing and opening by a disk, as ndimage.binary_closing/binary_opening.)
    half_width = 0.5 * params.min_width_m / pixel_m
    cand = erode_disk(dilate_disk(cand, half_width), half_width) & valid
    # Cut links thinner than a roof (driveways, fences, slivers along moved shadows).
    cand = dilate_disk(erode_disk(cand, half_width), half_width)
    # The texture term misses a rim of a pixel or two along every outline: the
    # regions may reach two metres beyond the candidates where the change itself
    # (shadow discounted) stays above the candidates' level.
    near = dilate_disk(cand, max(1.5, 2.0 / pixel_m))
    domain = cand | (near & (evidence.extent > candidate_level(evidence, params)) & valid)
    regions = colour_regions(domain, evidence.colour_edges, pixel_m)
    regions, n = relabel(regions)
    # Slivers smaller than a fifth of the smallest building carry no shape.
    min_px = 0.2 * params.piece_scale_m2(pixel_m) / pixel_m**2
    sizes = np.bincount(regions.ravel(), minlength=n + 1)
    small = sizes < min_px
    small[0] = False
    if small.any():
        regions = np.where(small[regions], 0, regions)
        regions, n = relabel(regions)
    return regions, n


def _labelled_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the labelled pixels (label > 0) in raster order, and their labels.

    Sums over each label taken on this list (``np.bincount(lab, weights=...)``) add
    the same values in the same (raster) order as sums over the whole array, so they
    are bit-identical for every label > 0, at the cost of the labelled pixels only.
    """
    at = np.flatnonzero(labels)
    return at, labels.ravel()[at]


def _region_shape(regions: np.ndarray, n: int, at: np.ndarray, lab: np.ndarray
                  ) -> tuple[np.ndarray, ...]:
    """Pixel count, rectangularity, solidity, compactness and elongation of each region.

    Parameters
    ----------
    regions : (H, W) ndarray of int
        0 background, 1..n regions.
    n : int
    at, lab : ndarray
        The labelled pixels and their labels (:func:`_labelled_pixels`).

    Returns
    -------
    tuple of five (n + 1,) ndarrays of float
        Entry ``k`` for region ``k``; the count of entry 0 is the background's.
    """
    import shapely

    def sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(lab, weights=values, minlength=n + 1)

    cnt = np.bincount(lab, minlength=n + 1).astype(float)
    # The background's count too: a region cut by the array's border can fall
    # outside its closed blob, and region_features then pools it with the background.
    cnt[0] = regions.size - at.size
    cnt = np.maximum(cnt, 1.0)
    rr_px, cc_px = np.divmod(at, regions.shape[1])
    rr, cc = rr_px.astype(np.float64), cc_px.astype(np.float64)
    mr = sums(rr) / cnt
    mc = sums(cc) / cnt
    srr = sums(rr * rr) / cnt - mr * mr
    scc = sums(cc * cc) / cnt - mc * mc
    src = sums(rr * cc) / cnt - mr * mc
    del rr, cc
    tr = srr + scc
    det = np.maximum(srr * scc - src * src, 1e-9)
    disc = np.sqrt(np.maximum(tr * tr / 4 - det, 0.0))
    l1 = tr / 2 + disc + 1.0 / 12
    l2 = np.maximum(tr / 2 - disc, 0.0) + 1.0 / 12
    rect = cnt / (12.0 * np.sqrt(l1 * l2))
    elong = np.log(np.sqrt(l1 / l2))
    # Perimeter: pixel edges between the region and anything else (the array's
    # border included: the padding differs from every label).
    perim = np.zeros(n + 1)
    padded = np.pad(regions, 1, constant_values=-1).ravel()
    # Pixel (r, c) is (r + 1, c + 1) in the padded array, W + 2 wide.
    at_padded = at + 2 * rr_px + regions.shape[1] + 3
    for step in (1, -1, regions.shape[1] + 2, -regions.shape[1] - 2):
        perim += np.bincount(lab[padded[at_padded + step] != lab], minlength=n + 1)
    del padded, at_padded
    compact = 4 * math.pi * cnt / np.maximum(perim, 1.0) ** 2
    # Solidity: area over the area of the convex hull of the region's pixel squares.
    # The outer corners of each region's leftmost and rightmost pixel in every row
    # span that hull; all regions go to shapely in one call.
    hull_area = np.ones(n + 1)
    if at.size:
        # The pixel list is in raster order, so a stable sort by (region, row)
        # keeps each row's pixels left to right.
        row_key = lab.astype(np.int64) * regions.shape[0] + rr_px
        order = np.argsort(row_key, kind="stable")
        key = row_key[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        ends = np.r_[starts[1:], key.size] - 1
        row = rr_px[order][starts]
        left = cc_px[order][starts]
        right = cc_px[order][ends] + 1
        owner = lab[order][starts]
        xs = np.concatenate([left, left, right, right])
        ys = np.concatenate([row, row + 1, row, row + 1])
        ids = np.tile(owner, 4)
        by_id = np.argsort(ids, kind="stable")
        present, pos = np.unique(ids[by_id], return_inverse=True)
        # A line through the corners has their convex hull, and shapely builds it
        # straight from the coordinates (a multipoint makes one geometry per
        # point, ten times slower). The corners are integers, so the hull's area
        # is exact whichever way it is traced.
        hulls = shapely.convex_hull(shapely.linestrings(
            np.stack([xs[by_id], ys[by_id]], 1), indices=pos))
        hull_area[present] = shapely.area(hulls)
    solidity = np.minimum(cnt / np.maximum(hull_area, 1.0), 1.0)

    return cnt, rect, solidity, compact, elong


def darkness_beside(bright_after: np.ndarray, pixel_m: float) -> np.ndarray:
    """(H, W) darkness of each pixel relative to the brightest ground within 15 m
    (0 as bright, 1 black), for the shadow beside a region (:func:`region_features`);
    it finds a shadow on bright earth that the absolute shadow map misses."""
    size = max(3, int(round(15.0 / pixel_m)) | 1)
    ref = ndimage.maximum_filter(ndimage.uniform_filter(bright_after, 3), size)
    return np.clip(1.0 - bright_after / (ref + 1e-6), 0.0, 1.0).astype(np.float32)


def region_features(regions: np.ndarray, n: int, evidence: "Evidence",
                    valid: np.ndarray, pixel_m: float, dark: np.ndarray | None = None,
                    only: np.ndarray | None = None) -> np.ndarray:
    """Scale-free description of each candidate region, for the region classifier.

    Shape (rectangularity from second moments, solidity, compactness, elongation),
    content (change, smoothness, vegetation and brightness in each date), outline
    (colour-edge strength on the region's rim), neighbourhood (how much of the rim
    faces unchanged land or another region, or lies on nodata; the share of its
    blob), and the best one-sided shadow beside it in any direction.

    Parameters
    ----------
    dark : (H, W) ndarray, optional
        :func:`darkness_beside` of ``evidence.bright_after``, when already computed.
    only : (n + 1,) ndarray of bool, optional
        The regions to describe (default all); the others' columns are zero. Each
        described region's features are those it has when all are described.

    Returns
    -------
    (F, n + 1, 1) ndarray of float32
        Column ``k`` for region ``k`` (row 0 unused), F = len(REGION_FEATURE_NAMES).
    """
    # Every per-region sum runs over the list of region pixels (a fraction of the
    # array), in raster order: the same sums as over the whole array.
    at_all, lab_all = _labelled_pixels(regions)
    if only is None:
        at, lab = at_all, lab_all
    else:
        chosen = np.asarray(only, bool)[lab_all]
        at, lab = at_all[chosen], lab_all[chosen]

    def sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(lab, weights=values, minlength=n + 1)

    cnt, rect, solidity, compact, elong = _region_shape(regions, n, at, lab)
    # Every region's pixel count, for the blobs' areas (as _region_shape counts them).
    cnt_all = cnt if only is None else np.maximum(np.r_[
        regions.size - at_all.size, np.bincount(lab_all, minlength=n + 1)[1:]], 1.0)

    def mean(x: np.ndarray) -> np.ndarray:
        """Mean over each region of an (H, W) map, or of its values at ``at``."""
        return sums((x if x.ndim == 1 else x.ravel()[at]).astype(np.float64)) / cnt

    stats = evidence.statistics if evidence.statistics is not None else SceneStatistics()
    med_a = stats.get("median_bright_after", lambda: evidence.bright_after[valid][::5]) + 1e-6
    med_b = stats.get("median_bright_before", lambda: evidence.bright_before[valid][::5]) + 1e-6
    # Rim of each region: its pixels within reach of anything else.
    reach_px = max(1.5, 1.5 / pixel_m)
    inside = regions > 0
    # A closing (ndimage.binary_closing) with its holes filled: over the whole array,
    # since a hole is only known as one from all around it.
    blob = fill_holes(erode_disk(dilate_disk(inside, reach_px), reach_px))
    # The rim is found within reach of each region: with ``only``, on the box of the
    # chosen regions and a margin beyond the reach, where the disk filters see all
    # they see on the whole array (the box's own border is farther than the reach).
    box = _margin_box(at, regions.shape, int(math.ceil(reach_px)) + 2)
    region_box, inside_box = regions[box], inside[box]
    faces_land = inside_box & ~erode_disk(blob[box], reach_px)
    no_land = np.where(inside_box, region_box, n + 1)
    faces_other = inside_box & ((grey_disk(region_box, reach_px, np.maximum) > region_box)
                                | (grey_disk(no_land, reach_px, np.minimum) < region_box))
    rim = faces_land | faces_other | (inside_box & (grey_disk(region_box, reach_px,
                                                               np.minimum) == 0))
    rim_cnt = np.maximum(np.bincount(region_box[rim], minlength=n + 1).astype(float), 1.0)
    land = np.bincount(region_box[faces_land], minlength=n + 1) / rim_cnt
    other = np.bincount(region_box[faces_other], minlength=n + 1) / rim_cnt
    edge_rim = np.bincount(region_box[rim], weights=evidence.colour_edges[box][rim],
                           minlength=n + 1) / rim_cnt
    # Share of the rim on nodata: there the region is cut by a line that is no
    # outline of its own, so its shape says less (a patch of earth cut square looks
    # like a roof's corner). The array's own border is left out: a window's border
    # inside the scene is not the data's edge, and a windowed run must judge each
    # region as the whole scene does.
    beyond = dilate_disk(~valid[box], reach_px)
    data_edge = np.bincount(region_box[rim & beyond], minlength=n + 1) / rim_cnt
    # One-sided shadow: new darkness beside the region in its best direction, minus
    # the opposite side (a roof casts it on one side; flat ground on none).
    # The same with darkness relative to the brightest ground nearby, which finds a
    # shadow on bright earth that the absolute shadow map misses. (Both maps are
    # measured on the same strips, found once.)
    shadow_reach = max(1.0, 3.0 / pixel_m)
    if dark is None:
        dark = darkness_beside(evidence.bright_after, pixel_m)
    frac, dfrac = _shadow_side_fractions(
        regions, n, [evidence.new_shadow, dark], shadow_reach, only=only)
    contrast = (frac - np.roll(frac, _N_DIRECTIONS // 2, axis=1)).max(axis=1)
    dcontrast = (dfrac - np.roll(dfrac, _N_DIRECTIONS // 2, axis=1)).max(axis=1)
    blobs, _ = ndimage.label(blob)
    region_blob = np.zeros(n + 1, np.int64)
    region_blob[regions[inside]] = blobs[inside]
    blob_area = np.bincount(region_blob, weights=cnt_all, minlength=int(blobs.max()) + 1)
    blob_regions = np.bincount(region_blob, minlength=int(blobs.max()) + 1)
    an = evidence.after_normalised
    # Chromaticity at the region pixels only (a per-pixel quantity).
    vis = an[:3] if an.shape[0] >= 3 else an
    vis = vis.reshape(vis.shape[0], -1)[:, at]
    tot = np.maximum(vis.sum(axis=0), 1e-6)
    spread = np.zeros(n + 1)
    for c in vis[:2]:
        ch = c / tot
        m1 = mean(ch)
        spread += np.maximum(mean(ch * ch) - m1 * m1, 0.0)
    spread = np.sqrt(spread)
    feats = [
        # Area is capped: above a large house, size says nothing more about a roof
        # (and the training scenes hold few roofs larger than that).
        np.log(np.clip(cnt * pixel_m**2, 1.0, MAX_AREA_FEATURE_M2)), rect, solidity,
        compact, elong,
        np.log1p(mean(evidence.change)), mean(evidence.smooth_after),
        mean(evidence.veg_after), mean(evidence.veg_before),
        np.log(np.maximum(mean(evidence.bright_after), 1e-5 * med_a) / med_a),
        np.log(np.maximum(mean(evidence.bright_before), 1e-5 * med_b) / med_b),
        np.log1p(edge_rim), np.log1p(mean(evidence.colour_edges)), land, other,
        contrast, dcontrast, cnt / np.maximum(blob_area[region_blob], 1.0),
        np.log(np.maximum(blob_regions[region_blob], 1)), np.log1p(100 * spread),
        mean(evidence.new_shadow), data_edge,
    ]
    out = np.stack(feats).astype(np.float32)[:, :, None]
    if only is not None:
        out[:, ~np.asarray(only, bool)] = 0.0
    return out


def _margin_box(at: np.ndarray, shape: tuple[int, int], margin: int
                ) -> tuple[slice, slice]:
    """Slices of the bounding box of flat pixel indices ``at`` grown by ``margin``,
    within an array of ``shape`` (the whole array when ``at`` is empty)."""
    if at.size == 0:
        return slice(None), slice(None)
    rows, cols = np.divmod(at, shape[1])
    return (slice(max(0, int(rows.min()) - margin), int(rows.max()) + margin + 1),
            slice(max(0, int(cols.min()) - margin), int(cols.max()) + margin + 1))


#: Names of the per-pixel features fed to the learned detector, in order.
FEATURE_NAMES: tuple[str, ...] = (
    "log_change", "log_change_2m", "log_change_4m", "log_extent", "log_context_8m",
    "dz_r", "dz_g", "dz_b",
    "chroma_a_r", "chroma_a_g", "chroma_a_b", "chroma_b_r", "chroma_b_g", "chroma_b_b",
    "bright_a", "bright_b", "veg_a", "veg_b", "shadow_a", "shadow_b", "cast",
    "new_shadow_near", "smooth_a", "smooth_b", "homog_a", "homog_b",
    "wth_a_8m", "wth_a_20m", "bth_a_8m", "bth_a_20m", "wth_b_12m",
    "std_a_2m", "std_b_2m", "std_a_1m",
)


def _top_hats(bright: np.ndarray, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """White and black top-hat of a square structuring element (separable filters).

    A roof smaller than the element stands out of its surroundings; the top-hat is
    the morphological building index at that scale.
    """
    size = max(3, int(size_px) | 1)
    opened = ndimage.maximum_filter(ndimage.minimum_filter(bright, size), size)
    closed = ndimage.minimum_filter(ndimage.maximum_filter(bright, size), size)
    return bright - opened, closed - bright


def _local_std(x: np.ndarray, sigma: float) -> np.ndarray:
    m = ndimage.gaussian_filter(x, sigma)
    m2 = ndimage.gaussian_filter(x * x, sigma)
    return np.sqrt(np.maximum(m2 - m * m, 0.0))


def _chroma(image: np.ndarray, nir: int | None) -> np.ndarray:
    """Visible chromaticity (first three visible bands divided by their sum)."""
    vis = [i for i in range(image.shape[0]) if i != nir][:3]
    while len(vis) < 3:
        vis.append(vis[-1])
    rgb = np.maximum(image[vis], 0)
    return (rgb / (rgb.sum(axis=0) + 1e-6)).astype(np.float32)


def pixel_features(maps: dict[str, np.ndarray], before: np.ndarray, after: np.ndarray,
                   valid: np.ndarray, nir: int | None, pixel_m: float,
                   noise: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Per-pixel features of the learned detector, each meaning the same at any pixel
    size and radiometry (sizes in metres, intensities in noise units or relative to
    the scene's median brightness).

    Parameters
    ----------
    maps : dict of (H, W) ndarray of float32
        The hand-crafted evidence maps from :func:`new_building_evidence`
        (``change``, ``extent``, ``veg_a``, ``veg_b``, ``sh_a``, ``sh_b``, ``cast``,
        ``new_shadow``, ``smooth_a``, ``smooth_b``, ``homog_a``, ``homog_b``,
        ``br_a``, ``br_b``).
    before, after : (B, H, W) ndarray of float32
        Before bands and the after bands normalised onto the before radiometry.
    valid : (H, W) ndarray of bool
    nir : int or None
        Near-infrared layer index.
    pixel_m : float
        Pixel size in metres.
    noise : tuple of two (B,) ndarray
        Per-band noise of the before and after images.

    Returns
    -------
    (F, H, W) ndarray of float32
        ``F = len(FEATURE_NAMES)``.
    """
    def m(v: float) -> float:
        return max(0.5, v / pixel_m)

    ch = maps["change"]
    feats: list[np.ndarray] = [
        np.log1p(ch), np.log1p(ndimage.gaussian_filter(ch, m(2.0))),
        np.log1p(ndimage.gaussian_filter(ch, m(4.0))), np.log1p(maps["extent"]),
        np.log1p(ndimage.gaussian_filter(maps["extent"], m(8.0))),
    ]
    vis = [i for i in range(before.shape[0]) if i != nir][:3]
    while len(vis) < 3:
        vis.append(vis[-1])
    sigma = np.hypot(noise[0], noise[1])
    for i in vis:
        d = ndimage.gaussian_filter(after[i] - before[i], m(1.0)) / np.float32(sigma[i])
        feats.append(np.clip(d, -30, 30) / 10.0)
    feats.extend(_chroma(after, nir))
    feats.extend(_chroma(before, nir))
    med = float(np.median(maps["br_b"][valid][::7])) + 1e-6
    br_a = maps["br_a"] / np.float32(med)
    br_b = maps["br_b"] / np.float32(med)
    feats += [br_a, br_b, maps["veg_a"], maps["veg_b"], maps["sh_a"], maps["sh_b"],
              maps["cast"],
              ndimage.maximum_filter(maps["new_shadow"], int(2 * m(2.0)) | 1),
              maps["smooth_a"], maps["smooth_b"], maps["homog_a"], maps["homog_b"]]
    w8, b8 = _top_hats(br_a, int(m(8.0)))
    w20, b20 = _top_hats(br_a, int(m(20.0)))
    wb12, _ = _top_hats(br_b, int(m(12.0)))
    feats += [w8, w20, b8, b20, wb12]
    nb = float(np.mean(noise[0][vis])) / med
    na = float(np.mean(noise[1][vis])) / med
    feats += [np.log1p(_local_std(br_a, m(2.0)) / na), np.log1p(_local_std(br_b, m(2.0)) / nb),
              np.log1p(_local_std(br_a, m(1.0)) / na)]
    out = np.stack(feats).astype(np.float32)
    out[:, ~valid] = 0.0
    return out


def load_model(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """Weights of a detector model (``.npz``) as arrays by name, for ``DetectionParams.model``.

    None: the shipped per-pixel model (``models/detector.npz``).
    """
    p = path or _MODEL_PATH
    with np.load(p) as z:
        return {k: z[k] for k in z.files}


def predict_probability(features: np.ndarray, model: dict[str, np.ndarray]) -> np.ndarray:
    """Evaluate the shipped multilayer perceptron (ReLU hidden layers, logistic out).

    Parameters
    ----------
    features : (F, H, W) ndarray of float32
    model : dict
        ``mean``, ``scale`` (F,), and ``W0, b0, W1, b1, ...`` as trained by
        ``benchmarks/train_detector.py``.

    Returns
    -------
    (H, W) ndarray of float32
        Probability of new building.
    """
    f, h, w = features.shape
    out = np.empty(h * w, np.float32)
    mean = model["mean"].astype(np.float32)
    scale = model["scale"].astype(np.float32)
    n_layers = int(model["n_layers"])
    flat = features.reshape(f, -1)
    step = 1 << 18
    for s in range(0, h * w, step):
        x = (flat[:, s:s + step].T - mean) / scale
        for k in range(n_layers):
            x = x @ model[f"W{k}"].astype(np.float32) + model[f"b{k}"].astype(np.float32)
            if k < n_layers - 1:
                np.maximum(x, 0, out=x)
        out[s:s + step] = 1.0 / (1.0 + np.exp(-np.clip(x[:, 0], -30, 30)))
    return out.reshape(h, w)


def new_building_evidence(
    before: Scene,
    after: Scene,
    params: DetectionParams = DetectionParams(),
    *,
    after_raw: np.ndarray | None = None,
    statistics: SceneStatistics | None = None,
) -> Evidence:
    """Per-pixel evidence of new building.

    Parameters
    ----------
    before : Scene
        Before scene on the analysis grid.
    after : Scene
        After scene, registered and radiometrically normalised, on the same grid.
    params : DetectionParams
        ``threshold`` overrides the automatic one.
    after_raw : (B, H, W) ndarray, optional
        The after bands before normalisation. Vegetation is judged on each date's own
        colours: mapping a scene dominated by grass onto another date bends the
        colours of rare materials (a teal roof can come out green).
    statistics : SceneStatistics, optional
        Scene-wide statistics (noise, medians, threshold) from a first pass over a
        larger scene; those missing are measured here.

    Returns
    -------
    Evidence
    """
    _check_pair(before, after)
    if after_raw is not None and np.shape(after_raw) != after.image.shape:
        raise ValueError(f"after_raw {np.shape(after_raw)} must have the after scene's "
                         f"shape {after.image.shape}")
    stats = statistics if statistics is not None else SceneStatistics()
    valid = before.valid & after.valid
    pixel_m = params.pixel_m(before.grid)
    b_img, a_img = before.image, after.image
    nb = b_img.shape[0]
    diff = (a_img - b_img).astype(np.float32)
    # The unit of change is the sensor noise of the two dates, measured on each
    # image's own pixel-to-pixel residual. The scatter of unchanged pixels about the
    # radiometric fit is not used: where most of a scene changed (a new suburb on
    # cleared land) it is dominated by the change itself.
    noise_a = _pixel_noise(a_img, valid, stats, "after")
    noise_b = _pixel_noise(b_img, valid, stats, "before")
    sigma = np.hypot(noise_b, noise_a).astype(np.float32)
    # Noise at the pixel level is reduced by a light blur (about half a metre), small
    # enough to keep the roof edges in place.
    z2 = np.zeros(valid.shape, np.float32)
    for b in range(nb):
        d = ndimage.gaussian_filter(diff[b], max(0.5, 0.5 / pixel_m)) / sigma[b]
        z2 += d * d
    change = np.sqrt(z2 / nb).astype(np.float32)
    change[~valid] = 0.0

    vi_b, is_ndvi = vegetation_index(b_img, before.nir)
    vi_a, _ = vegetation_index(a_img if after_raw is None else after_raw, after.nir)
    level = _vegetation_level(vi_b, vi_a, valid, is_ndvi, stats)
    width = 0.1 if is_ndvi else 0.02
    veg_b = _soft_above(vi_b, level, width)
    veg_a = _soft_above(vi_a, level, width)
    br_b = _brightness(b_img, before.nir)
    br_a = _brightness(a_img, after.nir)
    sh_b = _shadow_map(br_b, stats.get("median_bright_before", lambda: br_b[valid][::5]))
    sh_a = _shadow_map(br_a, stats.get("median_bright_after", lambda: br_a[valid][::5]))
    grad_b = _gradient(br_b, pixel_m)
    grad_a = _gradient(br_a, pixel_m)
    # Valid pixels only: nodata (zero gradient) would lower the medians and inflate
    # every edge, the more so the larger the scene's nodata collar.
    homog_b = _homogeneity(grad_b, stats.get("median_gradient_before", lambda: grad_b[valid]))
    homog_a = _homogeneity(grad_a, stats.get("median_gradient_after", lambda: grad_a[valid]))
    # The outline test compares edges with those of valid ground only.
    ref_valid = stats.get("median_valid_gradient_before", lambda: grad_b[valid][::5])
    edges_b = (grad_b / np.float32(ref_valid + 1e-6 if np.isfinite(ref_valid) else 1.0)
               ).astype(np.float32)
    built_b = (1 - veg_b) * (1 - sh_b) * homog_b
    built_a = (1 - veg_a) * (1 - sh_a) * homog_a
    # Dark trees are vegetation, not shadow: only unvegetated dark pixels count as
    # shadow (the moved shadows of old buildings fall in that class).
    # A building's own cast shadow is new darkness, on any ground (grass included).
    new_shadow = sh_a * (1 - sh_b)
    same_direction = _same_direction(a_img, b_img, after.nir)
    # Shadow cast on any ground, a lawn included: darkness that keeps the before
    # colour's direction.
    cast_any = new_shadow * same_direction
    sh_a = sh_a * (1 - veg_a)
    sh_b = sh_b * (1 - veg_b)
    # Roofs are smooth at the metre scale; disturbed earth, rubble, cars and tree
    # crowns are not. Texture is measured against the sensor noise of the after date.
    smooth_a = _smoothness(a_img, after.nir, pixel_m, noise_a)
    # A dark pixel of the after date is a cast shadow when it is the before colour
    # darkened (same spectral direction); a self-shaded roof facet is a new colour.
    cast = sh_a * same_direction
    colour_edges = None
    if params.detector == "regions":
        # Green roofs look like vegetation in visible bands: the regions detector
        # leaves vegetation to its classifier (texture, shape and shadow tell a lawn
        # from a roof), so its evidence is not discounted by it; shadow cast on any
        # ground is.
        extent = change * (1 - np.maximum(cast, cast_any)) * (1 - sh_b)
        colour_edges = chroma_edges(a_img, after.nir, valid, stats)
    else:
        extent = change * (1 - veg_a) * (1 - cast) * (1 - sh_b)
    extent[~valid] = 0.0
    prob = None
    features = None
    if params.detector == "learned":
        maps = {"change": change, "extent": extent.astype(np.float32), "veg_a": veg_a,
                "veg_b": veg_b, "sh_a": sh_a, "sh_b": sh_b, "cast": cast,
                "new_shadow": new_shadow, "smooth_a": smooth_a,
                "smooth_b": _smoothness(b_img, before.nir, pixel_m, noise_b),
                "homog_a": homog_a, "homog_b": homog_b, "br_a": br_a, "br_b": br_b}
        features = pixel_features(maps, b_img, a_img, valid, before.nir, pixel_m,
                                  (noise_b, noise_a))
        model = params.model if params.model is not None else load_model()
        prob = predict_probability(features, model)
        # A light blur (half a metre) makes the 0.5 level a smooth outline.
        prob = ndimage.gaussian_filter(prob, max(0.5, 0.5 / pixel_m))
        prob[~valid] = 0.0
        score = prob
        threshold = 0.5 if params.threshold is None else float(params.threshold)
    elif params.detector in ("handcrafted", "regions", "appearance"):
        score = extent * smooth_a
        if params.threshold is not None:
            threshold = float(params.threshold)
        else:
            floor = params.min_sigma
            threshold = stats.get(
                "threshold", lambda: score[valid & (score > floor)],
                lambda v: _auto_threshold(v, floor))
    else:
        raise ValueError(f"unknown detector {params.detector!r}")
    logger.info("evidence: %s threshold %.2f (vegetation index level %.3f)",
                params.detector, threshold, level)
    return Evidence(
        change=change,
        built_before=built_b.astype(np.float32),
        built_after=built_a.astype(np.float32),
        vegetation=np.maximum(veg_b, veg_a),
        shadow=np.maximum(sh_b, sh_a),
        score=score.astype(np.float32),
        threshold=threshold,
        sun_azimuth_deg=params.sun_azimuth_deg,
        after_normalised=a_img,
        veg_after=veg_a,
        shadow_after=sh_a,
        shadow_before=sh_b,
        new_shadow=new_shadow,
        extent=extent.astype(np.float32),
        diff=diff,
        veg_before=veg_b,
        smooth_after=smooth_a,
        colour_edges=colour_edges,
        bright_after=br_a,
        bright_before=br_b,
        edges_before=edges_b,
        probability=prob,
        features=features if params.keep_features else None,
        statistics=stats,
    )


def _auto_threshold(above_floor: np.ndarray, floor: float) -> float:
    """Otsu on the log of the valid scores above ``floor`` (given as ``above_floor``).

    Below the floor lies sensor noise, whose log has a long left tail that would
    draw Otsu into splitting the noise itself. Above it lie nuisance change
    (materials lit by another sun, cars, seasonal colour) and new construction; the
    log makes their spreads comparable, as Otsu assumes.
    """
    if above_floor.size < 100:
        return floor
    log_floor = math.log(max(floor, 1e-6))
    # Scores up to e^9 (8000) times the floor; any beyond fall in the last bin.
    t = _otsu_on_fixed_bins(np.log(above_floor), log_floor, log_floor + 9.0)
    return floor if t is None else max(floor, float(np.exp(t)))


#: Bins of the fixed-bin Otsu thresholds.
_OTSU_BINS = 4096


def _otsu_on_fixed_bins(values: np.ndarray, lo: float, hi: float) -> float | None:
    """Otsu's threshold of ``values`` on :data:`_OTSU_BINS` fixed bins over [lo, hi].

    Values beyond the range fall in the end bins. Bins fitted to each sample's own
    range would move with its extremes by a fraction of a bin (about 2 % of the
    detection threshold with 256 bins), so that two samples of one scene (a whole
    scene, its windowed run's chips) got thresholds that far apart; on fixed fine
    bins they differ only as their histograms do. None when undefined.
    """
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=_OTSU_BINS, range=(lo, hi))
    if np.count_nonzero(counts) < 2:
        return None
    return float(threshold_otsu(hist=(counts, 0.5 * (edges[:-1] + edges[1:]))))


def _shadow_side_fractions(labels: np.ndarray, n: int,
                           shadow: np.ndarray | Sequence[np.ndarray],
                           reach_px: float, among_others: bool = False,
                           only: np.ndarray | None = None
                           ) -> np.ndarray | list[np.ndarray]:
    """Mean shadow just beyond each object's edge, in each probe direction.

    Parameters
    ----------
    labels : (H, W) ndarray of int
    n : int
        Largest label.
    shadow : (H, W) ndarray, or a sequence of them
        Shadow map(s); several maps are measured on the same strips, found once.
    reach_px : float
        Distance of the strips from the edge.
    among_others : bool
        False: the strips are the background (label 0) beside each object, as for
        candidate regions on unlabelled ground. True: they are the pixels of the other
        objects beside it (label 0 then being nodata), as for a segmentation that
        labels every valid pixel.
    only : (n + 1,) ndarray of bool, optional
        The objects to measure (default all); the others' rows are zero.

    Returns
    -------
    (n + 1, D) ndarray of float, or a list of them (one per map)
        Row ``k`` for label ``k``; column ``j`` for direction ``j * 360 / D`` degrees
        clockwise from grid north (up).
    """
    maps = [shadow] if isinstance(shadow, np.ndarray) else list(shadow)
    out = [np.zeros((n + 1, _N_DIRECTIONS)) for _ in maps]
    at, lab = _labelled_pixels(labels)
    if only is not None:
        chosen = np.asarray(only, bool)[lab]
        at, lab = at[chosen], lab[chosen]
    # Padded beyond the reach with a label that is no background, so that pixels
    # moved off the array are never part of a strip, as in a shifted copy.
    pad = int(math.ceil(reach_px)) + 1
    padded_labels = np.pad(labels, pad, constant_values=-1).ravel()
    padded_maps = [np.pad(m, pad).ravel() for m in maps]
    w = labels.shape[1] + 2 * pad
    at = at + (at // labels.shape[1]) * 2 * pad + pad * w + pad
    for j in range(_N_DIRECTIONS):
        az = math.radians(j * 360.0 / _N_DIRECTIONS)
        dc = int(round(reach_px * math.sin(az)))
        dr = int(round(-reach_px * math.cos(az)))
        # Move every labelled pixel reach_px in direction az: the moved pixels that
        # leave their object form the strip beside it on that side. A shift keeps
        # the raster order, so the sums add the same values in the same order as
        # over a shifted copy of the whole array, at the cost of the labelled
        # pixels only.
        moved = at + (dr * w + dc)
        beside = padded_labels[moved]
        ring = (beside > 0) & (beside != lab) if among_others else beside == 0
        ring_lab = lab[ring]
        ring_at = moved[ring]
        tot = np.bincount(ring_lab, minlength=n + 1)
        for o, m in zip(out, padded_maps):
            sh = np.bincount(ring_lab, weights=m[ring_at], minlength=n + 1)
            o[:, j] = sh / np.maximum(tot, 1)
    return out[0] if isinstance(shadow, np.ndarray) else out


def _estimate_sun(frac: np.ndarray, areas: np.ndarray) -> float | None:
    """Sun azimuth from the side where candidates cast shadow, or None if unclear.

    The shadow lies on the anti-sun side. Each candidate votes with its shadow-side
    contrast (the side's shadow fraction minus the opposite side's); the direction
    with the largest area-weighted vote wins if some candidate shows a clear shadow.
    """
    if frac.shape[0] < 2:
        return None
    f = frac[1:]
    contrast = f - np.roll(f, _N_DIRECTIONS // 2, axis=1)
    w = areas[1:]
    vote = (contrast * w[:, None]).sum(0) / max(w.sum(), 1e-9)
    j = int(np.argmax(vote))
    # A real sun leaves a clear shadow beside at least one candidate; without one
    # (overcast, or no building among the candidates) the direction is noise.
    if vote[j] < 0.05 or contrast[:, j].max() < 0.3:
        return None
    shadow_dir = j * 360.0 / _N_DIRECTIONS
    return (shadow_dir + 180.0) % 360.0


def segment_new_buildings(
    evidence: Evidence,
    valid: np.ndarray,
    pixel_size_m: float,
    params: DetectionParams = DetectionParams(),
    scenes: tuple[Scene, Scene] | None = None,
) -> np.ndarray:
    """Label the new buildings in an evidence map.

    Parameters
    ----------
    evidence : Evidence
        From :func:`new_building_evidence`.
    valid : (H, W) ndarray of bool
        Pixels valid in both dates.
    pixel_size_m : float
        Ground size of one pixel in metres.
    params : DetectionParams
    scenes : (Scene, Scene), optional
        Before and after (registered, not normalised) on the evidence's grid, for
        ``params.appearance_check`` (without them there is no such check).

    Returns
    -------
    (H, W) ndarray of int32
        0 background, 1..N one label per new building.
    """
    valid = _checked_stage_inputs(evidence, valid, pixel_size_m)
    # What an earlier segmentation of this evidence left out as standing is no part
    # of this one's (a notebook re-runs the stage with other parameters).
    evidence.standing_before = evidence.standing_segmented = None
    min_area_px = params.resolved_min_area_m2(pixel_size_m) / pixel_size_m**2
    if params.detector == "regions":
        return _segment_by_regions(evidence, valid, pixel_size_m, params, min_area_px, scenes)
    # The threshold finds the roofs; their outlines are re-drawn further down on the
    # texture-free evidence. (Hysteresis down to half the threshold leaked along new
    # roads and disturbed earth into blobs joining whole streets.)
    learned = evidence.probability is not None
    if learned:
        cand = (evidence.score > evidence.threshold) & valid
        # Cut links thinner than a roof (driveways, fences, slivers along moved shadows).
        cand = ndimage.binary_opening(cand, disk(0.5 * params.min_width_m / pixel_size_m))
        labels, n = ndimage.label(cand)
        if n == 0:
            return labels.astype(np.int32)
        areas = ndimage.sum_labels(np.ones_like(cand), labels, np.arange(n + 1))
        # A roof is confidently new over most of its area; a blob that only grazes the
        # threshold is disturbed ground or a moved shadow.
        mean_p = ndimage.mean(evidence.score, labels, np.arange(n + 1))
        keep = (areas >= 0.5 * min_area_px) & (mean_p >= params.min_object_probability)
    else:
        cand = (evidence.score > evidence.threshold) & valid
        # Bridge ridge lines and facet edges, which are not smooth, inside a roof.
        cand = ndimage.binary_closing(cand, disk(0.5 * params.min_width_m / pixel_size_m)) & valid
        # Cut links thinner than a roof (driveways, fences, slivers along moved shadows).
        cand = ndimage.binary_opening(cand, disk(0.5 * params.min_width_m / pixel_size_m))
        labels, n = ndimage.label(cand)
        if n == 0:
            return labels.astype(np.int32)
        areas = np.bincount(labels.ravel(), minlength=n + 1).astype(float)
        keep = areas >= 0.5 * min_area_px
    keep[0] = False
    labels = np.where(keep[labels], labels, 0)
    labels, n = ndimage.label(labels > 0)
    if n == 0:
        return labels.astype(np.int32)
    areas = np.bincount(labels.ravel(), minlength=n + 1).astype(float)

    keep = np.ones(n + 1, bool)
    keep[0] = False
    shadow_new = evidence.new_shadow if evidence.new_shadow is not None else evidence.shadow
    if shadow_new is not None:
        reach = max(1.0, params.shadow_reach_m / pixel_size_m)
        frac = _shadow_side_fractions(labels, n, shadow_new, reach)
        sun = params.sun_azimuth_deg
        if sun is None:
            sun = _estimate_sun(frac, areas)
        evidence.sun_azimuth_deg = sun
        if sun is not None:
            j = int(round(((sun + 180.0) % 360.0) / (360.0 / _N_DIRECTIONS))) % _N_DIRECTIONS
            # The shadow of a box seen along a diagonal shows best in the probes
            # beside it: accept any within 45 degrees of the anti-sun direction.
            side = frac[:, [(j + d) % _N_DIRECTIONS for d in (-2, -1, 0, 1, 2)]].max(1)
            opp = frac[:, (j + _N_DIRECTIONS // 2) % _N_DIRECTIONS]
            if params.require_shadow and not learned:
                keep &= (side - opp) > 0.15
            logger.info("segment: sun azimuth %.0f deg; %d of %d candidates cast a "
                        "shadow", sun, int(keep.sum()), n)
    labels = np.where(keep[labels], labels, 0)
    labels, n = ndimage.label(labels > 0)
    if params.refine_edges and evidence.extent is not None and not learned:
        labels = _regrow_edges(labels, evidence.extent, valid, pixel_size_m,
                               max(params.min_sigma, 0.5 * evidence.threshold))
        labels, n = ndimage.label(labels > 0)
    # Holes smaller than a building are roof furniture or noise, not courtyards.
    labels = fill_small_holes(labels, params.piece_scale_m2(pixel_size_m) / pixel_size_m**2)
    labels, n = at_least(labels, n, min_area_px)
    logger.info("segment: %d new building(s)", n)
    return labels.astype(np.int32)


def _load_region_model() -> dict[str, np.ndarray]:
    return load_model(_REGION_MODEL_PATH)


def classify_regions(features: np.ndarray, model: dict[str, np.ndarray] | None = None
                     ) -> np.ndarray:
    """Probability that each candidate region is (part of) a new roof.

    Parameters
    ----------
    features : (F, n + 1, 1) ndarray
        From :func:`region_features`.
    model : dict, optional
        Ensemble weights as in ``models/regions.npz`` (``mean``, ``scale``,
        ``n_members`` and ``m{i}_W{k}``, ``m{i}_b{k}``); None: the shipped one.

    Returns
    -------
    (n + 1,) ndarray of float32
        Entry 0 (background) is 0.
    """
    model = model if model is not None else _load_region_model()
    # An ensemble: the members share the feature scaling; their mean is the answer.
    n_members = int(model["n_members"])
    prob = np.zeros(features.shape[1], np.float32)
    for m in range(n_members):
        member = {"mean": model["mean"], "scale": model["scale"],
                  "n_layers": model[f"m{m}_n_layers"]}
        for k in range(int(member["n_layers"])):
            member[f"W{k}"] = model[f"m{m}_W{k}"]
            member[f"b{k}"] = model[f"m{m}_b{k}"]
        prob += predict_probability(features, member)[:, 0]
    prob /= n_members
    prob[0] = 0.0
    return prob


def _segment_by_regions(evidence: Evidence, valid: np.ndarray, pixel_m: float,
                        params: DetectionParams, min_area_px: float,
                        scenes: tuple[Scene, Scene] | None = None) -> np.ndarray:
    """Candidate regions, classified one by one (and those rejected checked by their
    appearance); kept regions that touch are one building."""
    regions, n = candidate_regions(evidence, valid, pixel_m, params)
    if n == 0:
        evidence.region_probability = np.zeros(valid.shape, np.float32)
        evidence.regions = regions
        return np.zeros(valid.shape, np.int32)
    dark = darkness_beside(evidence.bright_after, pixel_m)
    prob = classify_regions(region_features(regions, n, evidence, valid, pixel_m, dark),
                            params.model)
    regions, n, prob = _split_kept_regions(regions, n, prob, evidence, valid, pixel_m,
                                           params, dark)
    keep = prob >= params.region_probability
    keep[0] = False
    confirmed = 0
    checked = False
    # Holes are filled up to the default minimum building, and pieces of buildings
    # kept down to it (or to a smaller min_area_m2): a larger min_area_m2 only filters
    # what is reported.
    hole_px = params.piece_scale_m2(pixel_m) / pixel_m**2
    piece_px = min(hole_px, min_area_px)
    if params.appearance_check and scenes is None:
        warn_analyst("segment: no appearance check without the before and after "
                     "scenes (segment_new_buildings(..., scenes=(before, after)))")
    elif params.appearance_check and not appearance_check_applies(params, *scenes):
        logger.info("segment: no appearance check: it needs three visible bands")
    elif params.appearance_check:
        checked = True
        # The classifier learned new roofs from synthetic pairs and rejects many of
        # another making (grey and white roofs on bare earth, whose colour edges are
        # weak); a second opinion in other units keeps those the appearance detector
        # finds new too. Either alone keeps more of what is not a new building.
        from .appearance import confirm_new_roofs

        # Pieces as small as the default minimum building are looked at: at the
        # user's minimum, a 39 m² piece of a 197 m² house went unchecked and the
        # house shrank to 116 m².
        candidates = ~keep & (np.bincount(regions.ravel(), minlength=n + 1) >= piece_px)
        candidates[0] = False
        check, p_roof = confirm_new_roofs(*scenes, regions, candidates, pixel_m,
                                          evidence.statistics)
        keep |= check
        prob = np.where(check, p_roof, prob)
        confirmed = int(check.sum())
    evidence.region_probability = prob[regions].astype(np.float32)
    evidence.regions = regions
    labels, n = ndimage.label(keep[regions])
    completed = trimmed = 0
    removed = None
    if checked and n:
        # The classifier often keeps only part of a real roof (a sunlit facet, the
        # part that changed most); the appearance trees draw the rest of it. The
        # segments' change is taken before the shadow and texture discounts of the
        # score, at the candidates' level: a roof's self-shaded facet is no cast
        # shadow (with the score, LEVIR object F1 0.120 against 0.145). Where a
        # region was kept without confidence (a grey roof and the new lawn around it,
        # one colour region; by the classifier, or by the appearance check with a
        # mean probability below CONFIDENT_REGION), the trees also cut out what they
        # are sure is ground; a confident region stays as kept (on the synthetic
        # residences the trees call parts of large roofs ground).
        from .appearance import redraw_found_roofs

        redraw = redraw_found_roofs(
            *scenes, labels, evidence.change,
            candidate_level(evidence, params), pixel_m,
            evidence.statistics, removable=evidence.region_probability < CONFIDENT_REGION)
        if redraw.added.any():
            evidence.region_probability = np.maximum(evidence.region_probability,
                                                     redraw.probability)
            labels, n = ndimage.label((labels > 0) | redraw.added)
        completed, removed = int(redraw.added.sum()), redraw.removed
    # Holes smaller than a building are roof furniture or noise, not courtyards.
    labels = fill_small_holes(labels, hole_px)
    labels, n = at_least(labels, n, min_area_px)
    labels, n = _leave_out_standing(labels, n, evidence, valid, pixel_m, params,
                                    scenes if checked else None)
    if removed is not None and removed.any():
        # Cut only now: what stood before is judged on the whole of what was found
        # (the remains of a demolished house, cut down to their slab, no longer lie
        # on its old outline). What is left is held to the default minimum only when
        # the outline stage redraws it and applies a larger min_area_m2 (a house cut
        # to just below the user's minimum grows back above it there).
        floor_px = piece_px if params.half_cover_outlines else min_area_px
        trimmed = int((removed & (labels > 0)).sum())
        labels, n = at_least(*ndimage.label((labels > 0) & ~removed), floor_px)
        if evidence.outlined_before:
            # Cut alike, so that --keep-standing reports the same outlines as new
            # buildings.
            evidence.standing_before, _ = at_least(
                *ndimage.label((evidence.standing_before > 0) & ~removed), floor_px)
    logger.info("segment: %d of %d candidate regions are roofs (%d by their appearance, "
                "%d px added to them and %d px of ground cut out of them by it); %d new "
                "building(s) (%d left out, standing in the before date)", int(keep.sum()),
                int(prob.size - 1), confirmed, completed, trimmed, n,
                evidence.outlined_before)
    return labels.astype(np.int32)


#: Every region kept as a roof is split again along fainter colour edges
#: (:data:`SECOND_SPLIT_EDGE_LEVEL` scene medians, against 2.5 for the first split) and
#: its parts judged one by one. A region kept with this probability or more is
#: confident: a part of it is cut off only when the classifier is as sure that the part
#: is not roof (below 1 - CONFIDENT_REGION); the parts of a region kept with less need
#: a roof's probability of their own.
CONFIDENT_REGION = 0.75
SECOND_SPLIT_EDGE_LEVEL = 2.0


def _split_kept_regions(regions: np.ndarray, n: int, prob: np.ndarray,
                        evidence: Evidence, valid: np.ndarray, pixel_m: float,
                        params: DetectionParams, dark: np.ndarray | None = None
                        ) -> tuple[np.ndarray, int, np.ndarray]:
    """Regions kept as roofs, split along fainter colour edges and judged part by part.

    A roof whose colour region took in the changed ground beside it, through a stretch
    of its outline that resampling, compression or a weak colour contrast had blurred,
    is measured with that ground. Judged on their own, the roof is a roof and the
    ground ground: 0.52 for the fixture's residence 2 with the after scene reprojected
    from EPSG:4326 (31 % too large), 0.95 for a synthetic residence joined to the
    construction earth around it. Lowering the edge level of the first split instead
    changes all the regions the classifier was trained on, and it then does worse.
    A part of a confidently kept region (:data:`CONFIDENT_REGION`) is cut off only when
    the classifier is as sure it is not roof: the facets of a gable roof, judged alone,
    often sit just below the classifier's cut.

    Parameters
    ----------
    regions : (H, W) ndarray of int
        0 background, 1..n.
    prob : (n + 1,) ndarray
        Roof probability of each region (entry 0 unused).
    dark : (H, W) ndarray, optional
        :func:`darkness_beside`, when already computed.

    Returns
    -------
    regions : (H, W) ndarray of int32
        Relabelled 1..n, the kept regions that split replaced by their parts.
    n : int
    prob : (n + 1,) ndarray
        A part of a confident region has the region's probability, its own when
        below 1 - :data:`CONFIDENT_REGION`, or 0 when the parts cut off leave it apart
        from the piece that holds the region's roof (:func:`_in_roof_piece`); a part
        of another kept region has its own; every region that did not split keeps its
        own.
    """
    kept = prob >= params.region_probability
    kept[0] = False
    if not kept.any():
        return regions, n, prob
    inside = kept[regions]
    parts = colour_regions(inside, evidence.colour_edges, pixel_m,
                           edge_level=SECOND_SPLIT_EDGE_LEVEL)
    # The new labels are the (region, part) pairs, so that no part spans two regions;
    # pixels of a region that no part reached (0) form one more part of it.
    at = np.flatnonzero(inside)
    stride = np.int64(parts.max()) + 1
    pairs, part_of = np.unique(regions.ravel()[at].astype(np.int64) * stride
                               + parts.ravel()[at], return_inverse=True)
    parent = (pairs // stride).astype(np.int64)
    split = np.bincount(parent, minlength=n + 1) >= 2
    split[0] = False
    if not split.any():
        return regions, n, prob
    from_split = split[parent][part_of]
    new = regions.astype(np.int64).copy()
    new.ravel()[at[from_split]] = n + 1 + part_of[from_split]
    new, n_new = relabel(new)
    # The region each new label comes from, and whether it is a part of a split one.
    source = np.zeros(n_new + 1, np.int64)
    source[new.ravel()] = regions.ravel()
    is_part = split[source]
    is_part[0] = False
    # Only the parts are judged anew, and only they are described.
    own = classify_regions(region_features(new, n_new, evidence, valid, pixel_m, dark,
                                           only=is_part), params.model)
    region_prob = prob[source]
    out = np.where(is_part, own, region_prob)
    # A part of a confident region keeps the region's verdict unless surely not roof.
    stays = is_part & (region_prob >= CONFIDENT_REGION) & (own >= 1.0 - CONFIDENT_REGION)
    out[stays] = region_prob[stays]
    # Cutting the ground out of a region can leave specks of it behind, joined to the
    # roof only through what was cut: of a confident region's parts, only those in
    # the connected piece that holds the roof (the part surest of being one) stay.
    out[stays & ~_in_roof_piece(new, source, stays, own)] = 0.0
    out[0] = 0.0
    logger.info("segment: %d kept region(s) split into parts, judged anew; %d part(s) "
                "left out", int(split.sum()),
                int((is_part & (out < params.region_probability)).sum()))
    return new, n_new, out


def _in_roof_piece(labels: np.ndarray, source: np.ndarray, chosen: np.ndarray,
                   own: np.ndarray) -> np.ndarray:
    """Which chosen labels lie in the roof's piece of their source region: of the
    connected pieces that the region's chosen labels form, the one holding the label
    of the highest ``own`` probability (the largest of such pieces on a tie).

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, 1..m.
    source : (m + 1,) ndarray of int
        The region each label belongs to (several labels to one region).
    chosen : (m + 1,) ndarray of bool
    own : (m + 1,) ndarray of float
        Each label's probability of roof, judged on its own.

    Returns
    -------
    (m + 1,) ndarray of bool
        True for the chosen labels with a pixel in their region's roof piece (pieces
        4-connected; of equal pieces, the one whose first pixel in raster order comes
        last); False elsewhere.
    """
    from skimage.measure import label as connected

    region_of = np.where(chosen[labels], source[labels], 0)
    # Pieces of one region: pixels of chosen labels of the same region that touch.
    pieces = connected(region_of, background=0, connectivity=1)
    n_pieces = int(pieces.max())
    out = np.zeros(chosen.shape, bool)
    if n_pieces == 0:
        return out
    at = np.flatnonzero(pieces)
    piece_at, label_at = pieces.ravel()[at], labels.ravel()[at]
    size = np.bincount(piece_at, minlength=n_pieces + 1)
    surest = np.full(n_pieces + 1, -np.inf)
    np.maximum.at(surest, piece_at, own[label_at])
    piece_region = np.zeros(n_pieces + 1, np.int64)
    piece_region[piece_at] = region_of.ravel()[at]
    # Sorted by region, then surest part, then size: the last piece of each region is
    # its roof's.
    order = np.lexsort((size[1:], surest[1:], piece_region[1:])) + 1
    roof_piece = np.zeros(int(piece_region.max()) + 1, np.int64)
    roof_piece[piece_region[order]] = order
    is_roof = np.zeros(n_pieces + 1, bool)
    is_roof[roof_piece[roof_piece > 0]] = True
    out[label_at[is_roof[piece_at]]] = True
    return out


#: A building whose footprint, taken as a segment of the before date, has this
#: probability of roof there or more was standing before (the appearance detector's
#: level for a roof in either date).
ROOF_BEFORE_LEVEL = 0.5
#: A building whose outline was an edgy band in the before date but no edge along
#: most of it (:func:`outline_along`) stood before when this share of it or more lay
#: on segments of the before date with a probability of roof of
#: :data:`ROOF_BEFORE_LEVEL` or more (:func:`changedet.appearance.roof_share_before`):
#: a quarter, as a demolition's remains cover part of the old roof, where the new
#: houses of the synthetic scenes whose outlines are edgy lie on none.
ROOF_UNDER_SHARE = 0.25


def _leave_out_standing(labels: np.ndarray, n: int, evidence: Evidence, valid: np.ndarray,
                        pixel_m: float, params: DetectionParams,
                        scenes: tuple[Scene, Scene] | None = None
                        ) -> tuple[np.ndarray, int]:
    """Labels without the buildings standing before (those go to
    ``evidence.standing_before``), relabelled 1..n: those whose outline was already an
    edge (:func:`outline_strength`; given the ``scenes``, the appearance check, only
    when that edge also ran along most of the outline, :func:`outline_along`, or a
    quarter of the building lay on the before date's roofs,
    :func:`changedet.appearance.roof_share_before`), and, given the ``scenes``, those
    whose footprint looked like a roof in the before date."""
    if params.outline_before is None or not n:
        return labels, n
    standing = np.zeros(n + 1, bool)
    if evidence.edges_before is not None:
        # What was built before is not new: where the outline was already an edge in
        # the before date, the change is a demolition's remains (a slab or rubble in
        # the old footprint) or an old roof re-covered. Typical ground measures about
        # 1 here, mottled bare earth 2 to 3, the outline of a house 3 to 10. Beside
        # nodata the gradient is the step to the zeroed pixels: not measured within
        # the reach of the gradient's Gaussian.
        measured = None if valid.all() else ~dilate_disk(
            ~valid, 4.0 * _gradient_sigma_px(pixel_m) + 1.0)
        strength = outline_strength(labels, n, evidence.edges_before, pixel_m, measured)
        edgy = strength >= params.outline_before
        edgy[0] = False
        if edgy.any() and evidence.bright_before is not None and scenes is not None:
            # With the appearance check, an edgy band stood before only when the edge
            # also runs along most of the outline: the edges of trees, drives and lot
            # lines cross the footprint of a house built among old ones (16 of the 142
            # true new buildings of 100 m² or more of the synthetic benchmark scenes
            # measure 3 or more on average; 4 along most of their outline) ...
            along = outline_along(labels, n, evidence.edges_before, evidence.bright_before,
                                  pixel_m, measured, only=edgy) >= params.outline_before
            unsure = edgy & ~along
            if unsure.any():
                # ... or when a quarter of it lay on a roof of the before date: the
                # remains of a house pulled down lie on part of its roof, and their
                # outline follows its walls only in places. Without this second test
                # the first lets such remains through, so without the appearance
                # check the band's mean alone decides.
                from .appearance import roof_share_before

                along |= roof_share_before(*scenes, labels, pixel_m, evidence.statistics,
                                           only=unsure, level=ROOF_BEFORE_LEVEL
                                           ) >= ROOF_UNDER_SHARE
            edgy &= along
        standing |= edgy
    if scenes is not None:
        # A roof there already, whatever its outline's contrast: a demolition's slab
        # a metre wider than the house, rubble over the old outline. No true new
        # building of the synthetic scenes scored above 0.06 here, nor of LEVIR above
        # 0.18 (their before dates hold grass, trees and earth).
        from .appearance import roofs_before

        was_roof = roofs_before(*scenes, labels, pixel_m, evidence.statistics)
        standing |= was_roof >= ROOF_BEFORE_LEVEL
    standing[0] = False
    if standing.any():
        evidence.standing_before, _ = relabel(np.where(standing[labels], labels, 0))
        labels, n = ndimage.label((labels > 0) & ~standing[labels])
    return labels, n


def _segment_by_appearance(before: Scene, after: Scene, evidence: Evidence,
                           valid: np.ndarray, pixel_m: float,
                           params: DetectionParams) -> np.ndarray:
    """Appearance detector: new roof segments (:mod:`changedet.appearance`) of at least
    the minimum area, without those standing before."""
    from .appearance import new_roof_mask

    evidence.standing_before = evidence.standing_segmented = None
    mask, prob = new_roof_mask(replace(before, valid=valid), replace(after, valid=valid),
                               pixel_m, params.model, stats=evidence.statistics)
    evidence.region_probability = prob
    min_area_px = params.resolved_min_area_m2(pixel_m) / pixel_m**2
    labels, n = at_least(*ndimage.label(mask), min_area_px)
    labels, n = _leave_out_standing(labels, n, evidence, valid, pixel_m, params)
    logger.info("segment (appearance): %d new building(s) (%d left out, their outline "
                "already in the before date)", n, evidence.outlined_before)
    return labels.astype(np.int32)


def _outline_bands(labels: np.ndarray, n: int, reach: float, pad: int,
                   only: np.ndarray | None = None
                   ) -> Iterator[tuple[int, tuple[slice, slice], np.ndarray, np.ndarray]]:
    """Each object's box grown by ``pad``, its mask and the band within ``reach``
    pixels either side of its boundary, on that box (objects ``only`` when given)."""
    for k, box in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if box is None or (only is not None and not only[k]):
            continue
        box = tuple(slice(max(b.start - pad, 0), b.stop + pad) for b in box)
        obj = labels[box] == k
        yield k, box, obj, dilate_disk(obj, reach) & ~erode_disk(obj, reach, border_value=1)


def outline_strength(labels: np.ndarray, n: int, edges: np.ndarray, pixel_m: float,
                     measured: np.ndarray | None = None) -> np.ndarray:
    """Mean edge strength along each labelled object's outline.

    The outline is the band within about a metre (at least 1.5 pixels) either side of
    the object's boundary, the object's own in full even where another object is
    near, so that each object is measured alike in any window that holds it.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, 1..n objects.
    n : int
    edges : (H, W) ndarray
        An edge strength map, e.g. ``Evidence.edges_before``.
    pixel_m : float
    measured : (H, W) ndarray of bool, optional
        Where ``edges`` may be measured (e.g. away from nodata); default everywhere.

    Returns
    -------
    (n + 1,) ndarray of float
        Entry 0 unused; 0 for an object with no measured pixel in its band.
    """
    reach = max(1.5, 1.0 / pixel_m)
    out = np.zeros(n + 1)
    for k, box, _, band in _outline_bands(labels, n, reach, int(math.ceil(reach)) + 1):
        if measured is not None:
            band &= measured[box]
        out[k] = float(edges[box][band].mean()) if band.any() else 0.0
    return out


def outline_along(labels: np.ndarray, n: int, edges: np.ndarray, brightness: np.ndarray,
                  pixel_m: float, measured: np.ndarray | None = None,
                  only: np.ndarray | None = None) -> np.ndarray:
    """How strong an edge runs along each labelled object's outline over most of it.

    At each pixel of the object's rim, the strongest edge within about a metre (at
    least 1.5 pixels) either side of the boundary, counted by the part of it that runs
    along the outline (the cosine between the edge's gradient and the outline's
    normal); the median of that over the rim. A building that stood there, or its
    slab, is outlined all round. The edges of trees, drives and lot lines that cross a
    new house's footprint are strong in places, which raises the mean of
    :func:`outline_strength`, but not along most of the outline. Each object is
    measured on its own in full even where another object is near.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        0 background, 1..n objects.
    n : int
    edges : (H, W) ndarray
        An edge strength map, e.g. ``Evidence.edges_before``: the gradient magnitude
        of ``brightness`` at the scale of :func:`_gradient_sigma_px`.
    brightness : (H, W) ndarray
        The image ``edges`` measures (its gradient's direction is taken here).
    pixel_m : float
    measured : (H, W) ndarray of bool, optional
        Where ``edges`` may be measured (e.g. away from nodata); default everywhere.
    only : (n + 1,) ndarray of bool, optional
        Measure these objects only (the others stay 0).

    Returns
    -------
    (n + 1,) ndarray of float
        Entry 0 unused; 0 for an object with no measured pixel on its rim.
    """
    reach = max(1.5, 1.0 / pixel_m)
    sigma = _gradient_sigma_px(pixel_m)
    # Wide enough that the band's gradient is the one of the whole array.
    pad = int(math.ceil(reach + 4.0 * sigma)) + 1
    out = np.zeros(n + 1)
    for k, box, obj, band in _outline_bands(labels, n, reach, pad, only):
        rim = obj & ~erode_disk(obj, 1.0, border_value=1)
        if measured is not None:
            band &= measured[box]
            rim &= measured[box]
        if not band.any() or not rim.any():
            continue
        # The outline's normal is the gradient of the smoothed object.
        sides = ndimage.gaussian_filter(obj.astype(np.float32), reach)
        n_rows, n_cols = ndimage.sobel(sides, 0), ndimage.sobel(sides, 1)
        image = np.asarray(brightness[box], np.float32)
        g_rows = ndimage.gaussian_filter(image, sigma, order=(1, 0))
        g_cols = ndimage.gaussian_filter(image, sigma, order=(0, 1))
        norm = np.hypot(n_rows, n_cols) * np.hypot(g_rows, g_cols)
        cosine = np.abs(n_rows * g_rows + n_cols * g_cols) / np.maximum(norm, 1e-12)
        along = np.where(band & (norm > 0), edges[box] * cosine, 0.0)
        out[k] = float(np.median(grey_disk(along, reach, np.maximum)[rim]))
    return out


def _regrow_edges(labels: np.ndarray, extent: np.ndarray, valid: np.ndarray,
                  pixel_m: float, level: float) -> np.ndarray:
    """Redraw each object's outline on the change evidence without the texture term.

    The texture measure is raised within a pixel or two of any strong edge, so
    objects found on the score lose a rim; their true outline is where the change
    itself (vegetation and shadow discounted) falls below half the detection
    threshold, searched within two metres of the object.
    """
    grow = disk(max(1.5, 2.0 / pixel_m))
    near = ndimage.grey_dilation(labels, footprint=grow)
    out = np.where((extent > level) & valid & (near > 0), near, 0)
    out[labels > 0] = labels[labels > 0]
    # Keep only the part connected to each object.
    cc, _ = ndimage.label(out > 0)
    keep = np.unique(cc[labels > 0])
    return np.where(np.isin(cc, keep[keep > 0]), out, 0)


def building_scores(labels: np.ndarray, evidence: Evidence, ids: np.ndarray) -> np.ndarray:
    """Each building's score: the mean probability of roof its pixels were given.

    Regions and appearance detectors: over the pixels of the regions (segments)
    the classifier judged, not those a building took in afterwards (filled holes,
    a redrawn outline's fringe), which have no probability of their own; counted as
    0 they pulled a small house's score down by a fifth. Other detectors: the mean
    of their probability map, else of the change score.

    Parameters
    ----------
    labels : (H, W) ndarray of int
    evidence : Evidence
    ids : (K,) ndarray of int
        Labels to score.

    Returns
    -------
    (K,) ndarray of float64
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        return np.zeros(0)
    prob = evidence.region_probability
    if prob is None:
        score = evidence.probability if evidence.probability is not None else evidence.score
        return np.asarray(ndimage.mean(score, labels, ids), float)
    judged = (prob > 0) & (labels > 0)
    n = int(labels.max()) + 1
    total = np.bincount(labels[judged], weights=prob[judged], minlength=n)
    count = np.bincount(labels[judged], minlength=n)
    plain = np.asarray(ndimage.mean(prob, labels, ids), float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count[ids] > 0, total[ids] / count[ids], plain)


#: Scene-wide statistics are measured on chips of about this side, up to MAX_CHIPS of
#: them spread over the scene (:func:`scene_statistics`).
CHIP_PX = 1024
MAX_CHIPS = 8


def statistics_chips(shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """The chips ``(row0, col0, row1, col1)`` of a grid of ``shape`` (height, width)
    that its scene-wide statistics are measured on, by both paths."""
    from .raster import sample_chips

    return sample_chips(shape, CHIP_PX, MAX_CHIPS)


def chip_statistics(before: Scene, after: Scene, params: DetectionParams
                    ) -> SceneStatistics | None:
    """The statistics of one chip of a scene, with the samples behind them kept.

    Parameters
    ----------
    before, after : Scene
        The chip, co-registered (``after`` as resampled, not normalised).
    params : DetectionParams
        With the scene's radiometric fit (``params.fit``) and ground pixel size.

    Returns
    -------
    SceneStatistics or None
        Collected (for :meth:`SceneStatistics.pooled`); None when the chip holds fewer
        than 100 pixels valid in both dates.
    """
    valid = before.valid & after.valid
    if valid.sum() < 100:
        return None
    stats = SceneStatistics(collect=True)
    # Each chip's scores (behind the threshold) are measured with its own noise and
    # medians, which sample the same scene as the pooled ones: a second pass with the
    # pooled values would double the cost for a difference within the sampling error.
    normalised = replace(after, image=params.fit.normalise(after.image, before.image),
                         valid=valid)
    new_building_evidence(replace(before, valid=valid), normalised, params,
                          after_raw=after.image, statistics=stats)
    # (The appearance check is skipped on scenes of fewer than three visible bands,
    # which have no such statistics.)
    if params.detector == "appearance" or appearance_check_applies(params, before, after):
        from .appearance import appearance_statistics

        appearance_statistics(replace(before, valid=valid), replace(after, valid=valid),
                              params.pixel_m(before.grid), stats)
    return stats


def scene_statistics(before: Scene, after: Scene, params: DetectionParams,
                     workers: int = 1) -> SceneStatistics | None:
    """The scene-wide statistics of a pair held in memory, measured as a windowed run
    measures them: pooled from :func:`chip_statistics` on the chips
    :func:`changedet.raster.sample_chips` spreads over the grid.

    One estimator for both paths, so that a scene gives the same buildings whole and in
    windows (pooled from chips, a 2400 px pair's statistics differ a little from
    those measured on all its pixels at once, enough to move a building's outline).

    Parameters
    ----------
    before, after : Scene
        Co-registered, on one grid (``after`` not normalised).
    params : DetectionParams
        With the radiometric fit (``params.fit``).
    workers : int
        Threads measuring the chips.

    Returns
    -------
    SceneStatistics or None
        None when the grid is one chip: its statistics are then those measured on the
        arrays at hand, as :meth:`SceneStatistics.pooled` gives for one chip. None
        too when no chip holds 100 valid pixels.
    """
    from ._log import RunThreadPool
    from .raster import crop_scene

    chips = statistics_chips(before.valid.shape)
    if len(chips) == 1:
        return None
    params = replace(params, ground_pixel_m=params.pixel_m(before.grid))

    def measure(box: tuple[int, int, int, int]) -> SceneStatistics | None:
        r0, c0, r1, c1 = box
        return chip_statistics(crop_scene(before, r0, c0, r1 - r0, c1 - c0),
                               crop_scene(after, r0, c0, r1 - r0, c1 - c0), params)

    with RunThreadPool(max(1, workers)) as pool:
        parts = [st for st in pool.map(measure, chips) if st is not None]
    if not parts:
        # Data only between the chips' pixels (a ring of data, clouds masked out): the
        # arrays at hand hold it, where a windowed run stops with an error.
        logger.info("no sample chip holds valid pixels: statistics from all of them")
        return None
    return SceneStatistics.pooled(parts)


def detect_new_buildings(
    before: Scene, after: Scene, params: DetectionParams = DetectionParams(),
    statistics: SceneStatistics | None = None, workers: int = 1,
) -> tuple[np.ndarray, Evidence]:
    """Normalise, gather evidence and segment new buildings in one call.

    Parameters
    ----------
    before, after : Scene
        Co-registered scenes on one grid (``after`` as resampled, not normalised).
    params : DetectionParams
        ``params.fit`` reuses a radiometric fit; otherwise one is fitted here.
    statistics : SceneStatistics, optional
        Scene-wide statistics of a larger scene this pair is a window of. By default
        :func:`scene_statistics`: pooled from chips, as a windowed run measures them.
    workers : int
        Threads for the radiometric fit, when one is made here, and for the
        statistics.

    Returns
    -------
    labels : (H, W) ndarray of int32
        0 background, 1..N new buildings.
    evidence : Evidence
    """
    _check_pair(before, after)
    valid = before.valid & after.valid
    fit = params.fit
    if fit is None:
        patches = fit_patches(valid.shape)
        structure = (structure_on_patches(before.image, after.image, valid, patches,
                                          params.pixel_m(before.grid))
                     if params.structure_aligned else None)
        fit = fit_radiometry(before.image, after.image, valid, keep_weight=False,
                             patches=patches, workers=workers, structure=structure)
        del structure
        params = replace(params, fit=fit)
    if statistics is None:
        statistics = scene_statistics(before, after, params, workers)
    normalised = replace(after, image=fit.normalise(after.image, before.image), valid=valid)
    evidence = new_building_evidence(replace(before, valid=valid), normalised, params,
                                     after_raw=after.image, statistics=statistics)
    evidence.fit = fit
    if params.detector == "appearance":
        # Each date is judged in its own units: the after scene as it was delivered.
        labels = _segment_by_appearance(before, after, evidence, valid,
                                        params.pixel_m(before.grid), params)
    else:
        labels = segment_new_buildings(evidence, valid, params.pixel_m(before.grid), params,
                                       (before, after))
    labels = outline_stage(labels, evidence, valid, params.pixel_m(before.grid), params)
    return labels, evidence


def _check_pair(before: Scene, after: Scene) -> None:
    """Raise ValueError unless both scenes are sound and on one grid with one band
    layout."""
    check_scene(before, "before")
    check_scene(after, "after")
    if not before.grid.coincides(after.grid) or before.image.shape != after.image.shape:
        # Scenes off one another's grid gave buildings all the same.
        raise ValueError("before and after must be on one grid with the same bands "
                         f"(use raster.align_pair): {before.image.shape} on {before.grid} "
                         f"against {after.image.shape} on {after.grid}")


def _checked_stage_inputs(evidence: Evidence, valid: object, pixel_size_m: object
                          ) -> np.ndarray:
    """``valid`` as an array, after checking it and the pixel size against the
    evidence (a 0/1 mask or a pixel size of NaN gave no buildings, silently)."""
    valid = np.asarray(valid)
    if valid.dtype != bool:
        raise ValueError(f"valid must be a bool array, got {valid.dtype}")
    if valid.shape != np.shape(evidence.score):
        raise ValueError(f"valid {valid.shape} is not on the evidence's grid "
                         f"{np.shape(evidence.score)}")
    if isinstance(pixel_size_m, bool) or not isinstance(pixel_size_m, (int, float, np.number)) \
            or not math.isfinite(pixel_size_m) or pixel_size_m <= 0:
        raise ValueError(f"pixel_size_m must be a finite number of metres > 0, got "
                         f"{pixel_size_m!r}")
    return valid


def outline_stage(labels: np.ndarray, evidence: Evidence, valid: np.ndarray,
                  pixel_size_m: float, params: DetectionParams = DetectionParams()
                  ) -> np.ndarray:
    """The stage after segmentation: outlines redrawn through half-covered pixels.

    Regions and appearance detectors with ``params.half_cover_outlines`` (else the
    labels are returned as they are): :func:`redraw_outlines` on the after scene as
    normalised in ``evidence``; ``evidence.standing_before`` is redrawn with them.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        From :func:`segment_new_buildings`.
    evidence : Evidence
        The evidence the labels were segmented from.
    valid : (H, W) ndarray of bool
    pixel_size_m : float
    params : DetectionParams
        The parameters of the segmentation (``min_area_m2`` applies again).

    Returns
    -------
    (H, W) ndarray of int32
    """
    valid = _checked_stage_inputs(evidence, valid, pixel_size_m)
    labels = np.asarray(labels)
    if not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be an integer array, got {labels.dtype}")
    if not (params.half_cover_outlines and params.detector in ("regions", "appearance")
            and evidence.after_normalised is not None):
        return labels.astype(np.int32)
    if labels.shape != valid.shape or evidence.after_normalised.shape[1:] != valid.shape:
        raise ValueError(f"labels {labels.shape}, valid {valid.shape} and the evidence's "
                         f"after scene {evidence.after_normalised.shape[1:]} must be on "
                         "one grid")
    stats = evidence.statistics if evidence.statistics is not None else SceneStatistics()
    noise = _pixel_noise(evidence.after_normalised, valid, stats, "after")
    # Redrawn from the segmentation's outlines each time: called again (a notebook
    # re-running a cell), a redraw of the redrawn ones shrank them step by step.
    if evidence.standing_segmented is None:
        evidence.standing_segmented = evidence.standing_before
    segmented = evidence.standing_segmented
    labels, standing = redraw_outlines(
        labels, segmented if segmented is not None and segmented.any() else None,
        evidence.after_normalised, valid, noise,
        params.resolved_min_area_m2(pixel_size_m) / pixel_size_m**2)
    # A pixel inside a roof that is no mix of roof and ground (a dark vent, a skylight)
    # leaves the redrawn outline with a pinhole, which segmentation had filled: fill
    # again what it fills.
    max_hole_px = params.piece_scale_m2(pixel_size_m) / pixel_size_m**2
    evidence.standing_before = None if standing is None else \
        fill_small_holes(standing, max_hole_px)
    return fill_small_holes(labels, max_hole_px)
