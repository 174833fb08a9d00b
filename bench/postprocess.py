"""Each post-processing step alone against none, on out-of-fold predictions of a run folder.

Usage: python bench/postprocess.py [OUT] [--threshold T]   (OUT: demo_out/run of `make demo`)

OUT is a `kelpseg train` / `run` output (fold*/result.json, splits.csv, cache/). Each fold's model
predicts its own validation tiles (kelpseg.infer.threshold.iter_oof, CPU fp32); the global Dice
(valid pixels of all tiles) is reported at T (default: OUT/threshold.json, else 0.5).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from kelpseg.config import PostprocessConfig
from kelpseg.infer.postprocess import apply
from kelpseg.infer.run_folder import tuned_threshold
from kelpseg.infer.threshold import iter_oof

STEPS: dict[str, PostprocessConfig] = {
    "none": PostprocessConfig(),
    "smooth_sigma=1": PostprocessConfig(smooth_sigma=1.0),
    "smooth_sigma=2": PostprocessConfig(smooth_sigma=2.0),
    "open_radius=1": PostprocessConfig(open_radius=1),
    "close_radius=1": PostprocessConfig(close_radius=1),
    "min_object_px=5": PostprocessConfig(min_object_px=5),
    "min_object_px=20": PostprocessConfig(min_object_px=20),
    "fill_holes_px=5": PostprocessConfig(fill_holes_px=5),
    "fill_holes_px=20": PostprocessConfig(fill_holes_px=20),
    "land_mask": PostprocessConfig(land_mask=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path("demo_out/run"))
    ap.add_argument("--threshold", type=float, default=None)
    args = ap.parse_args()
    if not (args.out / "splits.csv").is_file():
        ap.error(f"{args.out}: not a trained run folder (run `make demo` first, or give OUT)")
    t = args.threshold or getattr(tuned_threshold(args.out), "value", 0.5)
    counts = {name: np.zeros(3, np.int64) for name in STEPS}  # tp, pred, truth
    tiles, start = 0, time.perf_counter()
    for b in iter_oof(args.out):
        for proba, raw, truth in zip(b.proba, b.raw, b.truth, strict=True):
            tiles += 1
            kelp = truth == 1
            for name, cfg in STEPS.items():
                mask = apply(proba, raw, cfg, t)
                pred = mask == 1
                counts[name] += [
                    (pred & kelp & (mask != 255)).sum(),
                    pred.sum(),
                    (kelp & (mask != 255)).sum(),
                ]
    rows = {}
    for name, (tp, pred, truth) in counts.items():
        rows[name] = 2 * tp / (pred + truth) if pred + truth else 1.0
    base = rows["none"]
    print(f"{tiles} out-of-fold tiles, threshold {t:.2f}, {time.perf_counter() - start:.1f} s")
    print("| step | global Dice | vs none |\n|---|---|---|")
    for name, d in rows.items():
        print(f"| {name} | {d:.4f} | {d - base:+.4f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
