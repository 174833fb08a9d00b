"""Tiles and scenes on disk: discovery, validated reading, atomic georeferenced writing."""

from kelpseg.io.discover import TileRef, discover, find_images
from kelpseg.io.errors import BatchReport, TileError
from kelpseg.io.raster import Georef, read_georef, write_raster
from kelpseg.io.tiles import BAND_NAMES, NODATA, read_mask, read_tile, to_float

__all__ = [
    "BAND_NAMES",
    "NODATA",
    "BatchReport",
    "Georef",
    "TileError",
    "TileRef",
    "discover",
    "find_images",
    "read_georef",
    "read_mask",
    "read_tile",
    "to_float",
    "write_raster",
]
