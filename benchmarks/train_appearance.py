"""Train the appearance detector's roof classifier and write ``changedet/models/appearance.npz``.

Both dates of synthetic training pairs (suburb 100-105, compound 100-102; seeds
the benchmarks never score) are over-segmented and described as
:func:`changedet.appearance.appearance_features` does; a segment is a roof when more
than half of it lies on the footprint of a building standing at that date. Segments
are weighted by the square root of their size. Gradient-boosted trees
(scikit-learn's ``HistGradientBoostingClassifier``, 300 trees, fixed random
state) learn roof / not roof, and are written as flat node arrays that
:func:`changedet.appearance.tree_ensemble_logit` evaluates with numpy alone.

Usage::

    PYTHONPATH=$PWD python benchmarks/train_appearance.py [--cache DIR] [--out FILE] [--draws K ...]

About 10 minutes on two cores, most of it describing the training segments (cached in
``--cache``; empty it when the features change). Needs the ``train`` extra
(scikit-learn). The trees depend on the environment (library versions) as well as on
the segments: with scikit-learn 1.9.1 its early stopping ends at 257 trees, none equal
to a shipped tree (README, "Retraining").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import numpy as np
import rasterio.features

from changedet.appearance import APPEARANCE_FEATURE_NAMES, appearance_features
from changedet.synth import SynthParams, make_world

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detect import registered_pair  # noqa: E402
from train_detector import save_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


#: The classifier's settings (scikit-learn's defaults otherwise: 31 leaves a tree).
#: Shallow trees with large leaves (depth 4, 200 segments a leaf) did better on LEVIR
#: over three draws but took new paving for a roof in tests/test_change.py (README).
TREE_OPTIONS = {"max_iter": 300, "random_state": 0}


def training_pairs(draws: Sequence[int] = (0,)) -> list[tuple[str, int]]:
    """The training pairs: draw 0 is suburb 100-105 and compound 100-102; draw k the
    next seeds along (to check that a result does not hang on one draw)."""
    return [pair for d in draws for pair in
            [("suburb", s) for s in range(100 + 6 * d, 106 + 6 * d)]
            + [("compound", s) for s in range(100 + 3 * d, 103 + 3 * d)]]


def training_set(cache: Path, draws: Sequence[int] = (0,)
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (N, F), roof labels (N,) and sample weights (N,) of the training segments."""
    xs, ys, ws = [], [], []
    cache.mkdir(parents=True, exist_ok=True)
    for scenario, seed in training_pairs(draws):
        path = cache / f"appearance_{scenario}_{seed}.npz"
        if not path.exists():
            before, after, _ = registered_pair(scenario, seed)
            params = SynthParams.for_scenario(scenario, seed=seed)
            world = make_world(params)
            pixel_m = params.pixel_size
            x, y, w = [], [], []
            for date, scene in (("before", before), ("after", after)):
                roofs = [b.footprint for b in world.buildings if b.dates in ("both", date)]
                mask = rasterio.features.rasterize(
                    roofs, out_shape=scene.grid.shape, transform=scene.grid.transform
                ).astype(bool)
                segments, feats = appearance_features(scene, pixel_m)
                n = feats.shape[0] - 1
                count = np.bincount(segments.ravel(), minlength=n + 1)[1:]
                roof = np.bincount(segments.ravel(), weights=mask.ravel().astype(float),
                                   minlength=n + 1)[1:]
                x.append(feats[1:])
                y.append(roof > 0.5 * np.maximum(count, 1))
                w.append(np.sqrt(count))
            np.savez(path, x=np.concatenate(x), y=np.concatenate(y), w=np.concatenate(w))
            print(f"{scenario} {seed}: described", file=sys.stderr)
        with np.load(path) as z:
            xs.append(z["x"])
            ys.append(z["y"])
            ws.append(z["w"])
    return np.concatenate(xs).astype(np.float64), np.concatenate(ys), np.concatenate(ws)


def fit_trees(x: np.ndarray, y: np.ndarray, w: np.ndarray, **options: Any
              ) -> tuple[dict[str, np.ndarray], Any]:
    """Fit the trees (``options`` override the classifier's settings) and flatten them
    into the arrays of ``appearance.npz``; also returns the scikit-learn model."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    trees = HistGradientBoostingClassifier(**(TREE_OPTIONS | options))
    trees.fit(x, y, sample_weight=w)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (
        "feature", "threshold", "left", "right", "missing_left", "is_leaf", "value")}
    roots, offset = [], 0
    for (predictor,) in trees._predictors:  # one tree per iteration (binary problem)
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise RuntimeError("categorical splits are not exported")
        roots.append(offset)
        parts["feature"].append(nodes["feature_idx"].astype(np.int32))
        parts["threshold"].append(nodes["num_threshold"].astype(np.float64))
        parts["left"].append(nodes["left"].astype(np.int64) + offset)
        parts["right"].append(nodes["right"].astype(np.int64) + offset)
        parts["missing_left"].append(nodes["missing_go_to_left"].astype(np.uint8))
        parts["is_leaf"].append(nodes["is_leaf"].astype(np.uint8))
        parts["value"].append(nodes["value"].astype(np.float64))
        offset += len(nodes)
    model = {k: np.concatenate(v) for k, v in parts.items()}
    model["roots"] = np.array(roots, np.int64)
    model["baseline"] = np.asarray(trees._baseline_prediction, np.float64).ravel()[:1]
    model["feature_names"] = np.array(APPEARANCE_FEATURE_NAMES)
    return model, trees


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/changedet_train_appearance"))
    ap.add_argument("--out", type=Path, default=ROOT / "changedet" / "models" / "appearance.npz")
    ap.add_argument("--draws", type=int, nargs="+", default=[0],
                    help="draws of synthetic pairs to train on (see training_pairs)")
    args = ap.parse_args(argv)
    x, y, w = training_set(args.cache, args.draws)
    model, trees = fit_trees(x, y, w)
    from changedet.appearance import tree_ensemble_logit

    # The exported arrays must give sklearn's own log-odds.
    ours = tree_ensemble_logit(x[:5000], model)
    theirs = trees.decision_function(x[:5000])
    if not np.allclose(ours, theirs, atol=1e-9):
        raise RuntimeError(f"export differs from sklearn by {np.abs(ours - theirs).max()}")
    save_model(args.out, model, APPEARANCE_FEATURE_NAMES)
    print(f"{len(y)} segments ({int(y.sum())} roofs), {len(model['roots'])} trees, "
          f"{len(model['value'])} nodes -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
