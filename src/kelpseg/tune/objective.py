"""One Optuna trial = one training run of the configured fold(s), a nested MLflow run.

The data tables and the packed cache are prepared once per worker (:class:`Objective` holds
them); each trial applies its sampled values to the base config, trains every fold of
``train.folds`` into ``OUT/trials/NNNN/fold*/`` and returns the mean best validation Dice.
The pruner sees ``val/dice`` after every epoch (:class:`TrialPruning`); a pruned trial stops
at the end of that epoch. (``optuna_integration.PyTorchLightningPruningCallback`` works with
our Lightning, but it raises inside ``fit``, so the fold's MLflow run ends failed and its
result is not saved, and it reports every fold of a trial at the same steps.)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kelpseg.compat import ensure_torchvision

ensure_torchvision()

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from kelpseg.config import Config, apply_values  # noqa: E402
from kelpseg.data.cache import PackedTiles  # noqa: E402
from kelpseg.pipeline import Prepared, fold_list  # noqa: E402
from kelpseg.tune.space import SearchSpace, label  # noqa: E402

WORKER = f"{socket.gethostname()}:{os.getpid()}"
"""This process's name in the study (trial user attribute ``worker``)."""

PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "optuna.study"


class SurplusTrialError(RuntimeError):
    """The study already has its requested number of trials (another worker started them)."""


class TrialPruning(Callback):
    """Report ``monitor`` to the trial after each validation; stop the fit when it is pruned.

    Steps are ``offset + epoch``, so the folds of one trial report at distinct steps. The fit
    ends at the end of the epoch (checkpoints and the MLflow run close normally), then the
    objective raises :class:`optuna.TrialPruned`.
    """

    def __init__(self, trial: optuna.Trial, monitor: str = "val/dice", offset: int = 0) -> None:
        self.trial, self.monitor, self.offset = trial, monitor, offset
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        step = self.offset + trainer.current_epoch
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            self.pruned_at = step
            trainer.should_stop = True


def _param(value: Any) -> str:
    return value if isinstance(value, str) else label(value)


@dataclass
class Objective:
    """The trial function of one worker.

    Args:
        prep: The prepared tables (stats, AOI groups, folds).
        packed: The packed training cache.
        base: The base config (``tracking.uri`` set to the study's store).
        space: The search space.
        out: The tune output folder (trials go to ``out/trials/``).
        total: Trials the study should hold (complete, pruned, running or waiting).
        parent_run_id: The study's MLflow run.
    """

    prep: Prepared
    packed: PackedTiles
    base: Config
    space: SearchSpace
    out: Path
    total: int
    parent_run_id: str
    failures_in_a_row: int = field(default=0, init=False)

    def surplus(self, trial: optuna.Trial) -> bool:
        """True when ``total`` trials numbered before this one are not failed."""
        alive = (
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.RUNNING,
            optuna.trial.TrialState.WAITING,
        )
        before = trial.study.get_trials(deepcopy=False, states=alive)
        return sum(t.number < trial.number for t in before) >= self.total

    def epochs_bound(self) -> int:
        """The most epochs any trial trains a fold: pruning steps of fold i start at i times
        it, so that step n means the same fold and epoch in every trial."""
        dist = self.space.params.get("train.max_epochs")
        if dist is None:
            return self.base.train.max_epochs
        return max(int(v) for v in dist.examples())

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", WORKER)
        if self.surplus(trial):
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise SurplusTrialError(f"trial {trial.number}: the study has {self.total} already")
        values = self.space.suggest(trial)
        trial.set_user_attr("values", values)
        cfg = apply_values(self.base, values)
        cfg.train.resume = False
        client = MlflowClient(self.base.tracking.uri)
        parent = client.get_run(self.parent_run_id)
        run = client.create_run(
            parent.info.experiment_id,
            run_name=f"trial{trial.number}",
            tags={
                PARENT_TAG: self.parent_run_id,
                STUDY_TAG: trial.study.study_name,
                "optuna.trial": str(trial.number),
                "optuna.worker": WORKER,
            },
        )
        run_id = run.info.run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        for key, value in values.items():
            client.log_param(run_id, key, _param(value)[:6000])
        dices: list[float] = []
        state = "FAILED"
        try:
            trial_out = self.out / "trials" / f"{trial.number:04d}"
            from kelpseg.train.fit import train_fold

            span = self.epochs_bound()  # the same steps for every trial: fold i, epoch e
            for i, k in enumerate(fold_list(cfg)):
                cb = TrialPruning(trial, self.space.study.monitor, i * span)
                result = train_fold(
                    cfg,
                    self.prep.train,
                    self.packed,
                    k,
                    trial_out,
                    extra_callbacks=[cb],
                    parent_run_id=run_id,
                )
                dices.append(result.val_dice)
                if cb.pruned_at is not None:
                    state = "KILLED"
                    raise optuna.TrialPruned(f"pruned after step {cb.pruned_at}")
            state = "FINISHED"
            return float(np.mean(dices))
        finally:
            if dices:
                client.log_metric(run_id, "best/val_dice", float(np.mean(dices)))
            client.set_tag(run_id, "optuna.state", {"KILLED": "PRUNED"}.get(state, state))
            client.set_terminated(run_id, state)
