"""The one mask step: kelp probabilities -> a kelp mask, for tiles and scenes alike.

:func:`to_mask` thresholds the probabilities and applies the ``postprocess`` config: pure
functions on ``(H, W)`` arrays (scipy.ndimage), every step off by default: Gaussian smoothing of
the probabilities, binary opening / closing with a disk radius, removal of small objects,
filling of small holes, land masking. Missing input pixels stay out of the smoothing and the
objects and are 255 (nodata) in the mask. Tiles (:func:`apply`) mask land only with
``land_mask``; scenes (``kelpseg map``) always give land 0 and pixels not observed (water under a
QA flag, outside the DEM) 255, from the coverage layer (:func:`scene_mask`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kelpseg.config import PostprocessConfig
from kelpseg.io.tiles import DEM_INDEX, MASK_NODATA, NODATA, missing_pixels


def disk(radius: int) -> np.ndarray:
    """A disk-shaped structuring element of ``radius`` px."""
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def smooth(proba: np.ndarray, sigma: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Gaussian smoothing (sigma px), normalised so missing pixels do not pull values down."""
    if sigma <= 0:
        return proba
    w = np.ones(proba.shape, np.float32) if valid is None else valid.astype(np.float32)
    num = ndimage.gaussian_filter(np.where(w > 0, proba, 0).astype(np.float32), sigma)
    den = ndimage.gaussian_filter(w, sigma)
    return np.where(den > 1e-6, num / np.maximum(den, 1e-6), proba).astype(np.float32)


def opening(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary opening with a disk (removes specks thinner than the disk)."""
    return ndimage.binary_opening(mask, disk(radius)) if radius > 0 else mask


def closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing with a disk (bridges gaps narrower than the disk); no border effects."""
    if radius <= 0:
        return mask
    padded = np.pad(mask, radius, mode="edge")
    return ndimage.binary_closing(padded, disk(radius))[radius:-radius, radius:-radius]


def remove_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Drop 8-connected objects of fewer than ``min_px`` pixels."""
    if min_px <= 1:
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def fill_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    """Fill 4-connected holes (background not touching the border) under ``max_px`` pixels."""
    if max_px <= 0:
        return mask
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    small = sizes < max_px
    small[0] = False
    return mask | small[labels]


def land(raw: np.ndarray) -> np.ndarray:
    """Pixels on land: DEM > 0 (a missing DEM is not land)."""
    dem = raw[DEM_INDEX]
    return (dem > 0) & (dem != NODATA)


def to_mask(
    proba: np.ndarray,
    threshold: float,
    missing: np.ndarray,
    cfg: PostprocessConfig | None = None,
    *,
    land: np.ndarray | None = None,
    unseen: np.ndarray | None = None,
) -> np.ndarray:
    """A uint8 mask (1 kelp, 0 not, 255 nodata): smooth, threshold, drop ``land`` (0), open,
    close, drop small objects, fill small holes; 255 where ``missing`` or ``unseen``."""
    cfg = cfg or PostprocessConfig()
    off = missing if unseen is None else missing | unseen
    p = smooth(proba, cfg.smooth_sigma, ~missing)
    mask = (p >= np.asarray(threshold, dtype=p.dtype)) & ~off
    if land is not None:
        mask &= ~land
    mask = opening(mask, cfg.open_radius)
    mask = closing(mask, cfg.close_radius)
    mask = remove_small(mask, cfg.min_object_px)
    mask = fill_holes(mask, cfg.fill_holes_px) & ~off
    if land is not None:
        mask &= ~land
    out = mask.astype(np.uint8)
    out[off] = MASK_NODATA
    return out


def apply(
    proba: np.ndarray, raw: np.ndarray, cfg: PostprocessConfig, threshold: float
) -> np.ndarray:
    """One tile's uint8 mask (:func:`to_mask`); land masked by DEM > 0 with ``land_mask``."""
    return to_mask(
        proba, threshold, missing_pixels(raw), cfg, land=land(raw) if cfg.land_mask else None
    )


def scene_mask(
    proba: np.ndarray, coverage: np.ndarray, threshold: float, cfg: PostprocessConfig | None = None
) -> np.ndarray:
    """A scene's uint8 mask (:func:`to_mask`) from its coverage codes
    (:mod:`kelpseg.geo.coverage`): kelp only on clear water, land 0, water not observed and
    pixels outside the DEM 255 (unknown), like missing pixels."""
    from kelpseg.geo.coverage import CLOUDY_WATER, LAND, NO_DEM

    return to_mask(
        proba,
        threshold,
        coverage == MASK_NODATA,
        cfg,
        land=coverage == LAND,
        unseen=(coverage == CLOUDY_WATER) | (coverage == NO_DEM),
    )
