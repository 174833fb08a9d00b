"""``kelpseg submit``: the competition archive, complete or not written at all."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.infer.submit import SubmissionError, build_submission
from kelpseg.io import write_raster
from tests.tiles import SIZE, make_tile

runner = CliRunner()


def _test_set(tmp_path: Path, n: int = 3) -> tuple[Path, Path, list[np.ndarray]]:
    """``n`` test tiles and predicted masks, the last mask with nodata (255) pixels."""
    rng = np.random.default_rng(0)
    tiles, preds, masks = tmp_path / "test_satellite", tmp_path / "pred", []
    for i in range(n):
        img, mask = make_tile(rng)
        write_raster(tiles / f"T{i}_satellite.tif", img)
        pred = mask.copy()
        if i == n - 1:
            pred[:4] = 255  # missing input pixels
        write_raster(preds / f"T{i}_kelp.tif", pred, nodata=255)
        masks.append(mask)
    return tiles, preds, masks


def test_archive_holds_one_binary_mask_per_test_tile(tmp_path: Path) -> None:
    tiles, preds, masks = _test_set(tmp_path)
    sub = build_submission(preds, tiles, tmp_path / "out" / "submission.tar")
    assert sub.tiles == 3 and sub.nodata_pixels == 4 * SIZE
    with tarfile.open(sub.path) as tar:
        assert sorted(tar.getnames()) == ["T0_kelp.tif", "T1_kelp.tif", "T2_kelp.tif"]
        tar.extractall(tmp_path / "x", filter="data")
    for i, mask in enumerate(masks):
        with rasterio.open(tmp_path / "x" / f"T{i}_kelp.tif") as src:
            got = src.read(1)
            assert src.dtypes[0] == "uint8" and src.count == 1 and src.nodata is None
        assert got.shape == (SIZE, SIZE) and set(np.unique(got)) <= {0, 1}
        expected = mask.copy()
        if i == 2:
            expected[:4] = 0  # nodata is "no kelp" in the 0/1 format
        assert np.array_equal(got, expected)
    assert list((tmp_path / "out").iterdir()) == [sub.path]  # no temporary file left


def test_refuses_missing_predictions_and_writes_nothing(tmp_path: Path) -> None:
    tiles, preds, _ = _test_set(tmp_path)
    (preds / "T1_kelp.tif").unlink()
    out = tmp_path / "submission.tar"
    with pytest.raises(SubmissionError, match=r"1 of 3 test tiles have no prediction.*T1"):
        build_submission(preds, tiles, out)
    assert not out.exists()


def test_refuses_two_predictions_of_one_tile(tmp_path: Path) -> None:
    """A run folder holds predictions/ (ensemble) and predictions_single/: never pick one."""
    tiles, preds, _ = _test_set(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    preds.rename(run / "predictions")
    write_raster(run / "predictions_single" / "T1_kelp.tif", np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(SubmissionError, match=r"two files for tile T1"):
        build_submission(run, tiles, tmp_path / "submission.tar")
    assert build_submission(run / "predictions", tiles, tmp_path / "submission.tar").tiles == 3


def test_refuses_wrong_shape_or_values_naming_the_tiles(tmp_path: Path) -> None:
    tiles, preds, _ = _test_set(tmp_path)
    write_raster(preds / "T0_kelp.tif", np.zeros((SIZE, SIZE - 2), np.uint8))
    write_raster(preds / "T1_kelp.tif", np.full((SIZE, SIZE), 7, np.uint8))
    out = tmp_path / "submission.tar"
    with pytest.raises(SubmissionError, match=r"2 predictions cannot be submitted: T0 .*T1"):
        build_submission(preds, tiles, out)
    assert not out.exists()


def test_cli_says_what_it_wrote_and_fails_in_one_line(tmp_path: Path) -> None:
    tiles, preds, _ = _test_set(tmp_path)
    out = tmp_path / "s.tar"
    ok = runner.invoke(app, ["submit", str(preds), "--tiles", str(tiles), "-o", str(out)])
    assert ok.exit_code == 0, ok.output
    assert "3 masks" in ok.output and "written as 0" in ok.output and out.is_file()
    (preds / "T2_kelp.tif").unlink()
    bad = runner.invoke(app, ["submit", str(preds), "--tiles", str(tiles), "-o", str(out)])
    assert bad.exit_code == 1 and "T2" in bad.output and "Traceback" not in bad.output
    gone = runner.invoke(app, ["submit", str(tmp_path / "nope"), "--tiles", str(tiles)])
    assert gone.exit_code == 1 and "not found" in gone.output
