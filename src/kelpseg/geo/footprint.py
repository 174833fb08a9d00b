"""Which footprint a scene covers: acquisitions of different footprints are different areas.

A footprint is the ground a product's grid covers, the same on every date:

- Landsat (L4-L9, Collection 1 or 2 product ids, or the older scene ids): the WRS-2 path/row,
  ``"042036"`` (``PPPRRR``);
- HLS (``HLS.L30.T11SKU...``, ``HLS.S30...``) and Sentinel-2 products
  (``S2A_MSIL2A_..._T11SKU_...``, with or without ``.SAFE``): the MGRS tile, ``"T11SKU"``;
- anything else: its grid, ``"grid:"`` + 10 hex characters hashed from the CRS (its EPSG code
  when it has an exact one, else its WKT), the transform rounded to 1e-6 and the shape.

``kelpseg timeseries`` never merges two footprints into one series.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kelpseg.geo.area import to_pyproj

_END = r"(?=$|[._\-\s])"
_LANDSAT_PRODUCT = re.compile(
    r"^L[COTEM]0[1-9]_L[12][A-Z0-9]{2}_(?P<fp>\d{6})_\d{8}_\d{8}_\d{2}_(?:T1|T2|RT)" + _END,
    re.IGNORECASE,
)
_LANDSAT_SCENE = re.compile(r"^L[COTEM][1-9](?P<fp>\d{6})\d{7}[A-Z]{3}\d{2}" + _END, re.IGNORECASE)
_HLS = re.compile(r"^HLS\.[LS]30\.(?P<fp>T\d{2}[A-Z]{3})\.\d{7}T\d{6}\.v\d", re.IGNORECASE)
_SENTINEL2 = re.compile(
    r"^S2[A-D]_MSIL(?:1C|2A)_\d{8}T\d{6}_N\d{4}_R\d{3}_(?P<fp>T\d{2}[A-Z]{3})_\d{8}T\d{6}" + _END,
    re.IGNORECASE,
)
GRID_PREFIX = "grid:"


def named_footprint(scene_id: str | None) -> str | None:
    """The WRS-2 path/row or MGRS tile a product id names, else None."""
    if not scene_id:
        return None
    name = Path(str(scene_id).strip()).name
    for pattern in (_LANDSAT_PRODUCT, _LANDSAT_SCENE, _HLS, _SENTINEL2):
        found = pattern.match(name)
        if found:
            return found.group("fp").upper()
    return None


def _crs_text(crs: Any) -> str | None:
    pcrs = to_pyproj(crs)
    if pcrs is None:
        return None
    epsg = pcrs.to_epsg(min_confidence=100)
    return f"EPSG:{epsg}" if epsg is not None else pcrs.to_wkt()


def _transform_list(transform: Any) -> list[float] | None:
    if transform is None:
        return None
    return [round(float(v), 6) + 0.0 for v in tuple(transform)[:6]]  # + 0.0: no "-0.0"


def grid_footprint(
    crs: Any = None, transform: Any = None, shape: Sequence[int] | None = None
) -> str:
    """``"grid:"`` + 10 hex characters of the CRS, the transform (1e-6) and the shape."""
    key = [_crs_text(crs), _transform_list(transform), [int(n) for n in shape] if shape else None]
    digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()
    return GRID_PREFIX + digest[:10]


def footprint_id(
    scene_id: str | None,
    crs: Any = None,
    transform: Any = None,
    shape: Sequence[int] | None = None,
) -> str:
    """The footprint of a scene: WRS-2 ``"042036"``, MGRS ``"T11SKU"`` or ``"grid:…"``.

    Args:
        scene_id: A product id (Landsat, HLS, Sentinel-2) or any name.
        crs: The raster's CRS (rasterio, pyproj, EPSG string or WKT), for the grid id.
        transform: Its affine transform (an ``Affine`` or 6 numbers), for the grid id.
        shape: Its ``(height, width)``, for the grid id.

    Returns:
        The WRS-2 or MGRS id the product id names; else the grid's id, stable for the same
        inputs (None parts included).
    """
    return named_footprint(scene_id) or grid_footprint(crs, transform, shape)


def raster_footprint(path: str | Path, scene_id: str | None = None) -> str:
    """:func:`footprint_id` of a raster, its grid read from the header only."""
    from kelpseg.io.raster import open_raster

    named = named_footprint(scene_id)
    if named:
        return named
    with open_raster(path) as src:
        return grid_footprint(src.crs, src.transform, (src.height, src.width))
