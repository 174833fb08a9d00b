"""Footprint ids: WRS-2 path/row from Landsat ids, MGRS tiles from HLS and Sentinel-2 ids,
else a stable hash of the grid."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from kelpseg.geo.footprint import footprint_id, named_footprint, raster_footprint
from kelpseg.io.raster import Georef, write_raster

UTM = Affine(30, 0, 400_020, 0, -30, 3_800_010)


@pytest.mark.parametrize(
    ("scene_id", "expected"),
    [
        ("LC08_L2SP_042036_20210815_20210826_02_T1", "042036"),
        ("LC09_L2SP_042036_20220815_20220826_02_T1", "042036"),
        ("LE07_L2SP_043035_20030815_20200915_02_T2", "043035"),
        ("LT05_L2SP_041037_19900101_20200915_02_T1", "041037"),
        ("LT04_L1TP_041037_19880101_20200917_02_T1", "041037"),
        ("LC08_L1TP_042036_20210815_20210826_02_RT", "042036"),
        ("lc08_l2sp_042036_20210815_20210826_02_t1", "042036"),
        ("LC08_L2SP_042036_20210815_20210826_02_T1_stack", "042036"),  # a suffix after it
        ("LC80420362021227LGN00", "042036"),  # the pre-collection scene id
        ("HLS.L30.T11SKU.2021227T183919.v2.0", "T11SKU"),
        ("HLS.S30.T11SKU.2021229T183921.v2.0", "T11SKU"),
        ("S2A_MSIL2A_20210815T183919_N0301_R027_T11SKU_20210815T213425", "T11SKU"),
        ("S2B_MSIL2A_20210815T183919_N0301_R027_T11SKU_20210815T213425.SAFE", "T11SKU"),
        ("/data/S2B_MSIL2A_20210815T183919_N0301_R027_T10SEG_20210815T213425.SAFE", "T10SEG"),
    ],
)
def test_named_footprints(scene_id, expected):
    assert footprint_id(scene_id) == expected
    # the id wins over the grid
    assert footprint_id(scene_id, "EPSG:32611", UTM, (20, 20)) == expected


@pytest.mark.parametrize(
    "scene_id",
    ["demo_scene", "LC08_A", "LC08_L2SP_04203_20210815_20210826_02_T1", "HLS.L30.11SKU", "", None],
)
def test_other_ids_name_no_footprint(scene_id):
    assert named_footprint(scene_id) is None
    assert footprint_id(scene_id).startswith("grid:")


def test_grid_ids_are_stable_and_tell_grids_apart():
    base = footprint_id("x", "EPSG:32611", UTM, (20, 20))
    assert base.startswith("grid:") and len(base) == len("grid:") + 10
    int(base[5:], 16)  # hex
    # the same grid however the CRS and transform are given, the scene's name aside
    same = [
        footprint_id("y", CRS.from_epsg(32611), tuple(UTM)[:6], [20, 20]),
        footprint_id(None, CRS.from_epsg(32611).to_wkt(), UTM, (20, 20)),
        footprint_id(None, "EPSG:32611", UTM * Affine.translation(1e-9, 0), (20, 20)),
    ]
    assert set(same) == {base}
    different = [
        footprint_id(None, "EPSG:32610", UTM, (20, 20)),
        footprint_id(None, "EPSG:32611", UTM * Affine.translation(1, 0), (20, 20)),
        footprint_id(None, "EPSG:32611", UTM, (20, 21)),
        footprint_id(None, None, UTM, (20, 20)),
    ]
    assert len({base, *different}) == 5
    # None parts still give a stable id
    assert footprint_id(None) == footprint_id(None, None, None, None) == footprint_id("")
    assert footprint_id(None, None, None, (3, 4)) == footprint_id(None, None, None, (3, 4))


def test_a_rasters_footprint_from_its_header(tmp_path):
    path = write_raster(
        tmp_path / "k.tif", np.zeros((20, 30), np.uint8), georef=Georef(CRS.from_epsg(32611), UTM)
    )
    assert raster_footprint(path) == footprint_id(None, "EPSG:32611", UTM, (20, 30))
    assert raster_footprint(path, "HLS.S30.T11SKU.2021229T183921.v2.0") == "T11SKU"
