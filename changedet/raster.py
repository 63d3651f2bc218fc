"""Reading scenes and putting two of them on one analysis grid.

The only module (with :mod:`changedet.outputs`) that touches raster files. Everything
downstream works on :class:`Scene` objects: a ``(B, H, W)`` float32 array, a ``(H, W)``
validity mask and a :class:`Grid` (CRS, affine transform, shape).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import rasterio
import rasterio.warp
import rasterio.windows
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import (
    NodataShadowWarning,
    NotGeoreferencedWarning,
    RasterioError,
    RasterioIOError,
)
from rasterio.io import MemoryFile
from rasterio.vrt import WarpedVRT
from rasterio.warp import Resampling, reproject, transform_bounds

from ._log import logger, warn_analyst
from .errors import InputError, ProcessingError

#: The smallest overlap, in pixels on each side, that the analysis accepts.
MIN_OVERLAP_PX = 64


def _crs_text(crs: CRS | None) -> str:
    """``EPSG:n``, or the start of the CRS's text when it has no EPSG code."""
    if crs is None:
        return "no CRS"
    text = crs.to_string()
    return text if len(text) <= 48 else text[:45] + "..."


@dataclass(frozen=True)
class Grid:
    """A raster grid: where each pixel of an array lies on the ground.

    Attributes
    ----------
    crs : rasterio.crs.CRS
        Coordinate reference system of the transform.
    transform : affine.Affine
        Maps (column, row) pixel-corner coordinates to (x, y) in ``crs``.
    height, width : int
        Shape of the arrays on this grid, in pixels.
    """

    crs: CRS
    transform: Affine
    height: int
    width: int

    def __repr__(self) -> str:
        # Short for notebooks: a CRS without an EPSG code prints as a page of WKT.
        x0, y0 = self.transform.c, self.transform.f
        return (f"Grid({_crs_text(self.crs)}, {self.width} x {self.height} px, pixel "
                f"{self.transform.a:g} x {self.transform.e:g}, origin ({x0:.3f}, {y0:.3f}))")

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (self.height, self.width)

    @property
    def pixel_size(self) -> tuple[float, float]:
        """``(x, y)`` size of one pixel in CRS units (metres on a projected grid)."""
        t = self.transform
        return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    @property
    def pixel_area(self) -> float:
        """Area of one pixel in squared CRS units (m² on a projected grid)."""
        return abs(self.transform.determinant)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in CRS units (axis-aligned grids)."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return (min(left, right), min(bottom, top), max(left, right), max(bottom, top))

    def coincides(self, other: Grid, tolerance_px: float = 1e-6) -> bool:
        """Whether ``other`` puts every pixel where this grid does, to within
        ``tolerance_px`` of a pixel: a window's grid built by another chain of
        translations differs from this one in the last bits of its origin."""
        return (self.shape == other.shape and self.crs == other.crs
                and self.transform.almost_equals(other.transform,
                                                 tolerance_px * max(self.pixel_size)))

    def window(self, row0: int, col0: int, height: int, width: int) -> Grid:
        """The sub-grid starting at pixel ``(row0, col0)`` with the given shape."""
        return Grid(self.crs, self.transform @ Affine.translation(col0, row0), height, width)


@dataclass
class Scene:
    """One image on one grid.

    Attributes
    ----------
    image : (B, H, W) ndarray of float32
        The chosen bands in the order asked for; invalid pixels hold 0.
    valid : (H, W) ndarray of bool
        True where every chosen band holds real data.
    grid : Grid
        Georeference of ``image`` and ``valid``.
    path : str
        The file the scene came from (for messages and the report).
    bands : tuple of int
        1-based band numbers in the source file, one per layer of ``image``.
    nir : int or None
        Index into ``image`` of the near-infrared layer, when there is one.
    """

    image: np.ndarray
    valid: np.ndarray
    grid: Grid
    path: str = ""
    bands: tuple[int, ...] = ()
    nir: int | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        # The arrays' shapes, not their values (a notebook prints whatever it returns).
        nir = "" if self.nir is None else f", nir layer {self.nir}"
        return (f"Scene({self.path!r}, image {self.image.dtype} {self.image.shape}, bands "
                f"{self.bands}{nir}, {self.grid!r})")

    @property
    def visible(self) -> np.ndarray:
        """``(B', H, W)`` view of the layers that are not near-infrared."""
        if self.nir is None:
            return self.image
        keep = [i for i in range(self.image.shape[0]) if i != self.nir]
        return self.image[keep]


def check_scene(scene: Scene, name: str) -> None:
    """Raise ValueError, naming ``name``, when a scene's arrays do not fit its grid:
    ``image`` (B, H, W) floating point and finite with B >= 1, ``valid`` (H, W) of
    bool, ``grid`` H x W (TypeError when ``scene`` is not a :class:`Scene`)."""
    if not isinstance(scene, Scene):
        raise TypeError(f"{name} must be a changedet.raster.Scene, got "
                        f"{type(scene).__name__}")
    image, valid, grid = np.asarray(scene.image), np.asarray(scene.valid), scene.grid
    if image.ndim != 3 or image.shape[0] < 1:
        raise ValueError(f"{name}.image must be (bands, rows, columns), got shape "
                         f"{image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        # Integer bands wrap around when the dates are subtracted.
        raise ValueError(f"{name}.image must be floating point (float32), got "
                         f"{image.dtype}")
    # One float64 sum finds any NaN or infinity without a mask the size of the image.
    if not np.isfinite(np.add.reduce(image, axis=None, dtype=np.float64)):
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            raise ValueError(f"{name}.image holds {bad} NaN or infinite values: set them "
                             "to 0 and mark them invalid (raster.read_scene does)")
    if valid.dtype != bool:
        raise ValueError(f"{name}.valid must be a bool array, got {valid.dtype}")
    if not (image.shape[1:] == valid.shape == grid.shape):
        raise ValueError(f"{name}: image {image.shape[1:]}, valid {valid.shape} and grid "
                         f"{grid.shape} must be the same rows x columns")


@dataclass
class AlignedPair:
    """Two scenes on one analysis grid, cropped to the overlap of their valid data.

    Attributes
    ----------
    before, after : Scene
        On the same :class:`Grid` (``before.grid == after.grid``).
    after_source : Scene
        The after scene as read, on its own grid: co-registration resamples it again
        from here so that the after pixels are interpolated only once.
    overlap_fraction : float
        Share of the before scene's valid pixels that the after scene also covers.
    before_valid : (H, W) ndarray of bool, optional
        The before scene's own valid pixels: once the after scene is resampled with
        a correction, the common mask is these and the corrected after scene's.
    correction : affine.Affine
        The co-registration correction ``after`` was resampled with from
        ``after_source`` (see :func:`warp_scene`); the identity until
        :func:`changedet.coregister.coregister` applies one.
    """

    before: Scene
    after: Scene
    after_source: Scene
    overlap_fraction: float
    before_valid: np.ndarray | None = None
    correction: Affine = field(default_factory=Affine.identity)

    @property
    def grid(self) -> Grid:
        return self.before.grid


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """Parse a ``--bands`` value such as ``"3,2,1"`` into 1-based band numbers.

    Raises
    ------
    ValueError
        When the text is not a comma-separated list of positive integers.
    """
    if text is None or not text.strip():
        return None
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"bands must be comma-separated band numbers, got {text!r}") from None
    if any(b < 1 for b in bands):
        raise ValueError(f"band numbers start at 1, got {text!r}")
    check_distinct_bands(bands)
    return bands


