"""The competition submission (``kelpseg submit``): one 0/1 mask per test tile, in a tar.

DrivenData's Kelp Wanted took a ``.tar`` of ``{tile_id}_kelp.tif`` files, one per test tile,
uint8, 0 = no kelp and 1 = kelp, the tile's size (350 x 350). kelpseg's masks mark missing
input pixels as nodata (255); this format has no nodata, so they become 0 here and only here.
Nothing is written unless every test tile has a usable prediction.
"""

from __future__ import annotations

import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.errors import RasterioIOError

from kelpseg.io.discover import KELP_SUFFIX, SAT_SUFFIX
from kelpseg.io.errors import TileError
from kelpseg.io.raster import atomic_output, open_raster, read_georef, write_raster
from kelpseg.io.tiles import read_mask


class SubmissionError(ValueError):
    """Test tiles without a usable prediction: the archive would be rejected."""


@dataclass(frozen=True)
class Submission:
    """The written archive, the number of masks in it and the nodata pixels set to 0."""

    path: Path
    tiles: int
    nodata_pixels: int


def _by_id(folder: Path, suffix: str) -> dict[str, Path]:
    """``{tile_id: file}`` under ``folder``; two files for one tile (e.g. a run folder holding
    ``predictions/`` and ``predictions_single/``) are refused, never silently picked."""
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob(f"*{suffix}")):
        tile_id = p.name[: -len(suffix)]
        if tile_id in found:
            raise SubmissionError(
                f"{folder}: two files for tile {tile_id} ({found[tile_id]} and {p}); "
                "point at one predictions folder"
            )
        found[tile_id] = p
    return found


def _names(ids: list[str], limit: int = 5) -> str:
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(ids[:limit]) + more


def build_submission(pred_dir: Path, tiles_dir: Path, out: Path) -> Submission:
    """Check every test tile's predicted mask and pack them into ``out`` (a tar).

    Args:
        pred_dir: Folder of ``{tile_id}_kelp.tif`` predictions (``kelpseg predict`` output).
        tiles_dir: Folder of the test tiles ``{tile_id}_satellite.tif``: they decide which
            masks the archive must hold, and their size.
        out: The ``.tar`` to write (atomically).

    Raises:
        FileNotFoundError: a folder that does not exist, or no test tiles in ``tiles_dir``.
        SubmissionError: naming the tiles without a prediction, or whose prediction has another
            size or values other than 0/1/nodata; nothing is written then.
    """
    for folder in (pred_dir, tiles_dir):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: not found")
    tiles, preds = _by_id(Path(tiles_dir), SAT_SUFFIX), _by_id(Path(pred_dir), KELP_SUFFIX)
    if not tiles:
        raise FileNotFoundError(f"{tiles_dir}: no *{SAT_SUFFIX} test tiles found")
    missing = sorted(set(tiles) - set(preds))
    if missing:
        raise SubmissionError(
            f"{len(missing)} of {len(tiles)} test tiles have no prediction in {pred_dir}: "
            f"{_names(missing)}"
        )
    masks, bad = {}, []
    for tile_id, tile in tiles.items():
        try:
            with open_raster(tile) as src:
                shape = (src.height, src.width)
        except RasterioIOError as err:
            raise SubmissionError(f"{tile}: test tile unreadable ({err})") from err
        try:
            masks[tile_id] = read_mask(preds[tile_id], shape, allow_nodata=True)
        except TileError as err:
            bad.append(f"{tile_id} ({err.problem})")
    if bad:
        raise SubmissionError(f"{len(bad)} predictions cannot be submitted: {_names(bad)}")
    nodata = _nodata_pixels(preds, masks)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        atomic_output(out) as tmp,
        tempfile.TemporaryDirectory() as work,
        tarfile.open(tmp, "w") as tar,
    ):
        for tile_id, mask in masks.items():
            name = f"{tile_id}{KELP_SUFFIX}"
            georef = read_georef(preds[tile_id])
            write_raster(Path(work) / name, mask, georef=georef)
            tar.add(Path(work) / name, arcname=name)
    return Submission(out, len(masks), nodata)


def _nodata_pixels(preds: dict[str, Path], masks: dict[str, np.ndarray]) -> int:
    """How many predicted nodata pixels the 0/1 format turned into 0."""
    total = 0
    for tile_id, mask in masks.items():
        with open_raster(preds[tile_id]) as src:
            raw = src.read(1)
        total += int(((raw != 0) & (raw != 1) & (mask == 0)).sum())
    return total
