"""Train the region classifier shipped in ``changedet/models/regions.npz``.

The default detector splits the candidate change into regions of one colour and asks
a small perceptron whether each region is (part of) a new roof. This script makes
synthetic training pairs (seeds 100 and up, several pixel sizes, all three scenarios:
none of the seeds the benchmarks and tests score), runs the package's own evidence,
candidate and feature functions on each, together with pairs of a second, much simpler
generator (:func:`tiles_pair`), labels a region "roof" when more than half
of it lies in the truth mask, and fits a one-hidden-layer perceptron (scikit-learn,
the ``train`` extra). Regions are sampled in proportion to the square root of their
area so that large roofs and the many small slivers both count.

Usage::

    PYTHONPATH=$PWD python benchmarks/train_regions.py [--cache DIR] [--out FILE]

About 4 to 10 minutes on two cores, most of it making the pairs (cached in
``--cache``). The run is deterministic: the shipped weights are what this script
writes, bit for bit, at the commit that ships them (checked on 2026-12-07 with
scikit-learn 1.9.1 at e6cc030; another version may write other weights, as it does
for the appearance trees). The features depend on the evidence, candidate and feature
code, so a change to any of them calls for a new training run and a new measurement
(``bench_detect.py --model``, ``real_levir.py --model``) before the weights are
replaced.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from affine import Affine

from changedet.change import (
    REGION_FEATURE_NAMES,
    DetectionParams,
    candidate_regions,
    new_building_evidence,
    region_features,
)
from changedet.radiometry import fit_radiometry
from changedet.raster import align_pair, warp_scene
from changedet.synth import SynthParams, make_synthetic_pair

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_detector import mlp_arrays, save_model  # noqa: E402

#: (scenario, seed, pixel size m) of the training pairs.
TRAINING_PAIRS: tuple[tuple[str, int, float], ...] = (
    ("compound", 100, 1.0), ("compound", 101, 0.5), ("compound", 102, 0.7),
    ("compound", 103, 0.5), ("compound", 104, 1.0), ("compound", 105, 0.6),
    ("compound", 106, 0.5), ("compound", 107, 1.0), ("compound", 108, 0.8),
    ("compound", 109, 0.6), ("compound", 110, 1.0), ("compound", 111, 0.5),
    ("suburb", 100, 0.3), ("suburb", 101, 0.5), ("suburb", 102, 1.0),
    ("suburb", 103, 0.4), ("suburb", 104, 0.7), ("suburb", 105, 0.5),
    ("none", 100, 0.5), ("none", 101, 1.0), ("none", 102, 0.3),
)


#: Pairs of the simple second generator (:func:`tiles_pair`).
N_TILES = 40
TILES_WEIGHT = 6.0
#: Perceptrons in the shipped ensemble.
N_MEMBERS = 5


def registered_pair(scenario: str, seed: int, pixel: float, cache: Path):
    """Before, after (registered with the true shift) and truth mask, cached."""
    path = cache / f"tr_{scenario}_{seed}.pkl"
    if path.exists():
        with path.open("rb") as f:
            return pickle.load(f)
    sp = make_synthetic_pair(SynthParams.for_scenario(scenario, seed=seed, pixel_size=pixel))
    pair = align_pair(sp.before, sp.after)
    after = warp_scene(pair.after_source, pair.grid, Affine.translation(*sp.shift_px))
    valid = pair.before.valid & after.valid
    out = (replace(pair.before, valid=valid), replace(after, valid=valid), sp.truth_mask)
    cache.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(out, f)
    return out


def _fill(img: np.ndarray, poly, colour: np.ndarray, pixel: float) -> np.ndarray:
    """Paint a shapely polygon (metres, y down) onto (3, H, W); return its mask."""
    from skimage.draw import polygon as draw_polygon

    xs, ys = np.asarray(poly.exterior.coords).T
    rr, cc = draw_polygon(ys / pixel, xs / pixel, img.shape[1:])
    mask = np.zeros(img.shape[1:], bool)
    mask[rr, cc] = True
    img[:, mask] = colour[:, None]
    return mask


def tiles_pair(seed: int, pixel: float):
    """A second, much simpler generator: boxes with shadows on textured ground.

    New buildings stand on unchanged ground or on a patch of bare earth; flat changes
    (paving, bare earth, a greener or browner field) cast no shadow; old buildings'
    shadows move with the sun. It keeps the classifier from learning the main
    generator's habits (new buildings there always stand on disturbed ground).
    """
    import shapely
    from shapely import affinity

    from changedet.raster import Grid, Scene
    from rasterio.crs import CRS
    from scipy import ndimage

    rng = np.random.default_rng([seed, 7])
    size_m = 240.0
    n = int(round(size_m / pixel))
    ground = rng.choice([[70, 110, 50], [110, 100, 70], [120, 115, 105], [85, 120, 60]])
    tex = ndimage.gaussian_filter(rng.normal(size=(n, n)), rng.uniform(1.0, 5.0) / pixel)
    tex = 1 + rng.uniform(0.02, 0.12) * tex / tex.std()
    before = np.stack([c * tex for c in ground]).astype(np.float64)
    after = before.copy()
    truth = np.zeros((n, n), bool)

    def box(cx, cy, w, h, ang):
        b = shapely.box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if rng.random() < 0.3:   # an L-shaped building
            b = b.difference(shapely.box(cx, cy, cx + w / 2, cy + h / 2))
        return affinity.rotate(b, ang, origin=(cx, cy))

    def shadow(poly, sun_az, length):
        dx, dy = -np.sin(sun_az) * length, np.cos(sun_az) * length  # away from the sun, y down
        moved = affinity.translate(poly, dx, dy)
        return shapely.convex_hull(shapely.union(poly, moved)).difference(poly)

    def colour():
        if rng.random() < 0.25:
            return rng.uniform(40, 230) * np.ones(3) * rng.uniform(0.9, 1.1, 3)
        return rng.uniform(30, 230, 3)

    sun_b, sun_a = rng.uniform(0, 2 * np.pi, 2)
    taken = []

    def free(poly):
        if any(poly.buffer(4).intersects(t) for t in taken):
            return False
        taken.append(poly)
        return True

    def spot(w, h):
        m = max(w, h) / 2 + 15
        return rng.uniform(m, size_m - m), rng.uniform(m, size_m - m)

    def place(count, w_range, margin):
        """Up to ``count`` non-overlapping boxes (a few tries each)."""
        placed = []
        for _ in range(count * 10):
            if len(placed) == count:
                break
            w, h = rng.uniform(*w_range, 2)
            poly = box(*spot(w, h), w, h, rng.uniform(0, 90))
            if free(poly.buffer(margin)):
                placed.append(poly)
        return placed

    for poly in place(int(rng.integers(2, 6)), (8, 40), 8):   # old buildings
        c, height = colour(), rng.uniform(3, 12)
        for img, sun in ((before, sun_b), (after, sun_a)):
            sh = shadow(poly, sun, height * rng.uniform(0.6, 1.4))
            if not sh.is_empty and sh.geom_type == "Polygon":
                _fill(img, sh, img.mean(axis=(1, 2)) * 0.35, pixel)
            _fill(img, poly, c, pixel)
    for poly in place(int(rng.integers(2, 7)), (7, 60), 12):  # new buildings
        if rng.random() < 0.4:                   # on a patch of bare earth
            _fill(after, poly.buffer(rng.uniform(3, 12), join_style="mitre"),
                  np.array([150, 130, 100]) * rng.uniform(0.8, 1.2), pixel)
        sh = shadow(poly, sun_a, rng.uniform(2, 12))
        if not sh.is_empty and sh.geom_type == "Polygon":
            _fill(after, sh, after.mean(axis=(1, 2)) * 0.35, pixel)
        truth |= _fill(after, poly, colour(), pixel)
    for poly in place(int(rng.integers(3, 9)), (10, 70), 0):  # flat changes, no shadow
        kind = rng.integers(3)
        c = (np.array([90, 90, 95]) if kind == 0 else np.array([150, 130, 100]) if kind == 1
             else ground * rng.uniform(0.7, 1.3, 3)) * rng.uniform(0.7, 1.3, 3)
        _fill(after, poly, c, pixel)
    gain, offset, gamma = rng.uniform(0.8, 1.2), rng.uniform(-15, 15), rng.uniform(0.85, 1.15)
    after = gain * 255 * (np.clip(after, 0, None) / 255) ** gamma + offset
    sigma = rng.uniform(1.0, 3.0)
    grid = Grid(CRS.from_epsg(32633), Affine(pixel, 0, 500000.0, 0, -pixel, 4500000.0), n, n)
    valid = np.ones((n, n), bool)

    def scene(img):
        return Scene((img + rng.normal(0, sigma, img.shape)).astype(np.float32), valid.copy(), grid)

    return scene(before), scene(after), truth


def labelled_regions(before, after, truth) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features (n, F), roof fraction (n,), area px (n,)) of one pair's candidate regions."""
    valid = before.valid & after.valid
    fit = fit_radiometry(before.image, after.image, valid, keep_weight=False)
    params = DetectionParams(fit=fit)
    normalised = replace(after, image=fit.apply(after.image), valid=valid)
    evidence = new_building_evidence(replace(before, valid=valid), normalised, params,
                                     after_raw=after.image)
    pixel_m = params.pixel_m(before.grid)
    regions, n = candidate_regions(evidence, valid, pixel_m, params)
    feats = region_features(regions, n, evidence, valid, pixel_m)[:, 1:, 0].T
    count = np.bincount(regions.ravel(), minlength=n + 1)[1:]
    roof = np.bincount(regions.ravel(), weights=truth.ravel().astype(float),
                       minlength=n + 1)[1:]
    return feats, roof / np.maximum(count, 1), count