def band_numbers(bands: Sequence[int] | np.ndarray | None) -> tuple[int, ...] | None:
    """``bands`` as a tuple of distinct band numbers (None, or empty: the default
    bands); a list, tuple or integer array are all fine. (Whether the file has those
    bands is the reader's to say.)

    Raises
    ------
    ValueError
        A value that is not a whole number, or a band given twice.
    """
    if bands is None:
        return None
    values = [bands] if isinstance(bands, (str, bytes)) else np.asarray(bands).ravel().tolist()
    for b in values:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not float(b).is_integer():
            raise ValueError(f"bands must be whole band numbers (1-based), got {bands!r}")
    numbers = tuple(int(b) for b in values)
    check_distinct_bands(numbers)
    return numbers or None


def check_distinct_bands(bands: Sequence[int]) -> None:
    """Raise ValueError when a band is named twice (``1,1,1`` reads one band as
    three colours: a grey image whose every colour edge and chromaticity is zero)."""
    twice = sorted(b for b, n in Counter(bands).items() if n > 1)
    if twice:
        raise ValueError(f"band {twice[0]} is given more than once; name each band once")


#: Ground control points that an affine misses by more than this (pixels) are named.
GCP_AFFINE_TOLERANCE_PX = 1.0


def _affine_from_gcps(gcps: Sequence[Any]) -> Affine | None:
    """The least-squares affine from pixel (col, row) to (x, y) through ground control
    points, or None when they do not span an area (fewer than three, or on a line).

    (rasterio's ``from_gcps`` returns uninitialised memory when GDAL's fit fails.)
    """
    px = np.array([[g.col, g.row, 1.0] for g in gcps], float)
    xy = np.array([[g.x, g.y] for g in gcps], float)
    if len(gcps) < 3 or not (np.isfinite(px).all() and np.isfinite(xy).all()):
        return None
    # Rank from the centred pixel coordinates: three points on a line are rank 1.
    if np.linalg.matrix_rank(px[:, :2] - px[:, :2].mean(axis=0)) < 2:
        return None
    coef = np.linalg.lstsq(px, xy, rcond=None)[0]
    transform = Affine(*coef[:, 0], *coef[:, 1])
    return transform if transform.determinant != 0 else None


def _grid_of(ds: rasterio.io.DatasetReader, path: str, warn: bool = True) -> Grid:
    """The scene's grid: its geotransform, or an affine fitted to its GCPs."""
    transform = ds.transform
    crs = ds.crs
    if not np.all(np.isfinite(tuple(transform)[:6])):
        # (Read on, it placed the scene nowhere and came out as "does not overlap".)
        raise InputError(path, "has a geotransform that is not a number (NaN or infinite "
                               "pixel size or origin); fix its georeferencing first")
    if transform.is_identity or transform.determinant == 0:
        gcps, gcp_crs = ds.gcps
        if gcps and gcp_crs is not None:
            transform = _affine_from_gcps(gcps)
            crs = gcp_crs
            if transform is None:
                raise InputError(path, f"its {len(gcps)} ground control points do not "
                                       "span an area; georeference it another way")
            to_px = ~transform
            miss = max(math.hypot(*(np.subtract(to_px @ (g.x, g.y), (g.col, g.row))))
                       for g in gcps)
            if warn and miss > GCP_AFFINE_TOLERANCE_PX:
                warn_analyst(
                    "%s: its %d ground control points are read as one affine transform, "
                    "which misses some by %.1f px; for accurate positions and areas "
                    "warp it first, e.g. `gdalwarp -tps -t_srs EPSG:XXXX in.tif out.tif`",
                    path, len(gcps), miss)
        elif ds.rpcs is not None:
            raise InputError(
                path,
                "has RPCs but no geotransform; orthorectify it first, e.g. "
                "`gdalwarp -rpc -to RPC_DEM=dem.tif -t_srs EPSG:XXXX in.tif out.tif`",
            )
        else:
            raise InputError(
                path,
                "has no geotransform; georeference it first, e.g. "
                "`gdal_translate -a_ullr ULX ULY LRX LRY -a_srs EPSG:XXXX in.tif out.tif`",
            )
    if crs is None or not crs.to_wkt():
        raise InputError(
            path,
            "has no CRS; assign one first, e.g. `gdal_edit.py -a_srs EPSG:32651 FILE`",
        )
    crs = CRS.from_user_input(crs)
    if not (crs.is_projected or crs.is_geographic):
        # A local (engineering) CRS places the pixels on no map: nothing to measure
        # in metres on the ground, nor to align the other date with.
        raise InputError(
            path,
            "has a local CRS with no place on the Earth; assign its real one first, "
            "e.g. `gdal_edit.py -a_srs EPSG:32651 FILE`",
        )
    grid = Grid(crs, transform, ds.height, ds.width)
    if crs.is_geographic:
        left, bottom, right, top = grid.bounds
        # (Longitudes up to 360 are a common convention, and PROJ wraps them; a
        # global grid's edge may be rounded up to a pixel beyond a pole.)
        slack = 1e-6 + max(grid.pixel_size)
        if not (-90.0 - slack <= bottom <= top <= 90.0 + slack
                and -360.0 - slack <= left <= right <= 360.0 + slack):
            raise InputError(
                path,
                f"has coordinates outside the range of its geographic CRS ({crs}): "
                f"x {left:g} to {right:g}, y {bottom:g} to {top:g}; its CRS is "
                "probably wrong (projected coordinates labelled as degrees)",
            )
    return grid


