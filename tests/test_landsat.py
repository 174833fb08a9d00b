"""Stacking Landsat Collection 2 Level-2 scene folders into the model's 7-band input."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.infer.predict import load_model, predict_tiles
from kelpseg.io.landsat import (
    SceneError,
    is_scene_dir,
    parse_mtl,
    read_scene_meta,
    stack_scene,
)
from kelpseg.io.plausibility import check_band_order
from kelpseg.io.tiles import BAND_NAMES, read_tile
from kelpseg.synth.landsat import SyntheticScene, render_landsat, write_landsat_scene

SIZE = 160
NODATA = -32768
runner = CliRunner()


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _src(scene: SyntheticScene, name: str) -> np.ndarray:
    return _read(scene.folder / f"{scene.meta.scene_id}_{name}.TIF")[0]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[SyntheticScene, Path]]:
    """A Landsat-8 and a Landsat-5 scene, each stacked with its DEM."""
    out = {}
    for sensor, date in (("LANDSAT_8", dt.date(2021, 8, 15)), ("LANDSAT_5", dt.date(2005, 9, 1))):
        root = tmp_path_factory.mktemp(sensor)
        sc = write_landsat_scene(
            root, size=SIZE, sensor=sensor, date=date, seed=3, cloud_fraction=0.15
        )
        stacked = root / "stacked.tif"
        stack_scene(sc.folder, stacked, sc.dem)
        out[sensor] = (sc, stacked)
    return out


@pytest.mark.parametrize(
    ("sensor", "bands"), [("LANDSAT_8", (6, 5, 4, 3, 2)), ("LANDSAT_5", (5, 4, 3, 2, 1))]
)
def test_bands_are_the_sensors_sr_bands_in_model_order(scenes, sensor, bands) -> None:
    sc, stacked = scenes[sensor]
    arr = _read(stacked)
    assert arr.dtype == np.int16 and arr.shape == (7, SIZE, SIZE)
    fill = (_src(sc, "QA_PIXEL") & 1) != 0
    assert fill.any() and not fill.all()
    for i, n in enumerate(bands):
        sr = _src(sc, f"SR_B{n}")
        assert np.array_equal(arr[i][~fill], sr[~fill].astype(np.int16)), f"SR_B{n}"


@pytest.mark.parametrize("sensor", ["LANDSAT_8", "LANDSAT_5"])
def test_fill_is_missing_in_every_band_dem_included(scenes, sensor) -> None:
    sc, stacked = scenes[sensor]
    arr = _read(stacked)
    fill = (_src(sc, "QA_PIXEL") & 1) != 0
    assert (arr[:, fill] == NODATA).all()
    assert not (arr[:6, ~fill] == NODATA).any()
    with rasterio.open(stacked) as src:
        assert src.nodata == NODATA


@pytest.mark.parametrize("sensor", ["LANDSAT_8", "LANDSAT_5"])
def test_qa_band_is_one_where_a_chosen_bit_is_set(scenes, sensor, tmp_path: Path) -> None:
    sc, stacked = scenes[sensor]
    qa_pixel = _src(sc, "QA_PIXEL").astype(np.int64)
    valid = (qa_pixel & 1) == 0
    bit = {b: ((qa_pixel >> b) & 1) == 1 for b in range(8)}
    default = bit[1] | bit[2] | bit[3] | bit[4]
    assert np.array_equal(_read(stacked)[5][valid], default[valid].astype(np.int16))
    assert default[valid].any() and not default[valid].all()
    only_cloud = tmp_path / "cloud.tif"
    stack_scene(sc.folder, only_cloud, qa_bits=("fill", "cloud"))
    qa = _read(only_cloud)[5]
    assert np.array_equal(qa[valid], bit[3][valid].astype(np.int16))
    assert (qa[valid] == 1).sum() < (default[valid]).sum()
    high = tmp_path / "high.tif"
    stack_scene(sc.folder, high, qa_bits=("cloud_conf_high",))
    assert np.array_equal(_read(high)[5][valid], (((qa_pixel >> 8) & 3) == 3)[valid])


@pytest.mark.parametrize("sensor", ["LANDSAT_8", "LANDSAT_5"])
def test_dem_is_reprojected_onto_the_scene_grid(scenes, sensor) -> None:
    sc, stacked = scenes[sensor]
    date = dt.date(2021, 8, 15) if sensor == "LANDSAT_8" else dt.date(2005, 9, 1)
    truth = render_landsat(size=SIZE, sensor=sensor, date=date, seed=3, cloud_fraction=0.15).dem
    dem = _read(stacked)[6]
    both = (dem != NODATA) & (truth != NODATA)
    assert both.sum() > 0.3 * dem.size
    err = np.abs(dem[both].astype(np.int32) - truth[both])
    assert np.median(err) <= 1 and np.percentile(err, 95) <= 6
    assert ((dem[both] > 0) == (truth[both] > 0)).mean() > 0.98  # land stays land
    fill = (_src(sc, "QA_PIXEL") & 1) != 0
    offshore = (truth == NODATA) & ~fill  # far from any data: still missing after the warp
    assert offshore.any() and (dem[offshore] == NODATA).mean() > 0.9


def test_crs_transform_names_and_tags_are_kept(scenes) -> None:
    sc, stacked = scenes["LANDSAT_8"]
    with (
        rasterio.open(stacked) as dst,
        rasterio.open(sc.folder / f"{sc.meta.scene_id}_SR_B5.TIF") as src,
    ):
        assert dst.crs == src.crs and dst.transform == src.transform
        assert dst.descriptions == BAND_NAMES
        tags = dst.tags()
    assert tags["scene_id"] == sc.meta.scene_id
    assert (tags["sensor"], tags["date"]) == ("LANDSAT_8", "2021-08-15")
    assert not [p for p in stacked.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("sensor", ["LANDSAT_8", "LANDSAT_5"])
def test_stacked_scene_reads_as_a_tile_and_passes_the_band_order_check(scenes, sensor) -> None:
    _, stacked = scenes[sensor]
    raw = read_tile(stacked)
    assert raw.shape == (7, SIZE, SIZE)
    assert check_band_order(raw) is None


def test_small_windows_give_the_same_raster_with_bounded_memory(scenes, tmp_path: Path) -> None:
    sc, stacked = scenes["LANDSAT_8"]
    small = tmp_path / "small.tif"
    tracemalloc.start()
    stack_scene(sc.folder, small, sc.dem, block=32)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    whole = 7 * SIZE * SIZE * 2  # the stacked array alone, in bytes
    assert peak < whole / 3
    a, b = _read(stacked), _read(small)
    assert np.array_equal(a[:6], b[:6])
    # GDAL's warper fits its bilinear kernel to each chunk: centimetres, <= 1 m once rounded
    assert np.array_equal(a[6] == NODATA, b[6] == NODATA)
    assert np.abs(a[6].astype(np.int32) - b[6]).max() <= 1


def test_windowed_dem_warp_is_exact_at_scene_size(tmp_path: Path) -> None:
    """GDAL's default approximate transformer (0.125 px) moved the DEM's nodata edge between
    window sizes on a 600 px scene (38 pixels valid in one stack, missing in the other): the
    warp uses exact transforms, so only a rounding at x.5 m can differ."""
    sc = write_landsat_scene(tmp_path / "scene", size=600, seed=0)
    dems = []
    for block in (64, 4096):
        stack_scene(sc.folder, tmp_path / f"s{block}.tif", sc.dem, block=block)
        with rasterio.open(tmp_path / f"s{block}.tif") as src:
            dems.append(src.read(7).astype(np.int32))
    windowed, whole = dems
    assert np.array_equal(windowed == NODATA, whole == NODATA)
    assert np.abs(windowed - whole).max() <= 1
    assert (windowed != whole).mean() < 1e-3


def _copy(sc: SyntheticScene, dest: Path, rename=lambda n: n) -> Path:
    dest.mkdir(parents=True)
    for p in sc.folder.iterdir():
        shutil.copy(p, dest / rename(p.name))
    return dest


def test_file_names_match_case_insensitively(scenes, tmp_path: Path) -> None:
    sc, stacked = scenes["LANDSAT_5"]
    lower = _copy(sc, tmp_path / "lower", str.lower)
    assert {p.suffix for p in lower.iterdir()} == {".tif", ".txt"}
    assert is_scene_dir(lower)
    stack_scene(lower, tmp_path / "s.tif", sc.dem)
    assert np.array_equal(_read(tmp_path / "s.tif"), _read(stacked))


def test_mtl_json_and_xml_read_like_the_text(scenes, tmp_path: Path) -> None:
    sc, _ = scenes["LANDSAT_8"]
    pid = sc.meta.scene_id
    attrs = {"SPACECRAFT_ID": "LANDSAT_8", "DATE_ACQUIRED": "2021-08-15"}
    as_json = _copy(sc, tmp_path / "json")
    (as_json / f"{pid}_MTL.txt").unlink()
    doc = {
        "LANDSAT_METADATA_FILE": {
            "PRODUCT_CONTENTS": {"LANDSAT_PRODUCT_ID": pid},
            "IMAGE_ATTRIBUTES": attrs,
        }
    }
    (as_json / f"{pid}_MTL.json").write_text(json.dumps(doc))
    as_xml = _copy(sc, tmp_path / "xml")
    (as_xml / f"{pid}_MTL.txt").unlink()
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in attrs.items())
    (as_xml / f"{pid}_MTL.xml").write_text(
        f"<LANDSAT_METADATA_FILE><PRODUCT_CONTENTS><LANDSAT_PRODUCT_ID>{pid}"
        f"</LANDSAT_PRODUCT_ID></PRODUCT_CONTENTS><IMAGE_ATTRIBUTES>{inner}</IMAGE_ATTRIBUTES>"
        "</LANDSAT_METADATA_FILE>"
    )
    for folder in (as_json, as_xml):
        meta = read_scene_meta(folder)
        assert (meta.scene_id, meta.sensor, meta.date) == (pid, "LANDSAT_8", dt.date(2021, 8, 15))
    text = parse_mtl(sc.folder / f"{pid}_MTL.txt")
    assert text["LANDSAT_PRODUCT_ID"] == pid and text["WRS_PATH"].isdigit()


def _broken(sc: SyntheticScene, tmp_path: Path, name: str) -> tuple[Path, str]:
    folder = _copy(sc, tmp_path / name)
    return folder, sc.meta.scene_id


def test_each_scene_problem_is_one_line_naming_the_file(scenes, tmp_path: Path) -> None:
    sc, _ = scenes["LANDSAT_8"]
    out = tmp_path / "o.tif"

    folder, pid = _broken(sc, tmp_path, "band")
    (folder / f"{pid}_SR_B6.TIF").unlink()
    with pytest.raises(SceneError, match=f"{pid}_SR_B6.TIF missing"):
        stack_scene(folder, out)

    folder, pid = _broken(sc, tmp_path, "mtl")
    (folder / f"{pid}_MTL.txt").unlink()
    with pytest.raises(SceneError, match=r"no .*_MTL\.txt"):
        stack_scene(folder, out)

    folder, pid = _broken(sc, tmp_path, "garbled")
    (folder / f"{pid}_MTL.txt").unlink()
    (folder / f"{pid}_MTL.json").write_text("{not json")
    with pytest.raises(SceneError, match=r"_MTL.json: MTL file not parseable"):
        stack_scene(folder, out)

    folder, pid = _broken(sc, tmp_path, "sensor")
    mtl = folder / f"{pid}_MTL.txt"
    mtl.write_text(mtl.read_text().replace('"LANDSAT_8"', '"LANDSAT_3"'))
    with pytest.raises(SceneError, match="unknown sensor SPACECRAFT_ID=LANDSAT_3"):
        stack_scene(folder, out)

    folder, pid = _broken(sc, tmp_path, "grid")
    band = folder / f"{pid}_SR_B4.TIF"
    with rasterio.open(band, "r+") as src:
        src.transform = src.transform @ Affine.translation(3, 0)
    with pytest.raises(SceneError, match=f"{pid}_SR_B4.TIF: grid .* differs"):
        stack_scene(folder, out)

    folder, pid = _broken(sc, tmp_path, "dtype")
    band = folder / f"{pid}_SR_B3.TIF"
    with rasterio.open(band) as src:
        profile, data = src.profile, src.read()
    profile.update(dtype="float32", nodata=None)
    with rasterio.open(band, "w", **profile) as dst:
        dst.write(data.astype(np.float32))
    with pytest.raises(SceneError, match=f"{pid}_SR_B3.TIF: expected one uint16 band"):
        stack_scene(folder, out)

    junk = tmp_path / "dem.tif"
    junk.write_bytes(b"not a tiff")
    with pytest.raises(SceneError, match=r"dem\.tif: not a readable raster"):
        stack_scene(sc.folder, out, junk)
    bare = tmp_path / "bare.tif"
    with rasterio.open(sc.dem) as src:
        z = src.read(1)
    with rasterio.open(
        bare, "w", driver="GTiff", width=z.shape[1], height=z.shape[0], count=1, dtype="int16"
    ) as dst:
        dst.write(z, 1)
    with pytest.raises(SceneError, match=r"bare\.tif: the DEM has no CRS"):
        stack_scene(sc.folder, out, bare)

    with pytest.raises(SceneError, match="not a Landsat scene folder"):
        stack_scene(tmp_path, out)
    with pytest.raises(ValueError, match="unknown QA bit"):
        stack_scene(sc.folder, out, qa_bits=("cloud", "clouds"))
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_is_scene_dir(scenes, tmp_path: Path) -> None:
    sc, stacked = scenes["LANDSAT_8"]
    assert is_scene_dir(sc.folder)
    assert not is_scene_dir(sc.folder.parent) and not is_scene_dir(tmp_path)
    assert not is_scene_dir(stacked)


def test_stack_command(scenes, tmp_path: Path) -> None:
    sc, stacked = scenes["LANDSAT_5"]
    out = tmp_path / "cli.tif"
    res = runner.invoke(app, ["stack", str(sc.folder), "--dem", str(sc.dem), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert sc.meta.scene_id in res.output and np.array_equal(_read(out), _read(stacked))
    res = runner.invoke(app, ["stack", str(tmp_path), "-o", str(tmp_path / "x.tif")])
    assert res.exit_code == 1 and "no Landsat scene folder, HLS granule" in res.output
    assert "only 7-band rasters" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["stack", str(sc.folder), "-o", str(out), "--qa-bits", "cloud,nope"])
    assert res.exit_code == 1 and "unknown QA bit" in res.output


def test_synth_landsat_scene_command(tmp_path: Path) -> None:
    out = tmp_path / "scenes"
    args = ["synth", "--landsat-scene", "-o", str(out), "--size", "96", "--acquisitions", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    folders = [p for p in out.iterdir() if is_scene_dir(p)]
    assert len(folders) == 2 and len(list(out.glob("DEM_*.tif"))) == 1
    res = runner.invoke(app, [*args[:4], "--size", "96", "--sensor", "LANDSAT_5"])
    assert res.exit_code == 0, res.output
    assert any(p.name.startswith("LT05_") for p in out.iterdir())
    res = runner.invoke(app, [*args[:4], "--size", "96", "--sensor", "LANDSAT_5"])
    assert res.exit_code == 1 and "--overwrite" in res.output


def test_a_model_trained_on_synth_tiles_finds_the_kelp_of_a_stacked_scene(
    trained, tmp_path: Path
) -> None:
    """The scene generator renders with the tile generator's spectra: the session's tiny model
    (trained on 64 px `kelpseg synth` tiles) maps the kelp of a stacked 256 px scene."""
    sc = write_landsat_scene(tmp_path, size=256, seed=1, kelp_abundance=0.8)
    stacked = tmp_path / "stacked.tif"
    stack_scene(sc.folder, stacked, sc.dem)
    predict_tiles(load_model(trained.checkpoint), [(sc.meta.scene_id, stacked)], tmp_path / "p")
    pred = _read(tmp_path / "p" / f"{sc.meta.scene_id}_kelp.tif")[0]
    truth = _read(sc.truth)[0]
    seen = truth != 255
    p, t = (pred == 1) & seen, (truth == 1) & seen
    assert t.sum() > 500
    assert 2 * (p & t).sum() / (p.sum() + t.sum()) > 0.5  # measured 0.85
