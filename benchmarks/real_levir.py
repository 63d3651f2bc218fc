"""Score the new-building detector on the real LEVIR-CD development pairs.

The pairs are read at run time from the shared data folder (described in its own
README; nothing of it is copied here). Each pair is wrapped as georeferenced Scenes
(``PIXEL_M`` pixels in ``CRS_TEXAS``, an arbitrary origin), run through
:func:`changedet.change.detect_new_buildings`, and scored with
:func:`changedet.evaluate.evaluate` (the scorer of ``changedet evaluate``): per pixel
(precision, recall, F1) and per object (one-to-one matching at IoU >= 0.5, the
SpaceNet rule). The "all" row scores the four pairs together: their
masks side by side, one empty column apart, in one evaluation. A per-pair table goes
to stdout (``--out`` also writes it to a markdown file; the README carries it).

``--stages`` adds a second table: where the true buildings' area went (not a
candidate, and of that how much changed too little to be one before any discount; in
rejected regions; kept; :func:`changedet.evaluate.stage_losses`) and
how many true buildings the region classifier keeps when it is handed their exact
outlines, which separates segmentation failures from classification failures.

Usage::

    PYTHONPATH=$PWD python benchmarks/real_levir.py [DATA_DIR] [--out FILE.md] [--stages]
        [--model FILE.npz] [--detector regions|appearance] [--no-appearance-check]

DATA_DIR defaults to ``../shared/data/real/levir-dev`` relative to the repository;
any folder with the same A/ B/ label/ layout is scored the same way.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage
from skimage import io
from skimage.segmentation import relabel_sequential

from changedet.change import (DetectionParams, Evidence, candidate_level,
                              classify_regions, detect_new_buildings, load_model,
                              region_features)
from changedet.evaluate import evaluate, pooled_stage_losses, stage_losses
from changedet.pipeline import DETECTORS
from changedet.raster import Grid, Scene

PIXEL_M = 0.5
CRS_TEXAS = CRS.from_epsg(32614)

def shared_data_dir(name: str) -> Path:
    """``../shared/data/real/NAME`` beside the repository (or a worktree's parent)."""
    here = Path(__file__).resolve()
    for up in here.parents[1:4]:
        cand = up / ".." / "shared" / "data" / "real" / name
        if cand.is_dir():
            return cand
    return here.parents[1] / ".." / "shared" / "data" / "real" / name


def add_appearance_check_option(ap: argparse.ArgumentParser) -> None:
    """``--no-appearance-check`` (into ``appearance_check``), as ``changedet detect``
    has it, for the benchmark scripts."""
    ap.add_argument("--no-appearance-check", dest="appearance_check",
                    action="store_false",
                    help="regions detector: the classifier alone, without the appearance "
                         "detector's second opinion (changedet detect --no-appearance-check)")


DEFAULT_DIR = shared_data_dir("levir-dev")


def load_pair(root: Path, name: str) -> tuple[Scene, Scene, np.ndarray]:
    """Before and after Scenes (same grid) and the (H, W) bool truth of one pair."""
    a = io.imread(root / "A" / f"{name}.png")[..., :3]
    b = io.imread(root / "B" / f"{name}.png")[..., :3]
    lab = io.imread(root / "label" / f"{name}.png")
    if lab.ndim == 3:
        lab = lab[..., 0]
    h, w = lab.shape
    grid = Grid(CRS_TEXAS, Affine(PIXEL_M, 0, 600000.0, 0, -PIXEL_M, 3300000.0), h, w)
    valid = np.ones((h, w), bool)

    def scene(img: np.ndarray, tag: str) -> Scene:
        data = np.moveaxis(img, -1, 0).astype(np.float32)
        return Scene(data, valid.copy(), grid, f"{name}/{tag}", (1, 2, 3), None)

    return scene(a, "A"), scene(b, "B"), lab > 127


def _side_by_side(masks: list[np.ndarray]) -> np.ndarray:
    """Masks of several pairs in one image, one empty column between them."""
    h = max(m.shape[0] for m in masks)
    cols = []
    for m in masks:
        pad = np.zeros((h, m.shape[1] + 1), bool)
        pad[: m.shape[0], : m.shape[1]] = m
        cols.append(pad)
    return np.concatenate(cols, 1)


def _strip_grid(width: int, height: int) -> Grid:
    return Grid(CRS_TEXAS, Affine(PIXEL_M, 0, 600000.0, 0, -PIXEL_M, 3300000.0),
                height, width)


def outlines_kept(truth: np.ndarray, evidence: Evidence,
                  params: DetectionParams) -> tuple[int, int]:
    """How many true buildings the region classifier keeps when given their outlines.

    The detector's candidate regions are replaced by the true buildings where those
    lie (the other candidate regions stay, as the buildings' neighbours), so the
    classifier judges each roof as a perfect segmentation would present it. This
    separates what the segmentation loses from what the classifier rejects.

    Returns
    -------
    (kept, total)
    """
    roofs, n_roofs = ndimage.label(truth, np.ones((3, 3), bool))
    others = np.where(evidence.regions > 0, evidence.regions + n_roofs, 0)
    regions, _, _ = relabel_sequential(np.where(truth, roofs, others))
    n = int(regions.max())
    valid = np.ones(truth.shape, bool)
    prob = classify_regions(region_features(regions, n, evidence, valid, PIXEL_M),
                            params.model)
    # relabel_sequential keeps the order, so the roofs are still 1..n_roofs.
    return int((prob[1:n_roofs + 1] >= params.region_probability).sum()), n_roofs


def stage_row(name: str, truth: np.ndarray, labels: np.ndarray, evidence: Evidence,
              params: DetectionParams) -> str:
    """A row of the stage table: area-weighted fractions over the pair's buildings."""
    losses = stage_losses(truth, evidence.regions, labels,
                          quiet=evidence.change <= candidate_level(evidence, params))
    b = pooled_stage_losses(losses)
    kept, total = outlines_kept(truth, evidence, params)
    # A pair without true buildings pools no quiet share.
    return (f"| {name} | {len(losses)} | {b['not_candidate']:.2f} "
            f"| {b.get('quiet', 0.0):.2f} | {b['rejected']:.2f} "
            f"| {b['kept']:.2f} | {b['overgrowth']:+.2f} | {kept} of {total} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--out", type=Path, default=None,
                    help="also write the table to this markdown file")
    ap.add_argument("--save-masks", type=Path, default=None,
                    help="folder to write before|after|truth|prediction PNGs to")
    ap.add_argument("--stages", action="store_true",
                    help="also tabulate where the true buildings' area went and how "
                         "the classifier judges the true outlines themselves")
    ap.add_argument("--model", type=Path, default=None,
                    help="score these classifier weights instead of the shipped ones "
                         "(written by train_regions.py --out, or by train_appearance.py "
                         "--out with --detector appearance)")
    ap.add_argument("--detector", choices=DETECTORS, default="regions",
                    help="the detector scored (changedet detect --detector)")
    add_appearance_check_option(ap)
    args = ap.parse_args(argv)
    params = DetectionParams(model=load_model(args.model) if args.model is not None else None,
                             detector=args.detector, appearance_check=args.appearance_check)
    if args.stages and args.detector != "regions":
        ap.error("--stages describes the regions detector's stages")
    root = args.data.resolve()
    if not (root / "A").is_dir():
        print(f"no LEVIR data at {root}", file=sys.stderr)
        return 1
    names = sorted(p.stem for p in (root / "A").glob("*.png"))
    rows = []
    stage_rows: list[str] = []
    preds, truths = [], []
    for name in names:
        before, after, truth = load_pair(root, name)
        t0 = time.perf_counter()
        labels, evidence = detect_new_buildings(before, after, params)
        dt = time.perf_counter() - t0
        pred = labels > 0
        rows.append((name, evaluate(pred, truth, before.grid), dt))
        if args.stages:
            stage_rows.append(stage_row(name, truth, labels, evidence, params))
        preds.append(pred)
        truths.append(truth)
        if args.save_masks:
            args.save_masks.mkdir(parents=True, exist_ok=True)
            a8 = np.moveaxis(before.image, 0, -1).astype(np.uint8)
            b8 = np.moveaxis(after.image, 0, -1).astype(np.uint8)
            t8 = np.repeat((truth * 255).astype(np.uint8)[..., None], 3, -1)
            p8 = np.zeros_like(t8)
            p8[..., 0] = pred * 255
            p8[..., 1] = (pred & truth) * 255
            p8[..., 2] = truth * 255
            io.imsave(args.save_masks / f"{name}.png",
                      np.concatenate([a8, b8, t8, p8], 1), check_contrast=False)
    if not rows:
        print(f"no pairs in {root / 'A'}", file=sys.stderr)
        return 1
    all_scores = evaluate(_side_by_side(preds), _side_by_side(truths),
                          _strip_grid(sum(p.shape[1] + 1 for p in preds),
                                      max(p.shape[0] for p in preds)))
    lines = [
        "| pair | pixel P | pixel R | pixel F1 | object P | object R | object F1 "
        "| found / true objects | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, sc, dt in rows + [(f"**all {len(rows)}**", all_scores, None)]:
        lines.append(
            f"| {name} | {sc['pixel_precision']:.3f} | {sc['pixel_recall']:.3f} "
            f"| {sc['pixel_f1']:.3f} | {sc['precision']:.3f} | {sc['recall']:.3f} "
            f"| {sc['f1']:.3f} | {sc['n_pred']} / {sc['n_truth']} "
            f"| {'' if dt is None else f'{dt:.2f}'} |")
    table = "\n".join(lines)
    print(table)
    if stage_rows:
        print("\n| pair | true buildings | not candidate | of which too little change "
              "| rejected | kept | overgrowth | true outlines the classifier keeps |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print("\n".join(stage_rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "Real LEVIR-CD crops (0.5 m, 256 x 256), new-building detection without "
            "trained weights; object matching one-to-one at IoU >= 0.5.\n\n" + table + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
