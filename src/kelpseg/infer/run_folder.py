"""The one reader of a ``kelpseg train``/``run`` output folder.

What prediction needs from a run: its finished folds (``fold*/result.json``: checkpoint and
validation Dice), folds interrupted after their first checkpoint, and the thresholds tuned out
of fold (``threshold.json``, written by :mod:`kelpseg.infer.threshold`). ``predict --run``,
``map --run``, ``kelpseg threshold`` and ``kelpseg run`` all read a run through here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kelpseg.infer.errors import RunFolderError

THRESHOLD_FILE = "threshold.json"
METRICS_FILE = "metrics.json"
HOLDOUT_FILE = "holdout.json"
"""In each fold folder: the fold of the split its model did not train on (``kelpseg run``
with ``train.holdout_fold``; ``{"fold": null}`` without one)."""


def finished_folds(run: Path) -> dict[int, tuple[Path, float]]:
    """``{fold: (checkpoint, val Dice)}`` of every finished fold (``fold*/result.json``).

    A run folder that was moved still works: the checkpoint is then taken beside its
    ``result.json``.
    """
    found: dict[int, tuple[Path, float]] = {}
    for res in Path(run).glob("fold*/result.json"):
        try:
            d = json.loads(res.read_text())
            ck = Path(d["checkpoint"])
            found[int(d["fold"])] = (
                ck if ck.is_absolute() and ck.is_file() else res.parent / ck.name,
                float(d["val_dice"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RunFolderError(f"{res}: not a fold result of `kelpseg train` ({err})") from err
    return dict(sorted(found.items()))  # fold order (fold10 after fold9), as threshold.json


def write_holdout(fold_dir: Path, fold: int | None, tiles: int) -> None:
    """Record in a trained fold's folder the held-out fold its model never saw (or none)."""
    from kelpseg.io.raster import atomic_write_text

    atomic_write_text(Path(fold_dir) / HOLDOUT_FILE, json.dumps({"fold": fold, "tiles": tiles}))


@dataclass(frozen=True)
class RunChoice:
    """What ``kelpseg run`` submitted when it chose the best fold alone over the ensemble."""

    checkpoint: Path
    threshold: float
    reason: str


