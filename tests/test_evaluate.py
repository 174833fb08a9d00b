"""`kelpseg evaluate`: every truth tile counts, the JSON is valid, errors are one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.infer.evaluate import evaluate
from kelpseg.io import write_raster

runner = CliRunner()


def _strict_json(text: str) -> dict:
    """Parse JSON as a strict reader does: NaN / Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(text, parse_constant=refuse)


def _masks(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Three truth tiles with kelp; predictions for two of them."""
    rng = np.random.default_rng(0)
    truths = {t: (rng.random((32, 32)) < 0.2).astype(np.uint8) for t in ("A1", "B2", "C3")}
    preds = {t: (rng.random((32, 32)) < 0.2).astype(np.uint8) for t in ("A1", "B2")}
    for t, m in truths.items():
        write_raster(tmp_path / "truth" / f"{t}_kelp.tif", m)
    for t, m in preds.items():
        write_raster(tmp_path / "pred" / f"{t}_kelp.tif", m)
    return tmp_path / "pred", tmp_path / "truth", preds, truths


def test_missing_prediction_counts_as_all_negative_and_is_named(tmp_path: Path) -> None:
    pred, truth, preds, truths = _masks(tmp_path)
    p = np.concatenate([preds["A1"], preds["B2"], np.zeros_like(truths["C3"])]).astype(bool)
    t = np.concatenate([truths["A1"], truths["B2"], truths["C3"]]).astype(bool)
    expected = 2 * (p & t).sum() / (p.sum() + t.sum())
    scores, table, _ = evaluate(pred, truth)
    assert scores["dice"] == pytest.approx(expected)
    assert scores["missing_predictions"] == ["C3"] and scores["tiles"] == 3
    assert scores["kelp_pixels"] == int(t.sum())
    assert table.set_index("tile_id").loc["C3", "fn"] == truths["C3"].sum()
    assert table.set_index("tile_id")["prediction_missing"].to_dict() == {
        "A1": False,
        "B2": False,
        "C3": True,
    }

    result = runner.invoke(app, ["evaluate", str(pred), str(truth)])
    assert result.exit_code == 0, result.output
    assert _strict_json(result.stdout)["dice"] == pytest.approx(expected)
    warned = [ln for ln in result.stderr.splitlines() if "no prediction" in ln]
    assert len(warned) == 1 and "C3" in warned[0]


def test_mask_nodata_counts_as_not_kelp(tmp_path: Path) -> None:
    truth = np.zeros((16, 16), np.uint8)
    truth[:8] = 1
    pred = truth.copy()
    pred[:4] = 255  # input missing there: no kelp predicted
    write_raster(tmp_path / "t/X_kelp.tif", truth)
    write_raster(tmp_path / "p/X_kelp.tif", pred, nodata=255)
    scores, _, report = evaluate(tmp_path / "p", tmp_path / "t")
    assert report.ok == 1 and not report.errors
    assert scores["recall"] == pytest.approx(0.5) and scores["precision"] == 1.0


def test_empty_truth_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "truth").mkdir()
    write_raster(tmp_path / "pred/A_kelp.tif", np.zeros((8, 8), np.uint8))
    result = runner.invoke(app, ["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "NaN" not in result.stdout
    assert str(tmp_path / "truth") in result.stderr and "no *_kelp.tif" in result.stderr


@pytest.mark.parametrize("which", ["pred", "truth"])
def test_folder_that_does_not_exist_says_not_found(tmp_path: Path, which: str) -> None:
    pred, truth, _, _ = _masks(tmp_path)
    gone = tmp_path / "missing"
    args = [str(gone), str(truth)] if which == "pred" else [str(pred), str(gone)]
    result = runner.invoke(app, ["evaluate", *args])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(gone) in errors[0] and "not found" in errors[0]


def test_no_matching_prediction_at_all_is_an_error(tmp_path: Path) -> None:
    _, truth, _, _ = _masks(tmp_path)
    write_raster(tmp_path / "other/ZZ_kelp.tif", np.zeros((32, 32), np.uint8))
    result = runner.invoke(app, ["evaluate", str(tmp_path / "other"), str(truth)])
    assert result.exit_code == 1 and "no predicted mask" in result.stderr


def test_undefined_scores_are_valid_json(tmp_path: Path) -> None:
    write_raster(tmp_path / "t/E_kelp.tif", np.zeros((8, 8), np.uint8))
    write_raster(tmp_path / "p/E_kelp.tif", np.zeros((8, 8), np.uint8))
    result = runner.invoke(app, ["evaluate", str(tmp_path / "p"), str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    scores = _strict_json(result.stdout)
    assert scores["dice"] is None and scores["accuracy"] == 1.0
    assert not any(isinstance(v, float) and math.isnan(v) for v in scores.values())


def test_per_tile_table_is_written_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pred, truth, _, _ = _masks(tmp_path)
    table = tmp_path / "per_tile.csv"
    result = runner.invoke(app, ["evaluate", str(pred), str(truth), "--per-tile", str(table)])
    assert result.exit_code == 0, result.output
    assert table.read_text().count("\n") == 4  # header + three tiles, the missing one included
    table.write_text("earlier table\n")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("kelpseg.io.raster.os.replace", boom)
    result = runner.invoke(app, ["evaluate", str(pred), str(truth), "--per-tile", str(table)])
    assert result.exit_code == 1 and "disk full" in result.stderr
    assert table.read_text() == "earlier table\n"  # never half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_tile.csv", "pred", "truth"]
