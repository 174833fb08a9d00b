"""``kelpseg tune``: the search-space file, a local SQLite study, pruning, MLflow nesting."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from kelpseg.config import ConfigError, load_config
from kelpseg.tune.space import SearchSpace, load_space

# tiny, on 32 px tiles: a trial is a few seconds on a CPU
SETS = [
    "data.tile_size=32",
    "groups.grid=4",
    "train.max_epochs=2",
    "train.samples_per_epoch=8",
    "train.log_images=0",
]


def _space(tmp_path: Path, tree: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def _error(tmp_path: Path, params: dict, **study) -> str:
    base = load_config("tiny")
    with pytest.raises(ConfigError) as err:
        tree = {"params": params, **({"study": study} if study else {})}
        load_space(_space(tmp_path, tree), base)
    return str(err.value)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kelpseg.synth import generate

    return generate(tmp_path_factory.mktemp("tune") / "data", aois=8, seed=1, size=32).root


def test_builtin_spaces_validate_against_their_configs() -> None:
    grid = load_space("space", load_config("default"))
    for key in (
        "model.arch",
        "model.encoder",
        "train.lr",
        "train.scheduler",
        "train.optimizer",
        "train.loss",
        "train.max_epochs",
        "train.samples_per_epoch",
        "features.mask_land",
        "features.bands",
        "features.indices",
        "train.sampler_weights.has_kelp",
    ):
        assert key in grid.params, key
    assert grid.params["train.lr"].log
    load_space("space_tiny", load_config("tiny"))


@pytest.mark.parametrize(
    ("params", "study", "named"),
    [
        ({"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}, {}, "'train.lrr'"),
        ({"trainer.lr": [1, 2]}, {}, "'trainer.lr'"),
        ({"train.lr": {"type": "float", "lo": 1e-4, "high": 1e-2}}, {}, "'lo'"),
        ({"train.lr": {"type": "float", "low": 1e-2, "high": 1e-4}}, {}, "low < high"),
        ({"train.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}, {}, "low > 0"),
        ({"train.lr": {"type": "normal", "low": 0.0, "high": 1.0}}, {}, "train.lr"),
        ({"train.optimizer": ["adamw", "rmsprop"]}, {}, "'rmsprop'"),
        ({"features.indices": [["NDVI"], ["NOT_AN_INDEX"]]}, {}, "features.indices"),
        ({"data.tile_size": [32, 64]}, {}, "prepared once"),
        ({"train.lr.x": [1]}, {}, "not a mapping"),
        ({"train.lr": [1e-3]}, {"pruner": "asha"}, "study.pruner"),
        ({"train.lr": [1e-3]}, {"sed": 1}, "'sed'"),
    ],
)
def test_bad_spaces_are_refused_with_the_key(tmp_path, params, study, named) -> None:
    assert named in _error(tmp_path, params, **study)


def test_space_values_round_trip_through_optuna() -> None:
    space = SearchSpace.model_validate(
        {"params": {"train.loss": [{"dice": 1.0}, {"dice": 0.5, "bce": 0.5}], "train.lr": [0.1]}}
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [space.suggest(study.ask()) for _ in range(6)]
    assert {tuple(sorted(v["train.loss"])) for v in values} == {("dice",), ("bce", "dice")}
    trial = study.trials[0]
    assert space.decode(trial.params) == values[0]  # labels map back to the YAML values


def test_pruning_steps_of_a_fold_are_the_same_in_every_trial() -> None:
    """Fold i reports from step i x (the most epochs a trial can train), whatever this trial's
    own `train.max_epochs`: otherwise the pruner compares fold 1 of a short trial with later
    epochs of fold 0 of a long one."""
    from types import SimpleNamespace

    from kelpseg.tune.objective import Objective

    base = load_config("tiny")
    for params, bound in (
        ({"train.max_epochs": {"type": "int", "low": 5, "high": 50}}, 50),
        ({"train.max_epochs": [3, 12, 7]}, 12),
        ({"train.lr": [0.1]}, base.train.max_epochs),
    ):
        space = SearchSpace.model_validate({"params": params})
        assert Objective.epochs_bound(SimpleNamespace(space=space, base=base)) == bound


def _mlflow_runs(out: Path) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["kelpseg"])


def test_local_study_writes_a_trainable_best_config(tiny_data, tmp_path) -> None:
    from kelpseg.cli import app

    space = _space(
        tmp_path,
        {
            "study": {"seed": 3, "startup_trials": 2, "pruner": "none"},
            "params": {
                "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "train.loss": [{"dice": 1.0}, {"dice": 0.5, "bce": 0.5}],
                "features.indices": [["NDVI", "DEMWM"], ["NDVI"]],
            },
        },
    )
    out = tmp_path / "out"
    args = ["tune", str(tiny_data), "-c", "tiny", "--space", str(space), "--trials", "2"]
    sets = [arg for s in SETS for arg in ("-s", s)]
    res = CliRunner().invoke(app, [*args, "-o", str(out), *sets])
    assert res.exit_code == 0, res.output
    assert "study 'kelpseg': 2 trials (2 complete), 2 by this worker" in res.output
    assert (out / "study.db").is_file()

    trials = pd.read_csv(out / "trials.csv")
    assert trials["number"].tolist() == [0, 1]
    assert (trials["state"] == "COMPLETE").all()
    assert trials["value"].between(0, 1).all()

    best = trials.loc[trials["value"].idxmax()]
    base = load_config("tiny", SETS)
    cfg = load_config(out / "best.yaml")  # what `kelpseg train -c OUT/best.yaml` reads
    assert cfg.train.lr == pytest.approx(best["params_train.lr"])
    assert cfg.train.lr != base.train.lr
    assert yaml.safe_load(best["params_train.loss"]) == cfg.train.loss
    assert yaml.safe_load(best["params_features.indices"]) == cfg.features.indices
    untouched = ("model", "data", "split", "groups", "augment")
    assert all(getattr(cfg, s) == getattr(base, s) for s in untouched)
    assert cfg.tracking.uri is None  # not pinned to the tune folder's store
    # only the best trial keeps checkpoints (study.keep_checkpoints: best)
    other = int(trials.loc[trials["value"].idxmin(), "number"])
    assert (out / "trials" / f"{int(best['number']):04d}" / "fold0" / "best.ckpt").exists()
    assert not list((out / "trials" / f"{other:04d}").rglob("*.ckpt"))
    assert (out / "trials" / f"{other:04d}" / "fold0").is_dir()  # the rest of the trial stays

    for name in ("parallel_coordinate", "param_importances", "optimization_history"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
        assert str(png) in res.output

    # MLflow: the study run, one trial run per trial under it, the fold runs under the trials
    runs = _mlflow_runs(out)
    parent = runs[runs["tags.kelpseg.role"] == "study"]
    assert len(parent) == 1
    trial_runs = runs[runs["tags.optuna.trial"].notna()]
    assert sorted(trial_runs["tags.optuna.trial"].astype(int)) == [0, 1]
    assert (trial_runs["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    assert (trial_runs["status"] == "FINISHED").all()
    for _, run in trial_runs.iterrows():
        row = trials.loc[trials["number"] == int(run["tags.optuna.trial"])].iloc[0]
        assert run["metrics.best/val_dice"] == pytest.approx(row["value"])
        assert float(run["params.train.lr"]) == pytest.approx(row["params_train.lr"])
    folds = runs[runs["tags.mlflow.runName"] == "fold0"]
    assert sorted(folds["tags.mlflow.parentRunId"]) == sorted(trial_runs["run_id"])


def test_a_trial_forced_bad_is_pruned(tiny_data, tmp_path) -> None:
    """Threshold 1e-6 calls every pixel kelp (Dice > 0), 0.999999 none (Dice 0): the second
    trial is worse than the median at its first epoch and stops there."""
    from kelpseg.tune.study import storage_url, tune

    space_file = _space(
        tmp_path,
        {
            "study": {"pruner": "median", "prune_startup_trials": 1, "prune_warmup_epochs": 0},
            "params": {"predict.threshold": [1.0e-6, 0.999999]},
        },
    )
    out = tmp_path / "out"
    base = load_config("tiny", SETS)
    space = load_space(space_file, base)
    url = storage_url(None, out)
    out.mkdir()
    study = optuna.create_study(storage=url, study_name="prune", direction="maximize")
    study.enqueue_trial({"predict.threshold": 1.0e-6})
    study.enqueue_trial({"predict.threshold": 0.999999})
    res = tune(tiny_data, base, space, space_file, out, 2, study_name="prune")

    good, bad = res.study.trials
    assert good.state == optuna.trial.TrialState.COMPLETE and good.value > 0
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert bad.intermediate_values == {0: 0.0}  # stopped after epoch 0 of 2
    assert len(good.intermediate_values) == 2
    runs = _mlflow_runs(out).set_index("tags.optuna.trial")
    assert runs.loc["1", "tags.optuna.state"] == "PRUNED"
    assert runs.loc["1", "status"] == "KILLED"
    assert "param_importances.png: needs 2 complete trials, have 1" in res.skipped_plots
    assert load_config(res.best_yaml).predict.threshold == 1.0e-6
    assert list((out / "trials" / "0000").rglob("*.ckpt"))  # the best trial keeps its own
    assert not list((out / "trials" / "0001").rglob("*.ckpt"))  # the pruned one does not


def test_each_fold_reports_at_its_own_steps(tiny_data, tmp_path) -> None:
    """With two folds of 2 epochs, fold 0 reports steps 0-1 and fold 1 steps 2-3: the pruner
    compares fold 1's epochs with fold 1's, never with fold 0's."""
    from kelpseg.tune.study import tune

    space_file = _space(
        tmp_path, {"study": {"pruner": "none"}, "params": {"predict.threshold": [0.5]}}
    )
    base = load_config("tiny", [*SETS, "train.folds=[0,1]"])
    res = tune(tiny_data, base, load_space(space_file, base), space_file, tmp_path / "o", 1)
    (trial,) = res.study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("keep", "left"),
    [("best", {"0001", "0003"}), ("none", {"0003"}), ("all", {"0000", "0001", "0002", "0003"})],
)
def test_drop_checkpoints_keeps_the_best_and_never_touches_running_trials(
    tmp_path, keep: str, left: set[str]
) -> None:
    from kelpseg.tune.study import drop_checkpoints

    study = optuna.create_study(direction="maximize")
    for value in (0.2, 0.7):
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING))
    for n in range(4):
        fold = tmp_path / "trials" / f"{n:04d}" / "fold0"
        fold.mkdir(parents=True)
        (fold / "best.ckpt").write_bytes(b"x")
        (fold / "last.ckpt").symlink_to("best.ckpt")
        (fold / "config.yaml").write_text("{}")
    drop_checkpoints(study, tmp_path, keep)
    kept = {p.parent.parent.name for p in (tmp_path / "trials").rglob("best.ckpt")}
    assert kept == left
    assert len(list((tmp_path / "trials").rglob("config.yaml"))) == 4


