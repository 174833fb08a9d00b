"""The per-pixel XGBoost baseline (``kelpseg xgb``): bands + spectral indices -> kelp.

The seed tried it ("XGBoost on pixel-level with all spectral indices", public LB 0.5125) and
kept the network. Here it runs on the networks' own folds (``kelpseg.pipeline.prepare``: the
stats, AOI groups, splits and packed cache of the same output folder) so the two compare on
one split.

Features are :meth:`kelpseg.features.pipeline.FeatureBuilder.raw_features` of the config's
``features`` section: the configured bands and indices in physical units, *before*
normalization (trees are invariant to the per-channel monotone scaling of the global modes),
with missing pixels left NaN for XGBoost's own missing-value handling.

Training pixels are class-balanced per fold: the same number of kelp and non-kelp pixels,
``min(kelp, non-kelp, xgb.pixels_per_class)``, drawn uniformly (seeded) from the training
folds' valid pixels (non-kelp from every valid pixel, or only water with
``xgb.negatives: water``). Pixels missing in the input are never drawn.

A fold writes ``OUT/xgb/fold{k}/``: ``model.json`` (the booster), ``config.yaml`` and
``result.json`` (``fold``, ``checkpoint`` = the model file, ``val_dice``), the layout
``kelpseg threshold`` reads. Validation Dice is the global kelp Dice of
:class:`kelpseg.metrics.Counts` over all pixels of the fold's tiles (missing pixels predicted
0) at ``xgb.threshold``. Balanced sampling inflates the kelp odds by (non-kelp / kelp pixels
available); with ``xgb.prior_correction`` the model adds the log of the inverse ratio to its
margin, so its probabilities are those of the training tiles again. By default
(``xgb.tune_threshold``) the threshold is then tuned out of fold by
:func:`kelpseg.infer.threshold.tune_threshold` (``OUT/xgb/threshold.json``). Test tiles are
predicted at that threshold by the best fold's model into ``OUT/xgb/predictions`` with the
network's naming and nodata rules (``{id}_kelp.tif``, uint8 0/1, 255 where the input is
missing, CRS and transform kept).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from kelpseg.config import Config, dump_config, load_config
from kelpseg.data.cache import PackedTiles
from kelpseg.features.pipeline import FeatureBuilder, water_mask
from kelpseg.io import BatchReport
from kelpseg.io.raster import atomic_output, atomic_write_text
from kelpseg.io.tiles import missing_pixels
from kelpseg.metrics import Counts

MODEL_FILE = "model.json"
RESULT = "result.json"
IMPORTANCE_CSV = "importance.csv"
IMPORTANCE_PNG = "importance.png"
PRIOR_ATTR = "kelpseg_prior_logit"


def _threads(n_jobs: int | None) -> int:
    if n_jobs:
        return n_jobs
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class XgbModel:
    """A trained booster with the feature builder that makes its inputs.

    Offers ``predict_proba`` on raw ``(B, 7, H, W)`` tiles and ``device`` like the network's
    module, so out-of-fold threshold tuning treats both alike.
    """

    device = torch.device("cpu")

    def __init__(self, booster, cfg: Config) -> None:
        self.booster = booster
        self.cfg = cfg
        self.features = FeatureBuilder.from_config(cfg.features)

    @property
    def channel_names(self) -> list[str]:
        return self.features.channel_names

    def pixel_features(self, raw: np.ndarray | torch.Tensor) -> np.ndarray:
        """``(B, C, H, W)`` float32 features of raw tiles (NaN where missing)."""
        t = raw if torch.is_tensor(raw) else torch.tensor(np.asarray(raw))  # a copy: memmaps
        with torch.no_grad():
            return self.features.raw_features(t.cpu()).numpy()

    def predict_proba(self, raw: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Kelp probability ``(B, H, W)`` of raw tiles."""
        f = self.pixel_features(raw)
        b, c, h, w = f.shape
        x = f.transpose(0, 2, 3, 1).reshape(-1, c)
        margin = np.asarray(self.booster.inplace_predict(x, predict_type="margin"))
        logit = torch.from_numpy(margin.astype(np.float32).reshape(b, h, w))
        return torch.sigmoid(logit + self.prior_logit)

    @property
    def prior_logit(self) -> float:
        """Log-odds added to the booster's margin (0, or the balanced-sampling correction)."""
        return float(self.booster.attr(PRIOR_ATTR) or 0.0)

    def save(self, folder: Path) -> Path:
        """``model.json`` and ``config.yaml`` into ``folder`` (atomic); returns the model file."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MODEL_FILE
        with atomic_output(path, keep_suffix=True) as tmp:  # the suffix picks JSON
            self.booster.save_model(tmp)
        atomic_write_text(folder / "config.yaml", dump_config(self.cfg))
        return path


def is_xgb_model(path: Path) -> bool:
    """Whether ``path`` is a model file written by :meth:`XgbModel.save`."""
    return Path(path).suffix == ".json" and (Path(path).parent / "config.yaml").is_file()


def load_xgb(path: str | Path) -> XgbModel:
    """Load ``OUT/xgb/fold{k}/model.json`` with the ``config.yaml`` beside it."""
    import xgboost as xgb

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: XGBoost model not found")
    cfg = load_config(path.parent / "config.yaml")
    booster = xgb.Booster()
    try:
        booster.load_model(path)
    except xgb.core.XGBoostError as err:
        raise ValueError(f"{path}: not a readable XGBoost model") from err
    booster.set_param({"nthread": _threads(cfg.xgb.n_jobs)})
    return XgbModel(booster, cfg)


@dataclass
class Sample:
    """Balanced training pixels of one fold."""

    x: np.ndarray  # (2n, C) float32
    y: np.ndarray  # (2n,) uint8
    kelp_available: int
    other_available: int


def _classes(raw: np.ndarray, mask: np.ndarray, negatives: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the drawable kelp and non-kelp pixels of one raw tile."""
    valid = ~missing_pixels(raw)
    kelp = valid & (mask == 1)
    other = valid & (mask != 1)
    if negatives == "water":
        other &= water_mask(torch.from_numpy(raw[None]))[0, 0].numpy()
    return np.flatnonzero(kelp), np.flatnonzero(other)


