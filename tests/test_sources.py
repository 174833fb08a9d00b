"""find_sources over nested folders of every input kind, and stack_source for each."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from kelpseg.io.landsat import stack_scene
from kelpseg.io.raster import write_raster
from kelpseg.io.sources import Source, find_sources, stack_source
from kelpseg.io.tiles import BAND_NAMES, read_tile
from kelpseg.synth.landsat import write_landsat_scene
from kelpseg.synth.sensors import (
    item_json,
    landsat_item,
    write_hls_granule,
    write_sentinel2_safe,
    write_stac_catalog,
)

SIZE = 64
NODATA = -32768


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One of each kind, nested by sensor and year, with the generators' DEMs, truth files
    and some junk beside them."""
    root = tmp_path_factory.mktemp("tree") / "archive"
    ls = write_landsat_scene(root / "landsat" / "2021", size=SIZE, seed=1)
    elsewhere = write_landsat_scene(root.parent / "outside", size=SIZE, seed=8,
                                    date=dt.date(2022, 7, 1), sensor="LANDSAT_9")  # fmt: skip
    hls_dir = root / "hls" / "2021" / "T11S"
    l30 = write_hls_granule(hls_dir, product="L30", size=SIZE, seed=2)
    s30 = write_hls_granule(hls_dir, product="S30", size=SIZE, seed=3, date=dt.date(2021, 9, 1))
    for g in (l30, s30):  # the files of both granules side by side, as downloaded
        for f in g.folder.iterdir():
            f.rename(hls_dir / f.name)
        g.folder.rmdir()
    safe = write_sentinel2_safe(root / "s2" / "2021" / "08", size=SIZE, seed=4)
    # a catalog of the scene in this tree (found twice: mapped once) ...
    write_stac_catalog(root / "stac", [landsat_item(ls)])
    # ... and an item of a scene that lies outside it
    item = item_json(landsat_item(elsewhere), root / "stac" / "extra" / "l9.json")
    stacked = root / "rasters" / "stacked.tif"
    stack_scene(ls.folder, stacked)
    raster = root / "rasters" / "renamed_copy.tif"
    with rasterio.open(stacked) as src:
        data, profile = src.read(), src.profile
    with rasterio.open(raster, "w", **profile) as dst:
        dst.write(data)  # no tags: id from the file name
    junk = root / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not an input")
    (junk / "scene.json").write_text(json.dumps({"scene_id": "x", "kelp_ha": 3}))
    write_raster(junk / "one_band.tif", np.zeros((8, 8), np.uint8))
    write_raster(junk / ".hidden.tif", np.zeros((7, 8, 8), np.int16))
    (junk / "broken.tif").write_bytes(b"II*\0garbage")
    return {
        "root": root, "landsat": ls, "elsewhere": elsewhere, "l30": l30, "s30": s30,
        "safe": safe, "item": item, "stacked": stacked, "raster": raster,
    }  # fmt: skip


def test_a_nested_folder_gives_one_source_per_scene(tree) -> None:
    sources, errors = find_sources([tree["root"]])
    assert errors == []
    got = {(s.kind, s.scene_id, s.sensor, s.date, s.footprint) for s in sources}
    ls, el, l30, s30, safe = (tree[k] for k in ("landsat", "elsewhere", "l30", "s30", "safe"))
    assert got == {
        ("landsat", ls.meta.scene_id, "LANDSAT_8", ls.meta.date, ls.meta.scene_id[10:16]),
        ("stac", el.meta.scene_id, "LANDSAT_9", dt.date(2022, 7, 1), el.meta.scene_id[10:16]),
        ("hls", l30.granule_id, "HLS_L30", dt.date(2021, 8, 15), l30.tile),
        ("hls", s30.granule_id, "HLS_S30", dt.date(2021, 9, 1), s30.tile),
        ("sentinel2", safe.product_id, "SENTINEL_2A", dt.date(2021, 8, 15), safe.tile),
        ("raster", ls.meta.scene_id, "LANDSAT_8", ls.meta.date, None),  # its tags
        ("raster", "renamed_copy", "", None, None),
    }
    # the catalog's item for the scene folder in the tree is the folder, found once
    assert sum(s.scene_id == ls.meta.scene_id and s.kind != "raster" for s in sources) == 1
    # the same input twice is one source
    again, _ = find_sources([tree["landsat"].folder, tree["landsat"].folder, tree["root"]])
    assert len(again) == len(sources)


