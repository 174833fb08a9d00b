"""`kelpseg map`: COG maps, coverage, quick-look, scene.json, areas.csv, batch and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.config import load_config
from kelpseg.eda.quicklook import QuickLook
from kelpseg.geo.coverage import coverage_codes
from kelpseg.io import write_raster
from kelpseg.io.cog import is_cog
from kelpseg.io.raster import Georef
from kelpseg.synth.landsat import write_landsat_scene
from kelpseg.train.module import KelpSegModule
from tests.test_predict import _save
from tests.test_sliced import _raster

runner = CliRunner()
UTM = Georef(CRS.from_epsg(32611), Affine(30, 0, 400_000, 0, -30, 3_800_000))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    m = KelpSegModule(load_config("tiny").model_dump(mode="json")).eval()
    return _save(m, tmp_path_factory.mktemp("ckpt") / "m.ckpt")


def test_coverage_codes_land_clear_cloud_nodata() -> None:
    raw = np.full((7, 1, 5), 8000, np.int16)
    raw[6] = [40, 0, -32768, -5, 0]  # land, sea, sea beyond the DEM, sea, sea
    raw[5] = [0, 0, 0, 1, 0]  # the 4th pixel is under a cloud
    raw[1, 0, 4] = -32768  # the 5th has no reflectance
    np.testing.assert_array_equal(coverage_codes(raw)[0], [0, 1, 1, 2, 255])


def test_quicklook_is_decimated_and_outlines_kelp() -> None:
    raw = _raster(400, 250)
    kelp = np.zeros((400, 250), np.uint8)
    kelp[100:200, 100:200] = 1
    look = QuickLook(400, 250, max_px=100)
    for row in range(0, 400, 70):  # bands of any height, as sliced inference hands them on
        look.add(row, raw[:, row : row + 70], kelp[row : row + 70])
    img = look.image()
    assert img.shape == (100, 63, 3) and img.dtype == np.uint8
    magenta = (img == [255, 40, 200]).all(-1)
    assert magenta[25:50, 25:50].any() and not magenta[30:45, 30:45].any()  # outline, not fill
    corner = img[:5, :7]  # the missing corner: a light checkerboard, never dark like water
    assert np.isin(corner, (225, 190)).all() and corner.min() >= 190


def test_quicklook_keeps_a_one_pixel_bed_between_sampled_rows() -> None:
    raw = _raster(400, 250)
    kelp = np.zeros((400, 250), np.uint8)
    kelp[301, 150] = 1  # step 4: row 301 and column 150 are not among the sampled pixels
    look = QuickLook(400, 250, max_px=100)
    for row in range(0, 400, 70):
        look.add(row, raw[:, row : row + 70], kelp[row : row + 70])
    magenta = (look.image() == [255, 40, 200]).all(-1)
    assert magenta[74:77, 36:39].any() and magenta.sum() <= 9


def _inputs(folder: Path) -> tuple[Path, Path, Path]:
    """A UTM raster, a bad file and an ungeoreferenced raster."""
    raw = _raster(200, 300, seed=7)
    raw[5, 150:, :] = 1  # cloud over the bottom rows
    a = write_raster(
        folder / "sceneA.tif",
        raw,
        georef=UTM,
        tags={"scene_id": "A", "date": "2021-08-15", "sensor": "LANDSAT_8"},
    )
    bad = folder / "broken.tif"
    bad.write_bytes(b"not a tiff")
    b = write_raster(folder / "B.tif", _raster(130, 90, seed=8))
    return a, bad, b


def test_map_end_to_end_batch_resume_and_bad_input(ckpt: Path, tmp_path: Path) -> None:
    a, bad, b = _inputs(tmp_path)
    maps = tmp_path / "maps"
    res = runner.invoke(
        app, ["map", "--model", str(ckpt), str(a), str(bad), str(b), "-o", str(maps), "--geojson"]
    )
    assert res.exit_code == 0, res.output
    assert "broken.tif" in res.output and "2 ok, 1 skipped" in res.output
    assert sorted(p.name for p in maps.iterdir()) == ["A", "B", "areas.csv"]
    scene = maps / "A"
    names = {p.name for p in scene.iterdir()}
    want = {
        f"A_{s}"
        for s in (
            "kelp.tif",
            "proba.tif",
            "coverage.tif",
            "kelp.gpkg",
            "kelp.geojson",
            "quicklook.png",
        )
    }
    # one model: no spread; no temporary file left, only the scene's lock (kelpseg.infer.mapping)
    assert want | {"scene.json", ".lock"} == names
    raw = _raster(200, 300, seed=7)
    missing = (raw[:5] == -32768).any(0)
    data = {}
    for name in ("kelp", "proba", "coverage"):
        path = scene / f"A_{name}.tif"
        assert is_cog(path)
        with rasterio.open(path) as src:
            assert src.crs == UTM.crs and src.transform == UTM.transform
            assert src.overviews(1)
            assert src.tags()["scene_id"] == "A" and src.tags()["date"] == "2021-08-15"
            assert src.tags()["source"] == str(a.resolve()) and src.tags()["model_hash"]
            data[name] = src.read(1)
    kelp, cov, proba = data["kelp"], data["coverage"], data["proba"]
    assert np.isnan(proba[missing]).all() and np.isfinite(proba[~missing]).all()
    assert (cov[missing] == 255).all() and (cov[~missing] != 255).all()
    # the mask agrees with the coverage layer: kelp only on clear water, land never kelp,
    # water under a QA flag unknown (255) like missing pixels
    assert (kelp[cov == 0] == 0).all() and (kelp[cov == 2] == 255).all()
    assert (kelp[missing] == 255).all() and set(np.unique(kelp[cov == 1])) <= {0, 1}
    assert (kelp == 1).any() and ((kelp == 1) <= (cov == 1)).all()
    info = json.loads((scene / "scene.json").read_text())
    assert (
        info["scene_id"] == "A" and info["date"] == "2021-08-15" and info["sensor"] == "LANDSAT_8"
    )
    assert info["pixel_area_assumed"] is False and info["crs"]
    ha = 30 * 30 / 10_000
    assert info["kelp_ha"] == pytest.approx((kelp == 1).sum() * ha)
    under_flag = ((proba >= info["threshold"]) & (cov == 2)).sum() * ha
    assert info["kelp_flagged_ha"] == pytest.approx(under_flag)  # reported apart, not counted
    assert info["water_clear_ha"] == pytest.approx((cov == 1).sum() * ha)
    assert info["water_ha"] == pytest.approx(((cov == 1) | (cov == 2)).sum() * ha)
    assert 0 < info["observed_fraction"] < 1
    assert info["models"] == [str(ckpt)]
    newest = max(
        p.stat().st_mtime_ns for p in scene.iterdir() if p.name not in ("scene.json", ".lock")
    )
    assert (scene / "scene.json").stat().st_mtime_ns >= newest  # written last
    table = pd.read_csv(maps / "areas.csv")
    assert sorted(table.scene_id) == ["A", "B"] and table["footprint"].str.startswith("grid:").all()
    assert table["footprint"].is_monotonic_increasing  # grouped by footprint, then by date
    nocrs = json.loads((maps / "B" / "scene.json").read_text())
    assert nocrs["pixel_area_assumed"] is True and nocrs["crs"] is None
    with rasterio.open(maps / "B" / "B_kelp.tif") as src:
        assert src.crs is None
    # a rerun keeps done scenes; --overwrite redoes them
    stamp = (scene / "scene.json").stat().st_mtime_ns
    again = ["map", "--model", str(ckpt), str(a), "-o", str(maps), "--geojson"]
    res = runner.invoke(app, again)
    assert res.exit_code == 0 and "kept" in res.output
    assert (scene / "scene.json").stat().st_mtime_ns == stamp
    res = runner.invoke(app, [*again, "--overwrite"])
    assert res.exit_code == 0 and (scene / "scene.json").stat().st_mtime_ns > stamp


def test_two_inputs_with_one_scene_id_do_not_overwrite_each_other(
    ckpt: Path, tmp_path: Path
) -> None:
    raw = _raster(120, 130, seed=3)
    first = write_raster(tmp_path / "x" / "stack.tif", raw, georef=UTM)
    second = write_raster(tmp_path / "y" / "stack.tif", raw, georef=UTM)
    maps = tmp_path / "maps"
    res = runner.invoke(app, ["map", "-m", str(ckpt), str(first), str(second), "-o", str(maps)])
    assert res.exit_code == 0, res.output
    assert "same scene id 'stack'" in res.output and "1 ok, 1 skipped" in res.output
    assert json.loads((maps / "stack" / "scene.json").read_text())["source"] == str(first)


def test_ensemble_writes_spread_and_a_missing_model_is_one_line(ckpt: Path, tmp_path: Path) -> None:
    a, _, _ = _inputs(tmp_path)
    maps = tmp_path / "maps"
    args = ["map", "-m", str(ckpt), "-m", str(ckpt), str(a), "-o", str(maps), "--no-probabilities"]
    res = runner.invoke(app, [*args, "--overlap", "16", "--slices", "2"])
    assert res.exit_code == 0, res.output
    with rasterio.open(maps / "A" / "A_spread.tif") as src:
        assert src.nodata != src.nodata and np.nanmax(src.read(1)) < 1e-3  # NaN nodata, twins
    assert not (maps / "A" / "A_proba.tif").exists()
    res = runner.invoke(app, ["map", "-m", str(tmp_path / "nope.ckpt"), str(a), "-o", str(maps)])
    assert res.exit_code == 1 and "nope.ckpt" in res.output and "Traceback" not in res.output
    res = runner.invoke(
        app, [*args, "--window", "48", "--overlap", "48", "-o", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "must be smaller than the window (48 px)" in res.output
    res = runner.invoke(app, [*args, "--overlap", "64", "-o", str(tmp_path / "x")])  # tiny: 64 px
    assert res.exit_code == 2 and "(64 px)" in res.output and not (tmp_path / "x").exists()


def test_landsat_scene_folder_is_stacked_and_mapped(ckpt: Path, tmp_path: Path) -> None:
    scene = write_landsat_scene(tmp_path / "scene", size=160, seed=1)
    maps = tmp_path / "maps"
    res = runner.invoke(
        app, ["map", "-m", str(ckpt), str(scene.folder), "--dem", str(scene.dem), "-o", str(maps)]
    )
    assert res.exit_code == 0, res.output
    info = json.loads((maps / scene.meta.scene_id / "scene.json").read_text())
    assert info["sensor"] == scene.meta.sensor and info["date"] == scene.meta.date.isoformat()
    left = [p.name for p in (maps / scene.meta.scene_id).glob(".*")]
    assert left == [".lock"]  # the stacked input was removed; the scene's lock stays


def test_a_run_killed_mid_scene_leaves_nothing_half_written(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kelpseg.infer.ensemble import Members

    a, _, _ = _inputs(tmp_path)
    maps = tmp_path / "maps"
    calls = {"n": 0}
    real = Members.__call__

    def dies_on_second_batch(self, raw, fixed=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as a kill between two batches
        return real(self, raw, fixed)

    monkeypatch.setattr(Members, "__call__", dies_on_second_batch)
    args = ["map", "-m", str(ckpt), str(a), "-o", str(maps), "--batch-size", "2"]
    runner.invoke(app, args)
    assert calls["n"] == 2
    assert list(maps.iterdir()) == []  # no output, no temporary file
    monkeypatch.setattr(Members, "__call__", real)
    (maps / "A").mkdir()  # what a SIGKILL leaves: hidden temporary files, no scene.json
    stale = maps / "A" / ".A_kelp.tif.abc123.tmp"
    stale.write_bytes(b"half")
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and (maps / "A" / "scene.json").is_file()
    assert not stale.exists() and [p.name for p in (maps / "A").glob(".*")] == [".lock"]


def test_map_follows_the_configs_weights_and_postprocess(ckpt: Path, tmp_path: Path) -> None:
    """`map` assembles as `predict` does: `predict.weights` and the `postprocess` section of the
    config reach the scene (issue 14: map ignored postprocess and used equal weights)."""
    from kelpseg.infer.postprocess import scene_mask

    a, _, _ = _inputs(tmp_path)
    maps = tmp_path / "maps"
    sets = ["--set", "predict.weights=1,3", "--set", "postprocess.min_object_px=40"]
    res = runner.invoke(
        app, ["map", "-m", str(ckpt), "-m", str(ckpt), str(a), "-o", str(maps), *sets]
    )
    assert res.exit_code == 0, res.output
    info = json.loads((maps / "A" / "scene.json").read_text())
    assert info["ensemble"]["weights"] == [0.25, 0.75]
    assert info["ensemble"]["postprocess"]["min_object_px"] == 40
    read = {}
    for name in ("kelp", "proba", "coverage"):
        with rasterio.open(maps / "A" / f"A_{name}.tif") as src:
            read[name] = src.read(1)
    cfg = load_config("tiny", ["postprocess.min_object_px=40"]).postprocess
    want = scene_mask(read["proba"], read["coverage"], info["threshold"], cfg)
    np.testing.assert_array_equal(read["kelp"], want)  # the one mask step, objects removed
    plain = scene_mask(read["proba"], read["coverage"], info["threshold"])
    assert (plain == 1).sum() > (read["kelp"] == 1).sum() > 0
