"""Which windows `kelpseg map` skips on synthetic Landsat scenes, and that kelp is unchanged.

Usage: python bench/reach.py [--sizes 1024 2048] [--seeds 0 1 2] [--checkpoint CKPT]
    [--max-offshore-m 5000] [--window 350]

Each scene is a synthetic Collection 2 Level-2 folder (`kelpseg.synth.landsat`) stacked with its
DEM (`kelpseg stack`'s code). For 350 px windows at a quarter-window overlap the table gives
the windows skipped as fill, land and offshore (`kelpseg.geo.reach`), the time the skip rule's
scene pass took, and how many windows that hold a truth kelp pixel were skipped (must be 0).
With ``--checkpoint`` (e.g. a fold of `kelpseg demo`) each scene is also predicted with and
without skipping (`predict_sliced`, batch 1): the kelp masks' Dice against the truth (clear
water, as `kelpseg map` counts it) and whether the probabilities of every pixel that only
predicted windows cover are identical bit for bit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import rasterio

    from kelpseg.geo.coverage import coverage_codes
    from kelpseg.geo.reach import DEFAULT_MAX_OFFSHORE_M, scene_reach
    from kelpseg.infer.postprocess import scene_mask
    from kelpseg.infer.sliced import RasterSource, WindowCounts, predict_sliced, window_offsets
    from kelpseg.io.landsat import stack_scene
    from kelpseg.metrics import dice
    from kelpseg.synth.landsat import write_landsat_scene

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--max-offshore-m", type=float, default=DEFAULT_MAX_OFFSHORE_M)
    ap.add_argument("--window", type=int, default=350)
    args = ap.parse_args()
    win, ov = args.window, args.window // 4
    engine = None
    if args.checkpoint:
        from kelpseg.infer.checkpoint import load_model
        from kelpseg.infer.ensemble import Members

        model = load_model(args.checkpoint, "cpu")
        engine, cut = Members([model], [1.0]), float(model.cfg.predict.threshold)
    print(f"load average {os.getloadavg()[0]:.1f}; windows {win} px, overlap {ov}, "
          f"max offshore {args.max_offshore_m:g} m")  # fmt: skip
    head = "| scene | land / fill of valid px | windows | fill | land | offshore | predicted | rule s | kelp windows skipped |"
    if engine:
        head += " Dice skip / all | same p where kept |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    with tempfile.TemporaryDirectory(prefix="reach_") as tmp:
        for size in args.sizes:
            for seed in args.seeds:
                root = Path(tmp) / f"{size}_{seed}"
                s = write_landsat_scene(root, size=size, seed=seed)
                stacked = root / "stack.tif"
                stack_scene(s.folder, stacked, s.dem)
                with rasterio.open(s.truth) as src:
                    truth = src.read(1)
                with rasterio.open(stacked) as src:
                    source = RasterSource(src)
                    t0 = time.perf_counter()
                    reach = scene_reach(
                        source,
                        max_offshore_m=args.max_offshore_m,
                        crs=src.crs,
                        transform=src.transform,
                    )
                    rule_s = time.perf_counter() - t0
                    rows = window_offsets(src.height, win, win - ov)
                    cols = window_offsets(src.width, win, win - ov)
                    counts, lost = WindowCounts(), 0
                    kept = np.zeros(truth.shape, bool)
                    skipped = np.zeros(truth.shape, bool)
                    for r in rows:
                        for c in cols:
                            x = source.read(r, c, win, win)
                            why = "fill" if (x[:5] == -32768).any(0).all() else None
                            why = why or reach.why_skip(x, r, c)
                            counts.add(why)
                            lost += bool(why) and bool((truth[r : r + win, c : c + win] == 1).any())
                            (skipped if why else kept)[r : r + win, c : c + win] = True
                    raw = src.read()
                    cov = coverage_codes(raw)
                    valid = cov != 255
                    land = (cov == 0)[valid].mean()
                    fill = 1 - valid.mean()
                    k = counts.skipped
                    line = (
                        f"| {size}² seed {seed} | {land:.0%} / {fill:.0%} | {counts.total} "
                        f"| {k.get('fill', 0)} | {k.get('land', 0)} | {k.get('offshore', 0)} "
                        f"| {counts.predicted} ({counts.predicted / counts.total:.0%}) "
                        f"| {rule_s:.1f} | {lost} |"
                    )
                    if engine is not None:
                        probs = {}
                        for name, rule in (("skip", reach.why_skip), ("all", None)):
                            bands = predict_sliced(
                                engine, source, window=win, overlap=ov, batch_size=1,
                                progress=False, skip=rule, skip_empty=True,
                            )  # fmt: skip
                            probs[name] = np.concatenate([b.mean for b in bands])
                        judged = (truth != 255) & (cov == 1)
                        d = {
                            n: dice(scene_mask(p, cov, cut)[judged] == 1, truth[judged] == 1)
                            for n, p in probs.items()
                        }
                        only = kept & ~skipped
                        same = np.array_equal(probs["skip"][only], probs["all"][only])
                        line += f" {d['skip']:.4f} / {d['all']:.4f} | {same} |"
                print(line, flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    sys.exit(main())
