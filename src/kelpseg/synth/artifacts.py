"""Sensor and labelling artefacts: SLC-off stripes, scene edges, saturation, wrong masks."""

from __future__ import annotations

import numpy as np

from kelpseg.synth.noise import fbm


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def slc_off_stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Landsat-7 SLC-off gaps: a scan-pair period of diagonal stripes, widening into wedges.

    A gap is about 1 px wide at the scene centre and about 14 px at the scene's sides; a tile
    sees a stretch of that wedge (width changing across the tile), and the ends of the scans
    make the gap borders zig-zag. Wide-gap tiles lose over 40 % of their pixels.
    """
    yy, xx = _grid(size)
    theta = np.deg2rad(rng.uniform(10, 35)) * rng.choice((-1, 1))
    across = -xx * np.sin(theta) + yy * np.cos(theta)
    along = xx * np.cos(theta) + yy * np.sin(theta)
    period = rng.uniform(26, 34)
    near, far = np.sort(rng.uniform(1.0, 13.0, 2))
    far = min(far, near + 4.0)  # a 350 px tile is ~6 % of a scene: the wedge widens slowly
    t = along / size if rng.random() < 0.5 else 1 - along / size
    width = np.clip(near + (far - near) * t, 1, period / 2)
    tooth = rng.uniform(8, 20)  # scan ends: a saw-tooth wobble of the gap's borders
    zigzag = rng.uniform(0, 1.2) * (2 * np.abs((along / tooth) % 1 - 0.5) - 0.5)
    return (across + zigzag + rng.uniform(0, period)) % period < width


def scene_edge(rng: np.random.Generator, size: int, fraction: float) -> np.ndarray:
    """Pixels outside the scene footprint: a half-plane covering ``fraction`` of the tile."""
    if fraction <= 0:
        return np.zeros((size, size), bool)
    yy, xx = _grid(size)
    phi = rng.uniform(0, 2 * np.pi)
    u = xx * np.cos(phi) + yy * np.sin(phi)
    return u < np.quantile(u, fraction)


def saturate(rng: np.random.Generator, dn: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pick the brightest valid pixels of one or two bands to saturate.

    Args:
        rng: Random generator.
        dn: ``(5, H, W)`` digital numbers.
        valid: Pixels that may saturate.

    Returns:
        ``(5, H, W)`` boolean mask of saturated band values.
    """
    out = np.zeros(dn.shape, bool)
    if not valid.any():
        return out
    bands = rng.choice(5, size=int(rng.integers(1, 3)), replace=False)
    k = min(int(rng.integers(5, 80)), int(valid.sum()))
    for b in bands:
        flat = np.where(valid, dn[b], -np.inf).ravel()
        top = np.argpartition(flat, -k)[-k:]
        out[b].flat[top] = True
    return out


def corrupt_mask(
    rng: np.random.Generator, kind: str, mask: np.ndarray, land: np.ndarray
) -> tuple[np.ndarray, str]:
    """A wrong label of the planned kind, falling back to one that the tile allows.

    Args:
        rng: Random generator.
        kind: ``kelp_on_land``, ``shifted`` or ``rectangle``.
        mask: The true mask.
        land: True land pixels.

    Returns:
        The corrupted mask and the kind actually applied.
    """
    size = mask.shape[0]
    if kind == "shifted" and mask.sum() >= 10:
        d = int(rng.integers(size // 10, size // 4 + 1))
        dy, dx = d * rng.choice((-1, 1)), int(rng.integers(-d, d + 1))
        out = np.zeros_like(mask)
        src = mask[max(0, -dy) : size - max(0, dy), max(0, -dx) : size - max(0, dx)]
        out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
        return out, kind
    if kind in ("shifted", "kelp_on_land") and land.sum() >= 30:
        blob = fbm(rng, mask.shape, size / 6, octaves=2)
        thr = np.quantile(blob[land], 1 - rng.uniform(0.2, 0.5))
        return mask | ((blob > thr) & land).astype(mask.dtype), "kelp_on_land"
    h, w = (int(rng.integers(size // 5, size // 2 + 1)) for _ in range(2))
    y0, x0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    out = mask.copy()
    out[y0 : y0 + h, x0 : x0 + w] = 1
    return out, "rectangle"
