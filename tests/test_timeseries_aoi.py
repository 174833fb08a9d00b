"""`kelpseg timeseries` at archive scale and with the AOIs users have: footprints never merged,
unobserved dates empty (never 0), one series per AOI feature, repaired and refused AOIs,
Kelpwatch-style quarters, rounded CSVs, nothing written on failure, a legend that hides no
point. Truth: scene.json files and 40 x 50 px UTM rasters written here (0.09 ha a pixel)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from affine import Affine
from shapely.geometry import Polygon, box, mapping
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.geo.timeseries import (
    LONLAT_HINT,
    footprint_warning,
    quarterly,
    read_aoi,
    scene_series,
    series_figure,
)
from kelpseg.io.raster import Georef, write_raster
from tests.test_timeseries import CRS_UTM, DATES, UTM, _scene_arrays, _write_maps

PX = 0.09  # ha of a 30 m pixel


def _product(path_row: str, date: str) -> str:
    return f"LC08_L2SP_{path_row}_{date.replace('-', '')}_20220101_02_T1"


def _json_scene(root: Path, scene_id: str, date: str, kelp: float, water: float, clear: float,
                **extra) -> None:  # fmt: skip
    """A scene.json alone (no raster): what `kelpseg map` writes, areas in ha."""
    meta = {
        "scene_id": scene_id,
        "sensor": "LANDSAT_8",
        "date": date,
        "pixel_area_assumed": False,
        "kelp_ha": kelp,
        "water_ha": water,
        "water_clear_ha": clear,
        "observed_fraction": clear / water if water else None,
        **extra,
    }
    (root / scene_id).mkdir(parents=True)
    (root / scene_id / "scene.json").write_text(json.dumps(meta))


# (path/row, date, kelp ha, water ha, clear water ha)
ARCHIVE = [
    ("042036", "2021-03-15", 12.0, 100.0, 90.0),  # well observed
    ("042036", "2021-01-10", 10.0, 100.0, 100.0),  # well observed
    ("042036", "2021-02-11", 4.0, 100.0, 50.0),  # half under cloud
    ("042036", "2021-04-20", 0.0, 100.0, 0.0),  # all water under cloud: unknown, not 0
    ("042036", "2021-10-05", 3.0, 100.0, 60.0),  # poorly observed
    ("043036", "2021-01-17", 7.0, 50.0, 50.0),
    ("043036", "2021-05-02", 8.0, 50.0, 45.0),
]


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    """scene.json files only, of two WRS-2 footprints: no raster at all."""
    root = tmp_path / "archive"
    for path_row, date, kelp, water, clear in ARCHIVE:
        _json_scene(root, _product(path_row, date), date, kelp, water, clear)
    return root


def _run(*args: str):
    return CliRunner().invoke(app, ["timeseries", *map(str, args)])


def test_footprints_never_merged_warned_and_drawn_apart(archive, tmp_path):
    # a new scene.json names its footprint: it wins over what the id would give
    _json_scene(archive, "my_raster", "2021-06-01", 1.0, 10.0, 10.0, footprint="043036")
    out = tmp_path / "ts.csv"
    res = _run(archive, "-o", out)  # no raster exists: only scene.json files are read
    assert res.exit_code == 0, res.output
    ts = pd.read_csv(out, dtype={"footprint": str})
    assert list(ts["footprint"]) == ["042036"] * 5 + ["043036"] * 3
    assert list(ts["date"][:5]) == sorted(d for fp, d, *_ in ARCHIVE if fp == "042036")
    assert ts.loc[7, "scene_id"] == "my_raster"
    line = [s for s in res.output.splitlines() if s.startswith("warning:")]
    assert line == [
        "warning: 2 footprints mixed: 042036 (5 dates), 043036 (3 dates); each is its own "
        "series, never merged (column footprint; --aoi compares one place across them)"
    ]
    table, _ = scene_series(archive)
    fig = series_figure(table)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["footprint 042036", "footprint 043036"]
    kelp_lines = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "-"]
    assert len(kelp_lines) == 2  # one line per footprint


def test_unobserved_dates_are_empty_not_zero(archive, tmp_path):
    out = tmp_path / "ts.csv"
    res = _run(archive, "-o", out)
    assert res.exit_code == 0, res.output
    assert "1 without clear water (kelp_ha empty)" in res.output
    ts = pd.read_csv(out, dtype={"footprint": str}).set_index("date")
    assert np.isnan(ts.loc["2021-04-20", "kelp_ha"])
    assert not ts.loc["2021-04-20", "well_observed"]
    assert ts.drop("2021-04-20")["kelp_ha"].notna().all()
    row = next(r for r in out.read_text().splitlines() if "2021-04-20" in r).split(",")
    header = out.read_text().splitlines()[0].split(",")
    assert row[header.index("kelp_ha")] == ""  # an empty cell, not 0


def test_quarters_kelpwatch_style(archive, tmp_path):
    out, quarters = tmp_path / "ts.csv", tmp_path / "q.csv"
    res = _run(archive, "-o", out, "--quarterly", quarters)
    assert res.exit_code == 0, res.output
    q = pd.read_csv(quarters, dtype={"footprint": str}, keep_default_na=False)
    expected = [  # footprint, year, quarter, max, well-observed mean, dates, well observed
        ("042036", 2021, 1, "12.0", "11.0", 3, 2),
        ("042036", 2021, 2, "", "", 1, 0),  # one date, no clear water: empty, never 0
        ("042036", 2021, 4, "3.0", "", 1, 0),  # no well-observed date: no mean
        ("043036", 2021, 1, "7.0", "7.0", 1, 1),
        ("043036", 2021, 2, "8.0", "8.0", 1, 1),
    ]  # 042036 has no date in Q3: no row
    assert [tuple(r) for r in q.itertuples(index=False)] == expected
    assert list(q.columns) == [
        "footprint",
        "year",
        "quarter",
        "kelp_ha_max",
        "kelp_ha_mean_well_observed",
        "dates",
        "dates_well_observed",
    ]


def test_csv_rounded_without_comment_lines(tmp_path):
    root = tmp_path / "maps"
    _json_scene(root, _product("042036", "2021-01-01"), "2021-01-01", 1.23456, 7.0, 6.1234567)
    out = tmp_path / "ts.csv"
    assert _run(root, "-o", out).exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("footprint,date,scene_id") and len(lines) == 2
    assert not any(line.startswith("#") for line in lines)
    row = dict(zip(lines[0].split(","), lines[1].split(","), strict=True))
    assert (row["kelp_ha"], row["water_clear_ha"]) == ("1.23", "6.12")
    assert row["observed_fraction"] == f"{6.1234567 / 7:.4f}"


def test_old_scene_json_without_raster_or_named_footprint_is_reported(archive, tmp_path):
    _json_scene(archive, "scene_without_raster", "2021-06-01", 1.0, 10.0, 10.0)
    res = _run(archive, "-o", tmp_path / "ts.csv")
    assert res.exit_code == 0, res.output
    assert "scene_without_raster_kelp.tif: no footprint in scene.json" in res.output
    assert len(pd.read_csv(tmp_path / "ts.csv")) == len(ARCHIVE)


# --- AOIs on rasters ----------------------------------------------------------------------


@pytest.fixture()
def maps(tmp_path: Path) -> Path:
    root = tmp_path / "maps"
    _write_maps(root)
    return root


def _pixel_box(rows: tuple[int, int], cols: tuple[int, int]) -> Polygon:
    """A UTM rectangle along pixel edges."""
    (x0, y0), (x1, y1) = UTM * (cols[0], rows[0]), UTM * (cols[1], rows[1])
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _truth_kelp(rows: tuple[int, int], cols: tuple[int, int]) -> dict[str, float]:
    """Kelp ha of each scene of `_write_maps` in a pixel rectangle (NaN: no clear water)."""
    truth = {}
    for i, (sid, (_, cloudy)) in enumerate(sorted(DATES.items(), key=lambda item: item[1])):
        kelp, cov = (a[slice(*rows), slice(*cols)] for a in _scene_arrays(i, cloudy))
        truth[sid] = float((kelp == 1).sum()) * PX if (cov == 1).any() else np.nan
    return truth


NORTH, SOUTH, COLS = (10, 20), (20, 30), (5, 25)


def test_one_series_per_feature_named_or_indexed_and_union(maps, tmp_path):
    aoi = tmp_path / "beds.gpkg"
    shapes = [_pixel_box(SOUTH, COLS), _pixel_box(NORTH, COLS)]
    gpd.GeoDataFrame({"Name": ["south", "north"]}, geometry=shapes, crs=32611).to_file(aoi)
    out, quarters = tmp_path / "ts.csv", tmp_path / "q.csv"
    res = _run(maps, "--aoi", aoi, "-o", out, "--quarterly", quarters)
    assert res.exit_code == 0, res.output
    assert "2 AOI feature(s) named by its column 'Name'" in res.output
    assert "footprints" not in res.output  # one footprint: no warning
    ts = pd.read_csv(out)
    assert list(ts["aoi"]) == ["south"] * 3 + ["north"] * 3  # the file's order, then by date
    for name, rows in (("south", SOUTH), ("north", NORTH)):
        part = ts[ts["aoi"] == name].set_index("scene_id")
        for sid, ha in _truth_kelp(rows, COLS).items():
            assert part.loc[sid, "kelp_ha"] == pytest.approx(ha, abs=1e-9, nan_ok=True)
        np.testing.assert_allclose(part["aoi_ha"], 10 * 20 * PX)
    q = pd.read_csv(quarters)
    assert list(q["aoi"]) == ["south", "north"] and list(q["quarter"]) == [3, 3]
    assert q["footprint"].nunique() == 1 and list(q["dates"]) == [3, 3]
    # --aoi-union: today's single merged AOI, named by the file
    res = _run(maps, "--aoi", aoi, "--aoi-union", "-o", out)
    assert res.exit_code == 0, res.output
    ts = pd.read_csv(out).set_index("scene_id")
    assert set(ts["aoi"]) == {"beds"}
    for sid, ha in _truth_kelp((10, 30), COLS).items():
        assert ts.loc[sid, "kelp_ha"] == pytest.approx(ha, abs=1e-9, nan_ok=True)
    # no name or id column: the feature index
    gpd.GeoDataFrame({"x": [1, 2]}, geometry=shapes, crs=32611).to_file(aoi)
    res = _run(maps, "--aoi", aoi, "-o", out)
    assert res.exit_code == 0, res.output
    assert "named by feature index" in res.output
    assert list(pd.read_csv(out)["aoi"]) == [0, 0, 0, 1, 1, 1]


def test_aoi_on_unobserved_water_is_empty(maps):
    # rows 0..24 of LE07_C are cloudy water; LC08_A and LC08_B saw these rows: no kelp there
    area = gpd.GeoSeries([_pixel_box((2, 8), (5, 15))], index=["cloud"], crs=32611)
    ts, _ = scene_series(maps, area)
    kelp = ts.set_index("scene_id")["kelp_ha"]
    assert kelp["LC08_A"] == 0.0 and kelp["LC08_B"] == 0.0  # seen, and no kelp: a true 0
    assert np.isnan(kelp["LE07_C"])  # not seen: unknown
    # the AOI on the scene's nodata edge (rows 38-39): no clear water on any date
    edge = gpd.GeoSeries([_pixel_box((38, 40), (5, 15))], crs=32611)
    ts, _ = scene_series(maps, edge)
    assert ts["kelp_ha"].isna().all() and not ts["well_observed"].any()
    assert (ts["aoi_valid_fraction"] == 0).all()
    q = quarterly(ts)
    assert q["kelp_ha_max"].isna().all() and q["kelp_ha_mean_well_observed"].isna().all()


def test_bowtie_aoi_repaired_with_its_whole_area(tmp_path):
    """A bow-tie ring (5,5)-(25,20)-(25,5)-(5,20) in pixels crosses itself at (15, 12.5): two
    triangles of 75 px each. Read as drawn it has half its area or none."""
    root = tmp_path / "maps"
    ones = np.ones((40, 50), np.uint8)
    for name in ("S_kelp.tif", "S_coverage.tif"):
        write_raster(root / "S" / name, ones, georef=Georef(CRS_UTM, UTM), nodata=255)
    (root / "S" / "scene.json").write_text(json.dumps({"scene_id": "S", "date": "2021-01-01"}))
    ring = [(5, 5), (25, 20), (25, 5), (5, 20)]
    bowtie = Polygon([UTM * p for p in ring])
    assert not bowtie.is_valid
    aoi = tmp_path / "bowtie.gpkg"
    gpd.GeoDataFrame(geometry=[bowtie], crs=32611).to_file(aoi)
    assert read_aoi(aoi).area.sum() == pytest.approx(2 * 75 * 900)  # m², whole
    out = tmp_path / "ts.csv"
    res = _run(root, "--aoi", aoi, "-o", out)
    assert res.exit_code == 0, res.output
    assert "bowtie.gpkg: 1 invalid geometry (e.g. Self-intersection" in res.output
    assert "shapely.make_valid" in res.output
    # truth: pixel centres inside the two triangles (none lies on an edge)
    left = Polygon([UTM * p for p in [(5, 5), (15, 12.5), (5, 20)]])
    right = Polygon([UTM * p for p in [(25, 5), (15, 12.5), (25, 20)]])
    cols, rows = np.meshgrid(np.arange(50) + 0.5, np.arange(40) + 0.5)
    x, y = UTM * (cols, rows)
    inside = shapely.contains_xy(left, x, y) | shapely.contains_xy(right, x, y)
    assert 140 <= inside.sum() <= 160
    ts = pd.read_csv(out)
    assert ts["kelp_ha"].iloc[0] == pytest.approx(inside.sum() * PX)
    assert ts["aoi_ha"].iloc[0] == pytest.approx(inside.sum() * PX)


def test_aoi_without_crs_refused_unless_given(maps, tmp_path):
    shp = tmp_path / "bay.shp"  # a shapefile without its .prj
    gpd.GeoDataFrame({"id": [7]}, geometry=[_pixel_box((10, 30), COLS)]).to_file(shp)
    assert not shp.with_suffix(".prj").exists()
    out = tmp_path / "ts.csv"
    res = _run(maps, "--aoi", shp, "-o", out)
    assert res.exit_code == 1
    assert "the AOI has no CRS" in res.output and "--aoi-crs" in res.output
    assert not out.exists()
    res = _run(maps, "--aoi", shp, "--aoi-crs", "EPSG:32611", "-o", out)
    assert res.exit_code == 0, res.output
    ts = pd.read_csv(out).set_index("scene_id")
    assert set(ts["aoi"]) == {7}
    for sid, ha in _truth_kelp((10, 30), COLS).items():
        assert ts.loc[sid, "kelp_ha"] == pytest.approx(ha, abs=1e-9, nan_ok=True)
    res = _run(maps, "--aoi", shp, "--aoi-crs", "EPSG:99999999", "-o", out)
    assert res.exit_code == 1 and "not a CRS" in res.output


def test_geojson_in_metres_refused_with_a_hint(maps, tmp_path):
    geojson = tmp_path / "utm.geojson"  # no crs member: lon/lat by RFC 7946, but in metres
    feature = {"type": "Feature", "properties": {}, "geometry": mapping(_pixel_box(NORTH, COLS))}
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    out = tmp_path / "ts.csv"
    res = _run(maps, "--aoi", geojson, "-o", out)
    assert res.exit_code == 1
    assert LONLAT_HINT in " ".join(res.output.split())
    assert not out.exists()
    res = _run(maps, "--aoi", geojson, "--aoi-crs", "EPSG:32611", "-o", out)
    assert res.exit_code == 0, res.output
    assert "its CRS (EPSG:4326) replaced by --aoi-crs EPSG:32611" in res.output
    ts = pd.read_csv(out).set_index("scene_id")
    for sid, ha in _truth_kelp(NORTH, COLS).items():
        assert ts.loc[sid, "kelp_ha"] == pytest.approx(ha, abs=1e-9, nan_ok=True)


def test_failures_write_nothing(maps, tmp_path):
    out, quarters, png = tmp_path / "ts.csv", tmp_path / "q.csv", tmp_path / "ts.png"
    written = ["-o", out, "--quarterly", quarters, "--plot", png]
    bad = tmp_path / "bad.gpkg"
    bad.write_text("not a vector file")
    points = tmp_path / "points.geojson"
    gpd.GeoDataFrame(geometry=[shapely.Point(-118, 34)], crs=4326).to_file(points)
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([maps, "--aoi", bad], "not a readable vector file"),
        ([maps, "--aoi", points], "no polygon"),
        ([empty], "no */scene.json"),
        ([tmp_path / "nowhere"], "not a folder"),
    ]
    for args, message in cases:
        res = _run(*args, *written)
        assert res.exit_code == 1 and message in res.output, res.output
        assert not any(p.exists() for p in (out, quarters, png))
    assert not list(tmp_path.glob(".*"))  # no temporary file left either
    res = _run(maps, "--groups", tmp_path / "g.csv", "--quarterly", quarters)
    assert res.exit_code == 1 and "--quarterly need a `kelpseg map` folder" in res.output


def test_aoi_across_footprints_warned_once(tmp_path):
    """The same AOI in two footprints (two grids over the same place): rows kept apart by
    footprint, one warning line."""
    root = tmp_path / "maps"
    ones = np.ones((40, 50), np.uint8)
    for sid, shift in (("LC08_L2SP_042036_20210101_20220101_02_T1", 0),
                       ("LC08_L2SP_041036_20210108_20220101_02_T1", 10)):  # fmt: skip
        geo = Georef(CRS_UTM, UTM * Affine.translation(shift, 0))
        for name in (f"{sid}_kelp.tif", f"{sid}_coverage.tif"):
            write_raster(root / sid / name, ones, georef=geo, nodata=255)
        (root / sid / "scene.json").write_text(json.dumps({"scene_id": sid, "date": "2021-01-01"}))
    area = gpd.GeoSeries([_pixel_box((10, 20), (20, 30))], index=["bay"], crs=32611)
    ts, _ = scene_series(root, area)
    assert list(ts["footprint"]) == ["041036", "042036"]
    np.testing.assert_allclose(ts["kelp_ha"], 100 * PX)
    warning = footprint_warning(ts)
    assert warning is not None and "2 footprints: 041036 (1 date), 042036 (1 date)" in warning
    assert "same place" in warning and "\n" not in warning
    fig = series_figure(ts)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["AOI bay, footprint 041036", "AOI bay, footprint 042036"]


def _dense_table(series: int) -> pd.DataFrame:
    """Several footprints over two years, points in every corner of the axes."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(series):
        for k, day in enumerate(pd.date_range("2020-01-01", "2021-12-31", periods=40)):
            kelp = [0.0, 100.0][k % 2] if k in (0, 1, 38, 39) else rng.uniform(0, 100)
            observed = [0.0, 1.0][k % 2] if k in (0, 1, 38, 39) else rng.uniform(0, 1)
            rows.append({
                "footprint": f"04{s}036", "date": day.date(), "scene_id": f"{s}-{k}",
                "kelp_ha": kelp, "observed_fraction": observed, "well_observed": observed >= 0.8,
            })  # fmt: skip
    return pd.DataFrame(rows)


