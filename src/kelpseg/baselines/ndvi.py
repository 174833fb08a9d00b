"""The NDVI-threshold rule: ``kelp = NDVI >= t`` over water pixels, t fitted on training tiles.

Water means DEM <= 0 or missing, as in the data; the threshold maximises global Dice on the
training tiles. It is the yardstick the demo prints next to the network.
"""

from __future__ import annotations

import numpy as np

from kelpseg.io.tiles import DEM_INDEX, NODATA
from kelpseg.metrics import best_threshold

EDGES = np.linspace(-1.0, 1.0, 401)


def ndvi_water(raw: np.ndarray) -> np.ndarray:
    """NDVI where the DEM says water, -inf elsewhere and at missing pixels."""
    nir, red = raw[1].astype(np.float32), raw[2].astype(np.float32)
    ndvi = (nir - red) / (nir + red + 1e-10)
    dem = raw[DEM_INDEX]
    water = (dem == NODATA) | (dem <= 0)
    ok = water & (raw[1] != NODATA) & (raw[2] != NODATA)
    return np.where(ok, ndvi, -np.inf)


class NdviRule:
    """Fit by accumulating NDVI histograms of kelp and non-kelp pixels, tile by tile."""

    def __init__(self) -> None:
        self.pos = np.zeros(len(EDGES), dtype=np.int64)
        self.neg = np.zeros(len(EDGES), dtype=np.int64)
        self.threshold: float | None = None

    def update(self, raw: np.ndarray, mask: np.ndarray) -> None:
        v = ndvi_water(raw)
        bins = np.clip(np.searchsorted(EDGES, v, side="right") - 1, 0, len(EDGES) - 1)
        valid = np.isfinite(v)
        m = mask.astype(bool)
        # kelp on land / missing pixels is a false negative at every threshold: it cannot
        # change which threshold is best, so only reachable pixels are counted.
        self.pos += np.bincount(bins[valid & m], minlength=len(EDGES))
        self.neg += np.bincount(bins[valid & ~m], minlength=len(EDGES))

    def fit(self) -> float:
        """Choose the threshold with the best training Dice; return it."""
        self.threshold, _ = best_threshold(self.pos, self.neg, EDGES)
        return self.threshold

    def predict(self, raw: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            raise RuntimeError("fit the rule first")
        return (ndvi_water(raw) >= self.threshold).astype(np.uint8)
