"""Surface reflectance of the scene's materials and the Landsat C2 L2 digital-number scale.

Every spectrum is a ``(5,)`` array of surface reflectance (rho) in the tile's band order
SWIR1, NIR, Red, Green, Blue.  Digital numbers follow ``rho = DN * 0.0000275 - 0.2``.
"""

from __future__ import annotations

import numpy as np

SCALE = 0.0000275
OFFSET = -0.2
NODATA = -32768
SATURATED = 32767
DN_MIN, DN_MAX = 1, 32766

SENSORS: tuple[str, ...] = ("LT05", "LE07", "LC08", "LC09")
SENSOR_WEIGHTS = np.array([0.3, 0.25, 0.3, 0.15])
SENSOR_YEARS = {
    "LT05": (1984, 2011),
    "LE07": (1999, 2021),  # SLC-off (striped) from 31 May 2003
    "LC08": (2013, 2023),
    "LC09": (2022, 2023),
}
SENSOR_NOISE_DN = {"LT05": 40.0, "LE07": 35.0, "LC08": 20.0, "LC09": 20.0}


def _s(swir: float, nir: float, red: float, green: float, blue: float) -> np.ndarray:
    return np.array([swir, nir, red, green, blue], np.float32)


WATER = _s(0.002, 0.008, 0.02, 0.042, 0.046)  # DN ~7,350 / 7,560 / 8,000 / 8,800 / 8,950
SHALLOW = _s(0.0, 0.002, 0.006, 0.012, 0.008)  # bottom reflectance added near shore
KELP = _s(0.012, 0.095, 0.008, 0.005, 0.0)  # full-canopy increment over water
VEGETATION = _s(0.19, 0.28, 0.045, 0.075, 0.04)  # NIR ~17,500, red ~8,900, SWIR ~14,200
BARE = _s(0.36, 0.32, 0.22, 0.17, 0.12)
SAND = _s(0.42, 0.38, 0.33, 0.29, 0.24)
CLOUD = _s(0.3, 0.44, 0.44, 0.45, 0.46)  # DN 18,200 - 24,000
SURF = _s(0.12, 0.2, 0.22, 0.23, 0.24)  # white water at full intensity
PLUME = _s(0.002, 0.015, 0.04, 0.05, 0.018)  # suspended sediment at full intensity
GLINT = _s(0.75, 0.95, 1.0, 1.0, 1.0)  # relative spectral shape of sun glint


def to_dn(rho: np.ndarray) -> np.ndarray:
    """Reflectance -> float digital numbers (not rounded or clipped)."""
    return (rho - OFFSET) / SCALE