def _hidden_points(fig, legend) -> tuple[int, int]:
    """(plotted points inside the legend's window extent, all plotted points), in pixels."""
    frame = legend.get_window_extent()
    hidden = total = 0
    for ax in fig.axes:
        for line in ax.get_lines():
            xy = line.get_transform().transform(line.get_xydata())
            xy = xy[np.isfinite(xy).all(axis=1)]
            inside = (xy[:, 0] >= frame.x0) & (xy[:, 0] <= frame.x1)
            inside &= (xy[:, 1] >= frame.y0) & (xy[:, 1] <= frame.y1)
            hidden, total = hidden + int(inside.sum()), total + len(xy)
    return hidden, total


@pytest.mark.parametrize("series", [1, 3, 12])
def test_legend_hides_no_point(series):
    fig = series_figure(_dense_table(series))
    fig.canvas.draw()
    (legend,) = fig.legends
    hidden, total = _hidden_points(fig, legend)
    assert total > 40 * series and hidden == 0
    for ax in fig.axes:  # the axes themselves stay clear of the legend
        assert not ax.get_window_extent().overlaps(legend.get_window_extent())
    # the check can fail: a legend inside the axes (the old placement) hides the corner points
    inner = fig.axes[0].legend(loc="upper left")
    fig.canvas.draw()
    assert _hidden_points(fig, inner)[0] > 0
