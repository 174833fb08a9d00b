"""`kelpseg predict` settings from the config (`--set predict.*`, `postprocess.*`) and the onnx
backend (`--backend onnx`: same masks as torch, unsupported options refused)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import ndimage
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.config import PostprocessConfig, load_config
from kelpseg.infer.postprocess import apply
from kelpseg.infer.predict import load_model, predict_tiles
from kelpseg.io import read_tile, write_raster
from tests.tiles import make_tile

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An untrained tiny checkpoint (bounds fitted) and a folder of three 64 px tiles."""
    import torch

    from kelpseg.train.module import KelpSegModule

    tmp = tmp_path_factory.mktemp("predict_config")
    rng = np.random.default_rng(4)
    raws = [make_tile(rng, kelp=True)[0] for _ in range(3)]
    raws[1][:, 40:, 50:] = -32768  # missing corner
    for i, img in enumerate(raws):
        write_raster(tmp / "tiles" / f"T{i}_satellite.tif", img)
    cfg = load_config("tiny").model_dump(mode="json")
    torch.manual_seed(0)
    module = KelpSegModule(cfg)
    module.features.fit_bounds(torch.from_numpy(np.stack(raws)))
    ckpt = tmp / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": cfg}}, ckpt)
    return ckpt, tmp / "tiles"


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.stdout


