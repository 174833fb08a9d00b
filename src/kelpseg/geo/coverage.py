"""What each pixel of a 7-band input tells about the water: the ``coverage`` codes.

0 land, 1 clear water, 2 water not observed (QA = 1: cloud, shadow...), 3 no DEM there (land or
water unknown: outside the DEM's footprint), 255 no data (a reflectance band missing). Water is
DEM <= 0, or DEM missing while the reflectance is valid inside the DEM's footprint (open sea
beyond the DEM's coast), the rule of :mod:`kelpseg.data.groups`. ``kelpseg map`` writes these
codes as ``{id}_coverage.tif`` and counts kelp only on clear water; ``kelpseg timeseries``
reads them to say how much of the water a date observed.
"""

from __future__ import annotations

import numpy as np

from kelpseg.infer.postprocess import land as on_land
from kelpseg.io.tiles import MASK_NODATA, QA_INDEX, missing_pixels

LAND, CLEAR_WATER, CLOUDY_WATER, NO_DEM = 0, 1, 2, 3
NAMES = {
    LAND: "land",
    CLEAR_WATER: "clear water",
    CLOUDY_WATER: "water not observed (QA flag)",
    NO_DEM: "no DEM (land or water unknown)",
    MASK_NODATA: "no data",
}


def coverage_codes(raw: np.ndarray, no_dem: np.ndarray | None = None) -> np.ndarray:
    """``(h, w)`` uint8 coverage codes of raw ``(7, h, w)`` pixels (see the module notes);
    ``no_dem``: pixels outside the DEM's footprint."""
    land = on_land(raw)
    out = np.where(land, LAND, CLEAR_WATER).astype(np.uint8)
    out[~land & (raw[QA_INDEX] == 1)] = CLOUDY_WATER
    if no_dem is not None:
        out[no_dem] = NO_DEM
    out[missing_pixels(raw)] = MASK_NODATA
    return out


def water_ha(areas: dict[int, float]) -> tuple[float, float]:
    """``(water, clear water)`` hectares from the areas of each coverage code."""
    clear = areas.get(CLEAR_WATER, 0.0)
    return clear + areas.get(CLOUDY_WATER, 0.0), clear
