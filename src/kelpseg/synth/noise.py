"""Smooth random fields, the building block of every synthetic structure."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _bspline_taps(n: int, scale: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """First node index ``(n,)`` and the 4 cubic B-spline weights ``(4, n)`` of each pixel."""
    pos = np.arange(n) / scale + offset
    base = np.floor(pos).astype(np.intp)
    t = (pos - base).astype(np.float32)
    weights = np.stack(
        [(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3]
    )
    return base, weights / 6.0


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-variance noise with features about ``scale`` pixels across.

    White noise on a coarse grid (one node per ``scale`` px) is interpolated by a separable
    cubic B-spline, four taps per axis: far cheaper than a large Gaussian blur, and free of
    BLAS threading (which only slows such small products down).  Small scales use a Gaussian
    blur of white noise.

    Args:
        rng: Random generator.
        shape: ``(H, W)`` of the output.
        scale: Feature size in pixels (>= 1).

    Returns:
        float32 ``(H, W)`` field.
    """
    scale = max(float(scale), 1.0)
    if scale < 8.0:
        field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=0.45 * scale)
        return _standardize(field)
    by, wy = _bspline_taps(shape[0], scale, float(rng.random()))
    bx, wx = _bspline_taps(shape[1], scale, float(rng.random()))
    coarse = rng.standard_normal((int(by[-1]) + 4, int(bx[-1]) + 4), dtype=np.float32)
    rows = sum(wy[k][:, None] * coarse[by + k] for k in range(4))
    return _standardize(sum(rows[:, bx + k] * wx[k][None, :] for k in range(4)))


def _standardize(field: np.ndarray) -> np.ndarray:
    field = field - field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def fbm(
    rng: np.random.Generator,
    shape: tuple[int, int],
    scale: float,
    octaves: int = 3,
    persistence: float = 0.5,
) -> np.ndarray:
    """Fractal (multi-octave) smooth noise, zero mean and unit variance.

    Args:
        rng: Random generator.
        shape: ``(H, W)`` of the output.
        scale: Size of the largest features in pixels.
        octaves: Number of halvings of the feature size.
        persistence: Amplitude ratio between successive octaves.

    Returns:
        float32 ``(H, W)`` field.
    """
    total = np.zeros(shape, np.float32)
    amp = 1.0
    for k in range(octaves):
        total += amp * smooth_noise(rng, shape, scale / 2**k)
        amp *= persistence
    return _standardize(total)


def smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 below ``lo``, 1 above ``hi``, a smooth cubic ramp between."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
