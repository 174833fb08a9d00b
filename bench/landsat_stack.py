"""Synthetic Landsat scenes: time to write one, and `stack` time and peak memory at two sizes.

For each size a synthetic Collection 2 Level-2 scene (Landsat 8, with its EPSG:4326 DEM) is
written, then stacked in a fresh process twice: window by window (``--block``, the default of
``kelpseg stack``) and in one window covering the whole scene (the whole-array approach).
Peak memory is the stacking process's peak resident set size (``VmHWM``, which, unlike
``ru_maxrss``, does not inherit the parent's peak across ``exec``).

    python bench/landsat_stack.py [--sizes 1024 2048] [--block 1024]

With ``--checkpoint CKPT`` (a model trained on `kelpseg synth` tiles) it also predicts each
stacked scene with ``kelpseg.infer.predict`` and prints the kelp Dice against the scene's
truth (fill pixels left out), with true and predicted kelp area.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rasterio

from kelpseg.synth.landsat import SyntheticScene, write_landsat_scene

_CHILD = """
import re, sys, time
from pathlib import Path
from kelpseg.io.landsat import stack_scene
t0 = time.perf_counter()
stack_scene(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), block=int(sys.argv[4]))
hwm = re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())
print(time.perf_counter() - t0, int(hwm.group(1)) / 1024)
"""


def _stack(folder: Path, out: Path, dem: Path, block: int) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of stacking in a fresh process."""
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder), str(out), str(dem), str(block)],
        check=True,
        capture_output=True,
        text=True,
    )
    secs, mib = res.stdout.split()
    return float(secs), float(mib)


def _dice(ckpt: Path, sc: SyntheticScene, stacked: Path, out: Path) -> str:
    from kelpseg.infer.predict import load_model, predict_tiles

    predict_tiles(load_model(ckpt), [(sc.meta.scene_id, stacked)], out)
    with rasterio.open(out / f"{sc.meta.scene_id}_kelp.tif") as p, rasterio.open(sc.truth) as t:
        pred, truth = p.read(1), t.read(1)
    seen = truth != 255
    pk, tk = (pred == 1) & seen, (truth == 1) & seen
    dice = 2 * (pk & tk).sum() / max(int(pk.sum() + tk.sum()), 1)
    return (
        f"Dice {dice:.3f}, kelp true {tk.sum() * 0.09:.1f} ha, predicted {pk.sum() * 0.09:.1f} ha"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--checkpoint", type=Path, default=None, help="Also score this model.")
    args = ap.parse_args()
    print(f"{'size':>6} {'Mpx':>6} {'write s':>8} {'stack s':>8} {'Mpx/s':>6} "
          f"{'peak MiB':>9} {'whole-array s':>14} {'peak MiB':>9}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            root = Path(tmp) / str(size)
            t0 = time.perf_counter()
            sc = write_landsat_scene(root, size=size, seed=0)
            write = time.perf_counter() - t0
            mpx = size * size / 1e6
            secs, mib = _stack(sc.folder, root / "stacked.tif", sc.dem, args.block)
            whole_s, whole_mib = _stack(sc.folder, root / "whole.tif", sc.dem, size)
            print(
                f"{size:>6} {mpx:>6.2f} {write:>8.2f} {secs:>8.2f} {mpx / secs:>6.2f} "
                f"{mib:>9.0f} {whole_s:>14.2f} {whole_mib:>9.0f}",
                flush=True,
            )
            if args.checkpoint is not None:
                print(f"       {_dice(args.checkpoint, sc, root / 'stacked.tif', root / 'pred')}")
    print(f"block {args.block} px; peak = VmHWM (peak resident set) of the stacking process")


if __name__ == "__main__":
    main()
