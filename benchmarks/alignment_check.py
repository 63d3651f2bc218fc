"""What the alignment check makes of pairs whose co-registration estimate is unreliable.

On a scene most of which changed, the co-registration's windows disagree and its
estimate is judged unreliable and left unapplied. :func:`changedet.coregister.check_alignment`
then asks the structure both dates share where it agrees best, and how clearly. This
script runs the estimate and the check on:

- the four LEVIR-CD development pairs (``../shared/data/real/levir-dev``; woodland or
  field turned suburb, no known misregistration);
- the Joplin tornado tiles (``../shared/data/real/joplin``, each pre tile with the post
  tile that overlaps it most, on the pre tile's grid, as ``changedet detect`` puts them);
- controls with a known answer: pairs of unrelated textures (nothing in common) and
  pairs of which a sixth is the before date moved by a known offset and the rest an
  unrelated texture.

The data folders are read at run time (nothing of them is copied here); a missing
folder is skipped. One row per pair: the estimate's shift, spread and reliability,
the misregistration it alone would give the area ranges (shift plus spread), the
check's best offset (refined to a fraction of a pixel) with its precision, its height
in robust standard deviations (``z``) against the height chance reaches over the
offsets searched, and the misregistration the ranges now allow for (``-``: the dates
share nothing measurable; the unchecked figure where the check cannot judge).

Usage::

    PYTHONPATH=$PWD python benchmarks/alignment_check.py [--levir DIR] [--joplin DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from changedet.coregister import check_alignment, estimate_shift

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_joplin import pairs_by_overlap  # noqa: E402
from real_levir import load_pair, shared_data_dir  # noqa: E402


def texture(seed: int, size: int = 512) -> np.ndarray:
    """(3, size, size) float32 smooth random texture, 0 to 250."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(3, size, size)), (0, 3, 3))
    return ((smooth - smooth.min()) / np.ptp(smooth) * 250).astype(np.float32)


def row(name: str, before: np.ndarray, after: np.ndarray, valid: np.ndarray,
        truth: str = "") -> str:
    t0 = time.perf_counter()
    reg = estimate_shift(before, after, valid)
    t1 = time.perf_counter()
    check = check_alignment(before, after, valid)
    t2 = time.perf_counter()
    unchecked = float(np.hypot(*reg.shift_px)) + (reg.residual_rms_px or 0.0)
    if check is None:
        found, allowed = "cannot judge | - | - ", f"{unchecked:.2f}"
    else:
        found = (f"{check.shift_px[0]:.2f}, {check.shift_px[1]:.2f} "
                 f"| {check.precision_px:.2f} | {check.z:.1f} / {check.z_needed:.1f}")
        allowed = "-" if check.misregistration_px is None else f"{check.misregistration_px:.2f}"
    # The estimate's own time: estimate_shift also runs the check when it is unreliable.
    return (f"| {name} | {truth} | {reg.shift_px[0]:.2f}, {reg.shift_px[1]:.2f} "
            f"| {reg.residual_rms_px or 0.0:.2f} | {reg.reliability or 0.0:.2f} "
            f"| {unchecked:.1f} | {found} | {allowed} | {t1 - t0 - (t2 - t1):.2f} "
            f"| {t2 - t1:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levir", type=Path, default=shared_data_dir("levir-dev"))
    ap.add_argument("--joplin", type=Path, default=shared_data_dir("joplin"))
    args = ap.parse_args(argv)
    print("| pair | true offset | estimate dx, dy px | its spread px | reliability "
          "| unchecked misregistration px | check: best offset dx, dy px | its precision px "
          "| z / needed | ranges allow px | estimate s | check s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    if (args.levir / "A").is_dir():
        for path in sorted((args.levir / "A").glob("*.png")):
            before, after, _ = load_pair(args.levir, path.stem)
            print(row(path.stem, before.image, after.image, before.valid & after.valid),
                  flush=True)
    if (args.joplin / "pre").is_dir():
        from changedet.raster import align_checked_pair, read_scene

        for pre, post, _ in pairs_by_overlap(args.joplin.resolve()):
            pair = align_checked_pair(read_scene(pre, warn=False), read_scene(post, warn=False))
            print(row(f"Joplin {pre.stem}", pair.before.image, pair.after.image,
                      pair.before.valid & pair.after.valid), flush=True)
    valid = np.ones((512, 512), bool)
    for seed in (1, 3, 5):
        print(row(f"unrelated textures {seed}", texture(seed), texture(seed + 1), valid,
                  "none"), flush=True)
    for seed, (dx, dy) in ((7, (0.0, 0.0)), (9, (3.0, -2.0)), (11, (-6.6, 4.3))):
        before, after = texture(seed), texture(seed + 1)
        moved = ndimage.shift(before, (0, dy, dx), order=3, mode="nearest")
        after[:, :, :85] = moved[:, :, :85]
        print(row(f"a sixth kept, seed {seed}", before, after, valid, f"{dx:g}, {dy:g}"),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
