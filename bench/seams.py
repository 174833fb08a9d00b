"""Seams: windowed (Hann-blended) prediction of a mosaic of tiles against per-tile prediction.

Usage: python bench/seams.py [--checkpoint CKPT] [--grid 4] [--overlap 88]

A raster is built by mosaicking ``grid`` x ``grid`` synthetic 350 px tiles (the competition's
size). Per-tile prediction predicts each tile alone (what `kelpseg predict` does on tiles);
windowed prediction runs `kelpseg.infer.sliced.predict_sliced` over the mosaic with 350 px
windows. Reported: the agreement of the two away from tile borders (> 48 px), and the "step"
of the probabilities, the mean |p(x) - p(x-1)| across a column of pixels, at tile borders, at
window borders and elsewhere (a seam is a step at a border far above the step elsewhere).
The model is CKPT (e.g. a fold of `make demo`), else an untrained tiny network (say which).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def column_steps(p: np.ndarray) -> np.ndarray:
    """Mean |p[:, x] - p[:, x - 1]| for every x >= 1 (index x - 1)."""
    return np.abs(np.diff(p, axis=1)).mean(axis=0)


def main() -> None:
    from map_memory import synthetic_tiles, untrained_checkpoint

    from kelpseg.infer.checkpoint import load_model
    from kelpseg.infer.ensemble import Members
    from kelpseg.infer.sliced import ArraySource, predict_sliced, window_offsets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--overlap", type=int, default=88)
    ap.add_argument("--threshold", type=float, default=0.5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="seams_") as tmp:
        ckpt = args.checkpoint or untrained_checkpoint(Path(tmp) / "m.ckpt")
        tiles = synthetic_tiles(Path(tmp) / "synth", n=args.grid * args.grid)
        model = load_model(ckpt, device="cpu")
    engine = Members([model], [1.0])
    t, g = tiles[0].shape[1], args.grid
    rows = [np.concatenate(tiles[i * g : (i + 1) * g], axis=2) for i in range(g)]
    raw = np.concatenate(rows, axis=1)
    per_tile = np.zeros(raw.shape[1:], np.float32)
    for i in range(g):
        for j in range(g):
            tile = raw[None, :, i * t : (i + 1) * t, j * t : (j + 1) * t]
            per_tile[i * t : (i + 1) * t, j * t : (j + 1) * t] = engine(tile)[0][0].numpy()
    bands = predict_sliced(engine, ArraySource(raw), window=t, overlap=args.overlap)
    win = np.concatenate([b.mean for b in bands])
    missing = (raw[:5] == -32768).any(0)
    far = np.ones(raw.shape[1:], bool)
    for k in range(g + 1):
        far[max(0, k * t - 48) : k * t + 48] = False
        far[:, max(0, k * t - 48) : k * t + 48] = False
    far &= ~missing
    a, b = per_tile[far] >= args.threshold, win[far] >= args.threshold
    dice = 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)
    name = str(ckpt) if args.checkpoint else "untrained tiny (resnet18 Unet)"
    print(f"model {name}; {g}x{g} tiles of {t} px = {raw.shape[1]}x{raw.shape[2]} px mosaic")
    print(f"windows {t} px, overlap {args.overlap} px, Hann blend; threshold {args.threshold}")
    print(
        f"away from tile borders (> 48 px, {far.mean():.0%} of pixels): mean |p_win - p_tile| "
        f"{np.abs(win - per_tile)[far].mean():.4f}, masks agree on {(a == b).mean():.4%} of "
        f"pixels, Dice(windowed, per-tile) {dice:.4f}"
    )
    tile_x = [k * t for k in range(1, g)]
    offs = window_offsets(raw.shape[2], t, t - args.overlap)
    ends = {o for o in offs if o > 0} | {o + t for o in offs if o + t < raw.shape[2]}
    win_x = sorted(x for x in ends if all(abs(x - b) > 2 for b in tile_x))  # not at a tile's
    print(
        "| probabilities | step at tile borders | step at window borders (not tile borders) | step elsewhere |"
    )
    print("|---|---|---|---|")
    for label, p in (("per-tile mosaic", per_tile), ("windowed (blended)", win)):
        steps = column_steps(p)
        at_tile = steps[[x - 1 for x in tile_x]].mean()
        at_win = steps[[x - 1 for x in win_x]].mean()
        other = np.delete(steps, [x - 1 for x in {*tile_x, *win_x}]).mean()
        print(f"| {label} | {at_tile:.4f} | {at_win:.4f} | {other:.4f} |")


if __name__ == "__main__":
    main()
