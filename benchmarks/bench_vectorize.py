"""Vectorisation on the LEVIR-CD development labels: faithfulness and speed.

For each label mask (0.5 m pixels), its 4-connected buildings are vectorised with the
defaults (1 px simplification, right-angle regularisation) and scored against the
mask with :func:`changedet.evaluate.evaluate`: object F1 should be 1, pixel IoU close
to 1 and the total area error close to 0. Run from the repo root:

    PYTHONPATH=$PWD /tmp/venv/bin/python benchmarks/bench_vectorize.py

(``CHANGEDET_REAL_DATA`` overrides the data folder, e.g. from a git worktree.)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage
from skimage.io import imread

from changedet.evaluate import evaluate
from changedet.measure import group_sites, measure_buildings
from changedet.raster import Grid
from changedet.vectorize import polygons_from_labels

REAL = Path(os.environ.get(
    "CHANGEDET_REAL_DATA",
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real")) / "levir-dev"


def main() -> int:
    labels_dir = REAL / "label"
    if not labels_dir.is_dir():
        print(f"no data at {REAL}; nothing to do")
        return 0
    for path in sorted(labels_dir.glob("*.png")):
        mask = imread(path)
        mask = (mask[..., 0] if mask.ndim == 3 else mask) > 127
        grid = Grid(CRS.from_epsg(32614), Affine(0.5, 0, 600000.0, 0, -0.5, 3300000.0),
                    *mask.shape)
        labels, n = ndimage.label(mask)
        t0 = time.perf_counter()
        polys = polygons_from_labels(labels, grid)
        t1 = time.perf_counter()
        buildings = measure_buildings([p for _, p in polys], grid.crs, 0.5)
        sites = group_sites(buildings, gap_m=10.0, pixel_size_m=0.5)
        t2 = time.perf_counter()
        r = evaluate(polys, mask, grid)
        raw = polygons_from_labels(labels, grid, simplify_px=0, regularise=False)
        perim_raw = sum(p.length for _, p in raw)
        perim = sum(b.perimeter_m for b in buildings)
        inside = sum(b.area_m2_min <= mask[labels == v].size * 0.25 <= b.area_m2_max
                     for (v, _), b in zip(polys, buildings))
        print(f"{path.stem}: {n} labels -> {len(polys)} polygons in {t1 - t0:.2f} s, "
              f"measured+sites in {t2 - t1:.2f} s; F1 {r['f1']:.3f}, pixel IoU "
              f"{r['pixel_iou']:.3f}, area error {r['total_area_error_pct']} %, "
              f"perimeter {perim:.0f} m (staircase {perim_raw:.0f} m), "
              f"pixel-count area inside [min, max] for {inside}/{len(buildings)}, "
              f"{len(sites)} sites")
    return 0


if __name__ == "__main__":
    sys.exit(main())
