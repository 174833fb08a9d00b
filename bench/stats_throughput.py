"""`kelpseg stats` throughput on synthetic competition tiles (target >= 100 tiles/s, 2 cores).

    python bench/stats_throughput.py --tiles 500

Generates the tiles once into a cache folder (not timed), then times ``compute_stats`` over
them, which reads, validates and summarises every tile.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from kelpseg.data.stats import compute_stats
from kelpseg.io import discover
from kelpseg.synth import generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiles", type=int, default=500)
    p.add_argument("--work", type=Path, default=Path("/tmp/kelpseg-bench/stats"))
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    data = args.work / f"data{args.tiles}"
    refs = discover(data) if data.is_dir() else []
    aois = max(1, args.tiles // 4)
    while len(refs) < args.tiles:
        generate(data, aois=aois, seed=0, size=350, overwrite=True)
        refs = discover(data)
        aois = int(aois * 1.3) + 1
    refs = refs[: args.tiles]
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        res = compute_stats(refs, size=350)
        best = min(best, time.perf_counter() - t0)
    assert not res.report.errors
    print(
        f"stats: {len(refs)} tiles in {best:.2f} s = {len(refs) / best:.0f} tiles/s "
        f"(best of {args.repeat}; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()})"
    )


if __name__ == "__main__":
    main()
