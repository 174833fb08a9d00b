"""AOI de-duplication (``kelpseg groups``).

The competition holds several acquisitions of one area of interest. Tiles whose DEM
embeddings have cosine similarity >= a threshold are joined, and connected components of that
graph are the AOIs, so near-duplicates never straddle training and validation.

The default embedding, ``dem-pool``, needs no downloaded weights: the DEM's land mask and
elevation pooled to a coarse grid, centred and L2-normalised (cosine similarity is then a
correlation of coastline shape). Pooling makes it tolerant to the few-pixel DEM misalignment
seen in the data. Tiles with no land at all carry no DEM information; they are put in one
"all-water" group rather than guessed apart (the safe choice against leakage).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from kelpseg.io.raster import open_raster
from kelpseg.io.tiles import DEM_INDEX, NODATA

FEATURELESS = -1


def read_dem(path: Path) -> np.ndarray:
    """The DEM band of a tile, float32 with NaN where missing."""
    with open_raster(path) as src:
        dem = src.read(DEM_INDEX + 1).astype(np.float32)
    dem[dem == NODATA] = np.nan
    return dem


def dem_embedding(dems: np.ndarray, grid: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Embed ``(N, H, W)`` DEMs.

    Returns:
        ``(N, 2*grid*grid)`` unit vectors and a boolean array marking featureless tiles
        (no land pixel), whose vectors are zero.
    """
    dem = torch.from_numpy(np.nan_to_num(dems, nan=0.0)).float().clamp_min(0)[:, None]
    land = (dem > 0).float()
    elev = torch.log1p(dem) / np.log1p(1000.0)
    feats = torch.cat(
        [F.adaptive_avg_pool2d(land, grid), F.adaptive_avg_pool2d(elev, grid)], dim=1
    ).flatten(1)
    feats = feats - feats.mean(dim=1, keepdim=True)
    norm = feats.norm(dim=1, keepdim=True)
    featureless = (land.flatten(1).sum(1) == 0) | (norm[:, 0] < 1e-6)
    feats = torch.where(
        featureless[:, None], torch.zeros_like(feats), feats / norm.clamp_min(1e-12)
    )
    return feats.numpy(), featureless.numpy()


def group_embeddings(emb: np.ndarray, featureless: np.ndarray, threshold: float) -> np.ndarray:
    """AOI label per tile: connected components of ``cosine >= threshold``.

    Featureless tiles all share one group. Labels are 0..G-1, ordered by first appearance.
    """
    sim = emb @ emb.T
    adj = sim >= threshold
    adj[featureless, :] = False
    adj[:, featureless] = False
    _, labels = connected_components(csr_matrix(adj), directed=False)
    if featureless.any():
        labels = labels.copy()
        labels[featureless] = labels[featureless][0]
    _, first = np.unique(labels, return_index=True)
    order = {lab: i for i, lab in enumerate(labels[np.sort(first)])}
    return np.array([order[lab] for lab in labels], dtype=np.int64)


def compute_groups(
    tile_ids: list[str], paths: list[Path], *, threshold: float = 0.97, grid: int = 16
) -> pd.DataFrame:
    """Group tiles into AOIs; returns a table ``tile_id, aoi, featureless``."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        dems = list(tqdm(pool.map(read_dem, paths), total=len(paths), desc="groups", leave=False))
    shapes = {d.shape for d in dems}
    if len(shapes) > 1:
        dems = [
            F.interpolate(torch.from_numpy(d)[None, None], size=(350, 350)).numpy()[0, 0]
            for d in dems
        ]
    emb, featureless = dem_embedding(np.stack(dems), grid)
    labels = group_embeddings(emb, featureless, threshold)
    return pd.DataFrame({"tile_id": tile_ids, "aoi": labels, "featureless": featureless})
