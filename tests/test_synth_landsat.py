"""Synthetic Landsat Collection 2 Level-2 scenes: files, QA bits, DEM, truth and series."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds

from kelpseg.io.landsat import read_scene_meta
from kelpseg.synth.landsat import (
    SyntheticScene,
    render_landsat,
    write_landsat_scene,
    write_landsat_series,
)

SIZE = 192


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _band(scene: SyntheticScene, name: str) -> Path:
    return scene.folder / f"{scene.meta.scene_id}_{name}.TIF"


@pytest.fixture(scope="module")
def l8(tmp_path_factory: pytest.TempPathFactory) -> SyntheticScene:
    out = tmp_path_factory.mktemp("l8")
    return write_landsat_scene(out, size=SIZE, seed=4, cloud_fraction=0.2, kelp_abundance=0.9)


@pytest.fixture(scope="module")
def l7(tmp_path_factory: pytest.TempPathFactory) -> SyntheticScene:
    out = tmp_path_factory.mktemp("l7")
    return write_landsat_scene(
        out, size=(SIZE, SIZE + 40), sensor="LANDSAT_7", date=dt.date(2009, 8, 1), seed=2
    )


def test_folder_holds_the_collection_2_files_of_each_sensor(
    l8: SyntheticScene, l7: SyntheticScene
) -> None:
    pid8, pid7 = l8.meta.scene_id, l7.meta.scene_id
    assert pid8.startswith("LC08_L2SP_") and pid8.endswith("_02_T1")
    assert pid7.startswith("LE07_L2SP_") and "_20090801_" in pid7
    names8 = {p.name.removeprefix(pid8 + "_") for p in l8.folder.iterdir()}
    names7 = {p.name.removeprefix(pid7 + "_") for p in l7.folder.iterdir()}
    qa = {"QA_PIXEL.TIF", "QA_RADSAT.TIF", "MTL.txt"}
    assert names8 == {f"SR_B{n}.TIF" for n in range(1, 8)} | qa
    assert names7 == {f"SR_B{n}.TIF" for n in (1, 2, 3, 4, 5, 7)} | qa
    with rasterio.open(_band(l7, "SR_B4")) as src:
        assert src.dtypes[0] == "uint16" and src.nodata == 0
        assert (src.height, src.width) == (SIZE, SIZE + 40)
        assert src.crs.to_epsg() == 32611 and src.res == (30.0, 30.0)
    meta = read_scene_meta(l7.folder)
    assert (meta.sensor, meta.date, meta.scene_id) == ("LANDSAT_7", dt.date(2009, 8, 1), pid7)


def test_band_numbers_follow_the_sensor(l8: SyntheticScene, l7: SyntheticScene) -> None:
    """Physics per band: over clear water NIR/SWIR1 are darker than Green/Blue."""
    for scene, (swir, nir, green, blue) in ((l8, (6, 5, 3, 2)), (l7, (5, 4, 2, 1))):
        qa = _read(_band(scene, "QA_PIXEL"))
        water = (qa & (1 << 7)) != 0
        med = {
            n: np.median(_read(_band(scene, f"SR_B{n}"))[water]) for n in (swir, nir, green, blue)
        }
        assert max(med[swir], med[nir]) < min(med[green], med[blue])


def test_qa_pixel_bits_say_what_the_pixels_are(l8: SyntheticScene, l7: SyntheticScene) -> None:
    for scene in (l8, l7):
        qa = _read(_band(scene, "QA_PIXEL"))
        blue = _read(_band(scene, "SR_B2" if scene is l8 else "SR_B1"))
        truth = _read(scene.truth)
        fill = (qa & 1) != 0
        assert (qa[fill] == 1).all()  # fill pixels carry the fill bit only
        assert np.array_equal(fill, blue == 0) and np.array_equal(fill, truth == 255)
        assert fill.any()  # the scene edge
        cloud = (qa & (1 << 3)) != 0
        assert cloud.any() and (blue[cloud] >= 15_000).all()  # opaque cloud is bright
        assert (((qa[cloud] >> 8) & 3) == 3).all()  # high cloud confidence
        clear = (qa & (1 << 6)) != 0
        assert not (clear & (cloud | fill | ((qa & 2) != 0))).any()
        water = (qa & (1 << 7)) != 0
        assert np.median(blue[water & clear]) < 12_000
        assert not (truth[cloud] == 1).any()  # no labelled kelp under opaque cloud
    cirrus_conf_8 = (_read(_band(l8, "QA_PIXEL")) >> 14) & 3
    qa7 = _read(_band(l7, "QA_PIXEL"))
    assert (cirrus_conf_8[_read(l8.truth) != 255] >= 1).all()  # OLI: cirrus bits in use
    assert not (qa7 & ((1 << 2) | (3 << 14))).any()  # ETM+ has no cirrus band


def test_dem_is_geographic_on_its_own_grid_and_covers_the_scene(l8: SyntheticScene) -> None:
    with rasterio.open(l8.dem) as dem, rasterio.open(_band(l8, "SR_B5")) as sr:
        assert dem.crs.to_epsg() == 4326 and dem.nodata == -32768
        assert dem.res[0] == pytest.approx(1 / 3600)
        west, south, east, north = transform_bounds(sr.crs, dem.crs, *sr.bounds)
        assert dem.bounds.left < west and dem.bounds.right > east
        assert dem.bounds.bottom < south and dem.bounds.top > north
        z = dem.read(1)
    assert (z == -32768).any() and (z == 0).any() and (z > 0).any()  # offshore, coast, land


def test_truth_area_matches_the_truth_raster(l8: SyntheticScene) -> None:
    truth = _read(l8.truth)
    assert set(np.unique(truth)) <= {0, 1, 255}
    info = json.loads((l8.truth.parent / f"{l8.meta.scene_id}_truth.json").read_text())
    assert l8.kelp_ha == pytest.approx((truth == 1).sum() * 0.09) == info["kelp_ha"]
    assert l8.kelp_ha > 0 and info["kelp_clear_ha"] <= info["kelp_ha"]
    assert 0 < info["water_clear_ha"] <= info["water_ha"]
    with rasterio.open(l8.truth) as t, rasterio.open(_band(l8, "SR_B5")) as sr:
        assert (t.crs, t.transform, t.nodata) == (sr.crs, sr.transform, 255)


def test_landsat_7_after_2003_has_slc_off_gaps(tmp_path: Path) -> None:
    r = render_landsat(size=128, sensor="LANDSAT_7", date=dt.date(2010, 7, 1), seed=1)
    s = render_landsat(size=128, sensor="LANDSAT_7", date=dt.date(2001, 7, 1), seed=1)
    assert r.truth_fields["slc_off"] and not s.truth_fields["slc_off"]
    assert (r.sr[3] == 0).mean() > (s.sr[3] == 0).mean() + 0.05


def test_same_seed_same_files(tmp_path: Path) -> None:
    a = write_landsat_scene(tmp_path / "a", size=96, seed=7)
    b = write_landsat_scene(tmp_path / "b", size=96, seed=7)
    for name in ("SR_B4", "QA_PIXEL"):
        ha, hb = (hashlib.sha256(_band(s, name).read_bytes()).hexdigest() for s in (a, b))
        assert ha == hb
    with pytest.raises(FileExistsError):
        write_landsat_scene(tmp_path / "a", size=96, seed=7)
    write_landsat_scene(tmp_path / "a", size=96, seed=7, overwrite=True)


def test_series_keeps_the_area_and_varies_the_date(tmp_path: Path) -> None:
    scenes = write_landsat_series(tmp_path, acquisitions=4, size=128, seed=1)
    assert len({s.meta.scene_id for s in scenes}) == 4
    assert len({s.dem for s in scenes}) == 1  # one area, one DEM
    assert [s.meta.date for s in scenes] == sorted(s.meta.date for s in scenes)
    assert len({s.kelp_ha for s in scenes}) > 1  # kelp extent varies by date
    grids = set()
    kelp = []
    for s in scenes:
        with rasterio.open(s.truth) as t:
            grids.add((t.crs.to_wkt(), t.transform))
            kelp.append(t.read(1) == 1)
    assert len(grids) == 1
    for i in range(len(kelp)):  # the same beds: a smaller extent lies mostly in a larger one
        for j in range(i + 1, len(kelp)):
            small = min(kelp[i].sum(), kelp[j].sum())
            if small >= 20:
                assert (kelp[i] & kelp[j]).sum() >= 0.5 * small
    other = write_landsat_scene(tmp_path / "other", size=128, seed=1, area_seed=99)
    assert other.dem.name != scenes[0].dem.name


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sensor"):
        render_landsat(size=96, sensor="SENTINEL_2")
    with pytest.raises(ValueError, match="projected"):
        render_landsat(size=96, crs="EPSG:4326")
    with pytest.raises(ValueError, match="64"):
        render_landsat(size=32)
