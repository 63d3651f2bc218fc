"""Time ``changedet synth`` on a 4096 x 4096 pair (target: under 60 s on 2 cores).

Usage: ``PYTHONPATH=. python benchmarks/bench_synth.py [--size 4096] [--scenario compound]``

Prints wall-clock and CPU seconds of the whole command (rendering both dates and
writing the GeoTIFFs and truth), the machine's load average before and after (the
machine is shared, so wall time depends on it), and the output sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from click.testing import CliRunner

from changedet.cli import main


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the after renderer)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        use = resource.getrusage(who)
        total += use.ru_utime + use.ru_stime
    return total


def run(size: int, scenario: str, seed: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        out = Path(tmp) / "pair"
        args = ["synth", str(out), "--scenario", scenario, "--seed", str(seed),
                "--size", str(size), *extra]
        load0 = os.getloadavg()[0]
        cpu0 = _cpu()
        t0 = time.perf_counter()
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        wall = time.perf_counter() - t0
        cpu1 = _cpu()
        if result.exit_code != 0:
            sys.exit(result.output)
        sizes = {p.name: p.stat().st_size for p in out.iterdir()}
    return {
        "command": "changedet " + " ".join(args[:1] + ["OUT"] + args[2:]),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu1 - cpu0, 2),
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "file_bytes": sizes,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--scenario", default="compound")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("extra", nargs="*", help="more synth options, after --")
    ns = ap.parse_args()
    print(json.dumps(run(ns.size, ns.scenario, ns.seed, ns.extra), indent=2))
