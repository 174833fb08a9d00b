"""Segmentation scores of the kelp class, counted over all pixels (the competition's Dice)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Counts:
    """Confusion counts of the kelp class; add them up across tiles for global scores."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @classmethod
    def of(cls, pred: np.ndarray, truth: np.ndarray) -> Counts:
        p, t = pred.astype(bool), truth.astype(bool)
        tp = int(np.count_nonzero(p & t))
        fp = int(np.count_nonzero(p)) - tp
        fn = int(np.count_nonzero(t)) - tp
        return cls(tp, fp, fn, p.size - tp - fp - fn)

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    def scores(self) -> dict[str, float]:
        """Dice = 2TP/(2TP+FP+FN), IoU, precision, recall, accuracy (NaN where undefined)."""

        def div(a: float, b: float) -> float:
            return a / b if b else float("nan")

        return {
            "dice": div(2 * self.tp, 2 * self.tp + self.fp + self.fn),
            "iou": div(self.tp, self.tp + self.fp + self.fn),
            "precision": div(self.tp, self.tp + self.fp),
            "recall": div(self.tp, self.tp + self.fn),
            "accuracy": div(self.tp + self.tn, self.tp + self.fp + self.fn + self.tn),
        }


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of the kelp class over all pixels of ``pred`` vs ``truth``."""
    return Counts.of(pred, truth).scores()["dice"]


def best_threshold(
    pos_hist: np.ndarray, neg_hist: np.ndarray, edges: np.ndarray
) -> tuple[float, float]:
    """Threshold maximising global Dice from histograms of scores of kelp / non-kelp pixels.

    Predicting ``score >= edges[i]`` keeps the bins from ``i`` on, so TP and FP are reverse
    cumulative sums. Returns ``(threshold, dice)``.
    """
    tp = np.cumsum(pos_hist[::-1])[::-1].astype(float)
    fp = np.cumsum(neg_hist[::-1])[::-1].astype(float)
    fn = pos_hist.sum() - tp
    d = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    i = int(np.argmax(d))
    return float(edges[i]), float(d[i])
