"""The per-pixel XGBoost baseline: folds, balanced sampling, masks the other stages accept."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pandas as pd
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from typer.testing import CliRunner

from kelpseg.baselines.xgb import PRIOR_ATTR, XgbModel, load_xgb, predict_items, sample_pixels
from kelpseg.cli import app
from kelpseg.config import load_config
from kelpseg.data.cache import open_cache
from kelpseg.data.dem_shift import correct_dem
from kelpseg.io import read_mask, read_tile
from kelpseg.io.raster import Georef, write_raster
from kelpseg.io.tiles import MASK_NODATA, NODATA, missing_pixels

SETS = ["train.folds=all", "xgb.n_estimators=40", "xgb.pixels_per_class=20000", "xgb.n_jobs=1"]


@pytest.fixture(scope="module")
def xgb_run(synth_data, tmp_path_factory):
    """`kelpseg xgb` on the session's synthetic set, both folds of the tiny config."""
    out = tmp_path_factory.mktemp("xgb")
    res = CliRunner().invoke(
        app,
        ["xgb", str(synth_data.root), "-o", str(out), "-c", "tiny", "--truth",
         str(synth_data.test_masks), *[a for s in SETS for a in ("--set", s)]],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out, json.loads((out / "xgb" / "metrics.json").read_text())


def test_trains_both_folds_and_beats_trivial(xgb_run, synth_data):
    out, m = xgb_run
    assert sorted(m["folds"]) == ["0", "1"]
    for k in m["folds"]:
        res = json.loads((out / "xgb" / f"fold{k}" / "result.json").read_text())
        assert res["fold"] == int(k) and res["checkpoint"].endswith("model.json")
        assert 0.0 < res["val_dice"] <= 1.0 and res["seconds"] > 0
    assert m["val_dice"] == pytest.approx(np.mean([f["val_dice"] for f in m["folds"].values()]))
    # trivial baseline on the generator's truth: every pixel kelp
    kelp = total = 0
    for p in synth_data.test_masks.glob("*_kelp.tif"):
        t = read_mask(p)
        kelp, total = kelp + int(t.sum()), total + t.size
    assert m["test"]["dice"] > max(0.4, 2 * kelp / (kelp + total))
    # the out-of-fold threshold was tuned and used
    tuned = json.loads((out / "xgb" / "threshold.json").read_text())
    assert tuned["folds"] == [0, 1] and m["threshold"] == tuned["threshold"]
    assert m["oof_dice"]["tuned"] >= m["oof_dice"]["at_0.5"]
    # and the test masks were cut at it: the model's probability >= the tuned threshold
    model = load_xgb(m["predicted_with"])
    tile = sorted((synth_data.root / "test_satellite").glob("*_satellite.tif"))[0]
    raw = read_tile(tile)
    fixed = correct_dem(raw) if model.cfg.data.correct_dem_shift else raw
    want = model.predict_proba(fixed[None])[0].numpy() >= m["threshold"]
    with rasterio.open(out / "xgb" / "predictions" / f"{tile.stem[:-10]}_kelp.tif") as src:
        got = src.read(1) == 1
    valid = ~missing_pixels(raw)
    assert np.array_equal(got[valid], want[valid])


def test_masks_follow_network_rules_and_other_stages_accept_them(xgb_run, synth_data, tmp_path):
    out, m = xgb_run
    pred = out / "xgb" / "predictions"
    ids = {p.name.removesuffix("_satellite.tif") for p in synth_data.root.rglob("*_satellite.tif")}
    test_ids = {p.name.removesuffix("_kelp.tif") for p in synth_data.test_masks.glob("*_kelp.tif")}
    written = {p.name.removesuffix("_kelp.tif") for p in pred.glob("*_kelp.tif")}
    assert written == test_ids and test_ids <= ids
    for tid in sorted(written)[:3]:
        with rasterio.open(pred / f"{tid}_kelp.tif") as src:
            assert src.dtypes[0] == "uint8" and src.nodata == MASK_NODATA
            mask = src.read(1)
        raw = read_tile(synth_data.root / "test_satellite" / f"{tid}_satellite.tif")
        assert set(np.unique(mask[~missing_pixels(raw)])) <= {0, 1}
        assert (mask[missing_pixels(raw)] == MASK_NODATA).all()
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(pred), str(synth_data.test_masks)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dice"] == pytest.approx(m["test"]["dice"])
    tar = tmp_path / "sub.tar"
    res = runner.invoke(
        app,
        ["submit", str(pred), "--tiles", str(synth_data.root / "test_satellite"), "-o", str(tar)],
    )
    assert res.exit_code == 0, res.output
    with tarfile.open(tar) as t:
        assert len(t.getnames()) == len(test_ids)
    res = runner.invoke(app, ["threshold", str(out / "xgb")])
    assert res.exit_code == 0 and "folds [0, 1]" in res.output


def test_georeference_and_nodata_kept(xgb_run, synth_data, tmp_path):
    _, m = xgb_run
    src = next((synth_data.root / "test_satellite").glob("*_satellite.tif"))
    raw = read_tile(src)
    raw[:, :5, :7] = NODATA  # a missing corner
    georef = Georef(CRS.from_epsg(32611), Affine(30, 0, 500000, 0, -30, 4000000))
    tile = write_raster(tmp_path / "T1_satellite.tif", raw, georef=georef, nodata=NODATA)
    model = load_xgb(m["predicted_with"])
    masks, report = predict_items(model, [("T1", tile)], tmp_path / "pred", threshold=0.5)
    assert report.ok == 1 and masks["T1"].name == "T1_kelp.tif"
    with rasterio.open(masks["T1"]) as dst:
        assert dst.crs == georef.crs and dst.transform == georef.transform
        assert dst.nodata == MASK_NODATA
        assert (dst.read(1)[:5, :7] == MASK_NODATA).all()


def test_balanced_sampling_counts(xgb_run):
    out, _ = xgb_run
    packed = open_cache(out / "cache")
    ids = packed.tile_ids[:12]
    model = XgbModel(None, load_config("tiny"))
    kelp = other = water = 0
    for r in packed.row(ids):
        raw, mask = np.asarray(packed.images[r]), np.asarray(packed.masks[r])
        ok = ~missing_pixels(raw)
        kelp += int((ok & (mask == 1)).sum())
        other += int((ok & (mask != 1)).sum())
        water += int((ok & (mask != 1) & ((raw[6] <= 0) | (raw[6] == NODATA))).sum())
    s = sample_pixels(model, packed, ids, cap=10**9, seed=1, negatives="valid")
    assert (s.kelp_available, s.other_available) == (kelp, other)
    n = min(kelp, other)
    assert (s.y == 1).sum() == (s.y == 0).sum() == n
    cap = max(1, n // 3)
    c = sample_pixels(model, packed, ids, cap=cap, seed=1, negatives="valid")
    again = sample_pixels(model, packed, ids, cap=cap, seed=1, negatives="valid")
    assert (c.y == 1).sum() == (c.y == 0).sum() == cap
    np.testing.assert_array_equal(c.x, again.x)  # seeded
    assert not np.isnan(c.x[:, :5]).any()  # missing pixels are never drawn
    w = sample_pixels(model, packed, ids, cap=cap, seed=1, negatives="water")
    assert w.other_available == water
    dem = w.x[w.y == 0, model.channel_names.index("DEM")]
    assert ((dem <= 0) | np.isnan(dem)).all()


def test_prior_correction_and_importance(xgb_run):
    out, m = xgb_run
    fold = m["folds"]["0"]
    model = load_xgb(fold["checkpoint"])
    want = np.log(fold["kelp_pixels_available"] / fold["other_pixels_available"])
    assert float(model.booster.attr(PRIOR_ATTR)) == pytest.approx(want)
    # and predict_proba applies it: sigmoid(the booster's margin + the prior offset)
    from kelpseg.data.cache import open_cache

    raw = np.asarray(open_cache(out / "cache").images[:2])
    f = model.pixel_features(raw)
    x = f.transpose(0, 2, 3, 1).reshape(-1, f.shape[1])
    margin = np.asarray(model.booster.inplace_predict(x, predict_type="margin"))
    expected = 1 / (1 + np.exp(-(margin.reshape(raw.shape[0], *raw.shape[2:]) + want)))
    np.testing.assert_allclose(model.predict_proba(raw).numpy(), expected, rtol=1e-5, atol=1e-6)
    table = pd.read_csv(out / "xgb" / "importance.csv")
    assert set(table["feature"]) == set(model.channel_names) == {*m["features"]}
    assert table["gain_mean"].is_monotonic_decreasing and table["share"].sum() == pytest.approx(1)
    assert (out / "xgb" / "importance.png").stat().st_size > 1000


def test_bad_data_is_one_line_error(tmp_path):
    res = CliRunner().invoke(app, ["xgb", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "not found" in res.output and "Traceback" not in res.output


def test_runs_table_lists_the_baseline(xgb_run):
    from kelpseg.runs import list_runs

    out, m = xgb_run
    table = list_runs(str(out), "kelpseg", filters=["arch=xgboost"])
    assert list(table["folder"]) == [str((out / "xgb").resolve())]
    row = table.iloc[0]
    assert row["dice_f0"] == pytest.approx(m["folds"]["0"]["val_dice"])
    assert row["dice_f1"] == pytest.approx(m["folds"]["1"]["val_dice"])
    assert row["threshold"] == m["threshold"] and row["test_dice"] == pytest.approx(
        m["test"]["dice"]
    )
