"""Time ``changedet demo`` end to end (the README's first command) and its stages.

Run: ``PYTHONPATH=. python benchmarks/bench_demo.py``. Prints wall time of the whole
command in a fresh process and the per-stage timings from summary.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", "from changedet.cli import main; main()",
                               "-q", "demo", "-o", str(out)], capture_output=True, text=True)
        wall = time.perf_counter() - start
        print(done.stdout, end="")
        if done.returncode:
            print(done.stderr, file=sys.stderr)
            raise SystemExit(done.returncode)
        timings = json.loads((out / "summary.json").read_text())["timings"]
    print(f"wall time of `changedet demo`: {wall:.1f} s")
    print("stages (s):", ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
