"""A cheap spectral check that a tile's bands are in the expected order.

Surface reflectance follows physics whatever the place: over open water the infrared bands
(NIR, SWIR1) are darker than the visible ones (Green, Blue); over land NIR is brighter than
the visible bands, and vegetation and soil reflect more NIR than Red. A tile stacked in another
order (Landsat's own Blue, Green, Red, NIR, SWIR1, say) contradicts these, and the network then
answers nonsense without a word. Each relation gives a signed margin from the tile's median
(or upper-quartile) pixel, robust to glint, haze, surf and kelp; the check speaks only when the
margins add up to a clear contradiction.
"""

from __future__ import annotations

import numpy as np

from kelpseg.io.tiles import BAND_NAMES, DEM_INDEX, NODATA, QA_INDEX, SPECTRAL

SCALE, OFFSET = 2.75e-05, -0.2  # Landsat C2 L2: reflectance = DN * SCALE + OFFSET
MARGIN = 0.01
"""Reflectance difference a relation must show to count as a vote (about 360 DN)."""
MIN_PIXELS = 50
"""Fewest water (or land) pixels a vote is taken on."""
SUBSAMPLE_FROM = 128
"""Tiles with both sides at least this long vote on every second pixel of every second row
(medians of ~30,000 pixels on a 350 px tile: the same answer at a quarter of the cost)."""

SWIR1, NIR, RED, GREEN, BLUE = range(len(SPECTRAL))


def _rho(raw: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """``(5, N)`` reflectance of the picked pixels."""
    return raw[: len(SPECTRAL)][:, pick].astype(np.float32) * SCALE + OFFSET


def band_order_votes(raw: np.ndarray) -> list[tuple[float, float]]:
    """``(margin, weight)`` of each expected relation; a positive margin is as expected.

    Water (DEM <= 0 or missing, QA clear): median of mean(Green, Blue) - mean(NIR, SWIR1).
    Land (DEM > 0, QA clear): median of NIR - mean(Green, Blue), and the 75th percentile of
    NIR - Red (vegetation and soil; snow and lakes are rarely the majority of a coast). Each
    relation weighs by its share of the clear pixels, so a thin strip of mixed coastal pixels
    cannot outvote a sea.
    """
    spectral = raw[: len(SPECTRAL)]
    valid = ((spectral != NODATA) & (spectral < 32767)).all(axis=0)
    clear = valid & (raw[QA_INDEX] == 0)
    dem = raw[DEM_INDEX]
    water = clear & ((dem <= 0) | (dem == NODATA))
    land = clear & (dem > 0)
    n_water, n_land = int(water.sum()), int(land.sum())
    votes = []
    if n_water >= MIN_PIXELS:
        r = _rho(raw, water)
        w = n_water / (n_water + n_land)
        votes.append((float(np.median((r[GREEN] + r[BLUE]) / 2 - (r[NIR] + r[SWIR1]) / 2)), w))
    if n_land >= MIN_PIXELS:
        r = _rho(raw, land)
        w = n_land / (n_water + n_land)
        votes.append((float(np.median(r[NIR] - (r[GREEN] + r[BLUE]) / 2)), w))
        votes.append((float(np.percentile(r[NIR] - r[RED], 75)), w))
    return votes


def check_band_order(raw: np.ndarray) -> str | None:
    """A one-line warning when a raw ``(7, H, W)`` tile looks stacked in the wrong order.

    Also warns about a QA band holding values other than 0/1/-32768 (e.g. Landsat's bit-packed
    ``QA_PIXEL``). Returns None for a plausible tile. The caller names the file.
    """
    problems = []
    qa = raw[QA_INDEX]
    odd = np.unique(qa[(qa != 0) & (qa != 1) & (qa != NODATA)])
    if odd.size:
        problems.append(
            f"QA band holds values other than 0/1/-32768 ({odd[:5].tolist()}; a bit-packed "
            "QA_PIXEL?): expected 0 clear, 1 cloud"
        )
    step = 2 if min(raw.shape[1:]) >= SUBSAMPLE_FROM else 1
    votes = band_order_votes(raw[:, ::step, ::step])
    against = sum(v < -MARGIN for v, _ in votes)
    weight = sum(w for _, w in votes)
    if against and sum(v * w for v, w in votes) < -MARGIN * weight:
        problems.append(
            f"bands look out of order (expected {','.join(BAND_NAMES)}): over water NIR/SWIR1 "
            "should be darker than Green/Blue and over land NIR brighter than Red/Green/Blue; "
            f"{against} of {len(votes)} checks disagree"
        )
    return "; ".join(problems) or None
