"""Out-of-fold threshold tuning (``kelpseg threshold``).

Each trained fold's model predicts that fold's validation tiles (from the packed cache
``OUT/cache``), so every training tile is scored by a model that never saw it. Kelp and
non-kelp probabilities are counted per candidate threshold (one ``searchsorted`` per batch, no
per-pixel Python), and the threshold with the best global kelp Dice over all valid pixels of
all folds is written to ``OUT/threshold.json`` with its curve (``OUT/threshold.png``).

The ensemble's threshold (``ensemble`` entry, when several folds are tuned) cannot be tuned on
out-of-fold *ensemble* predictions: in K-fold every validation tile of one fold was a training
tile of every other fold's model, so the averaged probability of a training tile is optimistic.
What can be estimated honestly is the expected Dice curve of the weighted members: each fold's
out-of-fold counts per pixel, weighted by the member's ensemble weight (equal or dice), scaled
to the pooled pixel count. That is the exact expected outcome of an ensemble that hands each
pixel to member k with probability w_k; the soft average differs from it only by averaging
before thresholding (which shrinks probabilities towards their mean), the one effect no
out-of-fold data can measure here. The entry says so (``method``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kelpseg.io.raster import atomic_write_text
from kelpseg.io.tiles import missing_pixels

THRESHOLD_FILE = "threshold.json"
CURVE_FILE = "threshold.png"
CANDIDATES = np.round(np.arange(5, 96) / 100, 2)
"""Candidate thresholds: 0.05 .. 0.95 by 0.01 (0.5 included)."""


class ThresholdError(ValueError):
    """A run folder that cannot be tuned, with the file and the problem named."""


@dataclass
class OofBatch:
    """Out-of-fold probabilities of a batch of one fold's validation tiles."""

    fold: int
    tile_ids: list[str]
    raw: np.ndarray  # (B, 7, H, W) int16, as cached
    proba: np.ndarray  # (B, H, W) float32
    truth: np.ndarray  # (B, H, W) uint8 0/1
    valid: np.ndarray  # (B, H, W) bool: pixels present in the input


def fold_checkpoints(out: Path, folds: list[int] | None = None) -> dict[int, Path]:
    """``{fold: checkpoint}`` of every finished fold (``OUT/fold*/result.json``), or of
    ``folds`` only."""
    found: dict[int, Path] = {}
    for res in sorted(out.glob("fold*/result.json")):
        info = json.loads(res.read_text())
        if folds is not None and int(info["fold"]) not in folds:
            continue
        ckpt = Path(info["checkpoint"])
        if not ckpt.is_file():  # the run folder was moved: the file sits next to result.json
            ckpt = res.parent / ckpt.name
        found[int(info["fold"])] = ckpt
    if not found:
        raise ThresholdError(f"{out}: no finished fold (fold*/result.json); run `kelpseg train`")
    return found


def fold_dices(out: Path) -> dict[int, float]:
    """``{fold: val Dice}`` of every finished fold (``OUT/fold*/result.json``)."""
    found: dict[int, float] = {}
    for res in sorted(out.glob("fold*/result.json")):
        info = json.loads(res.read_text())
        found[int(info["fold"])] = float(info["val_dice"])
    return found


def iter_oof(
    out: Path,
    *,
    device: str = "cpu",
    batch_size: int = 8,
    folds: list[int] | None = None,
    tta: str = "none",
    limit: int | None = None,
) -> Iterator[OofBatch]:
    """Predict every finished fold's (or ``folds``') validation tiles with that fold's own
    model (fp32, under ``tta``); ``limit``: the first tiles of each fold only (smoke runs)."""
    import torch

    from kelpseg.data.cache import open_cache
    from kelpseg.infer.predict import load_model
    from kelpseg.infer.tta import tta_proba

    checkpoints = fold_checkpoints(out, folds)
    for name in ("splits.csv", "cache/tile_ids.txt"):
        if not (out / name).is_file():
            raise ThresholdError(f"{out / name}: missing; run `kelpseg train` on this folder")
    splits = pd.read_csv(out / "splits.csv", dtype={"tile_id": str})
    packed = open_cache(out / "cache")
    cached = set(packed.tile_ids)
    for fold, ckpt in checkpoints.items():
        ids = [t for t in splits.loc[splits["fold"] == fold, "tile_id"] if t in cached]
        if not ids:
            raise ThresholdError(f"{out / 'splits.csv'}: fold {fold} has no cached tiles")
        ids = ids[:limit] if limit is not None else ids
        model = load_model(ckpt, device=device)
        rows = packed.row(ids)
        for start in range(0, len(ids), batch_size):
            sel = rows[start : start + batch_size]
            raw = np.asarray(packed.images[sel])
            with torch.inference_mode():
                x = torch.from_numpy(raw).to(model.device)
                proba = tta_proba(model.predict_proba, x, tta).float().cpu().numpy()
            valid = ~np.stack([missing_pixels(r) for r in raw])
            yield OofBatch(
                fold,
                ids[start : start + batch_size],
                raw,
                proba,
                np.asarray(packed.masks[sel]),
                valid,
            )


