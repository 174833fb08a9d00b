"""`kelpseg run` with two folds: out-of-fold threshold (single and ensemble), the best fold and
the ensemble predicted side by side, both scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from kelpseg.infer.threshold import Counts, choose, dice_count, iter_oof, mixture


@pytest.fixture(scope="module")
def two_folds(synth_data, tmp_path_factory: pytest.TempPathFactory):
    """A short run of the tiny config on both folds, with given unequal weights (`dice`
    weights of two folds are 0 and 1: the "ensemble" would be one model)."""
    from kelpseg.config import load_config
    from kelpseg.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("two_folds")
    sets = ["train.folds=all", "train.samples_per_epoch=16", "predict.weights=0.4,0.6"]
    cfg = load_config("tiny", sets)
    metrics = run_pipeline(synth_data.root, cfg, out, synth_data.test_masks)
    return out, metrics


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_single_and_ensemble_are_predicted_and_scored(two_folds, synth_data) -> None:
    out, _ = two_folds
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved["test"]) == {"single", "ensemble"}
    for name in ("single", "ensemble"):
        assert saved["test"][name]["tiles"] == synth_data.n_test
        assert 0.0 <= saved["test"][name]["dice"] <= 1.0
    assert len(list((out / "predictions").glob("*_kelp.tif"))) == synth_data.n_test
    assert len(list((out / "predictions_single").glob("*_kelp.tif"))) == synth_data.n_test
    tuned = json.loads((out / "threshold.json").read_text())
    assert saved["threshold"] == {
        "single": tuned["threshold"],
        "ensemble": tuned["ensemble"]["threshold"],
    }
    assert tuned["folds"] == [0, 1] and saved["ensemble"]["same_as_single"] is False
    w = np.array(saved["ensemble"]["weights"])
    assert w.sum() == pytest.approx(1.0)
    assert w.tolist() == pytest.approx([0.4, 0.6])
    assert (out / "test_per_tile.csv").is_file() and (out / "test_per_tile_single.csv").is_file()


def test_ensemble_masks_are_the_weighted_members_at_the_ensemble_threshold(
    two_folds, synth_data, tmp_path: Path
) -> None:
    from kelpseg.infer.predict import load_model, predict_tiles
    from kelpseg.io import discover

    out, metrics = two_folds
    ens = metrics["ensemble"]
    items = [(r.tile_id, r.image) for r in discover(synth_data.root) if r.split == "test"][:3]
    models = [load_model(p) for p in ens["members"]]
    t = metrics["threshold"]
    predict_tiles(models, items, tmp_path / "e", weights=ens["weights"], threshold=t["ensemble"])
    best = load_model(metrics["predicted_with"])
    predict_tiles(best, items, tmp_path / "s", threshold=t["single"])
    for tile_id, _ in items:
        name = f"{tile_id}_kelp.tif"
        assert np.array_equal(_read(out / "predictions" / name), _read(tmp_path / "e" / name))
        assert np.array_equal(
            _read(out / "predictions_single" / name), _read(tmp_path / "s" / name)
        )


def test_ensemble_threshold_is_tuned_on_the_weighted_members(two_folds) -> None:
    out, _ = two_folds
    tuned = json.loads((out / "threshold.json").read_text())
    per_fold: dict[int, Counts] = {}
    data: dict[int, list] = {}
    for b in iter_oof(out):
        per_fold.setdefault(b.fold, Counts()).add(b.proba, b.truth, b.valid)
        data.setdefault(b.fold, []).append(b)
    w = {int(k): v for k, v in tuned["ensemble"]["member_weights"].items()}
    assert sum(w.values()) == pytest.approx(1.0)
    mix = choose(mixture(per_fold, w))
    assert tuned["ensemble"]["member_threshold"] == mix["threshold"]
    # the mixture's Dice at a threshold = Dice of the weighted per-pixel rates, counted directly
    t = tuned["ensemble"]["member_threshold"]
    tp = pred = kelp = 0.0
    for fold, batches in data.items():
        p = np.concatenate([b.proba for b in batches])
        y = np.concatenate([b.truth for b in batches]) == 1
        v = np.concatenate([b.valid for b in batches])
        hit = (p >= np.float32(t)) & v
        n = v.sum()
        tp += w[fold] * (hit & y).sum() / n
        pred += w[fold] * hit.sum() / n
        kelp += w[fold] * (y & v).sum() / n
    assert tuned["ensemble"]["members_dice"] == pytest.approx(2 * tp / (pred + kelp), rel=1e-9)
    # with one fold's weight 1, the mixture is that fold's own out-of-fold curve
    only = choose(mixture(per_fold, {0: 1.0, 1: 0.0}))
    b0 = data[0]
    direct = dice_count(
        np.concatenate([b.proba for b in b0]),
        np.concatenate([b.truth for b in b0]),
        np.concatenate([b.valid for b in b0]),
        only["threshold"],
    )
    assert only["dice"] == pytest.approx(direct, rel=1e-9)


def test_report_shows_single_and_ensemble_side_by_side(two_folds, capsys, monkeypatch) -> None:
    from kelpseg.report import print_metrics

    monkeypatch.setenv("COLUMNS", "160")
    out, metrics = two_folds
    print_metrics(metrics, out)
    text = capsys.readouterr().out
    assert "best fold" in text and "2 folds, 0.4,0.6" in text
    assert f"{metrics['test']['single']['dice']:.4f}" in text
    assert f"{metrics['test']['ensemble']['dice']:.4f}" in text


def test_threshold_command_tunes_the_ensemble_with_the_runs_weights(
    two_folds, synth_data, tmp_path: Path
) -> None:
    import shutil

    from typer.testing import CliRunner

    from kelpseg.cli import app

    out, _ = two_folds
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("splits.csv", "config.yaml"):
        shutil.copy(out / name, copy / name)
    for folder in ("cache", "fold0", "fold1"):
        (copy / folder).symlink_to(out / folder)
    test_dir = synth_data.root / "test_satellite"
    res = CliRunner().invoke(app, ["threshold", str(copy), "--tiles", str(test_dir)])
    assert res.exit_code == 0, res.output
    assert "ensemble (0.4,0.6 weights)" in res.stdout  # from config.yaml
    again = json.loads((copy / "threshold.json").read_text())
    assert again["ensemble"] == json.loads((out / "threshold.json").read_text())["ensemble"]
    res = CliRunner().invoke(app, ["threshold", str(copy), "--weights", "1,0"])
    assert res.exit_code == 0, res.output
    ens = json.loads((copy / "threshold.json").read_text())["ensemble"]
    assert ens["member_weights"] == {"0": 1.0, "1": 0.0}
    assert "cached training tiles" in ens["calibration"]  # no --tiles
    fold0 = Counts()
    for b in iter_oof(copy, folds=[0]):
        fold0.add(b.proba, b.truth, b.valid)
    assert ens["member_threshold"] == choose(fold0)["threshold"]
    # one member with all the weight: its mean is itself, so the share matches at its threshold
    assert ens["threshold"] == ens["member_threshold"]


def test_ensemble_threshold_matches_the_members_kelp_share_on_the_test_tiles(
    two_folds, synth_data
) -> None:
    """Rate matching, recomputed: no candidate gives a share closer to the members' one."""
    import torch

    from kelpseg.data.dem_shift import correct_dem
    from kelpseg.infer.predict import load_model
    from kelpseg.infer.threshold import CANDIDATES
    from kelpseg.io import discover, read_tile
    from kelpseg.io.tiles import missing_pixels

    out, metrics = two_folds
    ens = json.loads((out / "threshold.json").read_text())["ensemble"]
    assert ens["calibration_tiles"] == synth_data.n_test
    models = [load_model(p, "cpu") for p in metrics["ensemble"]["members"]]
    w = np.array(metrics["ensemble"]["weights"], dtype=np.float32)
    means, member_hits, n = [], 0.0, 0
    for ref in (r for r in discover(synth_data.root) if r.split == "test"):
        raw = read_tile(ref.image)
        valid = ~missing_pixels(raw)
        with torch.inference_mode():
            x = torch.from_numpy(correct_dem(raw)[None])
            probs = np.stack([m.predict_proba(x)[0].numpy() for m in models])
        means.append(np.tensordot(w, probs, 1)[valid])
        member_hits += float(
            (w * (probs[:, valid] >= np.float32(ens["member_threshold"])).sum(1)).sum()
        )
        n += int(valid.sum())
    mean = np.concatenate(means)
    target = member_hits / n
    assert ens["kelp_share_members"] == pytest.approx(target, rel=1e-6)
    gaps = [abs((mean >= np.float32(t)).mean() - target) for t in CANDIDATES]
    assert abs(gaps[list(CANDIDATES).index(ens["threshold"])] - min(gaps)) < 1e-6


def test_predict_run_uses_the_ensembles_threshold(two_folds, synth_data, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kelpseg.cli import app
    from kelpseg.io import discover

    out, _ = two_folds
    tuned = json.loads((out / "threshold.json").read_text())
    tile = next(r.image for r in discover(synth_data.root) if r.split == "test")
    res = CliRunner().invoke(app, ["predict", "--run", str(out), str(tile), "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    with rasterio.open(next(tmp_path.glob("*_kelp.tif"))) as src:
        assert float(src.tags()["threshold"]) == tuned["ensemble"]["threshold"]
        assert src.tags()["members"] == "2"
