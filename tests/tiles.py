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
