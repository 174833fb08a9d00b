"""``kelpseg run``: stats -> AOI groups -> grouped K-fold -> train -> predict -> metrics.

Each step writes its table into the output folder, so the stage commands (``stats``,
``groups``, ``split``, ``train``) can be run one by one and pick up each other's results.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kelpseg.config import Config, dump_config
from kelpseg.data.groups import TimmSpec, compute_groups, dem_shifts
from kelpseg.data.splits import make_folds
from kelpseg.data.stats import compute_stats, mark_excluded, write_stats
from kelpseg.io import TileRef, discover
from kelpseg.io.raster import atomic_write_text


@dataclass
class Prepared:
    """Discovered tiles and the training table (stats + AOI + fold) of the valid ones."""

    refs: dict[str, TileRef]
    stats: pd.DataFrame
    train: pd.DataFrame

    def test_items(self) -> list[tuple[str, Path]]:
        ids = self.stats.loc[self.stats["split"] == "test", "tile_id"]
        return [(t, self.refs[t].image) for t in ids]


def run_stats(data: Path, cfg: Config, out: Path) -> tuple[dict[str, TileRef], pd.DataFrame]:
    """Validate every tile, write ``tile_stats.csv`` and ``band_stats.json``.

    Returns the discovered tiles and the table of the usable ones: valid tiles less the
    training tiles ``data.exclude`` leaves out (``tile_stats.csv`` keeps those, ``excluded``).
    """
    refs = {r.tile_id: r for r in discover(data)}
    result = compute_stats(list(refs.values()), size=cfg.data.tile_size)
    result.tiles = mark_excluded(result.tiles, cfg.data.exclude)
    write_stats(result, out)
    result.report.finish(strict=cfg.data.strict)
    return refs, result.tiles[~result.tiles["excluded"]].reset_index(drop=True)


def run_groups(
    refs: dict[str, TileRef], stats: pd.DataFrame, cfg: Config, out: Path
) -> pd.DataFrame:
    """AOI groups of the valid training tiles -> ``groups.csv``."""
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
    return groups


def run_split(stats: pd.DataFrame, groups: pd.DataFrame, cfg: Config, out: Path) -> pd.DataFrame:
    """Stratified grouped folds -> ``splits.csv``; returns the training table."""
    train = stats[stats["split"] == "train"].merge(groups[["tile_id", "aoi"]], on="tile_id")
    folds = make_folds(train, cfg.split.folds, cfg.split.seed)
    atomic_write_text(out / "splits.csv", folds.to_csv(index=False))
    return train.merge(folds[["tile_id", "fold"]], on="tile_id")


def prepare(data: Path, cfg: Config, out: Path, *, reuse: bool = False) -> Prepared:
    """Stats, groups and split, reusing tables already in ``out`` when ``reuse``."""
    out.mkdir(parents=True, exist_ok=True)
    refs = {r.tile_id: r for r in discover(data)}
    have = all((out / n).is_file() for n in ("tile_stats.csv", "groups.csv", "splits.csv"))
    if reuse and have:
        stats = pd.read_csv(out / "tile_stats.csv")
        folds = pd.read_csv(out / "splits.csv")
        train = stats[stats["split"] == "train"].merge(folds, on="tile_id")
        return Prepared(refs, stats, train)
    refs, stats = run_stats(data, cfg, out)
    groups = run_groups(refs, stats, cfg, out)
    train = run_split(stats, groups, cfg, out)
    return Prepared(refs, stats, train)


def fold_list(cfg: Config) -> list[int]:
    """The folds the config asks to train."""
    folds = cfg.train.folds
    chosen = list(range(cfg.split.folds)) if folds == "all" else folds
    bad = [f for f in chosen if not 0 <= f < cfg.split.folds]
    if bad:
        raise ValueError(f"train.folds {bad} outside 0..{cfg.split.folds - 1}")
    return chosen


def run_training(prep: Prepared, cfg: Config, out: Path) -> list:
    """Pack the training tiles and train the configured folds."""
    from kelpseg.data.cache import build_cache
    from kelpseg.train.fit import train_fold

    ids = prep.train["tile_id"].tolist()
    refs = [prep.refs[t] for t in ids]
    shifts = None
    if cfg.data.correct_dem_shift:
        shifts = dict(zip(ids, dem_shifts(prep.stats, ids), strict=True))
    packed = build_cache(refs, out / "cache", cfg.data.tile_size or 350, shifts)
    return [train_fold(cfg, prep.train, packed, k, out) for k in fold_list(cfg)]


def ndvi_baseline(prep: Prepared, cfg: Config, out: Path, truth: Path | None) -> dict[str, float]:
    """Fit the NDVI rule on the training tiles; score it on the test tiles when truth is given."""
    from kelpseg.baselines.ndvi import NdviRule
    from kelpseg.data.cache import open_cache
    from kelpseg.data.dem_shift import correct_dem
    from kelpseg.io import read_mask, read_tile
    from kelpseg.metrics import Counts

    packed = open_cache(out / "cache")
    rule = NdviRule()
    for i in range(len(packed.tile_ids)):
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


def run_pipeline(data: Path, cfg: Config, out: Path, truth: Path | None = None) -> dict:
    """The whole job; returns (and writes to ``out/metrics.json``) the metrics."""
    from kelpseg.infer.evaluate import evaluate
    from kelpseg.infer.predict import load_model, predict_tiles

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    prep = prepare(data, cfg, out)
    results = run_training(prep, cfg, out)
    t_train = time.perf_counter()
    best = max(results, key=lambda r: r.val_dice)
    model = load_model(best.checkpoint)
    pred = predict_tiles(
        model,
        prep.test_items(),
        out / "predictions",
        threshold=cfg.predict.threshold,
        batch_size=cfg.predict.batch_size,
        probabilities=cfg.predict.probabilities,
    )
    pred.report.finish()
    metrics: dict = {
        "train_tiles": len(prep.train),
        "test_tiles": len(pred.masks),
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
        "threshold": cfg.predict.threshold,
    }
    if truth is not None:
        scores, per_tile, report = evaluate(out / "predictions", truth)
        report.finish()
        atomic_write_text(out / "test_per_tile.csv", per_tile.to_csv(index=False))
        metrics["test"] = scores
    metrics["ndvi_rule"] = ndvi_baseline(prep, cfg, out, truth)
    metrics["seconds"] = {
        "train": round(t_train - t0, 1),
        "total": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    return metrics
