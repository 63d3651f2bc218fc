"""Synthetic before/after scene pairs with exact truth.

A scene is a description of a small world in metres (ground cover, roads, buildings
made of rectangular parts, trees, cars) that is *rendered* once per date. Everything
is anchored to the ground, so the after scene is the same world seen with another sun,
another season, another radiometry and a known misregistration:

- geometry (buildings, shadows, roads, trees...) is rendered analytically or by
  polygon coverage with anti-aliased edges, through the after grid's transform
  displaced by the true shift;
- textures are band-limited random fields synthesised in the Fourier domain and
  evaluated at the displaced sample positions with a phase ramp, so their sub-pixel
  shift is exact too;
- sensor effects (blur, radiometry, noise) are applied per date on the rendered image.

The new buildings are shapely polygons in the scene's projected CRS (metres): they are
the truth, and the renderer draws exactly them.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject, transform_bounds
from scipy import fft as sfft
from scipy import ndimage
from shapely import affinity
from shapely.geometry import Polygon, box, mapping

from ._log import logger
from .errors import OutputError
from .raster import Grid, Scene

SCENARIOS = ("compound", "suburb", "none", "demolition", "infill")

#: Centre of the default scene: the Kumsusan Palace area, Pyongyang, in EPSG:32651.
_DEFAULT_CENTRE = (741300.0, 4328250.0)

#: Reflectance to digital number: a mid-grey roof (0.35) lands near DN 105.
_DN_PER_REFLECTANCE = 300.0


# ----------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------


#: Pixel sizes (m) the generator renders faithfully.
PIXEL_SIZE_M = (0.1, 10.0)
#: Largest ground extent (m): the layout's time grows with the area (about a minute
#: at 5 km, unbounded in practice at 15 km).
MAX_EXTENT_M = 6000.0


@dataclass
class SynthParams:
    """Every knob of the generator; :meth:`for_scenario` fills scenario defaults.

    All random choices that are not layout (sun, season, radiometry, shift...) are
    drawn in :meth:`for_scenario` so that ``truth.json`` records them; the layout is
    drawn from ``seed`` when the pair is made.

    Attributes
    ----------
    scenario : str
        ``"compound"``, ``"suburb"``, ``"none"``, ``"demolition"`` (houses of the
        before date pulled down, nothing built: see :func:`_demolish`) or
        ``"infill"`` (some houses new on unchanged lawns: see :func:`_infill`).
    seed : int
        Seed of every random choice.
    size : int
        Width and height of the before scene, pixels.
    pixel_size : float
        Before pixel size, metres.
    crs : str
        Projected CRS of the before scene.
    centre : (float, float)
        Scene centre (easting, northing) in ``crs``.
    shift_px : (float, float)
        True misregistration (dx, dy) of the after scene, before-grid pixels: a feature
        at (c, r) of the before image lies at (c + dx, r + dy) of the after image.
    after_crs : str or None
        Deliver the after scene in this CRS (None: the before CRS and grid).
    after_pixel_size_m : float
        Ground size of the delivered after pixel (metres; converted to degrees at the
        scene's latitude for a geographic CRS).
    oversample : int
        Render factor of the after scene before it is warped into ``after_crs``.
    nir : bool
        Add a fourth, near-infrared band.
    nodata_margin : int
        Width in after pixels of a nodata (0) margin around the after scene.
    sun_before, sun_after : (float, float)
        Sun (azimuth clockwise from north, elevation), degrees.
    greenness_before, greenness_after : float
        Season: 0 dry/leaf-off, 1 lush summer.
    gain, offset, gamma, haze : list of float
        Per band (R, G, B[, NIR]) radiometric change of the after date:
        ``x' = (gain * x**gamma + offset) * (1 - haze) + haze * airlight``.
    airlight : float
        Reflectance of the haze.
    blur_px : (float, float)
        Gaussian point-spread sigma of each date, pixels.
    noise_dn : (float, float)
        Standard deviation of the sensor noise of each date, digital numbers.
    n_new : int
        Number of new buildings (compound: residences; suburb: upper bound).
    new_area_m2 : float
        Target footprint of one compound residence.
    new_area_jitter : float
        Relative random spread of ``new_area_m2``.
    house_area_m2 : (float, float)
        Range of new house footprints (suburb).
    site_gap_m : float
        Distance below which buildings belong to one site; residences are placed
        at least three times this apart.
    """

    scenario: str = "compound"
    seed: int = 0
    size: int = 2400
    pixel_size: float = 0.5
    crs: str = "EPSG:32651"
    centre: tuple[float, float] = _DEFAULT_CENTRE
    shift_px: tuple[float, float] = (2.3, -1.7)
    after_crs: str | None = None
    after_pixel_size_m: float = 0.5
    oversample: int = 1
    nir: bool = False
    nodata_margin: int = 0
    sun_before: tuple[float, float] = (160.0, 45.0)
    sun_after: tuple[float, float] = (200.0, 30.0)
    greenness_before: float = 0.8
    greenness_after: float = 0.3
    gain: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    gamma: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    haze: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    airlight: float = 0.6
    blur_px: tuple[float, float] = (0.5, 0.6)
    noise_dn: tuple[float, float] = (1.5, 2.0)
    n_new: int = 3
    new_area_m2: float = 13000.0
    new_area_jitter: float = 0.05
    house_area_m2: tuple[float, float] = (120.0, 400.0)
    site_gap_m: float = 40.0

    @property
    def n_bands(self) -> int:
        return 4 if self.nir else 3

    @property
    def shift_m(self) -> tuple[float, float]:
        """The shift as a ground displacement (east, north), metres."""
        return (self.shift_px[0] * self.pixel_size, -self.shift_px[1] * self.pixel_size)

    @property
    def grid(self) -> Grid:
        """The before grid (north-up, square pixels, centred on ``centre``)."""
        half = self.size * self.pixel_size / 2.0
        left = math.floor((self.centre[0] - half) / self.pixel_size) * self.pixel_size
        top = math.floor((self.centre[1] + half) / self.pixel_size) * self.pixel_size
        transform = Affine(self.pixel_size, 0.0, left, 0.0, -self.pixel_size, top)
        return Grid(CRS.from_user_input(self.crs), transform, self.size, self.size)

    @classmethod
    def for_scenario(
        cls,
        scenario: str = "compound",
        *,
        seed: int = 0,
        size: int | None = None,
        pixel_size: float | None = None,
        shift: tuple[float, float] | None = None,
        after_crs: str | None = None,
        nir: bool = False,
        nodata_margin: int = 0,
        after_pixel_size: float | None = None,
    ) -> SynthParams:
        """Scenario defaults plus the date-to-date differences drawn from ``seed``.

        Parameters
        ----------
        scenario : {"compound", "suburb", "none", "demolition", "infill"}
        seed : int
        size : int, optional
            Scene width and height in pixels (compound 2400, others 1024).
        pixel_size : float, optional
            Metres (default 0.5).
        shift : (float, float), optional
            (dx, dy) in before pixels; default random, 1.5 to 4 px in each axis.
        after_crs : str, optional
            E.g. ``"EPSG:4326"``; default the before CRS and grid.
        nir : bool
        nodata_margin : int
            After-scene margin of nodata, pixels.
        after_pixel_size : float, optional
            Delivered after pixel size in metres when ``after_crs`` is given
            (default 1.1 x ``pixel_size``).

        Raises
        ------
        ValueError
            Unknown scenario or unusable values.
        """
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; choose one of {SCENARIOS}")
        rng = np.random.default_rng([seed, 1])
        px = float(pixel_size) if pixel_size else 0.5
        if after_pixel_size is not None and not after_crs:
            # The after scene is delivered on the before scene's grid otherwise.
            raise ValueError("the after pixel size needs an after CRS (--after-crs)")
        for name, value in (("pixel size", px), ("after pixel size", after_pixel_size)):
            # Below 0.1 m the texture fields have no power left (NaN pixels); above
            # 10 m a house is less than a pixel and the compound's layout fails.
            if value is not None and not PIXEL_SIZE_M[0] <= value <= PIXEL_SIZE_M[1]:
                raise ValueError(f"{name} must be {PIXEL_SIZE_M[0]:g} to "
                                 f"{PIXEL_SIZE_M[1]:g} m, got {value:g}")
        if size is None:
            extent = 1200.0 if scenario == "compound" else 512.0
            size = int(round(extent / px))
        if size < 128:
            raise ValueError(f"size must be at least 128 px, got {size}")
        if shift is None:
            mag = rng.uniform(1.5, 4.0, size=2)
            sign = rng.choice([-1.0, 1.0], size=2)
            shift = (float(mag[0] * sign[0]), float(mag[1] * sign[1]))
        if after_crs is not None:
            try:
                # Inside an Env, GDAL's complaint goes to the exception, not to stderr.
                with rasterio.Env():
                    parsed = CRS.from_user_input(after_crs)
            except Exception as exc:  # rasterio raises CRSError, a ValueError only in part
                raise ValueError(f"after CRS {after_crs!r} is not a CRS: {exc}") from None
            if not (parsed.is_geographic or parsed.is_projected):
                # A geocentric or vertical CRS gave an after scene with no valid pixel.
                raise ValueError(f"after CRS {after_crs!r} is not a map CRS (geographic "
                                 "or projected)")
            given, after_crs = after_crs, parsed.to_string()
        extent = size * px
        if extent > MAX_EXTENT_M:
            raise ValueError(
                f"a scene of {size} px of {px:g} m covers {extent:,.0f} m; at most "
                f"{MAX_EXTENT_M:,.0f} m can be laid out in reasonable time (make --size or "
                "--pixel-size smaller)")
        if not all(abs(s) <= size / 4 for s in shift):
            raise ValueError(f"shift {shift[0]:g}, {shift[1]:g} px is more than a quarter "
                             f"of the scene's {size} px")
        if nodata_margin * 4 >= size:
            raise ValueError(f"nodata margin {nodata_margin} px leaves too little of {size} px")
        az_b = rng.uniform(125.0, 215.0)
        el_b = rng.uniform(35.0, 68.0)
        az_a = az_b + rng.choice([-1.0, 1.0]) * rng.uniform(15.0, 45.0)
        el_a = float(np.clip(el_b + rng.choice([-1.0, 1.0]) * rng.uniform(8.0, 20.0), 30.0, 72.0))
        g_b = rng.uniform(0.55, 1.0)
        g_a = float(np.clip(g_b - rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6), 0.0, 1.0))
        nb = 4
        # Haze scatters blue most and near-infrared least.
        haze_level = rng.uniform(0.0, 0.12)
        params = cls(
            scenario=scenario,
            seed=int(seed),
            size=int(size),
            pixel_size=px,
            shift_px=(float(shift[0]), float(shift[1])),
            after_crs=after_crs,
            after_pixel_size_m=float(after_pixel_size or (px * 1.1 if after_crs else px)),
            oversample=2 if (after_crs and size <= 2048) else 1,
            nir=bool(nir),
            nodata_margin=int(nodata_margin),
            sun_before=(float(az_b), float(el_b)),
            sun_after=(float(az_a), float(el_a)),
            greenness_before=float(g_b),
            greenness_after=float(g_a),
            gain=[float(v) for v in rng.uniform(0.8, 1.2, nb)],
            offset=[float(v) for v in rng.uniform(-0.03, 0.04, nb)],
            gamma=[float(v) for v in rng.uniform(0.85, 1.15, nb)],
            haze=[float(haze_level * w) for w in (0.7, 0.85, 1.0, 0.35)],
            airlight=float(rng.uniform(0.5, 0.7)),
            blur_px=(float(rng.uniform(0.4, 0.8)), float(rng.uniform(0.4, 0.8))),
            noise_dn=(float(rng.uniform(1.0, 3.0)), float(rng.uniform(1.0, 3.0))),
            n_new=3 if scenario == "compound" else (60 if scenario == "suburb" else 0),
        )
        if after_crs:
            # Where the after scene is delivered, checked now rather than after the
            # world is laid out: a CRS of another body fails to transform, and the
            # nodata margin is counted in the delivered pixels.
            try:
                with rasterio.Env():
                    delivered = _delivered_grid(params)
            except Exception:  # PROJ's reasons run to pages of JSON
                raise ValueError(f"after CRS {given!r}: no transformation from the scene's "
                                 f"{params.grid.crs.to_string()} into it (another body "
                                 "than the Earth?)") from None
            if nodata_margin * 4 >= min(delivered.shape):
                raise ValueError(f"nodata margin {nodata_margin} px leaves too little of the "
                                 f"delivered after scene's {delivered.width} x "
                                 f"{delivered.height} px")
        return params


# ----------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------

BOTH, BEFORE, AFTER = "both", "before", "after"

#: Reflectance (R, G, B, NIR) of the materials.
_MATERIALS: dict[str, tuple[float, float, float, float]] = {
    "soil": (0.36, 0.30, 0.23, 0.36),
    "soil_dark": (0.21, 0.18, 0.15, 0.26),
    "soil_bright": (0.52, 0.46, 0.37, 0.50),
    "earth": (0.50, 0.43, 0.34, 0.46),
    "spoil": (0.42, 0.36, 0.29, 0.40),
    "asphalt": (0.16, 0.16, 0.17, 0.17),
    "asphalt_new": (0.10, 0.10, 0.11, 0.11),
    "concrete": (0.56, 0.55, 0.52, 0.52),
    "pavement": (0.38, 0.37, 0.35, 0.36),
    "water": (0.05, 0.08, 0.08, 0.02),
    "wall": (0.62, 0.60, 0.56, 0.55),
}

#: Roof palettes: (name, reflectance R, G, B, NIR).
_ROOFS: list[tuple[str, tuple[float, float, float, float]]] = [
    ("bright", (0.66, 0.66, 0.64, 0.62)),
    ("white_metal", (0.74, 0.75, 0.76, 0.70)),
    ("grey", (0.38, 0.38, 0.38, 0.38)),
    ("light_grey", (0.50, 0.49, 0.47, 0.47)),
    ("dark", (0.13, 0.13, 0.14, 0.15)),
    ("dark_brown", (0.19, 0.16, 0.14, 0.20)),
    ("brown", (0.32, 0.25, 0.20, 0.30)),
    ("tan", (0.50, 0.44, 0.36, 0.48)),
    ("red", (0.45, 0.20, 0.15, 0.40)),
    ("blue", (0.17, 0.28, 0.43, 0.30)),
    ("green", (0.20, 0.34, 0.27, 0.30)),
]


def _vegetation(greenness: float, lawn: bool = False) -> np.ndarray:
    """Grass reflectance for a season (irrigated lawns stay greener)."""
    g = min(1.0, greenness + 0.35) if lawn else greenness
    dry = np.array([0.42, 0.37, 0.25, 0.34])
    green = np.array([0.13, 0.22, 0.085, 0.48])
    return (1 - g) * dry + g * green


def _canopy(greenness: float) -> np.ndarray:
    """Tree canopy reflectance (leaf-off crowns are grey-brown)."""
    g = min(1.0, 0.25 + greenness)
    bare = np.array([0.22, 0.19, 0.16, 0.24])
    leaf = np.array([0.045, 0.085, 0.04, 0.40])
    return (1 - g) * bare + g * leaf


@dataclass
class Part:
    """A rectangular building part: centre (x, y) m, half-lengths, orientation."""

    cx: float
    cy: float
    half_u: float
    half_v: float
    angle: float  # radians, direction of the u axis from east, counter-clockwise

    def polygon(self) -> Polygon:
        cu, su = math.cos(self.angle), math.sin(self.angle)
        pts = []
        for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
            u, v = a * self.half_u, b * self.half_v
            pts.append((self.cx + u * cu - v * su, self.cy + u * su + v * cu))
        return Polygon(pts)


@dataclass
class Building:
    """A building: rectangular parts, a height, a roof; new ones are the truth.

    Attributes
    ----------
    parts : list of Part
        Rectangles whose union is the footprint (wings, courtyard sides...).
    height : float
        Metres; sets the length of the shadow.
    roof : str
        ``"flat"``, ``"gable"`` or ``"hip"``.
    colour : (4,) ndarray
        Roof reflectance (R, G, B, NIR).
    dates : str
        ``"both"``, ``"before"`` or ``"after"``.
    new : bool
        Built between the dates: part of the truth.
    pitch : float
        Roof slope, degrees (pitched roofs).
    texture : float
        Relative amplitude of the roof's fine texture (tiles, gravel, stains).
    decor : list of (Part, (4,) ndarray)
        Rooftop units and skylights painted on the roof.
    """

    parts: list[Part]
    height: float
    roof: str  # flat | gable | hip
    colour: np.ndarray
    colour_name: str
    dates: str
    kind: str
    new: bool = False
    pitch: float = 28.0
    texture: float = 0.05
    decor: list[tuple[Part, np.ndarray]] = field(default_factory=list)
    footprint: Polygon = field(init=False)
    part_polygons: list[Polygon] = field(init=False)

    def __post_init__(self) -> None:
        self.part_polygons = [p.polygon() for p in self.parts]
        if len(self.part_polygons) == 1:
            self.footprint = self.part_polygons[0].normalize()
        else:
            self.footprint = shapely.union_all(self.part_polygons).normalize()


@dataclass
class Area:
    """A patch of ground cover painted over the base ground."""

    geom: Any
    material: str  # key of _MATERIALS, or "grass", "lawn"
    dates: str = BOTH
    texture: float = 0.06
    stripes: float = 0.0  # mown-field stripe period, m (0: none)
    angle: float = 0.0
    opacity: float = 1.0  # below 1 the ground shows through (thin grass, dust)
    ragged: float = 0.0  # scale (m) of an irregular, noisy outline (0: as drawn)


@dataclass
class Tree:
    x: float
    y: float
    r: float
    h: float
    dates: str = BOTH
    phase: float = 0.0
    colour: np.ndarray | None = None  # None: canopy of the season


@dataclass
class Car:
    part: Part
    colour: np.ndarray
    dates: str


@dataclass
class World:
    areas: list[Area] = field(default_factory=list)
    buildings: list[Building] = field(default_factory=list)
    trees: list[Tree] = field(default_factory=list)
    cars: list[Car] = field(default_factory=list)
    woodland: Any = None  # polygon where woodland may grow (both dates)
    woodland_after: Any = None  # woodland zone of the after date (cleared sites)
    lines: list[tuple[Any, str, str]] = field(default_factory=list)  # fences


def _present(dates: str, date: str) -> bool:
    return dates == BOTH or dates == date


# ----------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------


def _roof_choice(rng: np.random.Generator, weights: dict[str, float] | None = None
                 ) -> tuple[str, np.ndarray]:
    names = [n for n, _ in _ROOFS]
    w = np.array([(weights or {}).get(n, 1.0) for n in names], float)
    i = rng.choice(len(names), p=w / w.sum())
    colour = np.array(_ROOFS[i][1]) * rng.uniform(0.88, 1.12)
    return names[i], np.clip(colour, 0.03, 0.9)


def _rot(x: float, y: float, angle: float) -> tuple[float, float]:
    c, s = math.cos(angle), math.sin(angle)
    return (x * c - y * s, x * s + y * c)


class _Frame:
    """A rotated local frame (u along the streets, v across) in world metres."""

    def __init__(self, ox: float, oy: float, angle: float) -> None:
        self.ox, self.oy, self.angle = ox, oy, angle

    def xy(self, u: float, v: float) -> tuple[float, float]:
        dx, dy = _rot(u, v, self.angle)
        return (self.ox + dx, self.oy + dy)

    def part(self, u: float, v: float, hu: float, hv: float, dangle: float = 0.0) -> Part:
        x, y = self.xy(u, v)
        return Part(x, y, hu, hv, self.angle + dangle)

    def rect(self, u0: float, v0: float, u1: float, v1: float) -> Polygon:
        return Polygon([self.xy(u0, v0), self.xy(u1, v0), self.xy(u1, v1), self.xy(u0, v1)])


def _house_parts(rng: np.random.Generator, frame: _Frame, u: float, v: float, area: float,
                 max_w: float, max_d: float, facing: float) -> list[Part] | None:
    """Parts of a detached house of about ``area`` m² centred at (u, v) of ``frame``.

    ``facing`` is +1 or -1: the side of the street (the garage wing points to it).
    """
    shape = rng.choice(["rect", "rect", "L", "L", "T"])
    aspect = rng.uniform(1.1, 1.9)
    if shape == "rect":
        w = math.sqrt(area * aspect)
        d = area / w
        if w > max_w or d > max_d:
            return None
        return [frame.part(u, v, w / 2, d / 2)]
    # main block plus a wing (garage or side wing) of a share of the area
    share = rng.uniform(0.22, 0.38)
    a_main = area * (1 - share)
    w = math.sqrt(a_main * aspect)
    d = a_main / w
    a_wing = area * share
    ww = math.sqrt(a_wing * rng.uniform(0.8, 1.3))
    wd = a_wing / ww
    # the wing overlaps the main block by a strip of 1 m depth to stay one building
    overlap = 1.0
    wd_ext = wd + overlap
    if shape == "L":
        side = rng.choice([-1.0, 1.0])
        wu = u + side * (w / 2 - ww / 2)
    else:
        wu = u
    wv = v + facing * (d / 2 + wd / 2 - overlap / 2)
    total_d = d + wd
    if w > max_w or total_d > max_d:
        return None
    # re-centre the whole house on (u, v)
    shift = -facing * wd / 2
    return [frame.part(u, v + shift, w / 2, d / 2),
            frame.part(wu, wv + shift, ww / 2, wd_ext / 2)]


def _neighbourhood(
    rng: np.random.Generator,
    world: World,
    region: Polygon,
    angle: float,
    *,
    new: bool,
    keep_out: Any,
    allowed_new: Polygon,
    house_area: tuple[float, float],
    fill: float,
    style: str = "houses",
    max_new: int = 10**9,
) -> list[Building]:
    """Fill ``region`` with streets, lots, houses, driveways, trees and cars.

    When ``new``, the streets, houses and driveways exist only in the after scene and
    the land is bare or grass before; houses outside ``allowed_new`` are skipped.
    Returns the new buildings added.
    """
    if region.is_empty:
        return []  # a scene the compound fills: no city around it
    cx, cy = region.centroid.x, region.centroid.y
    frame = _Frame(cx, cy, angle)
    r = math.sqrt((region.bounds[2] - region.bounds[0]) ** 2
                  + (region.bounds[3] - region.bounds[1]) ** 2) / 2 + 50
    dates = AFTER if new else BOTH
    road_w = rng.uniform(7.0, 10.0)
    block_d = rng.uniform(58.0, 80.0) if style == "houses" else rng.uniform(90.0, 130.0)
    block_l = rng.uniform(160.0, 260.0)
    v_off = rng.uniform(0, block_d)
    u_off = rng.uniform(0, block_l)
    roads = []
    for k in range(-int(r / block_d) - 1, int(r / block_d) + 2):
        v = v_off + k * block_d
        roads.append(frame.rect(-r, v - road_w / 2, r, v + road_w / 2))
    for k in range(-int(r / block_l) - 1, int(r / block_l) + 2):
        u = u_off + k * block_l
        roads.append(frame.rect(u - road_w / 2, -r, u + road_w / 2, r))
    # each street piece is its own patch: mostly convex rectangles, cheap to render
    pieces = shapely.get_parts(shapely.difference(shapely.intersection(roads, region),
                                                  keep_out))
    pieces = [g for g in pieces if isinstance(g, Polygon) and g.area > 1.0]
    for g in pieces:
        world.areas.append(Area(g, "asphalt_new" if new else "asphalt", dates, 0.04))
    streets = shapely.MultiPolygon(pieces) if pieces else Polygon()
    new_buildings: list[Building] = []
    lot_d = block_d / 2 - road_w / 2
    fences = []
    roof_weights = None if style == "houses" else {"bright": 2, "grey": 3, "light_grey": 3,
                                                   "green": 1.5, "blue": 1.5, "dark": 1}
    for k in range(-int(r / block_d) - 1, int(r / block_d) + 2):
        v_street = v_off + k * block_d
        for facing in (-1.0, 1.0):
            # lots on this side of the street, their front at the street edge
            v_front = v_street + facing * road_w / 2
            v_back = v_street + facing * (block_d / 2)
            for m in range(-int(r / block_l) - 1, int(r / block_l) + 2):
                u_start = u_off + m * block_l + road_w / 2
                u_end = u_start + block_l - road_w
                u = u_start
                # one lawn for the block side; single yards differ only now and then
                strip = frame.rect(u_start, min(v_front, v_back), u_end, max(v_front, v_back))
                if not new and region.contains(strip) and not strip.intersects(keep_out):
                    world.areas.append(Area(strip, "lawn" if rng.random() < 0.7 else "grass",
                                            BOTH, 0.05, opacity=float(rng.uniform(0.6, 1.0))))
                while u < u_end - 10:
                    if style == "houses":
                        lot_w = rng.uniform(15.0, 24.0)
                    else:
                        lot_w = rng.uniform(60.0, 110.0)
                    lot_w = min(lot_w, u_end - u)
                    lot = frame.rect(u, min(v_front, v_back), u + lot_w, max(v_front, v_back))
                    uc = u + lot_w / 2
                    u += lot_w
                    if not region.contains(lot) or lot.intersects(keep_out):
                        continue
                    fences.append(lot.exterior)
                    yard = rng.choice(["lawn", "grass", "soil_dark", "soil"],
                                      p=[0.4, 0.4, 0.1, 0.1])
                    if new:
                        # graded lots: bare soil, some seeded with thin grass or sod
                        cover = rng.choice(["soil", "soil", "soil_bright", "grass", "lawn"])
                        world.areas.append(Area(lot, cover, AFTER, 0.08,
                                                opacity=float(rng.uniform(0.35, 0.8))))
                    elif rng.random() < 0.3:
                        world.areas.append(Area(lot, yard, BOTH, 0.05,
                                                opacity=float(rng.uniform(0.4, 0.9))))
                    if rng.random() > fill:
                        continue
                    setback = rng.uniform(5.0, 8.0) if style == "houses" else rng.uniform(6, 12)
                    depth_avail = lot_d - setback - 3.0
                    if style == "houses":
                        area = rng.uniform(*house_area)
                        parts = None
                        for _ in range(4):
                            parts = _house_parts(rng, frame, uc, 0.0, area, lot_w - 3.0,
                                                 depth_avail, -facing)
                            if parts:
                                break
                            area *= 0.85
                        if not parts or area < house_area[0]:
                            continue
                        height = rng.uniform(3.5, 7.5)
                        roof = rng.choice(["gable", "hip", "hip", "flat"], p=[0.4, 0.3, 0.2, 0.1])
                    else:
                        length = min(lot_w - 8.0, rng.uniform(40.0, 100.0))
                        depth = min(depth_avail, rng.uniform(11.0, 18.0))
                        parts = [frame.part(uc, 0.0, length / 2, depth / 2)]
                        height = rng.uniform(15.0, 45.0)
                        roof = "flat"
                    # place the house: its front edge at the setback line
                    half_depth = max(abs(_local_v(frame, p)) + p.half_v for p in parts)
                    v_house = v_front + facing * (setback + half_depth)
                    parts = [replace(p, cx=p.cx + _rot(0, v_house, angle)[0],
                                     cy=p.cy + _rot(0, v_house, angle)[1]) for p in parts]
                    if rng.random() < 0.15 and style == "houses":
                        # a house set at an angle to its street
                        rot = rng.uniform(-0.5, 0.5)
                        c0 = (sum(p.cx for p in parts) / len(parts),
                              sum(p.cy for p in parts) / len(parts))
                        parts = [_rotate_part(p, rot, c0) for p in parts]
                    name, colour = _roof_choice(rng, roof_weights)
                    b = Building(parts, float(height), str(roof), colour, name, dates,
                                 "house" if style == "houses" else "apartment block", new)
                    if not lot.buffer(-0.5).contains(b.footprint):
                        continue
                    if new and (not allowed_new.contains(b.footprint)
                                or len(new_buildings) >= max_new):
                        continue
                    world.buildings.append(b)
                    if b.new:
                        new_buildings.append(b)
                    # driveway from the street to the house front
                    dw = rng.uniform(3.0, 5.5)
                    du = rng.uniform(-lot_w / 2 + dw, lot_w / 2 - dw) * 0.6
                    v_face = v_front + facing * setback
                    drive = frame.rect(uc + du - dw / 2, min(v_front, v_face),
                                       uc + du + dw / 2, max(v_front, v_face) + 0.5)
                    world.areas.append(Area(drive, "concrete", dates, 0.04))
                    if rng.random() < 0.5:
                        x, y = frame.xy(uc + du, v_front + facing * setback * 0.5)
                        world.cars.append(_car(rng, x, y, angle + math.pi / 2,
                                               rng.choice([BOTH, BEFORE, AFTER]) if not new
                                               else AFTER))
                    # trees in the yard, some touching the house
                    n_trees = rng.poisson(1.1 if not new else 0.3)
                    for _ in range(n_trees):
                        tu = uc + rng.uniform(-lot_w / 2, lot_w / 2)
                        tv = v_back - facing * rng.uniform(1.0, lot_d * 0.45)
                        x, y = frame.xy(tu, tv)
                        radius = rng.uniform(1.2, 2.5) if new else rng.uniform(2.0, 5.5)
                        world.trees.append(Tree(x, y, radius, radius * rng.uniform(1.5, 2.5),
                                                dates, rng.uniform(0, 6.28)))
                    if rng.random() < 0.3:
                        # an older tree at a corner of the house overhangs its roof
                        # (new houses are built among the trees that were there)
                        corners = np.asarray(b.footprint.exterior.coords)[:-1]
                        cx_, cy_ = corners[rng.integers(len(corners))]
                        radius = rng.uniform(2.5, 5.0)
                        ang = rng.uniform(0, 2 * math.pi)
                        world.trees.append(Tree(cx_ + math.cos(ang) * radius * 0.6,
                                                cy_ + math.sin(ang) * radius * 0.6, radius,
                                                radius * rng.uniform(1.8, 2.6), BOTH,
                                                rng.uniform(0, 6.28)))
    if fences:
        world.lines.append((shapely.MultiLineString(fences), dates, "fence"))
    # cars along the streets
    if not streets.is_empty:
        n_cars = int(streets.area / 1000)
        pts = _random_points_in(rng, streets, n_cars)
        for x, y in pts:
            world.cars.append(_car(rng, x, y, angle + rng.choice([0, math.pi / 2]),
                                   AFTER if new else rng.choice([BOTH, BEFORE, AFTER])))
    return new_buildings


def _local_v(frame: _Frame, p: Part) -> float:
    dx, dy = p.cx - frame.ox, p.cy - frame.oy
    return -dx * math.sin(frame.angle) + dy * math.cos(frame.angle)


def _rotate_part(p: Part, rot: float, centre: tuple[float, float]) -> Part:
    dx, dy = _rot(p.cx - centre[0], p.cy - centre[1], rot)
    return Part(centre[0] + dx, centre[1] + dy, p.half_u, p.half_v, p.angle + rot)


_CAR_COLOURS = np.array([
    (0.75, 0.75, 0.76, 0.7), (0.08, 0.08, 0.09, 0.1), (0.4, 0.4, 0.42, 0.4),
    (0.55, 0.08, 0.07, 0.4), (0.1, 0.15, 0.35, 0.2), (0.6, 0.6, 0.62, 0.55),
])


def _car(rng: np.random.Generator, x: float, y: float, angle: float, dates: str) -> Car:
    colour = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]
    return Car(Part(x, y, rng.uniform(2.0, 2.5), rng.uniform(0.85, 1.0), angle), colour, dates)


def _random_points_in(rng: np.random.Generator, geom: Any, n: int) -> list[tuple[float, float]]:
    if n <= 0 or geom.is_empty:
        return []
    x0, y0, x1, y1 = geom.bounds
    out: list[tuple[float, float]] = []
    for _ in range(20):
        xs = rng.uniform(x0, x1, 4 * n)
        ys = rng.uniform(y0, y1, 4 * n)
        inside = shapely.contains_xy(geom, xs, ys)
        out.extend(zip(xs[inside].tolist(), ys[inside].tolist()))
        if len(out) >= n:
            break
    return out[:n]


def _blob(rng: np.random.Generator, x: float, y: float, radius: float, n: int = 5) -> Polygon:
    """An irregular patch: a union of discs around (x, y)."""
    discs = [shapely.Point(x + rng.normal(0, radius / 2), y + rng.normal(0, radius / 2))
             .buffer(radius * rng.uniform(0.4, 0.8), 8) for _ in range(n)]
    return shapely.union_all(discs)


def _residence_parts(rng: np.random.Generator, frame: _Frame, u: float, v: float,
                     area: float) -> list[Part]:
    """A residence: a main block with wings, scaled to ``area`` m² of footprint."""
    variant = rng.choice(["U", "H", "E", "T"])
    main_l, main_d = rng.uniform(90.0, 120.0), rng.uniform(38.0, 50.0)
    wing_l, wing_w = rng.uniform(30.0, 45.0), rng.uniform(18.0, 26.0)
    parts = [(0.0, 0.0, main_l / 2, main_d / 2)]
    ends = main_l / 2 - wing_w / 2
    if variant == "U":
        for s in (-1, 1):
            parts.append((s * ends, main_d / 2 + wing_l / 2 - 1, wing_w / 2, wing_l / 2 + 1))
    elif variant == "H":
        for s in (-1, 1):
            parts.append((s * ends, 0.0, wing_w / 2, main_d / 2 + wing_l / 2))
    elif variant == "E":
        for s in (-1, 0, 1):
            parts.append((s * ends, main_d / 2 + wing_l / 2 - 1, wing_w / 2, wing_l / 2 + 1))
    else:  # T with a rear wing and two short side wings
        parts.append((0.0, -(main_d / 2 + wing_l / 2 - 1), wing_w * 0.7, wing_l / 2 + 1))
        for s in (-1, 1):
            parts.append((s * ends, main_d / 2 + wing_l / 4, wing_w / 2, wing_l / 4 + 1))
    fp = shapely.union_all([box(pu - hu, pv - hv, pu + hu, pv + hv) for pu, pv, hu, hv in parts])
    k = math.sqrt(area / fp.area)
    cx_, cy_ = fp.centroid.x, fp.centroid.y
    return [frame.part(u + (pu - cx_) * k, v + (pv - cy_) * k, hu * k, hv * k)
            for pu, pv, hu, hv in parts]


def _courtyard_parts(frame: _Frame, u: float, v: float, lu: float, lv: float,
                     wing: float) -> list[Part]:
    """Four wings around a courtyard: outer size lu x lv, wing depth ``wing``."""
    return [
        frame.part(u, v - lv / 2 + wing / 2, lu / 2, wing / 2),
        frame.part(u, v + lv / 2 - wing / 2, lu / 2, wing / 2),
        frame.part(u - lu / 2 + wing / 2, v, wing / 2, lv / 2),
        frame.part(u + lu / 2 - wing / 2, v, wing / 2, lv / 2),
    ]


def _scene_box(params: SynthParams) -> Polygon:
    return box(*params.grid.bounds)


def _safe_region(params: SynthParams) -> Polygon:
    """Where new buildings may lie: inside valid data of both dates, with a rim."""
    px = params.pixel_size
    rim = (params.nodata_margin + max(abs(params.shift_px[0]), abs(params.shift_px[1]))
           + 4) * px + 5.0
    if params.after_crs:
        rim += 0.02 * params.size * px
    return _scene_box(params).buffer(-rim, join_style="mitre")


def _layout_suburb(params: SynthParams, rng: np.random.Generator) -> World:
    world = World()
    scene = _scene_box(params)
    safe = _safe_region(params)
    angle = rng.uniform(-0.5, 0.5)
    cx, cy = scene.centroid.x, scene.centroid.y
    extent = params.size * params.pixel_size
    # the new development: a half-plane of the scene behind a random line
    theta = rng.uniform(0, 2 * math.pi)
    big = extent * 2
    nx, ny = math.cos(theta), math.sin(theta)
    off = rng.uniform(-0.15, 0.15) * extent
    px_, py_ = cx + nx * off, cy + ny * off
    half = Polygon([(px_ + ny * big, py_ - nx * big), (px_ - ny * big, py_ + nx * big),
                    (px_ - ny * big + nx * big, py_ + nx * big + ny * big),
                    (px_ + ny * big + nx * big, py_ - nx * big + ny * big)])
    new_zone = scene.intersection(half) if params.scenario == "suburb" else Polygon()
    old_zone = scene.difference(new_zone)
    # woodland and fields where nothing is built
    world.woodland = _blob(rng, cx + rng.uniform(-0.4, 0.4) * extent,
                           cy + rng.uniform(-0.4, 0.4) * extent, extent * 0.25, 6)
    keep_out = world.woodland
    _neighbourhood(rng, world, old_zone, angle, new=False, keep_out=keep_out,
                   allowed_new=safe, house_area=(100.0, 350.0), fill=0.85)
    if not new_zone.is_empty:
        _neighbourhood(rng, world, new_zone, angle + rng.uniform(-0.3, 0.3), new=True,
                       keep_out=keep_out, allowed_new=safe,
                       house_area=params.house_area_m2, fill=0.8, max_new=params.n_new)
    _non_building_changes(params, rng, world, scene)
    world.woodland_after = world.woodland
    if params.scenario == "demolition":
        # Its own random stream: the other scenarios' layouts stay as they were.
        _demolish(world, safe, np.random.default_rng([params.seed, 7]))
    if params.scenario == "infill":
        _infill(world, safe, np.random.default_rng([params.seed, 8]))
    if params.scenario == "none":
        # nothing but season, sun, sensor and registration changes: parked cars stay
        for car in world.cars:
            car.dates = BOTH
    return world


#: Demolition scenario: share of the houses pulled down, and what each leaves in the
#: after date (material, texture, ragged outline in m, weight): its concrete slab,
#: graded soil, rubble.
DEMOLISHED_SHARE = 0.3
_DEMOLITION_REMAINS = (("concrete", 0.04, 0.0, 0.4), ("soil", 0.08, 0.5, 0.3),
                       ("spoil", 0.3, 0.5, 0.3))


def _demolish(world: World, within: Polygon, rng: np.random.Generator) -> None:
    """Pull down a share of the houses standing in both dates, inside ``within``.

    A demolished house is in the before date only; in the after date its footprint
    (a metre wider: the walls' foundations and the machines' tracks) is a bare slab,
    graded soil or rubble. None of it is a new building, so the truth stays empty:
    whatever a detector reports there is false.
    """
    weights = np.array([w for *_, w in _DEMOLITION_REMAINS])
    for b in world.buildings:
        if b.dates != BOTH or not within.contains(b.footprint) or rng.random() >= DEMOLISHED_SHARE:
            continue
        b.dates = BEFORE
        k = int(rng.choice(len(weights), p=weights / weights.sum()))
        material, texture, ragged, _ = _DEMOLITION_REMAINS[k]
        world.areas.append(Area(b.footprint.buffer(1.0, join_style="mitre"), material, AFTER,
                                texture, ragged=ragged))


#: Infill scenario: share of the houses of an established neighbourhood that are new.
INFILL_SHARE = 0.25


def _infill(world: World, within: Polygon, rng: np.random.Generator) -> None:
    """Make a share of the houses standing in both dates new, inside ``within``.

    The neighbourhood was there before; the new houses went up on its lawns and yards,
    which stay as they were around them: no construction earth, no new street. A new
    roof then faces unchanged ground on most of its rim, as infill building does
    (the suburb and compound scenarios put every new house on changed ground).
    """
    for b in world.buildings:
        if b.dates != BOTH or not within.contains(b.footprint) or rng.random() >= INFILL_SHARE:
            continue
        b.dates = AFTER
        b.new = True


def _free_spot(rng: np.random.Generator, world: World, within: Polygon, w: float, h: float,
               angle: float, tries: int = 60) -> Polygon | None:
    """A w x h rectangle inside ``within`` that touches no building or area patch."""
    # everything but the large background lawns is in the way
    # vectorised buffers: this runs over every building and tree of a city
    trees = shapely.buffer(shapely.points([(t.x, t.y) for t in world.trees]) if world.trees
                           else np.empty(0, object), [t.r for t in world.trees], quad_segs=2)
    footprints = shapely.buffer(np.array([b.footprint for b in world.buildings], object), 5.0,
                                quad_segs=2)
    occupied = shapely.STRtree(
        list(footprints) + list(trees)
        + [a.geom for a in world.areas if a.material != "lawn" or a.geom.area < 5e4]
        + [g for g in (world.woodland, world.woodland_after) if g is not None and not g.is_empty])
    if within.is_empty:
        return None  # a scene too small to leave room inside its edge
    x0, y0, x1, y1 = within.bounds
    for _ in range(tries):
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        rect = affinity.rotate(box(x - w / 2, y - h / 2, x + w / 2, y + h / 2), angle,
                               use_radians=True)
        if within.contains(rect) and not len(occupied.query(rect, "intersects")):
            return rect
    return None


def _non_building_changes(params: SynthParams, rng: np.random.Generator, world: World,
                          scene: Polygon) -> None:
    """A new paved lot and mown fields: change that is not a building."""
    if params.scenario == "none":
        return
    inner = scene.buffer(-30)
    angle = rng.uniform(-0.6, 0.6)
    lot = _free_spot(rng, world, inner, rng.uniform(35, 70), rng.uniform(25, 45), angle)
    if lot is not None:
        world.areas.append(Area(lot, rng.choice(["concrete", "asphalt_new", "pavement"]),
                                AFTER, 0.03))
        # parked cars on the new lot
        for x, y in _random_points_in(rng, lot.buffer(-3), int(lot.area / 120)):
            world.cars.append(_car(rng, x, y, angle + math.pi / 2, AFTER))
    for _ in range(2):
        field_ = _free_spot(rng, world, inner, rng.uniform(50, 120), rng.uniform(40, 90),
                            rng.uniform(-0.6, 0.6))
        if field_ is not None:
            world.areas.append(Area(field_, "grass", BEFORE, 0.08))
            world.areas.append(Area(field_, "grass", AFTER, 0.05,
                                    stripes=rng.uniform(3.0, 6.0),
                                    angle=rng.uniform(0, math.pi)))


def _layout_compound(params: SynthParams, rng: np.random.Generator) -> World:
    world = World()
    scene = _scene_box(params)
    safe = _safe_region(params)
    cx, cy = scene.centroid.x, scene.centroid.y
    extent = params.size * params.pixel_size
    angle = rng.uniform(-0.25, 0.25)
    frame = _Frame(cx + rng.uniform(-0.03, 0.03) * extent,
                   cy + rng.uniform(-0.03, 0.03) * extent, angle)
    cu = min(1000.0, extent * 0.82) * rng.uniform(0.95, 1.03) / 2  # half sizes
    cv = min(880.0, extent * 0.75) * rng.uniform(0.95, 1.03) / 2
    compound = frame.rect(-cu, -cv, cu, cv)
    outside = compound.buffer(45, join_style="mitre")
    # the city around: apartment slabs and houses
    _neighbourhood(rng, world, scene.difference(outside), angle + rng.uniform(-0.2, 0.2),
                   new=False, keep_out=outside, allowed_new=safe, house_area=(90, 300),
                   fill=0.8, style=rng.choice(["slabs", "houses"]))
    # moat and outer road
    moat = frame.rect(-cu - 38, -cv - 38, cu + 38, cv + 38).difference(
        frame.rect(-cu - 18, -cv - 18, cu + 18, cv + 18))
    world.areas.append(Area(moat.difference(frame.rect(-30, -cv - 60, 30, -cv + 1)),
                            "water", BOTH, 0.02))
    ring = frame.rect(-cu - 18, -cv - 18, cu + 18, cv + 18).difference(
        frame.rect(-cu - 4, -cv - 4, cu + 4, cv + 4))
    world.areas.append(Area(ring, "asphalt", BOTH, 0.04))
    # lawns over the whole inside, paved avenues and the plaza
    world.areas.append(Area(compound, "lawn", BOTH, 0.06))
    inner_road_w = 8.0
    inner_ring = frame.rect(-cu + 12, -cv + 12, cu - 12, cv - 12).difference(
        frame.rect(-cu + 12 + inner_road_w, -cv + 12 + inner_road_w,
                   cu - 12 - inner_road_w, cv - 12 - inner_road_w))
    avenue = frame.rect(-12, -cv - 60, 12, -cv * 0.1)
    plaza = frame.rect(-cu * 0.35, -cv * 0.72, cu * 0.35, -cv * 0.35)
    cross = frame.rect(-cu + 12, cv * 0.05 - 5, cu - 12, cv * 0.05 + 5)
    world.areas += [Area(inner_ring, "pavement", BOTH, 0.04),
                    Area(avenue, "pavement", BOTH, 0.04),
                    Area(plaza, "concrete", BOTH, 0.05),
                    Area(cross, "asphalt", BOTH, 0.04)]
    # the compound wall, a long thin building that casts a shadow
    wall_t = 2.0
    wall = [frame.part(0, -cv, cu, wall_t / 2), frame.part(0, cv, cu, wall_t / 2),
            frame.part(-cu, 0, wall_t / 2, cv), frame.part(cu, 0, wall_t / 2, cv)]
    world.buildings.append(Building(wall, 5.0, "flat", np.array(_MATERIALS["wall"]), "wall",
                                    BOTH, "wall"))
    # the palace: a large courtyard block behind the plaza, and auxiliary halls
    pal_u, pal_v = rng.uniform(160, 210) / 2, rng.uniform(100, 130) / 2
    palace = _courtyard_parts(frame, 0.0, -cv * 0.18, 2 * pal_u, 2 * pal_v, 28.0)
    palace.append(frame.part(0.0, -cv * 0.18, 14.0, pal_v))  # central hall splits the yard
    name, colour = _roof_choice(rng, {"green": 3, "grey": 2, "light_grey": 2, "blue": 1})
    world.buildings.append(Building(palace, rng.uniform(20, 28), "hip", colour, name, BOTH,
                                    "palace"))
    aux_spots = [(-cu * 0.7, -cv * 0.55), (cu * 0.7, -cv * 0.55), (-cu * 0.7, -cv * 0.15),
                 (cu * 0.7, -cv * 0.15), (-cu * 0.45, -cv * 0.85), (cu * 0.45, -cv * 0.85)]
    for u, v in aux_spots:
        if rng.random() < 0.25:
            continue
        lu, lv = rng.uniform(40, 90), rng.uniform(25, 60)
        if rng.random() < 0.35:
            parts = _courtyard_parts(frame, u, v, max(lu, 50), max(lv, 40), rng.uniform(10, 14))
        else:
            parts = [frame.part(u, v, lu / 2, lv / 2)]
        weights = {"dark": 3, "dark_brown": 2} if rng.random() < 0.4 else None
        name, colour = _roof_choice(rng, weights)
        world.buildings.append(Building(parts, rng.uniform(6, 16),
                                        rng.choice(["flat", "hip", "gable"]), colour, name,
                                        BOTH, "hall"))
    # tree rows along the avenue and the cross road
    for v in np.arange(-cv - 5, -cv * 0.75, 11.0):
        for s in (-1, 1):
            x, y = frame.xy(s * 18, v)
            world.trees.append(Tree(x, y, rng.uniform(2.5, 3.5), rng.uniform(7, 10), BOTH,
                                    rng.uniform(0, 6.28)))
    for u in np.arange(-cu + 25, cu - 25, 12.0):
        for s in (-1, 1):
            x, y = frame.xy(u, cv * 0.05 + s * 10)
            world.trees.append(Tree(x, y, rng.uniform(2.5, 3.8), rng.uniform(7, 11), BOTH,
                                    rng.uniform(0, 6.28)))
    # groves in the back half, where the residences will be built
    groves = shapely.union_all([_blob(rng, *frame.xy(rng.uniform(-cu, cu) * 0.8,
                                                     rng.uniform(0.15, 0.95) * cv),
                                      rng.uniform(40, 90), 5) for _ in range(5)])
    groves = groves.intersection(frame.rect(-cu + 25, cv * 0.1 + 10, cu - 25, cv - 25))
    # three residences side by side behind the cross road
    n = params.n_new
    areas = [params.new_area_m2 * (1 + rng.uniform(-1, 1) * params.new_area_jitter)
             for _ in range(n)]
    spacing = (2 * cu - 60) / max(n, 1)
    new_sites = []
    v_row = cv * rng.uniform(0.5, 0.58)
    for i in range(n):
        u = -cu + 30 + spacing * (i + 0.5) + rng.uniform(-10, 10)
        for _ in range(20):
            parts = _residence_parts(rng, frame, u, v_row + rng.uniform(-15, 15), areas[i])
            if rng.random() < 0.5:
                c0 = frame.xy(u, v_row)
                parts = [_rotate_part(p, math.pi, c0) for p in parts]
            name, colour = _roof_choice(rng, {"bright": 1, "grey": 1, "dark": 1, "green": 1,
                                              "blue": 1, "red": 0.6, "white_metal": 0.6})
            b = Building(parts, rng.uniform(12, 20), rng.choice(["hip", "flat", "hip"]),
                         colour, name, AFTER, "residence", True)
            others = [o.footprint for o in world.buildings]
            if (safe.contains(b.footprint) and compound.buffer(-30).contains(b.footprint)
                    and not any(b.footprint.distance(o) < 3 * params.site_gap_m / 2
                                for o in others)):
                world.buildings.append(b)
                new_sites.append(b)
                break
    for b in new_sites:
        _construction_site(rng, world, b, frame)
    # the residences replaced part of the groves: those trees are gone after
    cleared = shapely.union_all([b.footprint.buffer(25) for b in new_sites]) \
        if new_sites else Polygon()
    world.woodland = groves
    world.woodland_after = groves.difference(cleared)
    # lawn trees scattered, some of them cut for the sites
    built = shapely.union_all([b.footprint.buffer(4) for b in world.buildings if not b.new])
    shapely.prepare(built)
    for x, y in _random_points_in(rng, compound.difference(plaza).difference(avenue), 160):
        if shapely.contains_xy(built, x, y):
            continue
        cut = cleared.contains(shapely.Point(x, y)) if new_sites else False
        world.trees.append(Tree(x, y, rng.uniform(2.0, 5.0), rng.uniform(6, 14),
                                BEFORE if cut else BOTH, rng.uniform(0, 6.28)))
    # meadows and a pond break up the lawns
    front = frame.rect(-cu + 20, -cv + 20, cu - 20, cv * 0.05 - 10)
    for material, (w_, h_) in (("grass", (120, 70)), ("grass", (90, 60)), ("soil", (40, 30)),
                               ("water", (70, 45))):
        spot = _free_spot(rng, world, front, w_ * rng.uniform(0.7, 1.3),
                          h_ * rng.uniform(0.7, 1.3), angle)
        if spot is not None:
            world.areas.append(Area(spot, material, BOTH, 0.06, ragged=8.0))
    _non_building_changes(params, rng, world, compound)
    return world


def _construction_site(rng: np.random.Generator, world: World, b: Building,
                       frame: _Frame) -> None:
    """Bare earth, spoil heaps, a new access road and machines around a new building."""
    fp = b.footprint
    margin = rng.uniform(8, 22)
    earth = fp.buffer(margin, join_style="mitre")
    world.areas.append(Area(earth, rng.choice(["earth", "soil", "soil_bright"]), AFTER, 0.12,
                            ragged=float(rng.uniform(4.0, 10.0))))
    for _ in range(rng.integers(3, 9)):
        x, y = _random_points_in(rng, earth.difference(fp.buffer(3)), 1)[0]
        world.trees.append(Tree(x, y, rng.uniform(2.0, 6.0), rng.uniform(1.5, 3.5), AFTER,
                                rng.uniform(0, 6.28),
                                np.array(_MATERIALS["spoil"]) * rng.uniform(0.7, 1.2)))
    # access road from the building to the cross road (south in the frame)
    c = fp.centroid
    _, v = _frame_uv(frame, c.x, c.y)
    u, _ = _frame_uv(frame, c.x, c.y)
    road = frame.rect(u - 4, v - 200, u + 4, v).difference(fp)
    world.areas.append(Area(road.intersection(earth.buffer(60)), "asphalt_new", AFTER, 0.03))
    yellow = np.array([0.6, 0.5, 0.1, 0.45])
    for x, y in _random_points_in(rng, earth.difference(fp.buffer(2)), int(rng.integers(2, 6))):
        world.cars.append(Car(Part(x, y, rng.uniform(3, 5), rng.uniform(1.2, 1.6),
                                   rng.uniform(0, math.pi)), yellow * rng.uniform(0.8, 1.1),
                              AFTER))


def _frame_uv(frame: _Frame, x: float, y: float) -> tuple[float, float]:
    dx, dy = x - frame.ox, y - frame.oy
    c, s = math.cos(frame.angle), math.sin(frame.angle)
    return (dx * c + dy * s, -dx * s + dy * c)


def make_world(params: SynthParams) -> World:
    """The scene's content for ``params`` (deterministic for ``params.seed``)."""
    rng = np.random.default_rng([params.seed, 2])
    if params.scenario == "compound":
        world = _layout_compound(params, rng)
    else:
        world = _layout_suburb(params, rng)
    _finish_roofs(world, np.random.default_rng([params.seed, 6]))
    return world


def _finish_roofs(world: World, rng: np.random.Generator) -> None:
    """Roof pitch, texture, and rooftop units on flat roofs."""
    for b in world.buildings:
        b.pitch = float(rng.uniform(20.0, 38.0))
        b.texture = float(rng.uniform(0.02, 0.12))
        if b.roof != "flat" or b.kind == "wall":
            continue
        for p in b.parts:
            if p.half_u * p.half_v * 4 < 150:
                continue
            for _ in range(int(rng.integers(0, 2 + int(p.half_u * p.half_v / 150)))):
                hu, hv = rng.uniform(0.6, 2.5), rng.uniform(0.6, 2.0)
                if hu > p.half_u - 1.5 or hv > p.half_v - 1.5:
                    continue
                u = rng.uniform(-p.half_u + hu + 1.0, p.half_u - hu - 1.0)
                v = rng.uniform(-p.half_v + hv + 1.0, p.half_v - hv - 1.0)
                dx, dy = _rot(u, v, p.angle)
                tone = rng.choice([0.55, 0.8, 1.3, 1.5])
                b.decor.append((Part(p.cx + dx, p.cy + dy, hu, hv, p.angle),
                                np.clip(b.colour * tone, 0.03, 0.9)))


# ----------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------


@dataclass
class _Canvas:
    """A render target: ``transform`` maps render pixels to world metres."""

    transform: Affine
    height: int
    width: int
    # position of render pixel (0, 0)'s centre in before-pixel coordinates
    fx0: float
    fy0: float
    step: float  # before pixels per render pixel

    @property
    def px(self) -> float:
        return math.hypot(self.transform.a, self.transform.d)

    def __post_init__(self) -> None:
        #: coefficients (a, b, c, d, e, f) of the world-to-pixel map
        self.inverse = tuple((~self.transform)[:6])


class _Fields:
    """Band-limited random fields over the scene, sampled exactly at any offset.

    Each field is a random spectrum times a radial filter on a periodic canvas of
    before pixels that contains the scene with a pad; it is evaluated on a render
    canvas by an inverse FFT with a phase ramp for the canvas origin (and zero padding
    for oversampling), so a displaced canvas sees exactly the displaced field.
    """

    def __init__(self, params: SynthParams, pad: int) -> None:
        self.pad = pad
        n = sfft.next_fast_len(params.size + 2 * pad, real=True)
        if n % 2:
            n = sfft.next_fast_len(n + 1, real=True)
        self.n = n
        self.seed = params.seed
        self.px = params.pixel_size
        #: correlation lengths (metres) of each named field, and spectral slope
        self.scales = {"large": 60.0, "mid": 8.0, "fine": 1.2, "canopy": 12.0,
                       "crown": 2.5}
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _spectrum(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if name not in self._cache:
            self._cache[name] = self._make_spectrum(name)
        return self._cache[name]

    def _make_spectrum(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The field's spectrum on the block of frequencies where it is not negligible.

        Returns the (2K+1, K+1) complex64 block (rows: ky = 0..K, then -K..-1;
        columns: kx = 0..K) and its frequencies fy (2K+1, 1), fx (1, K+1) in cycles
        per canvas pixel.
        """
        n = self.n
        length = self.scales[name] / self.px  # pixels
        # beyond 0.75 / length the Gaussian filter is below 2e-5
        kmax = int(min(n // 2 - 1, math.ceil(0.75 / length * n)))
        key = list(self.scales).index(name)
        rng = np.random.default_rng([self.seed, 3, key])
        shape = (2 * kmax + 1, kmax + 1)
        spec = np.empty(shape, np.complex64)
        spec.real = rng.standard_normal(shape, dtype=np.float32)
        spec.imag = rng.standard_normal(shape, dtype=np.float32)
        ky = np.concatenate([np.arange(kmax + 1), np.arange(-kmax, 0)])
        fy = (ky / n).astype(np.float32)[:, None]
        fx = (np.arange(kmax + 1) / n).astype(np.float32)[None, :]
        filt = np.exp(-2.0 * (math.pi ** 2) * (fx * fx + fy * fy) * length ** 2)
        filt[0, 0] = 0.0
        spec *= filt.astype(np.float32)
        # unit variance whatever the phases: Parseval on the one-sided spectrum
        w = np.full(shape[1], 2.0, np.float32)
        w[0] = 1.0
        power = float((np.abs(spec) ** 2 * w).sum()) / 2.0  # column 0 keeps its real part
        spec /= np.float32(math.sqrt(power) / (n * n))
        return spec, fy, fx

    def sample(self, name: str, canvas: _Canvas, offset: tuple[float, float] = (0.0, 0.0)
               ) -> np.ndarray:
        """The field on ``canvas``, displaced by ``offset`` before pixels, (H, W) float32.

        The value at render pixel (j, i) is the field at before-pixel coordinates
        (fx0 + j * step - offset_x, fy0 + i * step - offset_y).
        """
        n = self.n
        k = int(round(1.0 / canvas.step))
        block, fy, fx = self._spectrum(name)
        kmax = block.shape[1] - 1
        # canvas index of the first sample, relative to the periodic field's origin
        sx = canvas.fx0 - offset[0] + self.pad - 0.5
        sy = canvas.fy0 - offset[1] + self.pad - 0.5
        ramp = np.exp(2j * np.pi * (fy.astype(np.float64) * sy + fx.astype(np.float64) * sx))
        block = block * ramp.astype(np.complex64) * np.float32(k * k)
        # zero padding to n * k samples per axis evaluates the same field k times finer
        spec = np.zeros((n * k, n * k // 2 + 1), np.complex64)
        spec[: kmax + 1, : kmax + 1] = block[: kmax + 1]
        spec[-kmax:, : kmax + 1] = block[kmax + 1:]
        out = sfft.irfft2(spec, s=(n * k, n * k), workers=2)
        if out.shape[0] < canvas.height or out.shape[1] < canvas.width:
            raise AssertionError("field canvas smaller than render canvas")
        return np.ascontiguousarray(out[: canvas.height, : canvas.width], dtype=np.float32)


@dataclass
class _Win:
    """A pixel window of a canvas and its pixel centres relative to ``(ox, oy)``.

    Coordinates are kept relative to the window's corner so that float32 holds
    them to a fraction of a millimetre (projected eastings do not fit float32).
    """

    rows: slice
    cols: slice
    transform: Affine
    x: np.ndarray  # (h, w) float32, metres east of ox
    y: np.ndarray  # (h, w) float32, metres north of oy

    @property
    def ox(self) -> float:
        return self.transform.c

    @property
    def oy(self) -> float:
        return self.transform.f

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape


def _window(canvas: _Canvas, bounds: tuple[float, float, float, float], grow: float = 1.0
            ) -> _Win | None:
    """The window of ``canvas`` around world ``bounds`` (None when outside)."""
    ia, ib, ic, id_, ie, if_ = canvas.inverse
    x0, y0, x1, y1 = bounds
    cs = [ia * x + ib * y + ic for x, y in ((x0, y0), (x0, y1), (x1, y0), (x1, y1))]
    rs = [id_ * x + ie * y + if_ for x, y in ((x0, y0), (x0, y1), (x1, y0), (x1, y1))]
    c0 = max(int(math.floor(min(cs) - grow)), 0)
    c1 = min(int(math.ceil(max(cs) + grow)), canvas.width)
    r0 = max(int(math.floor(min(rs) - grow)), 0)
    r1 = min(int(math.ceil(max(rs) + grow)), canvas.height)
    if c1 <= c0 or r1 <= r0:
        return None
    t = canvas.transform
    wt = Affine(t.a, t.b, t.c + t.a * c0 + t.b * r0, t.d, t.e, t.f + t.d * c0 + t.e * r0)
    jj = np.arange(c1 - c0, dtype=np.float32)[None, :] + np.float32(0.5)
    ii = np.arange(r1 - r0, dtype=np.float32)[:, None] + np.float32(0.5)
    x = np.float32(wt.a) * jj + np.float32(wt.b) * ii
    y = np.float32(wt.d) * jj + np.float32(wt.e) * ii
    return _Win(slice(r0, r1), slice(c0, c1), wt, x, y)


def _cov_convex(pts: np.ndarray, win: _Win, px: float) -> np.ndarray:
    """Anti-aliased coverage of a convex polygon ((K, 2) counter-clockwise vertices).

    The signed distance to the nearest edge line, in pixels, gives the covered share
    of a pixel (exact on straight edges, close at corners). (h, w) float32.
    """
    d: np.ndarray | None = None
    k = len(pts)
    for i in range(k):
        x0, y0 = pts[i][0] - win.ox, pts[i][1] - win.oy
        x1, y1 = pts[(i + 1) % k][0] - win.ox, pts[(i + 1) % k][1] - win.oy
        ex, ey = x1 - x0, y1 - y0
        ln = math.hypot(ex, ey)
        if ln == 0:
            continue
        # inward normal of a counter-clockwise ring: the edge turned left
        nx, ny = -ey / ln, ex / ln
        di = win.x * np.float32(nx)
        di += win.y * np.float32(ny)
        di += np.float32(-(x0 * nx + y0 * ny))
        d = di if d is None else np.minimum(d, di, out=d)
    if d is None:
        return np.zeros(win.shape, np.float32)
    d *= np.float32(1.0 / px)
    d += np.float32(0.5)
    return np.clip(d, 0.0, 1.0, out=d)


def _ccw(poly: Polygon) -> np.ndarray:
    return np.asarray(shapely.orient_polygons(poly).exterior.coords)[:-1]


def _cov_polygon(geom: Any, canvas: _Canvas) -> tuple[_Win, np.ndarray] | None:
    """Anti-aliased coverage of any (multi)polygon, on its window of ``canvas``.

    Inside pixels by the centre rule; pixels the boundary touches get
    ``0.5 + signed distance / pixel``.
    """
    if geom is None or geom.is_empty:
        return None
    win = _window(canvas, geom.bounds)
    if win is None:
        return None
    h, w = win.shape
    wt = win.transform
    cov = rasterio.features.rasterize([geom], out_shape=(h, w), transform=wt, fill=0,
                                      default_value=1, dtype="uint8").astype(np.float32)
    edge = rasterio.features.rasterize([geom.boundary], out_shape=(h, w), transform=wt,
                                       fill=0, default_value=1, all_touched=True,
                                       dtype="uint8")
    ii, jj = np.nonzero(edge)
    if len(ii):
        xs = wt.c + wt.a * (jj + 0.5) + wt.b * (ii + 0.5)
        ys = wt.f + wt.d * (jj + 0.5) + wt.e * (ii + 0.5)
        shapely.prepare(geom)
        d = shapely.distance(geom.boundary, shapely.points(xs, ys))
        inside = shapely.contains_xy(geom, xs, ys)
        sd = np.where(inside, d, -d) / canvas.px
        cov[ii, jj] = np.clip(0.5 + sd, 0.0, 1.0)
    return win, cov


def _cov_area(geom: Any, canvas: _Canvas) -> tuple[_Win, np.ndarray] | None:
    """Coverage of an area patch: analytic for convex polygons, else by polygon."""
    if (isinstance(geom, Polygon) and not geom.interiors and len(geom.exterior.coords) <= 9
            and geom.area > 0 and shapely.convex_hull(geom).area <= geom.area * (1 + 1e-9)):
        win = _window(canvas, geom.bounds)
        if win is None:
            return None
        return win, _cov_convex(_ccw(geom), win, canvas.px)
    return _cov_polygon(geom, canvas)


def _cov_lines(lines: Any, width: float, canvas: _Canvas) -> tuple[_Win, np.ndarray] | None:
    """Approximate coverage of lines thinner than a pixel (fences)."""
    win = _window(canvas, lines.bounds)
    if win is None:
        return None
    touched = rasterio.features.rasterize([lines], out_shape=win.shape,
                                          transform=win.transform, fill=0, default_value=1,
                                          all_touched=True, dtype="uint8")
    return win, touched.astype(np.float32) * np.float32(min(1.0, width / canvas.px))


def _paint(img: np.ndarray, win: _Win, cov: np.ndarray, colour: np.ndarray) -> None:
    """Blend ``colour`` ((B,) or (B, h, w)) into ``img`` with coverage ``cov``."""
    nb = img.shape[0]
    if cov.size < 20000:
        sub = img[:, win.rows, win.cols]
        c = colour[:nb] if colour.ndim == 3 else colour[:nb].astype(np.float32)[:, None, None]
        sub += cov[None] * (c - sub)
        return
    # band by band: temporaries stay small on large windows
    for band in range(nb):
        sub = img[band, win.rows, win.cols]
        c = colour[band] if colour.ndim == 3 else np.float32(colour[band])
        sub += cov * (c - sub)


def _sun_vector(az: float, el: float) -> np.ndarray:
    a, e = math.radians(az), math.radians(el)
    return np.array([math.cos(e) * math.sin(a), math.cos(e) * math.cos(a), math.sin(e)])


def _shadow_offset(sun: tuple[float, float], height: float) -> tuple[float, float]:
    """Ground displacement (east, north) in metres of a shadow cast from ``height``."""
    az, el = math.radians(sun[0]), math.radians(sun[1])
    length = height / math.tan(el)
    return (-length * math.sin(az), -length * math.cos(az))


def _local_uv(p: Part, win: _Win) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in the part's frame (u along its axis), metres, float32."""
    c, s = np.float32(math.cos(p.angle)), np.float32(math.sin(p.angle))
    x = win.x - np.float32(p.cx - win.ox)
    y = win.y - np.float32(p.cy - win.oy)
    return x * c + y * s, y * c - x * s


def _part_shade(b: Building, p: Part, win: _Win, sun: np.ndarray) -> np.ndarray:
    """Illumination factor of one part's roof facets (1: a flat roof in the sun)."""
    if b.roof == "flat":
        # a darker parapet along the outline of the whole footprint (not at joints)
        depth = np.full(win.shape, -np.inf, np.float32)
        for q in b.parts:
            if abs(q.cx - p.cx) > q.half_u + q.half_v + p.half_u + p.half_v + 2:
                continue
            u, v = _local_uv(q, win)
            np.maximum(depth, np.minimum(q.half_u - np.abs(u), q.half_v - np.abs(v)),
                       out=depth)
        return np.where(depth < 0.7, np.float32(0.82), np.float32(1.0))
    u, v = _local_uv(p, win)
    slope = math.radians(b.pitch)
    along_u = p.half_u >= p.half_v
    a, bb = (p.half_u, p.half_v) if along_u else (p.half_v, p.half_u)
    ua, va = (u, v) if along_u else (v, u)
    if b.roof == "hip":
        end = (a - np.abs(ua)) < (bb - np.abs(va))
    else:
        end = np.zeros(win.shape, bool)
    na = np.where(end, np.sign(ua), 0.0).astype(np.float32)
    nb = np.where(end, 0.0, np.sign(va)).astype(np.float32)
    nu, nv = (na, nb) if along_u else (nb, na)
    c, s = math.cos(p.angle), math.sin(p.angle)
    nx = nu * c - nv * s
    ny = nu * s + nv * c
    lam = math.cos(slope) * sun[2] + math.sin(slope) * (nx * sun[0] + ny * sun[1])
    f = np.clip(lam / sun[2], 0.3, 1.7)
    f = 1.0 + 0.7 * (f - 1.0)
    # a ridge cap catches the light along the top of the roof
    ridge = (np.abs(va) < 0.3) & ~end
    return np.where(ridge, np.maximum(f, 1.05), f).astype(np.float32)


def _tree_cov(t: Tree, cx: float, cy: float, win: _Win, px: float,
              stretch: tuple[tuple[float, float], float] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coverage of an irregular crown centred at (cx, cy), and unit offsets (du, dv)."""
    dx = win.x - np.float32(cx - win.ox)
    dy = win.y - np.float32(cy - win.oy)
    if stretch is not None:
        # a crown's shadow is an ellipse stretched along the sun direction
        (ex, ey), k = stretch
        along = (dx * ex + dy * ey) / k
        across = dy * ex - dx * ey
        dx = along * ex - across * ey
        dy = along * ey + across * ex
    r = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    radius = t.r * (1.0 + 0.12 * np.sin(3 * theta + t.phase)
                    + 0.08 * np.sin(5 * theta + 2 * t.phase))
    cov = np.clip(0.5 + (radius - r) / px, 0.0, 1.0).astype(np.float32)
    return cov, dx / t.r, dy / t.r


def _ragged(cov: np.ndarray, sigma: float, noise: np.ndarray, amplitude: float = 0.35
            ) -> np.ndarray:
    """An irregular outline: blurred coverage thresholded against a noise field.

    Blurring and thresholding commute with a translation, so a displaced canvas
    still sees the displaced patch.
    """
    soft = ndimage.gaussian_filter(cov, sigma, mode="constant", truncate=3.0)
    return _smoothstep((soft - np.float32(0.5)) * np.float32(3.0) + np.float32(0.5)
                       + np.float32(amplitude) * noise)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _render(params: SynthParams, world: World, fields: _Fields, canvas: _Canvas,
            date: str) -> np.ndarray:
    """Reflectance of the world on ``canvas`` at ``date``: (B, H, W) float32."""
    sun_ae = params.sun_before if date == BEFORE else params.sun_after
    green = params.greenness_before if date == BEFORE else params.greenness_after
    sun = _sun_vector(*sun_ae)
    px_m = params.pixel_size
    h, w = canvas.height, canvas.width
    f32 = np.float32
    large = fields.sample("large", canvas)
    mid = fields.sample("mid", canvas)
    fine = fields.sample("fine", canvas)
    tex = f32(0.6) * mid + f32(0.4) * fine  # generic surface texture, unit-ish variance
    # ground: soils of varying darkness and grass mixed at large scale, with grain
    # patch outlines get detail from the smaller scales
    grass_w = _smoothstep(f32(0.5) + f32(0.7) * large + f32(0.3) * mid + f32(0.12) * fine)
    dark_w = _smoothstep(f32(0.5) - f32(0.8) * mid - f32(0.2) * fine)
    nb = params.n_bands
    img = np.empty((nb, h, w), f32)
    soil, soil_d = np.array(_MATERIALS["soil"], f32), np.array(_MATERIALS["soil_dark"], f32)
    grass = _vegetation(green).astype(f32)
    for band in range(nb):
        ground = soil[band] + (soil_d[band] - soil[band]) * dark_w
        ground += (grass[band] * (f32(1) + f32(0.12) * mid) - ground) * grass_w
        ground *= f32(1.0) + f32(0.06) * fine
        img[band] = ground
    del grass_w, dark_w, ground
    # ground-cover patches, in order
    for area in world.areas:
        if not _present(area.dates, date):
            continue
        got = _cov_area(area.geom.buffer(area.ragged) if area.ragged else area.geom, canvas)
        if got is None:
            continue
        win, cov = got
        if area.ragged:
            cov = _ragged(cov, area.ragged / 2 / canvas.px, mid[win.rows, win.cols])
        if area.material in ("grass", "lawn"):
            base = _vegetation(green, lawn=area.material == "lawn")
        else:
            base = np.array(_MATERIALS[area.material])
        factor = f32(1.0) + f32(area.texture * 2.0) * tex[win.rows, win.cols]
        if area.stripes:
            ca, sa = math.cos(area.angle), math.sin(area.angle)
            phase = ((win.ox * ca + win.oy * sa) % area.stripes)
            s = win.x * f32(ca) + win.y * f32(sa) + f32(phase)
            factor *= f32(1.0) + f32(0.10) * np.tanh(4 * np.sin(f32(2 * math.pi / area.stripes)
                                                                  * s))
        if area.opacity < 1.0:
            cov *= f32(area.opacity)
        _paint(img, win, cov, base.astype(f32)[:, None, None] * factor[None])
    for geom, dates, _ in world.lines:
        if _present(dates, date):
            got = _cov_lines(geom, 0.35, canvas)
            if got is not None:
                _paint(img, got[0], got[1] * f32(0.8), np.array([0.09, 0.09, 0.08, 0.12]))
    # shadows of buildings, trees and woodland, accumulated as one darkness map
    shadow = np.zeros((h, w), f32)

    def add_shadow(win: _Win, cov: np.ndarray) -> None:
        sub = shadow[win.rows, win.cols]
        np.maximum(sub, cov, out=sub)

    for b in world.buildings:
        if not _present(b.dates, date):
            continue
        # a pitched roof's shadow is cast mostly from below the ridge
        ox, oy = _shadow_offset(sun_ae, b.height * (1.0 if b.roof == "flat" else 0.8))
        for poly in b.part_polygons:
            hull = shapely.convex_hull(shapely.MultiPolygon(
                [poly, affinity.translate(poly, ox, oy)]))
            win = _window(canvas, hull.bounds)
            if win is not None:
                add_shadow(win, _cov_convex(_ccw(hull), win, canvas.px))
    trees = [t for t in world.trees if _present(t.dates, date)]
    along = np.array(_shadow_offset(sun_ae, 1.0))
    stretch_k = 1.0 / math.sin(math.radians(sun_ae[1]))
    unit = along / (np.hypot(*along) + 1e-12)
    for t in trees:
        ox, oy = along * t.h * 0.6
        reach = t.r * 1.3 * stretch_k
        win = _window(canvas, (t.x + ox - reach, t.y + oy - reach,
                               t.x + ox + reach, t.y + oy + reach))
        if win is not None:
            cov, _, _ = _tree_cov(t, t.x + ox, t.y + oy, win, canvas.px,
                                  ((unit[0], unit[1]), stretch_k))
            add_shadow(win, cov)
    woodland = world.woodland if date == BEFORE else world.woodland_after
    canopy = None
    if woodland is not None and not woodland.is_empty:
        got = _cov_polygon(woodland, canvas)
        if got is not None:
            win, zone = got
            canopy = np.zeros((h, w), f32)
            c_field = fields.sample("canopy", canvas)[win.rows, win.cols]
            canopy[win.rows, win.cols] = _ragged(zone, 6.0 / canvas.px, c_field, 0.6)
            # the woodland's shadow: its canopy seen from a point displaced towards
            # the sun by the height of the trees
            off_m = along * 12.0
            off = (off_m[0] / px_m, -off_m[1] / px_m)
            moved = _Canvas(canvas.transform @ Affine.translation(-off[0] / canvas.step,
                                                                 -off[1] / canvas.step),
                            h, w, canvas.fx0 - off[0], canvas.fy0 - off[1], canvas.step)
            got2 = _cov_polygon(woodland, moved)
            if got2 is not None:
                win2, zone2 = got2
                c_sh = fields.sample("canopy", moved)[win2.rows, win2.cols]
                add_shadow(win2, _ragged(zone2, 6.0 / canvas.px, c_sh, 0.6))
    # skylight keeps shadows bluish
    dark = np.array([0.36, 0.38, 0.46, 0.42], f32)
    for band in range(nb):
        img[band] *= f32(1.0) - shadow * f32(1.0 - dark[band])
    del shadow
    crown = fields.sample("crown", canvas)
    if canopy is not None:
        leaf = _canopy(green).astype(f32)
        # crowns: bright sunlit tops and dark gaps between them
        lit = f32(0.45) + f32(0.75) * _smoothstep(f32(0.5) + f32(0.45) * crown)
        lit *= f32(1.0) + f32(0.12) * mid
        for band in range(nb):
            img[band] += canopy * (leaf[band] * lit - img[band])
        del lit, canopy
    # buildings: roof colour, facets lit by the sun, texture
    for b in world.buildings:
        if not _present(b.dates, date):
            continue
        for p, poly in zip(b.parts, b.part_polygons):
            win = _window(canvas, poly.bounds)
            if win is None:
                continue
            cov = _cov_convex(_ccw(poly), win, canvas.px)
            shade = _part_shade(b, p, win, sun)
            shade *= f32(1.0) + f32(b.texture) * fine[win.rows, win.cols]
            _paint(img, win, cov, b.colour.astype(f32)[:, None, None] * shade[None])
        for part, colour in b.decor:
            poly = part.polygon()
            win = _window(canvas, poly.bounds)
            if win is not None:
                _paint(img, win, _cov_convex(_ccw(poly), win, canvas.px), colour)
    # trees over everything (some overhang roofs), lit from the sun side
    leaf = _canopy(green)
    for t in trees:
        win = _window(canvas, (t.x - t.r * 1.3, t.y - t.r * 1.3, t.x + t.r * 1.3,
                               t.y + t.r * 1.3))
        if win is None:
            continue
        cov, du, dv = _tree_cov(t, t.x, t.y, win, canvas.px)
        rr = np.clip(du * du + dv * dv, 0, 1)
        nz = np.sqrt(1 - rr)
        lam = np.clip(du * sun[0] + dv * sun[1] + nz * sun[2], 0.0, 1.0)
        base = leaf if t.colour is None else t.colour
        tone = (f32(0.4) + f32(0.8) * lam) * (f32(0.85) + f32(0.3) * _smoothstep(
            f32(0.5) + f32(0.5) * crown[win.rows, win.cols]))
        _paint(img, win, cov, base.astype(f32)[:, None, None] * tone[None])
    for car in world.cars:
        if not _present(car.dates, date):
            continue
        poly = car.part.polygon()
        win = _window(canvas, poly.bounds)
        if win is not None:
            _paint(img, win, _cov_convex(_ccw(poly), win, canvas.px), car.colour)
    return img


def _to_dn(params: SynthParams, refl: np.ndarray, date: str, rng: np.random.Generator,
           blur_scale: float = 1.0) -> np.ndarray:
    """Sensor model: blur, radiometry (after), noise, quantisation. (B, H, W) uint8."""
    i = 0 if date == BEFORE else 1
    sigma = params.blur_px[i] * blur_scale
    out = np.empty_like(refl)
    for band in range(refl.shape[0]):
        ndimage.gaussian_filter(refl[band], sigma=sigma, mode="nearest", truncate=3.0,
                                output=out[band])
    if date == AFTER:
        for b in range(out.shape[0]):
            x = np.clip(out[b], 0.0, None) ** params.gamma[b] * params.gain[b] + params.offset[b]
            out[b] = x * (1 - params.haze[b]) + params.haze[b] * params.airlight
    out *= _DN_PER_REFLECTANCE
    out += rng.standard_normal(size=out.shape, dtype=np.float32) * np.float32(params.noise_dn[i])
    return np.clip(np.rint(out), 1, 255).astype(np.uint8)


def _field_pad(params: SynthParams) -> int:
    px = params.pixel_size
    shadow_px = 10.0 / math.tan(math.radians(min(params.sun_before[1], params.sun_after[1]))) / px
    pad = max(abs(params.shift_px[0]), abs(params.shift_px[1])) + shadow_px + 8
    if params.after_crs:
        pad += _after_pad(params)
    return int(math.ceil(pad))


def _after_pad(params: SynthParams) -> int:
    """Extra before pixels rendered around an after scene that will be warped."""
    return int(math.ceil(0.04 * params.size)) + 8


# ----------------------------------------------------------------------------------
# The pair
# ----------------------------------------------------------------------------------


@dataclass
class SynthPair:
    """A synthetic before/after pair and its truth.

    Attributes
    ----------
    before : Scene
        On its projected grid (``params.grid``).
    after : Scene
        As delivered: maybe another CRS and pixel size, misregistered by ``shift_px``.
    truth_polygons : list of shapely.Polygon
        New buildings, in ``before.grid.crs`` (metres).
    truth_mask : (H, W) ndarray of bool
        ``truth_polygons`` rasterised on ``before.grid`` (pixel-centre rule).
    shift_px : (float, float)
        True (dx, dy) on the before grid.
    params : SynthParams
    buildings : list of dict
        One record per new building: ``id``, ``area_m2``, ``kind``, roof, height.
    """

    before: Scene
    after: Scene
    truth_polygons: list[Polygon]
    truth_mask: np.ndarray
    shift_px: tuple[float, float]
    params: SynthParams
    buildings: list[dict[str, Any]] = field(default_factory=list)


def _delivered_grid(params: SynthParams) -> Grid:
    """Grid of the after scene in ``after_crs`` covering the before extent."""
    grid = params.grid
    dst = CRS.from_user_input(params.after_crs)
    left, bottom, right, top = transform_bounds(grid.crs, dst, *grid.bounds, densify_pts=21)
    if dst.is_geographic:
        lat = math.radians((bottom + top) / 2)
        res_y = params.after_pixel_size_m / 111_320.0
        res_x = params.after_pixel_size_m / (111_320.0 * math.cos(lat))
    else:
        res_x = res_y = params.after_pixel_size_m
    width = int(math.ceil((right - left) / res_x))
    height = int(math.ceil((top - bottom) / res_y))
    return Grid(dst, Affine(res_x, 0.0, left, 0.0, -res_y, top), height, width)


def _render_date(params: SynthParams, world: World, date: str
                 ) -> tuple[np.ndarray, np.ndarray, Grid]:
    """One date as delivered: (B, H, W) uint8 image, (H, W) valid mask, its grid.

    The after scene shows the world displaced by the shift: after pixel (c, r) sees
    the world at before pixel (c - dx, r - dy).
    """
    grid = params.grid
    dx, dy = params.shift_px
    nb = params.n_bands
    fields = _Fields(params, _field_pad(params))
    rng = np.random.default_rng([params.seed, 4 if date == BEFORE else 5])
    valid = np.ones(grid.shape, bool)
    if date == BEFORE:
        canvas = _Canvas(grid.transform, grid.height, grid.width, 0.5, 0.5, 1.0)
        return _to_dn(params, _render(params, world, fields, canvas, BEFORE), BEFORE,
                      rng), valid, grid
    if not params.after_crs:
        canvas = _Canvas(grid.transform @ Affine.translation(-dx, -dy), grid.height,
                         grid.width, 0.5 - dx, 0.5 - dy, 1.0)
        image = _to_dn(params, _render(params, world, fields, canvas, AFTER), AFTER, rng)
        after_grid = grid
    else:
        # rendered finer on the projected grid, then warped into the delivery CRS
        k = params.oversample
        pad = _after_pad(params)
        step = 1.0 / k
        shape = ((grid.height + 2 * pad) * k, (grid.width + 2 * pad) * k)
        origin = Affine.translation(-pad, -pad) @ Affine.scale(step)
        canvas = _Canvas(grid.transform @ Affine.translation(-dx, -dy) @ origin,
                         shape[0], shape[1], -pad + 0.5 * step - dx, -pad + 0.5 * step - dy,
                         step)
        refl = _render(params, world, fields, canvas, AFTER)
        # blur and radiometry at the fine scale; noise once delivered
        noiseless = replace(params, noise_dn=(params.noise_dn[0], 0.0))
        fine = _to_dn(noiseless, refl, AFTER, rng, blur_scale=float(k)).astype(np.float32)
        del refl
        after_grid = _delivered_grid(params)
        src_transform = grid.transform @ origin
        dst = np.zeros((nb, after_grid.height, after_grid.width), np.float32)
        reproject(fine, dst, src_transform=src_transform, src_crs=grid.crs,
                  dst_transform=after_grid.transform, dst_crs=after_grid.crs,
                  resampling=Resampling.average if k > 1 else Resampling.cubic,
                  src_nodata=0, dst_nodata=0, num_threads=2)
        cover = np.zeros((after_grid.height, after_grid.width), np.float32)
        reproject(np.ones(fine.shape[1:], np.float32), cover, src_transform=src_transform,
                  src_crs=grid.crs, dst_transform=after_grid.transform,
                  dst_crs=after_grid.crs, resampling=Resampling.nearest, src_nodata=0,
                  dst_nodata=0, num_threads=2)
        valid = cover > 0.5
        dst += rng.standard_normal(size=dst.shape, dtype=np.float32) * np.float32(
            params.noise_dn[1])
        image = np.clip(np.rint(dst), 1, 255).astype(np.uint8)
    m = params.nodata_margin
    if m:
        valid[:m], valid[-m:], valid[:, :m], valid[:, -m:] = False, False, False, False
    image[:, ~valid] = 0
    return image, valid, after_grid


def make_synthetic_pair(params: SynthParams) -> SynthPair:
    """Render a before/after pair with exact truth.

    Parameters
    ----------
    params : SynthParams

    Returns
    -------
    SynthPair
        Images hold digital numbers 1..255 as float32 (0 only in nodata).
    """
    world = make_world(params)
    grid = params.grid
    dx, dy = params.shift_px
    nb = params.n_bands
    if params.size >= 1536 and (os.cpu_count() or 1) > 1:
        # the two dates are independent: render the after date in a second process
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            job = pool.submit(_render_date, params, world, AFTER)
            before_img, _, _ = _render_date(params, world, BEFORE)
            after_img, valid, after_grid = job.result()
    else:
        before_img, _, _ = _render_date(params, world, BEFORE)
        after_img, valid, after_grid = _render_date(params, world, AFTER)
    before = Scene(before_img.astype(np.float32), np.ones(grid.shape, bool), grid,
                   "synthetic:before", tuple(range(1, nb + 1)), 3 if params.nir else None)
    after = Scene(after_img.astype(np.float32), valid, after_grid, "synthetic:after",
                  tuple(range(1, nb + 1)), 3 if params.nir else None)
    new = [b for b in world.buildings if b.new]
    truth = [b.footprint for b in new]
    if truth:
        mask = rasterio.features.rasterize(truth, out_shape=grid.shape,
                                           transform=grid.transform, fill=0,
                                           default_value=1, dtype="uint8").astype(bool)
    else:
        mask = np.zeros(grid.shape, bool)
    records = [{"id": i + 1, "kind": b.kind, "area_m2": float(b.footprint.area),
                "perimeter_m": float(b.footprint.length), "roof": b.roof,
                "roof_colour": b.colour_name, "height_m": float(b.height),
                "n_parts": len(b.parts)} for i, b in enumerate(new)]
    logger.info("synth %s seed %d: %d new building(s), shift (%.3f, %.3f) px",
                params.scenario, params.seed, len(new), dx, dy)
    # A scene too small for its scenario places fewer buildings, or none: a benchmark
    # or a demo on it would measure something else than it says.
    wanted = {"compound": params.n_new, "suburb": 1, "infill": 1}.get(params.scenario, 0)
    if len(new) < wanted and params.scenario == "infill":
        # Each old house is new by chance: a small scene can draw none.
        logger.warning("synth infill: none of the houses of this %d px scene came out new "
                       "(each is with probability %g); use a larger --size or another "
                       "--seed", params.size, INFILL_SHARE)
    elif len(new) < wanted:
        of = f" of the {params.n_new}" if params.scenario == "compound" else ""
        logger.warning("synth %s: only %d%s new building(s) fit in %d px at %g m pixels "
                       "(%.0f m across); use a larger --size", params.scenario, len(new), of,
                       params.size, params.pixel_size, params.size * params.pixel_size)
    return SynthPair(before, after, truth, mask, (dx, dy), params, records)


# ----------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------

def _write_tif(path: Path, data: np.ndarray, grid: Grid, nodata: float | None,
               tags: dict[str, str] | None = None) -> None:
    profile = {
        "driver": "GTiff", "height": grid.height, "width": grid.width,
        "count": data.shape[0], "dtype": data.dtype.name, "crs": grid.crs,
        "transform": grid.transform, "compress": "deflate", "predictor": 2,
        "tiled": True, "blockxsize": 256, "blockysize": 256, "interleave": "pixel",
    }
    if nodata is not None:
        profile["nodata"] = nodata
    if data.shape[0] == 4:
        # GeoTIFF takes the fourth band of an RGB file for alpha by default, and GDAL
        # would then mask every pixel where the near-infrared is 0.
        profile["alpha"] = "UNSPECIFIED"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        # fixed metadata keeps the files byte-identical for one seed
        dst.update_tags(**(tags or {}))


def _geojson(pair: SynthPair) -> dict[str, Any]:
    to_wgs = Transformer.from_crs(pair.before.grid.crs, "EPSG:4326", always_xy=True)
    feats = []
    for rec, poly in zip(pair.buildings, pair.truth_polygons):
        geo = shapely.transform(poly, lambda xy: np.column_stack(
            to_wgs.transform(xy[:, 0], xy[:, 1])))
        # rounding first: set_precision may reorder rings, orientation comes last
        geo = shapely.orient_polygons(shapely.set_precision(geo, 1e-9))
        feats.append({"type": "Feature", "id": rec["id"],
                      "properties": {"id": rec["id"], "area_m2": round(rec["area_m2"], 2),
                                     "kind": rec["kind"]},
                      "geometry": mapping(geo)})
    return {"type": "FeatureCollection", "features": feats}


def truth_record(pair: SynthPair) -> dict[str, Any]:
    """Everything ``truth.json`` holds: scenario, seed, shift, every parameter."""
    p = pair.params
    rec: dict[str, Any] = {
        "scenario": p.scenario,
        "seed": p.seed,
        "shift_px": list(pair.shift_px),
        "shift_m": list(p.shift_m),
        "sun": {"before": {"azimuth": p.sun_before[0], "elevation": p.sun_before[1]},
                "after": {"azimuth": p.sun_after[0], "elevation": p.sun_after[1]}},
        "radiometry": {"gain": p.gain[: p.n_bands], "offset": p.offset[: p.n_bands],
                       "gamma": p.gamma[: p.n_bands], "haze": p.haze[: p.n_bands],
                       "airlight": p.airlight,
                       "model": "x' = (gain*x**gamma + offset)*(1-haze) + haze*airlight"},
        "before_grid": {"crs": p.crs, "transform": list(p.grid.transform)[:6],
                        "width": p.size, "height": p.size},
        "after_grid": {"crs": pair.after.grid.crs.to_string(),
                       "transform": list(pair.after.grid.transform)[:6],
                       "width": pair.after.grid.width, "height": pair.after.grid.height},
        "n_new_buildings": len(pair.truth_polygons),
        "new_area_m2": float(sum(b["area_m2"] for b in pair.buildings)),
        "site_gap_m": p.site_gap_m,
        "buildings": pair.buildings,
        "params": asdict(p),
    }
    return rec


def write_synthetic_pair(params: SynthParams, outdir: str | os.PathLike[str],
                         overwrite: bool = False) -> dict[str, Path]:
    """Make a pair and write it into ``outdir``.

    Writes ``before.tif``, ``after.tif`` (uint8, tiled, DEFLATE), ``truth.geojson``
    (WGS84, ``id``, ``area_m2``, ``kind`` per new building), ``truth.json`` and
    ``truth_mask.tif`` (uint8 0/1 on the before grid).

    Raises
    ------
    OutputError
        When a file exists and ``overwrite`` is False, or the folder is not writable.
    """
    out = Path(outdir)
    paths = {
        "before": out / "before.tif",
        "after": out / "after.tif",
        "truth_geojson": out / "truth.geojson",
        "truth_json": out / "truth.json",
        "truth_mask": out / "truth_mask.tif",
    }
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputError(f"{existing[0]} exists; use --overwrite to replace it")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror or exc}") from exc
    try:
        return _write_pair(params, out, paths)
    except BaseException:
        # A failed or interrupted run leaves no folder it made (empty) behind.
        if created:
            try:
                out.rmdir()  # only if still empty
            except OSError:
                pass
        raise


def _write_pair(params: SynthParams, out: Path, paths: dict[str, Path]) -> dict[str, Path]:
    """Make the pair and move its files into ``out`` (which exists)."""
    pair = make_synthetic_pair(params)
    tags = {"CHANGEDET_SYNTH": f"{params.scenario} seed={params.seed}"}
    # write into a scratch folder beside the outputs, then move the files into place:
    # a failure leaves no partial pair behind
    tmp = Path(tempfile.mkdtemp(prefix=".synth-", dir=out))
    staged = {key: tmp / path.name for key, path in paths.items()}
    try:
        _write_tif(staged["before"], pair.before.image.astype(np.uint8), pair.before.grid,
                   None, tags)
        after_nodata = 0 if (params.nodata_margin or params.after_crs) else None
        _write_tif(staged["after"], pair.after.image.astype(np.uint8), pair.after.grid,
                   after_nodata, tags)
        _write_tif(staged["truth_mask"], pair.truth_mask.astype(np.uint8)[None],
                   pair.before.grid, None, tags)
        staged["truth_json"].write_text(json.dumps(truth_record(pair), indent=2) + "\n")
        staged["truth_geojson"].write_text(json.dumps(_geojson(pair)) + "\n")
        for key, path in staged.items():
            os.replace(path, paths[key])
    except OSError as exc:
        raise OutputError(f"cannot write into {out}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
