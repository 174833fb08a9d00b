"""`kelpseg run` with a held-out fold (train.holdout_fold): no member trains on it, the best
fold and the ensemble are scored on it, the ensemble's threshold is tuned there and the better
one is submitted (predict.choose)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio

HELD = 2


@pytest.fixture(scope="module")
def held_run(synth_data, tmp_path_factory: pytest.TempPathFactory):
    """Two folds of three trained (`all` = every fold but the held-out one), with the rows
    every member was given to train on recorded as training asked for them."""
    from kelpseg.config import load_config
    from kelpseg.data import datamodule
    from kelpseg.pipeline import run_pipeline

    seen: dict[int, list[str]] = {}
    real = datamodule.fold_tiles

    def spy(tiles: pd.DataFrame, fold: int):
        train, val = real(tiles, fold)
        seen[fold] = train["tile_id"].tolist()
        return train, val

    out = tmp_path_factory.mktemp("held")
    sets = [
        "split.folds=3",
        f"train.holdout_fold={HELD}",
        "train.folds=all",
        "train.samples_per_epoch=16",
    ]
    cfg = load_config("tiny", sets)
    mp = pytest.MonkeyPatch()
    mp.setattr(datamodule, "fold_tiles", spy)
    try:
        metrics = run_pipeline(synth_data.root, cfg, out, synth_data.test_masks)
    finally:
        mp.undo()
    return out, metrics, seen


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_no_member_trains_on_the_held_out_fold(held_run) -> None:
    out, metrics, seen = held_run
    splits = pd.read_csv(out / "splits.csv", dtype={"tile_id": str})
    held = set(splits.loc[splits["fold"] == HELD, "tile_id"])
    assert held and sorted(seen) == [0, 1] == sorted(int(k) for k in metrics["folds"])
    for fold, ids in seen.items():
        assert ids and not held & set(ids), fold
        own = set(splits.loc[splits["fold"] == fold, "tile_id"])
        assert not own & set(ids)  # nor on its validation fold
        assert json.loads((out / f"fold{fold}" / "holdout.json").read_text())["fold"] == HELD
    tuned = json.loads((out / "threshold.json").read_text())
    assert tuned["holdout"]["fold"] == HELD and tuned["holdout"]["tiles"] == len(held)
    assert tuned["folds"] == [0, 1]  # the held-out fold is nobody's validation fold
    assert metrics["holdout"]["tiles"] == len(held)


def _held_out_probs(out: Path, metrics: dict):
    """Every member's probabilities of the held-out tiles, counted directly."""
    import torch

    from kelpseg.data.cache import open_cache
    from kelpseg.infer.predict import load_model
    from kelpseg.io.tiles import missing_pixels

    splits = pd.read_csv(out / "splits.csv", dtype={"tile_id": str})
    packed = open_cache(out / "cache")
    rows = packed.row(splits.loc[splits["fold"] == HELD, "tile_id"].tolist())
    raw = np.asarray(packed.images[np.sort(rows)])
    truth = np.asarray(packed.masks[np.sort(rows)]) == 1
    valid = ~np.stack([missing_pixels(r) for r in raw])
    models = [load_model(p, "cpu") for p in metrics["ensemble"]["members"]]
    with torch.inference_mode():
        probs = np.stack([m.predict_proba(torch.from_numpy(raw)).numpy() for m in models])
    return probs, truth, valid


def test_held_out_scores_and_threshold_are_counted_on_the_held_out_tiles(held_run) -> None:
    from kelpseg.infer.threshold import CANDIDATES, dice_count

    out, metrics, _ = held_run
    probs, truth, valid = _held_out_probs(out, metrics)
    tuned = json.loads((out / "threshold.json").read_text())
    hold = tuned["holdout"]
    for k, fold in enumerate(metrics["folds"]):
        m = hold["members"][fold]
        assert m["dice"] == pytest.approx(dice_count(probs[k], truth, valid, m["threshold"]))
        at_oof = dice_count(probs[k], truth, valid, tuned["threshold"])
        assert m["dice_at_oof"] == pytest.approx(at_oof)
    best = max(metrics["folds"], key=lambda f: metrics["folds"][f]["val_dice"])
    assert hold["single"]["fold"] == int(best)
    w = np.array(metrics["ensemble"]["weights"], dtype=np.float32)
    mean = np.tensordot(w, probs, 1)
    curve = [dice_count(mean, truth, valid, t) for t in CANDIDATES]
    e = hold["ensemble"]
    assert e["dice"] == pytest.approx(max(curve), abs=1e-6)
    assert curve[list(CANDIDATES).index(e["threshold"])] == pytest.approx(max(curve), abs=1e-6)
    assert tuned["ensemble"]["threshold"] == e["threshold"]
    assert tuned["ensemble"]["holdout_fold"] == HELD
    assert metrics["threshold"] == {
        "single": hold["single"]["threshold"],
        "ensemble": e["threshold"],
    }


