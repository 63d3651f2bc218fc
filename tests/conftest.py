"""Shared fixtures: a factory of small synthetic GeoTIFFs for unit tests, and a warp
into another CRS."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import rasterio
from affine import Affine


def write_geotiff(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32651",
    transform: Affine | None = Affine(0.5, 0, 500000.0, 0, -0.5, 4320000.0),
    nodata: float | None = None,
) -> Path:
    """Write ``data`` ((B, H, W) or (H, W)) as a GeoTIFF and return its path."""
    if data.ndim == 2:
        data = data[None]
    profile = {
        "driver": "GTiff",
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype.name,
    }
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def warp_geotiff(src: Path, dst: Path, crs: str) -> Path:
    """Resample a GeoTIFF into another CRS (bilinear, at its own ground resolution
    as GDAL chooses it), as an archive delivers a scene; nodata 0 outside it."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src) as s:
        with warnings.catch_warnings():  # rasterio's own use of affine's `*`
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            transform, width, height = calculate_default_transform(
                s.crs, crs, s.width, s.height, *s.bounds)
        profile = {"driver": "GTiff", "height": height, "width": width, "count": s.count,
                   "dtype": s.dtypes[0], "crs": crs, "transform": transform, "nodata": 0}
        with rasterio.open(dst, "w", **profile) as d:
            for band in range(1, s.count + 1):
                reproject(rasterio.band(s, band), rasterio.band(d, band),
                          resampling=Resampling.bilinear)
    return dst


@pytest.fixture
def geotiff(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``geotiff(name, data, crs=..., transform=..., nodata=...)`` -> path."""

    def make(name: str, data: np.ndarray, **kwargs) -> Path:
        return write_geotiff(tmp_path / name, data, **kwargs)

    return make


@pytest.fixture
def textured_image() -> Callable[..., np.ndarray]:
    """Factory of smooth random textures ((B, H, W) uint8) for alignment tests."""
    from scipy import ndimage

    def make(height: int = 256, width: int = 256, bands: int = 3, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        noise = rng.normal(size=(bands, height, width))
        smooth = ndimage.gaussian_filter(noise, sigma=(0, 3, 3))
        smooth = (smooth - smooth.min()) / (np.ptp(smooth) + 1e-9)
        return (smooth * 250).astype(np.uint8)

    return make
