"""Train the shipped new-building detector (``changedet/models/detector.npz``).

Synthetic pairs from :mod:`changedet.synth` (scenarios compound, suburb and none,
seeds >= 100 so that seeds 0-99 stay unseen for tests and benchmarks, pixel sizes
0.35-1.3 m) are registered with their known shift, normalised with
:func:`changedet.radiometry.fit_radiometry` and turned into per-pixel features with
:func:`changedet.change.pixel_features`. Pixels are sampled per pair: every class
balanced, with hard negatives (changed but not a new roof: construction earth, new
pavement, moved shadows, vegetation change) and a ring just outside each roof, so the
0.5 level of the probability falls on the outline. A small multilayer perceptron
(scikit-learn, used only here) is fitted on standardised features and its weights are
saved for the pure-numpy evaluator in :mod:`changedet.change`.

Usage::

    PYTHONPATH=$PWD python benchmarks/train_detector.py --cache /tmp/detect_cache \
        [--generate] [--out changedet/models/detector.npz]

``--generate`` (re)makes the cached pairs (about 10 s each); otherwise the cached
``*.npz`` files (before, after, valid, truth, px, nir) are used.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage

from changedet.change import (FEATURE_NAMES, DetectionParams, new_building_evidence)
from changedet.radiometry import fit_radiometry
from changedet.raster import Grid, Scene, align_pair, warp_scene

#: (scenario, seed, pixel size m, size px) of the training pairs; seeds >= 100 only.
PAIRS = [("suburb", 100, 0.5, 768), ("compound", 101, 1.0, 1200), ("none", 102, 0.5, 768),
         ("suburb", 103, 0.8, 640), ("compound", 104, 0.5, 1024), ("suburb", 105, 0.35, 900),
         ("compound", 106, 0.7, 1024), ("none", 107, 1.0, 512), ("suburb", 108, 1.2, 512),
         ("compound", 109, 1.0, 1200), ("suburb", 110, 0.5, 768),
         ("compound", 111, 0.5, 1024), ("none", 112, 0.4, 768), ("suburb", 113, 0.7, 640),
         ("compound", 114, 1.3, 900), ("suburb", 115, 0.5, 768)]


def generate(cache: Path) -> None:
    """Make, register and cache the training pairs."""
    from changedet.synth import SynthParams, make_synthetic_pair

    cache.mkdir(parents=True, exist_ok=True)
    for sc, seed, px, size in PAIRS:
        sp = make_synthetic_pair(SynthParams.for_scenario(sc, seed=seed, pixel_size=px,
                                                          size=size))
        pair = align_pair(sp.before, sp.after)
        dx, dy = sp.shift_px
        after = warp_scene(pair.after_source, pair.grid, Affine.translation(dx, dy))
        np.savez_compressed(cache / f"{sc}_{seed}.npz", before=pair.before.image,
                            after=after.image, valid=pair.before.valid & after.valid,
                            truth=sp.truth_mask, px=px,
                            nir=-1 if pair.before.nir is None else pair.before.nir)


def features_of(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Features (F, H, W), truth, valid, change map and pixel size of a cached pair."""
    z = np.load(path)
    px = float(z["px"])
    nir = int(z["nir"])
    nir_i = None if nir < 0 else nir
    valid = z["valid"]
    grid = Grid(CRS.from_epsg(32651), Affine(px, 0, 0, 0, -px, 0), *valid.shape)
    before = Scene(z["before"], valid, grid, nir=nir_i)
    after_raw = z["after"]
    fit = fit_radiometry(before.image, after_raw, valid, keep_weight=False)
    after = replace(before, image=fit.apply(after_raw))
    f = len(FEATURE_NAMES)
    # A null model: only the features are wanted here.
    null = {"mean": np.zeros(f), "scale": np.ones(f), "n_layers": np.array(1),
            "W0": np.zeros((f, 1)), "b0": np.zeros(1)}
    params = DetectionParams(detector="learned", model=null,
                             keep_features=True)
    ev = new_building_evidence(before, after, params,
                               after_raw=after_raw)
    return ev.features, z["truth"], valid, ev.change, px