def test_the_one_with_the_higher_held_out_dice_is_submitted(held_run, synth_data) -> None:
    out, metrics, _ = held_run
    hold = metrics["holdout"]
    dice = {"single": hold["single"]["dice"], "ensemble": hold["ensemble"]["dice"]}
    pick = "ensemble" if dice["ensemble"] > dice["single"] else "single"
    other = "single" if pick == "ensemble" else "ensemble"
    choice = metrics["choice"]
    assert choice["predictions"] == pick == hold["better"]
    assert choice["holdout_dice"] == dice and f"held-out fold {HELD}" in choice["reason"]
    assert metrics["predictions"] == {
        pick: str(out / "predictions"),
        other: str(out / f"predictions_{other}"),
    }
    assert set(metrics["test"]) == {"single", "ensemble"}
    assert (out / "test_per_tile.csv").is_file()
    assert (out / f"test_per_tile_{other}.csv").is_file()
    for folder in ("predictions", f"predictions_{other}"):
        assert len(list((out / folder).glob("*_kelp.tif"))) == synth_data.n_test
    # the submitted masks are the chosen model's at its threshold
    from kelpseg.infer.predict import load_model, predict_tiles
    from kelpseg.io import discover

    tile = next(r for r in discover(synth_data.root) if r.split == "test")
    t = metrics["threshold"][pick]
    ens = metrics["ensemble"]
    if pick == "ensemble":
        models, w = [load_model(p) for p in ens["members"]], ens["weights"]
    else:
        models, w = [load_model(metrics["predicted_with"])], None
    got = out / "again"
    predict_tiles(models, [(tile.tile_id, tile.image)], got, weights=w, threshold=t)
    name = f"{tile.tile_id}_kelp.tif"
    assert np.array_equal(_read(out / "predictions" / name), _read(got / name))


def test_report_names_both_held_out_scores_and_the_choice(held_run, capsys, monkeypatch) -> None:
    from kelpseg.report import print_metrics

    monkeypatch.setenv("COLUMNS", "200")
    out, metrics, _ = held_run
    print_metrics(metrics, out)
    text = capsys.readouterr().out
    hold = metrics["holdout"]
    for dice in (hold["single"]["dice"], hold["ensemble"]["dice"]):
        assert f"{dice:.4f}" in text
    pick = metrics["choice"]["predictions"]
    assert f"* predictions (the one to submit): {pick}; held-out fold {HELD}" in text
    rows = [ln.strip() for ln in text.splitlines()]
    marked = [ln for ln in rows if ln.startswith("* ") and not ln.startswith("* predictions")]
    assert len(marked) == 1 and ("best fold" in marked[0]) == (pick == "single")


