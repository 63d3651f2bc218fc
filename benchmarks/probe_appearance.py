"""Probe for issue 4: how far one date's appearance alone goes at finding new roofs.

The shipped detector describes each candidate region by, among other things, the
change between the dates in units of sensor noise, and its classifier learns from
synthetic pairs that a new roof changed by ten noise units or more. On the LEVIR
pairs a new roof and the lawn and road around it all changed by two to four such
units (everything was forest or field before), so the roofs are neither candidates
nor judged roofs. This probe asks instead whether a roof can be recognised in one
date, and is not used by ``changedet`` itself:

1. each date is over-segmented (Felzenszwalb's graph segmentation of the visible bands
   stretched between their 2nd and 98th percentiles; segments of 8 m² and more);
2. each segment is described by its shape (as the region classifier sees it)
   and by its appearance measured in units of the date itself, not of its noise
   (:func:`appearance_features`);
3. a classifier (the perceptron ensemble of ``train_regions.py``, or with
   ``--classifier trees`` gradient-boosted trees) learns roof / not roof from both
   dates of synthetic pairs (suburb 100-105, compound 100-102, the roofs
   of every building standing at that date);
4. a new building is a roof-like segment of the after date whose pixels were not
   roof-like in the before date (segments of the after date whose mean before-date
   roof probability is below one half), opened by a 3 x 3 square, 20 m² and more.

It prints pixel and object scores (``changedet.evaluate``) of this detector, of the
shipped one and of their union on the LEVIR development pairs and on synthetic
``suburb`` and ``none`` pairs (seeds 0-2 and 0-1, as ``bench_detect.py``).

Usage::

    PYTHONPATH=$PWD python benchmarks/probe_appearance.py [--cache DIR] [--compound]
        [--classifier perceptrons|trees]

About 15 minutes on two cores, most of it describing the training segments (cached in
``--cache``; empty it when the features change).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio.features
from scipy import ndimage
from skimage.segmentation import felzenszwalb

from changedet.change import (MAX_AREA_FEATURE_M2, _labelled_pixels, _region_shape, _relabel,
                              _shadow_side_fractions, classify_regions, detect_new_buildings)
from changedet.evaluate import evaluate
from changedet.raster import Scene
from changedet.synth import SynthParams, make_world

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detect import registered_pair  # noqa: E402
from real_levir import DEFAULT_DIR, _side_by_side, _strip_grid, load_pair  # noqa: E402
from train_regions import fit_ensemble  # noqa: E402

TRAINING = [("suburb", s) for s in range(100, 106)] + [("compound", s) for s in range(100, 103)]
#: Smallest segment, m²: a roof facet of a small house.
MIN_SEGMENT_M2 = 8.0


def date_segments(scene: Scene, pixel_m: float) -> tuple[np.ndarray, int]:
    """Over-segmentation of one date's visible bands: (H, W) labels 1..n, 0 off data."""
    valid = scene.valid
    vis = scene.image[:3]
    lo = np.array([np.percentile(b[valid], 2) for b in vis])
    hi = np.array([np.percentile(b[valid], 98) for b in vis])
    rgb = np.clip((vis - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None], 0, 1)
    seg = felzenszwalb(np.moveaxis(rgb, 0, -1), scale=100, sigma=max(0.5, 0.4 / pixel_m),
                       min_size=int(round(MIN_SEGMENT_M2 / pixel_m**2))) + 1
    seg[~valid] = 0
    return _relabel(seg)


#: Appearance features of a segment, after the five shape features of region_features.
APPEARANCE_NAMES = ("log_bright", "bright_spread", "saturation", "greenness",
                    "relative_texture", "log_rim_gradient", "dark_side_contrast",
                    "dark_side")


