"""Post-processing of one tile's kelp probabilities into a mask (the ``postprocess`` config).

Pure functions on ``(H, W)`` arrays (scipy.ndimage), every step off by default: Gaussian
smoothing of the probabilities, binary opening / closing with a disk radius, removal of small
objects, filling of small holes, land masking by DEM > 0. Missing input pixels stay out of the
smoothing and the objects and are 255 (nodata) in the mask :func:`apply` returns.
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


def apply(
    proba: np.ndarray, raw: np.ndarray, cfg: PostprocessConfig, threshold: float
) -> np.ndarray:
    """One tile's uint8 mask: smooth, threshold, land mask, open, close, drop, fill; 255 where
    the input is missing."""
    missing = missing_pixels(raw)
    p = smooth(proba, cfg.smooth_sigma, ~missing)
    mask = (p >= np.asarray(threshold, dtype=p.dtype)) & ~missing
    if cfg.land_mask:
        mask &= ~land(raw)
    mask = opening(mask, cfg.open_radius)
    mask = closing(mask, cfg.close_radius)
    mask = remove_small(mask, cfg.min_object_px)
    mask = fill_holes(mask, cfg.fill_holes_px) & ~missing
    if cfg.land_mask:
        mask &= ~land(raw)
    out = mask.astype(np.uint8)
    out[missing] = MASK_NODATA
    return out
