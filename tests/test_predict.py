"""`kelpseg predict`: the checkpoint's settings, nodata out where data is missing in, band-order
warnings, offline loading, colliding outputs, and one-line errors instead of tracebacks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.config import load_config
from kelpseg.infer.predict import CheckpointError, load_model, predict_tiles
from kelpseg.io import Georef, write_raster
from kelpseg.train.module import KelpSegModule
from tests.tiles import make_tile

runner = CliRunner()


def _save(module: KelpSegModule, path: Path, config: dict | None = None) -> Path:
    """A checkpoint as Lightning writes it: weights plus the config in ``hyper_parameters``."""
    import lightning as L
    import torch

    config = config if config is not None else dict(module.hparams)["config"]
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": {"config": config},
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def module() -> KelpSegModule:
    """An untrained tiny model (fixed seed): prediction mechanics do not need a good one."""
    import torch

    torch.manual_seed(0)
    return KelpSegModule(load_config("tiny").model_dump(mode="json")).eval()


@pytest.fixture(scope="module")
def ckpt(module: KelpSegModule, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(module, tmp_path_factory.mktemp("ckpt") / "model.ckpt")


def _striped_tile(rng: np.random.Generator) -> np.ndarray:
    """A tile with SLC-off-like stripes: -32768 in all seven bands, the DEM included."""
    img, _ = make_tile(rng)
    img[:, :, 10:14] = -32768
    img[:, 40:43, :] = -32768
    return img


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- threshold and batch size ----------------------------------------------------------------


def test_checkpoint_threshold_and_batch_size_are_used(
    module: KelpSegModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    tiles = [write_raster(tmp_path / f"in/T{i}_satellite.tif", make_tile(rng)[0]) for i in range(5)]
    items = [(p.name[:2], p) for p in tiles]
    res = predict_tiles(module, items[:1], tmp_path / "p0", threshold=0.5, probabilities=True)
    with rasterio.open(tmp_path / "p0/T0_proba.tif") as src:
        proba = src.read(1)
    chosen = float(np.round(np.median(proba), 4))
    assert ((proba >= chosen) != (proba >= 0.5)).any()  # the threshold makes a difference

    config = copy.deepcopy(dict(module.hparams)["config"])
    config["predict"].update(threshold=chosen, batch_size=3, cpu_batch_size=3)  # on this CPU
    path = _save(module, tmp_path / "t.ckpt", config)
    model = load_model(path)
    sizes: list[int] = []
    real = model.predict_proba
    monkeypatch.setattr(model, "predict_proba", lambda raw: sizes.append(len(raw)) or real(raw))
    res = predict_tiles(model, items, tmp_path / "p1")
    assert sizes == [3, 2] and res.batch_size == 3 and res.threshold == chosen
    with rasterio.open(tmp_path / "p1/T0_kelp.tif") as src:
        assert np.array_equal(src.read(1), (proba >= chosen).astype(np.uint8))

    out = tmp_path / "cli"
    result = runner.invoke(app, ["predict", str(path), str(tiles[0]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with rasterio.open(out / "T0_kelp.tif") as src:
        assert float(src.tags()["threshold"]) == chosen
        assert np.array_equal(src.read(1), (proba >= chosen).astype(np.uint8))
    result = runner.invoke(
        app, ["predict", str(path), str(tiles[0]), "-o", str(out), "--threshold", "0.9"]
    )
    with rasterio.open(out / "T0_kelp.tif") as src:
        assert src.tags()["threshold"] == "0.9"  # the command line wins


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_threshold_outside_0_1_is_rejected(ckpt: Path, tmp_path: Path, value: str) -> None:
    tile = write_raster(tmp_path / "A_satellite.tif", make_tile(np.random.default_rng(0))[0])
    result = runner.invoke(
        app, ["predict", str(ckpt), str(tile), "-o", str(tmp_path / "o"), "--threshold", value]
    )
    _one_line_error(result, "--threshold", "[0, 1]")
    assert not (tmp_path / "o").exists()


# -- nodata ---------------------------------------------------------------------------------


def test_missing_pixels_are_nodata_in_masks_and_probabilities(
    module: KelpSegModule, tmp_path: Path
) -> None:
    img = _striped_tile(np.random.default_rng(2))
    missing = (img[:5] == -32768).any(axis=0)
    geo = Georef(CRS.from_epsg(32611), Affine(30, 0, 500000, 0, -30, 3800000))
    plain = write_raster(tmp_path / "in/P_satellite.tif", img)
    georef = write_raster(tmp_path / "in/G_satellite.tif", img, georef=geo)
    declared = img.copy()
    declared[declared == -32768] = -9999  # another nodata value, declared in the file
    other = write_raster(tmp_path / "in/D_satellite.tif", declared, nodata=-9999)
    items = [("P", plain), ("G", georef), ("D", other)]
    out = tmp_path / "out"
    res = predict_tiles(module, items, out, threshold=0.5, probabilities=True)
    assert res.report.ok == 3
    probas = {}
    for tid in ("P", "G", "D"):
        with rasterio.open(out / f"{tid}_kelp.tif") as src:
            mask, nodata, crs = src.read(1), src.nodata, src.crs
        assert nodata == 255 and mask.dtype == np.uint8
        assert (mask[missing] == 255).all()
        assert set(np.unique(mask[~missing])) <= {0, 1}
        with rasterio.open(out / f"{tid}_proba.tif") as src:
            proba = src.read(1)
            assert np.isnan(src.nodata) and src.dtypes[0] == "float32"
        assert np.isnan(proba[missing]).all() and np.isfinite(proba[~missing]).all()
        assert (crs == geo.crs) if tid == "G" else crs is None
        probas[tid] = proba
    # the declared nodata was read as missing: the model saw the same tile
    np.testing.assert_allclose(probas["D"], probas["P"], atol=1e-5)  # other batches: float noise
    with rasterio.open(out / "G_kelp.tif") as src:
        assert src.transform == geo.transform


# -- band order ------------------------------------------------------------------------------


def test_bands_out_of_order_are_warned_about_naming_the_file(ckpt: Path, tmp_path: Path) -> None:
    img, _ = make_tile(np.random.default_rng(3))
    img[:5] = 7300 + (np.arange(5) * 400)[:, None, None].astype(np.int16)  # water-like spectrum
    img[1, :, : 64 // 4] = 15000  # NIR over the (DEM > 0) land strip
    good = write_raster(tmp_path / "in/GOOD_satellite.tif", img)
    swapped = img.copy()
    swapped[:5] = img[:5][::-1]  # Blue, Green, Red, NIR, SWIR1
    bad = write_raster(tmp_path / "in/BGR_satellite.tif", swapped)
    result = runner.invoke(app, ["predict", str(ckpt), str(good.parent), "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    warned = [ln for ln in result.stderr.splitlines() if "out of order" in ln]
    assert len(warned) == 1 and str(bad) in warned[0], result.stderr


# -- checkpoints -----------------------------------------------------------------------------


def test_checkpoint_trained_from_pretrained_weights_loads_offline(
    module: KelpSegModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segmentation_models_pytorch.encoders as encoders
    import torch

    config = copy.deepcopy(dict(module.hparams)["config"])
    config["model"]["encoder_weights"] = "imagenet"
    path = _save(module, tmp_path / "pretrained.ckpt", config)
    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise OSError("network is unreachable")

    monkeypatch.setattr(encoders, "hf_hub_download", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    model = load_model(path)
    assert not calls
    assert model.cfg.model.encoder_weights == "imagenet"  # as trained
    raw = torch.from_numpy(make_tile(np.random.default_rng(4))[0][None])
    torch.testing.assert_close(model.predict_proba(raw), module.predict_proba(raw))
    res = predict_tiles(
        model, [("X", write_raster(tmp_path / "X.tif", raw[0].numpy()))], tmp_path / "o"
    )
    assert res.report.ok == 1


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "state_dict", "folder"])
def test_bad_checkpoints_give_one_line(
    kind: str, module: KelpSegModule, ckpt: Path, tmp_path: Path
) -> None:
    import torch

    path = tmp_path / "bad.ckpt"
    if kind == "garbage":
        path.write_bytes(b"\x00\x01 this is not a checkpoint" * 50)
    elif kind == "truncated":
        path.write_bytes(ckpt.read_bytes()[:100_000])
    elif kind == "state_dict":
        torch.save(module.state_dict(), path)
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(CheckpointError, match=r"bad\.ckpt"):
        load_model(path)
    tile = write_raster(tmp_path / "A_satellite.tif", make_tile(np.random.default_rng(0))[0])
    result = runner.invoke(app, ["predict", str(path), str(tile), "-o", str(tmp_path / "o")])
    expected = {
        "missing": "not found",
        "garbage": "not a PyTorch checkpoint",
        "truncated": "truncated",
        "state_dict": "state dict",
        "folder": "not found",
    }
    _one_line_error(result, str(path), expected[kind])


def test_second_checkpoint_among_inputs_is_an_error(ckpt: Path, tmp_path: Path) -> None:
    tile = write_raster(tmp_path / "A_satellite.tif", make_tile(np.random.default_rng(0))[0])
    result = runner.invoke(
        app, ["predict", str(ckpt), str(ckpt), str(tile), "-o", str(tmp_path / "o")]
    )
    _one_line_error(result, str(ckpt), "checkpoint")
    assert not (tmp_path / "o").exists()


# -- inputs and outputs ----------------------------------------------------------------------


def test_out_naming_an_existing_file_is_an_error(ckpt: Path, tmp_path: Path) -> None:
    tile = write_raster(tmp_path / "A_satellite.tif", make_tile(np.random.default_rng(0))[0])
    target = tmp_path / "result.tif"
    target.write_text("keep me")
    result = runner.invoke(app, ["predict", str(ckpt), str(tile), "-o", str(target)])
    _one_line_error(result, str(target), "--out")
    assert target.read_text() == "keep me"


def test_missing_input_file_says_not_found(ckpt: Path, tmp_path: Path) -> None:
    gone = tmp_path / "nope_satellite.tif"
    result = runner.invoke(app, ["predict", str(ckpt), str(gone), "-o", str(tmp_path / "o")])
    _one_line_error(result, str(gone), "not found")


def test_same_file_name_in_two_folders_is_refused(ckpt: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    a = write_raster(tmp_path / "2019/AA1_satellite.tif", make_tile(rng)[0])
    b = write_raster(tmp_path / "2020/AA1_satellite.tif", make_tile(rng)[0])
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["predict", str(ckpt), str(a.parent), str(b.parent), "-o", str(out)]
    )
    _one_line_error(result, str(a), str(b), "same file name")
    assert not out.exists()
    # the same file reached twice (its folder and itself) is simply predicted once
    result = runner.invoke(app, ["predict", str(ckpt), str(a.parent), str(a), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["AA1_kelp.tif"]


def test_predicting_into_the_input_folder_can_be_repeated(ckpt: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    folder = tmp_path / "scenes"
    for name in ("north", "south"):
        write_raster(folder / f"{name}.tif", make_tile(rng)[0])
    args = ["predict", str(ckpt), str(folder), "-o", str(folder), "--probabilities"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    files = sorted(p.name for p in folder.iterdir())
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "[predict] 2 ok, 0 skipped" in second.stderr
    assert sorted(p.name for p in folder.iterdir()) == files
    assert files == [
        "north.tif",
        "north_kelp.tif",
        "north_proba.tif",
        "south.tif",
        "south_kelp.tif",
        "south_proba.tif",
    ]


def test_predict_output_reads_back_for_evaluation(ckpt: Path, tmp_path: Path) -> None:
    """Masks with nodata are valid predictions for `kelpseg evaluate` (255 = not kelp)."""
    img = _striped_tile(np.random.default_rng(8))
    mask = np.zeros(img.shape[1:], np.uint8)
    mask[20:30, 20:30] = 1
    write_raster(tmp_path / "in/S_satellite.tif", img)
    write_raster(tmp_path / "truth/S_kelp.tif", mask)
    out = tmp_path / "pred"
    assert (
        runner.invoke(app, ["predict", str(ckpt), str(tmp_path / "in"), "-o", str(out)]).exit_code
        == 0
    )
    result = runner.invoke(app, ["evaluate", str(out), str(tmp_path / "truth")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tiles"] == 1


# -- precision, probability formats, reruns --------------------------------------------------


def test_bf16_autocast_on_cpu_gives_close_probabilities(
    module: KelpSegModule, tmp_path: Path
) -> None:
    tile = write_raster(tmp_path / "A_satellite.tif", make_tile(np.random.default_rng(0))[0])
    probs = {}
    for prec in ("fp32", "bf16"):
        predict_tiles(module, [("A", tile)], tmp_path / prec, probabilities=True, precision=prec)
        with rasterio.open(tmp_path / prec / "A_proba.tif") as src:
            probs[prec] = src.read(1)
    diff = np.abs(probs["fp32"] - probs["bf16"])
    assert diff.max() < 0.05
    assert diff.max() > 0  # bf16 was really used
    with pytest.raises(ValueError, match="precision"):
        predict_tiles(module, [("A", tile)], tmp_path / "x", precision="fp8")


def test_uint8_probabilities_are_scaled_with_255_nodata(ckpt: Path, tmp_path: Path) -> None:
    tile = write_raster(tmp_path / "A_satellite.tif", _striped_tile(np.random.default_rng(1)))
    for fmt in ("float32", "uint8"):
        args = ["predict", str(ckpt), str(tile), "-o", str(tmp_path / fmt), "--probabilities"]
        result = runner.invoke(app, [*args, "--proba-format", fmt])
        assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "float32" / "A_proba.tif") as src:
        f = src.read(1)
    with rasterio.open(tmp_path / "uint8" / "A_proba.tif") as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        q = src.read(1)
    assert ((q == 255) == np.isnan(f)).all() and np.isnan(f).any()
    ok = ~np.isnan(f)
    np.testing.assert_array_equal(q[ok], np.rint(f[ok] * 254).astype(np.uint8))


def _tile_folder(folder: Path, n: int, size: int = 64) -> Path:
    rng = np.random.default_rng(11)
    for i in range(n):
        write_raster(folder / f"T{i:02d}_satellite.tif", make_tile(rng, size=size)[0])
    return folder


def _outputs(folder: Path) -> dict[str, tuple[np.ndarray, dict]]:
    got = {}
    for p in sorted(folder.iterdir()):
        with rasterio.open(p) as src:
            got[p.name] = (src.read(), src.tags())
    return got


def test_rerun_skips_complete_outputs_and_overwrite_redoes_them(ckpt: Path, tmp_path: Path) -> None:
    tiles = _tile_folder(tmp_path / "tiles", 3)
    out = tmp_path / "o"
    args = ["predict", str(ckpt), str(tiles), "-o", str(out), "--batch-size", "1"]
    assert runner.invoke(app, args).exit_code == 0
    (out / "T01_kelp.tif").write_bytes(b"truncated")  # a damaged output is redone
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "2 kept from an earlier run" in second.stdout
    assert _read_ok(out / "T01_kelp.tif")
    # other settings -> other fingerprint: nothing is reused
    third = runner.invoke(app, [*args, "--threshold", "0.3"])
    assert "kept" not in third.stdout
    fourth = runner.invoke(app, [*args, "--threshold", "0.3", "--overwrite"])
    assert "kept" not in fourth.stdout


def test_dem_correction_runs_in_reader_threads_with_the_same_result(
    module: KelpSegModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-tile DEM realignment is host work: the pipeline runs it in its reader threads,
    never on the thread that drives the model, and the masks are those of the engine alone."""
    import threading

    import kelpseg.infer.ensemble as ensemble_mod
    from kelpseg.data.dem_shift import correct_dem
    from kelpseg.infer.ensemble import Members

    threads: set[str] = set()

    def spy(raw: np.ndarray) -> np.ndarray:
        threads.add(threading.current_thread().name)
        return correct_dem(raw)

    monkeypatch.setattr(ensemble_mod, "correct_dem", spy)
    tiles = _tile_folder(tmp_path / "tiles", 5)
    res = predict_tiles(module, [(p.stem[:3], p) for p in sorted(tiles.iterdir())],
                        tmp_path / "o", probabilities=True, batch_size=2)  # fmt: skip
    assert res.report.ok == 5
    assert threads and threading.main_thread().name not in threads
    engine = Members([module], [1.0], dem_fix=correct_dem)
    for p in sorted(tiles.iterdir()):
        with rasterio.open(p) as src:
            raw = src.read()
        want = engine(raw[None])[0][0].numpy()
        with rasterio.open(tmp_path / "o" / f"{p.stem[:3]}_proba.tif") as src:
            got = src.read(1)
        ok = np.isfinite(got)
        np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=1e-5)  # batch 2 vs 1


def _read_ok(path: Path) -> bool:
    with rasterio.open(path) as src:
        return src.read().size > 0


def test_sigkill_then_rerun_gives_the_same_outputs(ckpt: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    tiles = _tile_folder(tmp_path / "tiles", 40)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "kelpseg", "predict", str(ckpt), str(tiles), "-o",
                str(out), "--batch-size", "1", "--probabilities"]  # fmt: skip

    whole = tmp_path / "whole"  # the uninterrupted run, side by side with the killed one
    uninterrupted = subprocess.Popen(
        cmd(whole), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if killed.is_dir() and len(list(killed.glob("*_kelp.tif"))) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list(killed.glob("*_kelp.tif")))
    assert 3 <= n_done < 40, n_done  # really killed mid-run
    rerun = subprocess.run(cmd(killed), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "kept from an earlier run" in rerun.stdout
    assert not list(killed.glob(".*"))  # the killed write's temp file is cleaned up
    out = uninterrupted.communicate(timeout=300)[0]
    assert uninterrupted.returncode == 0, out
    a, b = _outputs(whole), _outputs(killed)
    assert a.keys() == b.keys() and len(a) == 80
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        assert a[name][1] == b[name][1]
