"""The runs table: fold runs from a real MLflow store grouped per training, sorted, filtered."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.config import load_config
from kelpseg.infer.run_folder import tuned_threshold
from kelpseg.runs import RunsError, list_runs, render
from tests.conftest import RUN_SETS


def test_session_run_is_listed(run_out):
    out, metrics = run_out
    table = list_runs(str(out), "kelpseg")
    row = table[table["folder"] == str(out.resolve())]
    assert len(row) == 1
    row = row.iloc[0]
    assert row["dice_f0"] == pytest.approx(metrics["folds"]["0"]["val_dice"])
    assert row["mean_dice"] == pytest.approx(metrics["val_dice"])
    assert row["test_dice"] == pytest.approx(metrics["test"]["ensemble"]["dice"])
    assert row["test_dice_single"] == pytest.approx(metrics["test"]["single"]["dice"])
    cfg = load_config("tiny", RUN_SETS)
    assert (row["arch"], row["encoder"], row["epochs"], row["indices"]) == (
        "Unet", cfg.model.encoder, cfg.train.max_epochs, len(cfg.features.indices),
    )  # fmt: skip
    tuned = getattr(tuned_threshold(out), "value", None)  # another test may have tuned it
    assert math.isnan(row["threshold"]) if tuned is None else row["threshold"] == tuned


def _log(client, exp: str, fold: int, dice: float | None, start: int, tags: dict, **params):
    run = client.create_run(exp, start_time=start, tags=tags, run_name=f"fold{fold}")
    for k, v in {"fold": fold, **params}.items():
        client.log_param(run.info.run_id, k, v)
    if dice is None:
        return  # left RUNNING: an unfinished fold
    client.log_metric(run.info.run_id, "best/val_dice", dice)
    client.set_terminated(run.info.run_id, "FINISHED")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow store with two trainings, a retrained fold and an unfinished fold."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("runs")
    a, b = root / "runA", root / "runB"
    a.mkdir()
    (a / "threshold.json").write_text(json.dumps({"threshold": 0.45}))
    (a / "metrics.json").write_text(json.dumps({"test": {"dice": 0.55}}))
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.create_experiment("kelpseg")
    net = {"model.arch": "Unet", "train.max_epochs": 5, "train.lr": 3e-4}
    ta = {"kelpseg.out": str(a)}
    common = {**net, "features.indices": "['NDVI', 'DEMWM']", "train.loss.dice": 1.0}
    _log(client, exp, 0, 0.60, 1000, ta, **common, **{"model.encoder": "resnet18"})
    _log(client, exp, 1, 0.70, 2000, ta, **common, **{"model.encoder": "resnet18"})
    # fold 0 retrained with another loss: its row is that run's, not a mix of both runs
    retrained = {**net, "features.indices": "['NDVI', 'DEMWM']", "train.loss.bce": 1.0}
    _log(client, exp, 0, 0.66, 3000, ta, **retrained, **{"model.encoder": "resnet18"})
    _log(client, exp, 2, None, 4000, ta, **common, **{"model.encoder": "resnet18"})
    trial = client.create_run(exp, start_time=4500, tags=ta, run_name="trial 0")  # a tune trial:
    client.log_metric(trial.info.run_id, "best/val_dice", 0.99)  # its Dice, but no fold of its own
    client.set_terminated(trial.info.run_id, "FINISHED")
    old = {"checkpoint": str(b / "fold0" / "best.ckpt")}  # a run from before the group tag
    _log(client, exp, 0, 0.40, 5000, old, **net, **{"model.encoder": "resnet34"})
    return root


def test_grouping_latest_fold_and_folder_figures(store):
    table = list_runs(str(store), "kelpseg")
    assert list(table["run"]) == ["runA", "runB"]  # sorted by mean Dice, best first
    assert not [c for c in table.columns if c.startswith("dice_f-")]  # the trial run is no fold
    a, b = table.iloc[0], table.iloc[1]
    assert (a["folds"], a["dice_f0"], a["dice_f1"]) == (2, 0.66, 0.70)
    assert a["mean_dice"] == pytest.approx(0.68) and a["std_dice"] == pytest.approx(0.02)
    assert (a["threshold"], a["test_dice"], a["indices"], a["loss"]) == (0.45, 0.55, 2, "bce:1")
    assert b["folds"] == 1 and b["std_dice"] == 0.0 and math.isnan(b["dice_f1"])
    assert math.isnan(b["threshold"]) and math.isnan(b["test_dice"])


def test_sort_and_filter(store):
    uri = str(store / "mlflow.db")
    asc = list_runs(uri, "kelpseg", sort="mean_dice", ascending=True)
    assert list(asc["run"]) == ["runB", "runA"]
    assert list(list_runs(uri, "kelpseg", filters=["encoder=resnet34"])["run"]) == ["runB"]
    assert list(list_runs(uri, "kelpseg", filters=["mean_dice>0.5"])["run"]) == ["runA"]
    both = list_runs(uri, "kelpseg", filters=["mean_dice>=0.4", "encoder!=resnet50"])
    assert len(both) == 2
    assert list(list_runs(uri, "kelpseg", filters=["dice_f0<=0.4"])["run"]) == ["runB"]
    assert list(list_runs(uri, "kelpseg", sort="encoder")["run"]) == ["runB", "runA"]
    for bad in ("mean_dice>>0.5", "nosuch=1", "encoder>abc", "no operator"):
        with pytest.raises(RunsError):
            list_runs(uri, "kelpseg", filters=[bad])
    with pytest.raises(RunsError, match="no experiment"):
        list_runs(uri, "other")


def test_cli_formats_and_errors(store, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["runs", "--uri", str(store), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [r["run"] for r in json.loads(res.stdout)] == ["runA", "runB"]
    res = runner.invoke(app, ["runs", "--uri", str(store), "--format", "csv", "--sort", "run"])
    assert res.stdout.splitlines()[0].startswith("run,started,arch,encoder")
    res = runner.invoke(app, ["runs", "--uri", str(store)])
    assert res.stdout.splitlines()[0].split()[:3] == ["run", "started", "arch"]
    for args in (["--filter", "mean_dice>>1"], ["--sort", "nosuch"], ["--format", "xml"]):
        res = runner.invoke(app, ["runs", "--uri", str(store), *args])
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
        assert "Traceback" not in res.output
    res = runner.invoke(app, ["runs", "--uri", str(tmp_path)])
    assert res.exit_code == 1 and "no MLflow store" in res.output
    assert not (tmp_path / "mlflow.db").exists()  # nothing created by looking
    assert render(list_runs(str(store), "kelpseg", filters=["mean_dice>0.9"]), "table") == (
        "no finished runs\n"
    )


def test_experiment_opens_a_file_store_mlflow_3_refuses_by_default(tmp_path, monkeypatch):
    """`kelpseg xgb` and `kelpseg tune` log through this helper: a `file:` store must work."""
    from kelpseg.config import load_config
    from kelpseg.train.fit import experiment

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    cfg = load_config("tiny", [f"tracking.uri=file:{tmp_path / 'mlruns'}"])
    client, exp_id = experiment(cfg, tmp_path)
    assert client.get_experiment(exp_id).name == cfg.tracking.experiment
    assert experiment(cfg, tmp_path)[1] == exp_id  # found, not created twice
