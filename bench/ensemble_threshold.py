"""What the out-of-fold thresholds cost on held-out test tiles (truth used for reporting only).

Usage: python bench/ensemble_threshold.py [OUT] [--truth DIR] [--data DIR]
       (defaults: demo_out/run, demo_out/data_truth, demo_out/data of `make demo`)

The best fold's model and the ensemble of all folds of OUT (weights as OUT/metrics.json says)
predict the test tiles' probabilities once; the global test Dice is then counted for every
candidate threshold. Reported: the Dice at 0.5, at the tuned thresholds of OUT/threshold.json
(single; ensemble entry) and at the best test threshold, an oracle no honest tuning can reach;
the gap between the tuned and the oracle Dice is what the tuning left on the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from kelpseg.data.dem_shift import correct_dem
from kelpseg.infer.checkpoint import load_model
from kelpseg.infer.threshold import CANDIDATES, Counts
from kelpseg.io import discover, read_mask, read_tile
from kelpseg.io.tiles import missing_pixels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path("demo_out/run"))
    ap.add_argument("--data", type=Path, default=None, help="Default: OUT/../data.")
    ap.add_argument("--truth", type=Path, default=None, help="Default: OUT/../data_truth.")
    ap.add_argument("--max-tiles", type=int, default=None)
    args = ap.parse_args()
    data = args.data or args.out.parent / "data"
    truth = args.truth or args.out.parent / "data_truth"
    for need in (args.out / "metrics.json", args.out / "threshold.json", data, truth):
        if not need.exists():
            ap.error(f"{need}: missing (run `make demo` first, or give OUT/--data/--truth)")
    metrics = json.loads((args.out / "metrics.json").read_text())
    tuned = json.loads((args.out / "threshold.json").read_text())
    members = [load_model(p, "cpu") for p in metrics["ensemble"]["members"]]
    weights = torch.tensor(metrics["ensemble"]["weights"], dtype=torch.float32)
    best = metrics["ensemble"]["members"].index(metrics["predicted_with"])
    masks = {p.name.removesuffix("_kelp.tif"): p for p in truth.rglob("*_kelp.tif")}
    tiles = [r for r in discover(data) if r.split == "test" and r.tile_id in masks]
    tiles = tiles[: args.max_tiles]
    counts = {"single": Counts(), "ensemble": Counts()}
    for ref in tiles:
        raw = read_tile(ref.image)
        y = read_mask(masks[ref.tile_id], allow_nodata=True) == 1
        fixed = correct_dem(raw) if members[0].cfg.data.correct_dem_shift else raw
        with torch.inference_mode():
            x = torch.from_numpy(fixed[None])
            probs = torch.stack([m.predict_proba(x)[0].float() for m in members])
        ens = (weights[:, None, None] * probs).sum(0).numpy()
        valid = ~missing_pixels(raw)
        # a missing pixel is predicted 0 (255 in the mask): not kelp, but its truth still counts
        for name, p in (("single", probs[best].numpy()), ("ensemble", ens)):
            counts[name].add(np.where(valid, p, -1.0).astype(np.float32), y, np.ones_like(y))
    rows = []
    for name, c in counts.items():
        dice = c.dice()
        t = tuned["threshold"] if name == "single" else tuned.get("ensemble", tuned)["threshold"]
        j = int(np.argmin(np.abs(CANDIDATES - t)))
        half = int(np.argmin(np.abs(CANDIDATES - 0.5)))
        k = int(np.argmax(dice))
        rows.append((name, dice[half], t, dice[j], CANDIDATES[k], dice[k]))
    print(f"{len(tiles)} test tiles, {len(members)} members, weights {weights.tolist()}")
    print("| model | Dice @0.5 | tuned t (OOF) | Dice @tuned | oracle t (test) | Dice @oracle |")
    print("|---|---|---|---|---|---|")
    for name, d5, t, dt, tk, dk in rows:
        print(f"| {name} | {d5:.4f} | {t:.2f} | {dt:.4f} | {tk:.2f} | {dk:.4f} |")


if __name__ == "__main__":
    main()
