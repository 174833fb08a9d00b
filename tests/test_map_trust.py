"""Scene maps a scientist can trust: the DEM (missing, wrong, partial, a folder, a mapping),
kelp only on observed water, provenance, concurrent runs and failures that leave nothing."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
from rasterio.windows import Window
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.synth.landsat import SyntheticScene, write_landsat_scene
from tests.test_predict import _save

runner = CliRunner()
HA = 30 * 30 / 10_000


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model: these tests check what surrounds the model, not its skill."""
    import torch

    from kelpseg.config import load_config
    from kelpseg.train.module import KelpSegModule

    torch.manual_seed(0)
    m = KelpSegModule(load_config("tiny").model_dump(mode="json")).eval()
    return _save(m, tmp_path_factory.mktemp("ckpt") / "m.ckpt")


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> SyntheticScene:
    return write_landsat_scene(
        tmp_path_factory.mktemp("scene"), size=160, seed=1, kelp_abundance=0.9
    )


def _map(ckpt: Path, scene: SyntheticScene, maps: Path, *extra: str):
    return runner.invoke(app, ["map", "-m", str(ckpt), str(scene.folder), "-o", str(maps), *extra])


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _dem_part(dem: Path, out: Path, cols: slice) -> Path:
    """The columns ``cols`` of a DEM as a GeoTIFF of their own."""
    with rasterio.open(dem) as src:
        c0 = cols.start or 0
        c1 = cols.stop or src.width
        win = Window(c0, 0, c1 - c0, src.height)
        profile = {**src.profile, "width": c1 - c0, "transform": src.window_transform(win)}
        data = src.read(window=win)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def test_a_scene_without_a_dem_is_refused_unless_no_dem(ckpt: Path, scene, tmp_path: Path):
    maps = tmp_path / "maps"
    res = _map(ckpt, scene, maps)
    assert res.exit_code == 1 and "no DEM" in res.output and "--no-dem" in res.output
    assert not (maps / "areas.csv").exists()  # a failed command leaves no header-only CSV
    res = _map(ckpt, scene, maps, "--no-dem")
    assert res.exit_code == 0, res.output
    assert "without a DEM (--no-dem)" in res.output
    info = json.loads((maps / scene.meta.scene_id / "scene.json").read_text())
    assert info["dem"] is None
    assert pd.read_csv(maps / "areas.csv")["dem_coverage"].isna().all()


def test_a_dem_elsewhere_is_refused_naming_it(ckpt: Path, scene, tmp_path: Path) -> None:
    far = tmp_path / "far.tif"
    with rasterio.open(scene.dem) as src:
        profile = {**src.profile, "transform": src.transform * src.transform.translation(-9e5, 0)}
        data = src.read()
    with rasterio.open(far, "w", **profile) as dst:
        dst.write(data)
    maps = tmp_path / "maps"
    res = _map(ckpt, scene, maps, "--dem", str(far))
    assert res.exit_code == 1 and "far.tif" in res.output and "does not overlap" in res.output
    assert not maps.exists() or not list(maps.glob("*/scene.json"))
    assert not (maps / "areas.csv").exists()


def test_kelp_only_on_observed_water_and_polygons_agree(ckpt: Path, scene, tmp_path: Path):
    maps = tmp_path / "maps"
    res = _map(ckpt, scene, maps, "--dem", str(scene.dem), "--threshold", "0.3")
    assert res.exit_code == 0, res.output
    sid = scene.meta.scene_id
    kelp = _read(maps / sid / f"{sid}_kelp.tif")
    cov = _read(maps / sid / f"{sid}_coverage.tif")
    assert (kelp[cov == 0] == 0).all()  # land is never kelp
    assert (kelp[cov == 2] == 255).all()  # water under a QA flag: not observed
    assert ((kelp == 1) <= (cov == 1)).all() and (kelp == 1).any()
    info = json.loads((maps / sid / "scene.json").read_text())
    assert info["kelp_ha"] == pytest.approx((kelp == 1).sum() * HA)
    beds = pyogrio.read_dataframe(maps / sid / f"{sid}_kelp.gpkg")
    assert beds["area_ha"].sum() == pytest.approx(info["kelp_ha"])  # polygons = kelp_ha
    assert set(beds["scene_id"]) == {sid} and set(beds["date"]) == {info["date"]}
    assert info["footprint"] == sid.split("_")[2] and set(beds["footprint"]) == {sid.split("_")[2]}
    assert info["dem"]["coverage"] == 1.0 and info["dem"]["files"] == [str(scene.dem)]
    assert 0 < info["dem"]["land_fraction"] < 1
    with rasterio.open(maps / sid / f"{sid}_kelp.tif") as src:
        tags = src.tags()
    assert tags["source"] == str(scene.folder.resolve())  # the scene, not a temporary stack
    assert tags["dem"] == str(scene.dem) and tags["date"] == scene.meta.date.isoformat()
    assert tags["sensor"] == "LANDSAT_8" and tags["threshold"] == "0.3" and tags["model_hash"]
    table = pd.read_csv(maps / "areas.csv")
    assert table.loc[0, "kelp_ha"] == round(info["kelp_ha"], 2)  # rounded to 0.01 ha
    assert table.loc[0, "dem_coverage"] == 1.0


