"""Georeference handling and atomic GeoTIFF writing.

Outputs keep the input's CRS and transform, or carry none when the input had none:
kelpseg never invents a georeference.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning


@dataclass(frozen=True)
class Georef:
    """Where a raster sits on Earth; both fields None for an ungeoreferenced tile."""

    crs: CRS | None = None
    transform: Affine | None = None

    @property
    def is_georeferenced(self) -> bool:
        return self.crs is not None or self.transform is not None


def georef_of(src: rasterio.io.DatasetReader) -> Georef:
    """The georeference of an open dataset, None fields where it has none."""
    transform = src.transform
    if transform == Affine.identity() and src.crs is None and not src.gcps[0]:
        return Georef()
    return Georef(crs=src.crs, transform=transform)


@contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.io.DatasetReader]:
    """``rasterio.open`` for reading, quiet about tiles that carry no georeference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            yield src


def read_georef(path: str | Path) -> Georef:
    """The georeference of the raster at ``path``."""
    with open_raster(path) as src:
        return georef_of(src)


def _current_umask() -> int:
    """The process umask: from ``/proc`` where it is there (no change, so thread-safe),
    otherwise by setting it and restoring it at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_beside(path: Path, suffix: str = "") -> Path:
    """A new empty temporary file in ``path``'s folder, with the mode a new file would get;
    its name ends in ``.tmp`` + ``suffix`` (for writers that choose the format by suffix).

    ``mkstemp`` creates files 0600 whatever the umask; the final file must get
    ``0666 & ~umask`` like any file the user creates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())
    finally:
        os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_output(path: str | Path, *, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to: renamed onto ``path`` when the block ends
    normally, removed when it raises. ``keep_suffix``: the temporary name ends in ``path``'s
    suffix too (for writers that pick the format from it)."""
    path = Path(path)
    tmp = temp_beside(path, path.suffix if keep_suffix else "")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def georef_profile(georef: Georef, nodata: float | None) -> dict[str, Any]:
    """The rasterio profile keys for a georeference and nodata; the ones not given are left
    out (a file without CRS or transform is written as such)."""
    found: dict[str, Any] = {}
    if georef.crs is not None:
        found["crs"] = georef.crs
    if georef.transform is not None:
        found["transform"] = georef.transform
    if nodata is not None:
        found["nodata"] = nodata
    return found


def write_raster(
    path: str | Path,
    data: np.ndarray,
    *,
    georef: Georef | None = None,
    nodata: float | None = None,
    band_names: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
    compress: str = "deflate",
) -> Path:
    """Write a GeoTIFF atomically (temporary file in the same folder, then rename).

    Args:
        path: Destination file.
        data: ``(H, W)`` or ``(bands, H, W)`` array; its dtype is the file's dtype.
        georef: CRS and transform to keep; ``None`` writes an ungeoreferenced file.
        nodata: Optional nodata value.
        band_names: Optional band descriptions (shown by GDAL and QGIS).
        tags: Optional dataset-level metadata.
        compress: GDAL compression.

    Returns:
        The written path.
    """
    path = Path(path)
    arr = data[None] if data.ndim == 2 else data
    if arr.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D array, got shape {data.shape}")
    if band_names is not None and len(band_names) != arr.shape[0]:
        raise ValueError(f"{len(band_names)} band names for {arr.shape[0]} bands")
    georef = georef or Georef()
    profile = {
        "driver": "GTiff",
        "height": arr.shape[1],
        "width": arr.shape[2],
        "count": arr.shape[0],
        "dtype": arr.dtype.name,
        "compress": compress,
    }
    if arr.dtype.kind == "f":
        profile["predictor"] = 3
    profile |= georef_profile(georef, nodata)
    with atomic_output(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(arr)
            if band_names is not None:
                for i, name in enumerate(band_names, start=1):
                    dst.set_band_description(i, name)
            if tags:
                dst.update_tags(**tags)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically; the temporary file is removed if the write fails."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)
