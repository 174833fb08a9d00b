"""Reading and validating competition-format tiles and masks.

A tile is a 7-band int16 GeoTIFF: SWIR1, NIR, Red, Green, Blue, QA (0 clear, 1 bad), DEM.
``-32768`` marks a missing pixel in any band; a file that declares another nodata value has
those pixels turned into ``-32768`` when it is read. A pixel is missing for prediction when any
reflectance band is missing there (:func:`missing_pixels`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.errors import RasterioError

from kelpseg.io.errors import TileError, first_line
from kelpseg.io.raster import Georef, georef_of, open_raster

BAND_NAMES: tuple[str, ...] = ("SWIR1", "NIR", "Red", "Green", "Blue", "QA", "DEM")
SPECTRAL: tuple[str, ...] = BAND_NAMES[:5]
QA_INDEX = 5
DEM_INDEX = 6
NODATA = -32768
TILE_SIZE = 350
MASK_NODATA = 255
"""Value of a predicted mask's pixels whose input was missing (declared as the file's nodata)."""


def _open_read(path: Path) -> tuple[np.ndarray, Georef, tuple[float | None, ...]]:
    if not path.exists():
        raise TileError(path, "not found")
    if path.is_dir():
        raise TileError(path, "is a folder, not a raster file")
    try:
        with open_raster(path) as src:
            return src.read(), georef_of(src), tuple(src.nodatavals)
    except FileNotFoundError as err:
        raise TileError(path, "not found") from err
    except (RasterioError, OSError, ValueError) as err:
        msg = first_line(err)
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
    arr, georef, nodata = _open_read(path)
    if arr.shape[0] != len(BAND_NAMES):
        raise TileError(
            path, f"expected {len(BAND_NAMES)} bands {BAND_NAMES}, found {arr.shape[0]}"
        )
    if arr.dtype != np.int16:
        raise TileError(path, f"expected int16 digital numbers, found {arr.dtype}")
    if size is not None and arr.shape[1:] != (size, size):
        raise TileError(path, f"expected {size}x{size} pixels, found {arr.shape[2]}x{arr.shape[1]}")
    _declared_nodata_to_missing(arr, nodata)
    if (arr[:5] == NODATA).all():
        raise TileError(path, "every reflectance pixel is missing (-32768)")
    qa = arr[QA_INDEX]
    bad_qa = (qa != 0) & (qa != 1) & (qa != NODATA)
    if bad_qa.any():
        raise TileError(
            path, f"QA band holds values other than 0/1/-32768: {np.unique(qa[bad_qa])[:5]}"
        )
    return arr, georef


def _declared_nodata_to_missing(arr: np.ndarray, nodata: tuple[float | None, ...]) -> None:
    """Turn pixels equal to a band's declared nodata value into ``-32768``, in place.

    A declared value that is also valid data is left alone in that band: 0 or 1 in QA (clear /
    bad), 0 in the DEM (sea level). Values an int16 band cannot hold are ignored.
    """
    for band, value in enumerate(nodata):
        if value is None or not np.isfinite(value) or value != int(value):
            continue
        value = int(value)
        if value == NODATA or not -32768 <= value <= 32767:
            continue
        if (band == QA_INDEX and value in (0, 1)) or (band == DEM_INDEX and value == 0):
            continue
        arr[band][arr[band] == value] = NODATA


def missing_pixels(raw: np.ndarray) -> np.ndarray:
    """``(H, W)`` True where any reflectance band of a raw tile is missing (``-32768``)."""
    return (raw[: len(SPECTRAL)] == NODATA).any(axis=0)


def to_float(raw: np.ndarray) -> np.ndarray:
    """int16 digital numbers -> float32 with NaN at missing (-32768) pixels."""
    out = raw.astype(np.float32)
    out[raw == NODATA] = np.nan
    return out


def read_mask(
    path: str | Path, shape: tuple[int, int] | None = None, *, allow_nodata: bool = False
) -> np.ndarray:
    """Read and validate a kelp mask: one band of 0/1.

    Args:
        path: A ``*_kelp.tif``.
        shape: Expected ``(H, W)``, usually the tile's.
        allow_nodata: Accept the nodata value of a predicted mask (255, or the file's declared
            nodata) and read it as 0 = not kelp, as scoring counts it.

    Returns:
        ``(H, W)`` uint8 array of 0 and 1.
    """
    path = Path(path)
    arr, _, nodata = _open_read(path)
    if arr.shape[0] != 1:
        raise TileError(path, f"a mask has 1 band, found {arr.shape[0]}")
    mask = arr[0]
    if shape is not None and mask.shape != tuple(shape):
        raise TileError(
            path, f"mask is {mask.shape[1]}x{mask.shape[0]}, its tile is {shape[1]}x{shape[0]}"
        )
    if allow_nodata:
        for value in {MASK_NODATA, nodata[0]} - {None, 0, 1}:
            mask = np.where(mask == value, 0, mask)
    values = np.unique(mask)
    if not np.isin(values, (0, 1)).all():
        raise TileError(path, f"mask values must be 0/1, found {values[:8].tolist()}")
    return mask.astype(np.uint8, copy=False)
