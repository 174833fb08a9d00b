"""Kelp-bed polygons from a mask (``rasterio.features.shapes``) and their GeoPackage output.

Each polygon carries its area in hectares computed in the raster's CRS: planar area in the
CRS's unit for a projected CRS, geodesic area (:meth:`pyproj.Geod.geometry_area_perimeter`)
for a geographic one; without a CRS the polygons are in pixel units and each pixel counts
:data:`~kelpseg.geo.area.ASSUMED_PIXEL_M` squared (column ``pixel_area_assumed``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
from affine import Affine
from rasterio.features import shapes
from shapely.geometry import shape

from kelpseg.geo.area import geometry_areas_ha, to_pyproj
from kelpseg.io.raster import atomic_output

LAYER = "kelp"
COLUMNS = ("id", "area_ha", "pixel_area_assumed")


def kelp_polygons(
    mask: np.ndarray,
    transform: Affine | None,
    crs: Any,
    *,
    min_area_ha: float = 0.0,
    nodata: int = 255,
    connectivity: int = 8,
    attributes: dict[str, Any] | None = None,
) -> gpd.GeoDataFrame:
    """Polygons of mask == 1 (rasterio.features.shapes), column area_ha (geodesic when geographic),
    id; beds under min_area_ha dropped (minimum mapping unit).

    Args:
        mask: ``(H, W)`` kelp mask: 1 kelp, 0 not, ``nodata`` unknown (never kelp).
        transform: The mask's affine transform; None: pixel units.
        crs: The mask's CRS (rasterio or pyproj CRS, or anything pyproj reads); None: none.
        min_area_ha: Minimum mapping unit; smaller beds are dropped.
        nodata: The mask's nodata value.
        connectivity: 8 (diagonal neighbours join a bed) or 4.
        attributes: Columns with one value for every bed (e.g. ``scene_id``, ``date``), so
            beds of many scenes can be put in one layer and still be told apart.

    Returns:
        A GeoDataFrame (the mask's CRS) with ``id`` (1..n, by decreasing area), ``area_ha``,
        ``pixel_area_assumed`` and polygon geometries, holes kept.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    kelp = (mask == 1) & (mask != nodata)
    found = shapes(
        kelp.view(np.uint8),
        mask=kelp,
        connectivity=connectivity,
        transform=transform or Affine.identity(),
    )
    geoms = [shape(geom) for geom, _ in found]
    areas, assumed = geometry_areas_ha(geoms, crs)
    gdf = gpd.GeoDataFrame(
        {
            "area_ha": pd.Series(areas, dtype="float64"),
            "pixel_area_assumed": pd.Series([assumed] * len(geoms), dtype="bool"),
        },
        geometry=gpd.GeoSeries(geoms, crs=to_pyproj(crs)),
    )
    gdf = gdf[gdf["area_ha"] >= min_area_ha].sort_values("area_ha", ascending=False)
    gdf.insert(0, "id", np.arange(1, len(gdf) + 1, dtype="int64"))
    for i, (key, value) in enumerate((attributes or {}).items(), start=1):
        gdf.insert(i, key, pd.Series([value] * len(gdf), index=gdf.index, dtype="object"))
    return gdf.reset_index(drop=True)


def _write_atomic(gdf: gpd.GeoDataFrame, path: Path, driver: str, **options: Any) -> Path:
    with atomic_output(path, keep_suffix=True) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)  # said otherwise
        tmp.unlink()  # the driver creates the file; an empty one is not a GeoPackage
        pyogrio.write_dataframe(
            gdf, tmp, layer=LAYER, driver=driver, geometry_type="Polygon", **options
        )
    return path


def write_polygons(gdf: gpd.GeoDataFrame, path: Path, *, geojson: bool = False) -> list[Path]:
    """GeoPackage (layer "kelp") at path, and path.with_suffix('.geojson') (EPSG:4326, as
    RFC 7946 asks) when geojson; atomic.

    An empty ``gdf`` still writes a valid layer with the schema. Polygons without a CRS (pixel
    units) get no GeoJSON: a warning says so.
    """
    path = Path(path)
    written = [_write_atomic(gdf, path, "GPKG")]
    if geojson:
        if gdf.crs is None:
            warnings.warn(
                f"{path}: polygons have no CRS (pixel units): no GeoJSON written", stacklevel=2
            )
        else:
            written.append(
                _write_atomic(
                    gdf.to_crs("EPSG:4326"), path.with_suffix(".geojson"), "GeoJSON", RFC7946="YES"
                )
            )
    return written
