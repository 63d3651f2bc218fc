"""False new buildings on real imagery of destruction: the Joplin tornado tiles.

The tiles are read at run time from the shared data folder (described in its own
README; nothing of it is copied here). No building went up between the two dates, so
every new building the detector reports is false. Each ``pre/``
tile is paired with the ``post/`` tile that overlaps it most (the pipeline puts both
on the pre tile's grid, whatever their CRS), and
:func:`changedet.pipeline.run_detection` runs with default options (but the detector). The table gives,
per pair, the overlap, the false new buildings (all, and those of 100 m² or more)
with their total area, the co-registration reliability and the run time.

Usage::

    PYTHONPATH=$PWD python benchmarks/real_joplin.py [DATA_DIR] [--detector regions|appearance]
        [--no-appearance-check]

DATA_DIR defaults to ``../shared/data/real/joplin`` relative to the repository.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import rasterio
import shapely
from rasterio.warp import transform_bounds

from changedet.pipeline import DETECTORS, DetectOptions, run_detection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_levir import add_appearance_check_option, shared_data_dir  # noqa: E402

BIG_M2 = 100.0


def pairs_by_overlap(root: Path) -> list[tuple[Path, Path, float]]:
    """(pre tile, post tile, overlap fraction of the pre tile) for each pre tile.

    The post tile is the one whose footprint covers most of the pre tile (footprints
    compared in the pre tile's CRS); pre tiles no post tile touches are left out.
    """
    posts = []
    for path in sorted((root / "post").glob("*.tif")):
        with rasterio.open(path) as src:
            posts.append((path, src.crs, src.bounds))
    out = []
    for pre in sorted((root / "pre").glob("*.tif")):
        with rasterio.open(pre) as src:
            crs, footprint = src.crs, shapely.box(*src.bounds)
        best, best_share = None, 0.0
        for path, post_crs, bounds in posts:
            other = shapely.box(*transform_bounds(post_crs, crs, *bounds))
            share = footprint.intersection(other).area / footprint.area
            if share > best_share:
                best, best_share = path, share
        if best is not None:
            out.append((pre, best, best_share))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=shared_data_dir("joplin"))
    ap.add_argument("--detector", choices=DETECTORS, default="regions",
                    help="the detector run (changedet detect --detector)")
    add_appearance_check_option(ap)
    args = ap.parse_args(argv)
    root = args.data.resolve()
    if not (root / "pre").is_dir() or not (root / "post").is_dir():
        print(f"no Joplin tiles at {root}", file=sys.stderr)
        return 1
    print("| pre tile | post tile | overlap | false new buildings | of 100 m² or more "
          "| their area m² | co-registration reliability | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    n_big, area_big = 0, 0.0
    for pre, post, share in pairs_by_overlap(root):
        t0 = time.perf_counter()
        result = run_detection(pre, post, DetectOptions(detector=args.detector,
                                                        appearance_check=args.appearance_check))
        dt = time.perf_counter() - t0
        big = [b.area_m2 for b in result.buildings if b.area_m2 >= BIG_M2]
        n_big += len(big)
        area_big += sum(big)
        reliability = result.registration.get("reliability")
        print(f"| {pre.stem} | {post.stem} | {share:.0%} | {len(result.buildings)} "
              f"| {len(big)} | {sum(big):,.0f} | "
              f"{'-' if reliability is None else f'{reliability:.2f}'} | {dt:.1f} |",
              flush=True)
    print(f"\nall pairs: {n_big} false new buildings of 100 m² or more, {area_big:,.0f} m²")
    return 0


if __name__ == "__main__":
    sys.exit(main())
