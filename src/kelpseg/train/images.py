"""Sample figures for MLflow: composites of a fixed validation batch with truth and prediction.

Each validation epoch :class:`SampleImages` draws the same few validation tiles as true colour
(Red, Green, Blue), NIR false colour (NIR, Red, Green), the ground-truth mask and the predicted
kelp probability, and logs the figure as ``samples/epoch_NNN.png`` in the fold's MLflow run.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import MLFlowLogger
from matplotlib.figure import Figure
from torch import Tensor

from kelpseg.io.tiles import BAND_NAMES, NODATA

TRUE_COLOUR = ("Red", "Green", "Blue")
NIR_FALSE_COLOUR = ("NIR", "Red", "Green")


def composite(raw: np.ndarray, bands: tuple[str, str, str]) -> np.ndarray:
    """``(H, W, 3)`` float in [0, 1] of three bands of one raw tile, 2-98 % stretched per band."""
    out = np.zeros((*raw.shape[1:], 3), dtype=np.float32)
    for i, name in enumerate(bands):
        band = raw[BAND_NAMES.index(name)].astype(np.float32)
        valid = band != NODATA
        if not valid.any():
            continue
        lo, hi = np.percentile(band[valid], (2, 98))
        out[..., i] = np.where(valid, np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1), 0)
    return out


def sample_figure(raw: np.ndarray, mask: np.ndarray, proba: np.ndarray, title: str = "") -> Figure:
    """A figure with one row per tile: true colour, NIR false colour, truth, probability."""
    n = len(raw)
    fig = Figure(figsize=(8, 2 * n + 0.4), dpi=60)
    axes = fig.subplots(n, 4, squeeze=False)
    heads = ("true colour", "NIR false colour", "ground truth", "kelp probability")
    for i in range(n):
        panels = (
            composite(raw[i], TRUE_COLOUR),
            composite(raw[i], NIR_FALSE_COLOUR),
            mask[i],
            proba[i],
        )
        for j, (ax, img) in enumerate(zip(axes[i], panels, strict=True)):
            ax.imshow(img, vmin=0, vmax=1, cmap=None if img.ndim == 3 else "viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


class SampleImages(Callback):
    """Log a figure of a fixed validation batch every validation epoch (rank 0, MLflow only).

    Args:
        raw: Raw tiles ``(n, 7, H, W)`` int16.
        mask: Their masks ``(n, H, W)``.
    """

    def __init__(self, raw: Tensor, mask: Tensor) -> None:
        self.raw = raw
        self.mask = mask

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or len(self.raw) == 0:
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)), None)
        if logger is None:
            return
        with torch.no_grad():
            proba = pl_module.predict_proba(self.raw.to(pl_module.device)).float().cpu().numpy()
        epoch = trainer.current_epoch
        fig = sample_figure(self.raw.numpy(), self.mask.numpy(), proba, f"epoch {epoch}")
        logger.experiment.log_figure(logger.run_id, fig, f"samples/epoch_{epoch:03d}.png")
