"""A ``kelpseg tune`` worker: storage, sampler, pruner, the trial loop and the outputs.

Every worker opens the study in an Optuna RDB storage (``sqlite:///OUT/study.db`` alone,
PostgreSQL or MySQL for several machines) with ``load_if_exists``, so any number of workers
with the same ``--storage`` and ``--study`` share it. ``--trials N`` is the study's total:
a worker stops once N trials are complete, pruned or running and none is waiting. Trials carry a
heartbeat; a trial whose worker died is marked FAIL by the next worker after the grace period
and re-queued with the same parameters (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`).
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import optuna
import pandas as pd
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from kelpseg.config import Config, ConfigError, apply_values, dump_config
from kelpseg.io.raster import atomic_write_text
from kelpseg.tune.space import SearchSpace, label

MAX_FAILURES_IN_A_ROW = 3


@dataclass
class TuneResult:
    """What a worker leaves in ``out``."""

    study: optuna.Study
    best_yaml: Path | None
    trials_csv: Path
    plots: list[Path] = field(default_factory=list)
    skipped_plots: list[str] = field(default_factory=list)
    ran: int = 0
    """Trials this worker ran."""


def storage_url(storage: str | None, out: Path) -> str:
    """The study's storage: ``storage``, or ``sqlite:///OUT/study.db``.

    A plain ``postgresql://`` URL gets the installed driver: SQLAlchemy 2.1 picks psycopg 3,
    the project installs psycopg2 (``postgresql+psycopg2://``).
    """
    if storage is None:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    plain = storage.startswith("postgresql://")
    if plain and find_spec("psycopg") is None and find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + storage.removeprefix("postgresql://")
    return storage


def open_storage(url: str, heartbeat: int = 60, grace: int | None = None) -> RDBStorage:
    """An RDB storage with trial heartbeats; stale trials are failed and re-queued (twice)."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=heartbeat,
            grace_period=grace or 2 * heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
        )


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """Seeded TPE; constant liar keeps parallel workers from proposing the same point."""
    s = space.study
    return optuna.samplers.TPESampler(
        seed=s.seed, n_startup_trials=s.startup_trials, constant_liar=True
    )


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    """Median or Hyperband over epochs (steps of all folds of a trial), or none."""
    s = space.study
    if s.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=s.prune_startup_trials, n_warmup_steps=s.prune_warmup_epochs
        )
    if s.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def open_study(
    url: str, name: str, space: SearchSpace, heartbeat: int = 60, grace: int | None = None
) -> optuna.Study:
    """Create the study, or join it when it exists.

    Workers starting together on an empty database race to create Optuna's tables (PostgreSQL
    then refuses one with a unique violation): the loser tries again, a few times.
    """
    from sqlalchemy.exc import IntegrityError

    for attempt in range(5):
        try:
            return optuna.create_study(
                storage=open_storage(url, heartbeat, grace),
                study_name=name,
                direction="maximize",
                sampler=make_sampler(space),
                pruner=make_pruner(space),
                load_if_exists=True,
            )
        except IntegrityError:
            if attempt == 4:
                raise
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def done(study: optuna.Study, total: int) -> bool:
    """``total`` trials are complete, pruned or running, and none waits to be run (re-queued
    or enqueued trials are always run)."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    started = sum(s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) for s in states)
    return started >= total and TrialState.WAITING not in states


def drop_checkpoints(study: optuna.Study, out: Path, keep: str) -> int:
    """Delete the ``*.ckpt`` of ended trials under ``out/trials``: all but the best trial's
    (``keep="best"``), all (``"none"``) or none (``"all"``). Running and waiting trials, which
    may belong to other workers, are never touched. Returns the files deleted."""
    if keep == "all" or not (out / "trials").is_dir():
        return 0
    ended = {
        t.number
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    best = None
    if keep == "best":
        try:
            best = study.best_trial.number
        except ValueError:  # no complete trial yet
            best = None
    deleted = 0
    for folder in (out / "trials").iterdir():
        if not folder.name.isdigit() or int(folder.name) not in ended or int(folder.name) == best:
            continue
        for ckpt in folder.rglob("*.ckpt"):
            ckpt.unlink(missing_ok=True)
            deleted += 1
    return deleted


def parent_run(base: Config, out: Path, study: optuna.Study, space_file: Path) -> str:
    """The study's MLflow run (found by tag in the tracking store, else created)."""
    from kelpseg.train.fit import experiment
    from kelpseg.tune.objective import STUDY_TAG

    client, exp_id = experiment(base, out)
    found = client.search_runs(
        [exp_id],
        f"tags.`{STUDY_TAG}` = '{study.study_name}' and tags.`kelpseg.role` = 'study'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        exp_id,
        run_name=f"study {study.study_name}",
        tags={STUDY_TAG: study.study_name, "kelpseg.role": "study"},
    )
    client.log_artifact(run.info.run_id, str(space_file))
    return run.info.run_id


