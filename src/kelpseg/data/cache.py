"""The packed tile cache: every training tile decoded once into memory-mapped arrays.

``images.npy`` holds ``(N, 7, H, W)`` int16 digital numbers as stored (-32768 kept, so the
on-device feature pipeline sees exactly the file's values), ``masks.npy`` ``(N, H, W)`` uint8.
A manifest of file sizes and modification times lets a second run reuse the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from kelpseg.io import BatchReport, TileRef
from kelpseg.io.raster import atomic_write_text
from kelpseg.io.tiles import DEM_INDEX


@dataclass
class PackedTiles:
    """Memory-mapped images and masks with their tile ids (row order)."""

    tile_ids: list[str]
    images: np.ndarray
    masks: np.ndarray

    def row(self, tile_ids: list[str]) -> np.ndarray:
        """Row numbers of ``tile_ids``."""
        lookup = {t: i for i, t in enumerate(self.tile_ids)}
        return np.array([lookup[t] for t in tile_ids], dtype=np.int64)


def _fingerprint(refs: list[TileRef], shifts: dict[str, tuple[int, int]]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(sorted(shifts.items())).encode())
    for r in refs:
        for p in (r.image, r.mask):
            if p is not None:
                st = p.stat()
                h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def open_cache(folder: Path) -> PackedTiles:
    """Open an existing cache read-only."""
    ids = (folder / "tile_ids.txt").read_text().split()
    images = np.load(folder / "images.npy", mmap_mode="r")
    masks = np.load(folder / "masks.npy", mmap_mode="r")
    return PackedTiles(ids, images, masks)


def build_cache(
    refs: list[TileRef],
    folder: Path,
    size: int = 350,
    dem_shifts: dict[str, tuple[int, int]] | None = None,
) -> PackedTiles:
    """Decode ``refs`` (valid training tiles with masks) into ``folder``, or reuse it.

    Args:
        refs: The tiles.
        folder: Cache folder.
        size: Tile side.
        dem_shifts: Detected DEM shifts ``(dx, dy)`` by tile id, undone while packing
            (``data.correct_dem_shift``), so the network sees the DEM where the image is.
    """
    from kelpseg.data.dem_shift import shift_dem
    from kelpseg.data.stats import iter_tiles

    shifts = {t: s for t, s in (dem_shifts or {}).items() if s != (0, 0)}

    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    key = _fingerprint(refs, shifts)
    if manifest.is_file() and json.loads(manifest.read_text()).get("key") == key:
        return open_cache(folder)
    manifest.unlink(missing_ok=True)
    n = len(refs)
    images = open_memmap(folder / "images.npy", mode="w+", dtype=np.int16, shape=(n, 7, size, size))
    masks = open_memmap(folder / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    report = BatchReport("cache")
    ids = []
    for i, (ref, raw, mask) in enumerate(iter_tiles(refs, size, report, desc="cache")):
        if ref.tile_id in shifts:
            raw[DEM_INDEX] = shift_dem(raw[DEM_INDEX], *shifts[ref.tile_id])
        images[i], masks[i] = raw, mask
        ids.append(ref.tile_id)
    if len(ids) != n:
        report.finish()
        raise RuntimeError(f"cache: {n - len(ids)} tile(s) became unreadable; run again")
    images.flush()
    masks.flush()
    del images, masks
    atomic_write_text(folder / "tile_ids.txt", "\n".join(ids) + "\n")
    atomic_write_text(manifest, json.dumps({"key": key, "n": n, "size": size}))
    return open_cache(folder)
