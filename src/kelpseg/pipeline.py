"""``kelpseg run``: stats -> AOI groups -> grouped K-fold -> train -> predict -> metrics.

Each step writes its table into the output folder, so the stage commands (``stats``,
``groups``, ``split``, ``train``) can be run one by one and pick up each other's results.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kelpseg.config import Config, dump_config
from kelpseg.data import tables
from kelpseg.data.groups import TimmSpec, compute_groups, dem_shifts
from kelpseg.data.splits import make_folds
from kelpseg.data.stats import compute_stats, mark_excluded, write_stats
from kelpseg.data.tables import input_fingerprint
from kelpseg.io import BatchReport, TileRef, discover
from kelpseg.io.discover import SAT_SUFFIX
from kelpseg.io.errors import NothingValidError
from kelpseg.io.raster import atomic_write_text


@dataclass
class Prepared:
    """Discovered tiles and the training table (stats + AOI + fold) of the valid ones.

    ``train`` holds every valid training tile, those ``data.exclude`` flags included
    (``excluded`` is True): they stay in the validation folds and only training skips them.
    """

    refs: dict[str, TileRef]
    stats: pd.DataFrame
    train: pd.DataFrame

    def test_items(self) -> list[tuple[str, Path]]:
        ids = self.stats.loc[self.stats["split"] == "test", "tile_id"]
        return [(t, self.refs[t].image) for t in ids]


def find_tiles(data: Path, *, need_train: bool = False) -> dict[str, TileRef]:
    """The tiles under ``data`` by id; one clear error when there is nothing to work on."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: not found")
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: not a folder")
    refs = {r.tile_id: r for r in discover(data)}
    if not refs:
        raise NothingValidError(f"{data}: no *{SAT_SUFFIX} tiles found")
    if need_train and not any(r.split == "train" for r in refs.values()):
        raise NothingValidError(
            f"{data}: no training tiles (*{SAT_SUFFIX} with a *_kelp.tif mask) found"
        )
    return refs


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"tile_id": str})


_FOUND = re.compile(r"expected (\d+)x\d+ pixels, found (\d+x\d+)")


def _size_hint(report: BatchReport, size: int | None) -> None:
    """Fail with a hint when every tile was rejected only for not being ``size`` px."""
    if report.ok or not report.errors or size is None:
        return
    found = [_FOUND.search(e.problem) for e in report.errors]
    if not all(found):
        return
    sizes = pd.Series([m.group(2) for m in found if m]).value_counts()
    have = ", ".join(f"{s} ({n})" for s, n in sizes.items())
    side = sizes.index[0].split("x")[0]
    what = f"are {sizes.index[0]}" if len(sizes) == 1 else f"have sizes {have}"
    raise NothingValidError(
        f"all {len(found)} tiles {what} but data.tile_size is {size}: "
        f"set --set data.tile_size={side} (or null for any size)"
    )


def run_stats(
    data: Path,
    cfg: Config,
    out: Path,
    refs: dict[str, TileRef] | None = None,
    *,
    reuse: bool = True,
    pack: bool = False,
) -> tuple[dict[str, TileRef], pd.DataFrame]:
    """Validate every tile, write ``tile_stats.csv`` and ``band_stats.json`` (or reuse them).

    With ``pack`` (and a fixed ``data.tile_size``) the same read of each training tile also
    fills the training cache ``out/cache``, so training does not read the tiles again.

    Returns the discovered tiles and the table of the valid ones, with ``excluded`` marking
    the training tiles ``data.exclude`` leaves out of training.
    """
    refs = refs if refs is not None else find_tiles(data)
    out.mkdir(parents=True, exist_ok=True)
    inputs = input_fingerprint(refs.values())
    now = tables.stamp("stats", inputs, cfg)
    if reuse and tables.fresh(out, "stats", now):
        for path, warning in (tables.saved_extra(out, "stats", "warnings") or {}).items():
            print(f"[stats] warning: {path}: {warning}", file=sys.stderr)
        skipped = tables.saved_extra(out, "stats", "skipped") or []
        if skipped:
            print(
                f"[stats] {len(skipped)} file(s) skipped: " + "; ".join(skipped[:10]),
                file=sys.stderr,
            )
            if cfg.data.strict:
                raise NothingValidError(f"stats: {len(skipped)} bad file(s) and --strict")
        return refs, _read_csv(out / "tile_stats.csv")
    size = cfg.data.tile_size
    target = None
    if pack and size is not None:
        from kelpseg.data.cache import start_pack

        train_ids = [t for t, r in refs.items() if r.split == "train" and r.mask is not None]
        target = start_pack(out / "cache", train_ids, (size, size))
    result = compute_stats(
        list(refs.values()), size=size, pack=target, pack_dem_shift=cfg.data.correct_dem_shift
    )
    _size_hint(result.report, size)
    if target is not None and len(result.tiles):
        from kelpseg.data.cache import finish_pack

        ids = result.tiles.loc[result.tiles["split"] == "train", "tile_id"].tolist()
        shifts = dem_shifts(result.tiles, ids) if cfg.data.correct_dem_shift else []
        finish_pack(target, [refs[t] for t in ids], dict(zip(ids, shifts, strict=False)))
    result.tiles = mark_excluded(result.tiles, cfg.data.exclude)
    write_stats(result, out)
    result.report.finish(strict=cfg.data.strict)
    skipped = [str(e) for e in result.report.errors]
    tables.record(out, "stats", now, skipped=skipped, warnings=result.warnings)
    return refs, result.tiles


