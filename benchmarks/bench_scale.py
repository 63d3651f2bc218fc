"""End-to-end time, throughput and peak memory of ``changedet detect`` by scene size.

For each size N (default 2048, 4096, 8192, 16384): a synthetic N x N pair (3 bands,
uint8, tiled DEFLATE GeoTIFFs) is made by tiling the committed fixture pair, then,
each in a fresh process so that peak resident memory is its own:

- ``detect``: ``changedet -q detect BEFORE AFTER -o OUT`` end to end (all six
  outputs, default options: scenes larger than two 1024 px windows are processed in
  windows on two threads), wall time and peak RSS;
- ``I/O floor``: reading both inputs block by block and writing ``change.tif`` (a
  tiled GeoTIFF copied as a COG, as the windowed pipeline does), wall time and
  peak RSS.

Throughput is N² / 10⁶ / detect seconds (megapixels per second), and the ratio is
detect time over I/O floor time. The table also gives how many main-pass windows the
run used, how many retry windows it ran for groups cut by their edges, and how many
groups stayed cut (``summary.json`` ``parameters.windows``).

With ``--compare-up-to N`` (default 4096), sizes up to N are also run whole
(``--window-px 65536``: the whole scene in memory at once) and the two runs'
buildings are matched (IoU >= 0.5): the table gives how many each found, how many
match, and the largest relative area difference among the matches.

Usage::

    PYTHONPATH=$PWD python benchmarks/bench_scale.py [--sizes 2048 4096 8192 16384]

A size whose run fails (out of memory, say) is reported with its exit status and
the sizes after it are still tried.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "fixtures" / "compound"

# Runs in the child: stream both inputs, write change.tif, report peak RSS.
_IO_FLOOR = """
import resource, sys, time
import numpy as np
import rasterio
from rasterio.windows import Window
from changedet.outputs import copy_as_cog
t0 = time.perf_counter()
with rasterio.open(sys.argv[1]) as b, rasterio.open(sys.argv[2]) as a:
    profile = {"driver": "GTiff", "height": b.height, "width": b.width, "count": 1,
               "dtype": "uint8", "crs": b.crs, "transform": b.transform, "nodata": 255,
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
               "BIGTIFF": "IF_SAFER"}
    with rasterio.open(sys.argv[3] + ".tmp.tif", "w", **profile) as dst:
        for row in range(0, b.height, 1024):
            win = Window(0, row, b.width, min(1024, b.height - row))
            x, y = b.read(window=win), a.read(window=win)
            dst.write((x[0] > y[0]).astype(np.uint8), 1, window=win)
copy_as_cog(sys.argv[3] + ".tmp.tif", sys.argv[3])
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

_DETECT = """
import resource, sys, time
from changedet.cli import main
t0 = time.perf_counter()
try:
    main(["-q", "detect", sys.argv[1], sys.argv[2], "-o", sys.argv[3], *sys.argv[4:]],
         standalone_mode=False)
finally:
    print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def agreement(windowed: Path, whole: Path) -> tuple[int, int, int, float]:
    """(n windowed, n whole, n matched at IoU >= 0.5, largest relative area difference)."""
    from changedet.evaluate import match_objects

    def polys(folder: Path) -> list:
        import shapely

        data = json.loads((folder / "new_buildings.geojson").read_text())
        return [shapely.geometry.shape(f["geometry"]) for f in data["features"]]

    a, b = polys(windowed), polys(whole)
    pairs = match_objects(a, b)
    diff = max((abs(a[i].area - b[j].area) / b[j].area for i, j, _ in pairs), default=0.0)
    return len(a), len(b), len(pairs), diff


def tiled_pair(size: int, folder: Path) -> tuple[Path, Path]:
    """Write the fixture pair tiled to size x size (same georeference origin).

    Written one strip at a time: on Linux a child process reports the peak resident
    memory of the process it was started from as its own when that is larger, so
    this process must stay smaller than the runs it measures.
    """
    paths = []
    for name in ("before", "after"):
        with rasterio.open(FIXTURE / f"{name}.tif") as src:
            data = src.read()
            profile = src.profile
        strip = np.tile(data, (1, 1, -(-size // data.shape[2])))[:, :, :size]
        profile.update(width=size, height=size, tiled=True, blockxsize=512,
                       blockysize=512, compress="deflate", BIGTIFF="IF_SAFER")
        out = folder / f"{name}_{size}.tif"
        with rasterio.open(out, "w", **profile) as dst:
            for row0 in range(0, size, data.shape[1]):
                rows = min(data.shape[1], size - row0)
                dst.write(strip[:, :rows], window=Window(0, row0, size, rows))
        paths.append(out)
    return paths[0], paths[1]


def _windows_run(out: Path) -> str:
    """Main-pass windows, retry windows and groups still cut, from ``summary.json``:
    the retries are work beyond one pass over the scene."""
    w = json.loads((out / "summary.json").read_text())["parameters"].get("windows")
    return "whole scene" if not w else f"{w['n']} / {w['retries']} / {w['cut_groups']}"


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
    ap.add_argument("--sizes", nargs="+", type=int, default=[2048, 4096, 8192, 16384])
    ap.add_argument("--compare-up-to", type=int, default=4096)
    args = ap.parse_args(argv)
    print("| size (px) | megapixels | detect s | MP/s | peak RSS MiB | I/O floor s "
          "| I/O floor RSS MiB | detect / I/O floor | windows / retries / still cut "
          "| whole-scene run: s, RSS MiB, buildings windowed / whole / matched, "
          "max area diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            before, after = tiled_pair(size, folder)
            rc_io, io_s, io_rss = run_child(_IO_FLOOR, str(before), str(after),
                                            str(folder / "change.tif"))
            rc, det_s, det_rss = run_child(_DETECT, str(before), str(after),
                                           str(folder / "out"))
            compare = "not run"
            if size <= args.compare_up_to and rc == 0:
                rc_w, whole_s, whole_rss = run_child(_DETECT, str(before), str(after),
                                                     str(folder / "whole"), "--window-px",
                                                     "65536")
                if rc_w == 0:
                    n_a, n_b, n_m, diff = agreement(folder / "out", folder / "whole")
                    compare = (f"{whole_s:.1f} s, {whole_rss:.0f} MiB; {n_a} / {n_b} / {n_m}, "
                               f"{100 * diff:.2f} %")
                else:
                    compare = f"exit {rc_w}"
            windows = _windows_run(folder / "out") if rc == 0 else "-"
            mp = size * size / 1e6
            status = "" if rc == 0 and rc_io == 0 else f" (exit {rc}/{rc_io})"
            print(f"| {size} | {mp:.1f} | {det_s:.1f}{status} | {mp / det_s:.2f} "
                  f"| {det_rss:.0f} | {io_s:.2f} | {io_rss:.0f} | {det_s / io_s:.1f} "
                  f"| {windows} | {compare} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