def test_predict_run_uses_the_held_out_threshold(held_run, synth_data, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from kelpseg.cli import app
    from kelpseg.io import discover

    out, metrics, _ = held_run
    tile = next(r.image for r in discover(synth_data.root) if r.split == "test")
    res = CliRunner().invoke(app, ["predict", "--run", str(out), str(tile), "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    with rasterio.open(next(tmp_path.glob("*_kelp.tif"))) as src:
        assert float(src.tags()["threshold"]) == metrics["threshold"]["ensemble"]
    from kelpseg.infer.run_folder import tuned_threshold

    tuned = tuned_threshold(out, metrics["ensemble"]["weights"])
    assert f"tuned on held-out fold {HELD}" in tuned.source
    other = tuned_threshold(out, [0.9, 0.1])  # another ensemble: not its threshold
    assert other.value == json.loads((out / "threshold.json").read_text())["threshold"]


def test_threshold_command_retunes_on_the_held_out_fold(held_run, tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from kelpseg.cli import app

    out, _, _ = held_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("splits.csv", "config.yaml"):
        shutil.copy(out / name, copy / name)
    for folder in ("cache", "fold0", "fold1"):
        (copy / folder).symlink_to(out / folder)
    res = CliRunner().invoke(app, ["threshold", str(copy)])
    assert res.exit_code == 0, res.output
    assert f"held-out fold {HELD}" in res.stdout
    again = json.loads((copy / "threshold.json").read_text())
    assert again["holdout"] == json.loads((out / "threshold.json").read_text())["holdout"]


def test_choice_without_a_held_out_fold_says_there_is_no_honest_comparison() -> None:
    from kelpseg.config import load_config
    from kelpseg.pipeline import NO_HOLDOUT, choose_predictions

    cfg = load_config("tiny", ["split.folds=3"])
    got = choose_predictions(cfg, True, {"threshold": 0.5})
    assert got["predictions"] == "ensemble" and NO_HOLDOUT in got["reason"]
    assert "holdout_dice" not in got
    hold = {
        "fold": 2,
        "tiles": 5,
        "single": {"dice": 0.7},
        "ensemble": {"dice": 0.7},
        "better": "single",
    }
    tie = choose_predictions(load_config("tiny", ["split.folds=3"]), True, {"holdout": hold})
    assert tie["predictions"] == "single" and "a tie" in tie["reason"]
    forced = load_config("tiny", ["split.folds=3", "predict.choose=ensemble"])
    got = choose_predictions(forced, True, {"holdout": hold})
    assert got["predictions"] == "ensemble" and got["holdout_dice"]["single"] == 0.7
    assert choose_predictions(cfg, False, None)["by"] == "one fold"
    off = load_config("tiny", ["split.folds=3", "train.holdout_fold=2", "train.folds=0"])
    assert "not scored" in choose_predictions(off, True, None)["reason"]


def test_report_without_a_held_out_fold_says_so(capsys, monkeypatch) -> None:
    from kelpseg.pipeline import NO_HOLDOUT
    from kelpseg.report import print_metrics

    monkeypatch.setenv("COLUMNS", "400")
    metrics = {
        "val_dice": 0.7,
        "folds": {"0": {"val_dice": 0.6}, "1": {"val_dice": 0.8}},
        "ensemble": {"members": ["a", "b"], "weights_from": "equal"},
        "choice": {"predictions": "ensemble", "reason": NO_HOLDOUT + ": the ensemble"},
        "test": {"single": {"dice": 0.71}, "ensemble": {"dice": 0.72}},
        "train_tiles": 4,
        "aoi_groups": 2,
        "test_tiles": 2,
        "predicted_with": "b",
    }
    print_metrics(metrics, Path("out"))
    text = capsys.readouterr().out
    assert "no honest out-of-fold comparison" in text and "0.7100" in text


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        (["train.holdout_fold=1"], "needs split.folds >= 3"),
        (["split.folds=3", "train.holdout_fold=3"], "not a fold of split.folds=3"),
        (["split.folds=3", "train.holdout_fold=0"], "includes the held-out fold 0"),
        (["predict.choose=best"], "auto"),
    ],
)
def test_holdout_keys_are_validated(sets: list[str], match: str) -> None:
    from kelpseg.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=match):
        load_config("tiny", sets)


def test_folds_all_leaves_out_the_held_out_fold_and_the_keys_are_documented() -> None:
    from typer.testing import CliRunner

    from kelpseg.cli import app
    from kelpseg.config import load_config
    from kelpseg.pipeline import fold_list

    cfg = load_config("tiny", ["split.folds=4", "train.holdout_fold=1", "train.folds=all"])
    assert fold_list(cfg) == [0, 2, 3]
    res = CliRunner().invoke(app, ["config", "default"])
    assert res.exit_code == 0
    assert "holdout_fold: null" in res.stdout and "choose: auto" in res.stdout


def test_members_that_held_out_different_folds_are_refused(tmp_path: Path) -> None:
    from kelpseg.infer.errors import RunFolderError
    from kelpseg.infer.run_folder import held_out_fold, write_holdout

    for k, held in ((0, 3), (1, 3)):
        (tmp_path / f"fold{k}").mkdir()
        write_holdout(tmp_path / f"fold{k}", held, 7)
    assert held_out_fold(tmp_path, [0, 1]) == 3
    (tmp_path / "fold2").mkdir()
    assert held_out_fold(tmp_path, [0, 1, 2]) is None  # fold 2 has no record: no claim
    write_holdout(tmp_path / "fold2", None, 0)
    with pytest.raises(RunFolderError, match="held out different folds"):
        held_out_fold(tmp_path, [0, 1, 2])


def test_a_run_that_chose_its_best_fold_is_predicted_by_it(
    held_run, synth_data, tmp_path: Path
) -> None:
    """`--run OUT` follows what `run` submitted: the best fold alone at its threshold when it
    chose it (predict.choose or the held-out fold), every fold with --all-folds."""
    import shutil

    from typer.testing import CliRunner

    from kelpseg.cli import app
    from kelpseg.infer.assemble import assemble
    from kelpseg.io import discover

    out, metrics, _ = held_run
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("cache", "predictions*", "ml*"))
    best = Path(metrics["predicted_with"])
    chose = {
        **metrics,
        "choice": {"predictions": "single", "by": "predict.choose", "reason": "asked"},
        "predicted_with": str(run / best.parent.name / best.name),
    }
    (run / "metrics.json").write_text(json.dumps(chose))
    single = assemble(run=run)
    assert [c.resolve() for c in single.checkpoints] == [Path(chose["predicted_with"]).resolve()]
    assert single.threshold == metrics["threshold"]["single"]
    assert any("chose the best fold alone (asked)" in n for n in single.notes)
    every = assemble(run=run, all_folds=True)
    assert len(every.checkpoints) == len(metrics["folds"]) == 2
    assert every.threshold == metrics["threshold"]["ensemble"]

    tile = next(r.image for r in discover(synth_data.root) if r.split == "test")
    res = CliRunner().invoke(app, ["predict", "--run", str(run), str(tile), "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "chose the best fold alone" in res.output
    with rasterio.open(next(tmp_path.glob("*_kelp.tif"))) as src:
        assert float(src.tags()["threshold"]) == metrics["threshold"]["single"]

    (run / "metrics.json").write_text("{not json")
    from kelpseg.infer.errors import RunFolderError

    with pytest.raises(RunFolderError, match=r"metrics\.json: not the metrics"):
        assemble(run=run)
