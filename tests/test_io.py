"""Discovery, validated reading and atomic georeferenced writing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from kelpseg.io import (
    Georef,
    TileError,
    discover,
    find_images,
    read_georef,
    read_mask,
    read_tile,
    write_raster,
)
from kelpseg.io.errors import InputError
from kelpseg.io.plausibility import band_order_votes, check_band_order
from kelpseg.io.raster import atomic_write_text
from kelpseg.io.tiles import missing_pixels
from tests.tiles import make_tile, write_pair


def test_discover_by_suffix_in_any_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img, mask = make_tile(rng)
    # a re-arranged layout: train/images + train/masks, test/images
    write_raster(tmp_path / "train/images/AA000001_satellite.tif", img)
    write_raster(tmp_path / "train/masks/AA000001_kelp.tif", mask)
    write_raster(tmp_path / "test/images/BB000002_satellite.tif", img)
    refs = {r.tile_id: r for r in discover(tmp_path)}
    assert set(refs) == {"AA000001", "BB000002"}
    assert refs["AA000001"].split == "train" and refs["AA000001"].mask is not None
    assert refs["BB000002"].split == "test" and refs["BB000002"].mask is None


def test_metadata_csv_decides_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img, mask = make_tile(rng)
    write_pair(tmp_path, "AA000001", img, mask)
    write_pair(tmp_path, "AA000002", img, None)
    (tmp_path / "metadata_fTq0l2T.csv").write_text(
        "filename,type,tile_id,in_train\n"
        "AA000001_satellite.tif,satellite,AA000001,True\n"
        "AA000002_satellite.tif,satellite,AA000002,True\n"
    )
    refs = {r.tile_id: r for r in discover(tmp_path)}
    assert refs["AA000002"].split == "train"  # the metadata says so, although its mask is missing


def test_read_tile_keeps_raw_values(tmp_path: Path) -> None:
    img, _ = make_tile(np.random.default_rng(1))
    path = write_raster(tmp_path / "t_satellite.tif", img)
    raw = read_tile(path, 64)
    assert raw.dtype == np.int16 and np.array_equal(raw, img)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("bands", "expected 7 bands"),
        ("size", "expected 64x64"),
        ("dtype", "int16"),
        ("not_tiff", "not a readable raster"),
        ("truncated", "not a readable raster"),
        ("all_missing", "every reflectance pixel is missing"),
        ("qa_values", "QA band"),
    ],
)
def test_bad_tiles_are_named_and_explained(tmp_path: Path, kind: str, message: str) -> None:
    img, _ = make_tile(np.random.default_rng(2))
    path = tmp_path / "AA000009_satellite.tif"
    if kind == "bands":
        write_raster(path, img[:5])
    elif kind == "size":
        write_raster(path, img[:, :50, :50])
    elif kind == "dtype":
        write_raster(path, img.astype(np.float32))
    elif kind == "not_tiff":
        path.write_text("this is not a GeoTIFF")
    elif kind == "truncated":
        write_raster(path, img, compress="none")
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "all_missing":
        img[:] = -32768
        write_raster(path, img)
    elif kind == "qa_values":
        img[5, 0, 0] = 7
        write_raster(path, img)
    with pytest.raises(TileError) as info:
        read_tile(path, 64)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_bad_mask_values(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "m_kelp.tif", np.full((64, 64), 3, np.uint8))
    with pytest.raises(TileError, match="0/1"):
        read_mask(path)


def test_write_keeps_georef_or_none(tmp_path: Path) -> None:
    arr = np.ones((8, 8), np.uint8)
    plain = write_raster(tmp_path / "plain.tif", arr)
    assert not read_georef(plain).is_georeferenced
    geo = Georef(CRS.from_epsg(32611), Affine(30, 0, 500000, 0, -30, 3800000))
    out = write_raster(tmp_path / "geo.tif", arr, georef=geo)
    with rasterio.open(out) as src:
        assert src.crs == geo.crs and src.transform == geo.transform
    assert read_georef(out) == geo


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = write_raster(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("kelpseg.io.raster.os.replace", boom)
    with pytest.raises(RuntimeError):
        write_raster(target, np.ones((4, 4), np.uint8))
    assert target.read_bytes() == before  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]  # no temp file left behind


def test_find_images_files_and_folders(tmp_path: Path) -> None:
    img, _ = make_tile(np.random.default_rng(0))
    a = write_raster(tmp_path / "a" / "AA1_satellite.tif", img)
    b = write_raster(tmp_path / "scene.tif", img)
    found = dict(find_images([tmp_path / "a", b]))
    assert found == {"AA1": a, "scene": b}


# -- file modes and failed writes ------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_respect_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        tif = write_raster(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
        txt = atomic_write_text(tmp_path / "x.csv", "a,b\n")
    finally:
        os.umask(previous)
    for path in (tif, txt):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_failed_text_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = atomic_write_text(tmp_path / "table.csv", "old\n")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("kelpseg.io.raster.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


# -- reading: declared nodata, missing files -------------------------------------------------


def test_declared_nodata_is_read_as_missing(tmp_path: Path) -> None:
    img, _ = make_tile(np.random.default_rng(3))
    img[:5, :5, :5] = -9999  # a corner outside the footprint in the reflectance bands
    img[6, 60:, 60:] = -9999  # holes in the DEM
    img[5, 10:20, 10:20] = 0  # clear QA stays clear, although 0 is not nodata here anyway
    path = write_raster(tmp_path / "n_satellite.tif", img, nodata=-9999)
    raw = read_tile(path)
    assert (raw[:5, :5, :5] == -32768).all() and (raw[6, 60:, 60:] == -32768).all()
    assert not (raw == -9999).any()
    assert (raw[5, 10:20, 10:20] == 0).all()
    assert missing_pixels(raw).sum() == 25


def test_nodata_zero_keeps_clear_qa_and_sea_level(tmp_path: Path) -> None:
    img, _ = make_tile(np.random.default_rng(4))
    img[:5, 0, :3] = 0  # Landsat fill in the reflectance bands
    path = write_raster(tmp_path / "z_satellite.tif", img, nodata=0)
    raw = read_tile(path)
    assert (raw[:5, 0, :3] == -32768).all()
    assert np.array_equal(raw[5], img[5]) and np.array_equal(raw[6], img[6])  # QA 0, DEM 0 kept


def test_missing_file_says_not_found(tmp_path: Path) -> None:
    with pytest.raises(TileError, match="not found"):
        read_tile(tmp_path / "gone_satellite.tif")


def test_find_images_skips_outputs_and_refuses_bad_inputs(tmp_path: Path) -> None:
    img, _ = make_tile(np.random.default_rng(0))
    scene = write_raster(tmp_path / "s" / "scene.tif", img)
    write_raster(tmp_path / "s" / "scene_kelp.tif", img[0])
    write_raster(tmp_path / "s" / "scene_proba.tif", img[0].astype(np.float32))
    assert find_images([tmp_path / "s"]) == [("scene", scene)]
    assert find_images([tmp_path / "s", scene]) == [("scene", scene)]  # once
    with pytest.raises(InputError, match="not found"):
        find_images([tmp_path / "nothing_here.tif"])
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"x")
    with pytest.raises(InputError, match=r"best\.ckpt"):
        find_images([ckpt, scene])
    other = write_raster(tmp_path / "t" / "scene.tif", img)
    with pytest.raises(InputError, match="same file name") as info:
        find_images([scene, other])
    assert str(scene) in str(info.value) and str(other) in str(info.value)


# -- band-order plausibility -----------------------------------------------------------------


def test_band_order_check_is_quiet_on_every_generated_tile(synth_data) -> None:
    refs = discover(synth_data.root)
    assert len(refs) > 20
    warned = {r.tile_id: check_band_order(read_tile(r.image)) for r in refs}
    assert not {t: w for t, w in warned.items() if w}


def test_band_order_check_warns_on_landsat_order(synth_data) -> None:
    """Each generated tile with enough clear water or land, re-stacked Blue..SWIR1, is caught."""
    refs = discover(synth_data.root)
    checked = missed = 0
    for r in refs:
        raw = read_tile(r.image)
        if not band_order_votes(raw):
            continue  # nothing clear to judge (cloud or missing everywhere)
        swapped = raw.copy()
        swapped[:5] = raw[:5][::-1]
        checked += 1
        message = check_band_order(swapped)
        missed += message is None
        assert message is None or "out of order" in message
    assert checked > 20 and missed == 0


def test_bit_packed_qa_is_named() -> None:
    img, _ = make_tile(np.random.default_rng(0))
    img[5] = 21824  # Landsat QA_PIXEL "clear, low confidence" over land
    message = check_band_order(img)
    assert message is not None and "QA band" in message and "21824" in message
