"""The per-pixel XGBoost baseline against the network on the same split of the demo dataset.

    python bench/xgb.py                          # demo data (24 AOIs, seed 0), demo config
    python bench/xgb.py --network demo_out/run   # also read that network run's metrics.json
    python bench/xgb.py --train-network          # train the network here too (minutes on CPU)
    python bench/xgb.py --aois 6 --size 128 --estimators 30   # a smoke run in seconds

The data is ``kelpseg synth OUT --aois 24 --seed 0`` (the demo's), the config the demo's
(fold 0, 17 indices, land masking), so stats, groups and splits are those of ``kelpseg demo``.
``kelpseg xgb`` trains on fold 0's training tiles, validates on fold 0 and predicts the test
tiles; the table prints validation and test Dice, training time and the most important
features (``OUT/xgb/importance.png`` is the picture). With ``--train-network`` the network is
trained by ``kelpseg run`` into the same work folder (same tables, same split) for the row
beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from kelpseg.baselines.xgb import run_xgb
from kelpseg.config import load_config
from kelpseg.synth import generate
from kelpseg.synth.layout import default_truth_dir


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_xgb"))
    p.add_argument("--aois", type=int, default=24)
    p.add_argument("--size", type=int, default=350)
    p.add_argument("--estimators", type=int, default=None, help="xgb.n_estimators override.")
    p.add_argument("--pixels", type=int, default=None, help="xgb.pixels_per_class override.")
    p.add_argument("--network", type=Path, default=None, help="A network run folder to compare.")
    p.add_argument("--train-network", action="store_true", help="Train the network here too.")
    args = p.parse_args(argv)

    data = args.work / f"data_{args.aois}_{args.size}"
    truth = default_truth_dir(data) / "test_kelp"
    if not truth.is_dir():  # generated once, reused by later runs
        truth = generate(data, aois=args.aois, seed=0, size=args.size, overwrite=True).test_masks
    sets = [f"data.tile_size={args.size}"]
    if args.estimators:
        sets.append(f"xgb.n_estimators={args.estimators}")
    if args.pixels:
        sets.append(f"xgb.pixels_per_class={args.pixels}")
    cfg = load_config("demo", sets)
    out = args.work / f"run_{args.aois}_{args.size}"
    t0 = time.perf_counter()
    m = run_xgb(data, cfg, out, truth)
    wall = time.perf_counter() - t0
    rows = [
        {
            "model": "xgboost (per pixel)",
            "val_dice_f0": m["folds"]["0"]["val_dice"],
            "oof_dice_tuned": m.get("oof_dice", {}).get("tuned"),
            "threshold": m["threshold"],
            "test_dice": (m.get("test") or {}).get("dice"),
            "train_s": m["train_seconds"],
            "train_pixels": m["folds"]["0"]["train_pixels"],
        }
    ]
    net_dir = args.network
    if args.train_network:
        from kelpseg.pipeline import run_pipeline

        t1 = time.perf_counter()
        run_pipeline(data, cfg, out, truth)
        print(f"network run: {time.perf_counter() - t1:.0f} s")
        net_dir = out
    if net_dir is not None:
        n = json.loads((net_dir / "metrics.json").read_text())
        rows.append(
            {
                "model": f"network ({cfg.model.arch} {cfg.model.encoder})",
                "val_dice_f0": n["folds"]["0"]["val_dice"],
                "oof_dice_tuned": None,
                "threshold": n["threshold"],
                "test_dice": (n.get("test") or {}).get("dice"),
                "train_s": n["seconds"]["train"],
                "train_pixels": None,
            }
        )
    print(f"\nkelpseg xgb wall time (stats, groups, split, cache, train, predict): {wall:.1f} s")
    table = pd.DataFrame(rows).astype({"train_pixels": "Int64"})
    print(table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}"))
    imp = pd.read_csv(out / "xgb" / "importance.csv")
    print("\ntop features by gain share:")
    print(imp.head(10)[["feature", "share"]].to_string(index=False, float_format="{:.3f}".format))
    print(f"picture: {out / 'xgb' / 'importance.png'}")


if __name__ == "__main__":
    main()
