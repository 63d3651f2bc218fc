"""How much of each benchmark scene changed, by its structure: where the warning fires.

The regions detector's colour normalisation matches the two dates where they agree,
so it needs most of the scene unchanged. ``changedet detect`` warns when the share of
the textured ground whose structure differs between the dates
(:func:`changedet.change.structure_disagreement`) is above
:data:`changedet.change.CHANGED_MAJORITY`. This script prints that share for every
benchmark scene: the synthetic scenarios (``compound`` seeds 0-11 at 1600 px,
``suburb`` and ``none`` 0-2, ``demolition`` 0-5, at 1024 px), the independent pairs
when a folder of them is given (``benchmarks/independent/gen_pairs.py DATA``), and
the real LEVIR and Joplin pairs, read at run time from the shared data folder
(nothing of it is copied here). Each synthetic and Joplin pair is registered by
``coregister(..., "global")`` first, as the pipeline does.

Usage::

    PYTHONPATH=$PWD python benchmarks/changed_majority.py [--independent DATA]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from changedet.change import (CHANGED_MAJORITY, _brightness, _share,
                              structure_disagreement)
from changedet.coregister import coregister
from changedet.raster import AlignedPair, align_pair, read_scene
from changedet.synth import SynthParams, make_synthetic_pair

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_joplin import pairs_by_overlap  # noqa: E402
from real_levir import DEFAULT_DIR, load_pair, shared_data_dir  # noqa: E402


def changed_share(before, after, pixel_m: float) -> float:
    """Share of the textured ground whose structure differs (NaN: none to compare)."""
    return _share(structure_disagreement(_brightness(before.image, before.nir),
                                         _brightness(after.image, after.nir),
                                         before.valid & after.valid, pixel_m))


def _registered(pair: AlignedPair) -> tuple[object, object, float]:
    registered, _ = coregister(pair, "global")
    return registered.before, registered.after, abs(registered.grid.transform.a)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--independent", type=Path, default=None,
                    help="folder written by benchmarks/independent/gen_pairs.py")
    args = ap.parse_args(argv)
    print("| scene | changed share | warns |")
    print("| --- | --- | --- |")

    def row(name: str, share: float) -> None:
        print(f"| {name} | {share:.2f} | {'yes' if share > CHANGED_MAJORITY else 'no'} |",
              flush=True)

    for scenario, seeds, size in (("compound", range(12), 1600), ("suburb", range(3), 1024),
                                  ("none", range(3), 1024), ("demolition", range(6), 1024)):
        for seed in seeds:
            sp = make_synthetic_pair(SynthParams.for_scenario(scenario, seed=seed, size=size))
            row(f"{scenario} {seed}", changed_share(*_registered(align_pair(sp.before,
                                                                            sp.after))))
    if args.independent is not None:
        for folder in sorted(p for p in args.independent.iterdir() if p.is_dir()):
            pair = align_pair(read_scene(str(folder / "before.tif")),
                              read_scene(str(folder / "after.tif")))
            row(f"independent {folder.name}", changed_share(*_registered(pair)))
    if (DEFAULT_DIR / "A").is_dir():
        for name in sorted(p.stem for p in (DEFAULT_DIR / "A").glob("*.png")):
            before, after, _ = load_pair(DEFAULT_DIR, name)
            row(f"LEVIR {name}", changed_share(before, after, 0.5))
    joplin = shared_data_dir("joplin")
    if (joplin / "pre").is_dir():
        for pre, post, _ in pairs_by_overlap(joplin):
            pair = align_pair(read_scene(str(pre)), read_scene(str(post)))
            row(f"Joplin {pre.stem}", changed_share(*_registered(pair)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
