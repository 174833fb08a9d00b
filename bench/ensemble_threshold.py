"""Best fold vs ensemble: thresholds, weights and noise, on tiles no model trained on.

Usage: python bench/ensemble_threshold.py [OUT] [--eval NAME=DATA[:TRUTH][:test]]...
       [--boot N] [--json FILE] [--max-tiles N]
       (defaults: OUT = demo_out/run, one eval set ``test`` = the test tiles of
       demo_out/data scored against demo_out/data_truth, as `make demo` writes them)

Every member of OUT (its trained folds; weights as OUT/metrics.json says) predicts every tile
of every eval set once (CPU fp32). An eval set is the labelled tiles under DATA (masks found
under DATA or TRUTH; with ``:test`` the test split only), AOIs from TRUTH/truth.csv when there,
else one AOI per tile. When OUT has a held-out fold (``train.holdout_fold``) its tiles, read
from OUT/cache, are the eval set ``holdout``: no member trained on them.

Reported per eval set, global kelp Dice over all pixels (missing pixels predicted 0):

* each member and the ensemble (weights ``equal``, ``dice`` = min-max scaled val Dice as the
  seed did, and with a hold-out the weights tuned on it: a 0.1 grid on the simplex) at: 0.5,
  the out-of-fold thresholds (single: pooled, threshold.json; ensemble: the weighted members'
  out-of-fold threshold rate-matched on the first eval set's tiles, as `kelpseg run` does on
  its test tiles), the thresholds tuned on the hold-out, and the eval set's own best
  threshold (an oracle, reporting only);
* the bootstrap over AOIs (tiles of one area are near-duplicates, so the area is the unit) of
  ensemble − best fold at the thresholds `kelpseg run` uses: mean, 95 % interval and how often
  the ensemble wins.

The test truth is used for reporting only.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kelpseg.data.dem_shift import correct_dem
from kelpseg.infer.checkpoint import load_model
from kelpseg.infer.ensemble import member_weights
from kelpseg.infer.threshold import CANDIDATES, Counts, choose, iter_oof, mixture
from kelpseg.io import discover, read_mask, read_tile
from kelpseg.io.tiles import missing_pixels

C = len(CANDIDATES)


@dataclass
class EvalSet:
    """Member probabilities of labelled tiles: ``probs`` (M, N, H, W) float16 (-1 where the
    input is missing), ``truth`` (N, H, W) bool, ``aoi`` (N,) labels."""

    name: str
    probs: np.ndarray
    truth: np.ndarray
    aoi: np.ndarray


def _labelled(data: Path, truth: Path | None, test_only: bool, limit: int | None):
    masks = {p.name.removesuffix("_kelp.tif"): p for p in data.rglob("*_kelp.tif")}
    if truth is not None:
        masks.update({p.name.removesuffix("_kelp.tif"): p for p in truth.rglob("*_kelp.tif")})
    aois: dict[str, str] = {}
    if truth is not None and (truth / "truth.csv").is_file():
        t = pd.read_csv(truth / "truth.csv", dtype={"tile_id": str})
        aois = dict(zip(t["tile_id"], t["aoi"].astype(str), strict=True))
    refs = [
        r for r in discover(data) if r.tile_id in masks and (not test_only or r.split == "test")
    ]
    return refs[:limit], masks, aois


def _predict(members: list, raw: np.ndarray, fix: bool) -> np.ndarray:
    x = torch.from_numpy((correct_dem(raw) if fix else raw)[None])
    with torch.inference_mode():
        probs = torch.stack([m.predict_proba(x)[0].float() for m in members]).numpy()
    return np.where(~missing_pixels(raw)[None], probs, -1.0).astype(np.float16)


def load_eval(name: str, spec: str, members: list, limit: int | None) -> EvalSet:
    parts = spec.split(":")
    test_only = parts[-1] == "test"
    parts = parts[:-1] if test_only else parts
    data, truth = Path(parts[0]), Path(parts[1]) if len(parts) > 1 else None
    refs, masks, aois = _labelled(data, truth, test_only, limit)
    if not refs:
        raise SystemExit(f"--eval {name}: no labelled tiles under {data}")
    fix = members[0].cfg.data.correct_dem_shift
    probs, ys = [], []
    for r in refs:
        probs.append(_predict(members, read_tile(r.image), fix))
        ys.append(read_mask(masks[r.tile_id], allow_nodata=True) == 1)
    aoi = np.array([aois.get(r.tile_id, r.tile_id) for r in refs])
    return EvalSet(name, np.stack(probs, 1), np.stack(ys), aoi)


def load_holdout(out: Path, fold: int, members: list, limit: int | None) -> EvalSet:
    """The held-out fold's tiles from the run's cache (DEMs corrected there)."""
    from kelpseg.data.cache import open_cache

    splits = pd.read_csv(out / "splits.csv", dtype={"tile_id": str})
    rows = splits[splits["fold"] == fold][:limit]
    packed = open_cache(out / "cache")
    probs, ys = [], []
    for i in packed.row(rows["tile_id"].tolist()):
        raw = np.asarray(packed.images[i])
        x = torch.from_numpy(raw[None])
        with torch.inference_mode():
            p = torch.stack([m.predict_proba(x)[0].float() for m in members]).numpy()
        probs.append(np.where(~missing_pixels(raw)[None], p, -1.0).astype(np.float16))
        ys.append(np.asarray(packed.masks[i]) == 1)
    return EvalSet("holdout", np.stack(probs, 1), np.stack(ys), rows["aoi"].astype(str).values)


def per_tile(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tile and candidate threshold: TP, predicted kelp, true kelp ``(N, C)``."""
    n = len(p)
    tp = np.zeros((n, C))
    pred = np.zeros((n, C))
    th = CANDIDATES.astype(np.float32)
    for i in range(n):
        k = np.searchsorted(th, p[i].astype(np.float32).ravel(), side="right")
        yk = y[i].ravel()
        hk = np.bincount(k[yk], minlength=C + 1)
        hw = np.bincount(k[~yk], minlength=C + 1)
        tp[i] = np.cumsum(hk[::-1])[::-1][1:]
        pred[i] = tp[i] + np.cumsum(hw[::-1])[::-1][1:]
    kelp = np.repeat(y.reshape(n, -1).sum(1)[:, None], C, 1).astype(float)
    return tp, pred, kelp


