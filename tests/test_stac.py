"""Local STAC Items, Collections and Catalogs: found, followed and stacked like their files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from kelpseg.io.hls import read_granule, stack_hls
from kelpseg.io.landsat import stack_scene
from kelpseg.io.sentinel2 import stack_safe
from kelpseg.io.sources import find_sources, stack_source
from kelpseg.io.stac import StacError, is_remote, read_stac, stac_type
from kelpseg.synth.landsat import SyntheticScene, write_landsat_scene
from kelpseg.synth.sensors import (
    SyntheticGranule,
    SyntheticSafe,
    hls_item,
    item_json,
    landsat_item,
    sentinel2_item,
    write_hls_granule,
    write_sentinel2_safe,
    write_stac_catalog,
)

SIZE = 64


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A Landsat scene, an HLS granule and a .SAFE, each stacked by its own reader."""
    root = tmp_path_factory.mktemp("stacdata")
    sc = write_landsat_scene(root / "landsat", size=SIZE, seed=2, cloud_fraction=0.2)
    hls = write_hls_granule(root / "hls", product="S30", size=SIZE, seed=3)
    s2 = write_sentinel2_safe(root / "s2", size=SIZE, seed=4, baseline="04.00")
    ref = {
        "landsat": stack_scene(sc.folder, root / "ref_landsat.tif") and root / "ref_landsat.tif",
        "hls": stack_hls(read_granule(hls.folder), root / "ref_hls.tif") and root / "ref_hls.tif",
        "s2": stack_safe(s2.path, root / "ref_s2.tif") and root / "ref_s2.tif",
    }
    return {"root": root, "landsat": sc, "hls": hls, "s2": s2, "ref": ref}


def _stack_one(item_path: Path, out: Path) -> tuple[object, np.ndarray]:
    sources, errors = find_sources([item_path])
    assert errors == [] and len(sources) == 1
    stack_source(sources[0], out, block=32)
    return sources[0], _read(out)


@pytest.mark.parametrize("keys", ["c2", "files"])
def test_landsat_item_stacks_like_its_scene_folder(data, keys, tmp_path: Path) -> None:
    sc: SyntheticScene = data["landsat"]  # type: ignore[assignment]
    item = item_json(landsat_item(sc, keys=keys), tmp_path / "items" / "item.json")
    src, stacked = _stack_one(item, tmp_path / "out.tif")
    assert src.kind == "stac" and src.path == item
    assert src.scene_id == sc.meta.scene_id  # the product id, from the file names
    assert (src.sensor, src.date) == ("LANDSAT_8", sc.meta.date)
    assert src.footprint == sc.meta.scene_id.split("_")[2]  # landsat:wrs_path + wrs_row
    assert np.array_equal(stacked, _read(data["ref"]["landsat"]))  # type: ignore[index]
    with rasterio.open(tmp_path / "out.tif") as st:
        assert st.tags()["stac_item"] == str(item) and st.tags()["kind"] == "stac"


def test_common_names_alone_say_which_asset_is_which(data, tmp_path: Path) -> None:
    """Assets keyed by anything, with only eo:bands common names, and absolute hrefs."""
    sc: SyntheticScene = data["landsat"]  # type: ignore[assignment]
    item = landsat_item(sc)
    for i, key in enumerate(list(item.assets)):
        item.assets[f"asset{i}"] = item.assets.pop(key)
    path = tmp_path / "abs.json"
    d = item.to_dict(include_self_link=False)
    d["assets"]["asset7"]["eo:bands"] = [{"name": "QA_PIXEL"}]
    d["assets"]["qa_pixel"] = d["assets"].pop("asset7")  # QA has no common name: its key
    path.write_text(json.dumps(d))
    assert all(Path(a["href"]).is_absolute() for a in d["assets"].values())
    _, stacked = _stack_one(path, tmp_path / "out.tif")
    assert np.array_equal(stacked, _read(data["ref"]["landsat"]))  # type: ignore[index]


def test_catalog_collections_and_items_are_followed(data, tmp_path: Path) -> None:
    hls: SyntheticGranule = data["hls"]  # type: ignore[assignment]
    s2: SyntheticSafe = data["s2"]  # type: ignore[assignment]
    items = [landsat_item(data["landsat"]), hls_item(hls), sentinel2_item(s2)]  # type: ignore[arg-type]
    cat = write_stac_catalog(tmp_path / "catalog", items)
    assert stac_type(cat) == "Catalog"
    assert all(
        not Path(link["href"]).is_absolute() for link in json.loads(cat.read_text())["links"]
    )
    scenes, errors = read_stac(cat)
    assert errors == []
    assert sorted(s.kind for s in scenes) == ["hls", "landsat", "sentinel2"]
    sources, errors = find_sources([cat])
    assert errors == [] and len(sources) == 3
    by_kind = {type(s.product).__name__: s for s in sources}
    assert by_kind["HlsGranule"].footprint == hls.tile
    assert by_kind["S2Files"].footprint == s2.tile
    assert by_kind["S2Files"].scene_id == s2.product_id
    for name, ref in (("HlsGranule", "hls"), ("S2Files", "s2")):
        out = tmp_path / f"{ref}.tif"
        stack_source(by_kind[name], out)
        assert np.array_equal(_read(out), _read(data["ref"][ref])), name  # type: ignore[index]


