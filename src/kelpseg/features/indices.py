"""Spectral index registry.

The 17 indices of the 2nd-place model are one table of formulas (DESIGN.md), including its
non-textbook IPVI, so results stay comparable with that pipeline. ``eps`` is added to every
denominator. Inputs are tensors of digital numbers (``units="dn"``, as the 2nd-place code) or
surface reflectance (``units="reflectance"``: ``DN * 0.0000275 - 0.2``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import Tensor

EPS = 1e-10
REFLECTANCE_SCALE = 0.0000275
REFLECTANCE_OFFSET = -0.2


class Bands(NamedTuple):
    """Named band tensors: S = SWIR1, N = NIR, R = Red, G = Green, B = Blue, DEM."""

    S: Tensor
    N: Tensor
    R: Tensor
    G: Tensor
    B: Tensor
    DEM: Tensor


IndexFn = Callable[[Bands], Tensor]

INDICES: dict[str, IndexFn] = {
    "DEMWM": lambda b: b.DEM.clamp_min(0),
    "NDVI": lambda b: (b.N - b.R) / (b.N + b.R + EPS),
    "ATSAVI": lambda b: (
        1.22
        * (b.N - 1.22 * b.R - 0.03)
        / (1.22 * b.N + b.R - 1.22 * 0.03 + 0.08 * (1 + 1.22**2) + EPS)
    ),
    "AVI": lambda b: 2 * b.N - b.R,
    "CI": lambda b: (b.R - b.B) / (b.R + EPS),
    "ClGreen": lambda b: b.N / (b.G + EPS) - 1,
    "GBNDVI": lambda b: (b.N - (b.G + b.B)) / (b.N + b.G + b.B + EPS),
    "GVMI": lambda b: ((b.N + 0.1) - (b.S + 0.02)) / ((b.N + 0.1) + (b.S + 0.02) + EPS),
    "IPVI": lambda b: (b.N / (b.N + b.R + EPS) / 2) * ((b.R - b.G) / (b.R + EPS) + b.G + 1),
    "KIVU": lambda b: (b.B - b.R) / (b.G + EPS),
    "MCARI": lambda b: ((b.N - b.R) - 0.2 * (b.N - b.G)) * (b.N / (b.R + EPS)),
    "MVI": lambda b: b.N / (b.S + EPS),
    "NormNIR": lambda b: b.N / (b.N + b.R + b.G + EPS),
    "PNDVI": lambda b: (b.N - (b.G + b.R + b.B)) / (b.N + b.G + b.R + b.B + EPS),
    "SABI": lambda b: (b.N - b.R) / (b.G + b.B + EPS),
    "WDRVI": lambda b: (0.1 * b.N - b.R) / (0.1 * b.N + b.R + EPS),
    "mCRIG": lambda b: (1 / (b.B + EPS) - 1 / (b.G + EPS)) * b.N,
}

WINNING_17: tuple[str, ...] = tuple(INDICES)


def resolve(names: list[str]) -> list[str]:
    """Validate index names (case-sensitive, as in the table); raise on unknown ones."""
    unknown = [n for n in names if n not in INDICES]
    if unknown:
        raise KeyError(f"unknown spectral index {unknown}; known: {', '.join(INDICES)}")
    return list(names)
