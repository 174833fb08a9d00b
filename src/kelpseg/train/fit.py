"""Trainer assembly (``kelpseg train``): one fold = one Lightning fit = one MLflow run."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kelpseg._quiet import quiet
from kelpseg.compat import ensure_torchvision

ensure_torchvision()
quiet()

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import MLFlowLogger  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from kelpseg.config import Config, dump_config, flatten  # noqa: E402
from kelpseg.data.cache import PackedTiles  # noqa: E402
from kelpseg.data.dataset import PackedDataset, keep_batch, make_sampler  # noqa: E402
from kelpseg.train.module import KelpSegModule  # noqa: E402


@dataclass
class FoldResult:
    """What one fold's training produced."""

    fold: int
    checkpoint: Path
    val_dice: float
    metrics: dict[str, float]
    run_id: str


def tracking_uri(cfg: Config, out: Path) -> str:
    """The MLflow store: the config's, or a SQLite file inside ``out``."""
    return cfg.tracking.uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"


def sample_pixels(
    packed: PackedTiles, rows: np.ndarray, n_tiles: int, pixels: int, seed: int
) -> torch.Tensor:
    """``(1, 7, 1, n_tiles * pixels)`` raw pixels drawn from up to ``n_tiles`` tiles (for stats)."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(rows, size=min(n_tiles, len(rows)), replace=False))
    imgs = np.asarray(packed.images[chosen]).reshape(len(chosen), 7, -1)
    idx = rng.integers(0, imgs.shape[-1], size=(len(chosen), pixels))
    px = np.take_along_axis(imgs, idx[:, None, :], axis=2)  # (n, 7, pixels)
    return torch.from_numpy(px.transpose(1, 0, 2).reshape(1, 7, 1, -1).copy())


def train_fold(
    cfg: Config, tiles: pd.DataFrame, packed: PackedTiles, fold: int, out: Path
) -> FoldResult:
    """Train on every fold but ``fold``, validate on ``fold``, keep the best checkpoint.

    Args:
        cfg: The config.
        tiles: Training tiles with ``tile_id``, ``fold`` and the ``kelpseg stats`` columns.
        packed: The packed cache holding those tiles.
        fold: The validation fold.
        out: Run folder; checkpoints go to ``out/fold{k}/``.
    """
    t = cfg.train
    L.seed_everything(t.seed + fold, workers=True)
    train_tiles = tiles[tiles["fold"] != fold].reset_index(drop=True)
    val_tiles = tiles[tiles["fold"] == fold].reset_index(drop=True)
    if train_tiles.empty or val_tiles.empty:
        raise ValueError(f"fold {fold}: {len(train_tiles)} train / {len(val_tiles)} val tiles")
    train_rows = packed.row(train_tiles["tile_id"].tolist())
    val_rows = packed.row(val_tiles["tile_id"].tolist())

    module = KelpSegModule(cfg.model_dump(mode="json"))
    pixels = sample_pixels(packed, train_rows, cfg.features.stats_tiles, 4096, t.seed)
    module.features.fit_bounds(pixels, cfg.features.quantiles)

    train_ds = PackedDataset(packed, train_rows)
    sampler = make_sampler(
        train_tiles, t.sampler_weights, t.samples_per_epoch or len(train_ds), t.seed + fold
    )
    loader_kw = dict(batch_size=t.batch_size, collate_fn=keep_batch, num_workers=t.num_workers)
    if t.num_workers:
        loader_kw.update(persistent_workers=True)
    train_dl = DataLoader(train_ds, sampler=sampler, **loader_kw)
    val_dl = DataLoader(PackedDataset(packed, val_rows), shuffle=False, **loader_kw)

    fold_dir = out / f"fold{fold}"
    uri = tracking_uri(cfg, out)
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    logger = MLFlowLogger(
        experiment_name=cfg.tracking.experiment,
        run_name=f"fold{fold}",
        tracking_uri=uri,
        artifact_location=(out / "mlartifacts").resolve().as_uri(),
        log_model=True,
    )
    logger.log_hyperparams(
        {**flatten(cfg), "fold": fold, "train_tiles": len(train_tiles), "val_tiles": len(val_tiles)}
    )
    ckpt = ModelCheckpoint(
        dirpath=fold_dir, filename="best", monitor="val/dice", mode="max", save_last=True
    )
    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        precision=t.precision,
        logger=logger,
        callbacks=[ckpt, LearningRateMonitor("step")],
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, len(train_dl) // 2)),
        num_sanity_val_steps=0,
        deterministic=False,
    )
    trainer.fit(module, train_dl, val_dl)

    best = Path(ckpt.best_model_path)
    scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    val_dice = float(ckpt.best_model_score) if ckpt.best_model_score is not None else float("nan")
    client = logger.experiment
    (fold_dir / "config.yaml").write_text(dump_config(cfg))
    (fold_dir / "normalization.json").write_text(json.dumps(module.features.bounds(), indent=2))
    for name in ("config.yaml", "normalization.json"):
        client.log_artifact(logger.run_id, str(fold_dir / name))
    client.log_metric(logger.run_id, "best/val_dice", val_dice)
    return FoldResult(fold, best, val_dice, scores, logger.run_id)
