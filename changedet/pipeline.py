"""The whole analysis, stage after stage, as one function for the CLI and notebooks.

``run_detection`` chains the plain stages of the package (read, align,
co-register, normalise, detect, vectorise, measure, group, check the claim) and
returns everything an analyst or :mod:`changedet.outputs` needs in one
:class:`DetectionResult`. It writes no file: writing is
:func:`changedet.outputs.write_outputs`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import rasterio
import shapely

from . import __version__
from ._log import logger, percent_text, recorded_warnings, warn_analyst
from .aoi import keep_labels_in_aoi
from .errors import InputError
from .raster import Grid, Scene
from .windowed import DEFAULT_WINDOW_PX, StripSurvey

#: ``progress(stage, fraction)``: called with a short stage name and the fraction
#: (0..1) of the whole run done when the stage starts; 1.0 at the end.
ProgressCallback = Callable[[str, float], None]

# Rough share of the run time of each stage, for a progress bar that moves evenly.
_STAGES = (
    ("reading", 0.10),
    ("aligning", 0.10),
    ("co-registering", 0.25),
    ("detecting", 0.35),
    ("measuring", 0.15),
    ("summarising", 0.05),
)


@dataclass
class DetectionResult:
    """Everything one run found, for files, reports and notebooks.

    Attributes
    ----------
    buildings : list of changedet.measure.Building
        New buildings, polygons in ``crs`` (metres): the analysis CRS, or the local
        UTM zone when that CRS does not measure true areas (e.g. Web Mercator).
    sites : list of changedet.measure.Site
        Buildings grouped by distance.
    claim : changedet.measure.ClaimCheck or None
        The verdicts, when a claim was given.
    change_mask : (H, W) ndarray of uint8 or None
        On ``grid``: 0 no new building, 1 new building, 255 no data / outside AOI.
        None after a windowed run, whose mask is the file ``change_path``.
    grid : Grid
        The analysis grid (projected, metres).
    crs : rasterio.crs.CRS
        CRS of the building and site polygons: the grid's, or the local UTM zone
        when the grid's CRS is not fit for measuring areas (e.g. Web Mercator).
    registration : dict
        ``Registration.summary(grid)``: ``shift_px``, ``shift_m``, ``reliability``,
        ``method``...
    quicklooks : dict of str to ndarray of uint8
        ``"before"`` and ``"after"`` (registered, normalised) (h, w, 3) display images
        of ``grid`` (decimated after a windowed run, with the matching (h, w)
        ``"change"`` mask).
    summary : dict
        The content of ``summary.json``.
    timings : dict of str to float
        Seconds per stage.
    labels : (H, W) ndarray of int32 or None
        Segmentation labels (0 background), kept for notebooks.
    evidence : object or None
        The :class:`changedet.change.Evidence` maps, kept for notebooks.
    aoi : shapely geometry or None
        The AOI in the analysis CRS.
    change_path : str or None
        Windowed runs: a tiled GeoTIFF of the change mask, in a scratch folder that
        lives as long as this object.
    standing_before : list of changedet.measure.Building
        Changed areas in a building's shape whose outline (or, with the appearance
        check, whose roof) was already there before (a demolished house's remains, a
        re-covered roof): left out of ``buildings`` and reported apart.
    """

    buildings: list[Any]
    sites: list[Any]
    claim: Any | None
    change_mask: np.ndarray
    grid: Grid
    crs: Any
    registration: dict[str, Any]
    quicklooks: dict[str, np.ndarray]
    summary: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    labels: np.ndarray | None = None
    evidence: Any | None = None
    aoi: shapely.Geometry | None = None
    change_path: str | None = None
    scratch: Any | None = field(default=None, repr=False)
    standing_before: list[Any] = field(default_factory=list)

    def __repr__(self) -> str:
        # What was found, not every array and polygon (a notebook prints the result).
        built = sum(float(b.area_m2) for b in self.buildings)
        claim = "" if self.claim is None else f", claim {self.claim.overall}"
        mask = ("change mask in memory" if self.change_mask is not None
                else f"change mask {self.change_path!r}")
        return (f"DetectionResult({len(self.buildings)} building(s) of {built:,.0f} m² in "
                f"{len(self.sites)} site(s){claim}, {len(self.standing_before)} standing "
                f"before, {mask}, {self.grid!r})")

    def __getstate__(self) -> dict[str, Any]:
        # A windowed run's mask is a file in a scratch folder that goes with this
        # object: a copy (pickle, a process pool, joblib's cache) carries the file's
        # bytes (compressed) and writes its own folder.
        state = self.__dict__.copy()
        if self.change_mask is None and self.change_path is not None:
            with open(self.change_path, "rb") as f:
                state["_change_tif"] = f.read()
            state["change_path"] = state["scratch"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        data = state.pop("_change_tif", None)
        self.__dict__.update(state)
        if data is not None:
            from .windowed import temporary_change_path

            self.scratch, self.change_path = temporary_change_path()
            with open(self.change_path, "wb") as f:
                f.write(data)

    def read_change_mask(self) -> np.ndarray:
        """The (H, W) uint8 change mask, from memory or from ``change_path``."""
        if self.change_mask is not None:
            return self.change_mask
        import rasterio

        with rasterio.open(self.change_path) as ds:
            return ds.read(1)

    @property
    def footprints(self) -> list[shapely.Polygon]:
        """The new buildings' polygons, in ``crs`` (metres; not always ``grid.crs``)."""
        return [b.polygon for b in self.buildings]


