"""Out-of-fold threshold tuning on the session's tiny finished run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.infer.threshold import CANDIDATES, Counts, choose, dice_count, iter_oof


@pytest.fixture(scope="module")
def tuned(trained, tmp_path_factory: pytest.TempPathFactory):
    """A copy of the run's fold/cache files, tuned through the CLI."""
    out = tmp_path_factory.mktemp("tuned")
    for name in ("splits.csv", "tile_stats.csv"):
        shutil.copy(trained.out / name, out / name)
    for folder in ("cache", *(p.parent.name for p in trained.out.glob("fold*/result.json"))):
        (out / folder).symlink_to(trained.out / folder)
    res = CliRunner().invoke(app, ["threshold", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_threshold_file_and_curve(tuned: Path) -> None:
    res = json.loads((tuned / "threshold.json").read_text())
    assert (tuned / "threshold.png").stat().st_size > 1000
    assert 0.05 <= res["threshold"] <= 0.95
    assert res["dice"] >= res["dice_at_0.5"]
    assert res["dice"] == max(res["curve"]["dice"])
    assert len(res["curve"]["threshold"]) == len(CANDIDATES)
    assert res["kelp_pixels"] > 0


def test_histogram_dice_equals_direct_count(tuned: Path) -> None:
    batches = list(iter_oof(tuned))
    proba = np.concatenate([b.proba for b in batches])
    truth = np.concatenate([b.truth for b in batches])
    valid = np.concatenate([b.valid for b in batches])
    assert valid.any() and ((truth == 1) & valid).any()
    counts = Counts()
    for b in batches:
        counts.add(b.proba, b.truth, b.valid)
    dice = counts.dice()
    for j in (0, 20, 45, 70, 90):
        assert dice[j] == pytest.approx(dice_count(proba, truth, valid, CANDIDATES[j]), abs=1e-12)
    saved = json.loads((tuned / "threshold.json").read_text())
    assert saved["threshold"] == choose(counts)["threshold"]
    assert saved["pixels"] == int(valid.sum())  # missing pixels are not counted


def test_counts_exact_at_boundaries() -> None:
    """Probabilities exactly at a threshold count as kelp, as ``p >= t`` does."""
    proba = CANDIDATES.astype(np.float32)
    truth = (np.arange(len(proba)) % 2).astype(np.uint8)
    valid = np.ones(len(proba), dtype=bool)
    valid[3] = False
    counts = Counts()
    counts.add(proba, truth, valid)
    for j, t in enumerate(CANDIDATES):
        assert counts.dice()[j] == pytest.approx(dice_count(proba, truth, valid, t), abs=1e-12)


def test_threshold_refuses_a_folder_without_folds(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["threshold", str(tmp_path)])
    assert res.exit_code == 1
    assert "no finished fold" in res.output and "Traceback" not in res.output


def test_tuned_threshold_is_used_only_for_the_ensemble_it_was_tuned_for(tmp_path: Path) -> None:
    from kelpseg.infer.run_folder import tuned_threshold

    assert tuned_threshold(tmp_path) is None
    (tmp_path / "threshold.json").write_text(
        json.dumps(
            {
                "threshold": 0.4,
                "tta": "none",
                "ensemble": {
                    "threshold": 0.3,
                    "member_threshold": 0.6,
                    "member_weights": {"0": 0.2, "1": 0.3, "2": 0.5},
                },
            }
        )
    )
    w = [0.2, 0.3, 0.5]
    assert tuned_threshold(tmp_path).value == 0.4  # one model: its own out-of-fold threshold
    assert tuned_threshold(tmp_path, w).value == 0.3  # soft vote: the mean's calibrated one
    assert tuned_threshold(tmp_path, w, "hard").value == 0.6  # hard vote: each member is cut
    four = tuned_threshold(tmp_path, [0.25] * 4)  # not the ensemble that was tuned
    assert four.value == 0.4 and "not [0.25" in four.note
    equal = tuned_threshold(tmp_path, [1 / 3] * 3)  # three members, other weights
    assert equal.value == 0.4 and "tuned for weights [0.2, 0.3, 0.5]" in equal.note
    assert "TTA none" in tuned_threshold(tmp_path, w, tta="d4").note
    (tmp_path / "threshold.json").write_text("{}")
    with pytest.raises(ValueError, match="not a threshold file"):
        tuned_threshold(tmp_path)