def sample(feats: np.ndarray, truth: np.ndarray, valid: np.ndarray, change: np.ndarray,
           px: float, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced sample: roofs, a ring outside roofs, changed non-roofs, the rest."""
    ring = ndimage.binary_dilation(truth, iterations=max(1, int(round(3.0 / px)))) & ~truth
    groups = [truth & valid, ring & valid, (change > 3) & ~truth & ~ring & valid,
              valid & ~truth]
    quota = [n, n // 2, n, n // 2]
    xs, ys = [], []
    flat = feats.reshape(feats.shape[0], -1)
    for g, q, lab in zip(groups, quota, (1, 0, 0, 0)):
        idx = np.flatnonzero(g)
        if idx.size == 0:
            continue
        pick = rng.choice(idx, size=min(q, idx.size), replace=False)
        xs.append(flat[:, pick].T)
        ys.append(np.full(pick.size, lab, np.int8))
    return np.concatenate(xs), np.concatenate(ys)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/detect_cache"))
    ap.add_argument("--generate", action="store_true")
    ap.add_argument("--per-pair", type=int, default=8000)
    ap.add_argument("--out", type=Path, default=Path("changedet/models/detector.npz"))
    args = ap.parse_args(argv)
    from sklearn.neural_network import MLPClassifier

    if args.generate:
        generate(args.cache)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for path in sorted(args.cache.glob("*.npz")):
        t = time.perf_counter()
        feats, truth, valid, change, px = features_of(path)
        x, y = sample(feats, truth, valid, change, px, rng, args.per_pair)
        xs.append(x)
        ys.append(y)
        print(f"{path.name}: {y.sum()} roof / {y.size} samples, "
              f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
    x = np.concatenate(xs).astype(np.float64)
    y = np.concatenate(ys)
    mean = x.mean(0)
    scale = x.std(0) + 1e-6
    xs_ = (x - mean) / scale
    # Roof pixels are about a third of the sample; weight them up to half.
    t = time.perf_counter()
    clf = MLPClassifier(hidden_layer_sizes=(32, 32), alpha=1e-3, max_iter=60,
                        early_stopping=True, random_state=0, batch_size=512)
    clf.fit(xs_, y)
    print(f"trained in {time.perf_counter() - t:.0f} s, "
          f"validation accuracy {clf.best_validation_score_:.3f}", file=sys.stderr)
    model: dict[str, np.ndarray] = {"mean": mean.astype(np.float32),
                                    "scale": scale.astype(np.float32)}
    model.update(mlp_arrays(clf))
    save_model(args.out, model, FEATURE_NAMES)
    return 0


def mlp_arrays(clf, prefix: str = "") -> dict[str, np.ndarray]:
    """A fitted scikit-learn MLPClassifier as the arrays changedet evaluates in numpy
    (``{prefix}n_layers``, ``{prefix}W{k}``, ``{prefix}b{k}``)."""
    out = {f"{prefix}n_layers": np.array(len(clf.coefs_))}
    for k, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        out[f"{prefix}W{k}"] = w.astype(np.float32)
        out[f"{prefix}b{k}"] = b.astype(np.float32)
    return out


def library_versions() -> np.ndarray:
    """Python's version and those of the libraries a training run depends on, (5,) str.

    Another environment may not write the same weights again (the appearance trees
    shipped on 2026-12-04 are not written again with scikit-learn 1.9.1), so the
    environment is written with the weights.
    """
    import importlib.metadata
    import platform

    names = ("numpy", "scipy", "scikit-learn", "scikit-image")
    return np.array([f"python {platform.python_version()}"]
                    + [f"{n} {importlib.metadata.version(n)}" for n in names])


def save_model(path: Path, model: dict[str, np.ndarray], feature_names: tuple[str, ...]) -> None:
    """Write the model with its feature names (checked by the tests) and the training
    environment (``training_environment``, :func:`library_versions`) to ``path``."""
    model = dict(model, feature_names=np.array(feature_names),
                 training_environment=library_versions())
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **model)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
