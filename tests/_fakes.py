"""Detection results built by hand, for testing the writers and the report alone.

The buildings are exact pixel rectangles measured with the real
``changedet.measure`` functions, so the expected areas are known exactly and the
output tests do not depend on detection quality.
"""

from __future__ import annotations

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS

from changedet.measure import check_claim, group_sites, measure_buildings
from changedet.pipeline import DetectionResult, build_summary
from changedet.raster import Grid

GRID = Grid(CRS.from_epsg(32651), Affine(0.5, 0, 500000.0, 0, -0.5, 4320000.0), 600, 640)
#: Pixel rectangles (col0, row0, col1, row1): buildings 1 and 2 form one site
#: (10 m apart), building 3 (with a 25 m x 25 m courtyard) another.
BOXES = [(40, 40, 200, 160), (220, 40, 300, 200), (400, 300, 600, 560)]
#: Exact areas in m² (0.5 m pixels): 4,800, 3,200 and 13,000 - 625.
AREAS = [4800.0, 3200.0, 12375.0]


def pixel_box(grid: Grid, col0: float, row0: float, col1: float, row1: float) -> shapely.Polygon:
    """A rectangle given by pixel corners, in the grid's CRS."""
    x0, y0 = grid.transform @ (col0, row0)
    x1, y1 = grid.transform @ (col1, row1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def fake_result(claim_m2: float | None = None, *, n_sites: int | None = None,
                basis: str = "footprint", path_before: str = "before.tif",
                path_after: str = "after.tif", grid: Grid = GRID) -> DetectionResult:
    """Two sites: site 1 = building 3 (12,375 m²), site 2 = buildings 1 and 2 (8,000 m²)."""
    polys = [pixel_box(grid, *b) for b in BOXES]
    polys[2] = polys[2].difference(pixel_box(grid, 450, 350, 500, 400))
    buildings = measure_buildings(polys, grid.crs, 0.5, scores=[0.85, 0.9, 0.95])
    sites = group_sites(buildings, 30.0, pixel_size_m=0.5)
    claim = None
    if claim_m2 is not None:
        claim = check_claim(sites, claim_m2, n_sites=n_sites, basis=basis)
    change = np.zeros(grid.shape, dtype=np.uint8)
    for c0, r0, c1, r1 in BOXES:
        change[r0:r1, c0:c1] = 1
    change[:, :20] = 255
    rng = np.random.default_rng(0)
    base = (rng.random(grid.shape + (3,)) * 60 + 90).astype(np.uint8)
    after = base.copy()
    after[change == 1] = (200, 190, 180)
    result = DetectionResult(
        buildings=buildings, sites=sites, claim=claim, change_mask=change, grid=grid,
        crs=grid.crs,
        registration={"method": "global", "shift_px": [1.25, -0.5], "shift_m": [0.625, 0.25],
                      "reliability": 0.93, "n_windows": 16, "residual_rms_px": 0.08,
                      "low_reliability": False},
        quicklooks={"before": base, "after": after}, summary={},
        timings={"reading": 0.1, "total": 0.1})
    info = {"crs": "EPSG:32651", "pixel_size": [0.5, 0.5], "width": 640, "height": 600,
            "bands": [1, 2, 3]}
    inputs = {"before": {"path": path_before, **info}, "after": {"path": path_after, **info},
              "aoi": None}
    result.summary = build_summary(result, inputs, {"coreg": "global", "site_gap_m": 30.0})
    return result
