"""Batch augmentation on the device: flips/90° turns, rotations within ±N°, random crops.

Nothing destructive (no crop-resize, noise or colour changes). The 8 flips/90° turns of the
square are exact; the optional free rotation is kornia's (the transform behind
``kornia.augmentation.RandomRotation``), bilinear for the image and nearest for the mask, with
one angle per sample applied to both. Each sample draws its own transform from an explicit
generator, so a run can be repeated (and resumed) exactly; all of them are applied with
whole-batch tensor ops.
"""

from __future__ import annotations

import numpy as np
import torch
from kornia.geometry.transform import rotate
from torch import Tensor


def random_dihedral(
    x: Tensor, y: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Apply one of the 8 dihedral transforms per sample to images ``x`` and masks ``y``.

    Any flip/90° rotation is an optional transpose followed by optional horizontal and vertical
    flips; each sample's transform is a view of it, copied once into the output. (Measured:
    this loop over the batch is 2.5-3x faster on a CPU than one vectorized gather of the same
    permutation, at 32 x 24 x 128² and 32 x 24 x 352².)
    """
    b = x.shape[0]
    draws = (torch.rand(3, b, generator=generator, device="cpu") < 0.5).tolist()
    square = x.shape[-1] == x.shape[-2]
    xo, yo = torch.empty_like(x), torch.empty_like(y)
    for i, (transpose, flip_w, flip_h) in enumerate(zip(*draws, strict=True)):
        xi, yi = x[i], y[i]
        if transpose and square:
            xi, yi = xi.transpose(-2, -1), yi.transpose(-2, -1)
        dims = [d for d, on in ((-1, flip_w), (-2, flip_h)) if on]
        if dims:
            xi, yi = xi.flip(dims), yi.flip(dims)
        xo[i], yo[i] = xi, yi
    return xo, yo


def random_rotate(
    x: Tensor,
    y: Tensor,
    degrees: float,
    generator: torch.Generator | None = None,
    padding: str = "reflection",
) -> tuple[Tensor, Tensor, Tensor]:
    """Rotate each sample by its own angle in ``[-degrees, degrees]`` about the tile centre.

    Args:
        x: Images ``(B, C, H, W)`` (bilinear).
        y: Masks ``(B, 1, H, W)`` (nearest: stays 0/1).
        degrees: Largest angle, counter-clockwise positive.
        generator: Source of the angles (CPU).
        padding: What fills the corners: ``zeros``, ``border`` or ``reflection``.

    Returns:
        The rotated images, masks and the angles used.
    """
    b = x.shape[0]
    angles = (torch.rand(b, generator=generator, device="cpu") * 2 - 1) * degrees
    angles = angles.to(x.device)
    xr = rotate(x, angles.to(x.dtype), mode="bilinear", padding_mode=padding)
    yr = rotate(y.to(x.dtype), angles.to(x.dtype), mode="nearest", padding_mode=padding)
    return xr, yr.to(y.dtype), angles


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


def augment_batch(
    x: Tensor,
    y: Tensor,
    *,
    flips: bool = True,
    rotate_degrees: float = 0.0,
    rotate_padding: str = "reflection",
    crop_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The configured training augmentation: crop, then flips/turns, then free rotation."""
    if crop_size:
        x, y = random_crop(x, y, crop_size, generator)
    if flips:
        x, y = random_dihedral(x, y, generator)
    if rotate_degrees > 0:
        x, y, _ = random_rotate(x, y, rotate_degrees, generator, rotate_padding)
    return x, y


def step_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from integers (seed, epoch, batch, rank): resumable draws."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed)
