"""Run every benchmark of ``bench/`` one after another (``make bench``).

Each benchmark is its own script with its own arguments (see its ``--help``); this runner
calls them with their defaults, or with smaller sizes under ``--quick``, prints their output
and ends with one line per benchmark: seconds and exit status. Record figures you keep in
``bench/RESULTS.md`` with the command that produced them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHES: dict[str, tuple[list[str], list[str]]] = {
    # name: (default arguments, --quick arguments)
    "stats_throughput.py": ([], ["--tiles", "100", "--repeat", "1"]),
    "quality.py": ([], ["--aois", "12", "--size", "128"]),
    "groups.py": ([], ["--aois", "12", "--size", "128", "--tiles", "500"]),
    "band_order.py": ([], ["--aois", "8", "--size", "128"]),
    "ingest.py": ([], ["--aois", "8", "--repeat", "1"]),
    "checkpoint_bytes.py": ([], []),
    "train_throughput.py": ([], ["--tiles", "40", "--batches", "3", "--repeat", "1"]),
    "train_step.py": ([], ["--config", "tiny", "--steps", "4"]),
    "onnx_speed.py": ([], ["--batches", "1", "--repeat", "1"]),
    "postprocess.py": ([], []),  # needs a trained run: demo_out/run of `make demo`
    "predict_speed.py": ([], ["--tiles", "3", "--members", "1", "2", "--config", "tiny"]),
    "cpu_batch.py": ([], ["--config", "tiny", "--batches", "1", "2"]),
    "area.py": ([], ["--size", "1000", "--beds", "100", "--acquisitions", "2"]),
    "landsat_stack.py": ([], ["--sizes", "128", "256", "--block", "64"]),
    "xgb.py": ([], ["--aois", "6", "--size", "128", "--estimators", "30", "--pixels", "20000"]),
    # needs kelpseg.geo (issue 9, areas) for `kelpseg map`
    "map_memory.py": ([], ["--sizes", "400", "--whole-max", "400"]),
    "seams.py": ([], ["--grid", "2"]),
    "map_speed.py": ([], ["--size", "400", "--configs", "tiny", "--rounds", "1"]),
    "coast_scene.py": ([], ["--size", "800", "--config", "tiny", "--run", "torch fp32"]),
    "reach.py": ([], ["--sizes", "512", "--seeds", "0"]),
    "sahi.py": ([], ["--max-tiles", "4"]),  # needs a trained run: demo_out/run of `make demo`
    "tta.py": ([], ["--max-tiles", "2"]),  # needs a trained run: demo_out/run of `make demo`
    "ensemble_threshold.py": ([], ["--max-tiles", "3"]),  # needs demo_out of `make demo`
    "scene_trust.py": ([], ["--size", "256"]),  # needs demo_out of `make demo`
    "sensor_shift.py": ([], ["--areas", "1", "--size", "128"]),  # needs demo_out of `make demo`
    "timeseries_scale.py": (
        [],
        ["--scenes", "200", "--grid-scenes", "10", "--aoi-scenes", "4", "--size", "256"],
    ),
    "map_ray.py": ([], ["--scenes", "4"]),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="Small sizes: a smoke run in minutes.")
    p.add_argument("--only", nargs="*", default=None, help="Benchmark file names to run.")
    args = p.parse_args(argv)
    chosen = args.only or list(BENCHES)
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; have {', '.join(BENCHES)}")
    summary = []
    for name in chosen:
        default, quick = BENCHES[name]
        cmd = [sys.executable, str(HERE / name), *(quick if args.quick else default)]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        summary.append((name, time.perf_counter() - t0, rc))
    print("\n=== summary")
    for name, secs, rc in summary:
        print(f"{name:24s} {secs:8.1f} s  {'ok' if rc == 0 else f'FAILED (exit {rc})'}")
    return int(any(rc for _, _, rc in summary))


if __name__ == "__main__":
    sys.exit(main())
