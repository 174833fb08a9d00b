"""Pixel areas from the CRS: projected, geographic (against the analytic ellipsoid), feet, none."""

from __future__ import annotations

import math

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from kelpseg.geo.area import ASSUMED_PIXEL_M, class_areas_ha, row_areas_ha

ARCSEC = 1 / 3600
WGS84_A, WGS84_F = 6378137.0, 1 / 298.257223563


def _band_area_m2(lat1: float, lat2: float, dlon: float) -> float:
    """Exact area of a cell between two parallels on the WGS84 ellipsoid (degrees in):
    R_q^2 * dlon * (sin(beta2) - sin(beta1)) on the authalic sphere, written with q(phi)."""
    e2 = WGS84_F * (2 - WGS84_F)
    e = math.sqrt(e2)

    def q(lat: float) -> float:
        s = math.sin(math.radians(lat))
        return (1 - e2) * (s / (1 - e2 * s * s) - math.log((1 - e * s) / (1 + e * s)) / (2 * e))

    return WGS84_A**2 / 2 * math.radians(dlon) * (q(lat2) - q(lat1))


def test_utm_30m_pixel_is_009_ha():
    areas, assumed = row_areas_ha(CRS.from_epsg(32611), Affine(30, 0, 5e5, 0, -30, 4e6), 4)
    assert not assumed
    np.testing.assert_allclose(areas, 0.09)


def test_rotated_transform_uses_determinant():
    t = Affine.translation(5e5, 4e6) @ Affine.rotation(30) @ Affine.scale(30, -30)
    areas, _ = row_areas_ha("EPSG:32611", t, 2)
    np.testing.assert_allclose(areas, 0.09)


@pytest.mark.parametrize("lat", [0.0, 60.0, -45.0])
def test_arcsecond_cell_matches_ellipsoid(lat: float):
    t = Affine(ARCSEC, 0, -120.0, 0, -ARCSEC, lat + ARCSEC)
    areas, assumed = row_areas_ha(CRS.from_epsg(4326), t, 1)
    expected = _band_area_m2(lat, lat + ARCSEC, ARCSEC) / 1e4
    assert not assumed
    assert areas[0] == pytest.approx(expected, rel=1e-5)


def test_geographic_rows_shrink_poleward():
    t = Affine(ARCSEC, 0, 0, 0, -ARCSEC, 61.0)
    areas, _ = row_areas_ha("EPSG:4326", t, 3600)  # 61N down to 60N
    assert np.all(np.diff(areas) > 0)  # southern rows are larger
    assert areas[-1] == pytest.approx(_band_area_m2(60.0, 60.0 + ARCSEC, ARCSEC) / 1e4, rel=1e-4)


def test_us_survey_feet_converted():
    ft = 1200 / 3937  # US survey foot in metres
    areas, _ = row_areas_ha(CRS.from_epsg(2227), Affine(100, 0, 6e6, 0, -100, 2e6), 1)
    assert areas[0] == pytest.approx((100 * ft) ** 2 / 1e4, rel=1e-9)


def test_no_crs_assumes_30m():
    areas, assumed = row_areas_ha(None, None, 3)
    assert assumed
    np.testing.assert_allclose(areas, ASSUMED_PIXEL_M**2 / 1e4)


def test_window_with_row_offset_equals_full_raster():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 3, size=(90, 40)).astype(np.uint8)
    t = Affine(ARCSEC * 30, 0, 10.0, 0, -ARCSEC * 30, 70.0)  # ~1 km rows at 70N: areas vary
    full = class_areas_ha(arr, "EPSG:4326", t)
    parts = [class_areas_ha(arr[r : r + 30], "EPSG:4326", t, row_off=r) for r in (0, 30, 60)]
    for value, area in full.items():
        assert sum(p.get(value, 0.0) for p in parts) == pytest.approx(area, rel=1e-12)
    # and a window's own transform gives the same as the offset
    own = class_areas_ha(arr[30:60], "EPSG:4326", t @ Affine.translation(0, 30))
    assert own == pytest.approx(parts[1], rel=1e-12)
    utm = class_areas_ha(arr, "EPSG:32611", Affine(30, 0, 0, 0, -30, 0))
    assert utm[1] == pytest.approx((arr == 1).sum() * 0.09)
