"""`kelpseg map` serial vs `kelpseg map --ray local` on the same small synthetic archive.

Usage: python bench/map_ray.py [--scenes 20] [--size 96] [--workers 2]

``--scenes`` synthetic Landsat 8 scene folders (``kelpseg.synth.landsat``, ``--size`` px a side,
each with its DEM, mapped through a ``scene,dem`` CSV) are mapped by an UNTRAINED ``tiny``
model (speed does not depend on the weights) twice, each time by the command line in a fresh
process, as a user would run it:

- serial: ``kelpseg map -m CKPT ARCHIVE --dem dems.csv -o MAPS``;
- Ray: the same with ``--ray local --workers N``: a local Ray cluster started by the command
  (its session folder in a temporary RAY_TMPDIR, removed afterwards), N actors each loading
  the model once;
- serial again with ``OMP_NUM_THREADS=1``: torch on one thread, as in each Ray worker (one CPU
  each), which tells the gain of running scenes side by side from that of fewer threads.

Both wall times include the process start, imports and model loading; the Ray one also the
cluster's start and the actors' (each worker's "models loaded in" figure is printed by
``kelpseg map --ray``). Peak memory: the serial process's peak RSS, and each Ray worker's (its
actor process, from its own ``getrusage``); the Ray driver's is printed too. The two runs'
``areas.csv`` are compared (the threads differ: a Ray worker of 1 CPU runs torch on 1 thread,
so probabilities may differ in their last float bits; the areas should not).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _archive(root: Path, n: int, size: int) -> tuple[Path, Path]:
    from kelpseg.synth.landsat import write_landsat_scene

    arch, rows = root / "archive", []
    for i in range(n):
        sc = write_landsat_scene(root / "made", size=size, seed=i, area_seed=100 + i)
        shutil.move(sc.folder, arch / sc.folder.name)
        rows.append(f"{sc.meta.scene_id},{sc.dem}\n")
    dems = root / "dems.csv"
    dems.write_text("scene,dem\n" + "".join(rows))
    return arch, dems


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    return secs, out.stdout + out.stderr


PEAK = re.compile(r"^peak RSS (\d+) KiB$", re.M)
KELPSEG = (
    "import atexit, resource\n"
    "atexit.register(lambda: print(f'peak RSS {resource.getrusage(0).ru_maxrss} KiB'))\n"
    "from kelpseg.cli import app\n"
    "app()"
)
"""``kelpseg`` that prints its own peak RSS on exit (the Ray workers are other processes)."""


def _peak_mib(log: str) -> float:
    found = PEAK.findall(log)
    return int(found[-1]) / 1024 if found else float("nan")


def _load() -> str:
    return os.getloadavg().__repr__()


def main() -> None:
    from map_memory import untrained_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    src = Path(__file__).resolve().parents[1] / "src"
    paths = [str(src), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "RAY_USAGE_STATS_ENABLED": "0",
        # the local cluster's token lives in this environment, not in ~/.ray
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    kelpseg = [sys.executable, "-c", KELPSEG, "map"]
    with tempfile.TemporaryDirectory(prefix="map_ray_") as tmp:
        root = Path(tmp)
        ray_tmp = Path(tempfile.mkdtemp(prefix="kray", dir="/tmp"))  # short: Ray's sockets
        env["RAY_TMPDIR"] = str(ray_tmp)
        try:
            ckpt = untrained_checkpoint(root / "tiny.ckpt", "tiny", tile_size=64)
            t0 = time.perf_counter()
            arch, dems = _archive(root, args.scenes, args.size)
            made = time.perf_counter() - t0
            common = ["-m", str(ckpt), str(arch), "--dem", str(dems)]
            print(f"{args.scenes} synthetic scenes of {args.size}x{args.size} px (made in "
                  f"{made:.1f} s), untrained tiny model, window 64; {os.cpu_count()} CPUs; "
                  f"load before {_load()}")  # fmt: skip
            serial_s, serial_log = _run([*kelpseg, *common, "-o", str(root / "serial")], env)
            load_mid = _load()
            ray_s, ray_log = _run(
                [*kelpseg, *common, "-o", str(root / "ray"), "--ray", "local",
                 "--workers", str(args.workers)],
                env,
            )  # fmt: skip
            one_s, one_log = _run(
                [*kelpseg, *common, "-o", str(root / "serial1")], {**env, "OMP_NUM_THREADS": "1"}
            )
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        areas = {k: (root / k / "areas.csv").read_text() for k in ("serial", "ray", "serial1")}
        workers = re.findall(
            r"Ray worker pid (\d+) on \S+ \((\w+)\): (\d+) scenes, models loaded in ([\d.]+) s, "
            r"peak RSS (\d+) MiB",
            ray_log,
        )
        ok = [line for line in serial_log.splitlines() if " ok, " in line]
        print(f"serial: {ok[-1] if ok else '?'}")
        print(f"load after serial {load_mid}, after all {_load()}")
        print("| run | wall s | scenes/min | peak RSS |\n|---|---|---|---|")
        rows = [
            (f"serial (1 process, torch {os.cpu_count()} threads)", serial_s, serial_log),
            (f"Ray, {args.workers} workers (`--ray local`), driver", ray_s, ray_log),
            ("serial, torch 1 thread (`OMP_NUM_THREADS=1`)", one_s, one_log),
        ]
        for name, secs, log in rows:
            print(f"| {name} | {secs:.1f} | {args.scenes / secs * 60:.1f} | "
                  f"{_peak_mib(log):.0f} MiB |")  # fmt: skip
        for pid, dev, n, start, rss in workers:
            print(f"| Ray worker pid {pid} ({dev}): {n} scenes | models loaded in {start} s | | "
                  f"{rss} MiB |")  # fmt: skip
        print(f"Ray / serial wall time: {ray_s / serial_s:.2f} (Ray / serial on 1 thread: "
              f"{ray_s / one_s:.2f}); areas.csv of Ray = serial: {areas['ray'] == areas['serial']},"
              f" = serial on 1 thread: {areas['ray'] == areas['serial1']}")  # fmt: skip


if __name__ == "__main__":
    main()