def data_bands(ds: rasterio.io.DatasetReader) -> list[int]:
    """The 1-based bands of an open dataset that are not tagged alpha (its mask)."""
    return [b for b, ci in enumerate(ds.colorinterp, start=1) if ci != ColorInterp.alpha]


def _chosen_bands(ds: rasterio.io.DatasetReader, path: str, bands: Sequence[int] | None,
                  nir_band: int | None, warn: bool = True) -> tuple[tuple[int, ...], int | None]:
    """The 1-based bands to read and the index of the near-infrared one among them.

    By default, the bands tagged red, green and blue, in that order, when the file
    tags each once (a BGR or BGRN delivery is then read as RGB, as the other date
    may be); otherwise the first three bands that are not alpha: an alpha band is the
    file's mask, not data (a grey + alpha file gives its grey band). A band asked
    for by number is read even if tagged alpha, with a warning: GDAL tags the fourth
    band of a four-band RGB GeoTIFF alpha unless told otherwise, and that band is
    often a near-infrared one.
    """
    colours = list(ds.colorinterp)
    rgb = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if bands:
        chosen = tuple(bands)
    elif all(colours.count(ci) == 1 for ci in rgb):
        chosen = tuple(colours.index(ci) + 1 for ci in rgb)
    else:
        # (The near-infrared band is no colour: --nir-band 3 on a four-band file gives
        # bands 1, 2 and 4 as colours, not blue as near-infrared.)
        unmasked = data_bands(ds)
        if not unmasked:
            raise InputError(path, "has only an alpha band (a mask), no data band")
        chosen = tuple([b for b in unmasked if b != nir_band][:3])
    nir_index: int | None = None
    if nir_band is not None:
        if nir_band in chosen:
            nir_index = chosen.index(nir_band)
            # (With no colour band left it is an error, below: no warning before it.)
            if 1 <= len(chosen) - 1 < 3 and warn:
                # (--bands 1,2,3 --nir-band 3, or a band tagged red, green or blue
                # named near-infrared: a slip, or a false-colour file; either way the
                # colours are fewer than the file has.)
                warn_analyst("%s: band %d, given as near-infrared, is also one of the "
                             "colour bands %s: it is read as near-infrared, leaving %d "
                             "visible band(s)", path, nir_band,
                             ",".join(str(b) for b in chosen), len(chosen) - 1)
        else:
            chosen = chosen + (nir_band,)
            nir_index = len(chosen) - 1
    out_of_range = [b for b in chosen if not 1 <= b <= ds.count]
    if out_of_range:
        raise InputError(path, f"has {ds.count} band(s); band {out_of_range[0]} was asked for")
    unmasked = data_bands(ds)
    for b in chosen:
        if b not in unmasked and warn:
            warn_analyst("%s: band %d is tagged alpha (a mask, not data) but was asked "
                         "for, so it is used as data", path, b)
    if len(chosen) == 1 and nir_index == 0:
        # Brightness, colour and the vegetation index all need a visible band.
        raise InputError(path, f"band {chosen[0]} is the near-infrared and no visible band "
                               "is left; choose visible bands with --bands")
    return chosen, nir_index