def fit_ensemble(x: np.ndarray, y: np.ndarray, w: np.ndarray, samples: int
                 ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fit the perceptron ensemble on features ``x`` (n, F), labels ``y`` (n,) and
    sampling weights ``w`` (n,); return the model arrays (as ``classify_regions``
    takes them) and the ensemble's mean vote on ``x``."""
    from sklearn.neural_network import MLPClassifier

    mean = x.mean(0)
    scale = x.std(0) + 1e-6
    # An ensemble of perceptrons, each on its own weighted resample, averages away
    # the whims of any one fit.
    model: dict[str, np.ndarray] = {"mean": mean.astype(np.float32),
                                    "scale": scale.astype(np.float32),
                                    "n_members": np.array(N_MEMBERS)}
    votes = np.zeros(len(x))
    for m in range(N_MEMBERS):
        rng = np.random.default_rng(m)
        pick = rng.choice(len(x), size=samples, p=w / w.sum())
        clf = MLPClassifier(hidden_layer_sizes=(16,), alpha=1e-2, max_iter=2000,
                            random_state=m)
        clf.fit((x[pick] - mean) / scale, y[pick])
        votes += clf.predict_proba((x - mean) / scale)[:, 1]
        model.update(mlp_arrays(clf, prefix=f"m{m}_"))
    return model, votes / N_MEMBERS


def all_training_pairs() -> list[tuple[str, int, float]]:
    """(scenario, seed, pixel size m) of every training pair, the tiles pairs last."""
    tiles = [("tiles", seed, float(pixel)) for seed, pixel in
             zip(range(N_TILES), np.resize([0.3, 0.5, 0.7, 1.0], N_TILES))]
    return list(TRAINING_PAIRS) + tiles


def pair_features(scenario: str, seed: int, pixel: float, cache: Path, reuse: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`labelled_regions` of one training pair, cached in ``cache`` (read back
    when ``reuse``)."""
    cached = cache / f"features_{scenario}_{seed}.npz"
    if reuse and cached.exists():
        with np.load(cached) as z:
            return z["feats"], z["roof"], z["count"]
    if scenario == "tiles":
        before, after, truth = tiles_pair(seed, float(pixel))
    else:
        before, after, truth = registered_pair(scenario, seed, pixel, cache)
    feats, roof, count = labelled_regions(before, after, truth)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(cached, feats=feats, roof=roof, count=count)
    return feats, roof, count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/changedet_train_regions"))
    ap.add_argument("--out", type=Path, default=Path("changedet/models/regions.npz"))
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--reuse-features", action="store_true",
                    help="reuse the region features cached by an earlier run (only "
                         "when the feature code has not changed since)")
    args = ap.parse_args(argv)
    xs, ys, ws = [], [], []
    for scenario, seed, pixel in all_training_pairs():
        t0 = time.perf_counter()
        feats, roof, count = pair_features(scenario, seed, pixel, args.cache,
                                           args.reuse_features)
        xs.append(feats)
        ys.append(roof > 0.5)
        # A tiles pair is small (a few dozen regions against thousands in a main-generator
        # scene): its regions weigh three times as much so that both generators count.
        ws.append(np.sqrt(count) * (TILES_WEIGHT if scenario == "tiles" else 1.0))
        print(f"{scenario} {seed} ({pixel} m): {int((roof > 0.5).sum())} roof of "
              f"{roof.size} regions, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    x = np.concatenate(xs).astype(np.float64)
    y = np.concatenate(ys)
    w = np.concatenate(ws)
    model, votes = fit_ensemble(x, y, w, args.samples)
    accuracy = float(((votes > 0.5) == y).mean())
    print(f"training accuracy (all regions) {accuracy:.3f}", file=sys.stderr)
    save_model(args.out, model, REGION_FEATURE_NAMES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
