"""Sliced whole-raster inference: windows, Hann blending, row bands, SAHI slices, COGs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from kelpseg.config import load_config
from kelpseg.infer.ensemble import Members
from kelpseg.infer.predict import load_model, predict_tiles
from kelpseg.infer.sliced import (
    ArraySource,
    RasterSource,
    blend_weight,
    predict_sliced,
    window_offsets,
)
from kelpseg.io import write_raster
from kelpseg.io.cog import CogWriter, is_cog, write_cog
from kelpseg.io.raster import Georef
from kelpseg.train.module import KelpSegModule
from tests.test_predict import _save
from tests.tiles import make_tile


@pytest.fixture(scope="module")
def model() -> KelpSegModule:
    torch.manual_seed(0)
    return KelpSegModule(load_config("tiny").model_dump(mode="json")).eval()


@pytest.fixture(scope="module")
def constant() -> KelpSegModule:
    """A tiny model whose output is sigmoid(0.3) everywhere (zero head weights, bias 0.3)."""
    torch.manual_seed(1)
    m = KelpSegModule(load_config("tiny").model_dump(mode="json")).eval()
    head = m.net.segmentation_head[0]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(0.3)
    return m


def _raster(h: int = 200, w: int = 300, seed: int = 0) -> np.ndarray:
    """A raw 7-band raster mosaicked from 64 px test tiles, with a missing corner."""
    rng = np.random.default_rng(seed)
    ny, nx = -(-h // 64), -(-w // 64)
    rows = [np.concatenate([make_tile(rng)[0] for _ in range(nx)], axis=2) for _ in range(ny)]
    raw = np.concatenate(rows, axis=1)[:, :h, :w].copy()
    raw[:5, :20, :30] = -32768
    return raw


def _blend(engine: Members, raw: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray | None]:
    bands = list(predict_sliced(engine, ArraySource(raw), window=64, progress=False, **kw))
    rows = [b.row for b in bands]
    assert rows == sorted(rows) and rows[0] == 0
    mean = np.concatenate([b.mean for b in bands])
    std = np.concatenate([b.std for b in bands]) if bands[0].std is not None else None
    assert mean.shape == raw.shape[1:]
    np.testing.assert_array_equal(np.concatenate([b.raw for b in bands], axis=1), raw)
    return mean, std


def test_window_offsets_cover_the_raster_and_end_at_its_edge() -> None:
    assert window_offsets(50, 64, 48) == [0]
    assert window_offsets(64, 64, 48) == [0]
    offs = window_offsets(300, 64, 48)
    assert offs[0] == 0 and offs[-1] == 300 - 64
    assert all(0 < b - a <= 48 for a, b in itertools.pairwise(offs))
    w = blend_weight(64, 64)
    assert w.min() > 0 and w[32, 32] == pytest.approx(w.max())


def test_one_window_raster_equals_predict_tiles(model: KelpSegModule, tmp_path: Path) -> None:
    raw = _raster(64, 64, seed=4)
    write_raster(tmp_path / "T_satellite.tif", raw)
    ckpt = _save(model, tmp_path / "m.ckpt")
    m = load_model(ckpt, device="cpu")
    predict_tiles(m, [("T", tmp_path / "T_satellite.tif")], tmp_path / "out", probabilities=True)
    with rasterio.open(tmp_path / "out" / "T_proba.tif") as src:
        want = src.read(1)
    with rasterio.open(tmp_path / "T_satellite.tif") as src:
        (band,) = predict_sliced(Members([m], [1.0]), RasterSource(src), window=64, progress=False)
    got = np.where(band.missing, np.nan, band.mean)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, equal_nan=True)


def test_blending_a_constant_model_gives_that_constant_everywhere(
    constant: KelpSegModule,
) -> None:
    want = float(torch.sigmoid(torch.tensor(0.3)))
    raw = _raster()
    mean, _ = _blend(Members([constant], [1.0]), raw, overlap=24, batch_size=5)
    np.testing.assert_allclose(mean, want, rtol=0, atol=1e-6)
    # a raster smaller than a window is padded, not stretched
    small, _ = _blend(Members([constant], [1.0]), raw[:, :40, :50])
    np.testing.assert_allclose(small, want, rtol=0, atol=1e-6)


class PixelFunction:
    """A fake engine whose output at each pixel is a function of that pixel's own input: any
    window placed at the wrong offset, or a blend that does not normalize, shows."""

    device = torch.device("cpu")
    spread = True

    def __call__(self, raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(raw[:, 1].astype(np.float32))
        return (x % 1000) / 1000, (x % 7) / 7


def test_windows_land_where_they_were_read() -> None:
    raw = _raster()
    mean, std = _blend(PixelFunction(), raw, overlap=24, batch_size=5)
    nir = raw[1].astype(np.float32)
    np.testing.assert_allclose(mean, (nir % 1000) / 1000, atol=1e-5)
    np.testing.assert_allclose(std, (nir % 7) / 7, atol=1e-5)


def test_result_does_not_depend_on_band_rows_or_batch(model: KelpSegModule) -> None:
    raw = _raster(seed=2)
    engine = Members([model, model], [0.5, 0.5], spread=True)
    a, sa = _blend(engine, raw, band_rows=0, batch_size=3)
    b, sb = _blend(engine, raw, band_rows=10_000, batch_size=7)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert sa is not None and sb is not None
    np.testing.assert_allclose(sa, 0, atol=1e-3)  # two identical members do not spread
    # overlapping windows: the blend is not any single window's output at a window border
    assert 0 < a.min() <= a.max() < 1


def test_windows_without_valid_pixels_are_not_predicted(model: KelpSegModule) -> None:
    """A fill collar (here a missing triangle, as a rotated Landsat footprint leaves) costs no
    forward pass, and no valid pixel's probability changes."""
    raw = _raster(h=256, w=256, seed=4)
    yy, xx = np.mgrid[:256, :256]
    collar = xx + yy < 200
    raw[:, collar] = -32768
    seen: list[np.ndarray] = []

    class Spy(Members):
        def __call__(self, raw_np: np.ndarray, fixed_np: np.ndarray | None = None):
            seen.extend(raw_np)
            return super().__call__(raw_np, fixed_np)

    engine = Spy([model], [1.0])
    skipped, _ = _blend(engine, raw, batch_size=4)
    assert seen and not any((w[:5] == -32768).all() for w in seen)
    n_skip = len(seen)
    seen.clear()
    every, _ = _blend(engine, raw, batch_size=4, skip_empty=False)
    assert len(seen) > n_skip  # some windows lay in the collar
    valid = ~collar
    np.testing.assert_allclose(skipped[valid], every[valid], rtol=0, atol=1e-6)
    assert np.isfinite(skipped).all()


