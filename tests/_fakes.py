"""Hand-built detection results for testing the writers and the report alone.

They carry the attributes of ``changedet.measure.Building``/``Site``/``ClaimCheck``
with exact, known values, so the output tests do not depend on detection quality.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS

from changedet.pipeline import DetectionResult
from changedet.raster import Grid

GRID = Grid(CRS.from_epsg(32651), Affine(0.5, 0, 500000.0, 0, -0.5, 4320000.0), 600, 640)


def pixel_box(grid: Grid, col0: float, row0: float, col1: float, row1: float) -> shapely.Polygon:
    """A rectangle given by pixel corners, in the grid's CRS."""
    x0, y0 = grid.transform @ (col0, row0)
    x1, y1 = grid.transform @ (col1, row1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def fake_result(claim: dict[str, Any] | None = None, path_before: str = "before.tif",
                path_after: str = "after.tif", grid: Grid = GRID) -> DetectionResult:
    """Two sites: site 1 with buildings 1 and 2, site 2 with building 3 (a holed one)."""
    boxes = [(40, 40, 200, 160), (220, 40, 300, 200), (400, 300, 600, 560)]
    polys = [pixel_box(grid, *b) for b in boxes]
    polys[2] = polys[2].difference(pixel_box(grid, 450, 350, 500, 400))
    half = 0.5 * 0.5  # half a pixel, metres
    buildings = []
    for i, p in enumerate(polys, start=1):
        ring = p.length * half
        buildings.append(SimpleNamespace(
            id=i, polygon=p, area_m2=p.area, area_m2_min=p.area - ring,
            area_m2_max=p.area + ring, perimeter_m=p.length, geodesic_area_m2=p.area * 1.0004,
            score=0.8 + 0.05 * i, site_id=1 if i < 3 else 2))
    sites = []
    for sid, members in ((1, buildings[:2]), (2, buildings[2:])):
        env = shapely.convex_hull(shapely.union_all([b.polygon for b in members]))
        sites.append(SimpleNamespace(
            site_id=sid, building_ids=[b.id for b in members], envelope=env,
            n_buildings=len(members),
            built_area_m2=sum(b.area_m2 for b in members),
            built_area_m2_min=sum(b.area_m2_min for b in members),
            built_area_m2_max=sum(b.area_m2_max for b in members),
            envelope_area_m2=env.area, envelope_area_m2_min=env.area * 0.98,
            envelope_area_m2_max=env.area * 1.02, verdict=None))
    check = None
    if claim is not None:
        verdicts = []
        for s, v in zip(sites, claim["verdicts"]):
            s.verdict = v
            verdicts.append({"site_id": s.site_id, "verdict": v})
        verdicts += [{"site_id": None, "verdict": "not found"}] * claim.get("missing", 0)
        check = SimpleNamespace(claim_m2=claim.get("claim_m2", 5000.0), tolerance=0.1,
                                n_sites=len(sites) + claim.get("missing", 0),
                                basis=claim.get("basis", "footprint"), verdicts=verdicts)
    change = np.zeros(grid.shape, dtype=np.uint8)
    for b in boxes:
        change[b[1]:b[3], b[0]:b[2]] = 1
    change[:, :20] = 255
    rng = np.random.default_rng(0)
    base = (rng.random(grid.shape + (3,)) * 60 + 90).astype(np.uint8)
    after = base.copy()
    after[change == 1] = (200, 190, 180)
    result = DetectionResult(
        buildings=buildings, sites=sites, claim=check, change_mask=change, grid=grid,
        registration={"method": "global", "shift_px": [1.25, -0.5], "shift_m": [0.625, 0.25],
                      "reliability": 0.93, "n_windows": 16, "residual_rms_px": 0.08,
                      "low_reliability": False},
        quicklooks={"before": base, "after": after}, summary={},
        timings={"reading": 0.1, "total": 0.1})
    from changedet.pipeline import build_summary

    inputs = {"before": {"path": path_before, "crs": "EPSG:32651", "pixel_size": [0.5, 0.5],
                         "width": 640, "height": 600, "bands": [1, 2, 3]},
              "after": {"path": path_after, "crs": "EPSG:32651", "pixel_size": [0.5, 0.5],
                        "width": 640, "height": 600, "bands": [1, 2, 3]},
              "aoi": None}
    result.summary = build_summary(result, inputs, {"coreg": "global", "site_gap_m": 30.0})
    return result
