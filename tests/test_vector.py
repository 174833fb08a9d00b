"""Kelp-bed polygons: areas add up to the pixels, MMU, holes, nodata, GeoPackage/GeoJSON files."""

from __future__ import annotations

import numpy as np
import pyogrio
import pytest
from affine import Affine

from kelpseg.geo.area import class_areas_ha
from kelpseg.geo.vector import kelp_polygons, write_polygons

UTM = Affine(30, 0, 500_000, 0, -30, 4_000_000)
GEO = Affine(1 / 3600, 0, -120.0, 0, -1 / 3600, 34.5)


def _mask() -> np.ndarray:
    m = np.zeros((60, 80), np.uint8)
    m[5:25, 5:35] = 1  # a big bed ...
    m[12:16, 15:20] = 0  # ... with a hole
    m[40:42, 60:62] = 1  # a 4-pixel bed
    m[50, 10] = m[51, 11] = 1  # diagonal neighbours: one bed with 8-connectivity
    m[0:3, 70:80] = 255  # nodata never kelp
    return m


@pytest.mark.parametrize(("transform", "crs"), [(UTM, "EPSG:32611"), (GEO, "EPSG:4326")])
def test_polygon_areas_sum_to_pixel_areas(transform, crs):
    m = _mask()
    gdf = kelp_polygons(m, transform, crs)
    assert len(gdf) == 3
    assert gdf.crs is not None and gdf.crs.equals(crs)
    expected = class_areas_ha(m, crs, transform)[1]
    assert gdf["area_ha"].sum() == pytest.approx(expected, rel=1e-6)
    assert list(gdf["id"]) == [1, 2, 3]
    assert not gdf["pixel_area_assumed"].any()
    big = gdf.geometry.iloc[0]
    assert len(big.interiors) == 1  # the hole is kept


def test_connectivity_and_mmu():
    m = _mask()
    assert len(kelp_polygons(m, UTM, "EPSG:32611", connectivity=4)) == 4
    kept = kelp_polygons(m, UTM, "EPSG:32611", min_area_ha=0.3)  # drops the 2-px bed (0.18 ha)
    assert len(kept) == 2
    kept = kelp_polygons(m, UTM, "EPSG:32611", min_area_ha=0.4)  # and the 4-px one (0.36 ha)
    assert len(kept) == 1 and kept["area_ha"].iloc[0] == pytest.approx((600 - 20) * 0.09)


def test_nodata_is_never_kelp():
    m = np.full((10, 10), 255, np.uint8)
    assert kelp_polygons(m, UTM, "EPSG:32611").empty


def test_no_crs_counts_30m_pixels():
    gdf = kelp_polygons(_mask(), None, None)
    assert gdf["pixel_area_assumed"].all()
    assert gdf["area_ha"].sum() == pytest.approx(((_mask() == 1).sum()) * 0.09)


def test_written_files_open_with_crs(tmp_path):
    gdf = kelp_polygons(_mask(), UTM, "EPSG:32611")
    paths = write_polygons(gdf, tmp_path / "s_kelp.gpkg", geojson=True)
    assert paths == [tmp_path / "s_kelp.gpkg", tmp_path / "s_kelp.geojson"]
    back = pyogrio.read_dataframe(paths[0], layer="kelp")
    assert back.crs.to_epsg() == 32611
    assert back["area_ha"].sum() == pytest.approx(gdf["area_ha"].sum())
    gj = pyogrio.read_dataframe(paths[1])
    assert gj.crs.to_epsg() == 4326
    assert -121 < gj.total_bounds[0] < gj.total_bounds[2] < -116  # lon/lat, not metres
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_kelp.geojson", "s_kelp.gpkg"]


def test_empty_result_writes_schema(tmp_path):
    gdf = kelp_polygons(np.zeros((8, 8), np.uint8), UTM, "EPSG:32611")
    (path,) = write_polygons(gdf, tmp_path / "empty.gpkg")
    info = pyogrio.read_info(path, layer="kelp")
    assert info["features"] == 0
    assert list(info["fields"]) == ["id", "area_ha", "pixel_area_assumed"]
    assert info["geometry_type"] == "Polygon" and "32611" in info["crs"]