def _read_bands(
    path: str, bands: Sequence[int] | None, nir_band: int | None, warn: bool = True
) -> tuple[np.ndarray, np.ndarray, Grid, tuple[int, ...], int | None, dict[str, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        # A nodata value wins over an alpha band: that is the mask we want.
        warnings.simplefilter("ignore", NodataShadowWarning)
        with rasterio.open(path) as ds:
            grid = _grid_of(ds, path, warn)
            chosen, nir_index = _chosen_bands(ds, path, bands, nir_band, warn)
            try:
                data = ds.read(list(chosen), out_dtype="float32")
                masks = _pixel_rule(ds, chosen, ds.read_masks(list(chosen)))
            except RasterioIOError as exc:
                raise InputError(
                    path, f"file is truncated or corrupt ({_first_line(exc)})"
                ) from exc
            tags = {k: str(v) for k, v in ds.tags().items()}
    return data, masks, grid, chosen, nir_index, tags


def read_scene(
    path: str | os.PathLike[str],
    bands: Sequence[int] | None = None,
    nir_band: int | None = None,
    *,
    warn: bool = True,
) -> Scene:
    """Read and validate one georeferenced scene.

    Parameters
    ----------
    path : str or path-like
        Anything GDAL opens (GeoTIFF, JP2, VRT, ``/vsicurl/`` URLs...).
    bands : sequence of int, optional
        1-based bands to use, in order. Default: the bands tagged red, green and blue
        when the file tags each once; otherwise the first three that are not alpha
        (or fewer if the file has fewer).
    nir_band : int, optional
        1-based near-infrared band; appended to ``bands`` when not already in them.
    warn : bool
        Log a warning when a band asked for is tagged alpha (off when the file's
        header was read, and warned about, already).

    Returns
    -------
    Scene
        Bands as float32, with the validity mask built from the dataset mask, the
        nodata value and non-finite values.

    Raises
    ------
    InputError
        Missing, unreadable or truncated file; no CRS or geotransform; bands out of
        range; no valid pixel.
    """
    path = os.fspath(path)
    check_path(path)
    # Before the file is opened: a wrong argument is no fault of the file's.
    bands = band_numbers(bands)
    try:
        data, masks, grid, chosen, nir_index, tags = _read_bands(path, bands, nir_band, warn)
    except InputError:
        raise
    except (RasterioError, UnicodeError, ValueError, OverflowError) as exc:
        # A corrupt header can surface from GDAL or from decoding its metadata.
        raise InputError(path, f"not a raster GDAL can read, or corrupt ({_first_line(exc)})") from exc
    valid = _valid_and_zeroed(data, masks)
    if not valid.any():
        raise InputError(path, "has no valid pixels (all nodata or masked)")
    logger.info("read %s: %d band(s), %d x %d px, %s", path, len(chosen), grid.width,
                grid.height, grid.crs.to_string())
    return Scene(data, valid, grid, path, chosen, nir_index, tags)


def _pixel_rule(ds: rasterio.io.DatasetReader, bands: Sequence[int],
                masks: np.ndarray) -> np.ndarray:
    """Band masks (B, H, W) as :func:`_valid_and_zeroed` combines them: any band.

    A nodata value at the top of an integer type's range (255 on 8-bit imagery)
    is also what a saturated band of a real pixel holds: requiring every band valid
    punched holes in bright roofs. Such a value marks a pixel nodata only where
    every band holds it (rasterio's ``dataset_mask`` rule), and the masks are
    returned as they are. Any other nodata value (0, -9999) in one band makes the
    pixel nodata: bands whose nodata edges differ leave a fringe where one band
    holds it, and taken as data it skewed the noise and the threshold so far that
    a scene lost every building. All masks then become their minimum.
    """
    saturating = True
    for b in bands:
        nodata, dtype = ds.nodatavals[b - 1], np.dtype(ds.dtypes[b - 1])
        if nodata is not None and not (np.issubdtype(dtype, np.integer)
                                       and nodata == np.iinfo(dtype).max):
            saturating = False
    if saturating:
        return masks
    return np.broadcast_to(masks.min(axis=0), masks.shape)


def _valid_and_zeroed(data: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pixels valid in some band's mask (see :func:`_pixel_rule`) and finite in
    every band; zero the others. Alpha bands and internal masks are one mask for
    all bands."""
    valid = np.any(masks > 0, axis=0) & np.all(np.isfinite(data), axis=0)
    data[:, ~valid] = 0.0
    return valid


def check_not_blank(scene: Scene) -> None:
    """Raise InputError when every valid pixel of a scene has the same values.

    A blank image (a failed export, an all-black tile without nodata) has no noise
    to measure change against: every difference from it would be significant.
    """
    values = scene.image[:, scene.valid]
    if values.size and (values.max(axis=1) == values.min(axis=1)).all():
        value = ", ".join(f"{v:g}" for v in values[:, 0])
        raise InputError(scene.path, f"is blank: every valid pixel is ({value}); declare "
                                     "its nodata value if that is what it is")


def check_not_identical(before: Scene, after: Scene) -> None:
    """Raise InputError when two scenes on one grid hold the same values on every
    pixel valid in both.

    One scene given as both dates (through a VRT, a ``vrt://`` path or a copy, which
    no comparison of paths catches) would find nothing new, and "no new building"
    reads as a refuted claim.

    Parameters
    ----------
    before, after : Scene
        On one grid: ``image`` (B, H, W), ``valid`` (H, W).
    """
    if same_pixels(before, after):
        raise identical_scenes_error(before.path, after.path)


def same_pixels(before: Scene, after: Scene) -> bool:
    """Whether two scenes on one grid share a valid pixel, and hold the same values
    on every pixel valid in both."""
    common = before.valid & after.valid
    return bool(common.any()) and np.array_equal(before.image[:, common],
                                                 after.image[:, common])


def identical_scenes_error(before_path: str, after_path: str) -> InputError:
    """The error for an after scene that holds the before scene's pixels."""
    return InputError(after_path, f"holds the same pixels as {before_path} wherever "
                                  "both have data: give the scene of the other date")


def check_path(path: str) -> None:
    """Raise InputError "no such file" for a local path that does not exist; GDAL's
    virtual paths (``/vsizip/...``) and URIs (``zip://...!x``, ``s3://``) are left to
    GDAL to open."""
    if "://" not in path and not path.startswith("/vsi") and not os.path.exists(path):
        raise InputError(path, "no such file")


def read_header(
    path: str | os.PathLike[str],
    bands: Sequence[int] | None = None,
    nir_band: int | None = None,
) -> Scene:
    """Validate a scene and describe it without reading its pixels.

    Returns
    -------
    Scene
        With an empty ``(B, 0, 0)`` image and ``valid``; ``grid``, ``bands``,
        ``nir`` and ``tags`` describe the file (for windowed reading of scenes too
        large to hold in memory).

    Raises
    ------
    InputError
        As :func:`read_scene`, except that pixels are not checked.
    """
    path = os.fspath(path)
    check_path(path)
    bands = band_numbers(bands)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                grid = _grid_of(ds, path)
                chosen, nir_index = _chosen_bands(ds, path, bands, nir_band)
                tags = {k: str(v) for k, v in ds.tags().items()}
    except InputError:
        raise
    except (RasterioError, UnicodeError, ValueError, OverflowError) as exc:
        raise InputError(path, f"not a raster GDAL can read, or corrupt ({_first_line(exc)})") from exc
    return Scene(np.zeros((len(chosen), 0, 0), np.float32), np.zeros((0, 0), bool), grid, path,
                 chosen, nir_index, tags)


class OpenDatasets:
    """Datasets kept open for many reads, one handle per path and thread.

    Opening a file for each small read discards GDAL's cache of its decoded blocks,
    so that reads of neighbouring strips decode the same compressed tiles again. A
    rasterio dataset must not be read from two threads at once: each thread gets its
    own. Use as a context manager; every handle is closed on exit.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[rasterio.io.DatasetReader] = []

    def get(self, path: str) -> rasterio.io.DatasetReader:
        """This thread's open dataset for ``path``."""
        handles = self._local.__dict__.setdefault("handles", {})
        ds = handles.get(path)
        if ds is None:
            ds = rasterio.open(path)
            handles[path] = ds
            with self._lock:
                self._opened.append(ds)
        return ds

    def close(self) -> None:
        with self._lock:
            for ds in self._opened:
                ds.close()
            self._opened.clear()

    def __enter__(self) -> "OpenDatasets":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_region(
    header: Scene,
    grid: Grid,
    correction: Affine = Affine.identity(),
    resample: bool = True,
    pad_px: int = 8,
    datasets: OpenDatasets | None = None,
) -> Scene:
    """The part of a scene that falls on ``grid``, resampled onto it.

    Reads only the source pixels under ``grid`` (plus ``pad_px`` for the
    interpolation kernel), so that any window of the analysis grid costs memory in
    proportion to its own size. The values are those :func:`warp_scene` gives for
    the whole scene, since each output pixel depends only on source pixels within
    the kernel. When ``grid`` is much coarser than the source, the source's pixels
    averaged over whole blocks (one lattice of blocks for the scene; never the file's
    overviews) stand in for them.

    Parameters
    ----------
    header : Scene
        From :func:`read_header` (or :func:`read_scene`): path, bands, grid.
    grid : Grid
        The destination window of the analysis grid.
    correction : affine.Affine
        Pixel-space correction on ``grid`` (see :func:`warp_scene`).
    resample : bool
        False: ``grid`` must lie on the source's own pixel lattice (same CRS and
        pixel size, whole-pixel offset, identity correction); pixels are copied.
    pad_px : int
        Source pixels read beyond the footprint of ``grid``.
    datasets : OpenDatasets, optional
        Where to take the open file from, for many reads of one file (default: the
        file is opened for this read and closed after it).

    Returns
    -------
    Scene
        On ``grid``; pixels outside the source or touched by invalid ones are invalid.

    Raises
    ------
    InputError
        The file cannot be read (truncated, corrupt).
    """
    src = header.grid
    h_dst, w_dst = grid.shape
    dst_t = grid.transform @ correction
    corners = [dst_t @ (c, r) for c in (0, w_dst) for r in (0, h_dst)]
    xs, ys = zip(*corners)
    if grid.crs != src.crs:
        xs, ys = rasterio.warp.transform(grid.crs, src.crs, list(xs), list(ys))
    cols, rows = zip(*[~src.transform @ (x, y) for x, y in zip(xs, ys)])
    scale = _finer_by(src, grid)
    pad = pad_px * (scale if scale > 1.5 else 1.0)
    c0 = max(0, int(math.floor(min(cols) - pad)))
    r0 = max(0, int(math.floor(min(rows) - pad)))
    c1 = min(src.width, int(math.ceil(max(cols) + pad)))
    r1 = min(src.height, int(math.ceil(max(rows) + pad)))
    # A source much finer than the grid is read averaged over blocks of ``factor``
    # pixels a side, on one lattice of blocks for the whole scene: every window that
    # reads a block gets the same average, as the windows must see the same pixels
    # where they overlap. (A partial block at the source's far edge is left out.)
    factor = block_factor(src, grid) if resample else 1
    if factor > 1:
        c0, r0 = c0 // factor * factor, r0 // factor * factor
        c1 = min(-(-c1 // factor) * factor, src.width // factor * factor)
        r1 = min(-(-r1 // factor) * factor, src.height // factor * factor)
    nb = len(header.bands)
    if c1 <= c0 or r1 <= r0:
        return replace(header, image=np.zeros((nb, h_dst, w_dst), np.float32),
                       valid=np.zeros((h_dst, w_dst), bool), grid=grid)
    window = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            warnings.simplefilter("ignore", NodataShadowWarning)
            opened = (contextlib.nullcontext(datasets.get(header.path)) if datasets is not None
                      else rasterio.open(header.path))
            with opened as ds:
                if factor == 1:
                    data = ds.read(list(header.bands), window=window, out_dtype="float32")
                    masks = _pixel_rule(ds, header.bands,
                                        ds.read_masks(list(header.bands), window=window))
                    valid = _valid_and_zeroed(data, masks)
                else:
                    data, valid = _block_means(ds, header.bands, window, factor)
    except (RasterioError, ValueError) as exc:
        raise InputError(header.path, f"file is truncated or corrupt ({_first_line(exc)})") from exc
    chip_grid = src.window(r0, c0, r1 - r0, c1 - c0)
    if factor > 1:
        chip_grid = Grid(src.crs, chip_grid.transform @ Affine.scale(factor),
                         data.shape[1], data.shape[2])
    chip = replace(header, image=data, valid=valid, grid=chip_grid)
    if resample:
        return warp_scene(chip, grid, correction)
    row, col = int(round(r0 - min(rows))), int(round(c0 - min(cols)))
    if grid.crs != src.crs or not correction.is_identity or row > 0 or col > 0:
        raise ValueError("resample=False needs a window on the source's own pixel lattice")
    return crop_scene(chip, -row, -col, h_dst, w_dst)


def _finer_by(source: Grid, grid: Grid) -> float:
    """How many times finer the source's pixels are than the grid's (1 at least; 1
    across CRSs, where pixel sizes are not comparable)."""
    if source.crs != grid.crs:
        return 1.0
    return max(1.0, min(grid.pixel_size) / max(source.pixel_size))


def block_factor(source: Grid, grid: Grid) -> int:
    """Side, in source pixels, of the blocks a source much finer than ``grid`` is
    averaged over before it is resampled onto it (1: read as it is)."""
    scale = _finer_by(source, grid)
    return int(math.floor(scale)) if scale > 1.5 else 1


def coarsened_for(scene: Scene, grid: Grid) -> Scene:
    """``scene`` averaged over blocks of :func:`block_factor` pixels, as
    :func:`read_region` reads it for any window of ``grid``.

    The blocks lie on one lattice from the scene's first pixel (a partial block at
    its far edges is left out); a block is valid when all its pixels are. The
    whole-scene path resamples what every window reads, so that both give the same
    buildings on a finer after scene.

    Parameters
    ----------
    scene : Scene
        As read, ``image`` (B, H, W) with invalid pixels at 0.
    grid : Grid
        The grid it is to be resampled onto.

    Returns
    -------
    Scene
        (B, H // f, W // f) on the source grid scaled by f, or ``scene`` itself when
        f is 1.
    """
    factor = block_factor(scene.grid, grid)
    if factor == 1:
        return scene
    _, h, w = scene.image.shape
    hb, wb = h // factor, w // factor
    image, valid = _means_of_blocks(scene.image[:, :hb * factor, :wb * factor],
                                    scene.valid[:hb * factor, :wb * factor], factor)
    coarse = Grid(scene.grid.crs, scene.grid.transform @ Affine.scale(factor), hb, wb)
    return replace(scene, image=image, valid=valid, grid=coarse)


def _means_of_blocks(image: np.ndarray, valid: np.ndarray, factor: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``factor`` x ``factor`` blocks of a (B, H, W) image whose sides are
    multiples of ``factor``, and their (H / f, W / f) validity: a block is valid when
    all its pixels are; an invalid one is 0.

    float64 means of float32 pixels are exact whatever the order of summation, so a
    block read in a window and in the whole scene gives the same value.
    """
    nb, h, w = image.shape
    shape = (h // factor, factor, w // factor, factor)
    ok = valid.reshape(shape).all(axis=(1, 3))
    means = image.reshape((nb,) + shape).mean(axis=(2, 4), dtype=np.float64)
    means[:, ~ok] = 0.0
    return means.astype(np.float32), ok


#: Source pixels (times bands) read at once in :func:`_block_means`: bounds the
#: memory of a read of a source many times finer than the grid (about 5 bytes each:
#: the float32 value and its mask), whatever the factor.
SOURCE_VALUES_PER_READ = 1 << 22


def _block_means(ds: rasterio.io.DatasetReader, bands: Sequence[int],
                 window: rasterio.windows.Window, factor: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``factor`` x ``factor`` blocks of the file's own pixels over ``window``.

    Computed here rather than by GDAL's decimated read, which may take the file's
    overviews (or a VRT source's) for some reads and not others, and whose
    choice then made two windows see one building differently. A block is valid
    only when all its pixels are. Read in pieces of whole blocks of at most
    :data:`SOURCE_VALUES_PER_READ` values.

    Returns
    -------
    (B, H // factor, W // factor) ndarray of float32, and its (H', W') valid mask
    """
    h, w = int(window.height) // factor, int(window.width) // factor
    nb = len(bands)
    data = np.zeros((nb, h, w), np.float32)
    valid = np.zeros((h, w), bool)
    per_block = nb * factor * factor
    cols = max(1, min(w, SOURCE_VALUES_PER_READ // per_block))
    rows = max(1, min(h, SOURCE_VALUES_PER_READ // (per_block * cols)))
    for i0 in range(0, h, rows):
        i1 = min(h, i0 + rows)
        for j0 in range(0, w, cols):
            j1 = min(w, j0 + cols)
            part = rasterio.windows.Window(window.col_off + j0 * factor,
                                           window.row_off + i0 * factor,
                                           (j1 - j0) * factor, (i1 - i0) * factor)
            block = ds.read(list(bands), window=part, out_dtype="float32")
            ok = _valid_and_zeroed(block, _pixel_rule(ds, bands,
                                                      ds.read_masks(list(bands), window=part)))
            data[:, i0:i1, j0:j1], valid[i0:i1, j0:j1] = _means_of_blocks(block, ok, factor)
    return data, valid


def _first_line(exc: BaseException) -> str:
    # rasterio's read errors say only "Read failed. See previous exception for
    # details.": the GDAL error chained to them says what is wrong with the file.
    while "previous exception" in str(exc) and (exc.__cause__ or exc.__context__):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _local_projected_crs(lon: float, lat: float) -> CRS:
    """A metric CRS in which areas near (lon, lat) are right.

    UTM within its limits (80°S to 84°N); beyond them a Lambert azimuthal equal-area
    projection centred on the scene, where UTM's scale error grows without bound.
    """
    if -80.0 <= lat <= 84.0:
        zone = int(math.floor((lon + 180.0) / 6.0)) % 60 + 1
        return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)
    return CRS.from_wkt(
        ProjCRS.from_proj4(
            f"+proj=laea +lat_0={lat:.6f} +lon_0={lon:.6f} +x_0=0 +y_0=0 "
            "+ellps=WGS84 +units=m +no_defs"
        ).to_wkt()
    )


def analysis_grid(source: Grid) -> Grid:
    """The grid the analysis runs on, chosen from the before scene's grid.

    The before grid itself when its CRS is projected (no resampling of the reference
    image); otherwise a north-up grid in the local UTM zone (or an equal-area
    projection near the poles) with square pixels of the source's ground resolution.
    """
    if source.crs.is_projected:
        return source
    left, bottom, right, top = source.bounds
    lon, lat = (left + right) / 2.0, (bottom + top) / 2.0
    dst_crs = _local_projected_crs(lon, lat)
    to_dst = Transformer.from_crs(source.crs, dst_crs, always_xy=True)
    # Ground size of one source pixel at the centre, measured along each axis.
    xres, yres = source.pixel_size
    x0, y0 = to_dst.transform(lon, lat)
    x1, y1 = to_dst.transform(lon + xres, lat)
    x2, y2 = to_dst.transform(lon, lat + yres)
    pixel = math.sqrt(math.hypot(x1 - x0, y1 - y0) * math.hypot(x2 - x0, y2 - y0))
    dl, db, dr, dt = transform_bounds(source.crs, dst_crs, left, bottom, right, top,
                                      densify_pts=21)
    dl = math.floor(dl / pixel) * pixel
    dt = math.ceil(dt / pixel) * pixel
    width = int(math.ceil((dr - dl) / pixel))
    height = int(math.ceil((dt - db) / pixel))
    return Grid(dst_crs, Affine(pixel, 0.0, dl, 0.0, -pixel, dt), height, width)


def warp_scene(
    scene: Scene,
    grid: Grid,
    correction: Affine = Affine.identity(),
    resampling: Resampling = Resampling.cubic,
) -> Scene:
    """Resample a scene onto ``grid`` in one interpolation.

    Parameters
    ----------
    scene : Scene
        The source scene on its own grid.
    grid : Grid
        The destination grid.
    correction : affine.Affine
        Pixel-space map on ``grid``: output pixel ``(c, r)`` takes the value that lies
        at ``correction @ (c, r)`` of ``grid``. A pure shift ``(dx, dy)`` of the
        co-registration contract is ``Affine.translation(dx, dy)``.
    resampling : rasterio.warp.Resampling
        Interpolation kernel (cubic by default; bilinear or better keeps sub-pixel
        geometry).

    Returns
    -------
    Scene
        On ``grid``; pixels whose interpolation kernel touched invalid or outside
        source pixels are marked invalid.
    """
    dst_transform = grid.transform @ correction
    bands = scene.image.shape[0]
    x_scale, y_scale = kernel_scale(scene.grid, grid.crs, dst_transform)
    # The validity mask travels as one more band through the same kernel: wherever an
    # invalid or outside pixel contributed, the interpolated mask departs from 1.
    source = np.concatenate([scene.image, scene.valid[None].astype(np.float32)])
    if scene.grid.crs == grid.crs:
        warped = np.zeros((bands + 1, grid.height, grid.width), dtype=np.float32)
        reproject(
            source=source,
            destination=warped,
            src_transform=scene.grid.transform,
            src_crs=scene.grid.crs,
            dst_transform=dst_transform,
            dst_crs=grid.crs,
            resampling=resampling,
            num_threads=2,
            # GDAL otherwise estimates the kernel's scale for each chunk from the
            # source window it needs, which depends on the extent warped: two windows
            # of one grid, or a window and the whole grid, would interpolate the same
            # pixel with kernels of other widths.
            XSCALE=x_scale,
            YSCALE=y_scale,
        )
    else:
        warped = _warp_across_crs(source, scene.grid, grid, dst_transform, resampling,
                                  x_scale, y_scale)
    image, weight = warped[:bands], warped[bands]
    valid = np.abs(weight - 1.0) < 1e-3
    image[:, ~valid] = 0.0
    return replace(scene, image=image, valid=valid, grid=grid)


def _warp_across_crs(source: np.ndarray, src: Grid, grid: Grid, dst_transform: Affine,
                     resampling: Resampling, x_scale: float, y_scale: float) -> np.ndarray:
    """Warp ``source`` (B, H, W) float32 on ``src`` onto ``grid`` in another CRS.

    ``rasterio.warp.reproject`` maps the pixels through GDAL's approximate
    transformer (errors up to 1/8 pixel, interpolated along each row of the extent
    warped), so a window and the whole grid would sample the same pixel at other
    places (0.5 grey levels apart, enough to move the scene's threshold by 2 %). A
    warped VRT takes a tolerance: 1e-4 pixel is exact for every purpose here.
    """
    profile = {"driver": "GTiff", "width": src.width, "height": src.height,
               "count": source.shape[0], "dtype": "float32", "crs": src.crs,
               "transform": src.transform, "BIGTIFF": "IF_SAFER"}
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(source)
        with mem.open() as ds, WarpedVRT(
                ds, crs=grid.crs, transform=dst_transform, width=grid.width,
                height=grid.height, resampling=resampling, tolerance=1e-4,
                src_nodata=None, nodata=None, init_dest_nodata=False,
                XSCALE=x_scale, YSCALE=y_scale) as vrt:
            return vrt.read(out_dtype="float32")


def kernel_scale(src: Grid, dst_crs: CRS, dst_transform: Affine) -> tuple[float, float]:
    """Destination pixels per source pixel along the destination's two axes.

    Measured at the centre of the source grid from the linear part of
    ``dst_transform`` only, so that every window of one destination grid gets the
    same values (GDAL's ``XSCALE`` and ``YSCALE`` warp options: below 1, the
    interpolation kernel is widened to average the source pixels it covers).

    Parameters
    ----------
    src : Grid
        The source scene's grid.
    dst_crs : CRS
    dst_transform : affine.Affine
        Destination pixel to ``dst_crs`` coordinates (translation ignored).

    Returns
    -------
    (float, float)
        Scale along the destination columns and rows.
    """
    col, row = src.width / 2.0, src.height / 2.0
    xs, ys = zip(*(src.transform @ p for p in ((col, row), (col + 1, row), (col, row + 1))))
    if src.crs != dst_crs:
        xs, ys = rasterio.warp.transform(src.crs, dst_crs, list(xs), list(ys))
    linear = np.array([[dst_transform.a, dst_transform.b], [dst_transform.d, dst_transform.e]])
    # Source pixel steps in destination pixels (columns of the Jacobian), inverted:
    # source pixels per destination pixel step along each destination axis.
    src_to_dst = np.linalg.solve(linear, np.array([[xs[1] - xs[0], xs[2] - xs[0]],
                                                   [ys[1] - ys[0], ys[2] - ys[0]]]))
    dst_to_src = np.linalg.inv(src_to_dst)
    return tuple(float(f"{1.0 / np.hypot(*dst_to_src[:, k]):.9g}") for k in (0, 1))


def crop_scene(scene: Scene, row0: int, col0: int, height: int, width: int) -> Scene:
    """The part of a scene in a pixel window (arrays are copied)."""
    rows = slice(row0, row0 + height)
    cols = slice(col0, col0 + width)
    return replace(
        scene,
        image=scene.image[:, rows, cols].copy(),
        valid=scene.valid[rows, cols].copy(),
        grid=scene.grid.window(row0, col0, height, width),
    )


def valid_box(valid: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box ``(row0, col0, row1, col1)`` of the True pixels of ``valid``
    (H, W), or None when there is none."""
    rows = np.flatnonzero(valid.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(valid.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def sample_chips(shape: tuple[int, int], chip_px: int,
                 max_chips: int) -> list[tuple[int, int, int, int]]:
    """Up to ``max_chips`` chips ``(row0, col0, row1, col1)`` spread evenly over a grid.

    All the chips of a regular tiling when there are few enough (the whole grid is
    then sampled); otherwise evenly spaced ones among them.
    """
    h, w = shape
    ny, nx = max(1, round(h / chip_px)), max(1, round(w / chip_px))
    rows = np.linspace(0, h, ny + 1).round().astype(int)
    cols = np.linspace(0, w, nx + 1).round().astype(int)
    tiles = [(int(r0), int(c0), int(r1), int(c1)) for r0, r1 in zip(rows[:-1], rows[1:])
             for c0, c1 in zip(cols[:-1], cols[1:])]
    if len(tiles) <= max_chips:
        return tiles
    pick = np.linspace(0, len(tiles) - 1, max_chips).round().astype(int)
    return [tiles[i] for i in pick]


def lattice_chips(shape: tuple[int, int], side: int,
                  per_side: int) -> list[tuple[int, int, int, int]]:
    """``per_side`` x ``per_side`` chips of at most ``side`` pixels, corners included.

    Returns
    -------
    list of (row0, col0, row1, col1)
        Evenly spaced in both directions, from one edge of the grid to the other.
    """
    h, w = shape
    sh, sw = min(h, side), min(w, side)
    rows = np.unique(np.linspace(0, h - sh, per_side).round().astype(int))
    cols = np.unique(np.linspace(0, w - sw, per_side).round().astype(int))
    return [(int(r), int(c), int(r) + sh, int(c) + sw) for r in rows for c in cols]


def central_chip(shape: tuple[int, int], side: int) -> tuple[int, int, int, int]:
    """The chip of at most ``side`` pixels a side at the centre of a grid."""
    h, w = shape
    sh, sw = min(h, side), min(w, side)
    r0, c0 = (h - sh) // 2, (w - sw) // 2
    return r0, c0, r0 + sh, c0 + sw


def correction_on_window(correction: Affine, row0: int, col0: int) -> Affine:
    """A pixel-space correction of a grid (see :func:`warp_scene`) as seen from its
    window whose first pixel is ``(row0, col0)``."""
    return Affine.translation(-col0, -row0) @ correction @ Affine.translation(col0, row0)


def check_same_bands(before: Scene, after: Scene) -> None:
    """Raise InputError when the two scenes use different numbers of bands."""
    if before.image.shape[0] != after.image.shape[0]:
        raise InputError(
            after.path or "after",  # (a hand-built Scene may have no path)
            f"uses {after.image.shape[0]} band(s) but {before.path or 'before'} uses "
            f"{before.image.shape[0]}; choose matching bands with --bands",
        )


def align_checked_pair(before: Scene, after: Scene) -> AlignedPair:
    """:func:`align_pair` for the commands: a blank scene is refused before, and one
    scene given as both dates after (:func:`check_not_blank`,
    :func:`check_not_identical`).

    Parameters
    ----------
    before, after : Scene
        As read, each on its own grid.

    Returns
    -------
    AlignedPair
    """
    for scene in (before, after):
        check_not_blank(scene)
    pair = align_pair(before, after)
    check_not_identical(pair.before, pair.after)
    return pair


def align_pair(before: Scene, after: Scene) -> AlignedPair:
    """Put the after scene on the before scene's analysis grid and crop to the overlap.

    Parameters
    ----------
    before, after : Scene
        As read, each on its own grid; CRS, pixel size, extent and band order may
        differ (bands must agree in number).

    Returns
    -------
    AlignedPair

    Raises
    ------
    ProcessingError
        When the scenes do not overlap, or overlap by less than
        ``MIN_OVERLAP_PX`` pixels on a side.
    InputError
        When the two scenes have different numbers of bands.
    """
    check_scene(before, "before")
    check_scene(after, "after")
    check_same_bands(before, after)
    for name, scene in (("before", before), ("after", after)):
        if not scene.valid.any():
            # (Read from a file this cannot happen: read_scene refuses such a file.)
            raise ProcessingError(f"{scene.path or name} has no valid pixel (its valid "
                                  "mask is all False)")
    grid = analysis_grid(before.grid)
    # A much finer after scene is averaged over blocks first, as windows read it.
    after = coarsened_for(after, grid)
    before_on_grid = before if grid == before.grid else warp_scene(before, grid)
    after_on_grid = warp_scene(after, grid)
    both = before_on_grid.valid & after_on_grid.valid
    n_before = int(before_on_grid.valid.sum())
    box = valid_box(both)
    if box is None:
        raise ProcessingError(
            f"{after.path} does not overlap {before.path} (no valid pixel in common)"
        )
    row0, col0, row1, col1 = box
    if row1 - row0 < MIN_OVERLAP_PX or col1 - col0 < MIN_OVERLAP_PX:
        raise ProcessingError(
            f"{after.path} overlaps {before.path} by only {col1 - col0} x {row1 - row0} "
            f"pixels; at least {MIN_OVERLAP_PX} x {MIN_OVERLAP_PX} are needed"
        )
    h, w = row1 - row0, col1 - col0
    b = crop_scene(before_on_grid, row0, col0, h, w)
    a = crop_scene(after_on_grid, row0, col0, h, w)
    before_valid = b.valid.copy()
    common = b.valid & a.valid
    b.valid, a.valid = common, common.copy()
    a.image[:, ~common] = 0.0  # as every path gives the after scene (see read_pair)
    fraction = float(both.sum()) / max(n_before, 1)
    logger.info("analysis grid %s, %.3g m pixels, %d x %d px; overlap %.1f%% of before",
                grid.crs.to_string(), grid.pixel_size[0], w, h, 100 * fraction)
    return AlignedPair(b, a, after, fraction, before_valid)