def _one_line_error(args: list[str], *needles: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_min_object_px_from_the_config_removes_small_blobs(setup, tmp_path: Path) -> None:
    ckpt, tiles = setup
    plain = tmp_path / "plain"
    _ok(["predict", str(ckpt), str(tiles), "-o", str(plain), "--probabilities"])
    proba = _read(plain / "T0_proba.tif")
    t = float(np.round(np.nanmedian(proba), 3))  # many objects of many sizes
    base = ["predict", str(ckpt), str(tiles), "--threshold", str(t), "--probabilities"]
    _ok([*base, "-o", str(tmp_path / "a")])
    mask = _read(tmp_path / "a" / "T0_kelp.tif")
    labels, n = ndimage.label(mask == 1, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    assert n >= 2 and sizes.min() < sizes.max()
    n_px = int(sizes.max())  # every object but the largest goes
    _ok([*base, "-o", str(tmp_path / "b"), "--set", f"postprocess.min_object_px={n_px}"])
    for i in range(3):
        name = f"T{i}"
        raw = read_tile(tiles / f"{name}_satellite.tif")
        p = _read(tmp_path / "b" / f"{name}_proba.tif")
        want = apply(p, raw, PostprocessConfig(min_object_px=n_px), t)
        assert np.array_equal(_read(tmp_path / "b" / f"{name}_kelp.tif"), want)
    got = _read(tmp_path / "b" / "T0_kelp.tif")
    assert (got == 1).sum() == n_px and (got == 1).sum() < (mask == 1).sum()


def test_predict_settings_come_from_the_config(setup, tmp_path: Path) -> None:
    ckpt, tiles = setup
    sets = ["predict.tta=flips", "predict.probabilities=true", "predict.proba_format=uint8"]
    args = ["predict", str(ckpt), str(tiles), "-o", str(tmp_path / "c")]
    _ok([*args, *(x for s in sets for x in ("--set", s))])
    items = [(f"T{i}", tiles / f"T{i}_satellite.tif") for i in range(3)]
    model = load_model(ckpt, "cpu")
    predict_tiles(model, items, tmp_path / "f", tta="flips", probabilities=True,
                  proba_format="uint8")  # fmt: skip
    predict_tiles(model, items, tmp_path / "n", probabilities=True, proba_format="uint8")
    with rasterio.open(tmp_path / "c" / "T0_proba.tif") as src:
        assert src.dtypes[0] == "uint8"
    got = _read(tmp_path / "c" / "T0_proba.tif")
    assert np.array_equal(got, _read(tmp_path / "f" / "T0_proba.tif"))
    assert not np.array_equal(got, _read(tmp_path / "n" / "T0_proba.tif"))  # TTA changed it
    # a flag wins over the config; a YAML file (-c) works as --set does
    _ok([*args, "--set", "predict.tta=flips", "--tta", "none", "--probabilities",
         "--proba-format", "uint8", "--overwrite"])  # fmt: skip
    assert np.array_equal(
        _read(tmp_path / "c" / "T0_proba.tif"), _read(tmp_path / "n/T0_proba.tif")
    )
    yml = tmp_path / "p.yaml"
    yml.write_text("predict:\n  threshold: 0.9\n  batch_size: 2\n")
    _ok([*args, "-c", str(yml), "--overwrite"])
    with rasterio.open(tmp_path / "c" / "T0_kelp.tif") as src:
        assert src.tags()["threshold"] == "0.9"
    res = runner.invoke(app, [*args, "--set", "predict.tta=sideways"])
    assert res.exit_code == 2 and "config error" in res.stderr and "Traceback" not in res.output


def test_batch_size_follows_the_device(setup, tmp_path: Path) -> None:
    """On a CPU the batch is `predict.cpu_batch_size` (large batches were slower there), on a
    GPU `predict.batch_size`; an explicit batch size wins."""
    from kelpseg.config import PredictConfig

    pc = PredictConfig(batch_size=32, cpu_batch_size=3)
    assert pc.batch_for("cpu") == 3 and pc.batch_for("cuda") == 32
    ckpt, tiles = setup
    model = load_model(ckpt, "cpu")
    items = [(p.stem.split("_")[0], p) for p in sorted(tiles.iterdir())]
    sizes: list[int] = []
    real = model.predict_proba
    model.predict_proba = lambda raw: sizes.append(len(raw)) or real(raw)  # the batches run

    def run(name: str, **kw) -> list[int]:
        sizes.clear()
        predict_tiles(model, items, tmp_path / name, **kw)
        return list(sizes)

    assert model.cfg.predict.batch_size == 4  # the tiny config's GPU batch: not used here
    assert run("a") == [1, 1, 1]  # cpu_batch_size's default
    model.cfg.predict.cpu_batch_size = 2
    assert run("b") == [2, 1]
    assert run("c", batch_size=3) == [3]


def test_onnx_backend_gives_the_torch_masks(setup, tmp_path: Path) -> None:
    ckpt, tiles = setup
    onnx = tmp_path / "m.onnx"
    _ok(["export", str(ckpt), "-o", str(onnx)])
    _ok(["predict", str(ckpt), str(tiles), "-o", str(tmp_path / "t"), "--probabilities"])
    out = _ok(["predict", "--backend", "onnx", str(onnx), str(tiles), "-o", str(tmp_path / "o"),
               "--probabilities"])  # fmt: skip
    assert "onnx" in out
    for i in range(3):
        name = f"T{i}"
        torch_p = _read(tmp_path / "t" / f"{name}_proba.tif")
        onnx_p = _read(tmp_path / "o" / f"{name}_proba.tif")
        np.testing.assert_allclose(onnx_p, torch_p, atol=1e-4)  # NaN where missing in both
        t_mask = _read(tmp_path / "t" / f"{name}_kelp.tif")
        o_mask = _read(tmp_path / "o" / f"{name}_kelp.tif")
        near = np.abs(np.nan_to_num(torch_p) - 0.5) < 1e-4  # a tie may fall either side
        assert np.array_equal(t_mask[~near], o_mask[~near])
    # the same pipeline as torch: a rerun keeps what this model and these settings made
    again = ["predict", "--backend", "onnx", str(onnx), str(tiles), "-o", str(tmp_path / "o")]
    assert "3 kept from an earlier run" in _ok([*again, "--probabilities"])
    assert "kept" not in _ok([*again, "--probabilities", "--threshold", "0.3"])
    u8 = _ok([*again, "--probabilities", "--proba-format", "uint8", "--overwrite"])
    assert "kept" not in u8
    with rasterio.open(tmp_path / "o" / "T0_proba.tif") as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        assert src.tags()["fingerprint"]
    # postprocessing applies on the onnx path too
    n = ["--set", "postprocess.min_object_px=100000"]
    _ok(["predict", "--backend", "onnx", str(onnx), str(tiles), "-o", str(tmp_path / "p"), *n])
    assert (_read(tmp_path / "p" / "T0_kelp.tif") != 1).all()
    base = ["predict", "--backend", "onnx", str(onnx), str(tiles), "-o", str(tmp_path / "x")]
    _one_line_error([*base, "--precision", "bf16"], "fp32")
    _one_line_error(["predict", "--backend", "onnx", str(ckpt), str(tiles)], "export")
    # an ONNX member is a member like any other: TTA and ensembles through the same engine
    flips = ["--probabilities", "--tta", "flips"]
    _ok(["predict", str(ckpt), str(tiles), "-o", str(tmp_path / "tf"), *flips])
    _ok([*base[:-1], str(tmp_path / "of"), *flips])
    two = ["predict", "-m", str(onnx), "-m", str(onnx), str(tiles), "-o", str(tmp_path / "two")]
    _ok([*two, "--probabilities", "--weights", "0.3,0.7"])
    for i in range(3):
        want = _read(tmp_path / "tf" / f"T{i}_proba.tif")
        np.testing.assert_allclose(_read(tmp_path / "of" / f"T{i}_proba.tif"), want, atol=1e-4)
        np.testing.assert_allclose(
            _read(tmp_path / "two" / f"T{i}_proba.tif"), _read(tmp_path / "t" / f"T{i}_proba.tif"),
            atol=1e-4,
        )  # fmt: skip
