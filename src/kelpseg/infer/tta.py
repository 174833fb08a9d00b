"""Test-time augmentation: dihedral transforms of the input, inverted on the output, averaged.

``none`` is the identity, ``flips`` adds the horizontal and vertical flips, ``d4`` is all eight
symmetries of the square (four rotations, each with and without a transpose). Probabilities are
averaged, so the result is again a probability.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

TTA_MODES = ("none", "flips", "d4")

# (k quarter turns, transpose first): applied to the last two dims
_D4 = [(k, t) for t in (False, True) for k in range(4)]
_FLIPS = ["id", "h", "v"]


def _fwd(x: Tensor, k: int, t: bool) -> Tensor:
    if t:
        x = x.transpose(-1, -2)
    return torch.rot90(x, k, dims=(-2, -1))


def _inv(y: Tensor, k: int, t: bool) -> Tensor:
    y = torch.rot90(y, -k, dims=(-2, -1))
    return y.transpose(-1, -2) if t else y


def tta_proba(proba: Callable[[Tensor], Tensor], x: Tensor, mode: str = "none") -> Tensor:
    """Mean of ``proba`` over the ``mode`` transforms of ``x`` (``(B, C, H, W)`` -> ``(B, H, W)``).

    Each output is mapped back by the exact inverse transform before averaging.
    """
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    if mode == "none":
        return proba(x).float()
    total: Tensor | None = None
    if mode == "flips":
        outs = []
        for f in _FLIPS:
            dims = {"id": [], "h": [-1], "v": [-2]}[f]
            xi = torch.flip(x, dims) if dims else x
            y = proba(xi).float()
            outs.append(torch.flip(y, dims) if dims else y)
        return torch.stack(outs).mean(0)
    for k, t in _D4:
        y = _inv(proba(_fwd(x, k, t)).float(), k, t)
        total = y if total is None else total + y
    assert total is not None
    return total / len(_D4)