def tune(
    data: Path,
    base: Config,
    space: SearchSpace,
    space_file: Path,
    out: Path,
    trials: int,
    *,
    storage: str | None = None,
    study_name: str = "kelpseg",
    timeout: float | None = None,
    heartbeat: int = 60,
    grace: int | None = None,
) -> TuneResult:
    """Run this worker's share of the study, then write ``best.yaml``, ``trials.csv``, plots.

    Args:
        data: Dataset folder.
        base: Base config; each trial overrides the space's keys.
        space: The search space (checked against ``base`` first).
        space_file: Its file (logged to the study's MLflow run).
        out: Output folder: tables, cache, ``trials/NNNN/``, the study outputs.
        trials: Trials the study should hold, all workers together.
        storage: Optuna storage URL; ``sqlite:///OUT/study.db`` when None.
        study_name: The study shared by the workers.
        timeout: Start no new trial after this many seconds.
        heartbeat: Seconds between a running trial's heartbeats.
        grace: Seconds without heartbeat before a trial counts as dead (2 x heartbeat).
    """
    from kelpseg.pipeline import pack_training, prepare
    from kelpseg.train.fit import tracking_uri
    from kelpseg.tune.objective import WORKER, Objective, SurplusTrialError

    space.check(base)
    out.mkdir(parents=True, exist_ok=True)
    original_uri = base.tracking.uri
    base = base.model_copy(deep=True)
    base.tracking.uri = tracking_uri(base, out)  # the trials' fold runs share the study's store
    prep = prepare(data, base, out, pack=True)
    _check_sampler_keys(space, list(prep.train.columns))
    packed = pack_training(prep, base, out)
    study = open_study(storage_url(storage, out), study_name, space, heartbeat, grace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    objective = Objective(
        prep, packed, base, space, out, trials, parent_run(base, out, study, space_file)
    )

    def stop_when_done(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus")
        objective.failures_in_a_row = objective.failures_in_a_row + 1 if failed else 0
        drop_checkpoints(study, out, space.study.keep_checkpoints)
        if done(study, trials):
            study.stop()
        elif objective.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            logging.getLogger("kelpseg").error(
                "%d trials failed in a row: this worker stops", objective.failures_in_a_row
            )
            study.stop()

    if not done(study, trials):
        study.optimize(
            objective,
            timeout=timeout,
            callbacks=[stop_when_done],
            catch=(SurplusTrialError, ConfigError, ValueError),
            gc_after_trial=True,
        )
    ran = sum(
        t.user_attrs.get("worker") == WORKER and not t.user_attrs.get("surplus")
        for t in study.get_trials(deepcopy=False)
    )
    yaml_base = base.model_copy(deep=True)
    yaml_base.tracking.uri = original_uri  # best.yaml carries the user's tracking setting
    result = write_outputs(study, space, yaml_base, out)
    result.ran = ran
    return result


def _check_sampler_keys(space: SearchSpace, columns: list[str]) -> None:
    for key in space.params:
        if key.startswith("train.sampler_weights.") and key.split(".")[2] not in columns:
            raise ConfigError(
                f"space key {key!r}: no tile stat {key.split('.')[2]!r}; the sampler weighs "
                f"columns of tile_stats.csv: {', '.join(c for c in columns if c != 'tile_id')}"
            )


def best_config(study: optuna.Study, space: SearchSpace, base: Config) -> tuple[Config, str]:
    """The best complete trial's config and a one-line header naming it."""
    best = study.best_trial  # ValueError when no trial is complete
    values = best.user_attrs.get("values") or space.decode(best.params)
    cfg = apply_values(base, values)
    chosen = ", ".join(
        f"{k}={v if isinstance(v, str | int | float) else label(v)}" for k, v in values.items()
    )
    head = (
        f"# kelpseg tune: best trial {best.number} of study {study.study_name!r}, "
        f"validation Dice {best.value:.4f}\n# {chosen}\n"
    )
    return cfg, head


def write_outputs(study: optuna.Study, space: SearchSpace, base: Config, out: Path) -> TuneResult:
    """``trials.csv``, ``best.yaml`` (when a trial is complete) and the plots in ``out``."""
    from kelpseg.tune.plots import write_plots

    table = study.trials_dataframe(
        attrs=("number", "value", "state", "datetime_start", "duration", "params", "user_attrs")
    )
    if "duration" in table:
        table["duration"] = pd.to_timedelta(table["duration"]).dt.total_seconds().round(1)
    table = table.drop(columns=[c for c in table if c == "user_attrs_values"])
    trials_csv = atomic_write_text(out / "trials.csv", table.to_csv(index=False))
    best_yaml = None
    try:
        cfg, head = best_config(study, space, base)
    except ValueError:
        pass
    else:
        best_yaml = atomic_write_text(out / "best.yaml", head + dump_config(cfg))
    plots, skipped = write_plots(study, out)
    return TuneResult(study, best_yaml, trials_csv, plots, skipped)
