"""Ensemble members: the folds of a run, their weights, and the mean of their probabilities.

Weights are ``equal``, given (``"0.2,0.8"``), or ``dice``: each fold's validation Dice min-max
scaled to [0, 1] as the seed did (all equal Dice -> equal weights). Whatever the source, the
weights are normalized to sum to exactly one (the 2nd-place code divided by one too many).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WEIGHT_MODES = ("equal", "dice")


class EnsembleError(ValueError):
    """An ensemble that cannot be built, the reason named in one line."""


def run_checkpoints(run: Path) -> tuple[list[Path], list[float | None]]:
    """Every trained fold of a ``kelpseg train``/``run`` output: checkpoints and val Dice.

    A fold's ``result.json`` names its checkpoint and Dice; without it, ``best.ckpt`` is used
    (Dice unknown).
    """
    if not run.is_dir():
        raise EnsembleError(f"--run {run}: not a folder")
    ckpts: list[Path] = []
    dices: list[float | None] = []
    for fold in sorted(p for p in run.glob("fold*") if p.is_dir()):
        res = fold / "result.json"
        if res.is_file():
            d = json.loads(res.read_text())
            ck = Path(d["checkpoint"])
            ckpts.append(ck if ck.is_absolute() and ck.is_file() else fold / ck.name)
            dices.append(float(d["val_dice"]))
        elif (fold / "best.ckpt").is_file():
            ckpts.append(fold / "best.ckpt")
            dices.append(None)
    if not ckpts:
        raise EnsembleError(f"--run {run}: no trained fold (fold*/result.json or best.ckpt)")
    return ckpts, dices


def member_weights(
    n: int, spec: str | list[float] | None = "equal", dices: list[float | None] | None = None
) -> np.ndarray:
    """Normalized member weights (sum exactly 1) from ``equal``, ``dice`` or given numbers."""
    if spec is None or spec == "equal":
        w = np.ones(n)
    elif spec == "dice":
        if dices is None or len(dices) != n or any(d is None for d in dices):
            raise EnsembleError("--weights dice needs every member's val Dice (use --run OUT)")
        d = np.asarray(dices, dtype=np.float64)
        span = d.max() - d.min()
        w = (d - d.min()) / span if span > 0 else np.ones(n)
        if w.sum() == 0:  # a single member
            w = np.ones(n)
    else:
        try:
            vals = spec if isinstance(spec, list) else [float(v) for v in spec.split(",")]
        except ValueError as err:
            raise EnsembleError(f"--weights {spec!r}: not equal, dice or numbers") from err
        w = np.asarray(vals, dtype=np.float64)
        if len(w) != n:
            raise EnsembleError(f"--weights: {len(w)} weights for {n} models")
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise EnsembleError(f"--weights {spec!r}: need non-negative numbers, not all zero")
    return w / w.sum()