def require_train(stats: pd.DataFrame, data: Path) -> pd.DataFrame:
    train = stats[stats["split"] == "train"]
    if train.empty:
        raise NothingValidError(f"{data}: no valid training tile left after `kelpseg stats`")
    return train


def run_groups(
    refs: dict[str, TileRef],
    stats: pd.DataFrame,
    cfg: Config,
    out: Path,
    *,
    reuse: bool = True,
) -> pd.DataFrame:
    """AOI groups of the valid training tiles -> ``groups.csv`` (or reuse it)."""
    now = tables.stamp("groups", input_fingerprint(refs.values()), cfg)
    if reuse and tables.fresh(out, "groups", now):
        return _read_csv(out / "groups.csv")
    ids = stats.loc[stats["split"] == "train", "tile_id"].tolist()
    g = cfg.groups
    groups = compute_groups(
        ids,
        [refs[t].image for t in ids],
        threshold=g.threshold,
        grid=g.grid,
        embedding=g.embedding,
        timm=TimmSpec(g.timm_model, Path(g.timm_weights) if g.timm_weights else None),
        max_group_size=g.max_group_size,
        shifts=dem_shifts(stats, ids) if cfg.data.correct_dem_shift else None,
    )
    atomic_write_text(out / "groups.csv", groups.to_csv(index=False))
    tables.record(out, "groups", now)
    return groups


def run_split(
    refs: dict[str, TileRef],
    stats: pd.DataFrame,
    groups: pd.DataFrame,
    cfg: Config,
    out: Path,
    *,
    reuse: bool = True,
) -> pd.DataFrame:
    """Stratified grouped folds -> ``splits.csv`` (or reuse it); returns the training table."""
    now = tables.stamp("splits", input_fingerprint(refs.values()), cfg)
    train = stats[stats["split"] == "train"]
    if reuse and tables.fresh(out, "splits", now):
        folds = _read_csv(out / "splits.csv")
    else:
        folds = make_folds(
            train.merge(groups[["tile_id", "aoi"]], on="tile_id"), cfg.split.folds, cfg.split.seed
        )
        atomic_write_text(out / "splits.csv", folds.to_csv(index=False))
        tables.record(out, "splits", now)
    return train.merge(folds[["tile_id", "aoi", "fold"]], on="tile_id").reset_index(drop=True)


def prepare(
    data: Path,
    cfg: Config,
    out: Path,
    refs: dict[str, TileRef] | None = None,
    *,
    reuse: bool = True,
    pack: bool = False,
) -> Prepared:
    """Stats, groups and split, reusing (with ``reuse``) each table in ``out`` that matches.

    A table is reused when the input files and the config sections it depends on are those it
    was made from (:mod:`kelpseg.data.tables`); otherwise it is recomputed and the reason said.
    """
    refs = refs if refs is not None else find_tiles(data, need_train=True)
    refs, stats = run_stats(data, cfg, out, refs, reuse=reuse, pack=pack)
    require_train(stats, data)
    groups = run_groups(refs, stats, cfg, out, reuse=reuse)
    train = run_split(refs, stats, groups, cfg, out, reuse=reuse)
    return Prepared(refs, stats, train)


