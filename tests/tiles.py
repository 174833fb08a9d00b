"""Tiny tiles made on the fly for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kelpseg.io import write_raster

SIZE = 64


def make_tile(
    rng: np.random.Generator, size: int = SIZE, kelp: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """A plausible raw tile (land on the left, sea on the right) and its mask."""
    img = rng.integers(7000, 9000, size=(7, size, size)).astype(np.int16)
    img[5] = 0
    img[6] = 0
    img[6, :, : size // 4] = 40
    img[6, :, size // 2 :] = -32768
    mask = np.zeros((size, size), np.uint8)
    if kelp:
        mask[size // 3 : size // 2, size // 3 : size // 2] = 1
        img[1][mask == 1] += 3000
    return img, mask


def write_pair(root: Path, tile_id: str, img: np.ndarray, mask: np.ndarray | None) -> None:
    write_raster(root / "train_satellite" / f"{tile_id}_satellite.tif", img)
    if mask is not None:
        write_raster(root / "train_kelp" / f"{tile_id}_kelp.tif", mask)


def packed_folds(n: int = 16):
    """``n`` in-memory 64 px tiles in 2 folds (odd ones carry kelp) and their stats table."""
    import pandas as pd

    from kelpseg.data.cache import PackedTiles

    rng = np.random.default_rng(0)
    pairs = [make_tile(rng, kelp=i % 2 == 1) for i in range(n)]
    ids = [f"T{i:02d}" for i in range(n)]
    packed = PackedTiles(ids, np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    kelp = packed.masks.sum(axis=(1, 2))
    tiles = pd.DataFrame(
        {
            "tile_id": ids,
            "fold": [(i // 2) % 2 for i in range(n)],
            "kelp_pixels": kelp,
            "has_kelp": kelp > 0,
            "kelp_pixels_pct": 100 * kelp / 64**2,
            "qa_ok": True,
            "qa_corrupted_pixels_pct": 0.0,
            "almost_all_water": False,
            "dem_nan_pixels_pct": 50.0,
            "dem_zero_pixels_pct": 25.0,
        }
    )
    return packed, tiles