class Counts:
    """TP/FP/FN per candidate threshold, accumulated from probability histograms."""

    def __init__(self, thresholds: np.ndarray = CANDIDATES) -> None:
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.kelp = np.zeros(len(self.thresholds) + 1, dtype=np.int64)
        self.water = np.zeros(len(self.thresholds) + 1, dtype=np.int64)

    def add(self, proba: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> None:
        """Count pixels: bin k = how many thresholds t satisfy ``p >= t`` (p's own dtype)."""
        p = proba[valid]
        k = np.searchsorted(self.thresholds.astype(p.dtype), p, side="right")
        kelp = truth[valid] == 1
        n = len(self.thresholds) + 1
        self.kelp += np.bincount(k[kelp], minlength=n)
        self.water += np.bincount(k[~kelp], minlength=n)

    def tp_fp_fn(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per threshold j: predicted kelp = pixels in bins above j."""
        tp = np.cumsum(self.kelp[::-1])[::-1][1:]
        fp = np.cumsum(self.water[::-1])[::-1][1:]
        fn = self.kelp.sum() - tp
        return tp, fp, fn

    def dice(self) -> np.ndarray:
        """Global kelp Dice per threshold (1.0 where there is no kelp and none predicted)."""
        tp, fp, fn = self.tp_fp_fn()
        den = 2 * tp + fp + fn
        return np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)


def dice_count(proba: np.ndarray, truth: np.ndarray, valid: np.ndarray, t: float) -> float:
    """Global Dice of ``proba >= t`` counted directly (the check on :class:`Counts`)."""
    pred = (proba >= np.asarray(t, dtype=proba.dtype)) & valid
    kelp = (truth == 1) & valid
    tp = int((pred & kelp).sum())
    den = int(pred.sum()) + int(kelp.sum())
    return 2 * tp / den if den else 1.0


def choose(counts: Counts) -> dict:
    """The best threshold (the first of equals), its Dice, the Dice at 0.5 and the curve."""
    dice = counts.dice()
    tp, fp, fn = counts.tp_fp_fn()
    best = int(np.argmax(dice))
    half = int(np.argmin(np.abs(counts.thresholds - 0.5)))
    prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    rec = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0)
    return {
        "threshold": float(counts.thresholds[best]),
        "dice": float(dice[best]),
        "dice_at_0.5": float(dice[half]),
        "pixels": int(counts.kelp.sum() + counts.water.sum()),
        "kelp_pixels": int(counts.kelp.sum()),
        "curve": {
            "threshold": [float(t) for t in counts.thresholds],
            "dice": [float(d) for d in dice],
            "precision": [float(v) for v in prec],
            "recall": [float(v) for v in rec],
        },
    }


def plot_curve(result: dict, path: Path) -> Path:
    """Dice / precision / recall against the threshold, the chosen one marked (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result["curve"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(c["threshold"], c["dice"], label="Dice")
    ax.plot(c["threshold"], c["precision"], ":", label="precision")
    ax.plot(c["threshold"], c["recall"], "--", label="recall")
    ax.axvline(result["threshold"], color="k", lw=0.8)
    ax.set_xlabel("threshold")
    ax.set_title(f"out-of-fold: best {result['threshold']:.2f} (Dice {result['dice']:.4f})")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def mixture(per_fold: dict[int, Counts], weights: dict[int, float]) -> Counts:
    """Expected counts of the weighted members: each fold's counts per pixel times its weight,
    scaled to the pooled pixel count (float counts)."""
    first = next(iter(per_fold.values()))
    mix = Counts(first.thresholds)
    total = sum(int(c.kelp.sum() + c.water.sum()) for c in per_fold.values())
    kelp = np.zeros(len(mix.kelp))
    water = np.zeros(len(mix.water))
    for fold, c in per_fold.items():
        n = max(int(c.kelp.sum() + c.water.sum()), 1)
        kelp += weights[fold] * c.kelp / n * total
        water += weights[fold] * c.water / n * total
    mix.kelp, mix.water = kelp, water
    return mix


def tune_threshold(
    out: Path,
    *,
    device: str = "cpu",
    batch_size: int = 8,
    folds: list[int] | None = None,
    weights: str = "equal",
    tta: str = "none",
) -> dict:
    """Tune the decision threshold out of fold; write ``threshold.json`` and ``threshold.png``.

    With several folds the ``ensemble`` entry holds the threshold of their ensemble under
    ``weights`` (``equal``, ``dice`` or numbers in fold order; see the module notes).
    """
    from kelpseg.infer.ensemble import member_weights

    counts = Counts()
    per_fold: dict[int, Counts] = {}
    for b in iter_oof(out, device=device, batch_size=batch_size, folds=folds, tta=tta):
        counts.add(b.proba, b.truth, b.valid)
        per_fold.setdefault(b.fold, Counts()).add(b.proba, b.truth, b.valid)
    result = {"folds": sorted(per_fold), "tta": tta, **choose(counts)}
    if len(per_fold) > 1:
        order = sorted(per_fold)
        dices = fold_dices(out)
        w = member_weights(len(order), weights, [dices.get(f) for f in order])
        ens = choose(mixture(per_fold, dict(zip(order, map(float, w), strict=True))))
        del ens["curve"]["precision"], ens["curve"]["recall"]
        result["ensemble"] = {
            "weights": weights,
            "member_weights": {str(f): float(v) for f, v in zip(order, w, strict=True)},
            "method": "expected counts of the weighted members, each on its own validation "
            "tiles (no out-of-fold ensemble prediction exists in K-fold)",
            **ens,
        }
    atomic_write_text(out / THRESHOLD_FILE, json.dumps(result, indent=2))
    plot_curve(result, out / CURVE_FILE)
    return result


def read_threshold(out: Path) -> float | None:
    """The tuned threshold of a run folder, or None when it was never tuned."""
    path = out / THRESHOLD_FILE
    return float(json.loads(path.read_text())["threshold"]) if path.is_file() else None
