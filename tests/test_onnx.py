"""`kelpseg export` + onnxruntime: raw tiles in, the torch model's probabilities out (1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.config import load_config
from kelpseg.infer.onnx_export import OnnxModel, cached_export, predict_tiles_onnx
from kelpseg.infer.predict import load_model, predict_tiles
from kelpseg.io import Georef, write_raster
from kelpseg.train.module import KelpSegModule
from tests.tiles import make_tile

runner = CliRunner()
GEOREF = Georef(CRS.from_epsg(32611), Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0))


def _checkpoint(tmp: Path, sets: list[str], tiles: np.ndarray) -> Path:
    """A random-weight tiny model with bounds fitted on ``tiles``, saved as Lightning does."""
    cfg = load_config("tiny", sets).model_dump(mode="json")
    torch.manual_seed(0)
    module = KelpSegModule(cfg)
    module.features.fit_bounds(torch.from_numpy(tiles))
    path = tmp / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": cfg}}, path)
    return path


def _tiles(tmp: Path) -> tuple[np.ndarray, list[tuple[str, Path]]]:
    """Five 64 px tiles with missing pixels in every band and QA flags, written georeferenced."""
    rng = np.random.default_rng(1)
    raws = []
    for i in range(5):
        img, _ = make_tile(rng, kelp=i % 2 == 0)
        img[5] = rng.integers(0, 2, img[5].shape)  # QA flags
        img[i % 5, 3 + i : 9 + i, 20:30] = -32768  # a hole in one spectral band
        img[:, 50:, 60:] = -32768  # a corner missing in every band
        raws.append(img)
    raws[4][2] = -32768  # a whole band missing: its fill falls back to 0
    items = []
    for i, img in enumerate(raws):
        path = tmp / "in" / f"T{i}_satellite.tif"
        write_raster(path, img, georef=GEOREF)
        items.append((f"T{i}", path))
    return np.stack(raws), items


@pytest.mark.parametrize(
    "sets",
    [
        ["predict.threshold=0.37"],
        [
            "predict.threshold=0.52",
            "features.mask_land=true",
            "features.mask_cloud=true",
            "features.fill=0.0",
            "features.units=reflectance",
            "features.normalize=sample_minmax",
            "features.stats_pixels=water",
            "features.bands=[NIR,Red,DEM]",
            "features.indices=[NDVI,DEMWM,MVI,spyndex:NDWI]",
        ],
    ],
    ids=["tiny", "masked-sample-minmax"],
)
def test_onnx_matches_torch(tmp_path: Path, sets: list[str]) -> None:
    raws, items = _tiles(tmp_path)
    ckpt = _checkpoint(tmp_path, sets, raws)
    onnx_path = tmp_path / "sub" / "model.onnx"
    res = runner.invoke(app, ["export", str(ckpt), "-o", str(onnx_path)])
    assert res.exit_code == 0, res.output
    assert not [p for p in onnx_path.parent.iterdir() if p.name.endswith(".tmp")]

    om = OnnxModel(onnx_path)
    model = load_model(ckpt, device="cpu")
    assert om.threshold == model.cfg.predict.threshold
    assert om.batch_size == 4 and om.tile_size == 64
    assert om.config["features"] == model.hparams["config"]["features"]

    with torch.no_grad():
        expected = model.predict_proba(torch.from_numpy(raws)).numpy()
    got = om.predict_proba(raws)
    assert got.shape == expected.shape == (5, 64, 64)
    assert np.isfinite(got).all()
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(om.predict_proba(raws[:1]) - got[:1]).max() < 1e-5  # dynamic batch

    a = predict_tiles(model, items, tmp_path / "torch", probabilities=True)
    b = predict_tiles_onnx(onnx_path, items, tmp_path / "onnx", probabilities=True)
    assert b.threshold == a.threshold and set(b.masks) == set(a.masks) == {t for t, _ in items}
    for tile_id, _ in items:
        with rasterio.open(a.masks[tile_id]) as s, rasterio.open(b.masks[tile_id]) as o:
            assert o.dtypes[0] == "uint8" and o.nodata == 255
            assert o.crs == s.crs and o.transform == s.transform
            want, mask = s.read(1), o.read(1)
        assert np.array_equal(mask, want)
        assert (mask[50:, 60:] == 255).all()
        name = f"{tile_id}_proba.tif"
        with (
            rasterio.open(tmp_path / "torch" / name) as s,
            rasterio.open(tmp_path / "onnx" / name) as o,
        ):
            want, prob = s.read(1), o.read(1)
        assert np.array_equal(np.isnan(prob), np.isnan(want)) and np.isnan(prob[50:, 60:]).all()
        ok = ~np.isnan(want)
        assert ok.any() == (tile_id != "T4")  # T4 misses a whole band: all nodata
        assert np.abs(prob[ok] - want[ok]).max(initial=0.0) < 1e-4


def test_export_refuses_sample_quantile(tmp_path: Path) -> None:
    raws, _ = _tiles(tmp_path)
    ckpt = _checkpoint(tmp_path, ["features.normalize=sample_quantile"], raws)
    out = tmp_path / "m.onnx"
    res = runner.invoke(app, ["export", str(ckpt), "-o", str(out)])
    assert res.exit_code == 1
    assert "features.normalize=sample_quantile" in res.output
    assert "Traceback" not in res.output and not out.exists()


def test_export_bad_checkpoint_and_wrong_tile_size(tmp_path: Path) -> None:
    bad = tmp_path / "x.ckpt"
    bad.write_bytes(b"not a checkpoint")
    res = runner.invoke(app, ["export", str(bad), "-o", str(tmp_path / "m.onnx")])
    assert res.exit_code == 1 and "x.ckpt" in res.output and "Traceback" not in res.output

    raws, items = _tiles(tmp_path)
    ckpt = _checkpoint(tmp_path, [], raws)
    res = runner.invoke(app, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    big = tmp_path / "big_satellite.tif"
    write_raster(big, make_tile(np.random.default_rng(2), size=32)[0])
    out = predict_tiles_onnx(tmp_path / "m.onnx", [*items[:2], ("big", big)], tmp_path / "o")
    assert set(out.masks) == {"T0", "T1"}
    assert any("big_satellite.tif" in str(e) and "64x64" in str(e) for e in out.report.errors)


def test_map_backend_onnx_matches_torch_and_reuses_its_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`kelpseg map --backend onnx`: the checkpoint is exported once into the cache (keyed by
    its bytes and the window), and the maps agree with torch's (1e-4, masks identical)."""
    from tests.test_sliced import _raster

    cache = tmp_path / "cache"
    monkeypatch.setenv("KELPSEG_ONNX_CACHE", str(cache))
    raw = _raster(150, 170, seed=5)
    raster = write_raster(tmp_path / "in" / "S.tif", raw, georef=GEOREF)
    ckpt = _checkpoint(tmp_path, ["predict.threshold=0.45"], raw[None, :, :64, :64])
    out = {}
    for backend in ("torch", "onnx"):
        maps = tmp_path / f"maps_{backend}"
        res = runner.invoke(
            app, ["map", "-m", str(ckpt), str(raster), "-o", str(maps), "--backend", backend],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        with (
            rasterio.open(maps / "S" / "S_kelp.tif") as k,
            rasterio.open(maps / "S" / "S_proba.tif") as p,
        ):
            out[backend] = k.read(1), p.read(1)
    (export,) = cache.iterdir()
    assert export.name.startswith("model-") and "-w64-" in export.name
    stamp = export.stat().st_mtime_ns
    assert cached_export(ckpt, 64) == export and export.stat().st_mtime_ns == stamp  # reused
    (k_t, p_t), (k_o, p_o) = out["torch"], out["onnx"]
    assert np.array_equal(k_t, k_o)
    ok = ~np.isnan(p_t)
    assert np.array_equal(ok, ~np.isnan(p_o)) and np.abs(p_t[ok] - p_o[ok]).max() < 1e-4

    res = runner.invoke(
        app, ["map", "-m", str(ckpt), str(raster), "-o", str(tmp_path / "m"), "--backend",
              "onnx", "--precision", "bf16"],
    )  # fmt: skip
    assert res.exit_code == 2 and "fp32 only" in res.output
