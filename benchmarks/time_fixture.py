"""Time the whole detection (normalise, evidence, segment) on the committed fixture.

Usage::

    PYTHONPATH=$PWD python benchmarks/time_fixture.py [fixtures/compound]

Reads the pair, aligns it, registers the after scene with the fixture's known shift
(as co-registration would), then times :func:`detect_new_buildings` and scores it
against ``truth_mask.tif`` like ``bench_detect.py``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import rasterio
from affine import Affine

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detect import score  # noqa: E402

from changedet.change import DetectionParams, detect_new_buildings  # noqa: E402
from changedet.raster import align_pair, read_scene, warp_scene  # noqa: E402


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "fixtures" / "compound"
    meta = json.loads((root / "truth.json").read_text())
    pair = align_pair(read_scene(root / "before.tif"), read_scene(root / "after.tif"))
    after = warp_scene(pair.after_source, pair.grid, Affine.translation(*meta["shift_px"]))
    valid = pair.before.valid & after.valid
    before, after = replace(pair.before, valid=valid), replace(after, valid=valid)
    with rasterio.open(root / "truth_mask.tif") as ds:
        truth = ds.read(1) > 0
    t0 = time.perf_counter()
    labels, ev = detect_new_buildings(before, after, DetectionParams())
    dt = time.perf_counter() - t0
    s = score(labels, truth, before.grid)
    print(f"{root}: {before.grid.width} x {before.grid.height} px, detection {dt:.1f} s, "
          f"threshold {ev.threshold:.1f}, {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