def test_cli_refuses_a_bad_space_before_any_work(tmp_path) -> None:
    from kelpseg.cli import app

    space = _space(tmp_path, {"params": {"train.lrr": [1e-3]}})
    out = tmp_path / "out"
    args = ["tune", str(tmp_path), "-c", "tiny", "--space", str(space), "--trials", "2"]
    res = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert res.exit_code == 2
    assert "config error" in res.output and "'train.lrr'" in res.output
    assert "Traceback" not in res.output and not out.exists()
    good = [*args[:-4], "--space", "space_tiny", "--trials", "1", "-o", str(out)]
    res = CliRunner().invoke(app, good)
    assert res.exit_code == 1 and "no *_satellite.tif tiles found" in res.output, res.output
    res = CliRunner().invoke(app, [*args, "--heartbeat", "5", "--grace", "5"])
    assert res.exit_code == 1 and "--grace (5) must be longer" in res.output
    # without --space: the built-in grid, and it says so (then finds no tiles here)
    res = CliRunner().invoke(app, ["tune", str(tmp_path), "-c", "tiny", "--trials", "1",
                                   "-o", str(out)])  # fmt: skip
    assert "built-in 'space'" in res.output and "configs/space.yaml" in res.output
    assert res.exit_code == 1 and "no *_satellite.tif tiles found" in res.output, res.output


def test_storage_urls_and_pruners(tmp_path) -> None:
    from importlib.util import find_spec

    from kelpseg.tune.study import make_pruner, storage_url

    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/study.db"
    url = storage_url("postgresql://u:p@host/db", tmp_path)
    if find_spec("psycopg") is None and find_spec("psycopg2") is not None:
        assert url == "postgresql+psycopg2://u:p@host/db"  # the installed driver
    assert storage_url("mysql://h/db", tmp_path) == "mysql://h/db"
    kinds = {"median": "MedianPruner", "hyperband": "HyperbandPruner", "none": "NopPruner"}
    for name, cls in kinds.items():
        space = SearchSpace.model_validate({"study": {"pruner": name}, "params": {"train.lr": [1]}})
        assert type(make_pruner(space)).__name__ == cls


def test_study_plots_leave_the_process_style_alone(tmp_path) -> None:
    """optuna's plots restyle matplotlib (ggplot); later figures (quick-looks) must not change."""
    import matplotlib as mpl
    import optuna

    from kelpseg.tune.plots import write_plots

    before = dict(mpl.rcParams)
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    written, _ = write_plots(study, tmp_path)
    assert written and dict(mpl.rcParams) == before
