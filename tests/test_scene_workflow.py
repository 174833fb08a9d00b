"""Issue 9 end to end: synthetic scene folders -> `kelpseg map` -> areas -> `kelpseg timeseries`.

Uses the session's trained run (64 px tiles) so that the mapped kelp can be set against the
generator's truth.
"""

from __future__ import annotations

import json

import geopandas as gpd
import pandas as pd
import pyogrio
import pytest
import rasterio
from shapely.geometry import box
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.scene_demo import map_demo_scene
from kelpseg.synth.landsat import write_landsat_series


def test_demo_scene_maps_kelp_near_the_truth(trained, tmp_path):
    s = map_demo_scene(trained.out, tmp_path, size=192)
    assert s["kelp_ha_true"] > 0
    assert s["dice"] > 0.4
    assert 0.5 < s["kelp_ha_mapped"] / s["kelp_ha_true"] < 2.0
    assert json.loads((tmp_path / "maps" / "demo_scene.json").read_text())["dice"] == s["dice"]


def test_series_map_and_timeseries(trained, tmp_path):
    scenes = write_landsat_series(tmp_path / "scenes", acquisitions=3, size=160, seed=2)
    dems = {s.dem for s in scenes}
    assert len(dems) == 1  # one area: one DEM
    maps = tmp_path / "maps"
    args = ["map", "--run", str(trained.out), *[str(s.folder) for s in scenes]]
    res = CliRunner().invoke(app, [*args, "--dem", str(dems.pop()), "-o", str(maps)])
    assert res.exit_code == 0, res.output
    areas = pd.read_csv(maps / "areas.csv")
    assert sorted(areas["scene_id"]) == sorted(s.meta.scene_id for s in scenes)
    for s in scenes:
        folder = maps / s.meta.scene_id
        with (
            rasterio.open(folder / f"{s.meta.scene_id}_kelp.tif") as src,
            rasterio.open(s.truth) as truth,
        ):
            assert src.crs == truth.crs and src.transform == truth.transform
            assert src.nodata == 255 and src.overviews(1)
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            kelp_px = int((src.read(1) == 1).sum())
            bounds, crs = src.bounds, src.crs
        # the area in the table is the mask's kelp pixels at 30 m x 30 m (UTM), counted here
        row = areas.set_index("scene_id").loc[s.meta.scene_id]
        assert row["kelp_ha"] == pytest.approx(kelp_px * 0.09, rel=1e-6)
        info = pyogrio.read_info(folder / f"{s.meta.scene_id}_kelp.gpkg", layer="kelp")
        assert info["crs"] is not None
    out = tmp_path / "ts.csv"
    res = CliRunner().invoke(
        app, ["timeseries", str(maps), "-o", str(out), "--plot", str(tmp_path / "ts.png")]
    )
    assert res.exit_code == 0, res.output
    ts = pd.read_csv(out)
    assert list(ts["date"]) == sorted(str(s.meta.date) for s in scenes)
    by_id = areas.set_index("scene_id")["kelp_ha"]
    assert ts.set_index("scene_id")["kelp_ha"].round(4).to_dict() == by_id.round(4).to_dict()
    assert (tmp_path / "ts.png").stat().st_size > 0
    # an AOI over the whole scene, read from the rasters (not scene.json), gives the same areas
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[box(*bounds)], crs=crs).to_crs(4326).to_file(aoi)
    args = ["timeseries", str(maps), "--aoi", str(aoi), "-o", str(tmp_path / "ts_aoi.csv")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    in_aoi = pd.read_csv(tmp_path / "ts_aoi.csv").set_index("scene_id")["kelp_ha"]
    for sid, ha in by_id.items():
        assert in_aoi[sid] == pytest.approx(ha, rel=1e-3)
