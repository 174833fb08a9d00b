"""Detected DEM shifts are undone for training (packed cache) and prediction alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kelpseg.data.cache import build_cache
from kelpseg.data.groups import dem_shifts
from kelpseg.data.stats import compute_stats
from kelpseg.io import discover, read_tile
from kelpseg.synth import generate

MARGIN = 8  # edge pixels a shift cannot restore


@pytest.fixture(scope="module")
def shifted_set(tmp_path_factory: pytest.TempPathFactory):
    res = generate(tmp_path_factory.mktemp("dem") / "data", aois=8, seed=11, size=128)
    refs = [r for r in discover(res.root) if r.split == "train"]
    stats = compute_stats(refs, size=128).tiles
    truth = pd.read_csv(res.truth_csv, dtype={"tile_id": str}).set_index("tile_id")
    return refs, stats, truth


def test_cache_realigns_shifted_dems_to_their_aoi(shifted_set, tmp_path: Path) -> None:
    refs, stats, truth = shifted_set
    ids = [r.tile_id for r in refs]
    shifts = dict(zip(ids, dem_shifts(stats, ids), strict=True))
    corrected = [t for t, s in shifts.items() if s != (0, 0)]
    assert corrected, "the generated set should hold detectable DEM shifts"
    packed = build_cache(refs, tmp_path / "cache", 128, shifts)
    plain = build_cache(refs, tmp_path / "plain", 128)
    inner = np.s_[MARGIN:-MARGIN, MARGIN:-MARGIN]
    checked = 0
    for tile_id in corrected:
        row = truth.loc[tile_id]
        assert shifts[tile_id] == (row["dem_shift_x"], row["dem_shift_y"])  # found exactly
        twins = truth[
            (truth["aoi"] == row["aoi"]) & (truth["dem_shift_x"] == 0) & (truth["dem_shift_y"] == 0)
        ]
        twins = [t for t in twins.index if t in ids]
        if not twins:
            continue
        fixed = packed.images[packed.row([tile_id])[0], 6][inner]
        aligned = plain.images[plain.row([twins[0]])[0], 6][inner]
        before = plain.images[plain.row([tile_id])[0], 6][inner]
        # acquisitions carry their own holes (SLC-off gaps, scene edges): compare the rest
        holes = [plain.images[plain.row([t])[0], 0][inner] == -32768 for t in (tile_id, twins[0])]
        valid = ~holes[0] & ~holes[1] & (fixed != -32768)
        assert np.array_equal(fixed[valid], aligned[valid])  # the AOI's true DEM
        assert not np.array_equal(before[valid], aligned[valid])
        checked += 1
    assert checked >= 1
    # unshifted tiles are packed untouched
    same = next(t for t in ids if shifts[t] == (0, 0))
    assert np.array_equal(
        packed.images[packed.row([same])[0]], read_tile(refs[ids.index(same)].image)
    )


@pytest.mark.parametrize("correct", [True, False])
def test_predict_corrects_dem_when_the_model_did(
    trained, shifted_set, tmp_path, monkeypatch, correct
) -> None:
    from kelpseg.infer import ensemble
    from kelpseg.infer import predict as pred

    refs, _, _ = shifted_set
    calls: list[int] = []

    def spy(raw: np.ndarray) -> np.ndarray:
        calls.append(1)
        return raw

    monkeypatch.setattr(ensemble, "correct_dem", spy)  # the members' default fix
    model = pred.load_model(trained.checkpoint)
    model.cfg.data.correct_dem_shift = correct
    items = [(r.tile_id, r.image) for r in refs[:3]]
    res = pred.predict_tiles(model, items, tmp_path)
    assert len(res.masks) == 3
    assert len(calls) == (3 if correct else 0)
