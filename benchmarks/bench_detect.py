"""Accuracy and speed of the new-building detector on synthetic pairs.

For each scenario and seed: make the pair with :mod:`changedet.synth`, register the
after scene with the known truth shift (one resampling, as the pipeline does), run
:func:`changedet.change.detect_new_buildings` and compare with the truth mask:
per-building area error of the matched buildings, missed buildings and false
buildings of 100 m² or more, object precision/recall/F1 (IoU >= 0.5 one-to-one) and
the run time. ``--timing 4096`` also times a 4096 x 4096 pair (the compound pair
tiled to that size).

Usage::

    PYTHONPATH=$PWD python benchmarks/bench_detect.py [--seeds 0 1 2 3 4 5]
        [--other-seeds 1] [--scenarios compound suburb none demolition infill] [--timing 4096]
        [--detector handcrafted] [--model FILE.npz] [--no-appearance-check] [--stages]

A summary per scenario follows the table: missed and false buildings, how many area
errors are within 3 % and 5 %, and the median error. ``--stages`` adds where each
true building's area went (:func:`changedet.evaluate.stage_losses`): not a
candidate, in rejected regions, kept, and the overgrowth of the buildings found on
it; one row per building of 1000 m² or more, one per scene for all of 100 m² or more.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from affine import Affine
from scipy import ndimage

from changedet.change import DetectionParams, detect_new_buildings, load_model
from changedet.evaluate import evaluate, pooled_stage_losses, stage_losses
from changedet.raster import Grid, Scene, align_pair, warp_scene

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_levir import add_appearance_check_option  # noqa: E402

BIG_M2 = 100.0
#: Buildings this large (m²) get a row of their own in the stage table.
RESIDENCE_M2 = 1000.0


def registered_pair(scenario: str, seed: int) -> tuple[Scene, Scene, np.ndarray]:
    """Before, after registered with the true shift, and the truth mask."""
    from changedet.synth import SynthParams, make_synthetic_pair

    sp = make_synthetic_pair(SynthParams.for_scenario(scenario, seed=seed))
    pair = align_pair(sp.before, sp.after)
    dx, dy = sp.shift_px
    after = warp_scene(pair.after_source, pair.grid, Affine.translation(dx, dy))
    valid = pair.before.valid & after.valid
    truth = sp.truth_mask
    if pair.grid != sp.before.grid:
        raise RuntimeError("analysis grid differs from the truth grid")
    return replace(pair.before, valid=valid), replace(after, valid=valid), truth


def score(labels: np.ndarray, truth: np.ndarray, grid: Grid) -> dict:
    """Per-building area errors, misses and false buildings >= 100 m², object P/R/F1."""
    pixel_area = grid.pixel_area
    tl, nt = ndimage.label(truth)
    t_area = np.bincount(tl.ravel(), minlength=nt + 1) * pixel_area
    errors, missed = [], 0
    for j in range(1, nt + 1):
        hit = np.unique(labels[tl == j])
        hit = hit[hit > 0]
        if hit.size == 0:
            missed += int(t_area[j] >= BIG_M2)
            continue
        # All predicted parts touching the building count towards its area.
        area = np.isin(labels, hit).sum() * pixel_area
        errors.append(100.0 * (area - t_area[j]) / t_area[j])
    false = 0
    for k in range(1, int(labels.max()) + 1):
        m = labels == k
        if m.any() and not truth[m].any() and m.sum() * pixel_area >= BIG_M2:
            false += 1
    obj = evaluate(labels, truth, grid)
    return {"n_true": nt, "n_pred": obj["n_pred"], "missed": missed, "false": false,
            "area_err_pct": errors, "obj_p": obj["precision"], "obj_r": obj["recall"],
            "obj_f1": obj["f1"]}


def stage_table_rows(scenario: str, seed: int, truth: np.ndarray, regions: np.ndarray,
                     labels: np.ndarray, pixel_area: float) -> list[str]:
    """Rows of the stage table: each building of RESIDENCE_M2 or more, then all of
    100 m² or more together (fractions weighted by area)."""
    rows = []
    losses = [b for b in stage_losses(truth, regions, labels)
              if b["area_px"] * pixel_area >= BIG_M2]
    for k, b in enumerate(losses, start=1):
        if b["area_px"] * pixel_area >= RESIDENCE_M2:
            rows.append(f"| {scenario} | {seed} | {k} | {b['area_px'] * pixel_area:.0f} "
                        f"| {b['not_candidate']:.2f} | {b['rejected']:.2f} "
                        f"| {b['kept']:.2f} | {b['overgrowth']:+.2f} |")
    if losses:
        pooled = pooled_stage_losses(losses)
        rows.append(f"| {scenario} | {seed} | all {len(losses)} "
                    f"| {pooled['area_px'] * pixel_area:.0f} "
                    f"| {pooled['not_candidate']:.2f} | {pooled['rejected']:.2f} "
                    f"| {pooled['kept']:.2f} | {pooled['overgrowth']:+.2f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", nargs="+",
                    default=["compound", "suburb", "none", "demolition", "infill"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--other-seeds", type=int, default=1,
                    help="scenarios other than compound run on the first N of --seeds "
                         "(default 1)")
    ap.add_argument("--timing", type=int, default=0,
                    help="also time a SIZE x SIZE pair (the compound pair tiled)")
    ap.add_argument("--detector", choices=["regions", "appearance", "handcrafted", "learned"], default="regions")
    ap.add_argument("--model", type=Path, default=None,
                    help="score these classifier weights instead of the shipped ones "
                         "(e.g. a model written by train_regions.py --out)")
    add_appearance_check_option(ap)
    ap.add_argument("--stages", action="store_true",
                    help="also say where each true building's area went (regions "
                         "detector): not a candidate, rejected, kept, overgrowth")
    args = ap.parse_args(argv)
    model = load_model(args.model) if args.model is not None else None
    params = DetectionParams(detector=args.detector, model=model,
                             appearance_check=args.appearance_check)
    print("| scenario | seed | px | true | found | missed >=100 m² | false >=100 m² "
          "| area error % per building | object F1 | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    summary: dict[str, list] = {}
    stage_rows: list[str] = []
    for scenario in args.scenarios:
        seeds = args.seeds if scenario == "compound" else args.seeds[:args.other_seeds]
        for seed in seeds:
            before, after, truth = registered_pair(scenario, seed)
            t0 = time.perf_counter()
            labels, evidence = detect_new_buildings(before, after, params)
            dt = time.perf_counter() - t0
            if args.stages and evidence.regions is not None:
                stage_rows += stage_table_rows(scenario, seed, truth, evidence.regions,
                                               labels, before.grid.pixel_area)
            s = score(labels, truth, before.grid)
            errs = ", ".join(f"{e:+.1f}" for e in s["area_err_pct"]) or "-"
            print(f"| {scenario} | {seed} | {before.grid.width}x{before.grid.height} "
                  f"| {s['n_true']} | {s['n_pred']} | {s['missed']} | {s['false']} "
                  f"| {errs} | {s['obj_f1']:.3f} | {dt:.1f} |", flush=True)
            summary.setdefault(scenario, []).append(s)
    for scenario, runs in summary.items():
        errors = np.abs([e for s in runs for e in s["area_err_pct"]])
        n_true = sum(s["n_true"] for s in runs)
        line = (f"\n{scenario}, {len(runs)} seed(s): {n_true} true buildings, "
                f"{sum(s['missed'] for s in runs)} missed and "
                f"{sum(s['false'] for s in runs)} false of 100 m² or more")
        if errors.size:
            line += (f"; area error within 3 % for {int((errors <= 3).sum())}, within 5 % "
                     f"for {int((errors <= 5).sum())} of {errors.size} found; median "
                     f"|area error| {np.median(errors):.1f} %")
        print(line)
    if stage_rows:
        print("\n| scenario | seed | true building | area m² | not candidate | rejected "
              "| kept | overgrowth |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print("\n".join(stage_rows))
    if args.timing:
        before, after, _ = registered_pair("compound", 0)
        n = args.timing
        reps = (int(np.ceil(n / before.grid.height)), int(np.ceil(n / before.grid.width)))

        def tiled(sc: Scene) -> Scene:
            img = np.tile(sc.image, (1,) + reps)[:, :n, :n].copy()
            val = np.tile(sc.valid, reps)[:n, :n].copy()
            return replace(sc, image=img, valid=val, grid=sc.grid.window(0, 0, n, n))

        b, a = tiled(before), tiled(after)
        t0 = time.perf_counter()
        detect_new_buildings(b, a, params)
        print(f"\n{n} x {n} pair: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
