"""The ensemble: its weights, and the engine that turns raw int16 batches into the members'
weighted mean probability (and spread).

One implementation serves tile prediction (``kelpseg predict``) and sliced whole-raster
inference (``kelpseg map``): each member builds its own inputs from its own config (DEM shift
correction, features), runs under autocast and TTA; probabilities are averaged with weights that
sum to one (``vote="soft"``), or thresholded masks are (``vote="hard"``). With ``slices > 1``
every input is cut into overlapping SAHI-style slices that are up-sampled to the input's size
before the members and blended back (:func:`kelpseg.infer.sliced.sahi`).

Weights are ``equal``, given (``"0.2,0.8"``), or ``dice``: each fold's validation Dice min-max
scaled to [0, 1] as the seed did (all equal Dice -> equal weights). Whatever the source, the
weights are normalized to sum to exactly one (the 2nd-place code divided by one too many).
Members are assembled with their settings by :mod:`kelpseg.infer.assemble`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from kelpseg.config import parse_weights
from kelpseg.data.dem_shift import correct_dem
from kelpseg.infer.errors import EnsembleError

if TYPE_CHECKING:
    from kelpseg.train.module import KelpSegModule


WEIGHT_MODES = ("equal", "dice")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Autocast dtypes by name (fp32: no autocast)."""


def default_precision(device: torch.device) -> str:
    """bf16 on a CUDA GPU that supports it, else fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def member_weights(
    n: int, spec: str | list[float] | None = "equal", dices: list[float | None] | None = None
) -> np.ndarray:
    """Normalized member weights (sum exactly 1) from ``equal``, ``dice`` or given numbers."""
    if spec is None or spec == "equal":
        w = np.ones(n)
    elif spec == "dice":
        if dices is None or len(dices) != n or any(d is None for d in dices):
            raise EnsembleError("--weights dice needs every member's val Dice (use --run OUT)")
        d = np.asarray(dices, dtype=np.float64)
        span = d.max() - d.min()
        w = (d - d.min()) / span if span > 0 else np.ones(n)
        if w.sum() == 0:  # a single member
            w = np.ones(n)
    else:
        try:
            w = np.asarray(parse_weights(spec), dtype=np.float64)
        except ValueError as err:
            raise EnsembleError(f"--weights: {err}") from err
        if len(w) != n:
            raise EnsembleError(f"--weights: {len(w)} weights for {n} models")
    return w / w.sum()


class Members:
    """Callable ensemble: ``(B, 7, H, W)`` int16 numpy -> ``(mean, std | None)`` float32 tensors
    ``(B, H, W)`` on the members' device.

    Args:
        models: The members (one device for all): anything with ``predict_proba`` on raw
            tiles, ``device`` and ``cfg`` (networks, or the XGBoost baseline's folds).
        weights: Normalized member weights (sum to one), one per model.
        precision: Autocast dtype (None = fp32).
        tta: Test-time augmentation mode (kelpseg.infer.tta).
        vote: ``soft`` (mean probability) or ``hard`` (mean of thresholded masks).
        threshold: The members' threshold for the hard vote.
        spread: Also return the weighted standard deviation of the members' probabilities.
        slices: SAHI-style slices per side (1 = off).
        dem_fix: The DEM shift correction for members trained with ``data.correct_dem_shift``
            (a raw ``(7, H, W)`` tile -> the tile with its DEM realigned).
    """

    def __init__(
        self,
        models: Sequence[KelpSegModule],
        weights: Sequence[float] | np.ndarray,
        *,
        precision: torch.dtype | None = None,
        tta: str = "none",
        vote: str = "soft",
        threshold: float = 0.5,
        spread: bool = False,
        slices: int = 1,
        dem_fix: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.models = list(models)
        self.device = torch.device(self.models[0].device)  # a module's, or the XGBoost's cpu
        self.weights = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
        self.w = self.weights.to(self.device)[:, None, None, None]
        self.dtype = precision
        self.tta = tta
        self.vote = vote
        self.threshold = float(threshold)
        self.spread = spread and len(self.models) > 1
        if slices < 1:
            raise ValueError(f"slices must be at least 1, got {slices}")
        self.slices = int(slices)
        self.corrects = [m.cfg.data.correct_dem_shift for m in self.models]
        self.dem_fix = dem_fix or correct_dem

    @property
    def cut(self) -> float:
        """What the combined value is compared with for a mask: the threshold for a soft
        vote's mean probability, half the (weighted) members for a hard vote."""
        return 0.5 if self.vote == "hard" else self.threshold

    def prepare(self, raw_np: np.ndarray) -> np.ndarray | None:
        """The host-side work on one raw ``(7, H, W)`` tile, for a reader thread: the tile with
        its DEM realigned when a member needs it (None otherwise, and with SAHI slices, whose
        DEMs are realigned per slice)."""
        if self.slices > 1 or not any(self.corrects):
            return None
        return self.dem_fix(raw_np)

    @torch.inference_mode()
    def probas(self, raw_np: np.ndarray, fixed_np: np.ndarray | None = None) -> Tensor:
        """Every member's probability ``(M, B, H, W)``; ``fixed_np`` is the batch of
        :meth:`prepare` results (computed here when not given)."""
        from kelpseg.infer.tta import tta_proba

        dev = self.device
        raw = torch.from_numpy(raw_np).to(dev, non_blocking=True)
        fixed: Tensor | None = None
        outs = []
        for m, corr in zip(self.models, self.corrects, strict=True):
            x = raw
            if corr:
                if fixed is None:
                    if fixed_np is None:
                        fixed_np = np.stack([self.dem_fix(r) for r in raw_np])
                    fixed = torch.from_numpy(fixed_np).to(dev, non_blocking=True)
                x = fixed
            dtype = self.dtype
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                outs.append(tta_proba(m.predict_proba, x, self.tta).float())
        return torch.stack(outs)

    @torch.inference_mode()
    def combine(self, probs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Weighted mean (soft or hard vote) and, if asked, weighted std of ``(M, B, H, W)``."""
        members = (probs >= self.threshold).float() if self.vote == "hard" else probs
        mean = (self.w * members).sum(0)
        std = None
        if self.spread:
            std = (self.w * (probs - (self.w * probs).sum(0)) ** 2).sum(0).sqrt()
        return mean, std

    def __call__(
        self, raw_np: np.ndarray, fixed_np: np.ndarray | None = None
    ) -> tuple[Tensor, Tensor | None]:
        if self.slices > 1:
            from kelpseg.infer.sliced import sahi

            return sahi(self, raw_np, self.slices)
        return self.combine(self.probas(raw_np, fixed_np))
