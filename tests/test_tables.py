"""Pipeline tables are reused only while their inputs and config match (issue 7, sections 3-5)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.config import load_config
from kelpseg.pipeline import prepare, run_groups, run_stats

runner = CliRunner()


def _cli(*args: str) -> str:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def _partition(groups: pd.DataFrame) -> set[frozenset[str]]:
    return {frozenset(g["tile_id"]) for _, g in groups.groupby("aoi")}


def test_split_uses_the_groups_that_groups_made(synth_data, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _cli("groups", synth_data.root, "-o", out, "-c", "tiny", "--threshold", "0.2")
    made = pd.read_csv(out / "groups.csv", dtype={"tile_id": str})
    stamp = (out / "groups.csv").stat().st_mtime_ns
    # the default threshold groups these tiles differently: reusing them is observable
    default = run_groups(*run_stats(synth_data.root, load_config("tiny"), tmp_path / "d"),
                         load_config("tiny"), tmp_path / "d")  # fmt: skip
    assert _partition(default) != _partition(made)

    output = _cli("split", synth_data.root, "-o", out, "-c", "tiny")
    assert "groups.threshold=0.2" in output  # says which remembered setting it used
    assert (out / "groups.csv").stat().st_mtime_ns == stamp  # not rebuilt
    folds = pd.read_csv(out / "splits.csv", dtype={"tile_id": str})
    assert _partition(folds) == _partition(made)
    assert (folds.groupby("aoi")["fold"].nunique() == 1).all()

    # an explicit setting wins, and the stale tables say why they are recomputed
    output = _cli(
        "split", synth_data.root, "-o", out, "-c", "tiny", "--set", "groups.threshold=0.97"
    )
    assert "groups.csv is stale (groups.threshold 0.2 -> 0.97 changed)" in output
    assert _partition(pd.read_csv(out / "groups.csv", dtype={"tile_id": str})) == _partition(
        default
    )


def test_groups_reuses_matching_stats_and_recomputes_stale_ones(
    synth_data, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    _cli("stats", synth_data.root, "-o", out, "-c", "tiny")
    stats_time = (out / "tile_stats.csv").stat().st_mtime_ns
    output = _cli("groups", synth_data.root, "-o", out, "-c", "tiny")
    assert (out / "tile_stats.csv").stat().st_mtime_ns == stats_time  # stats not rerun
    assert "tile_stats.csv is up to date" in output

    # a changed input file makes every table stale
    image = next(synth_data.root.rglob("*_satellite.tif"))
    st = image.stat()
    try:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        capsys.readouterr()
        run_stats(synth_data.root, load_config("tiny"), out)
        assert (
            "tile_stats.csv is stale (input tiles changed): recomputing" in capsys.readouterr().err
        )
    finally:
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (out / "tile_stats.csv").stat().st_mtime_ns != stats_time

    # a changed config section the table depends on, too; one it does not depend on, not
    cfg = load_config("tiny", ["groups.grid=4"])
    run_stats(synth_data.root, cfg, out)
    run_groups(*run_stats(synth_data.root, cfg, out), cfg, out)
    err = capsys.readouterr().err
    assert "tile_stats.csv is up to date" in err
    assert "groups.csv is stale (groups.grid 8 -> 4 changed): recomputing" in err


def test_exclude_leaves_tiles_in_validation(synth_data, tmp_path: Path) -> None:
    from kelpseg.data.datamodule import fold_tiles

    cfg = load_config("tiny", ["data.exclude=[mask_suspect, high_corrupted_pixels_pct]"])
    prep = prepare(synth_data.root, cfg, tmp_path)
    excluded = prep.train[prep.train["excluded"]]
    assert len(excluded) > 0 and (excluded["fold"] >= 0).all()  # grouped and split as any
    splits = pd.read_csv(tmp_path / "splits.csv", dtype={"tile_id": str})
    assert set(excluded["tile_id"]) <= set(splits["tile_id"])

    fold = int(excluded["fold"].iloc[0])
    train_tiles, val_tiles = fold_tiles(prep.train, fold)  # what train_fold's DataModule uses
    seen = {"train": train_tiles, "val": val_tiles}
    assert not seen["train"]["excluded"].any()  # never trained on
    in_val = excluded.loc[excluded["fold"] == fold, "tile_id"]
    assert set(in_val) <= set(seen["val"]["tile_id"])  # still validated


def test_resume_with_a_changed_config_refuses(synth_data, trained) -> None:
    from kelpseg.pipeline import run_training
    from tests.conftest import RUN_SETS

    cfg = load_config("tiny", [*RUN_SETS, "train.max_epochs=6", "train.resume=true"])
    prep = prepare(synth_data.root, cfg, trained.out)
    with pytest.raises(ValueError, match=r"another config \(train.max_epochs 5 -> 6\)"):
        run_training(prep, cfg, trained.out)


def test_mismatched_tile_size_gives_a_hint(synth_data, tmp_path: Path) -> None:
    res = runner.invoke(app, ["stats", str(synth_data.root), "-o", str(tmp_path), "-c", "default"])
    assert res.exit_code != 0
    line = res.output.strip().splitlines()[-1]
    assert "are 64x64 but data.tile_size is 350" in line and "data.tile_size=64" in line
    assert "Traceback" not in res.output


def test_any_tile_size_trains(tmp_path: Path) -> None:
    """``data.tile_size: null``: tiles of two sizes are packed padded and a fold trains."""
    from kelpseg.data.cache import open_cache
    from kelpseg.pipeline import run_training
    from kelpseg.synth import generate

    root = tmp_path / "data"
    for name, seed, size in (("a", 1, 64), ("b", 2, 48)):
        shutil.copytree(generate(tmp_path / name, aois=3, seed=seed, size=size).root, root / name)
    cfg = load_config(
        "tiny",
        [
            "data.tile_size=null",
            "model.encoder=tu-mobilenetv3_small_050",
            "model.decoder_channels=[16,16,16,8,8]",
            "train.log_images=0",
            "groups.threshold=0.99",
        ],
    )
    prep = prepare(root, cfg, tmp_path / "out")
    assert set(prep.train["height"]) == {48, 64}
    (result,) = run_training(prep, cfg, tmp_path / "out")
    assert np.isfinite(result.val_dice)
    packed = open_cache(tmp_path / "out" / "cache")
    assert packed.images.shape[2:] == (64, 64)
    small = prep.train.loc[prep.train["height"] == 48, "tile_id"].iloc[0]
    row = packed.row([small])[0]
    assert (packed.images[row, :, 48:, :] == -32768).all()  # padding is missing data
    assert (packed.masks[row, 48:, :] == 0).all()


def test_one_read_feeds_stats_and_the_training_cache(synth_data, tmp_path: Path) -> None:
    from kelpseg.data.cache import build_cache
    from kelpseg.data.groups import dem_shifts

    cfg = load_config("tiny")
    prep = prepare(synth_data.root, cfg, tmp_path / "one", pack=True)
    ids = prep.train["tile_id"].tolist()
    refs = [prep.refs[t] for t in ids]
    shifts = dict(zip(ids, dem_shifts(prep.stats, ids), strict=True))
    assert any(s != (0, 0) for s in shifts.values())  # the DEM-shift correction is exercised
    packed_file = tmp_path / "one/cache/images.npy"
    before = packed_file.stat().st_mtime_ns
    fused = build_cache(refs, tmp_path / "one/cache", 64, shifts)
    assert packed_file.stat().st_mtime_ns == before  # reused, not read again
    plain = build_cache(refs, tmp_path / "two/cache", 64, shifts)
    rows_f, rows_p = fused.row(ids), plain.row(ids)
    assert np.array_equal(np.asarray(fused.images[rows_f]), np.asarray(plain.images[rows_p]))
    assert np.array_equal(np.asarray(fused.masks[rows_f]), np.asarray(plain.masks[rows_p]))


def test_stats_warns_about_a_tile_in_another_band_order(synth_data, tmp_path: Path) -> None:
    from kelpseg.io import read_tile, write_raster

    data = tmp_path / "data"
    shutil.copytree(synth_data.root, data)
    tile = sorted((data / "train_satellite").glob("*_satellite.tif"))[0]
    raw = read_tile(tile)
    raw[:5] = raw[:5][::-1].copy()  # Blue, Green, Red, NIR, SWIR1 (Landsat's own order)
    write_raster(tile, raw)
    res = runner.invoke(app, ["stats", str(data), "-o", str(tmp_path / "out"), "-c", "tiny"])
    assert res.exit_code == 0, res.output
    warned = [line for line in res.output.splitlines() if "warning" in line]
    assert len(warned) == 1 and tile.name in warned[0], warned


def test_prepare_discovers_the_tiles_once(synth_data, tmp_path: Path) -> None:
    import kelpseg.pipeline as pipeline

    calls = []
    real = pipeline.discover

    def counting(root):
        calls.append(root)
        return real(root)

    with mock.patch.object(pipeline, "discover", counting):
        prepare(synth_data.root, load_config("tiny"), tmp_path)
    assert len(calls) == 1


def test_run_fails_when_a_test_tile_got_no_prediction(synth_data, tmp_path: Path) -> None:
    """A test tile the predictor skipped stops ``run`` (naming it) before any score."""
    from types import SimpleNamespace

    import kelpseg.infer.assemble as assemble
    import kelpseg.infer.predict as predict
    import kelpseg.pipeline as pipeline
    from kelpseg.io import BatchReport
    from kelpseg.io.errors import NothingValidError

    def predict_assembly(ens, items, out, **kw):
        return SimpleNamespace(
            report=BatchReport("predict", ok=len(items) - 1),
            masks={t: out / f"{t}_kelp.tif" for t, _ in items[1:]},
        )

    fold = SimpleNamespace(fold=0, val_dice=0.5, checkpoint=Path("x.ckpt"), run_id="r", metrics={})
    test_ids = sorted(r.tile_id for r in pipeline.discover(synth_data.root) if r.split == "test")
    with (
        mock.patch.object(pipeline, "run_training", lambda *a: [fold]),
        mock.patch.object(assemble, "assemble", lambda *a, **k: None),  # no checkpoint to load
        mock.patch.object(predict, "predict_assembly", predict_assembly),
        pytest.raises(NothingValidError, match=f"1 test tile.*no prediction.*{test_ids[0]}"),
    ):
        cfg = load_config("tiny", ["predict.tune_threshold=false"])  # no fold was trained
        pipeline.run_pipeline(synth_data.root, cfg, tmp_path, synth_data.test_masks)
    assert not (tmp_path / "metrics.json").exists()


def test_resume_of_an_unfinished_fold_with_a_changed_config_refuses(tmp_path: Path) -> None:
    """The config an interrupted fold began with is read from its last.ckpt."""
    import torch

    from kelpseg.train.fit import train_fold

    began = load_config("tiny")
    (tmp_path / "fold0").mkdir()
    torch.save(
        {"hyper_parameters": {"config": began.model_dump(mode="json")}},
        tmp_path / "fold0/last.ckpt",
    )
    tiles = pd.DataFrame({"tile_id": ["a", "b"], "fold": [0, 1]})
    cfg = load_config("tiny", ["train.resume=true", "train.lr=0.01"])
    with pytest.raises(ValueError, match=r"fold 0 .* another config \(train.lr 0.0003 -> 0.01\)"):
        train_fold(cfg, tiles, mock.MagicMock(), 0, tmp_path)
    assert (tmp_path / "fold0/last.ckpt").is_file()  # nothing of the old run removed