def test_a_partial_dem_leaves_the_rest_unknown(ckpt: Path, scene, tmp_path: Path) -> None:
    with rasterio.open(scene.dem) as src:
        half = src.width // 2
    west = _dem_part(scene.dem, tmp_path / "west.tif", slice(0, half))
    maps = tmp_path / "maps"
    res = _map(ckpt, scene, maps, "--dem", str(west))
    assert res.exit_code == 0, res.output
    assert "the DEM covers" in res.output
    sid = scene.meta.scene_id
    cov = _read(maps / sid / f"{sid}_coverage.tif")
    kelp = _read(maps / sid / f"{sid}_kelp.tif")
    assert (cov == 3).any() and (kelp[cov == 3] == 255).all()
    info = json.loads((maps / sid / "scene.json").read_text())
    valid = (cov != 255).sum()
    assert info["dem"]["coverage"] == pytest.approx(1 - (cov == 3).sum() / valid, abs=1e-4)
    assert 0.2 < info["dem"]["coverage"] < 0.9
    assert info["no_dem_ha"] == pytest.approx((cov == 3).sum() * HA)
    assert info["water_ha"] == pytest.approx(np.isin(cov, (1, 2)).sum() * HA)


def test_dem_folder_and_mapping_give_the_single_dems_map(ckpt: Path, scene, tmp_path: Path):
    whole = tmp_path / "whole"
    assert _map(ckpt, scene, whole, "--dem", str(scene.dem)).exit_code == 0
    with rasterio.open(scene.dem) as src:
        half = src.width // 2
    tiles = tmp_path / "dems"
    _dem_part(scene.dem, tiles / "a" / "west.tif", slice(0, half))
    _dem_part(scene.dem, tiles / "east.tif", slice(half, None))
    (tiles / "notes.txt").write_text("not a DEM")
    sid = scene.meta.scene_id
    folder = tmp_path / "folder"
    res = _map(ckpt, scene, folder, "--dem", str(tiles))
    assert res.exit_code == 0, res.output
    for name in ("coverage", "kelp"):
        np.testing.assert_array_equal(
            _read(folder / sid / f"{sid}_{name}.tif"), _read(whole / sid / f"{sid}_{name}.tif")
        )
    info = json.loads((folder / sid / "scene.json").read_text())
    assert sorted(Path(f).name for f in info["dem"]["files"]) == ["east.tif", "west.tif"]
    assert not list((folder / sid).glob("*.vrt")) and not list((folder / sid).glob(".*.vrt"))
    # a mapping file: scene -> DEM (relative to the CSV); a scene without a row is one line
    mapping = tmp_path / "dems.csv"
    mapping.write_text(f"scene,dem\n{sid},{scene.dem.name}\n")
    os.link(scene.dem, tmp_path / scene.dem.name)
    res = _map(ckpt, scene, tmp_path / "mapped", "--dem", str(mapping))
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(
        _read(tmp_path / "mapped" / sid / f"{sid}_kelp.tif"), _read(whole / sid / f"{sid}_kelp.tif")
    )
    mapping.write_text("scene,dem\nother,x.tif\n")
    res = _map(ckpt, scene, tmp_path / "nomatch", "--dem", str(mapping))
    assert res.exit_code == 1 and "dems.csv" in res.output and sid in res.output