def test_every_kind_stacks_into_the_models_input(tree, tmp_path: Path) -> None:
    sources, _ = find_sources([tree["root"]])
    for s in sources:
        if s.kind == "raster":
            with pytest.raises(ValueError, match="needs no stacking"):
                stack_source(s, tmp_path / "x.tif")
            continue
        out = tmp_path / f"{s.scene_id}.tif"
        meta = stack_source(s, out, block=48)
        assert (meta.scene_id, meta.sensor, meta.date) == (s.scene_id, s.sensor, s.date)
        tile = read_tile(out)
        assert tile.shape == (len(BAND_NAMES), SIZE, SIZE) and tile.dtype == np.int16
        with rasterio.open(out) as src:
            assert src.nodata == NODATA and src.res == (30.0, 30.0) and src.crs is not None
            tags = src.tags()
            assert [src.descriptions[i] for i in range(7)] == list(BAND_NAMES)
        assert tags["scene_id"] == s.scene_id and tags["sensor"] == s.sensor
        assert tags["date"] == s.date.isoformat() and tags["footprint"] == s.footprint
        assert (tile[6] == NODATA).all()  # no DEM given
        assert set(np.unique(tile[5])) <= {0, 1, NODATA}


def test_broken_inputs_are_one_error_each_and_the_rest_is_found(tree, tmp_path: Path) -> None:
    shutil.copytree(tree["root"].parent, tmp_path / "copy")  # the archive and "outside"
    root = tmp_path / "copy" / "archive"
    # a .SAFE without its metadata
    safe = next(root.rglob("*.SAFE"))
    (safe / "MTD_MSIL2A.xml").unlink()
    # an HLS granule without its SWIR1 band
    l30 = tree["l30"].granule_id
    (root / "hls" / "2021" / "T11S" / f"{l30}.B06.tif").unlink()
    # a scene folder without its NIR band (the catalog's item for it then lacks a file too)
    ls = next(root.rglob("LC08_*_T1"))
    b5 = next(ls.glob("*_SR_B5.TIF"))
    b5.unlink()
    # a STAC item missing an asset, and one pointing at a remote file
    l9 = root / "stac" / "extra" / "l9.json"
    item = json.loads(l9.read_text())
    remote = json.loads(l9.read_text())
    item["assets"].pop("nir08")
    l9.write_text(json.dumps(item))
    remote["id"] = "remote"
    remote["assets"]["qa_pixel"]["href"] = "https://example.org/x_QA_PIXEL.TIF"
    (root / "stac" / "extra" / "remote.json").write_text(json.dumps(remote))
    sources, errors = find_sources([root])
    named = sorted(str(e.path.relative_to(root)) for e in errors)
    assert named == sorted([
        str((safe / "MTD_MSIL2A.xml").relative_to(root)),
        f"hls/2021/T11S/{l30}.B06.tif",
        str(ls.relative_to(root)),
        str(b5.relative_to(root)),
        "stac/extra/l9.json",
        "stac/extra/remote.json",
    ])  # fmt: skip
    assert all(e.problem for e in errors)
    assert "remote" in next(e for e in errors if e.path.name == "remote.json").problem
    # the S30 granule and the two rasters are still there
    assert sorted((s.kind, s.scene_id) for s in sources) == sorted([
        ("hls", tree["s30"].granule_id),
        ("raster", tree["landsat"].meta.scene_id),
        ("raster", "renamed_copy"),
    ])  # fmt: skip


def test_named_inputs_that_are_nothing_kelpseg_reads(tree, tmp_path: Path) -> None:
    junk = tree["root"] / "junk"
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = [tmp_path / "missing", junk / "notes.txt", junk / "one_band.tif", empty]
    sources, errors = find_sources(paths)
    assert sources == []
    assert [e.path for e in errors] == paths
    assert "not found" in errors[0].problem
    assert "not a Landsat scene" in errors[1].problem
    assert "1 band(s)" in errors[2].problem
    assert "no Landsat scene" in errors[3].problem
    # a folder of junk alone says so, rather than nothing
    _, errs = find_sources([junk])
    assert len(errs) == 1 and errs[0].path == junk


def test_named_files_of_a_product_find_the_product(tree) -> None:
    l30, safe = tree["l30"], tree["safe"]
    hls_dir = tree["root"] / "hls" / "2021" / "T11S"
    sources, errors = find_sources(
        [hls_dir / f"{l30.granule_id}.Fmask.tif", safe.path / "MTD_MSIL2A.xml", tree["stacked"]]
    )
    assert errors == []
    assert [s.kind for s in sources] == ["hls", "sentinel2", "raster"]
    assert isinstance(sources[0], Source) and sources[0].scene_id == l30.granule_id
