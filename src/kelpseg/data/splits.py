"""Stratified grouped K-fold (``kelpseg split``): no AOI in two folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold


def strata(tiles: pd.DataFrame) -> np.ndarray:
    """Stratification label from the tile flags: has_kelp x almost_all_water x heavy damage."""
    has_kelp = tiles["has_kelp"].fillna(False).astype(bool).to_numpy()
    water = tiles["almost_all_water"].astype(bool).to_numpy()
    damaged = tiles["high_corrupted_pixels_pct"].astype(bool).to_numpy()
    return has_kelp.astype(int) + 2 * water.astype(int) + 4 * damaged.astype(int)


def make_folds(tiles: pd.DataFrame, folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Assign a fold to every training tile.

    Args:
        tiles: Table with ``tile_id, aoi`` and the flag columns of ``kelpseg stats``.
        folds: K.
        seed: Shuffle seed.

    Returns:
        ``tile_id, aoi, fold`` for every row.
    """
    n_groups = tiles["aoi"].nunique()
    if n_groups < folds:
        raise ValueError(f"{n_groups} AOI groups cannot fill {folds} folds: lower --folds")
    sgkf = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.full(len(tiles), -1, dtype=np.int64)
    for k, (_, val_idx) in enumerate(sgkf.split(tiles, strata(tiles), tiles["aoi"])):
        fold[val_idx] = k
    return pd.DataFrame({"tile_id": tiles["tile_id"], "aoi": tiles["aoi"], "fold": fold})
