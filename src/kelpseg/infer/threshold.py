"""Out-of-fold threshold tuning (``kelpseg threshold``).

Each trained fold's model predicts that fold's validation tiles (from the packed cache
``OUT/cache``), so every training tile is scored by a model that never saw it. Kelp and
non-kelp probabilities are counted per candidate threshold (one ``searchsorted`` per batch, no
per-pixel Python), and the threshold with the best global kelp Dice over all valid pixels of
all folds is written to ``OUT/threshold.json`` with its curve (``OUT/threshold.png``).

The ensemble's threshold (``ensemble`` entry, when several folds are tuned) cannot be tuned on
out-of-fold *ensemble* predictions: in K-fold every validation tile of one fold was a training
tile of every other fold's model, so the averaged probability of a training tile is optimistic.
Two honest steps instead. (1) The weighted members' threshold: each fold's out-of-fold counts
per pixel, weighted by the member's ensemble weight, tuned like the single one (the exact
expected Dice of an ensemble that hands each pixel to member k with probability w_k). (2)
Averaging pulls probabilities towards their mean (three confident members that disagree give
1/3 or 2/3), so that threshold is moved to where the weighted mean marks the same share of
unlabelled pixels as kelp as the weighted members do (:func:`rate_match`; no label read):
on the test tiles in ``kelpseg run`` (``--tiles`` of ``kelpseg threshold``), else on cached
training tiles (biased towards (1): the members saw them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kelpseg.infer.run_folder import THRESHOLD_FILE, finished_folds
from kelpseg.io.raster import atomic_write_text
from kelpseg.io.tiles import missing_pixels

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
    found = {f: ck for f, (ck, _) in finished_folds(out).items() if folds is None or f in folds}
    if not found:
        raise ThresholdError(f"{out}: no finished fold (fold*/result.json); run `kelpseg train`")
    return found


def _tables_folder(out: Path) -> Path:
    """Where the splits and cache are: ``out``, or for a baseline's folder (``OUT/xgb``) the
    run folder above it."""
    if not (out / "splits.csv").is_file() and (out.parent / "splits.csv").is_file():
        return out.parent
    return out


def fold_dices(out: Path) -> dict[int, float]:
    """``{fold: val Dice}`` of every finished fold (``OUT/fold*/result.json``)."""
    return {f: d for f, (_, d) in finished_folds(out).items()}


def iter_oof(
    out: Path,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    folds: list[int] | None = None,
    tta: str = "none",
    limit: int | None = None,
) -> Iterator[OofBatch]:
    """Predict every finished fold's (or ``folds``') validation tiles with that fold's own
    model (fp32, under ``tta``); ``limit``: the first tiles of each fold only (smoke runs).
    ``batch_size`` defaults to the model's ``predict.batch_for`` its device."""
    import torch

    from kelpseg.data.cache import open_cache
    from kelpseg.infer.checkpoint import load_member
    from kelpseg.infer.tta import tta_proba

    checkpoints = fold_checkpoints(out, folds)
    tables = _tables_folder(out)
    for name in ("splits.csv", "cache/tile_ids.txt"):
        if not (tables / name).is_file():
            raise ThresholdError(f"{tables / name}: missing; run `kelpseg train` on this folder")
    splits = pd.read_csv(tables / "splits.csv", dtype={"tile_id": str})
    packed = open_cache(tables / "cache")
    cached = set(packed.tile_ids)
    for fold, ckpt in checkpoints.items():
        ids = [t for t in splits.loc[splits["fold"] == fold, "tile_id"] if t in cached]
        if not ids:
            raise ThresholdError(f"{out / 'splits.csv'}: fold {fold} has no cached tiles")
        ids = ids[:limit] if limit is not None else ids
        model = load_member(ckpt, device)
        bs = batch_size or model.cfg.predict.batch_for(model.device.type)
        rows = packed.row(ids)
        for start in range(0, len(ids), bs):
            sel = rows[start : start + bs]
            raw = np.asarray(packed.images[sel])
            with torch.inference_mode():
                x = torch.from_numpy(raw).to(model.device)
                proba = tta_proba(model.predict_proba, x, tta).float().cpu().numpy()
            valid = ~np.stack([missing_pixels(r) for r in raw])
            yield OofBatch(
                fold,
                ids[start : start + bs],
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
    from kelpseg.eda.plots import plt, save_figure  # Agg backend

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
    return save_figure(fig, path, dpi=100)


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


CALIBRATION_TILES = 64
"""At most this many unlabelled tiles (evenly spread) calibrate the ensemble's threshold."""


def rate_match(
    checkpoints: list[Path],
    weights: np.ndarray,
    raws: Iterator[np.ndarray],
    member_threshold: float,
    *,
    device: str | None = None,
    tta: str = "none",
    correct: bool = False,
) -> dict:
    """The threshold at which the weighted mean of the members marks as much of the unlabelled
    ``raws`` as kelp as the weighted members do at ``member_threshold`` (no label is read).
    ``correct``: undo DEM shifts first for members trained with ``data.correct_dem_shift``.
    The members are assembled and run as prediction runs them
    (:func:`kelpseg.infer.assemble.assemble`: the precision prediction uses on that device)."""
    from kelpseg.infer.assemble import assemble

    ens = assemble(
        checkpoints,
        flags={"weights": ",".join(repr(float(v)) for v in weights), "tta": tta},
        threshold=member_threshold,
        device=device,
    )
    engine = ens.engine()
    if not correct:
        engine.dem_fix = lambda r: r  # cached tiles are corrected
    w = np.asarray(engine.weights)
    t = np.float32(member_threshold)
    above = np.zeros(len(CANDIDATES) + 1, np.int64)
    members = pixels = tiles = 0.0
    for raw in raws:
        valid = ~missing_pixels(raw)
        probs = engine.probas(raw[None])  # (M, 1, H, W)
        mean = engine.combine(probs)[0][0].cpu().numpy()[valid]
        member_px = (probs[:, 0].cpu().numpy()[:, valid] >= t).sum(1)
        members += float((w * member_px).sum())
        above += np.bincount(
            np.searchsorted(CANDIDATES.astype(np.float32), mean, side="right"),
            minlength=len(above),
        )
        pixels += int(valid.sum())
        tiles += 1
    if not pixels:
        raise ThresholdError("no valid pixel in the calibration tiles")
    rate = np.cumsum(above[::-1])[::-1][1:] / pixels  # share with mean >= each candidate
    target = members / pixels
    j = int(np.argmin(np.abs(rate - target)))
    return {
        "threshold": float(CANDIDATES[j]),
        "kelp_share_members": target,
        "kelp_share_ensemble": float(rate[j]),
        "calibration_tiles": int(tiles),
    }


def holdout_counts(
    out: Path,
    checkpoints: list[Path],
    weights: np.ndarray,
    holdout: int,
    *,
    member_threshold: float,
    device: str | None = None,
    batch_size: int | None = None,
    tta: str = "none",
    vote: str = "soft",
) -> tuple[list[Counts], Counts | None, int]:
    """Every member's and (several members) the ensemble's counts on the held-out fold's
    cached tiles, which none of them trained on; and the number of tiles.

    The members are assembled and run as prediction runs them (its precision on the device,
    ``tta``, ``vote``; a hard vote's members cut at ``member_threshold``). The ensemble's
    counts are of its combined value: the weighted mean probability (soft), or the weighted
    share of members saying kelp, cut at 0.5 (hard).
    """
    from kelpseg.data.cache import open_cache
    from kelpseg.infer.assemble import assemble

    tables = _tables_folder(out)
    splits = pd.read_csv(tables / "splits.csv", dtype={"tile_id": str})
    packed = open_cache(tables / "cache")
    cached = set(packed.tile_ids)
    ids = [t for t in splits.loc[splits["fold"] == holdout, "tile_id"] if t in cached]
    if not ids:
        raise ThresholdError(f"{tables / 'splits.csv'}: the held-out fold {holdout} has no tiles")
    ens = assemble(
        checkpoints,
        flags={"weights": ",".join(repr(float(v)) for v in weights), "tta": tta, "vote": vote},
        threshold=member_threshold,
        batch_size=batch_size,
        device=device,
    )
    engine = ens.engine()
    engine.dem_fix = lambda r: r  # cached tiles are corrected
    members = [Counts() for _ in checkpoints]
    mean = Counts() if len(checkpoints) > 1 else None
    rows = packed.row(ids)
    for start in range(0, len(rows), ens.batch_size):
        sel = np.sort(rows[start : start + ens.batch_size])
        raw = np.asarray(packed.images[sel])
        truth = np.asarray(packed.masks[sel])
        valid = ~np.stack([missing_pixels(r) for r in raw])
        probs = engine.probas(raw)
        for c, p in zip(members, probs.cpu().numpy(), strict=True):
            c.add(p, truth, valid)
        if mean is not None:
            mean.add(engine.combine(probs)[0].cpu().numpy(), truth, valid)
    return members, mean, len(ids)


def _at(counts: Counts, t: float) -> float:
    return float(counts.dice()[int(np.argmin(np.abs(counts.thresholds - t)))])


def _spread(items: list, n: int) -> list:
    """At most ``n`` of ``items``, evenly spread."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def tune_threshold(
    out: Path,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    folds: list[int] | None = None,
    weights: str = "equal",
    tta: str = "none",
    vote: str = "soft",
    calibration: list[Path] | None = None,
) -> dict:
    """Tune the decision threshold out of fold; write ``threshold.json`` and ``threshold.png``.

    With several folds the ``ensemble`` entry holds the threshold of their ensemble under
    ``weights`` (``equal``, ``dice`` or numbers in fold order). When the folds were trained
    with a held-out fold (``train.holdout_fold``, recorded in ``fold*/holdout.json``) it is
    tuned there, on the ensemble's own predictions of tiles no member saw, and the
    ``holdout`` entry scores every member, the best fold (by validation Dice) and the
    ensemble on those tiles: ``better`` names the one with the higher Dice at its tuned
    threshold. Without a held-out fold it is the weighted members' threshold (tuned out of
    fold on their expected counts), carried over to the weighted mean by :func:`rate_match`
    on unlabelled ``calibration`` tiles (e.g. the test tiles), or without them on the cached
    training tiles (see the module notes).
    """
    from kelpseg.data.cache import open_cache
    from kelpseg.infer.ensemble import member_weights
    from kelpseg.infer.run_folder import held_out_fold
    from kelpseg.io.tiles import read_tile

    counts = Counts()
    per_fold: dict[int, Counts] = {}
    ids: list[str] = []
    for b in iter_oof(out, device=device, batch_size=batch_size, folds=folds, tta=tta):
        counts.add(b.proba, b.truth, b.valid)
        per_fold.setdefault(b.fold, Counts()).add(b.proba, b.truth, b.valid)
        ids += b.tile_ids
    result = {"folds": sorted(per_fold), "tta": tta, **choose(counts)}
    order = sorted(per_fold)
    several = len(order) > 1
    dices = fold_dices(out)
    ckpts = fold_checkpoints(out, order)
    members = [ckpts[f] for f in order]
    w = member_weights(len(order), weights if several else "equal", [dices.get(f) for f in order])
    mix = choose(mixture(per_fold, dict(zip(order, map(float, w), strict=True))))
    held = held_out_fold(out, order)
    hold_mean = None
    if held is not None:
        member_counts, hold_mean, n_tiles = holdout_counts(
            out,
            members,
            w,
            held,
            member_threshold=mix["threshold"],
            device=device,
            batch_size=batch_size,
            tta=tta,
            vote=vote,
        )
        result["holdout"] = _holdout_entry(
            held, n_tiles, order, dices, member_counts, result["threshold"]
        )
    if several:
        entry = {
            "weights": weights,
            "member_weights": {str(f): float(v) for f, v in zip(order, w, strict=True)},
            "member_threshold": mix["threshold"],
            "members_dice": mix["dice"],
        }
        if hold_mean is not None:
            hold = result["holdout"]
            tuned = choose(hold_mean)
            if vote == "hard":  # the members' cut stays; the vote is cut at half
                tuned = {**tuned, "threshold": mix["threshold"], "dice": _at(hold_mean, 0.5)}
            hold["ensemble"] = {
                "threshold": tuned["threshold"],
                "dice": tuned["dice"],
                "vote": vote,
                "dice_at_0.5": tuned["dice_at_0.5"],
            }
            single = hold["single"]["dice"]
            hold["better"] = "ensemble" if tuned["dice"] > single else "single"
            result["ensemble"] = {
                "threshold": tuned["threshold"],
                **entry,
                "holdout_fold": held,
                "calibration": f"held-out fold {held} ({hold['tiles']} tiles no member "
                "trained on; labels read)",
                "method": "tuned on the ensemble's own predictions of the held-out fold",
                "curve": {"threshold": tuned["curve"]["threshold"], "dice": tuned["curve"]["dice"]},
            }
        else:
            if calibration:
                paths = _spread(sorted(calibration), CALIBRATION_TILES)
                correct = True
                raws = (read_tile(p) for p in paths)
                source = "unlabelled tiles given (the test tiles in `kelpseg run`)"
            else:
                packed = open_cache(_tables_folder(out) / "cache")
                rows = packed.row(_spread(ids, CALIBRATION_TILES))
                raws = (np.asarray(packed.images[r]) for r in rows)
                correct = False  # the cache holds corrected DEMs
                source = "cached training tiles (no --tiles given; the members saw most of them)"
            matched = rate_match(
                members, w, raws, mix["threshold"], device=device, tta=tta, correct=correct
            )
            result["ensemble"] = {
                "threshold": matched["threshold"],
                **entry,
                **{k: v for k, v in matched.items() if k != "threshold"},
                "calibration": source,
                "method": "the weighted members' out-of-fold threshold, moved to where the "
                "weighted mean marks the same share of unlabelled pixels as kelp (no out-of-fold "
                "ensemble prediction exists in K-fold without a held-out fold)",
                "curve": {"threshold": mix["curve"]["threshold"], "dice": mix["curve"]["dice"]},
            }
    atomic_write_text(out / THRESHOLD_FILE, json.dumps(result, indent=2))
    plot_curve(result, out / CURVE_FILE)
    return result


def _holdout_entry(
    held: int,
    n_tiles: int,
    order: list[int],
    dices: dict[int, float],
    member_counts: list[Counts],
    oof_threshold: float,
) -> dict:
    """Every member and the best fold (by validation Dice, the first of equals) on the
    held-out fold: Dice at the pooled out-of-fold threshold and at its own best there."""
    best = max(order, key=lambda f: dices.get(f, float("-inf")))
    scores = {}
    for f, c in zip(order, member_counts, strict=True):
        own = choose(c)
        scores[str(f)] = {
            "threshold": own["threshold"],
            "dice": own["dice"],
            "dice_at_oof": _at(c, oof_threshold),
        }
    c = member_counts[order.index(best)]
    return {
        "fold": held,
        "tiles": n_tiles,
        "pixels": int(c.kelp.sum() + c.water.sum()),
        "kelp_pixels": int(c.kelp.sum()),
        "members": scores,
        "single": {"fold": best, **scores[str(best)]},
    }
