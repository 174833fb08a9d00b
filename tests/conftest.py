"""Shared fixtures: tiny tiles made on the fly, and one small synthetic dataset per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest -n N: share the cores, do not fight
    import torch

    torch.set_num_threads(
        max(1, torch.get_num_threads() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    )

SIZE = 64
# the end-to-end run's overrides of `tiny`: enough steps for the network to learn, on a small
# encoder and decoder (4x faster than resnet18 on one thread; test Dice 0.58 vs 0.61)
RUN_SETS = [
    "model.encoder=tu-mobilenetv3_small_050",
    "model.decoder_channels=[32,16,16,8,8]",
    "train.max_epochs=5",
    "train.samples_per_epoch=512",
    "train.batch_size=16",
    "train.lr=3e-3",
    "train.loss.bce=0.5",
]


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic dataset in the competition layout (64 px tiles), with its truth."""
    from kelpseg.synth import generate

    root = tmp_path_factory.mktemp("synth") / "data"
    return generate(root, aois=20, seed=3, size=SIZE)


@pytest.fixture(scope="session")
def run_out(synth_data, tmp_path_factory: pytest.TempPathFactory):
    """One end-to-end `kelpseg run` on the small synthetic dataset with the tiny config."""
    from kelpseg.config import load_config
    from kelpseg.pipeline import run_pipeline

    cfg = load_config("tiny", RUN_SETS)
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        out = tmp_path_factory.mktemp("run")
        return out, run_pipeline(synth_data.root, cfg, out, synth_data.test_masks)
    # pytest -n N: the first worker to ask trains it, the others wait for it and read it
    import json

    from filelock import FileLock

    out = tmp_path_factory.getbasetemp().parent / "run_shared"
    with FileLock(f"{out}.lock"):
        if not (out / "metrics.json").is_file():
            run_pipeline(synth_data.root, cfg, out, synth_data.test_masks)
        return out, json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="session")
def trained(run_out):
    """The checkpoint (and folder) of that run."""
    from types import SimpleNamespace

    out, metrics = run_out
    return SimpleNamespace(checkpoint=Path(metrics["predicted_with"]), out=out, metrics=metrics)
