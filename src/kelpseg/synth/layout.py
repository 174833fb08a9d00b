"""Writing a synthetic set in the competition's folder layout, plus the truth outside it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from affine import Affine
from rasterio.crs import CRS

from kelpseg.io.raster import Georef, atomic_write_text, write_raster

METADATA_NAME = "metadata_fTq0l2T.csv"
PIXEL_SIZE = 30.0
_OUT_ENTRIES = ("train_satellite", "train_kelp", "test_satellite", METADATA_NAME)
_TRUTH_ENTRIES = ("test_kelp", "truth.csv")


def default_truth_dir(out: Path) -> Path:
    """``OUT/../{OUT.name}_truth``: test masks live outside the distributed folder."""
    return out.parent / f"{out.name}_truth"


def prepare(out: Path, truth_dir: Path, overwrite: bool) -> None:
    """Create the output folders, refusing (or, with ``overwrite``, clearing) earlier output.

    Only the entries this generator writes are ever removed.
    """
    found = [
        root / e
        for root, entries in ((out, _OUT_ENTRIES), (truth_dir, _TRUTH_ENTRIES))
        for e in entries
        if (root / e).exists()
    ]
    if found and not overwrite:
        raise FileExistsError(f"{found[0]} already exists (an earlier synthetic set?)")
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)


def georef(crs: str | None, origin: tuple[float, float]) -> Georef:
    """A 30 m north-up georeference at ``origin``, or none when ``crs`` is None."""
    if crs is None:
        return Georef()
    x0, y0 = origin
    return Georef(CRS.from_user_input(crs), Affine(PIXEL_SIZE, 0.0, x0, 0.0, -PIXEL_SIZE, y0))


def write_tile(
    out: Path,
    truth_dir: Path,
    tile_id: str,
    split: str,
    image: np.ndarray,
    mask: np.ndarray,
    ref: Georef,
) -> None:
    """Write a tile and its mask: train masks beside the tiles, test masks under the truth."""
    write_raster(
        out / f"{split}_satellite" / f"{tile_id}_satellite.tif", image, georef=ref, compress="none"
    )
    mask_dir = out / "train_kelp" if split == "train" else truth_dir / "test_kelp"
    write_raster(mask_dir / f"{tile_id}_kelp.tif", mask, georef=ref, compress="none")


def write_metadata(out: Path, truth: pd.DataFrame) -> Path:
    """``metadata_fTq0l2T.csv``: one row per distributed file (test masks are not listed)."""
    rows = []
    for tid, split in sorted(zip(truth["tile_id"], truth["split"], strict=True)):
        types = ("satellite", "kelp") if split == "train" else ("satellite",)
        for kind in types:
            rows.append(
                {
                    "filename": f"{tid}_{kind}.tif",
                    "type": kind,
                    "tile_id": tid,
                    "in_train": split == "train",
                }
            )
    text = pd.DataFrame(rows, columns=["filename", "type", "tile_id", "in_train"]).to_csv(
        index=False
    )
    return atomic_write_text(out / METADATA_NAME, text)


def write_truth(truth_dir: Path, truth: pd.DataFrame) -> Path:
    """``truth.csv``: what every tile really contains, one row per tile."""
    return atomic_write_text(truth_dir / "truth.csv", truth.to_csv(index=False))