def test_bands_hold_finished_rows_only_and_stay_bounded(model: KelpSegModule) -> None:
    raw = _raster(h=400, w=70, seed=3)
    bands = list(
        predict_sliced(
            Members([model], [1.0]), ArraySource(raw), window=64, batch_size=2, progress=False
        )
    )
    assert len(bands) > 4
    assert max(b.mean.shape[0] for b in bands) <= 64  # never the whole raster at once


def test_sahi_slices_keep_a_constant_and_run_through_predict_tiles(
    constant: KelpSegModule, model: KelpSegModule, tmp_path: Path
) -> None:
    want = float(torch.sigmoid(torch.tensor(0.3)))
    raw = _raster(seed=5)
    mean, _ = _blend(Members([constant], [1.0], slices=2), raw)
    np.testing.assert_allclose(mean, want, rtol=0, atol=1e-6)
    write_raster(tmp_path / "A_satellite.tif", raw[:, :64, 64:128])
    item = [("A", tmp_path / "A_satellite.tif")]
    plain = predict_tiles(model, item, tmp_path / "p1", probabilities=True)
    sahi = predict_tiles(model, item, tmp_path / "p2", probabilities=True, slices=2)
    with (
        rasterio.open(plain.masks["A"].with_name("A_proba.tif")) as a,
        rasterio.open(sahi.masks["A"].with_name("A_proba.tif")) as b,
    ):
        pa, pb = a.read(1), b.read(1)
        assert b.tags()["fingerprint"] != a.tags()["fingerprint"]
    assert pa.shape == pb.shape and not np.allclose(pa, pb)


def test_cog_has_tiles_overviews_georef_and_nodata(tmp_path: Path) -> None:
    from affine import Affine
    from rasterio.crs import CRS

    geo = Georef(CRS.from_epsg(32611), Affine(30, 0, 500_000, 0, -30, 4_000_000))
    data = (np.arange(300 * 200).reshape(200, 300) % 3).astype(np.uint8)
    with CogWriter(
        tmp_path / "k.tif", height=200, width=300, dtype="uint8", georef=geo, nodata=255
    ) as w:
        w.write_rows(0, data[:120])
        w.write_rows(120, data[120:])
    with rasterio.open(tmp_path / "k.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1) and src.block_shapes[0][0] < 200
        assert src.crs == geo.crs and src.transform == geo.transform and src.nodata == 255
        np.testing.assert_array_equal(src.read(1), data)
    assert is_cog(tmp_path / "k.tif")
    assert [p.name for p in tmp_path.iterdir()] == ["k.tif"]  # no staging file left
    p = write_cog(tmp_path / "p.tif", np.full((90, 90), np.nan, np.float32), nodata=np.nan)
    assert is_cog(p)


def test_failed_cog_write_leaves_nothing(tmp_path: Path) -> None:
    with (
        pytest.raises(RuntimeError),
        CogWriter(tmp_path / "k.tif", height=10, width=10, dtype="uint8") as w,
    ):
        w.write_rows(0, np.zeros((5, 10), np.uint8))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
