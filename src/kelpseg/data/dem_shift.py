"""DEM misregistration: estimate it against the coastline seen in the image, and undo it.

Used by ``kelpseg stats`` (the ``dem_shift_*`` columns), the training cache, AOI grouping and
prediction. The land seen in the spectral bands (MNDWI < 0) is cross-correlated (one FFT)
with the DEM's land (DEM > 0) over shifts of up to :data:`SHIFT_RADIUS` px. The best shift is
``(dem_shift_x, dem_shift_y)``, in the sense "the DEM's content sits this many px right / down
of the image"; its confidence measures how much worse every clearly different shift (2 px or
more away) fits, per coastline pixel.

The spectral land map is used wherever the surface can be seen: not missing, not saturated,
and either clear in the QA band or, under a QA flag, not opaque (a cloud mask also flags bright
sand, surf, glint and thin haze, and those pixels still show which side of the coast they are
on). Missing pixels are -32768 in every band, the DEM included: they are holes, compared on
neither side, so no shift gains or loses by moving pixels onto them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
from scipy import fft

from kelpseg.io.tiles import DEM_INDEX, NODATA, QA_INDEX

SATURATED_DN = 32767
SHIFT_RADIUS = 8
SHIFT_MIN_CONFIDENCE = 0.25
"""Confidence from which a DEM shift is trusted (reported as ``dem_shifted``, corrected)."""
MIN_COAST_PX = 20
SCALE = 0.0000275  # reflectance per DN (Landsat C2 L2)
HOT_OPAQUE_DN = 0.18 / SCALE
"""Haze-optimized transform ``Blue - 0.5 Red - 0.08 > 0`` (Zhang et al. 2002, a Fmask test) on
C2 L2 reflectance ``DN * SCALE - 0.2``, in DN: ``Blue - 0.5 Red > 0.18 / SCALE``. Above it a
pixel is cloud or haze thick enough to hide the surface; clear water, soil, vegetation and
sand, even flagged by the QA band, stay below."""
CLOUD_SWIR_DN = (0.1 + 0.2) / SCALE
"""SWIR1 reflectance 0.1 in DN. Cloud reflects SWIR1 strongly (0.2-0.5); white water and sun
glint, bright in the visible too, stay darker because water absorbs SWIR1."""

SWIR, NIR, RED, GREEN, BLUE = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class TileMaps:
    """Boolean pixel maps of one tile shared by the detectors.

    Attributes:
        raw: The ``(7, H, W)`` int16 tile.
        valid: Clear (QA 0), no band missing, no band saturated.
        visible: The surface can be seen: no band missing or saturated, and QA 0 or, under a
            QA flag, not opaque (opaque: haze-optimized transform above
            :data:`HOT_OPAQUE_DN` and SWIR1 above :data:`CLOUD_SWIR_DN`).
        missing: A reflectance band is -32768.
        saturated: A reflectance band is at the int16 maximum.
        bad: QA != 0 or a band missing.
        land: Spectral land, MNDWI < 0 (Green < SWIR1; the reflectance offset cancels).
        dem_land: DEM > 0.
    """

    raw: np.ndarray
    valid: np.ndarray
    visible: np.ndarray
    missing: np.ndarray
    saturated: np.ndarray
    bad: np.ndarray
    land: np.ndarray
    dem_land: np.ndarray


def tile_maps(raw: np.ndarray) -> TileMaps:
    """The pixel maps of a raw ``(7, H, W)`` int16 tile."""
    spec = raw[:5]
    missing = spec.min(axis=0) == NODATA
    saturated = spec.max(axis=0) == SATURATED_DN
    flagged = raw[QA_INDEX] != 0
    usable = ~missing & ~saturated
    opaque = np.zeros_like(flagged)
    if flagged.any():  # the tests only where the QA band flags something
        blue, red = raw[BLUE][flagged].astype(np.int32), raw[RED][flagged]
        hot = 2 * blue - red > 2 * HOT_OPAQUE_DN  # Blue - 0.5 Red, in integers
        opaque[flagged] = hot & (raw[SWIR][flagged] > CLOUD_SWIR_DN)
    return TileMaps(
        raw=raw,
        valid=usable & ~flagged,
        visible=usable & ~opaque,
        missing=missing,
        saturated=saturated,
        bad=flagged | missing,
        land=raw[GREEN] < raw[SWIR],
        dem_land=raw[DEM_INDEX] > 0,
    )


@dataclass(frozen=True)
class ShiftEstimate:
    """A DEM misregistration: the DEM's content sits ``dx`` px right and ``dy`` px down."""

    dx: int = 0
    dy: int = 0
    confidence: float = 0.0

    @property
    def trusted(self) -> bool:
        """Confident enough to act on."""
        return self.confidence >= SHIFT_MIN_CONFIDENCE


