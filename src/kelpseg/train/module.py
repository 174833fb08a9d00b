"""The LightningModule: features, augmentation, the network, the loss and kelp-class metrics.

Validation metrics count TP/FP/FN over every pixel of the validation set (the competition's
Dice), for the kelp class only. Augmentation draws come from a generator seeded by
``(seed, epoch, batch, rank)``, so an interrupted run resumed from a checkpoint sees the same
batches as an uninterrupted one.
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
from kelpseg.train.augment import augment_batch, random_crop, step_generator  # noqa: E402
from kelpseg.train.losses import WeightedLoss  # noqa: E402
from kelpseg.train.model import build_model, input_divisor  # noqa: E402
from kelpseg.train.optim import build_optimizer, build_scheduler  # noqa: E402


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
        self.save_hyperparameters(logger=False)  # kelpseg logs the flat config itself
        self.cfg = Config.model_validate(config)
        self.features = FeatureBuilder.from_config(self.cfg.features)
        self.net = build_model(self.cfg.model, self.features.num_channels)
        self.divisor = input_divisor(self.net)
        self.channels_last = self.cfg.model.channels_last
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.loss = WeightedLoss(dict(self.cfg.train.loss))
        self.val_metrics = kelp_metrics("val/", self.cfg.predict.threshold)

    def _net(self, x: Tensor) -> Tensor:
        """Pad to the encoder's multiple, run the network, crop back."""
        h, w = x.shape[-2:]
        x, _ = pad_to_multiple(x, self.divisor)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)[..., :h, :w]

    def forward(self, raw: Tensor) -> Tensor:
        """Logits ``(B, 1, H, W)`` for raw tiles of any size (padded internally)."""
        return self._net(self.features(raw))

    @torch.no_grad()
    def predict_proba(self, raw: Tensor) -> Tensor:
        """Kelp probability ``(B, H, W)``."""
        return torch.sigmoid(self(raw))[:, 0]

    def training_inputs(self, raw: Tensor, mask: Tensor, batch_idx: int) -> tuple[Tensor, Tensor]:
        """Features and target of a training batch, augmented as configured.

        Draws come from ``(seed, epoch, batch, rank)``. A random crop is taken from the raw
        int16 tiles before the features are computed: indices are per pixel, so this gives the
        same channels for a fraction of the work (per-sample fill values and per-sample
        normalization then use the crop's statistics).
        """
        a, t = self.cfg.augment, self.cfg.train
        gen = step_generator(t.seed, self.current_epoch, batch_idx, self.global_rank)
        y = mask[:, None]
        if t.crop_size:
            raw, y = random_crop(raw, y, t.crop_size, gen)
        x = self.features(raw)
        return augment_batch(
            x,
            y.to(x.dtype),
            flips=a.flips,
            rotate_degrees=a.rotate_degrees,
            rotate_padding=a.rotate_padding,
            generator=gen,
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        raw, mask = batch
        x, y = self.training_inputs(raw, mask, batch_idx)
        loss = self.loss(self._net(x).float(), y)
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=len(raw),
            sync_dist=True,
        )
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        raw, mask = batch
        logits = self(raw)
        y = mask[:, None]
        loss = self.loss(logits.float(), y.float())
        self.log("val/loss", loss, on_epoch=True, batch_size=len(raw), sync_dist=True)
        self.val_metrics.update(torch.sigmoid(logits.float()).flatten(), y.flatten().long())

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()  # synced across processes by torchmetrics
        self.log_dict(scores, prog_bar=False, sync_dist=True)
        self.log("val_dice", scores["val/dice"], prog_bar=True, logger=False, sync_dist=True)
        self.val_metrics.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        t = self.cfg.train
        opt = build_optimizer(self.parameters(), t)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        return {"optimizer": opt, "lr_scheduler": build_scheduler(opt, t, int(total))}