def test_sentinel2_item_scale_and_offset_from_raster_bands(data, tmp_path: Path) -> None:
    s2: SyntheticSafe = data["s2"]  # type: ignore[assignment]
    item = sentinel2_item(s2, raster_bands=True)
    del item.properties["s2:processing_baseline"]
    path = item_json(item, tmp_path / "s2.json")
    src, stacked = _stack_one(path, tmp_path / "out.tif")
    assert src.product.offset == (-0.1,) * 5  # type: ignore[union-attr]
    assert np.array_equal(stacked, _read(data["ref"]["s2"]))  # type: ignore[index]
    # neither raster:bands nor a baseline: no way to know the offset
    bare = sentinel2_item(s2)
    del bare.properties["s2:processing_baseline"]
    sources, errors = find_sources([item_json(bare, tmp_path / "bare.json")])
    assert sources == [] and "s2:processing_baseline" in errors[0].problem


def test_an_item_missing_an_asset_is_one_error_and_the_rest_is_found(data, tmp_path: Path) -> None:
    sc: SyntheticScene = data["landsat"]  # type: ignore[assignment]
    broken = landsat_item(sc)
    broken.id = "broken"
    del broken.assets["swir16"]
    hls_it = hls_item(data["hls"])  # type: ignore[arg-type]
    cat = write_stac_catalog(tmp_path / "cat", [broken, hls_it])
    sources, errors = find_sources([cat])
    assert [s.scene_id for s in sources] == [hls_it.id]
    assert len(errors) == 1 and isinstance(errors[0], StacError)
    assert errors[0].path.name == "broken.json" and "no swir1 asset" in errors[0].problem
    # an asset whose local file is gone names that file
    gone = landsat_item(sc)
    gone.assets["red"].href = str(tmp_path / "nowhere" / "red.TIF")
    _, errors = find_sources([item_json(gone, tmp_path / "gone.json", relative=False)])
    assert errors[0].path == tmp_path / "nowhere" / "red.TIF"
    assert "not found" in errors[0].problem


def test_remote_hrefs_are_refused_at_once(data, tmp_path: Path) -> None:
    sc: SyntheticScene = data["landsat"]  # type: ignore[assignment]
    item = landsat_item(sc)
    item.assets["red"].href = "https://landsatlook.usgs.gov/data/collection02/x_SR_B4.TIF"
    item.assets["thumbnail"] = type(item.assets["red"])(href="https://example.org/thumb.png")
    path = tmp_path / "remote.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    t = time.perf_counter()
    sources, errors = find_sources([path])
    assert time.perf_counter() - t < 2.0  # no network attempt
    assert sources == [] and len(errors) == 1 and errors[0].path == path
    assert "remote" in errors[0].problem and "local files" in errors[0].problem
    # only needed assets count: a remote thumbnail alone is fine
    ok = landsat_item(sc)
    ok.assets["thumbnail"] = type(ok.assets["red"])(href="https://example.org/thumb.png")
    sources, errors = find_sources([item_json(ok, tmp_path / "ok.json")])
    assert errors == [] and len(sources) == 1
    # a remote child link of a catalog
    cat = {"type": "Catalog", "stac_version": "1.0.0", "id": "c", "description": "d",
           "links": [{"rel": "child", "href": "https://example.org/catalog.json"},
                     {"rel": "item", "href": "./ok.json"}]}  # fmt: skip
    (tmp_path / "catalog.json").write_text(json.dumps(cat))
    sources, errors = find_sources([tmp_path / "catalog.json"])
    assert len(sources) == 1 and len(errors) == 1 and "remote" in errors[0].problem
    assert is_remote("s3://bucket/x.tif") and is_remote("/vsicurl/https://x")
    assert not is_remote("file:///data/x.tif") and not is_remote("../x.tif")


def test_json_that_is_not_stac_is_not_an_item(tmp_path: Path) -> None:
    (tmp_path / "truth.json").write_text(json.dumps({"kelp_ha": 1.0, "type": "Feature"}))
    (tmp_path / "bad.json").write_text("{not json")
    assert stac_type(tmp_path / "truth.json") is None
    assert stac_type(tmp_path / "bad.json") is None
    sources, errors = find_sources([tmp_path / "truth.json"])  # named: said
    assert sources == [] and "not a STAC" in errors[0].problem