def boundary(m: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Pixels with a 4-neighbour of the other value (both sides of every edge).

    With ``valid``, only edges between two valid pixels count (a hole is no coast).
    """
    out = np.zeros_like(m)
    d = m[1:] != m[:-1]
    if valid is not None:
        d &= valid[1:] & valid[:-1]
    out[1:] |= d
    out[:-1] |= d
    d = m[:, 1:] != m[:, :-1]
    if valid is not None:
        d &= valid[:, 1:] & valid[:, :-1]
    out[:, 1:] |= d
    out[:, :-1] |= d
    return out


def _correlate(a: np.ndarray, b: np.ndarray, radius: int) -> np.ndarray:
    """``c[dy, dx] = sum_p a(p) b(p + (dy, dx))`` for shifts within ``radius`` (FFT)."""
    h, w = a.shape
    n = (fft.next_fast_len(h + radius, real=True), fft.next_fast_len(w + radius, real=True))
    c = fft.irfft2(np.conj(fft.rfft2(a, n)) * fft.rfft2(b, n), n)
    idx = np.arange(-radius, radius + 1)
    return c[np.ix_(idx % n[0], idx % n[1])]


@cache
def _far(radius: int) -> np.ndarray:
    """``far[i, j, y, x]``: shift ``(y, x)`` is 2 px or more from shift ``(i, j)``."""
    k = np.arange(2 * radius + 1)
    dy = np.abs(k[:, None, None, None] - k[None, None, :, None])
    dx = np.abs(k[None, :, None, None] - k[None, None, None, :])
    return np.maximum(dy, dx) >= 2


def estimate_dem_shift(maps: TileMaps, radius: int = SHIFT_RADIUS) -> ShiftEstimate:
    """Estimate the DEM's misregistration against the coastline seen in the image.

    Args:
        maps: The tile's pixel maps.
        radius: Largest shift searched, in px.

    Returns:
        The best shift and its confidence in [0, 1]: 0 when the tile shows no usable coast
        (no land, no water, or the coast hidden by clouds), about 1 when every shift 2 px or
        more away disagrees on one more pixel per coastline pixel.
    """
    h, w = maps.visible.shape
    if min(h, w) <= 4 * radius:
        return ShiftEstimate()
    dem = maps.dem_land
    use = maps.visible.copy()
    use[:radius] = use[-radius:] = False
    use[:, :radius] = use[:, -radius:] = False
    n_coast = int(np.count_nonzero(boundary(dem, ~maps.missing) & use))
    n_land = int(np.count_nonzero(maps.land & use))
    if n_coast < MIN_COAST_PX or n_land == 0 or n_land == int(np.count_nonzero(use)):
        return ShiftEstimate()
    a = ((maps.land.view(np.int8) * np.int8(2) - np.int8(1)) * use).astype(np.float32)
    b = (dem.view(np.int8) * np.int8(2) - np.int8(1)).astype(np.float32)
    n_use = float(np.count_nonzero(use))
    if maps.missing.any():
        # Missing pixels are -32768 in every band, the DEM included: a hole, not sea. Compare
        # only pairs valid in both, and count disagreements per compared pair, so that no
        # shift wins or loses for moving pixels onto or off the holes.
        b[maps.missing] = 0
        pairs = _correlate(use.astype(np.float32), (~maps.missing).astype(np.float32), radius)
        pairs = np.maximum(pairs, 1.0)
        disagree = (pairs - _correlate(a, b, radius)) / pairs * n_use  # x2, as if no holes
    else:
        disagree = n_use - _correlate(a, b, radius)  # disagreeing pixels, x2
    iy, ix = np.unravel_index(int(np.argmin(disagree)), disagree.shape)
    margin = (disagree[_far(radius)[iy, ix]].min() - disagree[iy, ix]) / (2.0 * n_coast)
    return ShiftEstimate(int(ix - radius), int(iy - radius), float(np.clip(margin, 0, 1)))


def shift_dem(dem: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Undo a DEM shift: move the content ``dx`` px left and ``dy`` px up, edges repeated.

    Args:
        dem: ``(..., H, W)`` DEM (any dtype).
        dx: Estimated shift to the right, as in ``dem_shift_x``.
        dy: Estimated shift down, as in ``dem_shift_y``.

    Returns:
        The realigned DEM, same shape and dtype.
    """
    if dx == 0 and dy == 0:
        return dem
    h, w = dem.shape[-2:]
    rows = np.clip(np.arange(h) + dy, 0, h - 1)
    cols = np.clip(np.arange(w) + dx, 0, w - 1)
    return dem[..., rows[:, None], cols[None, :]]


def correct_dem(raw: np.ndarray, estimate: ShiftEstimate | None = None) -> np.ndarray:
    """A raw tile with its DEM band realigned (a copy), or ``raw`` itself when not needed.

    Args:
        raw: ``(7, H, W)`` int16 tile.
        estimate: A known shift; estimated from the tile when None. Untrusted estimates
            (confidence below :data:`SHIFT_MIN_CONFIDENCE`) leave the tile unchanged.
    """
    est = estimate if estimate is not None else estimate_dem_shift(tile_maps(raw))
    if not est.trusted or (est.dx == 0 and est.dy == 0):
        return raw
    out = raw.copy()
    out[DEM_INDEX] = shift_dem(raw[DEM_INDEX], est.dx, est.dy)
    return out


def recorded_shift(row: Mapping[str, object]) -> ShiftEstimate:
    """The DEM shift ``kelpseg stats`` recorded for a tile (a ``tile_stats.csv`` row).

    For the training cache and other readers of raw tiles:
    ``correct_dem(raw, recorded_shift(row))`` realigns the DEM when the shift is trusted.
    """

    def num(key: str) -> float:
        v = row.get(key, 0)
        return 0.0 if v is None or pd.isna(v) else float(v)

    return ShiftEstimate(
        int(num("dem_shift_x")), int(num("dem_shift_y")), num("dem_shift_confidence")
    )
