"""SAHI-style slicing against plain prediction, out of fold, on a trained run.

Usage: python bench/sahi.py [OUT] [--slices 1 2] [--max-tiles N]   (OUT: demo_out/run)

Each fold's model predicts its own validation tiles (as `kelpseg threshold` does), once per
``--slices`` value through the ensemble engine (`kelpseg.infer.ensemble.Members`, CPU fp32):
1 = the whole tile, 2 = overlapping half-size slices up-sampled to the tile's size before the
model, probabilities area-averaged back and Hann-blended. Reported: the global Dice (valid pixels
of all tiles) at the run's tuned threshold (else 0.5) and at each variant's own best threshold.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import pandas as pd

    from kelpseg.data.cache import open_cache
    from kelpseg.infer.checkpoint import load_model
    from kelpseg.infer.ensemble import Members
    from kelpseg.infer.run_folder import tuned_threshold
    from kelpseg.infer.threshold import Counts, fold_checkpoints
    from kelpseg.io.tiles import missing_pixels

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path("demo_out/run"))
    ap.add_argument("--slices", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--max-tiles", type=int, default=None, help="Per fold (quick runs).")
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    if not (args.out / "splits.csv").is_file():
        ap.error(f"{args.out}: not a trained run folder (run `make demo` first, or give OUT)")
    t = getattr(tuned_threshold(args.out), "value", 0.5)
    splits = pd.read_csv(args.out / "splits.csv", dtype={"tile_id": str})
    packed = open_cache(args.out / "cache")
    cached = set(packed.tile_ids)
    counts = {k: Counts() for k in args.slices}
    seconds = dict.fromkeys(args.slices, 0.0)
    tiles = 0
    for fold, ckpt in fold_checkpoints(args.out).items():
        ids = [i for i in splits.loc[splits["fold"] == fold, "tile_id"] if i in cached]
        ids = ids[: args.max_tiles]
        model = load_model(ckpt, device="cpu")
        engines = {k: Members([model], [1.0], slices=k) for k in args.slices}
        rows = packed.row(ids)
        for start in range(0, len(ids), args.batch_size):
            sel = rows[start : start + args.batch_size]
            raw = np.asarray(packed.images[sel])
            truth = np.asarray(packed.masks[sel])
            valid = ~np.stack([missing_pixels(r) for r in raw])
            tiles += len(sel)
            for k, engine in engines.items():
                t0 = time.perf_counter()
                proba = engine(raw)[0].numpy()
                seconds[k] += time.perf_counter() - t0
                counts[k].add(proba, truth, valid)
    print(f"{tiles} out-of-fold tiles of {args.out}, CPU fp32, tuned threshold {t:.2f}")
    print("| slices | global Dice @ tuned | best Dice (threshold) | tiles/s |\n|---|---|---|---|")
    rows_out = {}
    for k, c in counts.items():
        dice = c.dice()
        at = float(dice[int(np.argmin(np.abs(c.thresholds - t)))])
        best = int(np.argmax(dice))
        rows_out[k] = {"dice": at, "best": float(dice[best]), "best_t": float(c.thresholds[best])}
        print(
            f"| {k} | {at:.4f} | {dice[best]:.4f} ({c.thresholds[best]:.2f}) | "
            f"{tiles / seconds[k]:.2f} |"
        )
    print(json.dumps(rows_out))


if __name__ == "__main__":
    main()
