"""`kelpseg timeseries`: a MAPS folder built here (3 acquisitions of one UTM raster), with and
without an AOI in EPSG:4326, a cloudy date flagged; competition tiles grouped by AOI.
Footprints, AOIs and quarters: tests/test_timeseries_aoi.py."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from shapely.geometry import Polygon, mapping
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.geo.footprint import footprint_id
from kelpseg.geo.timeseries import aoi_areas, read_aoi, scene_series
from kelpseg.io.raster import Georef, write_raster

H, W = 40, 50
UTM = Affine(30, 0, 400_020, 0, -30, 3_800_010)
CRS_UTM = CRS.from_epsg(32611)
AOI_ROWS, AOI_COLS = (10, 30), (5, 25)
# (date, cloudy rows) of the three acquisitions, written out of date order
DATES = {
    "LC08_B": (dt.date(2021, 8, 15), 0),
    "LC08_A": (dt.date(2021, 7, 14), 0),
    "LE07_C": (dt.date(2021, 9, 2), 25),
}


def _scene_arrays(index: int, cloudy_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Kelp mask and coverage: land in the east, water in the west, kelp beds grow by date."""
    cov = np.full((H, W), 1, np.uint8)
    cov[:, 40:] = 0  # land
    cov[:cloudy_rows, :40] = 2  # cloudy water
    cov[H - 2 :, :] = 255  # scene edge: no data
    kelp = np.zeros((H, W), np.uint8)
    kelp[12 : 16 + 4 * index, 8:20] = 1  # inside the AOI
    kelp[2:6, 30:34] = 1  # outside the AOI
    kelp[cov == 2] = 0  # nothing seen under the clouds
    kelp[cov == 255] = 255
    return kelp, cov


def _write_maps(root: Path) -> dict[str, dict]:
    truth = {}
    for index, (scene_id, (date, cloudy)) in enumerate(sorted(DATES.items(), key=lambda x: x[1])):
        kelp, cov = _scene_arrays(index, cloudy)
        folder = root / scene_id
        geo = Georef(CRS_UTM, UTM)
        write_raster(folder / f"{scene_id}_kelp.tif", kelp, georef=geo, nodata=255)
        write_raster(folder / f"{scene_id}_coverage.tif", cov, georef=geo, nodata=255)
        water, clear = np.isin(cov, (1, 2)).sum() * 0.09, (cov == 1).sum() * 0.09
        r, c = slice(*AOI_ROWS), slice(*AOI_COLS)
        a_cov, a_kelp = cov[r, c], kelp[r, c]
        truth[scene_id] = {
            "kelp_ha": (kelp == 1).sum() * 0.09,
            "water_ha": water,
            "observed_fraction": clear / water,
            "aoi_kelp_ha": (a_kelp == 1).sum() * 0.09,
            "aoi_water_ha": np.isin(a_cov, (1, 2)).sum() * 0.09,
            "aoi_clear_ha": (a_cov == 1).sum() * 0.09,
        }
        meta = {
            "scene_id": scene_id,
            "sensor": "LANDSAT_7" if scene_id.startswith("LE07") else "LANDSAT_8",
            "date": date.isoformat(),
            "source": str(folder),
            "crs": CRS_UTM.to_wkt(),
            "pixel_area_assumed": False,
            "kelp_ha": truth[scene_id]["kelp_ha"],
            "water_ha": water,
            "water_clear_ha": clear,
            "observed_fraction": clear / water,
            "threshold": 0.5,
            "models": [],
            "fingerprint": "x",
        }
        (folder / "scene.json").write_text(json.dumps(meta))
    return truth


def _aoi_geojson(path: Path, rows=AOI_ROWS, cols=AOI_COLS) -> Path:
    """The AOI rectangle (pixel edges) written in EPSG:4326."""
    to_ll = Transformer.from_crs(32611, 4326, always_xy=True)
    ring = [UTM @ (c, r) for c, r in ((cols[0], rows[0]), (cols[1], rows[0]))]
    ring += [UTM @ (c, r) for c, r in ((cols[1], rows[1]), (cols[0], rows[1]))]
    poly = Polygon([to_ll.transform(x, y) for x, y in ring])
    feature = {"type": "Feature", "properties": {"name": "bay"}, "geometry": mapping(poly)}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


