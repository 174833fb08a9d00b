"""Normalization of feature channels: global statistics fitted once, or each sample's own.

Every mode maps a channel with two numbers ``(lo, hi)`` as ``(x - lo) / (hi - lo)``:

========================  ====================================  =========
mode                      lo, hi                                clipped
========================  ====================================  =========
``quantile``              q_low, q_high of the fit pixels       to [0, 1]
``minmax``                min, max of the fit pixels            no
``zscore``                mean, mean + std of the fit pixels    no
``sample_quantile``       q_low, q_high of the sample           to [0, 1]
``sample_minmax``         min, max of the sample                no
``none``                  0, 1                                  no
========================  ====================================  =========

Statistics come from valid pixels (not missing, finite) or, optionally, valid water pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kelpseg.config import NormMode

GLOBAL_MODES = ("quantile", "zscore", "minmax")
SAMPLE_MODES = ("sample_quantile", "sample_minmax")
CLIPPED_MODES = ("quantile", "sample_quantile")


def _ordered(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Replace non-finite bounds by (0, 1) and empty ranges by (lo, lo + 1)."""
    ok = torch.isfinite(lo) & torch.isfinite(hi)
    lo = torch.where(ok, lo, torch.zeros_like(lo))
    hi = torch.where(ok, hi, torch.ones_like(hi))
    return lo, torch.where(hi > lo, hi, lo + 1)


@torch.no_grad()
def fit_channel(
    values: Tensor, mode: NormMode, quantiles: tuple[float, float]
) -> tuple[float, float]:
    """``(lo, hi)`` of one channel from its valid values (1-D); ``(0, 1)`` if there are none."""
    if values.numel() == 0 or mode not in GLOBAL_MODES:
        return 0.0, 1.0
    v = values.double()
    if mode == "quantile":
        q = torch.quantile(v, torch.tensor(quantiles, dtype=v.dtype, device=v.device))
        lo, hi = q[0], q[1]
    elif mode == "minmax":
        lo, hi = v.min(), v.max()
    else:
        lo = v.mean()
        hi = lo + v.std(correction=0)
    lo_t, hi_t = _ordered(lo, hi)
    return float(lo_t), float(hi_t)


@torch.no_grad()
def sample_bounds(
    x: Tensor, valid: Tensor, mode: NormMode, quantiles: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel ``(lo, hi)`` of ``x (B, C, H, W)`` over ``valid`` pixels.

    A sample-channel without valid pixels falls back to its finite pixels, then to (0, 1).
    """
    finite = torch.isfinite(x)
    valid = valid & finite
    # valid where a sample-channel has any, else finite (no boolean Where: ONNX-exportable)
    use = valid | (finite & ~valid.any(dim=-1, keepdim=True).any(dim=-2, keepdim=True))
    if mode == "sample_minmax":
        lo = torch.where(use, x, torch.inf).amin(dim=(-2, -1), keepdim=True)
        hi = torch.where(use, x, -torch.inf).amax(dim=(-2, -1), keepdim=True)
    elif mode == "sample_quantile":
        flat = torch.where(use, x, torch.nan).flatten(-2)
        q = torch.tensor(quantiles, dtype=flat.dtype, device=flat.device)
        lo, hi = torch.nanquantile(flat, q, dim=-1)[..., None, None]
    else:
        raise ValueError(f"{mode!r} is not a per-sample normalization; use one of {SAMPLE_MODES}")
    return _ordered(lo, hi)


def apply_bounds(x: Tensor, lo: Tensor, hi: Tensor, clip: bool) -> Tensor:
    """``(x - lo) / (hi - lo)`` as a new tensor, clipped to [0, 1] when asked."""
    x = (x - lo).mul_(1.0 / (hi - lo))
    return x.clamp_(0.0, 1.0) if clip else x
