"""The pipeline and the notebook API ``changedet.detect``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.crs import CRS

import changedet
from changedet.pipeline import (DetectionResult, _ground_pixel_m,
                                default_site_gap_m, quicklook)
from changedet.raster import Grid, Scene


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from changedet.synth import SynthParams, write_synthetic_pair

    out = tmp_path_factory.mktemp("pipeline")
    return write_synthetic_pair(SynthParams.for_scenario("suburb", seed=1, size=320), out / "p")


def test_notebook_api(pair: dict[str, Path]) -> None:
    calls: list[tuple[str, float]] = []
    result = changedet.detect(pair["before"], pair["after"], claim_m2=500.0, claim_sites=2,
                              progress=lambda stage, fraction: calls.append((stage, fraction)))
    assert isinstance(result, DetectionResult)
    assert result.footprints and all(isinstance(p, shapely.Polygon) for p in result.footprints)
    assert isinstance(result.summary, dict)
    assert result.summary["totals"]["n_buildings"] == len(result.buildings)
    assert len(result.summary["claim"]["verdicts"]) == 2
    assert result.change_mask.shape == result.grid.shape
    assert result.change_mask.dtype == np.uint8
    # Every labelled pixel is marked new in change.tif, and nothing else.
    np.testing.assert_array_equal(result.change_mask == 1, result.labels > 0)
    fractions = [f for _, f in calls]
    assert fractions == sorted(fractions) and fractions[0] == 0.0
    assert calls[-1] == ("done", pytest.approx(1.0))
    assert set(result.timings) >= {"reading", "detecting", "measuring", "total"}
    # Stage-by-stage use: the evidence and labels are kept for the notebook.
    assert result.evidence.score.shape == result.grid.shape


def test_unknown_option_is_a_type_error(pair: dict[str, Path]) -> None:
    with pytest.raises(TypeError, match="claim_m"):
        changedet.detect(pair["before"], pair["after"], claim_m=1.0)


def test_quicklook_stretch() -> None:
    grid = Grid(CRS.from_epsg(32651), Affine(0.5, 0, 0, 0, -0.5, 0), 20, 30)
    image = np.stack([np.tile(np.arange(30, dtype=np.float32), (20, 1))] * 3) * 10
    valid = np.ones((20, 30), dtype=bool)
    valid[0, 0] = False
    look, limits = quicklook(Scene(image, valid, grid))
    assert limits.shape == (3, 2)
    np.testing.assert_array_equal(quicklook(Scene(image, valid, grid), limits)[0], look)
    assert look.shape == (20, 30, 3) and look.dtype == np.uint8
    assert look[0, 0].tolist() == [0, 0, 0]
    assert look[5, -1, 0] == 255 and look[5, 1, 0] < 20
    grey, _ = quicklook(Scene(image[:1], valid, grid))
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


def test_site_gap_and_ground_pixel() -> None:
    assert default_site_gap_m(0.5) == 30.0 and default_site_gap_m(10.0) == 100.0
    utm = Grid(CRS.from_epsg(32651), Affine(0.5, 0, 740000, 0, -0.5, 4328000), 100, 100)
    assert _ground_pixel_m(utm, utm.crs) == pytest.approx(0.5)
    # Web Mercator at 39° N: 1 m of map is cos(39°) m of ground.
    y = 4_723_000.0
    merc = Grid(CRS.from_epsg(3857), Affine(1.0, 0, 13_950_000, 0, -1.0, y), 100, 100)
    from changedet.measure import metric_crs

    lat = np.degrees(2 * np.arctan(np.exp(y / 6378137.0)) - np.pi / 2)
    ground = _ground_pixel_m(merc, metric_crs(merc.crs, merc.bounds))
    assert ground == pytest.approx(np.cos(np.radians(lat)), rel=2e-3)
