"""Trainer assembly (``kelpseg train``): one fold = one Lightning fit = one MLflow run.

A fold writes ``OUT/fold{k}/``: ``best.ckpt`` and ``last.ckpt`` (every epoch), ``swa.ckpt`` (the
averaged weights, with ``train.swa``), the MLflow run id, ``config.yaml``,
``normalization.json`` and, once finished, ``result.json``. With
``train.resume`` (``--resume``) a finished fold is skipped and an unfinished one continues from
``last.ckpt`` in the same MLflow run; the tile sampler and the augmentation draw from
``(seed, epoch, batch)``, so the resumed run ends where an uninterrupted one would.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from kelpseg._quiet import quiet
from kelpseg.compat import ensure_torchvision

ensure_torchvision()
quiet()
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import (  # noqa: E402
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    StochasticWeightAveraging,
)
from lightning.pytorch.loggers import MLFlowLogger  # noqa: E402
from lightning.pytorch.utilities import rank_zero_only  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from kelpseg.config import Config, dump_config, flatten  # noqa: E402
from kelpseg.data.cache import PackedTiles  # noqa: E402
from kelpseg.data.dataset import PackedDataset, keep_batch, make_sampler  # noqa: E402
from kelpseg.io.raster import atomic_write_text  # noqa: E402
from kelpseg.train.images import SampleImages  # noqa: E402
from kelpseg.train.module import KelpSegModule  # noqa: E402

RESULT = "result.json"
RUN_ID = "mlflow_run_id.txt"


@dataclass
class FoldResult:
    """What one fold's training produced."""

    fold: int
    checkpoint: Path
    val_dice: float
    metrics: dict[str, float]
    run_id: str

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "checkpoint": str(self.checkpoint)}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> FoldResult:
        d = json.loads(text)
        return cls(d["fold"], Path(d["checkpoint"]), d["val_dice"], d["metrics"], d["run_id"])


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


def loaders(
    cfg: Config, packed: PackedTiles, train_tiles: pd.DataFrame, val_tiles: pd.DataFrame, fold: int
) -> tuple[DataLoader, DataLoader]:
    """The weighted-sampler training loader and the in-order validation loader.

    Both yield whole batches from one read of the packed cache (``__getitems__``); Lightning
    shards them across processes under DDP (``use_distributed_sampler``).
    """
    t = cfg.train
    train_ds = PackedDataset(packed, packed.row(train_tiles["tile_id"].tolist()))
    val_ds = PackedDataset(packed, packed.row(val_tiles["tile_id"].tolist()))
    sampler = make_sampler(
        train_tiles, t.sampler_weights, t.samples_per_epoch or len(train_ds), t.seed + fold
    )
    kw: dict = dict(batch_size=t.batch_size, collate_fn=keep_batch, num_workers=t.num_workers)
    if t.num_workers:
        kw.update(persistent_workers=True)
    if torch.cuda.is_available() and t.accelerator != "cpu":
        kw.update(pin_memory=True)
    return DataLoader(train_ds, sampler=sampler, **kw), DataLoader(val_ds, shuffle=False, **kw)


