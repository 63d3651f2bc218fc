"""How much of each benchmark scene changed, by its structure: where the warning fires.

The regions detector's colour normalisation matches the two dates where they agree,
so it needs most of the scene unchanged. When the share of the textured ground whose
structure differs between the dates (:func:`changedet.radiometry.changed_share` of
:func:`changedet.radiometry.structure_maps`, on the fit's patches) is above
:data:`changedet.radiometry.CHANGED_MAJORITY`, the fit is weighted by structure and
``changedet detect`` warns. This script prints that share for every
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


from changedet.coregister import coregister
from changedet.change import DetectionParams
from changedet.radiometry import (CHANGED_MAJORITY, fit_patches, fit_radiometry,
                                  structure_on_patches)
from changedet.raster import AlignedPair, align_pair, read_scene
from changedet.synth import SynthParams, make_synthetic_pair

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_joplin import pairs_by_overlap  # noqa: E402
from real_levir import DEFAULT_DIR, load_pair, shared_data_dir  # noqa: E402


def scene_share(before, after, pixel_m: float) -> float:
    """Share of the textured ground whose structure differs, as the detector's fit
    measures it (on its patches and its sample; NaN: none to compare)."""
    valid = before.valid & after.valid
    patches = fit_patches(valid.shape)
    structure = structure_on_patches(before.image, after.image, valid, patches, pixel_m)
    return fit_radiometry(before.image, after.image, valid, keep_weight=False,
                          patches=patches, structure=structure).changed_share


def _registered(pair: AlignedPair) -> tuple[object, object, float]:
    registered, _ = coregister(pair, "global")
    return (registered.before, registered.after,
            DetectionParams().pixel_m(registered.grid))


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
            row(f"{scenario} {seed}", scene_share(*_registered(align_pair(sp.before,
                                                                            sp.after))))
    if args.independent is not None:
        for folder in sorted(p for p in args.independent.iterdir() if p.is_dir()):
            pair = align_pair(read_scene(str(folder / "before.tif")),
                              read_scene(str(folder / "after.tif")))
            row(f"independent {folder.name}", scene_share(*_registered(pair)))
    if (DEFAULT_DIR / "A").is_dir():
        for name in sorted(p.stem for p in (DEFAULT_DIR / "A").glob("*.png")):
            before, after, _ = load_pair(DEFAULT_DIR, name)
            row(f"LEVIR {name}", scene_share(before, after,
                                             DetectionParams().pixel_m(before.grid)))
    joplin = shared_data_dir("joplin")
    if (joplin / "pre").is_dir():
        for pre, post, _ in pairs_by_overlap(joplin):
            pair = align_pair(read_scene(str(pre)), read_scene(str(post)))
            row(f"Joplin {pre.stem}", scene_share(*_registered(pair)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