@pytest.fixture()
def maps(tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "maps"
    return root, _write_maps(root)


def test_whole_scenes_sorted_by_date_cloudy_flagged(maps, tmp_path):
    root, truth = maps
    out, png = tmp_path / "ts.csv", tmp_path / "ts.png"
    res = CliRunner().invoke(app, ["timeseries", str(root), "-o", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    ts = pd.read_csv(out)
    assert list(ts["scene_id"]) == ["LC08_A", "LC08_B", "LE07_C"]
    assert list(ts["date"]) == ["2021-07-14", "2021-08-15", "2021-09-02"]
    for _, row in ts.iterrows():
        assert row["kelp_ha"] == pytest.approx(truth[row["scene_id"]]["kelp_ha"])
        assert row["observed_fraction"] == pytest.approx(
            truth[row["scene_id"]]["observed_fraction"], abs=5e-5
        )
    assert list(ts["well_observed"]) == [True, True, False]
    # old scene.json (no footprint key, ids that name none): the kelp rasters' grid, one series
    assert set(ts["footprint"]) == {footprint_id(None, CRS_UTM, UTM, (H, W))}
    assert "footprints mixed" not in res.output
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "1 poorly observed" in res.output


def test_aoi_in_wgs84_counts_only_inside(maps, tmp_path):
    root, truth = maps
    aoi = _aoi_geojson(tmp_path / "aoi.geojson")
    out = tmp_path / "ts.csv"
    res = CliRunner().invoke(app, ["timeseries", str(root), "--aoi", str(aoi), "-o", str(out)])
    assert res.exit_code == 0, res.output
    ts = pd.read_csv(out).set_index("scene_id")
    assert set(ts["aoi"]) == {"bay"} and "named by its column 'name'" in res.output
    for scene_id, t in truth.items():
        row = ts.loc[scene_id]
        assert row["kelp_ha"] == pytest.approx(t["aoi_kelp_ha"])
        assert row["water_ha"] == pytest.approx(t["aoi_water_ha"])
        assert row["water_clear_ha"] == pytest.approx(t["aoi_clear_ha"])
        assert row["aoi_ha"] == pytest.approx(20 * 20 * 0.09)
        assert row["aoi_valid_fraction"] == pytest.approx(1.0)
    # kelp grows inside the AOI by date; the cloudy date hides most of it
    assert ts.loc["LC08_A", "kelp_ha"] < ts.loc["LC08_B", "kelp_ha"]
    assert ts.loc["LE07_C", "observed_fraction"] < 0.8
    assert list(ts["well_observed"]) == [True, True, False]


def test_aoi_beyond_the_scene_edge_is_not_well_observed(maps, tmp_path):
    root, _ = maps
    aoi = _aoi_geojson(tmp_path / "edge.geojson", rows=(30, 50), cols=(5, 25))  # past row 40
    ts, report = scene_series(root, read_aoi(aoi))
    assert report.ok == 3
    # rows 30..37 are data, 38..39 the nodata edge, 40..49 outside the raster
    np.testing.assert_allclose(ts["aoi_valid_fraction"], 8 / 20, rtol=1e-4)
    np.testing.assert_allclose(ts["aoi_ha"], 20 * 20 * 0.09, rtol=1e-4)  # outside part included
    assert not ts["well_observed"].any()


def test_aoi_outside_every_scene_fails_with_a_crs_hint_and_no_csv(maps, tmp_path):
    root, _ = maps
    aoi = _aoi_geojson(tmp_path / "far.geojson", rows=(500, 520), cols=(500, 520))
    out = tmp_path / "x.csv"
    res = CliRunner().invoke(app, ["timeseries", str(root), "--aoi", str(aoi), "-o", str(out)])
    assert res.exit_code == 1
    assert "no acquisition overlaps" in res.output and "is its CRS right?" in res.output
    # both extents in the AOI's CRS: the AOI's and the scenes' (the scene's west edge in lon)
    assert "EPSG:4326) overlaps none of 3 scenes (they cover -118." in res.output
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_bad_scene_reported_rest_goes_on(maps, tmp_path):
    root, _ = maps
    (root / "LC08_B" / "LC08_B_coverage.tif").write_bytes(b"not a tiff")
    aoi = _aoi_geojson(tmp_path / "aoi.geojson")
    out = tmp_path / "ts.csv"
    res = CliRunner().invoke(app, ["timeseries", str(root), "--aoi", str(aoi), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "LC08_B_coverage.tif" in res.output
    assert list(pd.read_csv(out)["scene_id"]) == ["LC08_A", "LE07_C"]
    res = CliRunner().invoke(app, ["timeseries", str(root), "--aoi", str(aoi), "--strict"])
    assert res.exit_code == 1


def _tile(kelp_px: int, cloudy_px: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = rng.integers(5000, 12000, size=(7, 16, 16)).astype(np.int16)
    raw[5] = 0
    raw[6] = 0
    raw[6, :, 12:] = 40  # land
    raw[6, 0, 0] = -32768  # DEM missing, bands valid: open sea
    raw[:, 15, :] = -32768  # missing row
    raw[5].ravel()[16 : 16 + cloudy_px] = 1
    mask = np.zeros((16, 16), np.uint8)
    mask.ravel()[:kelp_px] = 1
    mask[15, :] = 255
    return raw, mask


def test_competition_tiles_grouped(tmp_path):
    data, pred = tmp_path / "data" / "train_satellite", tmp_path / "pred"
    spec = {"AA001": (10, 0), "AA002": (20, 100), "BB001": (5, 0)}  # id: (kelp px, cloudy px)
    for i, (tile_id, (kelp_px, cloudy)) in enumerate(spec.items()):
        raw, mask = _tile(kelp_px, cloudy, i)
        write_raster(data / f"{tile_id}_satellite.tif", raw)
        write_raster(pred / f"{tile_id}_kelp.tif", mask, nodata=255)
    write_raster(pred / "ZZ999_kelp.tif", np.zeros((16, 16), np.uint8), nodata=255)
    groups = tmp_path / "groups.csv"
    pd.DataFrame({"tile_id": ["BB001", "AA002", "AA001"], "aoi": [1, 0, 0]}).to_csv(groups)
    out, png = tmp_path / "ts.csv", tmp_path / "ts.png"
    args = ["timeseries", str(pred), "--groups", str(groups), "--tiles", str(tmp_path / "data")]
    res = CliRunner().invoke(app, [*args, "-o", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "30 m x 30 m pixels assumed" in res.output and "no date" in res.output
    assert "1 prediction(s) not in" in res.output
    ts = pd.read_csv(out)
    assert list(ts["tile_id"]) == ["AA001", "AA002", "BB001"]
    assert list(ts["order"]) == [0, 1, 0]
    np.testing.assert_allclose(ts["kelp_ha"], [10 * 0.09, 20 * 0.09, 5 * 0.09])
    assert ts["pixel_area_assumed"].all()
    water_px = 15 * 12  # 15 valid rows, 12 water columns (the DEM hole counts as sea)
    np.testing.assert_allclose(ts["water_ha"], water_px * 0.09)
    # cloudy pixels 16..115 in row-major order: rows 1..7 partly on land
    cloudy_water = sum(1 for k in range(16, 116) if k % 16 < 12)
    assert ts.loc[1, "water_clear_ha"] == pytest.approx((water_px - cloudy_water) * 0.09)
    assert list(ts["well_observed"]) == [True, False, True]
    assert png.is_file()
    png.unlink()
    res = CliRunner().invoke(app, [*args[:4], "-o", str(out), "--plot", str(png)])  # no --tiles
    assert res.exit_code == 0, res.output
    assert "no --tiles" in res.output and png.is_file()
    ts = pd.read_csv(out)
    assert ts["water_ha"].isna().all() and ts["well_observed"].isna().all()
    np.testing.assert_allclose(ts["kelp_ha"], [10 * 0.09, 20 * 0.09, 5 * 0.09])


def test_large_wgs84_aoi_edges_follow_parallels(tmp_path):
    """A lon/lat box whose southern edge (a parallel) crosses a 300 km UTM scene: a curve in
    UTM, 1.7 % of the area off if only the box's corners were reprojected."""
    size, px = 1000, 300.0
    transform = Affine(px, 0, 250_000, 0, -px, 3_900_000)
    folder = tmp_path / "maps" / "S"
    geo = Georef(CRS_UTM, transform)
    ones = np.ones((size, size), np.uint8)
    write_raster(folder / "S_kelp.tif", ones, georef=geo, nodata=255)
    write_raster(folder / "S_coverage.tif", ones, georef=geo, nodata=255)
    (folder / "scene.json").write_text(json.dumps({"scene_id": "S", "date": "2020-01-01"}))
    lon0, lon1, lat0, lat1 = -121.0, -116.0, 34.0, 40.0  # one edge crosses the scene
    box = Polygon([(lon0, lat0), (lon1, lat0), (lon1, lat1), (lon0, lat1)])
    aoi = tmp_path / "box.geojson"
    feature = {"type": "Feature", "properties": {}, "geometry": mapping(box)}
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    ts, _ = scene_series(tmp_path / "maps", read_aoi(aoi))
    cols, rows = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    x, y = transform.c + cols * px, transform.f - rows * px
    lon, lat = Transformer.from_crs(32611, 4326, always_xy=True).transform(x, y)
    inside = (lon > lon0) & (lon < lon1) & (lat > lat0) & (lat < lat1)
    assert 0.3 < inside.mean() < 0.9
    expected = inside.sum() * px * px / 1e4
    assert ts["kelp_ha"].iloc[0] == pytest.approx(expected, rel=2e-4)


def test_aoi_read_in_row_blocks_gives_the_same_areas(maps, tmp_path):
    root, _ = maps
    aoi = read_aoi(_aoi_geojson(tmp_path / "edge.geojson", rows=(3, 50), cols=(-4, 45)))
    kelp, cov = root / "LC08_B" / "LC08_B_kelp.tif", root / "LC08_B" / "LC08_B_coverage.tif"
    whole = aoi_areas(kelp, cov, aoi)["bay"]
    assert aoi_areas(kelp, cov, aoi, block_rows=7)["bay"] == pytest.approx(whole, rel=1e-12)
    assert whole["kelp_ha"] > 0 and whole["aoi_valid_fraction"] < 0.9
