"""Trainer assembly (``kelpseg train``): one fold = one Lightning fit = one MLflow run.

A fold writes ``OUT/fold{k}/``: ``best.ckpt`` and ``last.ckpt`` (every epoch; a link to
``best.ckpt`` when the last epoch is the best), ``swa.ckpt`` (the averaged weights, with
``train.swa``; a link to ``last.ckpt`` when that holds them), the MLflow run id, ``config.yaml``,
``normalization.json`` and, once finished, ``result.json``. Checkpoints are stored once: the
MLflow run records the checkpoint's path (tag ``checkpoint``), not a copy. With
``train.resume`` (``--resume``) a finished fold is skipped and an unfinished one continues from
``last.ckpt`` in the same MLflow run; the tile sampler and the augmentation draw from
``(seed, epoch, batch)``, so the resumed run ends where an uninterrupted one would.

The data side (fold rows, loaders, preview batch, normalization sample) is
:class:`kelpseg.data.datamodule.KelpDataModule`; this module builds the network, the trainer
and the logger, fits, and saves the fold's results.
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

from kelpseg.config import Config, dump_config, flatten  # noqa: E402
from kelpseg.data.cache import PackedTiles  # noqa: E402
from kelpseg.data.datamodule import KelpDataModule  # noqa: E402
from kelpseg.io.raster import atomic_write_text  # noqa: E402
from kelpseg.runs import GROUP_TAG  # noqa: E402
from kelpseg.train.images import SampleImages  # noqa: E402
from kelpseg.train.module import KelpSegModule  # noqa: E402

RESULT = "result.json"
RUN_ID = "mlflow_run_id.txt"
RUN_GROUP_TAG = GROUP_TAG  # kelpseg.runs groups fold runs by it
"""MLflow tag of every fold run: the run folder (``kelpseg runs`` groups fold runs by it)."""


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
    """The MLflow store: the config's, or a SQLite file inside ``out``. A file store (which
    MLflow 3 refuses unless told) is allowed, as the user asked for it."""
    uri = cfg.tracking.uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def experiment(cfg: Config, out: Path):
    """``(MlflowClient, experiment id)`` of the config's store and experiment, created (with
    its artifacts in ``out/mlartifacts``) when missing."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(cfg, out))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return client, exp.experiment_id
    artifacts = (out / "mlartifacts").resolve().as_uri()
    return client, client.create_experiment(cfg.tracking.experiment, artifact_location=artifacts)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every epoch, as a link to ``best.ckpt`` when both are the same epoch.

    Lightning's ``save_last`` only follows improvements of the monitor, hence a second
    callback. When ``best`` saved at this step the state (with both callbacks' paths updated)
    is written to ``best.ckpt`` and ``last.ckpt`` links to it, so one epoch is stored once.
    Every write goes to a temporary file renamed over the target: a link is replaced, never
    written through, and a killed run leaves the previous state.

    Args:
        best: The best-by-monitor checkpoint callback (listed before this one).
        dirpath: The fold folder.
    """

    def __init__(self, best: ModelCheckpoint, dirpath: Path) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1)
        self.best = best

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        same = bool(self.best.best_model_path) and (
            self.best._last_global_step_saved == trainer.global_step
        )
        target = Path(self.best.best_model_path if same else filepath)
        tmp = target.with_name(f".{target.name}.tmp")
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, target)
            if same:
                link = Path(filepath).with_name(f".{Path(filepath).name}.tmp")
                link.unlink(missing_ok=True)
                link.symlink_to(os.path.relpath(target, link.parent))
                os.replace(link, filepath)
        trainer.strategy.barrier()
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


def callbacks(
    cfg: Config, fold_dir: Path, preview: tuple
) -> tuple[list[Callback], ModelCheckpoint]:
    """Checkpoints (best by val/dice, and last), LR monitor, sample figures, SWA."""
    t = cfg.train
    ckpt = ModelCheckpoint(dirpath=fold_dir, filename="best", monitor="val/dice", mode="max")
    last = LastCheckpoint(ckpt, fold_dir)
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


def mlflow_logger(
    cfg: Config, out: Path, fold: int, run_id: str | None, parent_run_id: str | None = None
) -> MLFlowLogger:
    """The fold's MLflow run (continued when ``run_id`` is given), nested under
    ``parent_run_id`` when given (``kelpseg tune``: the trial's run)."""
    uri = tracking_uri(cfg, out)
    return MLFlowLogger(
        experiment_name=cfg.tracking.experiment,
        run_name=f"fold{fold}",
        tracking_uri=uri,
        artifact_location=(out / "mlartifacts").resolve().as_uri(),
        log_model=False,  # checkpoints stay in the fold folder, stored once
        run_id=run_id,
        tags={"mlflow.parentRunId": parent_run_id} if parent_run_id else None,
    )


def _clear_fold(fold_dir: Path) -> None:
    """Remove a previous run's checkpoints and result (a fresh run would version them)."""
    for p in [
        *fold_dir.glob("best*.ckpt"),
        *fold_dir.glob("last*.ckpt"),
        *fold_dir.glob("swa.ckpt"),
        *fold_dir.glob(".*.ckpt.tmp"),
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


def _resume_state(cfg: Config, fold_dir: Path, fold: int) -> tuple[FoldResult | None, Path | None]:
    """``(finished result, checkpoint to continue from)`` of a fold under ``train.resume``.

    Without ``train.resume`` (or with nothing to resume) both are None and, on rank 0, a
    previous run's checkpoints and result are cleared.
    """
    last = fold_dir / "last.ckpt"
    if cfg.train.resume and (fold_dir / RESULT).is_file():
        _same_config(fold_dir / "config.yaml", cfg, fold)
        return FoldResult.from_json((fold_dir / RESULT).read_text()), None
    resume_from = last if cfg.train.resume and last.is_file() else None
    if resume_from is not None:
        _same_config(last, cfg, fold)
    if resume_from is None and rank_zero_only.rank == 0:  # DDP runs every rank through here
        _clear_fold(fold_dir)
    return None, resume_from


def build_module(cfg: Config, data: KelpDataModule) -> KelpSegModule:
    """The network, with normalization bounds fitted on the fold's training pixels."""
    module = KelpSegModule(cfg.model_dump(mode="json"))
    module.features.fit_bounds(data.normalization_sample(), cfg.features.quantiles)
    return module


def build_logger(
    cfg: Config,
    out: Path,
    fold_dir: Path,
    data: KelpDataModule,
    resuming: bool,
    parent_run_id: str | None = None,
) -> MLFlowLogger:
    """The fold's MLflow run: a new one with the flat config, or the interrupted one."""
    run_id_file = fold_dir / RUN_ID
    run_id = run_id_file.read_text().strip() if resuming and run_id_file.is_file() else None
    logger = mlflow_logger(cfg, out, data.fold, run_id, parent_run_id)
    if run_id is None and rank_zero_only.rank == 0:
        logger.log_hyperparams(
            {
                **flatten(cfg),
                "fold": data.fold,
                "train_tiles": len(data.train_tiles),
                "val_tiles": len(data.val_tiles),
            }
        )
        logger.experiment.set_tag(logger.run_id, RUN_GROUP_TAG, str(out.resolve()))
        atomic_write_text(run_id_file, logger.run_id)
    return logger


def build_trainer(
    cfg: Config, callbacks: list[Callback], logger: MLFlowLogger, steps_per_epoch: int
) -> L.Trainer:
    """The Lightning trainer of ``train.*``."""
    t = cfg.train
    return L.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, steps_per_epoch // 2)),
        num_sanity_val_steps=0,
        deterministic=t.deterministic,
        benchmark=t.deterministic is False,
    )


def save_swa(trainer: L.Trainer, module: KelpSegModule, fold_dir: Path) -> Path:
    """``swa.ckpt``: the averaged weights, as a link to ``last.ckpt`` when that holds them.

    With batch norm, Lightning's SWA ends with an epoch that only updates its statistics, and
    that epoch's ``last.ckpt`` already holds the final averaged model: it is not stored twice.
    """
    swa, last = fold_dir / "swa.ckpt", fold_dir / "last.ckpt"
    same = False
    if trainer.is_global_zero and last.is_file():
        saved = torch.load(last, map_location="cpu", weights_only=False)["state_dict"]
        current = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        same = saved.keys() == current.keys() and all(
            torch.equal(saved[k], current[k]) for k in saved
        )
    if trainer.strategy.broadcast(same):
        if trainer.is_global_zero:
            swa.unlink(missing_ok=True)
            swa.symlink_to(last.name)
        trainer.strategy.barrier()
    else:
        trainer.save_checkpoint(swa)
    return swa


def score(
    trainer: L.Trainer, module: KelpSegModule, data: KelpDataModule, ckpt: ModelCheckpoint
) -> tuple[Path, float, dict[str, float]]:
    """``(checkpoint, val Dice, val metrics)`` of the fold's model.

    With ``train.swa`` the averaged weights are the model: they are saved as ``swa.ckpt`` and
    validated again; otherwise the best checkpoint by ``val/dice`` is.
    """
    if module.cfg.train.swa:
        best = save_swa(trainer, module, Path(ckpt.dirpath or "."))
        trainer.validate(module, datamodule=data, verbose=False)
    scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if module.cfg.train.swa:
        return best, scores.get("val/dice", float("nan")), scores
    value = ckpt.best_model_score
    return Path(ckpt.best_model_path), float(value) if value is not None else float("nan"), scores


def save_results(
    cfg: Config, fold_dir: Path, module: KelpSegModule, logger: MLFlowLogger, result: FoldResult
) -> None:
    """Config, normalization bounds and result in the fold folder and the MLflow run.

    The checkpoint is not copied into MLflow: the run's ``checkpoint`` tag names the file.
    """
    client, run_id = logger.experiment, logger.run_id
    atomic_write_text(fold_dir / "config.yaml", dump_config(cfg))
    bounds = json.dumps(module.features.bounds(), indent=2)
    atomic_write_text(fold_dir / "normalization.json", bounds)
    for name in ("config.yaml", "normalization.json"):
        client.log_artifact(run_id, str(fold_dir / name))
    client.set_tag(run_id, "checkpoint", str(result.checkpoint.absolute()))
    client.log_metric(run_id, "best/val_dice", result.val_dice)
    atomic_write_text(fold_dir / RESULT, result.to_json())  # last: the fold is finished


def train_fold(
    cfg: Config,
    tiles: pd.DataFrame,
    packed: PackedTiles,
    fold: int,
    out: Path,
    *,
    extra_callbacks: list[Callback] | None = None,
    parent_run_id: str | None = None,
) -> FoldResult:
    """Train on every fold but ``fold``, validate on ``fold``, keep the best checkpoint.

    Args:
        cfg: The config (``train.resume`` continues an interrupted fold).
        tiles: Training tiles with ``tile_id``, ``fold`` and the ``kelpseg stats`` columns;
            tiles whose ``excluded`` column is true are validated on but not trained on.
        packed: The packed cache holding those tiles.
        fold: The validation fold.
        out: Run folder; checkpoints go to ``out/fold{k}/``.
        extra_callbacks: More Lightning callbacks (``kelpseg tune``: the pruning one).
        parent_run_id: MLflow run the fold's run is nested under (``kelpseg tune``).
    """
    t = cfg.train
    fold_dir = out / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    finished, resume_from = _resume_state(cfg, fold_dir, fold)
    if finished is not None:
        return finished

    L.seed_everything(t.seed + fold, workers=True)
    if torch.cuda.is_available() and not t.deterministic:
        torch.set_float32_matmul_precision("high")
    data = KelpDataModule(cfg, packed, tiles, fold)
    module = build_module(cfg, data)
    logger = build_logger(cfg, out, fold_dir, data, resume_from is not None, parent_run_id)
    cbs, ckpt = callbacks(cfg, fold_dir, data.preview_batch(t.log_images))
    trainer = build_trainer(cfg, cbs + list(extra_callbacks or []), logger, data.steps_per_epoch)
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)

    checkpoint, val_dice, scores = score(trainer, module, data, ckpt)
    result = FoldResult(fold, checkpoint, val_dice, scores, logger.run_id)
    if trainer.is_global_zero:
        save_results(cfg, fold_dir, module, logger, result)
    return result