def preview_batch(
    packed: PackedTiles, val_tiles: pd.DataFrame, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed validation tiles drawn each epoch: those with the most kelp first."""
    order = val_tiles
    if "kelp_pixels" in val_tiles.columns:
        order = val_tiles.sort_values(["kelp_pixels", "tile_id"], ascending=[False, True])
    rows = np.sort(packed.row(order["tile_id"].head(n).tolist()))
    return torch.from_numpy(np.asarray(packed.images[rows])), torch.from_numpy(
        np.asarray(packed.masks[rows])
    )


def callbacks(
    cfg: Config, fold_dir: Path, preview: tuple
) -> tuple[list[Callback], ModelCheckpoint]:
    """Checkpoints (best by val/dice, and last), LR monitor, sample figures, SWA."""
    t = cfg.train
    ckpt = ModelCheckpoint(dirpath=fold_dir, filename="best", monitor="val/dice", mode="max")
    # Lightning's save_last only follows improvements of the monitor: keep every epoch's state.
    last = ModelCheckpoint(dirpath=fold_dir, filename="last", monitor=None, save_top_k=1)
    cbs: list[Callback] = [ckpt, last, LearningRateMonitor("step")]
    if t.log_images:
        cbs.append(SampleImages(*preview))
    if t.swa:
        cbs.append(
            StochasticWeightAveraging(
                swa_lrs=t.swa_lr or t.lr / 10, swa_epoch_start=t.swa_epoch_start
            )
        )
    return cbs, ckpt


def mlflow_logger(cfg: Config, out: Path, fold: int, run_id: str | None) -> MLFlowLogger:
    """The fold's MLflow run (continued when ``run_id`` is given)."""
    uri = tracking_uri(cfg, out)
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(
        experiment_name=cfg.tracking.experiment,
        run_name=f"fold{fold}",
        tracking_uri=uri,
        artifact_location=(out / "mlartifacts").resolve().as_uri(),
        log_model=False,  # train_fold logs the fold's model checkpoint itself
        run_id=run_id,
    )


def _clear_fold(fold_dir: Path) -> None:
    """Remove a previous run's checkpoints and result (a fresh run would version them)."""
    for p in [
        *fold_dir.glob("best*.ckpt"),
        *fold_dir.glob("last*.ckpt"),
        *fold_dir.glob("swa.ckpt"),
    ]:
        p.unlink()
    for name in (RESULT, RUN_ID):
        (fold_dir / name).unlink(missing_ok=True)


def _same_config(saved: Path, cfg: Config, fold: int) -> None:
    """Refuse ``--resume`` when the fold was trained (or begun) with another config."""
    import yaml

    from kelpseg.data.tables import fold_config_changes

    try:
        if saved.suffix == ".ckpt":
            state = torch.load(saved, map_location="cpu", weights_only=False, mmap=True)
            old = state.get("hyper_parameters", {}).get("config")
        else:
            old = yaml.safe_load(saved.read_text()) if saved.is_file() else None
    except Exception:  # a damaged file: say so below, no traceback
        old = None
    changes = (
        f"{saved.name} holds no readable config" if old is None else fold_config_changes(old, cfg)
    )
    if changes:
        raise ValueError(
            f"--resume: fold {fold} in {saved.parent} was trained with another config "
            f"({changes}); run without --resume to retrain it, or use a new --out"
        )


def train_fold(
    cfg: Config, tiles: pd.DataFrame, packed: PackedTiles, fold: int, out: Path
) -> FoldResult:
    """Train on every fold but ``fold``, validate on ``fold``, keep the best checkpoint.

    Args:
        cfg: The config (``train.resume`` continues an interrupted fold).
        tiles: Training tiles with ``tile_id``, ``fold`` and the ``kelpseg stats`` columns.
        packed: The packed cache holding those tiles.
        fold: The validation fold.
        out: Run folder; checkpoints go to ``out/fold{k}/``.
    """
    t = cfg.train
    fold_dir = out / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    last = fold_dir / "last.ckpt"
    if t.resume and (fold_dir / RESULT).is_file():
        _same_config(fold_dir / "config.yaml", cfg, fold)
        return FoldResult.from_json((fold_dir / RESULT).read_text())
    resume_from = last if t.resume and last.is_file() else None
    if resume_from is not None:
        _same_config(last, cfg, fold)
    rank0 = rank_zero_only.rank == 0  # DDP launches every rank through this function
    if resume_from is None and rank0:
        _clear_fold(fold_dir)

    L.seed_everything(t.seed + fold, workers=True)
    if torch.cuda.is_available() and not t.deterministic:
        torch.set_float32_matmul_precision("high")
    train_tiles = tiles[tiles["fold"] != fold]
    if "excluded" in train_tiles:  # data.exclude: out of training, still validated
        train_tiles = train_tiles[~train_tiles["excluded"].astype(bool)]
    train_tiles = train_tiles.reset_index(drop=True)
    val_tiles = tiles[tiles["fold"] == fold].reset_index(drop=True)
    if train_tiles.empty or val_tiles.empty:
        raise ValueError(f"fold {fold}: {len(train_tiles)} train / {len(val_tiles)} val tiles")

    module = KelpSegModule(cfg.model_dump(mode="json"))
    train_rows = packed.row(train_tiles["tile_id"].tolist())
    pixels = sample_pixels(packed, train_rows, cfg.features.stats_tiles, 4096, t.seed)
    module.features.fit_bounds(pixels, cfg.features.quantiles)
    train_dl, val_dl = loaders(cfg, packed, train_tiles, val_tiles, fold)

    run_id_file = fold_dir / RUN_ID
    run_id = run_id_file.read_text().strip() if resume_from and run_id_file.is_file() else None
    logger = mlflow_logger(cfg, out, fold, run_id)
    if run_id is None and rank0:
        logger.log_hyperparams(
            {
                **flatten(cfg),
                "fold": fold,
                "train_tiles": len(train_tiles),
                "val_tiles": len(val_tiles),
            }
        )
        atomic_write_text(run_id_file, logger.run_id)
    cbs, ckpt = callbacks(cfg, fold_dir, preview_batch(packed, val_tiles, t.log_images))
    trainer = L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        logger=logger,
        callbacks=cbs,
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, len(train_dl) // 2)),
        num_sanity_val_steps=0,
        deterministic=t.deterministic,
        benchmark=t.deterministic is False,
    )
    trainer.fit(module, train_dl, val_dl, ckpt_path=resume_from)

    if t.swa:  # the averaged weights are the model: save and score them
        best = fold_dir / "swa.ckpt"
        trainer.save_checkpoint(best)
        trainer.validate(module, val_dl, verbose=False)
    scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if t.swa:
        val_dice = scores.get("val/dice", float("nan"))
    else:
        best = Path(ckpt.best_model_path)
        score = ckpt.best_model_score
        val_dice = float(score) if score is not None else float("nan")
    result = FoldResult(fold, best, val_dice, scores, logger.run_id)
    if trainer.is_global_zero:
        client = logger.experiment
        atomic_write_text(fold_dir / "config.yaml", dump_config(cfg))
        atomic_write_text(
            fold_dir / "normalization.json", json.dumps(module.features.bounds(), indent=2)
        )
        for name in ("config.yaml", "normalization.json"):
            client.log_artifact(logger.run_id, str(fold_dir / name))
        client.log_artifact(logger.run_id, str(best), "best")  # the fold's model
        client.log_metric(logger.run_id, "best/val_dice", val_dice)
        atomic_write_text(fold_dir / RESULT, result.to_json())
    return result
