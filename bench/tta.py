"""Test-time augmentation against none, on out-of-fold predictions of a run folder.

Usage: python bench/tta.py [OUT] [--modes none flips d4] [--max-tiles N]
       (OUT: demo_out/run of `make demo`)

OUT is a `kelpseg train` / `run` output (fold*/result.json, splits.csv, cache/). For each TTA
mode every trained fold's model predicts its own validation tiles under that mode
(kelpseg.infer.threshold.iter_oof, CPU fp32), and the global kelp Dice over all valid pixels
of all folds is reported at 0.5, at the run's tuned threshold (OUT/threshold.json) and at the
mode's own best threshold (tuned on the same out-of-fold pixels, so optimistic alike for every
mode), with the seconds each mode took.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from kelpseg.infer.run_folder import tuned_threshold
from kelpseg.infer.threshold import CANDIDATES, Counts, iter_oof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path("demo_out/run"))
    ap.add_argument("--modes", nargs="+", default=["none", "flips", "d4"])
    ap.add_argument("--max-tiles", type=int, default=None, help="Per fold (a smoke run).")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    if not (args.out / "splits.csv").is_file():
        ap.error(f"{args.out}: not a trained run folder (run `make demo` first, or give OUT)")
    tuned = getattr(tuned_threshold(args.out), "value", 0.5)
    j_tuned = int(np.argmin(np.abs(CANDIDATES - tuned)))
    j_half = int(np.argmin(np.abs(CANDIDATES - 0.5)))
    rows = {}
    for mode in args.modes:
        counts, seen, start = Counts(), {}, time.perf_counter()
        oof = iter_oof(args.out, batch_size=args.batch_size, tta=mode, limit=args.max_tiles)
        for b in oof:
            seen[b.fold] = seen.get(b.fold, 0) + len(b.tile_ids)
            counts.add(b.proba, b.truth, b.valid)
        dice = counts.dice()
        best = int(np.argmax(dice))
        rows[mode] = {
            "tiles": sum(seen.values()),
            "dice_at_0.5": float(dice[j_half]),
            "dice_at_tuned": float(dice[j_tuned]),
            "best_threshold": float(CANDIDATES[best]),
            "dice_at_best": float(dice[best]),
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps({"mode": mode, **rows[mode]}), flush=True)
    base = rows.get("none")
    print(f"\nrun {args.out}, tuned threshold {tuned:.2f} (OUT/threshold.json or 0.5)")
    print("| TTA | tiles | Dice @0.5 | Dice @tuned | best t | Dice @best | vs none @tuned | s |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, r in rows.items():
        delta = f"{r['dice_at_tuned'] - base['dice_at_tuned']:+.4f}" if base else "—"
        print(
            f"| {mode} | {r['tiles']} | {r['dice_at_0.5']:.4f} | {r['dice_at_tuned']:.4f} | "
            f"{r['best_threshold']:.2f} | {r['dice_at_best']:.4f} | {delta} | {r['seconds']} |"
        )


if __name__ == "__main__":
    main()