def run_choice(run: Path) -> RunChoice | None:
    """The best fold alone when ``kelpseg run`` chose it for ``OUT/predictions``
    (``metrics.json`` → ``choice``, see :func:`kelpseg.pipeline.choose_predictions`); None
    when it chose the ensemble, or the folder holds no finished ``run``.

    Raises:
        RunFolderError: an unreadable ``metrics.json``, or a chosen checkpoint that is gone.
    """
    path = Path(run) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
        choice = metrics.get("choice") or {}
        if choice.get("predictions") != "single":
            return None
        ck = Path(metrics["predicted_with"])
        threshold = float(metrics["threshold"]["single"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise RunFolderError(f"{path}: not the metrics of `kelpseg run` ({err})") from err
    if not ck.is_file():  # a moved run folder: the checkpoint beside its fold folder
        ck = Path(run) / ck.parent.name / ck.name
    if not ck.is_file():
        raise RunFolderError(f"{path}: the chosen checkpoint {ck} is gone")
    return RunChoice(ck, threshold, str(choice.get("reason", "")))


def held_out_fold(run: Path, folds: list[int]) -> int | None:
    """The fold no member of ``folds`` trained on, when every one of them records the same
    one (``fold{k}/holdout.json``, written by ``kelpseg run`` / ``train``); else None.

    Raises:
        RunFolderError: members that record different held-out folds (their ensemble has no
            tile none of them saw), or an unreadable record.
    """
    seen: dict[int, int | None] = {}
    for k in folds:
        path = Path(run) / f"fold{k}" / HOLDOUT_FILE
        if not path.is_file():
            return None  # trained before hold-outs existed, or by another command
        try:
            fold = json.loads(path.read_text())["fold"]
            seen[k] = None if fold is None else int(fold)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RunFolderError(f"{path}: not a hold-out record ({err})") from err
    held = set(seen.values())
    if len(held) > 1:
        named = ", ".join(f"fold {k}: {v}" for k, v in seen.items())
        raise RunFolderError(f"{run}: the folds held out different folds ({named}): retrain")
    return held.pop() if held else None


def run_checkpoints(run: Path) -> tuple[list[Path], list[float | None]]:
    """Every trained fold of a run: checkpoints and val Dice.

    The finished folds (:func:`finished_folds`), then the folds with a ``best.ckpt`` but no
    ``result.json`` (interrupted; Dice unknown).

    Raises:
        RunFolderError: not a folder, or no trained fold in it.
    """
    run = Path(run)
    if not run.is_dir():
        raise RunFolderError(f"--run {run}: not a folder")
    done = finished_folds(run)
    ckpts: list[Path] = [ck for ck, _ in done.values()]
    dices: list[float | None] = [d for _, d in done.values()]
    for fold in sorted((p for p in run.glob("fold*") if p.is_dir()), key=_fold_number):
        if (fold / "result.json").is_file():
            continue
        if (fold / "best.ckpt").is_file():
            ckpts.append(fold / "best.ckpt")
            dices.append(None)
    if not ckpts:
        raise RunFolderError(f"--run {run}: no trained fold (fold*/result.json or best.ckpt)")
    return ckpts, dices


def _fold_number(folder: Path) -> tuple[int, str]:
    digits = folder.name.removeprefix("fold")
    return (int(digits) if digits.isdigit() else 1 << 30, folder.name)


@dataclass(frozen=True)
class Tuned:
    """A threshold read from ``threshold.json`` and what it was tuned for."""

    value: float
    source: str
    """Where it comes from, for the user: e.g. ``OUT/threshold.json (ensemble of 3)``."""
    note: str = ""
    """Why a better-suited entry could not be used (empty when none was needed)."""


def tuned_threshold(
    run: Path,
    weights: np.ndarray | list[float] | None = None,
    vote: str = "soft",
    tta: str | None = None,
) -> Tuned | None:
    """The out-of-fold threshold of a run for an ensemble of ``weights`` (one per member, in
    the run's fold order; None or one weight: a single model), or None when never tuned.

    The ``ensemble`` entry is used only for the ensemble it was tuned for: as many members with
    the same weights (the mean's threshold for a soft vote: tuned on the held-out fold when the
    run has one, else calibrated by rate matching; the members' own for a hard vote). Otherwise the single models' out-of-fold threshold, with a ``note`` saying why.
    A threshold tuned under another TTA is also noted.
    """
    path = Path(run) / THRESHOLD_FILE
    if not path.is_file():
        return None
    try:
        tuned = json.loads(path.read_text())
        single = float(tuned["threshold"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunFolderError(
            f"{path}: not a threshold file of `kelpseg threshold` ({err})"
        ) from err
    notes = []
    if tta is not None and tuned.get("tta", "none") != tta:
        notes.append(f"tuned with TTA {tuned.get('tta', 'none')}, predicting with {tta}")
    w = np.asarray([] if weights is None else weights, dtype=np.float64)
    if len(w) <= 1:
        return Tuned(single, f"{path} (single models, out of fold)", "; ".join(notes))
    ens = tuned.get("ensemble")
    if not isinstance(ens, dict):
        notes.append("no ensemble entry: the single models' threshold")
        return Tuned(single, f"{path} (single models)", "; ".join(notes))
    tuned_w = np.asarray(list((ens.get("member_weights") or {}).values()), dtype=np.float64)
    if len(tuned_w) != len(w) or not np.allclose(tuned_w, w, atol=1e-6):
        have = ", ".join(f"{v:.3g}" for v in tuned_w) or "none"
        notes.append(
            f"its ensemble entry was tuned for weights [{have}], not "
            f"[{', '.join(f'{v:.3g}' for v in w)}]: the single models' threshold is used "
            f"(`kelpseg threshold {run} --weights ...` tunes it for these)"
        )
        return Tuned(single, f"{path} (single models)", "; ".join(notes))
    key = "member_threshold" if vote == "hard" else "threshold"
    how = f"ensemble of {len(w)}, {vote} vote"
    if ens.get("holdout_fold") is not None and vote != "hard":
        how += f", tuned on held-out fold {ens['holdout_fold']}"
    return Tuned(float(ens[key]), f"{path} ({how})", "; ".join(notes))