def appearance_features(scene: Scene, pixel_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(segments (H, W), features (F, n + 1, 1)) of one date.

    The shape is that of the region classifier's features (area, rectangularity,
    solidity, compactness, elongation); the rest is measured in units of the date itself, not
    of its noise: brightness over the scene median, the spread of brightness and the
    fine texture over the local brightness, saturation and greenness of the colour,
    the gradient along the segment's rim over the scene's median gradient, and the
    darkness (against the brightest ground within 15 m) of a strip 2 m beyond the
    segment on its darkest side, minus that of the opposite side.
    """
    segments, n = date_segments(scene, pixel_m)
    valid = scene.valid
    count, *shape = _region_shape(segments, n, *_labelled_pixels(segments))
    shape = [np.log(np.clip(count * pixel_m**2, 1.0, MAX_AREA_FEATURE_M2)), *shape]

    def mean(x: np.ndarray) -> np.ndarray:
        return np.bincount(segments.ravel(), weights=x.ravel(), minlength=n + 1) / count

    rgb = np.maximum(scene.image[:3].astype(np.float64), 0.0)
    bright = rgb.mean(axis=0)
    total = rgb.sum(axis=0) + 1e-6
    saturation = (rgb.max(axis=0) - rgb.min(axis=0)) / (rgb.max(axis=0) + 1e-6)
    greenness = (rgb[1] - 0.5 * (rgb[0] + rgb[2])) / total
    s = max(0.7, 0.5 / pixel_m)
    local = ndimage.gaussian_filter(bright, s)
    texture = np.sqrt(ndimage.gaussian_filter((bright - local) ** 2, s)) / (local + 1.0)
    gradient = ndimage.gaussian_gradient_magnitude(bright, s)
    gradient /= np.median(gradient[valid]) + 1e-6
    rim = ((ndimage.grey_erosion(segments, size=3) != segments)
           | (ndimage.grey_dilation(segments, size=3) != segments))
    rim_count = np.maximum(np.bincount(segments[rim], minlength=n + 1), 1)
    rim_gradient = np.bincount(segments[rim], weights=gradient[rim], minlength=n + 1) / rim_count
    ref = ndimage.maximum_filter(ndimage.uniform_filter(bright, 3),
                                 max(3, int(round(15.0 / pixel_m)) | 1))
    dark = np.clip(1.0 - bright / (ref + 1e-6), 0.0, 1.0)
    sides = _shadow_side_fractions(segments, n, dark, max(1.0, 2.0 / pixel_m))
    half = sides.shape[1] // 2
    mean_bright = mean(bright)
    spread = np.sqrt(np.maximum(mean(bright**2) - mean_bright**2, 0.0)) / (mean_bright + 1.0)
    appearance = np.stack([
        np.log(np.maximum(mean_bright, 1.0) / (np.median(bright[valid]) + 1e-6)), spread,
        mean(saturation), mean(greenness), mean(texture), np.log1p(rim_gradient),
        (sides - np.roll(sides, half, axis=1)).max(axis=1), sides.max(axis=1)])
    feats = np.concatenate([np.stack(shape), appearance]).astype(np.float32)[:, :, None]
    return segments, feats


Classifier = Callable[[np.ndarray], np.ndarray]


def fit_classifier(kind: str, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> Classifier:
    """Roof probability of each segment's features, (F, n + 1, 1) -> (n + 1,)."""
    if kind == "trees":
        from sklearn.ensemble import HistGradientBoostingClassifier

        trees = HistGradientBoostingClassifier(max_iter=300, random_state=0)
        trees.fit(x, y, sample_weight=w)
        return lambda feats: trees.predict_proba(feats[:, :, 0].T)[:, 1]
    model, _ = fit_ensemble(x, y, w, samples=20000)
    return lambda feats: classify_regions(feats, model)


