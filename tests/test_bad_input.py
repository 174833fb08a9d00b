"""Bad input never crashes a batch: each bad file is named, the rest is processed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.io import write_raster
from tests.tiles import make_tile, write_pair

runner = CliRunner()


def _dataset_with_every_problem(root: Path) -> dict[str, str]:
    """Four good tiles plus one of each bad kind; returns {tile_id: expected message}."""
    rng = np.random.default_rng(0)
    for i in range(4):
        write_pair(root, f"GD00000{i}", *make_tile(rng))
    img, mask = make_tile(rng)
    bad = {
        "BD000001": "expected 7 bands",
        "BD000002": "expected 64x64",
        "BD000003": "int16",
        "BD000004": "not a readable raster",
        "BD000005": "not a readable raster",
        "BD000006": "training tile has no",
        "BD000007": "mask values must be 0/1",
        "BD000008": "every reflectance pixel is missing",
    }
    sat = root / "train_satellite"
    write_pair(root, "BD000001", img[:6], mask)
    write_pair(root, "BD000002", img[:, :40, :40], mask[:40, :40])
    write_pair(root, "BD000003", img.astype(np.int32), mask)
    (sat / "BD000004_satellite.tif").write_bytes(b"GIF89a not a tiff")
    write_raster(root / "train_kelp/BD000004_kelp.tif", mask)
    write_raster(sat / "BD000005_satellite.tif", img, compress="none")
    (sat / "BD000005_satellite.tif").write_bytes(
        (sat / "BD000005_satellite.tif").read_bytes()[:3000]
    )
    write_raster(root / "train_kelp/BD000005_kelp.tif", mask)
    write_raster(sat / "BD000006_satellite.tif", img)  # mask missing, but metadata says train
    write_pair(root, "BD000007", img, mask * 255)
    missing = img.copy()
    missing[:] = -32768
    write_pair(root, "BD000008", missing, mask)
    ids = [f"GD00000{i}" for i in range(4)] + list(bad)
    rows = [f"{t}_satellite.tif,satellite,{t},True" for t in ids]
    (root / "metadata_fTq0l2T.csv").write_text(
        "filename,type,tile_id,in_train\n" + "\n".join(rows) + "\n"
    )
    return bad


def test_stats_skips_each_bad_file_with_a_clear_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    bad = _dataset_with_every_problem(data)
    result = runner.invoke(app, ["stats", str(data), "--out", str(tmp_path / "out"), "-c", "tiny"])
    assert result.exit_code == 0, result.output
    for tile_id, message in bad.items():
        lines = [ln for ln in result.stderr.splitlines() if tile_id in ln and "skipped" in ln]
        assert lines, f"{tile_id} not reported"
        assert message in lines[0], lines[0]
    assert "[stats] 4 ok, 8 skipped" in result.stderr
    table = (tmp_path / "out/tile_stats.csv").read_text()
    assert all(f"GD00000{i}" in table for i in range(4))
    assert not any(t in table for t in bad)


def test_strict_fails_on_any_bad_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _dataset_with_every_problem(data)
    result = runner.invoke(
        app, ["stats", str(data), "--out", str(tmp_path / "o"), "-c", "tiny", "--strict"]
    )
    assert result.exit_code == 1
    assert "--strict" in result.stderr


def test_nothing_valid_left_fails(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "train_satellite").mkdir(parents=True)
    (data / "train_satellite/XX000001_satellite.tif").write_text("junk")
    result = runner.invoke(app, ["stats", str(data), "--out", str(tmp_path / "o"), "-c", "tiny"])
    assert result.exit_code == 1
    assert "no valid input left" in result.stderr


def test_predict_skips_bad_files_and_writes_the_rest(tmp_path: Path, trained) -> None:
    rng = np.random.default_rng(5)
    good = write_raster(tmp_path / "in/GD1_satellite.tif", make_tile(rng)[0])
    (tmp_path / "in/BAD_satellite.tif").write_text("junk")
    out = tmp_path / "pred"
    result = runner.invoke(
        app, ["predict", str(trained.checkpoint), str(good.parent), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "BAD_satellite.tif" in result.stderr and "1 ok, 1 skipped" in result.stderr
    assert (out / "GD1_kelp.tif").is_file()


def test_config_rejects_unknown_keys(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "tiny", "--set", "train.max_epoch=3"])
    assert result.exit_code == 2
    assert "max_epoch" in result.stderr


@pytest.mark.parametrize("value", ["train.max_epochs=0", "predict.threshold=1.5"])
def test_config_rejects_bad_values(value: str) -> None:
    result = runner.invoke(app, ["config", "tiny", "--set", value])
    assert result.exit_code == 2


def test_config_override_reaches_the_config() -> None:
    result = runner.invoke(
        app, ["config", "tiny", "--set", "train.max_epochs=7", "-s", "features.indices=[ATSAVI]"]
    )
    assert result.exit_code == 0
    cfg = yaml.safe_load(result.stdout)
    assert cfg["train"]["max_epochs"] == 7
    assert cfg["features"]["indices"] == ["ATSAVI"]  # replaced, not merged with the defaults


STAGES = ["stats", "groups", "split", "train", "run", "eda"]


@pytest.mark.parametrize("command", STAGES)
@pytest.mark.parametrize("kind", ["empty", "no_tiles", "missing"])
def test_stage_on_a_folder_without_tiles_says_so(command: str, kind: str, tmp_path: Path) -> None:
    data = tmp_path / "indata"
    if kind != "missing":
        data.mkdir()
    if kind == "no_tiles":
        (data / "train_kelp").mkdir()
        (data / "notes.txt").write_text("no tiles here")
        write_raster(data / "train_kelp/A1_kelp.tif", np.zeros((64, 64), np.uint8))
    result = runner.invoke(app, [command, str(data), "-o", str(tmp_path / "out"), "-c", "tiny"])
    assert result.exit_code != 0, result.output
    line = result.output.strip().splitlines()[-1]
    assert str(data) in line, result.output
    expected = "not found" if kind == "missing" else "no *_satellite.tif tiles"
    assert expected in line, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["groups", "split", "train", "run"])
def test_stage_needing_training_tiles_says_so(command: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img, _ = make_tile(rng)
    write_raster(tmp_path / "d/test_satellite/T1_satellite.tif", img)
    result = runner.invoke(app, [command, str(tmp_path / "d"), "-o", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "no training tiles" in result.output.strip().splitlines()[-1], result.output


def test_run_fails_when_a_test_tile_cannot_be_predicted(synth_data, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data.root, data)
    broken = sorted((data / "test_satellite").glob("*_satellite.tif"))[0]
    broken.write_bytes(broken.read_bytes()[:2000])  # truncated
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(data), "-o", str(out), "-c", "tiny"])
    assert result.exit_code == 1, result.output
    line = result.output.strip().splitlines()[-1]
    assert "no prediction" in line and broken.name.removesuffix("_satellite.tif") in line
    assert not (out / "metrics.json").exists()  # no score that silently skipped a tile
