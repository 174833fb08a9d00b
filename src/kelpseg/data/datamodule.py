"""The data side of one fold's training, as a Lightning ``LightningDataModule``.

:class:`KelpDataModule` holds the packed cache and the fold's rows: training tiles are every
other fold's tiles except those marked ``excluded`` (``data.exclude``), validation tiles are
all of the fold's tiles, so validation Dice stays comparable with and without exclusions. It
builds the weighted-sampler training loader and the in-order validation loader, the fixed
preview batch drawn into MLflow figures, and the pixel sample the normalization is fitted on.
"""

from __future__ import annotations

import math

from kelpseg.compat import ensure_torchvision

ensure_torchvision()

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from kelpseg.config import Config  # noqa: E402
from kelpseg.data.cache import PackedTiles  # noqa: E402
from kelpseg.data.dataset import PackedDataset, keep_batch, make_sampler  # noqa: E402


def fold_tiles(tiles: pd.DataFrame, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(train, val)`` tiles of ``fold``: training skips ``excluded`` tiles, validation none.

    Raises:
        ValueError: When either side is empty.
    """
    train = tiles["fold"] != fold
    if "excluded" in tiles.columns:
        train &= ~tiles["excluded"].fillna(False).astype(bool)
    train_tiles = tiles[train].reset_index(drop=True)
    val_tiles = tiles[tiles["fold"] == fold].reset_index(drop=True)
    if train_tiles.empty or val_tiles.empty:
        raise ValueError(f"fold {fold}: {len(train_tiles)} train / {len(val_tiles)} val tiles")
    return train_tiles, val_tiles


def sample_pixels(
    packed: PackedTiles, rows: np.ndarray, n_tiles: int, pixels: int, seed: int
) -> Tensor:
    """``(1, 7, 1, n_tiles * pixels)`` raw pixels drawn from up to ``n_tiles`` tiles (for stats)."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(rows, size=min(n_tiles, len(rows)), replace=False))
    imgs = np.asarray(packed.images[chosen]).reshape(len(chosen), 7, -1)
    idx = rng.integers(0, imgs.shape[-1], size=(len(chosen), pixels))
    px = np.take_along_axis(imgs, idx[:, None, :], axis=2)  # (n, 7, pixels)
    return torch.from_numpy(px.transpose(1, 0, 2).reshape(1, 7, 1, -1).copy())


class KelpDataModule(L.LightningDataModule):
    """Loaders, preview batch and normalization sample of one validation fold.

    Both loaders yield whole batches from one read of the packed cache (``__getitems__``);
    Lightning shards them across processes under DDP (``use_distributed_sampler``). The
    training sampler draws from ``(train.seed + fold, epoch)``, so a resumed run sees the
    same tiles as an uninterrupted one.

    Args:
        cfg: The config (``train`` and ``features`` sections are read).
        packed: The packed cache holding the tiles.
        tiles: Tiles with ``tile_id``, ``fold``, the ``kelpseg stats`` columns the sampler
            weights name and optionally ``excluded``.
        fold: The validation fold.
    """

    def __init__(self, cfg: Config, packed: PackedTiles, tiles: pd.DataFrame, fold: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.packed = packed
        self.fold = fold
        self.train_tiles, self.val_tiles = fold_tiles(tiles, fold)
        self.train_rows = packed.row(self.train_tiles["tile_id"].tolist())
        self.val_rows = packed.row(self.val_tiles["tile_id"].tolist())

    @property
    def samples_per_epoch(self) -> int:
        """Training tiles drawn per epoch."""
        return self.cfg.train.samples_per_epoch or len(self.train_rows)

    @property
    def steps_per_epoch(self) -> int:
        """Training batches per epoch (on one process)."""
        return math.ceil(self.samples_per_epoch / self.cfg.train.batch_size)

    def _loader_kwargs(self) -> dict:
        t = self.cfg.train
        kw: dict = dict(batch_size=t.batch_size, collate_fn=keep_batch, num_workers=t.num_workers)
        if t.num_workers:
            kw.update(persistent_workers=True)
        if torch.cuda.is_available() and t.accelerator != "cpu":
            kw.update(pin_memory=True)
        return kw

    def train_dataloader(self) -> DataLoader:
        """Weighted draws with replacement (``train.sampler_weights``)."""
        t = self.cfg.train
        sampler = make_sampler(
            self.train_tiles, t.sampler_weights, self.samples_per_epoch, t.seed + self.fold
        )
        ds = PackedDataset(self.packed, self.train_rows)
        return DataLoader(ds, sampler=sampler, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        """Every validation tile once, in order."""
        ds = PackedDataset(self.packed, self.val_rows)
        return DataLoader(ds, shuffle=False, **self._loader_kwargs())

    def preview_batch(self, n: int) -> tuple[Tensor, Tensor]:
        """The fixed validation tiles drawn each epoch: those with the most kelp first."""
        order = self.val_tiles
        if "kelp_pixels" in order.columns:
            order = order.sort_values(["kelp_pixels", "tile_id"], ascending=[False, True])
        rows = np.sort(self.packed.row(order["tile_id"].head(n).tolist()))
        images = np.asarray(self.packed.images[rows])
        return torch.from_numpy(images), torch.from_numpy(np.asarray(self.packed.masks[rows]))

    def normalization_sample(self, pixels: int = 4096) -> Tensor:
        """Raw pixels of up to ``features.stats_tiles`` training tiles, to fit bounds on."""
        f, t = self.cfg.features, self.cfg.train
        return sample_pixels(self.packed, self.train_rows, f.stats_tiles, pixels, t.seed)
