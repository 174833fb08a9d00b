"""Pixel areas (hectares) from a raster's CRS and transform.

- Projected CRS: ``|det|`` of the affine transform (rotated or skewed grids included), in the
  CRS's linear unit squared, converted to m^2 with the unit's factor (feet, US survey feet...).
- Geographic CRS: the geodesic area of each row's cell on the CRS's ellipsoid
  (:class:`pyproj.Geod`, WGS84 when the CRS names none); cells of one row of a north-up grid
  have equal area. For a rotated geographic grid the first cell of the row stands for the row.
- No CRS (competition tiles): :data:`ASSUMED_PIXEL_M` x :data:`ASSUMED_PIXEL_M`, flagged as
  assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Geod

ASSUMED_PIXEL_M = 30.0
"""Side of a pixel (m) assumed when a raster has no CRS: Landsat's 30 m."""
M2_PER_HA = 10_000.0


def to_pyproj(crs: Any) -> ProjCRS | None:
    """A pyproj CRS from a rasterio CRS, pyproj CRS, EPSG string or WKT; None stays None."""
    if crs is None:
        return None
    if isinstance(crs, ProjCRS):
        return crs
    if hasattr(crs, "to_wkt"):
        return ProjCRS.from_wkt(crs.to_wkt())
    return ProjCRS.from_user_input(crs)


def linear_unit_m(crs: ProjCRS) -> float:
    """Metres per unit of a projected CRS's first axis (1.0 for metres, 0.3048006 for US ft)."""
    axes = crs.axis_info or (crs.sub_crs_list[0].axis_info if crs.sub_crs_list else [])
    if not axes or not axes[0].unit_conversion_factor:
        raise ValueError(f"CRS {crs.name!r} has no linear unit")
    return float(axes[0].unit_conversion_factor)


def geod_of(crs: ProjCRS) -> Geod:
    """The ellipsoid of ``crs`` as a :class:`pyproj.Geod` (WGS84 when it names none)."""
    return crs.get_geod() or Geod(ellps="WGS84")


def row_areas_ha(
    crs: Any, transform: Affine | None, height: int, row_off: int = 0
) -> tuple[np.ndarray, bool]:
    """Area (ha) of one pixel in each of ``height`` rows from row ``row_off`` (shape
    ``(height,)``) and whether it was assumed.

    Projected CRS: ``|det|`` of the transform in the CRS's linear unit converted to metres.
    Geographic: geodesic area per row with pyproj.Geod. None: 30 m x 30 m, assumed=True.
    """
    pcrs = to_pyproj(crs)
    if pcrs is None or transform is None:
        return np.full(height, ASSUMED_PIXEL_M**2 / M2_PER_HA), True
    if pcrs.is_geographic:
        geod = geod_of(pcrs)
        out = np.empty(height)
        for i, row in enumerate(range(row_off, row_off + height)):
            corners = [transform @ xy for xy in ((0, row), (1, row), (1, row + 1), (0, row + 1))]
            lons, lats = zip(*corners, strict=True)
            area, _ = geod.polygon_area_perimeter(lons, lats)
            out[i] = abs(area) / M2_PER_HA
        return out, False
    if not pcrs.is_projected:
        raise ValueError(f"CRS {pcrs.name!r} is neither projected nor geographic")
    unit = linear_unit_m(pcrs)
    det = abs(transform.determinant)
    return np.full(height, det * unit**2 / M2_PER_HA), False


def class_areas_ha(
    arr: np.ndarray, crs: Any, transform: Affine | None, row_off: int = 0
) -> dict[int, float]:
    """Area (ha) of each value in ``arr``, a window starting at row ``row_off`` of the raster.

    ``transform`` is the whole raster's (rows are counted from its top).
    """
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {arr.shape}")
    rows, _ = row_areas_ha(crs, transform, arr.shape[0], row_off)
    return value_areas_ha(arr, rows)


def value_areas_ha(arr: np.ndarray, rows: np.ndarray) -> dict[int, float]:
    """Area (ha) of each value in a 2-D ``arr`` whose rows have the pixel areas ``rows``."""
    values = np.unique(arr)
    return {int(v): float((arr == v).sum(axis=1) @ rows) for v in values if not np.isnan(v)}


def geometry_areas_ha(geoms: Sequence[Any], crs: Any) -> tuple[np.ndarray, bool]:
    """Area (ha) of shapely geometries in ``crs`` and whether the pixel area was assumed.

    Projected: planar area x unit^2; geographic: geodesic (``Geod.geometry_area_perimeter``);
    None: the geometries are in pixel units, each pixel :data:`ASSUMED_PIXEL_M` squared.
    """
    pcrs = to_pyproj(crs)
    if pcrs is None:
        return np.array([g.area for g in geoms]) * ASSUMED_PIXEL_M**2 / M2_PER_HA, True
    if pcrs.is_geographic:
        geod = geod_of(pcrs)
        areas = [abs(geod.geometry_area_perimeter(g)[0]) for g in geoms]
        return np.array(areas, dtype=float) / M2_PER_HA, False
    return np.array([g.area for g in geoms]) * linear_unit_m(pcrs) ** 2 / M2_PER_HA, False