def roof_probability(scene: Scene, pixel_m: float, model: Classifier
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(segments, per-pixel roof probability of the segment it lies in)."""
    segments, feats = appearance_features(scene, pixel_m)
    prob = model(feats)
    prob[0] = 0.0
    return segments, prob[segments]


def training_set(cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, roof labels and sampling weights of the training segments."""
    xs, ys, ws = [], [], []
    cache.mkdir(parents=True, exist_ok=True)
    for scenario, seed in TRAINING:
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
                n = feats.shape[1] - 1
                count = np.bincount(segments.ravel(), minlength=n + 1)[1:]
                roof = np.bincount(segments.ravel(), weights=mask.ravel().astype(float),
                                   minlength=n + 1)[1:]
                x.append(feats[:, 1:, 0].T)
                y.append(roof > 0.5 * np.maximum(count, 1))
                w.append(np.sqrt(count))
            np.savez(path, x=np.concatenate(x), y=np.concatenate(y), w=np.concatenate(w))
            print(f"{scenario} {seed}: described", file=sys.stderr)
        with np.load(path) as z:
            xs.append(z["x"])
            ys.append(z["y"])
            ws.append(z["w"])
    return np.concatenate(xs).astype(np.float64), np.concatenate(ys), np.concatenate(ws)


def new_roofs(before: Scene, after: Scene, pixel_m: float, model: Classifier) -> np.ndarray:
    """(H, W) bool: roof-like segments of the after date that were not roofs before."""
    segments, p_after = roof_probability(after, pixel_m, model)
    _, p_before = roof_probability(before, pixel_m, model)
    n = int(segments.max())
    count = np.maximum(np.bincount(segments.ravel(), minlength=n + 1), 1)
    was_roof = np.bincount(segments.ravel(), weights=p_before.ravel(), minlength=n + 1) / count
    mask = (p_after > 0.5) & (was_roof[segments] < 0.5) & before.valid & after.valid
    mask = ndimage.binary_opening(mask, np.ones((3, 3), bool))
    objects, _ = ndimage.label(mask)
    small = np.bincount(objects.ravel()) < 20.0 / pixel_m**2
    small[0] = False
    return mask & ~small[objects]


def _row(tag: str, pred: np.ndarray, truth: np.ndarray, grid) -> str:
    s = evaluate(pred, truth, grid)
    return (f"| {tag} | {s['pixel_precision']:.3f} | {s['pixel_recall']:.3f} "
            f"| {s['pixel_f1']:.3f} | {s['f1']:.3f} | {s['n_pred']} / {s['n_truth']} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/changedet_probe_appearance"))
    ap.add_argument("--compound", action="store_true", help="also score compound seeds 0-2")
    ap.add_argument("--classifier", choices=("perceptrons", "trees"), default="perceptrons",
                    help="the ensemble of train_regions.py, or gradient-boosted trees")
    args = ap.parse_args(argv)
    model = fit_classifier(args.classifier, *training_set(args.cache))
    print("| pair | detector | pixel P | pixel R | pixel F1 | object F1 | found / true |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    if DEFAULT_DIR.is_dir():
        preds: dict[str, list[np.ndarray]] = {"appearance": [], "shipped": [], "union": []}
        truths = []
        for name in sorted(p.stem for p in (DEFAULT_DIR / "A").glob("*.png")):
            before, after, truth = load_pair(DEFAULT_DIR, name)
            found = {"appearance": new_roofs(before, after, 0.5, model),
                     "shipped": detect_new_buildings(before, after)[0] > 0}
            found["union"] = found["appearance"] | found["shipped"]
            for k, v in found.items():
                preds[k].append(v)
                print(_row(f"LEVIR {name} | {k}", v, truth, before.grid))
            truths.append(truth)
        grid = _strip_grid(sum(t.shape[1] + 1 for t in truths), max(t.shape[0] for t in truths))
        for k, v in preds.items():
            print(_row(f"**LEVIR all** | {k}", _side_by_side(v), _side_by_side(truths), grid))
    scenes = [("suburb", s) for s in (0, 1, 2)] + [("none", s) for s in (0, 1)]
    if args.compound:
        scenes += [("compound", s) for s in (0, 1, 2)]
    for scenario, seed in scenes:
        before, after, truth = registered_pair(scenario, seed)
        pixel_m = abs(before.grid.transform.a)
        found = {"appearance": new_roofs(before, after, pixel_m, model),
                 "shipped": detect_new_buildings(before, after)[0] > 0}
        found["union"] = found["appearance"] | found["shipped"]
        for k, v in found.items():
            print(_row(f"{scenario} {seed} | {k}", v, truth, before.grid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
