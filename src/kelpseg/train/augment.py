"""Batch augmentation on the device: the 8 flips/90° turns of the square, and random crops.

Nothing destructive (no resampling, noise or colour changes): spectral values stay intact.
Each sample draws its own transform, but all of them are applied with whole-batch tensor ops.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_dihedral(
    x: Tensor, y: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Apply one of the 8 dihedral transforms per sample to images ``x`` and masks ``y``.

    Any flip/90° rotation is an optional transpose followed by optional horizontal and vertical
    flips, so three per-sample ``where`` selections cover the whole group exactly.
    """
    b = x.shape[0]
    draws = torch.rand(3, b, generator=generator, device="cpu").to(x.device) < 0.5
    if x.shape[-1] == x.shape[-2]:
        sel = draws[0].view(b, 1, 1, 1)
        x = torch.where(sel, x.transpose(-2, -1), x)
        y = torch.where(sel, y.transpose(-2, -1), y)
    for dim, draw in ((-1, draws[1]), (-2, draws[2])):
        sel = draw.view(b, 1, 1, 1)
        x = torch.where(sel, x.flip(dim), x)
        y = torch.where(sel, y.flip(dim), y)
    return x, y


def random_crop(
    x: Tensor, y: Tensor, size: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A random ``size`` x ``size`` window per sample, gathered in one indexing op."""
    b, c, h, w = x.shape
    if size >= h and size >= w:
        return x, y
    size_h, size_w = min(size, h), min(size, w)
    oy = torch.randint(0, h - size_h + 1, (b,), generator=generator).to(x.device)
    ox = torch.randint(0, w - size_w + 1, (b,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(size_h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(size_w, device=x.device))[:, None, None, :]
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    xc = x[bi, torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    yc = y[bi, torch.zeros(1, 1, 1, 1, dtype=torch.long, device=x.device), rows, cols]
    return xc, yc
