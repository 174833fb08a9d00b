"""The terminal summary: paths and the MLflow command stay pasteable in a narrow terminal."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from kelpseg.report import print_metrics

METRICS = {
    "val_dice": 0.71,
    "test": {"dice": 0.7, "iou": 0.55, "precision": 0.8, "recall": 0.62},
    "ndvi_rule": {"threshold": 0.1, "test_dice": 0.4},
    "seconds": {"train": 12.0, "total": 20.0},
    "train_tiles": 40,
    "aoi_groups": 8,
    "test_tiles": 10,
    "predicted_with": "/somewhere/fold0/best.ckpt",
}


@pytest.mark.parametrize("folder", ["run", "my runs/[2026] kelp"])
def test_mlflow_command_is_one_pasteable_line_in_a_narrow_terminal(
    folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "a_rather_long_folder_name_for_the_output" / folder
    monkeypatch.setenv("COLUMNS", "40")
    print_metrics(METRICS, out)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "mlflow ui" in ln]
    assert len(lines) == 1, lines
    command = lines[0].split("MLflow", 1)[1].strip()
    uri = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    assert shlex.split(command) == ["mlflow", "ui", "--backend-store-uri", uri]
