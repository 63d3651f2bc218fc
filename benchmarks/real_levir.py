"""Score the new-building detector on real LEVIR-CD crops.

Each pair (A = before, B = after, label = new buildings, 256 x 256 RGB PNG at 0.5 m)
is wrapped as georeferenced Scenes in EPSG:32614 (south Texas, the zone of LEVIR-CD)
at an arbitrary origin, run through :func:`changedet.change.detect_new_buildings`,
and scored per pixel (precision, recall, F1) and per object (one-to-one matching of
connected components at IoU >= 0.5). A per-pair table goes to stdout and to a
markdown file.

Usage::

    PYTHONPATH=$PWD python benchmarks/real_levir.py [DATA_DIR] [--out FILE.md]

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

from changedet.change import DetectionParams, detect_new_buildings
from changedet.raster import Grid, Scene

PIXEL_M = 0.5
CRS_TEXAS = CRS.from_epsg(32614)

def _default_dir() -> Path:
    """``../shared/data/real/levir-dev`` beside the repository (or a worktree's parent)."""
    here = Path(__file__).resolve()
    for up in here.parents[1:4]:
        cand = up / ".." / "shared" / "data" / "real" / "levir-dev"
        if cand.is_dir():
            return cand
    return here.parents[1] / ".." / "shared" / "data" / "real" / "levir-dev"


DEFAULT_DIR = _default_dir()


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


def object_scores(pred: np.ndarray, truth: np.ndarray, iou_min: float = 0.5) -> tuple[int, int, int]:
    """(matched, predicted objects, true objects): greedy one-to-one at IoU >= iou_min."""
    pl, npred = ndimage.label(pred > 0)
    tl, ntrue = ndimage.label(truth)
    if npred == 0 or ntrue == 0:
        return 0, npred, ntrue
    both = (pl > 0) & (tl > 0)
    pairs = np.stack([pl[both], tl[both]], 1)
    uniq, inter = np.unique(pairs, axis=0, return_counts=True)
    pa = np.bincount(pl.ravel(), minlength=npred + 1)
    ta = np.bincount(tl.ravel(), minlength=ntrue + 1)
    iou = inter / (pa[uniq[:, 0]] + ta[uniq[:, 1]] - inter)
    order = np.argsort(-iou)
    used_p: set[int] = set()
    used_t: set[int] = set()
    matched = 0
    for i in order:
        if iou[i] < iou_min:
            break
        p, t = int(uniq[i, 0]), int(uniq[i, 1])
        if p in used_p or t in used_t:
            continue
        used_p.add(p)
        used_t.add(t)
        matched += 1
    return matched, npred, ntrue


def prf(tp: float, npred: float, ntrue: float) -> tuple[float, float, float]:
    p = tp / npred if npred else 0.0
    r = tp / ntrue if ntrue else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/real_levir.md"))
    ap.add_argument("--save-masks", type=Path, default=None,
                    help="folder to write before|after|truth|prediction PNGs to")
    args = ap.parse_args(argv)
    root = args.data.resolve()
    if not (root / "A").is_dir():
        print(f"no LEVIR data at {root}", file=sys.stderr)
        return 1
    names = sorted(p.stem for p in (root / "A").glob("*.png"))
    rows = []
    tot = np.zeros(6)
    for name in names:
        before, after, truth = load_pair(root, name)
        t0 = time.perf_counter()
        labels, _ = detect_new_buildings(before, after, DetectionParams())
        dt = time.perf_counter() - t0
        pred = labels > 0
        tp = float((pred & truth).sum())
        px = prf(tp, float(pred.sum()), float(truth.sum()))
        m, npred, ntrue = object_scores(pred, truth)
        ob = prf(m, npred, ntrue)
        tot += [tp, pred.sum(), truth.sum(), m, npred, ntrue]
        rows.append((name, *px, *ob, npred, ntrue, dt))
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
    px_all = prf(tot[0], tot[1], tot[2])
    ob_all = prf(tot[3], tot[4], tot[5])
    lines = [
        "| pair | pixel P | pixel R | pixel F1 | object P | object R | object F1 "
        "| found / true objects | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, pp, pr, pf, op, orr, of, npred, ntrue, dt in rows:
        lines.append(f"| {name} | {pp:.3f} | {pr:.3f} | {pf:.3f} | {op:.3f} | {orr:.3f} "
                     f"| {of:.3f} | {npred} / {ntrue} | {dt:.2f} |")
    lines.append(f"| **all {len(rows)}** | {px_all[0]:.3f} | {px_all[1]:.3f} | "
                 f"**{px_all[2]:.3f}** | {ob_all[0]:.3f} | {ob_all[1]:.3f} | "
                 f"**{ob_all[2]:.3f}** | {int(tot[4])} / {int(tot[5])} | |")
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "Real LEVIR-CD crops (0.5 m, 256 x 256), new-building detection without "
        "trained weights; object matching one-to-one at IoU >= 0.5.\n\n" + table + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