def dice_curve(counts, w: np.ndarray | None = None) -> np.ndarray:
    tp, pred, kelp = counts
    if w is not None:
        tp, pred, kelp = w @ tp, w @ pred, w @ kelp
    else:
        tp, pred, kelp = tp.sum(0), pred.sum(0), kelp.sum(0)
    den = pred + kelp
    return np.where(den > 0, 2 * tp / np.maximum(den, 1e-12), 1.0)


def at(t: float) -> int:
    return int(np.argmin(np.abs(CANDIDATES - t)))


def mix(probs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The weighted mean of the members (missing pixels stay below every threshold)."""
    p = np.tensordot(w.astype(np.float32), probs.astype(np.float32), 1)
    return np.where(probs[0] < 0, -1.0, p)


def rate_matched(ev: EvalSet, w: np.ndarray, member_t: float) -> float:
    """`threshold.rate_match` on the eval set's pixels (no label read)."""
    valid = ev.probs[0] >= 0
    members = sum(
        w[k] * float((ev.probs[k][valid] >= np.float32(member_t)).sum()) for k in range(len(w))
    )
    mean = mix(ev.probs, w)[valid]
    rate = np.array([(mean >= np.float32(t)).mean() for t in CANDIDATES])
    return float(CANDIDATES[int(np.argmin(np.abs(rate - members / valid.sum())))])


def simplex(m: int, step: float = 0.1) -> list[np.ndarray]:
    n = round(1 / step)

    def parts(k: int, left: int):
        if k == 1:
            yield (left,)
            return
        for i in range(left + 1):
            for rest in parts(k - 1, left - i):
                yield (i, *rest)

    return [np.array(p, dtype=float) / n for p in parts(m, n)]


def bootstrap(ev: EvalSet, a, ta: float, b, tb: float, n: int, seed: int = 0) -> dict:
    """Ensemble (a at ta) minus best fold (b at tb) over AOI resamples."""
    rng = np.random.default_rng(seed)
    groups = pd.Series(range(len(ev.aoi))).groupby(ev.aoi).apply(list).tolist()
    ja, jb = at(ta), at(tb)
    diffs = []
    for _ in range(n):
        w = np.zeros(len(ev.aoi))
        for g in rng.integers(0, len(groups), len(groups)):
            w[groups[g]] += 1
        diffs.append(dice_curve(a, w)[ja] - dice_curve(b, w)[jb])
    d = np.array(diffs)
    return {
        "observed": float(dice_curve(a)[ja] - dice_curve(b)[jb]),
        "mean": float(d.mean()),
        "lo": float(np.quantile(d, 0.025)),
        "hi": float(np.quantile(d, 0.975)),
        "p_ensemble_wins": float((d > 0).mean()),
        "aois": len(groups),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path("demo_out/run"))
    ap.add_argument("--eval", action="append", default=None, metavar="NAME=DATA[:TRUTH][:test]")
    ap.add_argument("--boot", type=int, default=2000, help="Bootstrap resamples (0: none).")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    ap.add_argument("--max-tiles", type=int, default=None, help="Per eval set (smoke runs).")
    args = ap.parse_args()
    out = args.out
    specs = args.eval or [f"test={out.parent / 'data'}:{out.parent / 'data_truth'}:test"]
    for need in (out / "metrics.json", out / "threshold.json"):
        if not need.exists():
            ap.error(f"{need}: missing (run `make demo` first, or give OUT)")
    metrics = json.loads((out / "metrics.json").read_text())
    tuned = json.loads((out / "threshold.json").read_text())
    paths = metrics["ensemble"]["members"]
    members = [load_model(p, "cpu") for p in paths]
    folds = [int(f) for f in metrics["folds"]]
    vals = [metrics["folds"][str(f)]["val_dice"] for f in folds]
    best = paths.index(metrics.get("single_checkpoint", metrics["predicted_with"]))
    sets = [
        load_eval(s.split("=", 1)[0], s.split("=", 1)[1], members, args.max_tiles) for s in specs
    ]
    holdout = (metrics.get("holdout") or {}).get("fold")
    if holdout is not None:
        sets.append(load_holdout(out, int(holdout), members, args.max_tiles))

    per_fold: dict[int, Counts] = {}
    for b in iter_oof(out, folds=folds, limit=args.max_tiles):
        per_fold.setdefault(b.fold, Counts()).add(b.proba, b.truth, b.valid)
    single_t = choose(sum_counts(per_fold))["threshold"]
    weights = {
        "equal": member_weights(len(folds), "equal"),
        "dice": member_weights(len(folds), "dice", vals),
    }
    hold = next((s for s in sets if s.name == "holdout"), None)
    thresholds: dict[str, dict[str, float]] = {}
    for f in folds:
        thresholds[f"fold {f}"] = {"0.5": 0.5, "OOF": single_t}
    if hold is not None:
        for k, f in enumerate(folds):
            c = per_tile(hold.probs[k], hold.truth)
            thresholds[f"fold {f}"]["held-out"] = float(CANDIDATES[int(np.argmax(dice_curve(c)))])
        grid = []
        for w in simplex(len(folds)):
            d = dice_curve(per_tile(mix(hold.probs, w), hold.truth))
            grid.append((float(d.max()), float(CANDIDATES[int(np.argmax(d))]), w))
        grid.sort(key=lambda g: -g[0])
        weights["held-out"] = grid[0][2]
    calib = sets[0]
    for wname, w in weights.items():
        wd = dict(zip(folds, map(float, w), strict=True))
        member_t = choose(mixture(per_fold, wd))["threshold"]
        thr = {"0.5": 0.5, "OOF (rate-matched)": rate_matched(calib, w, member_t)}
        if hold is not None:
            d = dice_curve(per_tile(mix(hold.probs, w), hold.truth))
            thr["held-out"] = float(CANDIDATES[int(np.argmax(d))])
        thresholds[f"ensemble {wname}"] = thr
    report: dict = {
        "out": str(out),
        "members": paths,
        "val_dice": dict(zip(map(str, folds), vals, strict=True)),
        "best_fold": folds[best],
        "weights": {k: [round(float(v), 3) for v in w] for k, w in weights.items()},
        "single_oof_threshold": single_t,
        "threshold_json": {"single": tuned["threshold"], "ensemble": tuned.get("ensemble")},
        "sets": {},
    }
    print(f"{out}: folds {folds}, val Dice {[round(v, 4) for v in vals]}, best fold {folds[best]}")
    print("weights: " + "; ".join(f"{k} {report['weights'][k]}" for k in weights))
    for ev in sets:
        rows = {}
        curves = {}
        for k, f in enumerate(folds):
            curves[f"fold {f}"] = per_tile(ev.probs[k].astype(np.float32), ev.truth)
        for wname, w in weights.items():
            curves[f"ensemble {wname}"] = per_tile(mix(ev.probs, w), ev.truth)
        for name, c in curves.items():
            d = dice_curve(c)
            j = int(np.argmax(d))
            rows[name] = {
                **{f"Dice @{tn} ({t:.2f})": float(d[at(t)]) for tn, t in thresholds[name].items()},
                "oracle": [float(CANDIDATES[j]), float(d[j])],
            }
        boot = {}
        if args.boot:
            single = curves[f"fold {folds[best]}"]
            for wname in weights:
                ens = curves[f"ensemble {wname}"]
                for tn in ("OOF (rate-matched)", "held-out"):
                    t_e = thresholds[f"ensemble {wname}"].get(tn)
                    t_s = thresholds[f"fold {folds[best]}"].get("OOF" if tn != "held-out" else tn)
                    if t_e is not None and t_s is not None:
                        boot[f"{wname} @{tn}"] = bootstrap(ev, ens, t_e, single, t_s, args.boot)
        report["sets"][ev.name] = {
            "tiles": len(ev.aoi),
            "aois": len(set(ev.aoi)),
            "rows": rows,
            "bootstrap": boot,
        }
        print(f"\n## {ev.name}: {len(ev.aoi)} tiles, {len(set(ev.aoi))} AOIs")
        print("| model | Dice at thresholds (t) | oracle t: Dice |")
        print("|---|---|---|")
        for name, r in rows.items():
            cells = ", ".join(
                f"{k.removeprefix('Dice @')}: {v:.4f}" for k, v in r.items() if k != "oracle"
            )
            mark = " (best fold)" if name == f"fold {folds[best]}" else ""
            print(f"| {name}{mark} | {cells} | {r['oracle'][0]:.2f}: {r['oracle'][1]:.4f} |")
        if boot:
            print(
                "\n| ensemble − best fold | observed | bootstrap mean [95 %] | P(ensemble wins) |"
            )
            print("|---|---|---|---|")
            for k, b in boot.items():
                print(
                    f"| {k} | {b['observed']:+.4f} | {b['mean']:+.4f} "
                    f"[{b['lo']:+.4f}, {b['hi']:+.4f}] | {b['p_ensemble_wins']:.2f} |"
                )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def sum_counts(per_fold: dict[int, Counts]) -> Counts:
    total = Counts()
    for c in per_fold.values():
        total.kelp = total.kelp + c.kelp
        total.water = total.water + c.water
    return total


if __name__ == "__main__":
    main()