def _split_draw(counts: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` distinct positions among ``sum(counts)``, split into per-tile local positions."""
    total = int(counts.sum())
    picks = np.sort(rng.choice(total, size=n, replace=False)) if n < total else np.arange(total)
    starts = np.concatenate([[0], np.cumsum(counts)])
    tile = np.searchsorted(starts, picks, side="right") - 1
    return [picks[tile == i] - starts[i] for i in range(len(counts))]


def sample_pixels(
    model: XgbModel, packed: PackedTiles, ids: list[str], cap: int, seed: int, negatives: str
) -> Sample:
    """Equal numbers of kelp and non-kelp pixels (at most ``cap`` each) from tiles ``ids``.

    Two passes over the cache: count the drawable pixels of each class per tile, draw the
    global positions (seeded), then gather the drawn raw pixels and compute their features in
    one call (every feature is per pixel).
    """
    rows = packed.row(ids)
    kelp_n = np.zeros(len(rows), dtype=np.int64)
    other_n = np.zeros(len(rows), dtype=np.int64)
    for i, r in enumerate(tqdm(rows, desc="xgb count", leave=False)):
        k, o = _classes(np.asarray(packed.images[r]), np.asarray(packed.masks[r]), negatives)
        kelp_n[i], other_n[i] = len(k), len(o)
    n = int(min(kelp_n.sum(), other_n.sum(), cap))
    if n == 0:
        raise ValueError(
            f"no {'kelp' if kelp_n.sum() == 0 else 'non-kelp'} pixel to train on in "
            f"{len(ids)} training tile(s)"
        )
    rng = np.random.default_rng(seed)
    kelp_pick, other_pick = _split_draw(kelp_n, n, rng), _split_draw(other_n, n, rng)
    pixels, ys = [], []
    for i, r in enumerate(tqdm(rows, desc="xgb sample", leave=False)):
        if not len(kelp_pick[i]) and not len(other_pick[i]):
            continue
        raw = np.asarray(packed.images[r])
        k, o = _classes(raw, np.asarray(packed.masks[r]), negatives)
        for flat, y in ((k[kelp_pick[i]], 1), (o[other_pick[i]], 0)):
            pixels.append(raw.reshape(raw.shape[0], -1)[:, flat])
            ys.append(np.full(len(flat), y, dtype=np.uint8))
    drawn = np.concatenate(pixels, axis=1)  # (7, N) raw pixels as one (1, 7, 1, N) "tile"
    x = model.pixel_features(drawn[None, :, None, :])[0, :, 0, :].T
    return Sample(
        np.ascontiguousarray(x), np.concatenate(ys), int(kelp_n.sum()), int(other_n.sum())
    )


def classifier(cfg: Config):
    """The ``xgboost.XGBClassifier`` of ``cfg.xgb`` (hist trees)."""
    import xgboost as xgb

    x = cfg.xgb
    params = {
        "tree_method": "hist",
        "n_estimators": x.n_estimators,
        "max_depth": x.max_depth,
        "learning_rate": x.learning_rate,
        "subsample": x.subsample,
        "colsample_bytree": x.colsample_bytree,
        "n_jobs": _threads(x.n_jobs),
        "random_state": x.seed,
    }
    return xgb.XGBClassifier(**(params | x.kwargs))  # xgb.kwargs win


def score_tiles(
    model: XgbModel, packed: PackedTiles, ids: list[str], threshold: float, batch: int = 4
) -> Counts:
    """Kelp confusion counts of ``model`` over every pixel of the cached tiles ``ids``."""
    total = Counts()
    rows = packed.row(ids)
    for start in tqdm(range(0, len(rows), batch), desc="xgb validate", leave=False):
        raw = np.asarray(packed.images[rows[start : start + batch]])
        proba = model.predict_proba(raw).numpy()
        for r, p, m in zip(raw, proba, packed.masks[rows[start : start + batch]], strict=True):
            pred = (p >= threshold) & ~missing_pixels(r)
            total = total + Counts.of(pred, np.asarray(m))
    return total


@dataclass
class XgbFold:
    """What one fold's training produced (``result.json``)."""

    fold: int
    checkpoint: Path
    val_dice: float
    seconds: float
    train_pixels: int
    kelp_pixels_available: int
    other_pixels_available: int
    kind: str = "xgboost"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "checkpoint": str(self.checkpoint)}, indent=2)


def train_fold(
    cfg: Config, train: pd.DataFrame, packed: PackedTiles, fold: int, folder: Path
) -> tuple[XgbFold, XgbModel]:
    """Fit on the balanced pixels of every fold but ``fold``, validate on ``fold``.

    Tiles whose ``excluded`` column is true are validated on but not trained on, as in the
    network's training.
    """
    from kelpseg.data.datamodule import fold_tiles

    fold_dir = folder / f"fold{fold}"
    (fold_dir / RESULT).unlink(missing_ok=True)
    fit_tiles, val_tiles = fold_tiles(train, fold)  # as the network splits them
    fit_ids, val_ids = fit_tiles["tile_id"].tolist(), val_tiles["tile_id"].tolist()
    t0 = time.perf_counter()
    clf = classifier(cfg)
    model = XgbModel(None, cfg)
    x = cfg.xgb
    sample = sample_pixels(model, packed, fit_ids, x.pixels_per_class, x.seed + fold, x.negatives)
    clf.fit(sample.x, sample.y)
    model.booster = clf.get_booster()
    model.booster.feature_names = model.channel_names
    if x.prior_correction:  # sampled odds -> the training tiles' odds (case-control offset)
        offset = np.log(sample.kelp_available / sample.other_available)
        model.booster.set_attr(**{PRIOR_ATTR: repr(float(offset))})
    seconds = time.perf_counter() - t0
    dice = score_tiles(model, packed, val_ids, x.threshold).scores()["dice"]
    path = model.save(fold_dir)
    result = XgbFold(
        fold, path, float(dice), round(seconds, 2), len(sample.y),
        sample.kelp_available, sample.other_available,
    )  # fmt: skip
    atomic_write_text(fold_dir / RESULT, result.to_json())  # last: the fold is finished
    return result, model


def importances(models: dict[int, XgbModel]) -> pd.DataFrame:
    """Gain importance per feature and fold, with the mean, most important first."""
    cols = {}
    for fold, m in models.items():
        gain = m.booster.get_score(importance_type="gain")
        cols[f"gain_fold{fold}"] = [float(gain.get(n, 0.0)) for n in m.channel_names]
    names = next(iter(models.values())).channel_names
    table = pd.DataFrame({"feature": names, **cols})
    table["gain_mean"] = table[list(cols)].mean(axis=1)
    total = table["gain_mean"].sum()
    table["share"] = table["gain_mean"] / total if total > 0 else 0.0
    return table.sort_values("gain_mean", ascending=False, ignore_index=True)


def plot_importance(table: pd.DataFrame, path: Path, top: int) -> Path:
    """Horizontal bars of the ``top`` features by mean gain (PNG, written atomically)."""
    from kelpseg.eda.plots import plt, save_figure  # Agg backend

    t = table.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(t) + 1.2))
    ax.barh(t["feature"], t["gain_mean"], color="tab:green")
    ax.set_xlabel("mean gain over folds")
    ax.set_title(f"XGBoost feature importance (top {len(t)})")
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def predict_items(
    model: XgbModel,
    items: list[tuple[str, Path]],
    out: Path,
    *,
    threshold: float,
    probabilities: bool = False,
) -> tuple[dict[str, Path], BatchReport]:
    """``{id}_kelp.tif`` (uint8 0/1, 255 where the input is missing, georeference kept) per
    ``(tile_id, path)``; with ``probabilities`` also ``{id}_proba.tif`` (the config's
    ``predict.proba_format``). The networks' pipeline (:mod:`kelpseg.infer.pipeline`): a tile
    that cannot be read is reported and skipped, writes are atomic."""
    from kelpseg.data.dem_shift import correct_dem
    from kelpseg.infer import pipeline

    def engine(raw: np.ndarray) -> tuple[torch.Tensor, None]:
        if model.cfg.data.correct_dem_shift:  # as the cached training tiles were
            raw = np.stack([correct_dem(r) for r in raw])
        return model.predict_proba(raw), None  # per-pixel trees: the DEM fix is not the cost

    fmt = model.cfg.predict.proba_format
    outputs = pipeline.Outputs(
        threshold=threshold, cut=threshold, probabilities=probabilities, proba_format=fmt
    )
    settings = {"model": "xgboost", **outputs.settings()}
    res = pipeline.run(
        engine,
        items,
        out,
        outputs,
        batch_size=model.cfg.predict.batch_size,
        fingerprint=pipeline.fingerprint([bytes(model.booster.save_raw())], settings),
    )
    return res.masks, res.report


def log_runs(cfg: Config, out: Path, folder: Path, results: dict[int, XgbFold]) -> None:
    """One finished MLflow run per fold in the networks' store, so ``kelpseg runs`` lists the
    baseline beside them (tag ``kelpseg.out`` = ``folder``; arch ``xgboost``)."""
    from mlflow.entities import Param

    from kelpseg._quiet import quiet
    from kelpseg.config import flatten
    from kelpseg.train.fit import RUN_GROUP_TAG, experiment

    quiet()
    client, exp_id = experiment(cfg, out)
    skip = ("model.", "train.", "augment.", "postprocess.", "tracking.")
    params = {k: v for k, v in flatten(cfg).items() if not k.startswith(skip)}
    params |= {"model.arch": "xgboost", "model.encoder": "hist"}
    for k, r in results.items():
        run = client.create_run(
            exp_id,
            run_name=f"xgb fold{k}",
            tags={RUN_GROUP_TAG: str(folder.resolve()), "checkpoint": str(r.checkpoint)},
        )
        rid = run.info.run_id
        items = [Param(n, str(v)[:6000]) for n, v in {**params, "fold": k}.items()]
        client.log_batch(rid, params=items)  # MLflow splits it into accepted batches
        client.log_metric(rid, "best/val_dice", r.val_dice)
        client.set_terminated(rid, "FINISHED")


def run_xgb(data: Path, cfg: Config, out: Path, truth: Path | None = None) -> dict:
    """The whole baseline in ``out``: prepare (shared with the networks), train the configured
    folds into ``out/xgb``, importances, predict the test tiles, ``out/xgb/metrics.json``."""
    from kelpseg.pipeline import fold_list, pack_training, prepare

    t0 = time.perf_counter()
    folds = fold_list(cfg)
    prep = prepare(data, cfg, out, pack=True)
    packed = pack_training(prep, cfg, out)  # the networks' cache, shared
    folder = out / "xgb"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.yaml", dump_config(cfg))
    results: dict[int, XgbFold] = {}
    models: dict[int, XgbModel] = {}
    for k in folds:
        results[k], models[k] = train_fold(cfg, prep.train, packed, k, folder)
        print(f"[xgb] fold {k}: val Dice {results[k].val_dice:.4f} ({results[k].seconds:.1f} s)")
    table = importances(models)
    atomic_write_text(folder / IMPORTANCE_CSV, table.to_csv(index=False))
    plot_importance(table, folder / IMPORTANCE_PNG, cfg.xgb.top_features)
    best = max(results.values(), key=lambda r: r.val_dice)
    threshold, tuned = cfg.xgb.threshold, None
    if cfg.xgb.tune_threshold:
        from kelpseg.infer.threshold import tune_threshold

        tuned = tune_threshold(folder)
        threshold = tuned["threshold"]
    masks, report = predict_items(
        models[best.fold],
        prep.test_items(),
        folder / "predictions",
        threshold=threshold,
        probabilities=cfg.predict.probabilities,
    )
    if prep.test_items():
        report.finish()
    dice = [r.val_dice for r in results.values()]
    metrics: dict = {
        "model": "xgboost",
        "features": models[best.fold].channel_names,
        "folds": {str(k): json.loads(r.to_json()) for k, r in results.items()},
        "val_dice": float(np.mean(dice)),
        "val_dice_std": float(np.std(dice)),
        "train_seconds": round(sum(r.seconds for r in results.values()), 2),
        "predicted_with": str(best.checkpoint),
        "threshold": threshold,
        "test_tiles": len(masks),
    }
    if tuned is not None:
        metrics["oof_dice"] = {"tuned": tuned["dice"], "at_0.5": tuned["dice_at_0.5"]}
    if truth is not None:
        from kelpseg.infer.evaluate import evaluate, json_safe

        scores, per_tile, ev_report = evaluate(folder / "predictions", truth)
        ev_report.finish()
        atomic_write_text(folder / "test_per_tile.csv", per_tile.to_csv(index=False))
        metrics["test"] = json_safe(scores)
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2, default=float))
    log_runs(cfg, out, folder, results)  # after metrics.json: a listed run is complete
    return metrics
