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

from kelpseg.io import NODATA, BatchReport, TileRef
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


def _fingerprint(
    refs: list[TileRef], shifts: dict[str, tuple[int, int]], shape: tuple[int, int]
) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([sorted(shifts.items()), list(shape)]).encode())
    for r in refs:
        for p in (r.image, r.mask):
            if p is not None:
                st = p.stat()
                h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class PackTarget:
    """Cache arrays that another pass over the tiles (``kelpseg stats``) fills row by row."""

    folder: Path
    rows: dict[str, int]  # tile id -> row
    shape: tuple[int, int]

    def put(self, tile_id: str, raw: np.ndarray, mask: np.ndarray, shift: tuple[int, int]) -> None:
        """Write one tile (its DEM shift undone) into its row; safe from worker processes."""
        row = self.rows.get(tile_id)
        if row is None or raw.shape[1:] != self.shape:
            return
        images = np.load(self.folder / "images.npy", mmap_mode="r+")
        masks = np.load(self.folder / "masks.npy", mmap_mode="r+")
        images[row] = _shifted(raw, shift)  # a shared mapping: no flush (msync) per tile
        masks[row] = mask


def _shifted(raw: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    from kelpseg.data.dem_shift import shift_dem

    if tuple(shift) != (0, 0):
        raw = raw.copy()
        raw[DEM_INDEX] = shift_dem(raw[DEM_INDEX], *shift)
    return raw


def start_pack(folder: Path, tile_ids: list[str], shape: tuple[int, int]) -> PackTarget:
    """Empty cache arrays for ``tile_ids``, to be filled by :meth:`PackTarget.put`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)
    n = len(tile_ids)
    open_memmap(folder / "images.npy", mode="w+", dtype=np.int16, shape=(n, 7, *shape)).flush()
    open_memmap(folder / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, *shape)).flush()
    return PackTarget(folder, {t: i for i, t in enumerate(tile_ids)}, shape)


def finish_pack(
    target: PackTarget, refs: list[TileRef], dem_shifts: dict[str, tuple[int, int]]
) -> bool:
    """Seal a cache filled by a stats pass, so :func:`build_cache` reuses it.

    ``refs`` are the tiles the pass read successfully; unless they are every row (in order),
    nothing is sealed and :func:`build_cache` packs the tiles itself. Returns whether sealed.
    """
    ids = [r.tile_id for r in refs]
    if ids != list(target.rows):
        return False
    shifts = {t: s for t, s in dem_shifts.items() if s != (0, 0)}
    key = _fingerprint(refs, shifts, target.shape)
    atomic_write_text(target.folder / "tile_ids.txt", "\n".join(ids) + "\n")
    atomic_write_text(
        target.folder / "manifest.json",
        json.dumps({"key": key, "n": len(ids), "shape": list(target.shape)}),
    )
    return True


def open_cache(folder: Path) -> PackedTiles:
    """Open an existing cache read-only."""
    ids = (folder / "tile_ids.txt").read_text().split()
    images = np.load(folder / "images.npy", mmap_mode="r")
    masks = np.load(folder / "masks.npy", mmap_mode="r")
    return PackedTiles(ids, images, masks)


def build_cache(
    refs: list[TileRef],
    folder: Path,
    size: int | tuple[int, int] = 350,
    dem_shifts: dict[str, tuple[int, int]] | None = None,
) -> PackedTiles:
    """Decode ``refs`` (valid training tiles with masks) into ``folder``, or reuse it.

    Args:
        refs: The tiles.
        folder: Cache folder.
        size: Tile side every tile must have, or ``(height, width)`` to accept any size up to
            it: smaller tiles are padded at the bottom and right with -32768 (missing) and
            mask 0, which the feature pipeline fills like any missing pixel.
        dem_shifts: Detected DEM shifts ``(dx, dy)`` by tile id, undone while packing
            (``data.correct_dem_shift``), so the network sees the DEM where the image is.
    """
    from kelpseg.data.stats import iter_tiles

    shifts = {t: s for t, s in (dem_shifts or {}).items() if s != (0, 0)}

    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.json"
    shape = (size, size) if isinstance(size, int) else tuple(size)
    key = _fingerprint(refs, shifts, shape)
    if manifest.is_file() and json.loads(manifest.read_text()).get("key") == key:
        return open_cache(folder)
    manifest.unlink(missing_ok=True)
    n = len(refs)
    images = open_memmap(folder / "images.npy", mode="w+", dtype=np.int16, shape=(n, 7, *shape))
    masks = open_memmap(folder / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, *shape))
    report = BatchReport("cache")
    ids = []
    check = size if isinstance(size, int) else None
    for i, (ref, raw, mask) in enumerate(iter_tiles(refs, check, report, desc="cache")):
        raw = _shifted(raw, shifts.get(ref.tile_id, (0, 0)))
        h, w = raw.shape[1:]
        if (h, w) != shape:
            if h > shape[0] or w > shape[1]:
                raise ValueError(f"{ref.image}: {w}x{h} px is larger than the cache's {shape}")
            images[i] = NODATA
            masks[i] = 0
        images[i, :, :h, :w], masks[i, :h, :w] = raw, mask
        ids.append(ref.tile_id)
    if len(ids) != n:
        report.finish()
        raise RuntimeError(f"cache: {n - len(ids)} tile(s) became unreadable; run again")
    images.flush()
    masks.flush()
    del images, masks
    atomic_write_text(folder / "tile_ids.txt", "\n".join(ids) + "\n")
    atomic_write_text(manifest, json.dumps({"key": key, "n": n, "shape": list(shape)}))
    return open_cache(folder)
