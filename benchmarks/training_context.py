"""What surrounds the roofs and the ground the region classifier learns from.

For every training pair of ``train_regions.py`` (features cached as that script
caches them), per scenario: how many regions of more than 200 px are roof and ground
(more than half, less than half of the region in the truth), what share of each has
its rim facing unchanged land on more than 30 % of it (``facing_land``), and the
medians of the blob features. A classifier that learns from scenes where a roof never
faces unchanged land learns the construction site around it, not the roof: new
houses standing alone on a lawn (``changedet synth --scenario infill``) are then
rejected.

Usage::

    PYTHONPATH=$PWD python benchmarks/training_context.py [--cache DIR] [--reuse-features]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from changedet.change import REGION_FEATURE_NAMES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_regions import all_training_pairs, pair_features  # noqa: E402

#: Regions smaller than this (pixels) are left out: slivers carry no shape.
MIN_REGION_PX = 200
#: A region "faces unchanged land" when more than this share of its rim does.
FACING_LAND_SHARE = 0.3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/changedet_train_regions"))
    ap.add_argument("--reuse-features", action="store_true",
                    help="reuse the region features cached by train_regions.py (only "
                         "when the feature code has not changed since)")
    args = ap.parse_args(argv)
    names = list(REGION_FEATURE_NAMES)
    land, share, blobs = (names.index(n) for n in
                          ("facing_land", "blob_share", "log_blob_regions"))
    by_scenario: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for scenario, seed, pixel in all_training_pairs():
        feats, roof, count = pair_features(scenario, seed, pixel, args.cache,
                                           args.reuse_features)
        big = count > MIN_REGION_PX
        by_scenario.setdefault(scenario, []).append((feats[big], roof[big]))
    print("| scenario | class | regions | facing unchanged land | blob share (median) "
          "| log regions in blob (median) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for scenario, parts in by_scenario.items():
        feats = np.concatenate([f for f, _ in parts])
        roof = np.concatenate([r for _, r in parts])
        for label, chosen in (("roof", roof > 0.5), ("ground", roof < 0.5)):
            if not chosen.any():
                continue
            x = feats[chosen]
            print(f"| {scenario} | {label} | {len(x)} | "
                  f"{100 * (x[:, land] > FACING_LAND_SHARE).mean():.0f} % | "
                  f"{np.median(x[:, share]):.3f} | {np.median(x[:, blobs]):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
