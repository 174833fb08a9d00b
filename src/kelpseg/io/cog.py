"""Cloud-Optimized GeoTIFFs written band by band, in bounded memory, atomically.

A :class:`CogWriter` opens a tiled GeoTIFF in a temporary file beside the destination, takes the
raster in row bands (:meth:`CogWriter.write_rows`), and on :meth:`CogWriter.finish` lets GDAL's
COG driver copy it (internal tiling, overviews, compression; GDAL streams block by block) to a
second temporary file that is renamed onto the destination. A failure or a kill leaves at most
hidden ``.NAME.*.tmp`` files, never a half-written COG.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from kelpseg.io.raster import Georef, atomic_output, georef_profile, temp_beside

COG_BLOCK = 512


def cog_block(height: int, width: int) -> int:
    """Internal tile side: 512 px, smaller for small rasters so they still get an overview."""
    side = max(height, width)
    return next((b for b in (512, 256) if side >= 2 * b), 128)  # GDAL's COG minimum: 128


class CogWriter:
    """One-band-or-more COG written row band by row band (context manager).

    Args:
        path: Destination.
        height, width, count, dtype: The raster's shape and data type.
        georef: CRS and transform to keep (None: ungeoreferenced).
        nodata: Declared nodata value.
        band_names: Band descriptions.
        tags: Dataset metadata.
        compress: COG compression (``DEFLATE``, ``ZSTD``, ``LZW``...).
        resampling: Overview resampling (``NEAREST`` for classes, ``AVERAGE`` for values).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        height: int,
        width: int,
        dtype: str,
        count: int = 1,
        georef: Georef | None = None,
        nodata: float | None = None,
        band_names: Sequence[str] | None = None,
        tags: dict[str, str] | None = None,
        compress: str = "DEFLATE",
        resampling: str = "NEAREST",
    ) -> None:
        self.path = Path(path)
        self.compress = compress
        self.resampling = resampling
        self.dtype = np.dtype(dtype)
        self.block = cog_block(height, width)
        georef = georef or Georef()
        profile = {
            "driver": "GTiff",
            "height": height,
            "width": width,
            "count": count,
            "dtype": self.dtype.name,
            "tiled": True,
            "blockxsize": self.block,
            "blockysize": self.block,
            "compress": "LZW",  # the staging file: fast; the COG gets ``compress``
            "BIGTIFF": "IF_SAFER",
            **georef_profile(georef, nodata),
        }
        self.tmp = temp_beside(self.path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.dst = rasterio.open(self.tmp, "w", **profile)
            for i, name in enumerate(band_names or [], start=1):
                self.dst.set_band_description(i, name)
            if tags:
                self.dst.update_tags(**tags)
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise

    def write_rows(self, row: int, data: np.ndarray) -> None:
        """Write ``data`` (``(h, W)`` or ``(bands, h, W)``) at raster row ``row``."""
        arr = data[None] if data.ndim == 2 else data
        self.dst.write(
            arr.astype(self.dtype, copy=False), window=Window(0, row, arr.shape[2], arr.shape[1])
        )

    def finish(self) -> Path:
        """Close, convert to a COG beside the destination, rename it there."""
        self.dst.close()
        opts = {"COMPRESS": self.compress, "OVERVIEW_RESAMPLING": self.resampling}
        if self.dtype.kind == "f":
            opts["PREDICTOR"] = "YES"
        try:
            with atomic_output(self.path) as final, warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                rasterio.shutil.copy(
                    self.tmp, final, driver="COG", BLOCKSIZE=self.block, BIGTIFF="IF_SAFER", **opts
                )
        finally:
            self.tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Drop the staging file."""
        if not self.dst.closed:
            self.dst.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> CogWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.dst.closed:
            self.finish()


def write_cog(path: str | Path, data: np.ndarray, **kwargs) -> Path:
    """Write an in-memory ``(H, W)`` or ``(bands, H, W)`` array as a COG (see :class:`CogWriter`)."""
    arr = data[None] if data.ndim == 2 else data
    with CogWriter(
        path,
        height=arr.shape[1],
        width=arr.shape[2],
        count=arr.shape[0],
        dtype=arr.dtype.name,
        **kwargs,
    ) as w:
        w.write_rows(0, arr)
    return Path(path)


def is_cog(path: str | Path) -> bool:
    """GDAL reads the file as a COG: ``LAYOUT=COG``, internal tiles, overviews (unless tiny)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            layout = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
            block = src.block_shapes[0]
            tiled = block[0] == block[1] and block[0] % 16 == 0
            small = max(src.shape) < 2 * block[0]
            return layout == "COG" and tiled and (bool(src.overviews(1)) or small)