def fold_list(cfg: Config) -> list[int]:
    """The folds the config asks to train (``all``: every fold but ``train.holdout_fold``)."""
    from kelpseg.config import check_holdout

    folds = cfg.train.folds
    held = cfg.train.holdout_fold
    chosen = [f for f in range(cfg.split.folds) if f != held] if folds == "all" else folds
    bad = [f for f in chosen if not 0 <= f < cfg.split.folds]
    if bad:
        raise ValueError(f"train.folds {bad} outside 0..{cfg.split.folds - 1}")
    check_holdout(cfg)  # again: split.folds may have changed since the config was validated
    return chosen


def training_tiles(train: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """The rows the folds train and validate on: all but the held-out fold's
    (``train.holdout_fold``), which no model sees."""
    held = cfg.train.holdout_fold
    return train if held is None else train[train["fold"] != held].reset_index(drop=True)


def cache_shape(train: pd.DataFrame, size: int | None) -> int | tuple[int, int]:
    """The cache's tile shape: ``data.tile_size``, or with null the largest training tile's
    height and width (smaller tiles are padded)."""
    if size is not None:
        return size
    if {"height", "width"} - set(train.columns):
        raise ValueError("tile_stats.csv has no height/width columns: rerun `kelpseg stats`")
    return int(train["height"].max()), int(train["width"].max())


def pack_training(prep: Prepared, cfg: Config, out: Path):
    """The packed cache ``out/cache`` of every valid training tile (built or reused)."""
    from kelpseg.data.cache import build_cache

    ids = prep.train["tile_id"].tolist()
    refs = [prep.refs[t] for t in ids]
    shifts = None
    if cfg.data.correct_dem_shift:
        shifts = dict(zip(ids, dem_shifts(prep.stats, ids), strict=True))
    shape = cache_shape(prep.train, cfg.data.tile_size)
    return build_cache(refs, out / "cache", shape, shifts)


def run_training(
    prep: Prepared, cfg: Config, out: Path, seconds: dict[str, float] | None = None
) -> list:
    """Pack the training tiles and train the configured folds.

    Every valid training tile is packed (validation uses the ``data.exclude``d ones too, the
    hold-out's prediction the held-out fold); training skips the rows whose ``excluded`` is
    True and the held-out fold (``train.holdout_fold``), which each fold records in
    ``fold{k}/holdout.json`` (:func:`kelpseg.infer.run_folder.held_out_fold` reads it back).
    ``seconds`` receives each fold's training time (also printed).
    """
    from kelpseg.infer.run_folder import write_holdout
    from kelpseg.train.fit import train_fold

    packed = pack_training(prep, cfg, out)
    tiles = training_tiles(prep.train, cfg)
    held = cfg.train.holdout_fold
    n_held = len(prep.train) - len(tiles)
    results = []
    for k in fold_list(cfg):
        t0 = time.perf_counter()
        result = train_fold(cfg, tiles, packed, k, out)
        write_holdout(out / f"fold{k}", held, n_held)
        results.append(result)
        took = round(time.perf_counter() - t0, 1)
        print(f"[train] fold {k}: {took} s", file=sys.stderr)
        if seconds is not None:
            seconds[f"fold{k}"] = took
    return results


def ndvi_baseline(prep: Prepared, cfg: Config, out: Path, truth: Path | None) -> dict[str, float]:
    """Fit the NDVI rule on the training tiles; score it on the test tiles when truth is given."""
    from kelpseg.baselines.ndvi import NdviRule
    from kelpseg.data.cache import open_cache
    from kelpseg.data.dem_shift import correct_dem
    from kelpseg.io import read_mask, read_tile
    from kelpseg.metrics import Counts

    packed = open_cache(out / "cache")
    rule = NdviRule()
    used = prep.train.loc[~prep.train["excluded"].astype(bool), "tile_id"].tolist()
    for i in packed.row(used):
        rule.update(np.asarray(packed.images[i]), np.asarray(packed.masks[i]))
    result: dict[str, float] = {"threshold": rule.fit()}
    if truth is not None:
        total = Counts()
        for tile_id, path in prep.test_items():
            mpath = next(Path(truth).rglob(f"{tile_id}_kelp.tif"), None)
            if mpath is not None:
                raw = read_tile(path)
                if cfg.data.correct_dem_shift:
                    raw = correct_dem(raw)  # as the cached training tiles were
                total = total + Counts.of(rule.predict(raw), read_mask(mpath))
        result["test_dice"] = total.scores()["dice"]
    return result


def _no_prediction(ids: list[str], where: Path) -> str:
    named = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    return f"{len(ids)} test tile(s) have no prediction in {where}: {named}"


def _all_test_tiles_valid(prep: Prepared) -> None:
    """``run`` scores every test tile: fail before training if one cannot be predicted."""
    valid = set(prep.stats.loc[prep.stats["split"] == "test", "tile_id"])
    bad = sorted(t for t, r in prep.refs.items() if r.split == "test" and t not in valid)
    if bad:
        named = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise NothingValidError(
            f"{len(bad)} test tile(s) cannot be read, so they would have no prediction: {named}"
        )


def _predict_test(
    prep: Prepared,
    cfg: Config,
    checkpoints: list[Path],
    dices: list[float],
    threshold: float,
    where: Path,
) -> int:
    """Predict every test tile with ``checkpoints`` (an ensemble when several, weighted by
    ``predict.weights``; ``dices``: their validation Dice, for ``dice`` weights) into ``where``
    under the ``predict`` and ``postprocess`` config; fail naming tiles left without one."""
    from kelpseg.infer.assemble import assemble
    from kelpseg.infer.predict import predict_assembly

    p = cfg.predict
    ens = assemble(checkpoints, config=cfg, threshold=threshold, dices=dices)
    pred = predict_assembly(
        ens,
        prep.test_items(),
        where,
        probabilities=p.probabilities,
        proba_format=p.proba_format,
        spread=p.spread,
    )
    pred.report.finish()
    missing = sorted(set(t for t, _ in prep.test_items()) - set(pred.masks))
    if missing:
        raise NothingValidError(_no_prediction(missing, where))
    return len(pred.masks)


NO_HOLDOUT = (
    "no held-out fold (train.holdout_fold): every validation tile trained the other folds' "
    "models, so no honest out-of-fold comparison of the ensemble with the best fold exists"
)


def choose_predictions(cfg: Config, several: bool, oof: dict | None) -> dict:
    """Which of the ensemble and the best fold predicts ``OUT/predictions`` (the one to
    submit), and why: ``predict.choose``, or for ``auto`` the higher Dice on the held-out
    fold (a tie: the single model, one network instead of several), else the ensemble.

    Returns:
        ``{"predictions": "single" | "ensemble", "by": ..., "reason": ...}`` and, when the
        held-out fold was scored, ``holdout_dice`` of both.
    """
    hold = (oof or {}).get("holdout") or {}
    dice = None
    if several and "ensemble" in hold:
        dice = {"single": hold["single"]["dice"], "ensemble": hold["ensemble"]["dice"]}
    how = cfg.predict.choose
    if not several:
        return {
            "predictions": "ensemble",
            "by": "one fold",
            "reason": "one trained fold: the best fold and the ensemble are the same model",
        }
    if how != "auto":
        got = {"predictions": how, "by": "predict.choose", "reason": f"predict.choose: {how}"}
    elif dice is not None:
        pick = hold["better"]
        other = "single" if pick == "ensemble" else "ensemble"
        got = {
            "predictions": pick,
            "by": f"held-out fold {hold['fold']}",
            "reason": f"held-out fold {hold['fold']} ({hold['tiles']} tiles no model trained "
            f"on): {pick} Dice {dice[pick]:.4f} vs {other} {dice[other]:.4f}"
            + (" (a tie: the single model)" if dice[pick] == dice[other] else ""),
        }
    elif cfg.train.holdout_fold is not None:
        got = {
            "predictions": "ensemble",
            "by": "default",
            "reason": "predict.tune_threshold is off, so the held-out fold was not scored: "
            "the ensemble by default",
        }
    else:
        got = {
            "predictions": "ensemble",
            "by": "default",
            "reason": NO_HOLDOUT + ": the ensemble by default",
        }
    if dice is not None:
        got["holdout_dice"] = dice
    return got


def run_pipeline(data: Path, cfg: Config, out: Path, truth: Path | None = None) -> dict:
    """The whole job; returns (and writes to ``out/metrics.json``) the metrics.

    After training, the threshold is tuned out of fold (``threshold.json``; unless
    ``predict.tune_threshold`` is off) and the test tiles are predicted twice: by the best
    fold's model and by the ensemble of all trained folds (``predict.weights``). The one
    :func:`choose_predictions` picks goes to ``out/predictions`` (the one to submit), the other
    to ``out/predictions_single`` or ``out/predictions_ensemble``; one trained fold is its own
    ensemble and is predicted once (``out/predictions``). With a held-out fold
    (``train.holdout_fold``) both are scored on it, the ensemble's threshold is tuned there
    and the choice is made on it. With ``truth`` both are scored side by side.
    """
    from kelpseg.infer.ensemble import member_weights
    from kelpseg.infer.evaluate import evaluate
    from kelpseg.infer.run_folder import tuned_threshold
    from kelpseg.infer.threshold import tune_threshold

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    prep = prepare(data, cfg, out, pack=True)
    _all_test_tiles_valid(prep)
    fold_seconds: dict[str, float] = {}
    results = run_training(prep, cfg, out, fold_seconds)
    t_train = time.perf_counter()
    best = max(results, key=lambda r: r.val_dice)
    p = cfg.predict
    several = len(results) > 1
    weights = member_weights(len(results), p.weights, [r.val_dice for r in results])
    single_t = ensemble_t = p.threshold
    oof = None
    if p.tune_threshold:
        oof = tune_threshold(
            out,  # on a GPU when there is one, each model's predict.batch_for its device
            folds=[r.fold for r in results],
            weights=p.weights,
            tta=p.tta,
            vote=p.vote,
            calibration=[path for _, path in prep.test_items()],
        )
        single_t = tuned_threshold(out, tta=p.tta).value
        if several and "holdout" in oof:  # compared there at its own tuned threshold
            single_t = oof["holdout"]["single"]["threshold"]
        ensemble_t = tuned_threshold(out, weights if several else None, p.vote, p.tta).value
    choice = choose_predictions(cfg, several, oof)
    t_tune = time.perf_counter()
    chosen = choice["predictions"]
    runs = {chosen: out / "predictions"}
    if several:
        other = "single" if chosen == "ensemble" else "ensemble"
        runs[other] = out / f"predictions_{other}"
    dices = [r.val_dice for r in results]
    n_test = 0
    for name, where in runs.items():
        if name == "ensemble":
            ckpts, t = [r.checkpoint for r in results], ensemble_t
            n_test = _predict_test(prep, cfg, ckpts, dices, t, where)
        else:
            n_test = _predict_test(prep, cfg, [best.checkpoint], [best.val_dice], single_t, where)
    t_pred = time.perf_counter()
    metrics: dict = {
        "train_tiles": len(prep.train),
        "test_tiles": n_test,
        "aoi_groups": int(prep.train["aoi"].nunique()),
        "folds": {
            str(r.fold): {
                "val_dice": r.val_dice,  # of the kept (best) checkpoint
                "checkpoint": str(r.checkpoint),
                "mlflow_run_id": r.run_id,
                "last_epoch": r.metrics,
            }
            for r in results
        },
        "val_dice": float(np.mean([r.val_dice for r in results])),
        "predicted_with": str(best.checkpoint),
        "ensemble": {
            "members": [str(r.checkpoint) for r in results],
            "weights": [float(w) for w in weights],
            "weights_from": p.weights,
            "vote": p.vote,
            "same_as_single": not several,
        },
        "threshold": {"single": single_t, "ensemble": ensemble_t},
        "choice": choice,
        "predictions": {k: str(v) for k, v in runs.items()},
    }
    held = cfg.train.holdout_fold
    if held is not None:
        n_held = int((prep.train["fold"] == held).sum())
        metrics["holdout"] = {"fold": held, "tiles": n_held}
        if oof is not None and "holdout" in oof:
            metrics["holdout"] = oof["holdout"]
    if oof is not None:
        keep = ("folds", "tta", "threshold", "dice", "dice_at_0.5")
        metrics["oof_threshold"] = {k: oof[k] for k in keep}
        if several:
            keep = ("threshold", "member_threshold", "members_dice", "calibration_tiles")
            ens = oof["ensemble"]
            metrics["oof_threshold"]["ensemble"] = {k: ens[k] for k in keep if k in ens}
            metrics["oof_threshold"]["ensemble"]["calibration"] = ens["calibration"]
    if truth is not None:
        metrics["test"] = {}
        for name, where in runs.items():
            scores, per_tile, report = evaluate(where, truth)
            report.finish()
            csv = "test_per_tile.csv" if name == chosen else f"test_per_tile_{name}.csv"
            atomic_write_text(out / csv, per_tile.to_csv(index=False))
            metrics["test"][name] = scores
        metrics["test"].setdefault("single", metrics["test"]["ensemble"])
    metrics["ndvi_rule"] = ndvi_baseline(prep, cfg, out, truth)
    metrics["seconds"] = {
        "train": round(t_train - t0, 1),
        "folds": fold_seconds,
        "threshold": round(t_tune - t_train, 1),
        "predict": round(t_pred - t_tune, 1),
        "total": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    return metrics
