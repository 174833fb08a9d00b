"""Ensembles: weights summing to one, soft and hard votes, the members' spread, `--run`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.config import load_config
from kelpseg.infer.ensemble import EnsembleError, member_weights
from kelpseg.infer.predict import load_model, predict_tiles
from kelpseg.io import write_raster
from kelpseg.train.module import KelpSegModule
from tests.test_predict import _one_line_error, _save
from tests.tiles import make_tile

runner = CliRunner()


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two untrained tiny models with different weights, saved as a run's two folds."""
    import torch

    run = tmp_path_factory.mktemp("run")
    paths = []
    for fold, dice in ((0, 0.6), (1, 0.8)):
        torch.manual_seed(fold)
        m = KelpSegModule(load_config("tiny").model_dump(mode="json")).eval()
        (run / f"fold{fold}").mkdir()
        ck = _save(m, run / f"fold{fold}" / "best.ckpt")
        result = {"fold": fold, "checkpoint": str(ck), "val_dice": dice, "metrics": {}}
        (run / f"fold{fold}" / "result.json").write_text(json.dumps({**result, "run_id": "x"}))
        paths.append(ck)
    return paths


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(3)
    for i in range(3):
        write_raster(folder / f"T{i}_satellite.tif", make_tile(rng)[0])
    return folder


def test_weights_always_sum_to_one() -> None:
    np.testing.assert_allclose(member_weights(4), [0.25] * 4)
    np.testing.assert_allclose(member_weights(2, "1,3"), [0.25, 0.75])
    # dice: min-max scaled as the seed did, then normalized (not divided by n + 1)
    w = member_weights(3, "dice", [0.6, 0.7, 0.8])
    np.testing.assert_allclose(w, [0.0, 1 / 3, 2 / 3])
    for got in (member_weights(10), w, member_weights(3, "dice", [0.5, 0.5, 0.5])):
        assert got.sum() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(EnsembleError, match="3 weights for 2"):
        member_weights(2, "1,2,3")
    with pytest.raises(EnsembleError, match="val Dice"):
        member_weights(2, "dice", [0.5, None])
    # one rule for numbers, in the config and at prediction time
    from kelpseg.config import ConfigError, load_config

    for bad in ("inf,1", "-1,2", "0,0", "a,b"):
        with pytest.raises(EnsembleError, match="weights"):
            member_weights(2, bad)
        with pytest.raises(ConfigError, match="weights"):
            load_config("tiny", [f"predict.weights={bad}"])


def test_soft_ensemble_is_the_weighted_mean_and_spread_the_weighted_std(
    members: list[Path], tiles: Path, tmp_path: Path
) -> None:
    from kelpseg.io import find_images

    items = find_images([tiles])
    models = [load_model(c, "cpu") for c in members]
    singles = []
    for i, m in enumerate(models):
        predict_tiles(m, items, tmp_path / f"m{i}", probabilities=True, threshold=0.5)
        singles.append(_read(tmp_path / f"m{i}" / "T0_proba.tif"))
    predict_tiles(
        models, items, tmp_path / "e", probabilities=True, spread=True, weights=[1, 3],
        threshold=0.5,
    )  # fmt: skip
    p0, p1 = singles
    mean = 0.25 * p0 + 0.75 * p1
    np.testing.assert_allclose(_read(tmp_path / "e" / "T0_proba.tif"), mean, atol=1e-6)
    std = np.sqrt(0.25 * (p0 - mean) ** 2 + 0.75 * (p1 - mean) ** 2)
    np.testing.assert_allclose(_read(tmp_path / "e" / "T0_spread.tif"), std, atol=1e-6)
    assert std.max() > 0  # the members differ
    np.testing.assert_array_equal(_read(tmp_path / "e" / "T0_kelp.tif"), mean >= 0.5)


def test_hard_vote_is_the_mean_of_the_members_masks(
    members: list[Path], tiles: Path, tmp_path: Path
) -> None:
    from kelpseg.io import find_images

    items = find_images([tiles])
    models = [load_model(c, "cpu") for c in members]
    t = 0.5
    masks = []
    for i, m in enumerate(models):
        predict_tiles(m, items, tmp_path / f"m{i}", probabilities=True, threshold=t)
        masks.append(_read(tmp_path / f"m{i}" / "T1_kelp.tif"))
    predict_tiles(
        models, items, tmp_path / "h", probabilities=True, vote="hard", weights=[1, 3], threshold=t
    )
    votes = 0.25 * masks[0] + 0.75 * masks[1]
    np.testing.assert_allclose(_read(tmp_path / "h" / "T1_proba.tif"), votes, atol=1e-6)
    np.testing.assert_array_equal(_read(tmp_path / "h" / "T1_kelp.tif"), votes >= 0.5)


def test_run_folder_uses_every_fold_dice_weights_and_tuned_threshold(
    members: list[Path], tiles: Path, tmp_path: Path
) -> None:
    run = members[0].parent.parent
    (run / "threshold.json").write_text(json.dumps({"threshold": 0.37}))
    try:
        out = tmp_path / "o"
        args = ["predict", "--run", str(run), str(tiles), "-o", str(out), "--weights", "dice"]
        result = runner.invoke(app, [*args, "--probabilities"])
    finally:
        (run / "threshold.json").unlink()
    assert result.exit_code == 0, result.output
    assert "2 members" in result.stdout and "0.37" in result.stdout
    with rasterio.open(out / "T0_kelp.tif") as src:
        assert src.tags()["threshold"] == "0.37" and src.tags()["members"] == "2"
    # dice weights (0.6, 0.8) -> (0, 1): the ensemble is the second fold alone
    single = tmp_path / "s"
    predict_tiles(load_model(members[1], "cpu"), [("T0", tiles / "T0_satellite.tif")], single,
                  probabilities=True, threshold=0.37)  # fmt: skip
    np.testing.assert_allclose(
        _read(out / "T0_proba.tif"), _read(single / "T0_proba.tif"), atol=1e-6
    )


def test_a_bad_member_is_refused_before_any_work(
    members: list[Path], tiles: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "o"
    args = ["predict", "-m", str(members[0]), "-m", str(bad), str(tiles), "-o", str(out)]
    _one_line_error(runner.invoke(app, args), str(bad))
    assert not out.exists() or not any(out.iterdir())
    args = ["predict", "-m", str(members[0]), "-m", str(members[1]), str(tiles), "-o", str(out)]
    _one_line_error(runner.invoke(app, [*args, "--weights", "1,2,3"]), "3 weights for 2")
