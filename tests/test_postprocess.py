"""Post-processing steps on hand-made arrays with known answers."""

from __future__ import annotations

import numpy as np

from kelpseg.config import PostprocessConfig, load_config
from kelpseg.infer import postprocess as pp
from kelpseg.io.tiles import DEM_INDEX, MASK_NODATA, NODATA


def _raw(h: int = 20, w: int = 20) -> np.ndarray:
    raw = np.full((7, h, w), 100, dtype=np.int16)
    raw[DEM_INDEX] = 0
    return raw


def test_all_off_by_default_is_plain_threshold() -> None:
    cfg = load_config("tiny").postprocess
    assert cfg == PostprocessConfig()
    proba = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    raw = _raw()
    raw[0, 0, 0] = NODATA
    mask = pp.apply(proba, raw, cfg, 0.5)
    expect = (proba >= 0.5).astype(np.uint8)
    expect[0, 0] = MASK_NODATA
    np.testing.assert_array_equal(mask, expect)


def test_remove_small_and_fill_holes() -> None:
    m = np.zeros((12, 12), bool)
    m[1, 1] = True  # 1 px object
    m[5:10, 5:10] = True  # 25 px object with a 1 px hole
    m[7, 7] = False
    assert pp.remove_small(m, 2).sum() == 24 and not pp.remove_small(m, 2)[1, 1]
    filled = pp.fill_holes(m, 2)
    assert filled[7, 7] and filled.sum() == 26
    assert not pp.fill_holes(m, 1)[7, 7]  # the hole is not under 1 px


def test_opening_and_closing() -> None:
    m = np.zeros((15, 15), bool)
    m[2:9, 2:9] = True
    m[12, 12] = True  # a speck
    opened = pp.opening(m, 1)
    assert not opened[12, 12] and opened.sum() == 49 - 4  # a disk rounds the 4 corners
    block = np.zeros((9, 9), bool)
    block[1:8, 1:8] = True
    block[4, 4] = False  # a pinhole
    closed = pp.closing(block, 1)
    assert closed[4, 4] and closed.sum() == 49  # filled, and no growth


def test_smooth_ignores_missing_and_keeps_constants() -> None:
    p = np.full((10, 10), 0.7, np.float32)
    valid = np.ones_like(p, bool)
    valid[:, :3] = False
    p[~valid] = 0.0
    s = pp.smooth(p, 2.0, valid)
    np.testing.assert_allclose(s[valid], 0.7, atol=1e-5)
    spike = np.zeros((11, 11), np.float32)
    spike[5, 5] = 1.0
    assert pp.smooth(spike, 1.0)[5, 5] < 0.5  # an isolated pixel is spread out


def test_land_mask_and_nodata() -> None:
    raw = _raw(4, 4)
    raw[DEM_INDEX, 0, :] = 5  # land row
    raw[DEM_INDEX, 1, 0] = NODATA  # missing DEM only: not land, not nodata
    raw[1, 3, 3] = NODATA  # missing reflectance: nodata
    proba = np.ones((4, 4), np.float32)
    mask = pp.apply(proba, raw, PostprocessConfig(land_mask=True), 0.5)
    assert (mask[0] == 0).all() and mask[1, 0] == 1
    assert mask[3, 3] == MASK_NODATA and mask[2].tolist() == [1, 1, 1, 1]


def test_config_section_validates() -> None:
    cfg = load_config("tiny", ["postprocess.min_object_px=5", "postprocess.land_mask=true"])
    assert cfg.postprocess.min_object_px == 5 and cfg.postprocess.land_mask
