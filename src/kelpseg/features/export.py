"""``kelpseg indices``: spectral indices of a tile or scene as a named float32 GeoTIFF.

The bands are the indices in the order asked, named after them, computed in the units asked
(``dn`` or ``reflectance``, recorded in the file's ``units`` tag) and keeping the input's CRS and
transform. Missing pixels (and, with ``mask_land`` / ``mask_cloud``, land / QA-flagged pixels) are NaN, the file's nodata,
unless ``fill`` replaces non-finite values the way the network input does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kelpseg.features.indices import lookup
from kelpseg.features.pipeline import FeatureBuilder, fill_nonfinite
from kelpseg.io import read_georef, read_tile, write_raster


def _formula(name: str) -> str:
    idx = lookup(name)
    return idx.formula if idx.source == "spyndex" else "kelpseg 2nd-place table (DESIGN.md)"


def compute_indices(
    raw: np.ndarray,
    names: list[str],
    units: str = "dn",
    mask_land: bool = False,
    fill: bool = False,
    mask_cloud: bool = False,
) -> np.ndarray:
    """``(len(names), H, W)`` float32 indices of one raw ``(7, H, W)`` int16 tile."""
    fb = FeatureBuilder(names, units, mask_land, bands=[], normalize="none", mask_cloud=mask_cloud)
    with torch.no_grad():
        feats = fb.raw_features(torch.from_numpy(np.ascontiguousarray(raw))[None])
        if fill:
            feats = fill_nonfinite(feats)
    return feats[0].numpy().astype(np.float32)


def write_indices(
    tile: str | Path,
    names: list[str],
    out: str | Path,
    units: str = "dn",
    mask_land: bool = False,
    fill: bool = False,
    mask_cloud: bool = False,
) -> Path:
    """Compute ``names`` on ``tile`` and write them to ``out`` (see the module docstring)."""
    raw = read_tile(tile)
    data = compute_indices(raw, names, units, mask_land, fill, mask_cloud)
    tags = {
        "units": units,
        "indices": ",".join(names),
        "mask_land": str(mask_land).lower(),
        "mask_cloud": str(mask_cloud).lower(),
        "source": Path(tile).name,
        **{f"formula_{n.replace(':', '_')}": _formula(n) for n in names},
    }
    return write_raster(
        out, data, georef=read_georef(tile), nodata=float("nan"), band_names=names, tags=tags
    )
