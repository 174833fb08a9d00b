"""A training run killed with SIGKILL and resumed with ``--resume`` ends like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

KELPSEG = [sys.executable, "-m", "kelpseg"]
OPTIONS = [
    "model.encoder=tu-mobilenetv3_small_050",
    "model.decoder_channels=[16,16,16,8,8]",
    "train.max_epochs=2",
    "train.samples_per_epoch=96",
    "train.deterministic=true",
    "augment.rotate_degrees=30",
    "train.log_images=0",
]


def _train(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    sets = [arg for opt in OPTIONS for arg in ("--set", opt)]
    cmd = [*KELPSEG, "train", str(data), "--out", str(out), "--config", "tiny", *sets, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs side by side on two cores
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def _finish(proc: subprocess.Popen) -> str:
    output = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, output
    return output


def test_sigkilled_run_resumes_to_the_same_result(synth_data, tmp_path: Path) -> None:
    whole = _train(synth_data.root, tmp_path / "whole")
    killed = _train(synth_data.root, tmp_path / "killed")
    last = tmp_path / "killed" / "fold0" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.is_file() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    if killed.returncode != -signal.SIGKILL:
        pytest.fail("the run ended before it could be killed: " + killed.stdout.read().decode())
    epoch = torch.load(last, weights_only=False, map_location="cpu")["epoch"]
    assert epoch == 0, "killed after its first epoch's checkpoint"
    assert not (last.parent / "result.json").exists()
    run_id = (last.parent / "mlflow_run_id.txt").read_text().strip()

    _finish(_train(synth_data.root, tmp_path / "killed", "--resume"))
    _finish(whole)

    results = [
        json.loads((tmp_path / d / "fold0" / "result.json").read_text())
        for d in ("whole", "killed")
    ]
    assert results[1]["run_id"] == run_id  # the same MLflow run goes on
    assert results[0]["val_dice"] == results[1]["val_dice"]
    states = [
        torch.load(tmp_path / d / "fold0" / "last.ckpt", weights_only=False, map_location="cpu")
        for d in ("whole", "killed")
    ]
    assert states[0]["epoch"] == states[1]["epoch"] == 1
    a, b = states[0]["state_dict"], states[1]["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "weights differ after resuming"


def test_resume_skips_finished_folds(synth_data, trained) -> None:
    from kelpseg.config import load_config
    from kelpseg.pipeline import prepare, run_training
    from tests.conftest import RUN_SETS

    cfg = load_config("tiny", [*RUN_SETS, "train.resume=true"])
    prep = prepare(synth_data.root, cfg, trained.out)
    before = trained.checkpoint.stat().st_mtime_ns
    (result,) = run_training(prep, cfg, trained.out)
    assert (
        result.checkpoint == trained.checkpoint and result.checkpoint.stat().st_mtime_ns == before
    )
    assert result.run_id == trained.metrics["folds"]["0"]["mlflow_run_id"]
