"""End-to-end time, throughput and peak memory of ``changedet detect`` by scene size.

For each size N (default 2048, 4096, 8192): a synthetic N x N pair (3 bands, uint8,
tiled DEFLATE GeoTIFFs) is made by tiling the committed fixture pair, then, each in a
fresh process so that peak resident memory is its own:

- ``detect``: ``changedet -q detect BEFORE AFTER -o OUT`` end to end (all six
  outputs), wall time and peak RSS;
- ``I/O floor``: reading both inputs in full and writing ``change.tif`` (the COG
  writer of the pipeline) for the same grid, wall time and peak RSS.

Throughput is N² / 10⁶ / detect seconds (megapixels per second), and the ratio is
detect time over I/O floor time.

Usage::

    PYTHONPATH=$PWD python benchmarks/bench_scale.py [--sizes 2048 4096 8192]

A size whose run fails (out of memory, say) is reported with its exit status and
the sizes after it are still tried. Today ``detect`` holds both scenes and about
thirty float32 maps in memory, so peak RSS grows with the scene (issue #7 is to
window it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "fixtures" / "compound"

# Runs in the child: read both inputs, write change.tif, report peak RSS.
_IO_FLOOR = """
import resource, sys, time
import numpy as np
from changedet.outputs import write_cog
from changedet.raster import read_scene
t0 = time.perf_counter()
b = read_scene(sys.argv[1]); a = read_scene(sys.argv[2])
change = np.where(b.valid & a.valid, (b.image[0] > a.image[0]).astype(np.uint8), 255)
write_cog(sys.argv[3], change.astype(np.uint8), b.grid, nodata=255)
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

_DETECT = """
import resource, sys, time
from changedet.cli import main
t0 = time.perf_counter()
try:
    main(["-q", "detect", sys.argv[1], sys.argv[2], "-o", sys.argv[3]],
         standalone_mode=False)
finally:
    print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def tiled_pair(size: int, folder: Path) -> tuple[Path, Path]:
    """Write the fixture pair tiled to size x size (same georeference origin)."""
    paths = []
    for name in ("before", "after"):
        with rasterio.open(FIXTURE / f"{name}.tif") as src:
            data = src.read()
            profile = src.profile
        reps = (1, -(-size // data.shape[1]), -(-size // data.shape[2]))
        big = np.tile(data, reps)[:, :size, :size]
        profile.update(width=size, height=size, tiled=True, blockxsize=512,
                       blockysize=512, compress="deflate", BIGTIFF="IF_SAFER")
        out = folder / f"{name}_{size}.tif"
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(big)
        paths.append(out)
    return paths[0], paths[1]


def run_child(code: str, *args: str) -> tuple[int, float, float]:
    """(exit status, seconds, peak RSS MiB) of ``code`` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, cwd=ROOT)
    last = done.stdout.strip().splitlines()[-1:] or ["nan nan"]
    try:
        seconds, rss_kib = (float(x) for x in last[0].split())
    except ValueError:
        seconds, rss_kib = float("nan"), float("nan")
    if done.returncode:
        print(done.stderr.strip().splitlines()[-1:] or "", file=sys.stderr)
    return done.returncode, seconds, rss_kib / 1024.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[2048, 4096, 8192])
    args = ap.parse_args(argv)
    print("| size (px) | megapixels | detect s | MP/s | peak RSS MiB | I/O floor s "
          "| I/O floor RSS MiB | detect / I/O floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            before, after = tiled_pair(size, folder)
            rc_io, io_s, io_rss = run_child(_IO_FLOOR, str(before), str(after),
                                            str(folder / "change.tif"))
            rc, det_s, det_rss = run_child(_DETECT, str(before), str(after),
                                           str(folder / "out"))
            mp = size * size / 1e6
            status = "" if rc == 0 and rc_io == 0 else f" (exit {rc}/{rc_io})"
            print(f"| {size} | {mp:.1f} | {det_s:.1f}{status} | {mp / det_s:.2f} "
                  f"| {det_rss:.0f} | {io_s:.2f} | {io_rss:.0f} | {det_s / io_s:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
