"""Ensemble members: the folds of a run, their weights, and the mean of their probabilities.

Weights are ``equal``, given (``"0.2,0.8"``), or ``dice``: each fold's validation Dice min-max
scaled to [0, 1] as the seed did (all equal Dice -> equal weights). Whatever the source, the
weights are normalized to sum to exactly one (the 2nd-place code divided by one too many).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kelpseg.config import parse_weights

WEIGHT_MODES = ("equal", "dice")


class EnsembleError(ValueError):
    """An ensemble that cannot be built, the reason named in one line."""


def finished_folds(run: Path) -> dict[int, tuple[Path, float]]:
    """``{fold: (checkpoint, val Dice)}`` of every finished fold of a run (``fold*/result.json``).

    A run folder that was moved still works: the checkpoint is then taken beside its
    ``result.json``.
    """
    found: dict[int, tuple[Path, float]] = {}
    for res in sorted(run.glob("fold*/result.json")):
        d = json.loads(res.read_text())
        ck = Path(d["checkpoint"])
        ck = ck if ck.is_absolute() and ck.is_file() else res.parent / ck.name
        found[int(d["fold"])] = (ck, float(d["val_dice"]))
    return found


def run_checkpoints(run: Path) -> tuple[list[Path], list[float | None]]:
    """Every trained fold of a ``kelpseg train``/``run`` output: checkpoints and val Dice.

    The finished folds (:func:`finished_folds`), then the folds with a ``best.ckpt`` but no
    ``result.json`` (interrupted; Dice unknown).
    """
    if not run.is_dir():
        raise EnsembleError(f"--run {run}: not a folder")
    done = finished_folds(run)
    ckpts: list[Path] = [ck for ck, _ in done.values()]
    dices: list[float | None] = [d for _, d in done.values()]
    for fold in sorted(p for p in run.glob("fold*") if p.is_dir()):
        if (fold / "result.json").is_file():
            continue
        if (fold / "best.ckpt").is_file():
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
            w = np.asarray(parse_weights(spec), dtype=np.float64)
        except ValueError as err:
            raise EnsembleError(f"--weights: {err}") from err
        if len(w) != n:
            raise EnsembleError(f"--weights: {len(w)} weights for {n} models")
    return w / w.sum()
