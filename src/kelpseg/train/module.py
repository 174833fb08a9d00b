"""The LightningModule: features, augmentation, the network, the loss and kelp-class metrics.

Validation metrics count TP/FP/FN over every pixel of the validation set (the competition's
Dice), for the kelp class only.
"""

from __future__ import annotations

from typing import Any

from kelpseg.compat import ensure_torchvision

ensure_torchvision()

import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchmetrics import MetricCollection  # noqa: E402
from torchmetrics.classification import (  # noqa: E402
    BinaryAccuracy,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)

from kelpseg.config import Config  # noqa: E402
from kelpseg.features.pipeline import FeatureBuilder, pad_to_multiple  # noqa: E402
from kelpseg.train.augment import random_crop, random_dihedral  # noqa: E402
from kelpseg.train.losses import WeightedLoss  # noqa: E402
from kelpseg.train.model import INPUT_MULTIPLE, build_model  # noqa: E402


def kelp_metrics(prefix: str, threshold: float = 0.5) -> MetricCollection:
    """Dice (= F1), IoU, precision, recall, accuracy of the kelp class over all pixels."""
    return MetricCollection(
        {
            "dice": BinaryF1Score(threshold=threshold),
            "iou": BinaryJaccardIndex(threshold=threshold),
            "precision": BinaryPrecision(threshold=threshold),
            "recall": BinaryRecall(threshold=threshold),
            "accuracy": BinaryAccuracy(threshold=threshold),
        },
        prefix=prefix,
    )


class KelpSegModule(L.LightningModule):
    """Raw int16 tiles in, one kelp logit per pixel out.

    Args:
        config: The whole config as a plain dict (saved in the checkpoint).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = Config.model_validate(config)
        f = self.cfg.features
        self.features = FeatureBuilder(f.indices, f.units, f.mask_land)
        self.net = build_model(self.cfg.model, self.features.num_channels)
        self.loss = WeightedLoss({"dice": 1.0})
        self.val_metrics = kelp_metrics("val/", self.cfg.predict.threshold)

    def forward(self, raw: Tensor) -> Tensor:
        """Logits ``(B, 1, H, W)`` for raw tiles of any size (padded internally)."""
        x = self.features(raw)
        h, w = x.shape[-2:]
        x, _ = pad_to_multiple(x, INPUT_MULTIPLE)
        return self.net(x)[..., :h, :w]

    @torch.no_grad()
    def predict_proba(self, raw: Tensor) -> Tensor:
        """Kelp probability ``(B, H, W)``."""
        return torch.sigmoid(self(raw))[:, 0]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        raw, mask = batch
        x = self.features(raw)
        y = mask[:, None].to(x.dtype)
        x, y = random_dihedral(x, y)
        if self.cfg.train.crop_size:
            x, y = random_crop(x, y, self.cfg.train.crop_size)
        h, w = x.shape[-2:]
        x, _ = pad_to_multiple(x, INPUT_MULTIPLE)
        logits = self.net(x)[..., :h, :w]
        loss = self.loss(logits, y)
        self.log(
            "train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(raw)
        )
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        raw, mask = batch
        logits = self(raw)
        y = mask[:, None]
        loss = self.loss(logits, y.to(logits.dtype))
        self.log("val/loss", loss, on_epoch=True, batch_size=len(raw))
        self.val_metrics.update(torch.sigmoid(logits).flatten(), y.flatten().long())

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=False)
        self.log("val_dice", self.val_metrics["dice"].compute(), prog_bar=True, logger=False)
        self.val_metrics.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.cfg.train
        opt = torch.optim.AdamW(self.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=t.lr,
            total_steps=max(int(self.trainer.estimated_stepping_batches), 1),
            pct_start=t.pct_start,
            div_factor=t.div_factor,
            final_div_factor=t.final_div_factor,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
