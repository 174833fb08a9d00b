"""Loss factory over segmentation-models-pytorch's binary losses, with weighted sums."""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import Tensor, nn

LOSSES = {
    "dice": lambda: smp.losses.DiceLoss(mode="binary", from_logits=True),
    "bce": lambda: smp.losses.SoftBCEWithLogitsLoss(),
    "jaccard": lambda: smp.losses.JaccardLoss(mode="binary", from_logits=True),
    "tversky": lambda: smp.losses.TverskyLoss(mode="binary", from_logits=True),
    "lovasz": lambda: smp.losses.LovaszLoss(mode="binary", from_logits=True),
    "focal": lambda: smp.losses.FocalLoss(mode="binary"),
}


class WeightedLoss(nn.Module):
    """``sum(w_i * loss_i)`` over named losses, e.g. ``{"dice": 1.0, "bce": 0.5}``."""

    def __init__(self, weights: dict[str, float]) -> None:
        super().__init__()
        unknown = set(weights) - set(LOSSES)
        if unknown or not weights:
            raise ValueError(f"unknown loss {sorted(unknown)}; choose from {sorted(LOSSES)}")
        self.weights = dict(weights)
        self.losses = nn.ModuleDict({name: LOSSES[name]() for name in weights})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return sum(w * self.losses[n](logits, target) for n, w in self.weights.items())