def test_a_scene_another_process_maps_is_skipped(ckpt: Path, scene, tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    folder = maps / scene.meta.scene_id
    folder.mkdir(parents=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another `kelpseg map` would hold it
    try:
        res = _map(ckpt, scene, maps, "--dem", str(scene.dem))
        assert res.exit_code == 0, res.output
        assert "being mapped by another kelpseg process" in res.output
        assert not (folder / "scene.json").exists() and not (maps / "areas.csv").exists()
    finally:
        os.close(fd)
    res = _map(ckpt, scene, maps, "--dem", str(scene.dem))
    assert res.exit_code == 0 and (folder / "scene.json").is_file()


def test_a_truncated_band_is_named(ckpt: Path, tmp_path: Path) -> None:
    sc = write_landsat_scene(tmp_path / "s", size=96, seed=3)
    band = next(sc.folder.glob("*_SR_B5.TIF"))
    band.write_bytes(band.read_bytes()[: band.stat().st_size // 3])
    maps = tmp_path / "maps"
    res = runner.invoke(
        app, ["map", "-m", str(ckpt), str(sc.folder), "--dem", str(sc.dem), "-o", str(maps)]
    )
    assert res.exit_code == 1 and band.name in res.output, res.output
    assert not (maps / "areas.csv").exists()


def test_an_all_cloud_scene_has_no_kelp_figure_not_zero(ckpt: Path, tmp_path: Path) -> None:
    sc = write_landsat_scene(tmp_path / "s", size=96, seed=5, cloud_fraction=0.0)
    qa = next(sc.folder.glob("*_QA_PIXEL.TIF"))
    with rasterio.open(qa, "r+") as src:
        bits = src.read(1)
        src.write(np.where(bits & 1, bits, bits | (1 << 3)).astype(bits.dtype), 1)  # cloud
    maps = tmp_path / "maps"
    res = runner.invoke(
        app, ["map", "-m", str(ckpt), str(sc.folder), "--dem", str(sc.dem), "-o", str(maps)]
    )
    assert res.exit_code == 0, res.output
    info = json.loads((maps / sc.meta.scene_id / "scene.json").read_text())
    assert info["kelp_ha"] is None and info["water_clear_ha"] == 0
    assert pd.isna(pd.read_csv(maps / "areas.csv").loc[0, "kelp_ha"])


def test_synthetic_scenes_are_dated_within_their_sensors_life(tmp_path: Path) -> None:
    from kelpseg.synth.landsat import sensor_date

    assert sensor_date("LANDSAT_5", None).year < 2013
    assert sensor_date("LANDSAT_7", None) < dt.date(2003, 5, 31)
    with pytest.raises(ValueError, match="LANDSAT_5 imaged 1984-2011"):
        sensor_date("LANDSAT_5", dt.date(2021, 8, 15))
    res = runner.invoke(
        app, ["synth", "--landsat-scene", "-o", str(tmp_path), "--sensor", "LANDSAT_5",
              "--size", "64"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert next(tmp_path.glob("LT05_*")).name.split("_")[3] < "2013"


def test_an_archive_of_every_kind_is_mapped_each_with_its_dem(ckpt: Path, tmp_path: Path):
    """A folder of scene folders (nested), an HLS granule, a Sentinel-2 .SAFE and a STAC
    catalog, with junk beside them: each is found, stacked with its own DEM and mapped."""
    import shutil

    from kelpseg.synth.sensors import (
        landsat_item,
        write_hls_granule,
        write_sentinel2_safe,
        write_stac_catalog,
    )

    arch = tmp_path / "archive"
    l8 = write_landsat_scene(tmp_path / "l8", size=96, seed=2, area_seed=7)
    shutil.copytree(l8.folder, arch / "landsat" / "2021" / l8.folder.name)
    hls = write_hls_granule(tmp_path / "hls", size=96, seed=3, area_seed=8)
    shutil.copytree(hls.folder, arch / "hls" / hls.folder.name)
    s2 = write_sentinel2_safe(tmp_path / "s2", size=96, seed=4, area_seed=9)
    shutil.copytree(s2.path, arch / "s2" / s2.path.name)
    l9 = write_landsat_scene(tmp_path / "l9", size=96, seed=5, area_seed=10, sensor="LANDSAT_9")
    write_stac_catalog(arch / "stac", [landsat_item(l9)])
    (arch / "notes.txt").write_text("not a scene")
    rows = [
        (l8.meta.scene_id, l8.dem),
        (hls.granule_id, hls.dem),
        (s2.product_id, s2.dem),
        (l9.meta.scene_id, l9.dem),
    ]
    mapping = tmp_path / "dems.csv"
    mapping.write_text("scene,dem\n" + "".join(f"{sid},{dem}\n" for sid, dem in rows))
    maps = tmp_path / "maps"
    res = runner.invoke(
        app, ["map", "-m", str(ckpt), str(arch), "-o", str(maps), "--dem", str(mapping)]
    )
    assert res.exit_code == 0, res.output
    table = pd.read_csv(maps / "areas.csv", dtype={"footprint": str})
    assert sorted(table["scene_id"]) == sorted(sid for sid, _ in rows)
    assert set(table["sensor"]) == {"LANDSAT_8", "LANDSAT_9", "HLS_L30", "SENTINEL_2A"}
    assert (table["dem_coverage"] == 1.0).all()
    for sid, dem in rows:
        info = json.loads((maps / sid / "scene.json").read_text())
        assert info["dem"]["files"] == [str(dem)]
    fp = dict(zip(table["scene_id"], table["footprint"], strict=True))
    assert fp[hls.granule_id] == hls.tile and fp[s2.product_id] == s2.tile
    assert fp[l8.meta.scene_id] == l8.meta.scene_id.split("_")[2]


def test_two_map_processes_on_the_same_scenes_both_finish(ckpt: Path, tmp_path: Path) -> None:
    """Two real `kelpseg map` processes on one MAPS folder: neither crashes, every scene is
    mapped once (the other skips it while it is locked, or keeps it once done)."""
    import subprocess
    import sys

    from kelpseg.io import write_raster
    from tests.test_map import UTM
    from tests.test_sliced import _raster

    inputs = [
        write_raster(tmp_path / f"s{i}.tif", _raster(180, 200, seed=i), georef=UTM)
        for i in range(4)
    ]
    maps = tmp_path / "maps"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    args = [sys.executable, "-m", "kelpseg", "map", "-m", str(ckpt), *map(str, inputs)]
    procs = [
        subprocess.Popen([*args, "-o", str(maps)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
        assert "Traceback" not in out
    assert sorted(p.parent.name for p in maps.glob("*/scene.json")) == ["s0", "s1", "s2", "s3"]
    assert len(pd.read_csv(maps / "areas.csv")) == 4
    assert not list(maps.glob("*/.*.tmp*"))
