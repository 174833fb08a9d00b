"""The one resolver of members and settings (kelpseg.infer.assemble): every command that
predicts gets the same weights, threshold, precision and post-processing from the same inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kelpseg.config import ConfigError, load_config
from kelpseg.infer.assemble import AssembleError, assemble
from kelpseg.infer.ensemble import EnsembleError
from kelpseg.train.module import KelpSegModule
from tests.test_predict import _save


def _model(threshold: float = 0.5, weights: str = "equal") -> KelpSegModule:
    torch.manual_seed(0)
    cfg = load_config(
        "tiny", [f"predict.threshold={threshold}", f"predict.weights={weights}"]
    ).model_dump(mode="json")
    return KelpSegModule(cfg).eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with two finished folds (Dice 0.6 and 0.8) and a tuned threshold."""
    run = tmp_path_factory.mktemp("run")
    for fold, dice in ((0, 0.6), (1, 0.8)):
        (run / f"fold{fold}").mkdir()
        ck = _save(_model(), run / f"fold{fold}" / "best.ckpt")
        (run / f"fold{fold}" / "result.json").write_text(
            json.dumps({"fold": fold, "checkpoint": str(ck), "val_dice": dice})
        )
    (run / "threshold.json").write_text(
        json.dumps(
            {
                "threshold": 0.4,
                "tta": "none",
                "ensemble": {
                    "threshold": 0.3,
                    "member_threshold": 0.45,
                    "member_weights": {"0": 0.5, "1": 0.5},
                },
            }
        )
    )
    return run


def test_threshold_comes_from_the_first_place_that_has_it(run: Path) -> None:
    ens = assemble(run=run)
    assert ens.threshold == 0.3 and "ensemble of 2" in ens.threshold_source  # tuned for these
    assert ens.notes == []
    assert assemble(run=run, flags={"vote": "hard"}).threshold == 0.45
    assert assemble(run=run, threshold=0.7).threshold == 0.7
    pinned = assemble(run=run, overrides=["predict.threshold=0.66"])
    assert pinned.threshold == 0.66 and pinned.threshold_source == "--set predict.threshold"
    # other weights than the tuned ensemble's: the single models' threshold, and a note why
    dice = assemble(run=run, flags={"weights": "dice"})
    assert dice.threshold == 0.4 and "tuned for weights [0.5, 0.5]" in dice.notes[0]
    np.testing.assert_allclose(dice.weights, [0.0, 1.0])  # min-max scaled Dice
    # members without a run: the config's (the first member's, or -c)
    assert assemble([_model(0.2)]).threshold == 0.2
    assert assemble([_model(0.2)], config="tiny").threshold == 0.5
    both = assemble([_model(0.2), _model(0.6)])
    assert both.threshold == 0.2 and "members disagree" in both.threshold_source


def test_weights_and_flags_are_validated_once(run: Path) -> None:
    # a config's weights are for its ensemble: a single model of that run needs none
    assert assemble([_model(weights="0.4,0.6")]).weights.tolist() == [1.0]
    with pytest.raises(EnsembleError, match="2 weights for 1 models"):
        assemble([_model()], flags={"weights": "0.4,0.6"})
    with pytest.raises(EnsembleError, match="needs every member's val Dice"):
        assemble([_model(), _model()], flags={"weights": "dice"})
    with pytest.raises(ConfigError, match="vote"):
        assemble([_model()], flags={"vote": "loud"})
    with pytest.raises(AssembleError, match=r"\[0, 1\]"):
        assemble([_model()], threshold=1.5)
    with pytest.raises(AssembleError, match="give a model"):
        assemble()
    ens = assemble([_model(), _model()], flags={"weights": "1,3", "tta": "flips"})
    assert ens.weights.tolist() == [0.25, 0.75] and ens.tta == "flips"
    assert ens.engine().tta == "flips" and ens.settings()["weights"] == [0.25, 0.75]


def test_postprocess_and_settings_enter_the_fingerprint(run: Path) -> None:
    plain = assemble(run=run)
    post = assemble(run=run, overrides=["postprocess.min_object_px=5"])
    assert plain.postprocess is None and post.postprocess.min_object_px == 5
    assert "postprocess" in post.settings() and "postprocess" not in plain.settings()
    assert plain.model_hash == post.model_hash
    assert plain.precision == "fp32" and plain.batch_size == 1  # CPU: predict.cpu_batch_size
    assert assemble(run=run, batch_size=4).batch_size == 4
