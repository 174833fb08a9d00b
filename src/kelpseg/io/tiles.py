"""Reading and validating competition-format tiles and masks.

A tile is a 7-band int16 GeoTIFF: SWIR1, NIR, Red, Green, Blue, QA (0 clear, 1 bad), DEM.
``-32768`` marks a missing pixel in any band.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.errors import RasterioError

from kelpseg.io.errors import TileError
from kelpseg.io.raster import Georef, georef_of, open_raster

BAND_NAMES: tuple[str, ...] = ("SWIR1", "NIR", "Red", "Green", "Blue", "QA", "DEM")
SPECTRAL: tuple[str, ...] = BAND_NAMES[:5]
QA_INDEX = 5
DEM_INDEX = 6
NODATA = -32768
TILE_SIZE = 350


def _open_read(path: Path) -> tuple[np.ndarray, Georef]:
    try:
        with open_raster(path) as src:
            return src.read(), georef_of(src)
    except FileNotFoundError as err:
        raise TileError(path, "file not found") from err
    except (RasterioError, OSError, ValueError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TileError(path, f"not a readable raster (truncated or not a TIFF?): {msg}") from err


def read_tile(path: str | Path, size: int | None = None) -> np.ndarray:
    """Read and validate a satellite tile (see :func:`read_tile_georef`)."""
    return read_tile_georef(path, size)[0]


def read_tile_georef(path: str | Path, size: int | None = None) -> tuple[np.ndarray, Georef]:
    """Read and validate a satellite tile, and its georeference, in one open.

    Args:
        path: A ``*_satellite.tif`` (or any 7-band int16 raster).
        size: Expected side length in pixels; ``None`` accepts any shape (scenes).

    Returns:
        The raw ``(7, H, W)`` int16 array (``-32768`` at missing pixels) and its georeference.

    Raises:
        TileError: naming the file and what is wrong with it.
    """
    path = Path(path)
    arr, georef = _open_read(path)
    if arr.shape[0] != len(BAND_NAMES):
        raise TileError(
            path, f"expected {len(BAND_NAMES)} bands {BAND_NAMES}, found {arr.shape[0]}"
        )
    if arr.dtype != np.int16:
        raise TileError(path, f"expected int16 digital numbers, found {arr.dtype}")
    if size is not None and arr.shape[1:] != (size, size):
        raise TileError(path, f"expected {size}x{size} pixels, found {arr.shape[2]}x{arr.shape[1]}")
    if (arr[:5] == NODATA).all():
        raise TileError(path, "every reflectance pixel is missing (-32768)")
    qa = arr[QA_INDEX]
    bad_qa = (qa != 0) & (qa != 1) & (qa != NODATA)
    if bad_qa.any():
        raise TileError(
            path, f"QA band holds values other than 0/1/-32768: {np.unique(qa[bad_qa])[:5]}"
        )
    return arr, georef


def to_float(raw: np.ndarray) -> np.ndarray:
    """int16 digital numbers -> float32 with NaN at missing (-32768) pixels."""
    out = raw.astype(np.float32)
    out[raw == NODATA] = np.nan
    return out


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read and validate a kelp mask: one band of 0/1.

    Args:
        path: A ``*_kelp.tif``.
        shape: Expected ``(H, W)``, usually the tile's.

    Returns:
        ``(H, W)`` uint8 array of 0 and 1.
    """
    path = Path(path)
    arr, _ = _open_read(path)
    if arr.shape[0] != 1:
        raise TileError(path, f"a mask has 1 band, found {arr.shape[0]}")
    mask = arr[0]
    if shape is not None and mask.shape != tuple(shape):
        raise TileError(
            path, f"mask is {mask.shape[1]}x{mask.shape[0]}, its tile is {shape[1]}x{shape[0]}"
        )
    values = np.unique(mask)
    if not np.isin(values, (0, 1)).all():
        raise TileError(path, f"mask values must be 0/1, found {values[:8].tolist()}")
    return mask.astype(np.uint8, copy=False)