#: Detectors an analyst may choose (``changedet detect --detector``).
DETECTORS = ("regions", "appearance")
CLAIM_BASES = ("footprint", "envelope")
#: Ranges of the numeric options, (low, high), checked by :class:`DetectOptions` and
#: used by the command line's option types, so that the two cannot drift apart.
MIN_AREA_M2_RANGE = (0, 1e7)          # low end open
SITE_GAP_M_RANGE = (0, 1e5)
CLAIM_M2_RANGE = (0, 1e9)             # both ends open
CLAIM_SITES_RANGE = (1, 10_000)
WORKERS_RANGE = (1, 256)
WINDOW_PX_RANGE = (64, 65_536)        # the command line starts at 256 (smaller: tests)


def _check_number(name: str, value: Any, low: float, high: float | None, *,
                  low_open: bool = False, high_open: bool = False,
                  integer: bool = False) -> None:
    """Raise ValueError unless ``value`` is None or a number within the range."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if integer and not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    v = float(value)
    above = v > low if low_open else v >= low
    below = high is None or (v < high if high_open else v <= high)
    if not (math.isfinite(v) and above and below):
        lo = "(" if low_open else "["
        hi = "inf)" if high is None else (f"{high:g})" if high_open else f"{high:g}]")
        raise ValueError(f"{name} must be a finite number in {lo}{low:g}, {hi}, got {value!r}")


@dataclass
class DetectOptions:
    """Every knob of :func:`run_detection` (all optional).

    Attributes
    ----------
    bands : tuple of int or None
        1-based bands (same for both scenes); default: those tagged red, green, blue,
        else the first three that are not alpha.
    nir_band : int or None
        1-based near-infrared band, when the scenes have one.
    coreg : str
        ``"global"``, ``"local"`` or ``"none"``.
    min_area_m2 : float or None
        Smallest building kept; default derived from the pixel size.
    site_gap_m : float or None
        Buildings closer than this belong to one site; default derived from the
        pixel size and the buildings found.
    aoi : str, path-like or None
        Vector file of the area of interest (any CRS it declares).
    claim_m2, claim_tolerance, claim_sites, claim_basis
        The claim to check (see :func:`changedet.measure.check_claim`).
    window_px : int or None
        Core window side (64 to 65,536 px) for scenes larger than about two windows
        (processed in windows, in bounded memory); None: always the whole scene at
        once. Every option is checked against the command line's range when the
        options are made (ValueError).
    workers : int or None
        Windows processed at once (threads); default up to 2.
    dask_scheduler : str or None
        Address of a dask.distributed scheduler that runs the windows.
    keep_standing : bool
        Report changed areas whose outline or roof was already in the before image
        (a rebuild on an old footprint, or a demolition's remains) as new buildings
        instead of leaving them out (``DetectionParams.outline_before`` off).
    detector : str
        ``"regions"`` (default: candidate regions of change judged by the shipped
        classifier) or ``"appearance"`` (segments that look like roofs in the after
        scene and did not in the before scene; better on real imagery, worse on the
        synthetic scenes). See :class:`changedet.change.DetectionParams`.
    appearance_check : bool
        Regions detector: keep a candidate region the classifier rejects when the
        appearance detector confidently finds a new roof there too, and leave out a
        building whose footprint looked like a roof before (default; see
        ``DetectionParams.appearance_check``).
    """

    bands: tuple[int, ...] | None = None
    nir_band: int | None = None
    coreg: str = "global"
    min_area_m2: float | None = None
    site_gap_m: float | None = None
    aoi: str | None = None
    claim_m2: float | None = None
    claim_tolerance: float = 0.10
    claim_sites: int | None = None
    claim_basis: str = "footprint"
    window_px: int | None = DEFAULT_WINDOW_PX
    workers: int | None = None
    dask_scheduler: str | None = None
    keep_standing: bool = False
    detector: str = "regions"
    appearance_check: bool = True

    def __post_init__(self) -> None:
        # Checked here, not minutes into a run, with the command line's ranges: NaN
        # passes every comparison and a NaN area reached summary.json's writer.
        from .coregister import METHODS

        if self.detector not in DETECTORS:
            raise ValueError(f"unknown detector {self.detector!r}; use one of {DETECTORS}")
        if self.coreg not in METHODS:
            raise ValueError(f"unknown co-registration {self.coreg!r}; use one of {METHODS}")
        if self.aoi is not None and not isinstance(self.aoi, (str, os.PathLike)):
            # (A shapely geometry has no CRS to place it by: it failed minutes later.)
            raise ValueError(f"aoi must be the path of a vector file (with its CRS), got "
                             f"{type(self.aoi).__name__}")
        if self.claim_basis not in CLAIM_BASES:
            raise ValueError(f"unknown claim basis {self.claim_basis!r}; "
                             f"use one of {CLAIM_BASES}")
        _check_number("min_area_m2", self.min_area_m2, *MIN_AREA_M2_RANGE, low_open=True)
        _check_number("site_gap_m", self.site_gap_m, *SITE_GAP_M_RANGE)
        _check_number("claim_m2", self.claim_m2, *CLAIM_M2_RANGE, low_open=True,
                      high_open=True)
        _check_number("claim_tolerance", self.claim_tolerance, 0.0, 1.0, high_open=True)
        _check_number("claim_sites", self.claim_sites, *CLAIM_SITES_RANGE, integer=True)
        _check_number("window_px", self.window_px, *WINDOW_PX_RANGE, integer=True)
        _check_number("workers", self.workers, *WORKERS_RANGE, integer=True)
        _check_number("nir_band", self.nir_band, 1, None, integer=True)
        if self.bands is not None and not isinstance(self.bands, (str, bytes)):
            from .raster import band_numbers

            # A list or an integer array (of a notebook) reads as the tuple it holds,
            # each band once.
            self.bands = band_numbers(self.bands)
        for b in self.bands or ():
            _check_number("bands", b, 1, None, integer=True)
        if self.claim_sites is not None and self.claim_m2 is None:
            raise ValueError("claim_sites needs claim_m2: the number of sites is part of "
                             "a claim of their area")

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}

    def detection_params(self, grid: Grid | None = None) -> Any:
        """The :class:`changedet.change.DetectionParams` these options ask for, with
        the ground pixel size of the analysis ``grid`` when given."""
        from .change import DetectionParams
        from .measure import ground_pixel_m

        params = DetectionParams(min_area_m2=self.min_area_m2, detector=self.detector,
                                 ground_pixel_m=None if grid is None else ground_pixel_m(grid),
                                 appearance_check=self.appearance_check)
        return replace(params, outline_before=None) if self.keep_standing else params

    def local_threads(self) -> int:
        """Threads of a local run: ``workers``, else both cores of a laptop."""
        return self.workers or min(2, os.cpu_count() or 1)


def quicklook(scene: Scene, limits: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A display image of a scene: visible bands stretched to 8 bits.

    Parameters
    ----------
    scene : Scene
    limits : (3, 2) ndarray of float, optional
        Per displayed band ``(low, high)`` values mapped to 0 and 255; default the
        2nd and 98th percentiles over valid pixels. Passing the before scene's
        limits for the (normalised) after scene shows both in the same colours.

    Returns
    -------
    image : (H, W, 3) ndarray of uint8
        A single band is shown as grey; invalid pixels are black.
    limits : (3, 2) ndarray of float
        The limits used.
    """
    vis = scene.visible[:3]
    if vis.shape[0] < 3:
        vis = np.repeat(vis[:1], 3, axis=0)
    valid = scene.valid
    if limits is None:
        limits = (np.percentile(vis[:, valid], [2, 98], axis=1).T if valid.any()
                  else np.tile([0.0, 1.0], (3, 1)))
    out = np.zeros(vis.shape[1:] + (3,), dtype=np.uint8)
    for i, (band, (lo, hi)) in enumerate(zip(vis, limits)):
        scaled = (band - lo) / max(float(hi - lo), 1e-6)
        out[..., i] = np.clip(scaled * 255 + 0.5, 0, 255).astype(np.uint8)
    out[~valid] = 0
    return out, np.asarray(limits, dtype=float)


def default_site_gap_m(pixel_size_m: float) -> float:
    """Largest gap between buildings of one site when none is given.

    Buildings of one compound are separated by yards and roads a few tens of metres
    wide; separate sites by more. 30 m, but never less than 10 pixels so that
    coarse imagery does not split one building's broken outline into several sites.
    """
    return max(30.0, 10.0 * pixel_size_m)


#: GDAL block cache of windowed runs, in MiB.
GDAL_CACHE_MB = 128


class _StageClock:
    """Times the stages of a run and reports them to a progress callback."""

    def __init__(self, progress: ProgressCallback | None):
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.shares = dict(_STAGES)
        self.current: str | None = None
        self.start = time.perf_counter()
        self.done = 0.0

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.timings[self.current] = round(now - self.start, 3)
            self.done += self.shares.get(self.current, 0.0)
        self.current, self.start = name, now
        if name != "done":
            logger.info("%s...", name)
        if self.progress is not None:
            self.progress(name, min(self.done, 1.0))

    def within(self, fraction: float) -> None:
        """Report progress ``fraction`` (0..1) through the current stage."""
        if self.progress is not None and self.current is not None:
            share = self.shares.get(self.current, 0.0)
            self.progress(self.current, min(self.done + share * fraction, 1.0))

    def finish(self) -> dict[str, float]:
        self("done")
        self.timings.pop("done", None)
        self.timings["total"] = round(sum(self.timings.values()), 3)
        return self.timings


def run_detection(
    before: str | os.PathLike[str],
    after: str | os.PathLike[str],
    options: DetectOptions | None = None,
    progress: ProgressCallback | None = None,
) -> DetectionResult:
    """Find and measure the new buildings between two scenes, and check a claim.

    Scenes larger than about two windows (``options.window_px``), or any scene when a
    dask scheduler is given, are processed in windows (:mod:`changedet.windowed`):
    memory then depends on the window size, not the scene size.

    Parameters
    ----------
    before, after : str or path-like
        The two scenes (any raster GDAL reads, any CRS).
    options : DetectOptions, optional
        Bands, co-registration method, sizes, AOI, claim and windowing.
    progress : callable, optional
        ``progress(stage, fraction)``, see :data:`ProgressCallback`.

    Returns
    -------
    DetectionResult

    Raises
    ------
    InputError
        Unreadable scenes or AOI.
    ProcessingError
        The scenes do not overlap or cannot be analysed.
    """
    from .raster import analysis_grid, read_header

    opts = options or DetectOptions()
    stage = _StageClock(progress)
    with recorded_warnings() as warned:
        stage("reading")
        header_b = read_header(before, bands=opts.bands, nir_band=opts.nir_band)
        header_a = read_header(after, bands=opts.bands, nir_band=opts.nir_band)
        if _same_local_file(before, after):
            # Not an empty result: "no new building" would read as a refuted claim.
            raise InputError(os.fspath(after), f"is the same file as {os.fspath(before)}; "
                                               "give the scene of the other date")
        grid = analysis_grid(header_b.grid)
        if opts.dask_scheduler is not None or (
                opts.window_px is not None and grid.height * grid.width > 2 * opts.window_px**2):
            result = _run_windowed(header_b, header_a, grid, opts, stage)
        else:
            result = _run_whole(before, after, opts, stage)
    # What the run warned about travels with its results (the report, summary.json),
    # not only on stderr, which -q silences and a notebook may not show.
    result.summary["warnings"] = list(dict.fromkeys(warned))
    return result


def _same_local_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two plain local paths name one file (GDAL and URI paths: False)."""
    texts = (os.fspath(a), os.fspath(b))
    if any("://" in t or t.startswith("/vsi") for t in texts):
        return False
    try:
        return os.path.samefile(*texts)
    except (OSError, ValueError):
        return False


#: Below this share of the before scene covered by the after scene, the run says so.
PARTIAL_OVERLAP = 0.9


def _warn_partial_overlap(before: str | os.PathLike[str], after: str | os.PathLike[str],
                          fraction: float) -> None:
    """Warn that buildings beyond the overlap cannot be found: a claimed site there
    is reported "not found", which is no evidence against the claim."""
    if fraction < PARTIAL_OVERLAP:
        # A small overlap keeps its first figures: "0 %" read as no overlap at all.
        warn_analyst("%s covers only %s %% of %s: buildings outside the overlap cannot "
                     "be found, and a claimed site there is reported as not found",
                     os.fspath(after), percent_text(fraction), os.fspath(before))


def _warn_changed_majority(after: str | os.PathLike[str] | None, fit: Any,
                           detector: str) -> None:
    """Warn that most of the scene changed, which the colour normalisation of the
    regions detector can only partly see through (``fit``: the run's RadiometricFit)."""
    from .radiometry import CHANGED_MAJORITY

    share = getattr(fit, "changed_share", None)
    if detector == "regions" and share is not None and share > CHANGED_MAJORITY:
        warn_analyst("the structure of %.0f %% of the textured ground differs between the "
                     "dates (of %s): the colour normalisation, weighted to the unchanged "
                     "structure, may still take change for a change of colour, and "
                     "buildings be missed or cut; check the results by eye "
                     "(--detector appearance judges each date on its own, and takes "
                     "debris for roofs)", 100 * share,
                     "the after scene" if after is None else os.fspath(after))


def _run_whole(before: str | os.PathLike[str], after: str | os.PathLike[str],
               opts: DetectOptions, stage: _StageClock) -> DetectionResult:
    """The whole scene in memory at once."""
    from .change import appearance_check_applies, building_scores, detect_new_buildings
    from .radiometry import structure_aligned
    from .raster import align_checked_pair, read_scene
    from .vectorize import labels_at_edge, polygons_from_labels

    # run_detection read the headers, and warned about their bands, already.
    scene_b = read_scene(before, bands=opts.bands, nir_band=opts.nir_band, warn=False)
    scene_a = read_scene(after, bands=opts.bands, nir_band=opts.nir_band, warn=False)
    stage("aligning")
    pair = align_checked_pair(scene_b, scene_a)
    _warn_partial_overlap(before, after, pair.overlap_fraction)
    grid = pair.grid
    aoi = None
    if opts.aoi is not None:
        from .aoi import read_aoi

        aoi = read_aoi(opts.aoi, grid)
    stage("co-registering")
    pair, registration, reg_summary = _coregister(pair, opts.coreg)
    residual = registration.range_residual_px
    stage("detecting")
    params = opts.detection_params(grid)
    params = replace(params, structure_aligned=structure_aligned(registration,
                                                                 params.pixel_m(grid)))
    labels, evidence = detect_new_buildings(pair.before, pair.after, params,
                                            workers=opts.local_threads())
    _warn_changed_majority(after, evidence.fit, params.detector)
    standing = evidence.standing_before
    if aoi is not None:
        labels = keep_labels_in_aoi(labels, aoi.mask)
        if standing is not None:
            standing = keep_labels_in_aoi(standing, aoi.mask)
    stage("measuring")
    labelled = polygons_from_labels(labels, grid)
    scores = [float(v) for v in building_scores(labels, evidence,
                                                 [lab for lab, _ in labelled])]
    valid = pair.before.valid & pair.after.valid
    at_edge = labels_at_edge(labels, valid)
    measured = _measure([poly for _, poly in labelled], scores,
                        [bool(at_edge[lab]) for lab, _ in labelled], grid, residual, opts)
    standing_polygons = [] if standing is None else [
        poly for _, poly in polygons_from_labels(standing, grid)]
    stage("summarising")
    if aoi is not None:
        valid &= aoi.mask  # after the edge test: the AOI's boundary is not the imagery's
    change = np.where(valid, (labels > 0).astype(np.uint8), np.uint8(255)).astype(np.uint8)
    look_before, limits = quicklook(pair.before)
    normalised = getattr(evidence, "after_normalised", None)
    shown_after = pair.after if normalised is None else replace(pair.after, image=normalised)
    looks = {"before": look_before, "after": quicklook(shown_after, limits)[0]}
    params_used = _parameters_used(opts, params, measured, evidence.threshold, grid,
                                   appearance_check_applies(params, scene_b, scene_a))
    result = DetectionResult(
        buildings=measured["buildings"], sites=measured["sites"], claim=measured["claim"],
        change_mask=change, grid=grid, crs=measured["crs"], registration=reg_summary,
        quicklooks=looks, summary={}, timings=stage.timings, labels=labels,
        evidence=evidence, aoi=None if aoi is None else aoi.geometry,
        standing_before=_measure_standing(standing_polygons, grid, residual, measured))
    inputs = {"before": _scene_info(scene_b), "after": _scene_info(scene_a),
              "aoi": None if aoi is None else _input_path(opts.aoi)}
    stage.finish()
    result.summary = build_summary(result, inputs, params_used,
                                   overlap_fraction=pair.overlap_fraction)
    return result


def _parameters_used(opts: DetectOptions, params: Any, measured: dict[str, Any],
                     threshold: float, grid: Grid, appearance_checked: bool) -> dict[str, Any]:
    """The options as asked and the values the run derived from the data, for
    ``summary.json`` ``parameters``. ``threshold`` (of the change evidence) is None
    for the appearance detector, which does not use it; ``appearance_check_applied``
    is false where the check was asked for but the scenes have fewer than three
    visible bands."""
    return opts.as_dict() | {
        "appearance_check_applied": appearance_checked,
        "site_gap_m": measured["gap_m"],
        "min_area_m2_used": params.resolved_min_area_m2(params.pixel_m(grid)),
        "outline_before_level": params.outline_before,
        "threshold": float(threshold) if opts.detector == "regions" else None}


def _measure(polygons: list[shapely.Polygon], scores: list[float], partial: list[bool],
             grid: Grid, residual_px: float, opts: DetectOptions) -> dict[str, Any]:
    """Buildings measured, grouped into sites, and the claim checked."""
    from .measure import check_claim, ground_pixel_m, group_sites, measure_buildings, metric_crs

    mcrs = metric_crs(grid.crs, grid.bounds)
    ground_px = ground_pixel_m(grid, mcrs)
    buildings = measure_buildings(polygons, grid.crs, ground_px, measure_crs=mcrs,
                                  coreg_residual_px=residual_px, scores=scores,
                                  partial=partial)
    gap_m = opts.site_gap_m if opts.site_gap_m is not None else default_site_gap_m(ground_px)
    sites = group_sites(buildings, gap_m, pixel_size_m=ground_px, coreg_residual_px=residual_px,
                        crs=mcrs)
    claim = None
    if opts.claim_m2 is not None:
        claim = check_claim(sites, opts.claim_m2, tolerance=opts.claim_tolerance,
                            n_sites=opts.claim_sites, basis=opts.claim_basis)
    return {"buildings": buildings, "sites": sites, "claim": claim, "crs": mcrs,
            "ground_px": ground_px, "gap_m": gap_m}


def _measure_standing(polygons: list[shapely.Geometry], grid: Grid, residual_px: float,
                      measured: dict[str, Any]) -> list[Any]:
    """The buildings left out as standing before, measured as the new ones were
    (``measured`` from :func:`_measure`: same CRS and pixel size; no sites), in the
    order given (raster order of their first pixels in both paths)."""
    from .measure import measure_buildings

    if polygons:
        logger.info("%d changed area(s) shaped like a building left out: their outline "
                    "or roof was already in the before image (summary.json "
                    "standing_before; --keep-standing reports them as new)",
                    len(polygons))
    return measure_buildings(polygons, grid.crs, measured["ground_px"],
                             coreg_residual_px=residual_px, measure_crs=measured["crs"])


def _footprint_px(source: Grid, grid: Grid, points_per_side: int = 21,
                  coarse: bool = False) -> shapely.Geometry:
    """The outline of ``source``'s pixels in ``grid``'s pixel coordinates (col, row).

    Each side is densified, so that a footprint from another CRS keeps its curved
    sides; either grid may be rotated or south-up (their corners, not their bounds,
    are carried over). ``coarse``: the box of GDAL's bounds instead, for footprints
    that reach beyond the target CRS's domain (a continent in lon/lat over a UTM grid).
    """
    from rasterio.warp import transform

    t = np.linspace(0.0, 1.0, points_per_side)
    w, h = float(source.width), float(source.height)
    cols = np.concatenate([t * w, np.full_like(t, w), (1 - t) * w, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * h, np.full_like(t, h), (1 - t) * h])
    xs, ys = source.transform @ (cols, rows)
    if source.crs != grid.crs and coarse:
        # GDAL's bounds, which skip points beyond the domain: coarser but safe.
        from rasterio.warp import transform_bounds

        left, bottom, right, top = transform_bounds(source.crs, grid.crs, *source.bounds,
                                                    densify_pts=21)
        xs, ys = np.array([left, right, right, left]), np.array([top, top, bottom, bottom])
    elif source.crs != grid.crs:
        try:
            xs, ys = (np.asarray(v) for v in transform(source.crs, grid.crs, xs, ys))
        except Exception:  # noqa: BLE001 - PROJ refuses points beyond the target's domain
            return _footprint_px(source, grid, points_per_side, coarse=True)
    c, r = ~grid.transform @ (np.asarray(xs), np.asarray(ys))
    ok = np.isfinite(c) & np.isfinite(r)  # points beyond the target CRS's domain
    outline = shapely.Polygon(np.column_stack([c[ok], r[ok]])) if ok.sum() >= 3 else None
    if outline is None or not outline.is_valid:
        if not coarse and source.crs != grid.crs:
            # An outline cut or wrapped by the target CRS's domain (a self-crossing
            # ring): GDAL's bounds instead.
            return _footprint_px(source, grid, points_per_side, coarse=True)
        return shapely.make_valid(outline) if outline is not None else shapely.Polygon()
    return outline


def _overlap_grid(grid: Grid, before: Scene, after: Scene) -> tuple[Grid, float]:
    """The analysis grid cropped to the footprint the two scenes share.

    Windowed runs cannot afford the whole-scene path's crop to the valid pixels; they
    crop to the box, in the grid's pixels, of the overlap of the two footprints, and
    invalid pixels inside stay invalid. The footprints are carried into the grid's
    pixels corner by corner, so that rotated and south-up grids crop as north-up ones.

    Returns
    -------
    Grid
        The cropped grid.
    float
        The share of the before scene's footprint that the after scene covers.
    """
    from .errors import ProcessingError
    from .raster import MIN_OVERLAP_PX

    whole = shapely.box(0, 0, grid.width, grid.height)
    before_px = _footprint_px(before.grid, grid).intersection(whole)
    shared = _footprint_px(after.grid, grid).intersection(before_px)
    row0 = col0 = row1 = col1 = 0
    if not shared.is_empty:
        c0, r0, c1, r1 = shared.bounds
        row0 = max(0, int(np.floor(r0 + 1e-6)))
        col0 = max(0, int(np.floor(c0 + 1e-6)))
        row1 = min(grid.height, int(np.ceil(r1 - 1e-6)))
        col1 = min(grid.width, int(np.ceil(c1 - 1e-6)))
    if row1 - row0 < MIN_OVERLAP_PX or col1 - col0 < MIN_OVERLAP_PX:
        raise ProcessingError(
            f"{after.path} overlaps {before.path} by only {max(0, col1 - col0)} x "
            f"{max(0, row1 - row0)} pixels; at least {MIN_OVERLAP_PX} x {MIN_OVERLAP_PX} "
            "are needed")
    cropped = grid.window(row0, col0, row1 - row0, col1 - col0)
    return cropped, float(min(1.0, shared.area / max(before_px.area, 1e-9)))


def _windowed_overlap(full_grid: Grid, grid: Grid, before: Scene, resample_before: bool,
                      both_valid_px: int) -> float:
    """The share of the before scene's valid pixels that the after scene covers, as
    the whole-scene path measures it, estimated on strips for a windowed run.

    The pixels valid in both come from the fit's strips over the cropped ``grid``
    (``both_valid_px``); the before scene's valid pixels from strips read alike over
    the whole analysis grid ``full_grid``, beyond the crop included.
    """
    from .radiometry import fit_patches
    from .raster import OpenDatasets, read_region

    before_px = strip_px = 0
    with OpenDatasets() as datasets:
        for r0, c0, r1, c1 in fit_patches(full_grid.shape):
            strip = read_region(before, full_grid.window(r0, c0, r1 - r0, c1 - c0),
                                resample=resample_before, datasets=datasets)
            before_px += int(strip.valid.sum())
            strip_px += strip.valid.size
    if before_px == 0:
        return 0.0
    crop_px = sum((r1 - r0) * (c1 - c0) for r0, c0, r1, c1 in fit_patches(grid.shape))
    both = both_valid_px / max(crop_px, 1) * grid.height * grid.width
    return float(min(1.0, both / (before_px / strip_px * full_grid.height * full_grid.width)))


def _path_for_workers(path: str) -> str:
    """A local file's relative path made absolute; anything else as it is: GDAL
    virtual paths (``/vsis3/...``), URLs (``s3://...``) and subdatasets
    (``GTIFF_DIR:1:x.tif``, which an absolute prefix would break)."""
    if os.path.isabs(path) or not os.path.isfile(path):
        return path
    return os.path.abspath(path)


def _run_windowed(header_b: Scene, header_a: Scene, full_grid: Grid, opts: DetectOptions,
                  stage: _StageClock) -> DetectionResult:
    """The scene in windows with a halo, from the statistics of a first pass."""
    from .raster import check_same_bands
    from .windowed import (QUICKLOOK_PX, VALID_CROP_PAD_PX, DaskRunner, data_island,
                           survey_strips, thread_runner)

    check_same_bands(header_b, header_a)
    stage("aligning")
    grid, _ = _overlap_grid(full_grid, header_b, header_a)
    resample_before = full_grid != header_b.grid
    # Reach the cluster before minutes of work, not after.
    runner = (DaskRunner(opts.dask_scheduler) if opts.dask_scheduler is not None
              else thread_runner(opts.local_threads()))
    try:
        # GDAL's block cache defaults to 5 % of the RAM: writing change.tif window by
        # window would fill it in proportion to the scene. A small one keeps memory
        # bounded by the windows.
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB * 2**20):
            survey: StripSurvey | None = survey_strips(header_b, header_a, grid,
                                                       resample_before, opts.local_threads())
            overlap = None
            if survey.sparse or survey.both_valid_px < survey.strip_px:
                # Scanned over the before scene's whole grid: the share of it the after
                # scene covers comes out exact, where the strips would miss the island.
                # Where the strips only meet nodata (a collar), the crop is the whole-
                # scene path's own, so that both place their chips alike: with the
                # collar kept, a 2400 px pair's chips fell elsewhere, and a residence
                # came out 5 % apart.
                island = data_island(header_b, header_a, full_grid, resample_before,
                                     opts.local_threads(),
                                     pad=VALID_CROP_PAD_PX if survey.sparse else 0)
                if island.before_valid_px:
                    overlap = island.both_valid_px / island.before_valid_px
                if island.box is not None:
                    r0, c0, r1, c1 = island.box
                    logger.info("data valid in both scenes only within rows %d-%d, columns "
                                "%d-%d of %d x %d: the run is cropped to them", r0, r1, c0,
                                c1, *full_grid.shape)
                    # A cropped grid has other strips: the first pass reads them.
                    grid, survey = full_grid.window(r0, c0, r1 - r0, c1 - c0), None
            aoi = None
            if opts.aoi is not None:
                from .aoi import read_aoi

                aoi = read_aoi(opts.aoi, _decimated(grid, QUICKLOOK_PX), fine=grid)
            return _detect_in_windows(header_b, header_a, full_grid, grid, resample_before,
                                      aoi, runner, opts, stage, survey, overlap)
    finally:
        if isinstance(runner, DaskRunner):
            runner.close()


def _detect_in_windows(header_b: Scene, header_a: Scene, full_grid: Grid, grid: Grid,
                       resample_before: bool, aoi: Any, runner: Any, opts: DetectOptions,
                       stage: _StageClock, survey: StripSurvey | None = None,
                       overlap: float | None = None) -> DetectionResult:
    from affine import Affine

    from .change import appearance_check_applies
    from .windowed import (QUICKLOOK_PX, CellMeans, WindowTask, context_px, first_pass,
                           plan_windows, run_windows, temporary_change_path)

    stage("co-registering")
    params = opts.detection_params(grid)
    first = first_pass(header_b, header_a, grid, opts.coreg, resample_before, params,
                       workers=opts.local_threads(), survey=survey)
    if overlap is None:
        # The strips as read before co-registration, as the whole-scene path counts
        # the overlap: registered, the after scene's shifted edge is nodata (the
        # fixture read 0.9958 windowed against 1.0 whole).
        overlap = _windowed_overlap(full_grid, grid, header_b, resample_before,
                                    first.both_valid_px if survey is None
                                    else survey.both_valid_px)
    _warn_partial_overlap(header_b.path, header_a.path, overlap)
    _warn_changed_majority(header_a.path, first.fit, params.detector)
    registration = first.registration
    reg_summary = registration.summary(grid)
    correction = registration.correction if registration.applied else Affine.identity()
    residual = registration.range_residual_px
    stage("detecting")
    pixel_m = params.pixel_m(grid)
    params = replace(params, fit=first.fit)
    margin, group = context_px(pixel_m, params)
    window_px = opts.window_px or DEFAULT_WINDOW_PX
    # Beyond the untrusted margin, a band of 40 m (at least 48 px) in which groups
    # crossing a seam are still seen whole: most need no retry.
    halo = margin + max(48, int(np.ceil(40.0 / pixel_m)))
    windows = plan_windows(grid.shape, window_px, halo)
    task_b, task_a = header_b, header_a
    if opts.dask_scheduler is not None:
        # Workers run in their own folders: a relative path would name another file.
        task_b, task_a = (replace(h, path=_path_for_workers(h.path)) for h in (header_b, header_a))
    template = WindowTask(task_b, task_a, grid, windows[0], correction, resample_before,
                          params, dict(first.statistics.values), margin, group,
                          aoi=None if aoi is None else aoi.geometry)
    # The report's images are summed from the windows' own pixels as they pass:
    # reading the scene again for them would cost as much as the I/O floor.
    qgrid = _decimated(grid, QUICKLOOK_PX)
    factor = int(round(qgrid.transform.a / grid.transform.a))
    template = replace(template, quicklook_factor=factor)
    looks_sum = CellMeans(qgrid.shape, len(header_b.bands))
    scratch, change_path = temporary_change_path()
    logger.info("windowed: %d window(s) of %d px, halo %d px (margin %d), %s", len(windows),
                window_px, halo, margin, f"dask at {opts.dask_scheduler}"
                if opts.dask_scheduler else "threads")
    stitched = run_windows(template, windows, halo, runner, change_path,
                           max_retry_px=window_px, progress=stage.within, quicklook=looks_sum)
    stage("measuring")
    new = [b for b in stitched.buildings if not b.standing_before]
    measured = _measure([b.polygon for b in new], [b.score for b in new],
                        [b.cut or b.at_edge for b in new], grid, residual, opts)
    standing = _measure_standing(
        [b.polygon for b in stitched.buildings if b.standing_before], grid, residual,
        measured)
    stage("summarising")
    image_b, valid_b = looks_sum.date(0)
    image_a, valid_a = looks_sum.date(1)
    del looks_sum
    look_b = replace(header_b, image=image_b, valid=valid_b, grid=qgrid)
    look_a = replace(header_a, image=image_a, valid=valid_a, grid=qgrid)
    look_before, limits = quicklook(look_b)
    look_after = quicklook(replace(look_a, image=first.fit.apply(look_a.image)), limits)[0]
    looks = {"before": look_before, "after": look_after,
             "change": _decimated_change(change_path, factor, qgrid.shape)}
    params_used = _parameters_used(opts, params, measured,
                                   first.statistics.values["threshold"], grid,
                                   appearance_check_applies(params, header_b, header_a)) | {
        "windows": {"n": stitched.n_windows, "window_px": window_px, "halo_px": halo,
                    "margin_px": margin, "retries": stitched.n_retries,
                    "cut_groups": stitched.cut_groups, "sample_chips": first.n_chips}}
    result = DetectionResult(
        buildings=measured["buildings"], sites=measured["sites"], claim=measured["claim"],
        change_mask=None, grid=grid, crs=measured["crs"], registration=reg_summary,
        quicklooks=looks, summary={}, timings=stage.timings,
        aoi=None if aoi is None else aoi.geometry, change_path=change_path, scratch=scratch,
        standing_before=standing)
    inputs = {"before": _scene_info(header_b), "after": _scene_info(header_a),
              "aoi": None if aoi is None else _input_path(opts.aoi)}
    stage.finish()
    result.summary = build_summary(result, inputs, params_used, overlap_fraction=overlap)
    return result


def _decimated(grid: Grid, longest_px: int) -> Grid:
    """``grid`` with pixels coarsened by a whole factor so its longest side fits."""
    from affine import Affine

    f = max(1, int(np.ceil(max(grid.shape) / longest_px)))
    return Grid(grid.crs, grid.transform @ Affine.scale(f), int(np.ceil(grid.height / f)),
                int(np.ceil(grid.width / f)))


def _decimated_change(path: str, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """A display copy of change.tif over blocks of ``factor`` x ``factor`` pixels.

    Parameters
    ----------
    path : str
        A change raster (uint8: 0, 1, 255 nodata).
    factor : int
        Block side, pixels.
    shape : (int, int)
        The display grid's shape, ``ceil`` of the raster's over ``factor``.

    Returns
    -------
    (h, w) ndarray of uint8
        1 where any pixel of the block is new building, 255 where all are nodata, 0
        elsewhere. Read strip by strip: GDAL's averaging read took 3.5 s on a
        4096 px scene, and at 8 x 8 rounded a lone new pixel's share to 0.
    """
    import rasterio
    from rasterio.windows import Window
    from skimage.measure import block_reduce

    height, width = shape
    out = np.empty(shape, np.uint8)
    # Ranked so that a block's maximum says it all: nodata 0 < no building 1 < new 2
    # (the padding beyond the raster's edge is nodata).
    rank = np.zeros(256, np.uint8)
    rank[0], rank[1] = 1, 2
    with rasterio.open(path) as ds:
        # About 4 MB of the raster per strip, a whole number of blocks high.
        step = max(1, (1 << 22) // (width * factor * factor))
        for top in range(0, height, step):
            rows = min(step, height - top)
            r0 = top * factor
            fine = rank[ds.read(1, window=Window(0, r0, ds.width,
                                                 min(rows * factor, ds.height - r0)))]
            block = block_reduce(fine, (factor, factor), np.max, cval=0)
            out[top:top + rows] = np.array([255, 0, 1], np.uint8)[block]
    return out


def _coregister(pair: Any, method: str) -> tuple[Any, Any, dict[str, Any]]:
    """Co-register the pair; the registered pair, the Registration and its summary."""
    from .coregister import coregister

    pair_out, registration = coregister(pair, method=method)
    return pair_out, registration, registration.summary(pair_out.grid)


def _input_path(path: str | os.PathLike[str] | None) -> str | None:
    """An input's path for ``summary.json``: a local file's or folder's made absolute,
    so that the record still names it when read from another folder; URLs, GDAL
    virtual paths and subdatasets (``GTIFF_DIR:1:x.tif``) as given."""
    if path is None:
        return None
    path = os.fspath(path)
    return os.path.abspath(path) if not os.path.isabs(path) and os.path.exists(path) \
        else path


def _scene_info(scene: Scene) -> dict[str, Any]:
    return {"path": _input_path(scene.path), "crs": scene.grid.crs.to_string(),
            "pixel_size": list(scene.grid.pixel_size), "width": scene.grid.width,
            "height": scene.grid.height, "bands": list(scene.bands)}


def build_summary(result: DetectionResult, inputs: dict[str, Any], parameters: dict[str, Any],
                  overlap_fraction: float | None = None) -> dict[str, Any]:
    """The content of ``summary.json`` (Contract of ``design.md``).

    Everything but ``timings`` depends only on the inputs and options, so two runs
    on the same inputs give the same summary apart from ``timings``.
    """
    from .outputs import building_records, site_records, standing_records

    grid = result.grid
    _, buildings = building_records(result.buildings, result.sites)
    _, sites = site_records(result.sites, result.claim)
    totals = {
        "n_buildings": len(result.buildings),
        "n_sites": len(result.sites),
        "built_area_m2": round(sum(float(b.area_m2) for b in result.buildings), 2),
        "built_area_m2_min": round(sum(float(b.area_m2_min) for b in result.buildings), 2),
        "built_area_m2_max": round(sum(float(b.area_m2_max) for b in result.buildings), 2),
        "n_standing_before": len(result.standing_before),
        "n_partial": sum(b.partial for b in result.buildings),
    }
    epsg = grid.crs.to_epsg()
    # On the ground, which a Web-Mercator or foot-based grid's own units are not.
    from .measure import ground_metres_per_unit

    to_ground = ground_metres_per_unit(grid, result.crs)
    return {
        "changedet_version": __version__,
        "inputs": inputs,
        "analysis_crs": f"EPSG:{epsg}" if epsg else grid.crs.to_wkt(),
        "measurement_crs": result.crs.to_string(),
        "pixel_size_m": [round(v * to_ground, 6) for v in grid.pixel_size],
        "grid": {"width": grid.width, "height": grid.height,
                 "transform": [round(v, 6) for v in tuple(grid.transform)[:6]]},
        "overlap_fraction": None if overlap_fraction is None else round(overlap_fraction, 4),
        "coregistration": result.registration,
        "totals": totals,
        "sites": sites,
        "buildings": buildings,
        "standing_before": standing_records(result.standing_before, result.crs),
        "claim": None if result.claim is None else result.claim.to_dict(),
        "parameters": parameters,
        "timings": result.timings,
    }


def detect(before: str | os.PathLike[str], after: str | os.PathLike[str], *,
           progress: ProgressCallback | None = None, **options: Any) -> DetectionResult:
    """Notebook entry point: :func:`run_detection` with keyword options.

    Parameters
    ----------
    before, after : str or path-like
        The two scenes.
    progress : callable, optional
        ``progress(stage, fraction)``.
    **options
        Any field of :class:`DetectOptions` (``coreg="local"``, ``claim_m2=13000``,
        ``aoi="aoi.gpkg"``...).

    Returns
    -------
    DetectionResult
        ``.footprints`` are shapely polygons in ``.crs`` (the analysis CRS, or the
        local UTM zone when that CRS does not measure true areas), ``.summary`` the
        ``summary.json`` dict; write files with
        :func:`changedet.outputs.write_outputs`.
    """
    unknown = set(options) - set(DetectOptions.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
    if isinstance(options.get("bands"), list):
        options["bands"] = tuple(options["bands"])
    return run_detection(before, after, DetectOptions(**options), progress=progress)


__all__ = ["DetectOptions", "DetectionResult", "ProgressCallback", "build_summary", "detect",
           "quicklook", "run_detection"]
