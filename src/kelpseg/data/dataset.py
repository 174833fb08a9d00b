"""Datasets over the packed cache and the weighted tile sampler.

The dataset implements ``__getitems__``, so a DataLoader fetches a whole batch with one
fancy-indexing read of the memory map: no per-sample Python work in the loop.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from kelpseg.data.cache import PackedTiles

PCT_COLUMNS = (
    "kelp_pixels_pct",
    "qa_corrupted_pixels_pct",
    "dem_nan_pixels_pct",
    "dem_zero_pixels_pct",
)


class PackedDataset(Dataset):
    """``(raw int16 (7, H, W), mask uint8 (H, W))`` for chosen rows of a packed cache."""

    def __init__(self, packed: PackedTiles, rows: np.ndarray) -> None:
        self.images = packed.images
        self.masks = packed.masks
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        r = self.rows[i]
        return torch.from_numpy(np.array(self.images[r])), torch.from_numpy(np.array(self.masks[r]))

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        rows = self.rows[np.asarray(indices)]
        order = np.argsort(rows, kind="stable")  # sorted reads are sequential on disk
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        images = np.asarray(self.images[rows[order]])[inverse]
        masks = np.asarray(self.masks[rows[order]])[inverse]
        return torch.from_numpy(images), torch.from_numpy(masks)


def keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Collate function for :meth:`PackedDataset.__getitems__` (already a batch)."""
    return batch


def tile_weights(tiles: pd.DataFrame, factors: dict[str, float], floor: float = 0.01) -> np.ndarray:
    """Per-tile sampling weight: ``sum(factor * stat)``, percentages as fractions, floored.

    With the 2nd-place factors (has_kelp 3.0, kelp_pixels_pct 0.2, qa_corrupted_pixels_pct -1.0,
    almost_all_water 0.5, dem_nan_pixels_pct 0.25, dem_zero_pixels_pct -1.0) kelp tiles are drawn
    most, damaged tiles least; the floor keeps every tile reachable.
    """
    score = np.zeros(len(tiles))
    for col, factor in factors.items():
        if col not in tiles.columns:
            raise KeyError(f"sampler weight for unknown tile stat {col!r}")
        vals = tiles[col].astype(float).fillna(0.0).to_numpy()
        if col in PCT_COLUMNS:
            vals = vals / 100.0
        score += factor * vals
    return np.maximum(score, floor)


class EpochWeightedSampler(Sampler[int]):
    """Weighted random draws with replacement, reproducible per epoch.

    Epoch ``e`` draws from a generator seeded with ``(seed, e)``, so a run resumed at epoch
    ``e`` sees the same tiles as an uninterrupted one. Lightning calls :meth:`set_epoch` before
    each epoch (also through its ``DistributedSamplerWrapper``, which then shards the draws
    across ranks: every rank draws the same list). Without ``set_epoch`` each iteration moves
    on to the next epoch by itself.

    Args:
        weights: Per-item weights (need not sum to 1).
        num_samples: Draws per epoch.
        seed: Base seed.
    """

    def __init__(self, weights: np.ndarray | Tensor, num_samples: int, seed: int = 0) -> None:
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.double)
        if self.weights.ndim != 1 or len(self.weights) == 0 or not (self.weights >= 0).all():
            raise ValueError("sampler weights must be a non-empty 1-D array of values >= 0")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the tiles of ``epoch`` on the next iteration."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0])
        gen = torch.Generator().manual_seed(seed)
        self.epoch += 1
        draws = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=gen)
        return iter(draws.tolist())


def make_sampler(
    tiles: pd.DataFrame, factors: dict[str, float], num_samples: int, seed: int
) -> EpochWeightedSampler:
    """Weighted random sampler drawing ``num_samples`` tiles per epoch with replacement."""
    return EpochWeightedSampler(tile_weights(tiles, factors), num_samples, seed)
