"""Quick-look PNG of a mapped scene: true colour, stretched, kelp outlined.

Built row band by row band (:meth:`QuickLook.add`), so a whole Landsat scene becomes a
~1,000 px picture without holding the scene in memory: the colours from every ``step``-th
pixel, the kelp from every pixel (a block shows kelp when any of its pixels is kelp, so a
one-pixel bed is not lost to the decimation).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from kelpseg.eda.render import block_max, boundary
from kelpseg.io.raster import atomic_output
from kelpseg.io.tiles import NODATA

RGB = (2, 3, 4)  # Red, Green, Blue in the model's band order
OUTLINE = np.array([255, 40, 200], np.uint8)  # magenta: stands out on sea and land


class QuickLook:
    """Decimated true colour and kelp mask of a ``height`` x ``width`` raster."""

    def __init__(self, height: int, width: int, max_px: int = 1000) -> None:
        self.step = s = max(1, math.ceil(max(height, width) / max_px))
        self.cols = slice(0, width, s)
        self.rgb: list[np.ndarray] = []
        self.kelp = np.zeros((-(-height // s), -(-width // s)), bool)

    def add(self, row: int, raw: np.ndarray, kelp: np.ndarray) -> None:
        """Rows ``[row, row + h)``: raw ``(7, h, W)`` int16 and the ``(h, W)`` mask (1 kelp)."""
        first = (-row) % self.step
        rows = slice(first, raw.shape[1], self.step)
        self.rgb.append(raw[list(RGB), rows, self.cols])
        skip = row % self.step  # align the band to the picture's blocks
        aligned = np.zeros((skip + kelp.shape[0], kelp.shape[1]), bool)
        aligned[skip:] = kelp == 1
        blocks = block_max(aligned, self.step)
        self.kelp[row // self.step : row // self.step + len(blocks)] |= blocks

    def image(self) -> np.ndarray:
        """``(h, w, 3)`` uint8: 2-98 % stretch per channel, black where missing, kelp outlined."""
        rgb = np.concatenate(self.rgb, axis=1).astype(np.float32)
        missing = (rgb == NODATA).any(0)
        out = np.zeros((*missing.shape, 3), np.uint8)
        for i, band in enumerate(rgb):
            valid = band[~missing]
            if valid.size:
                lo, hi = np.percentile(valid, (2, 98))
                scaled = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1) * 255
                out[..., i] = np.where(missing, 0, scaled).astype(np.uint8)
        out[ndimage.binary_dilation(boundary(self.kelp))] = OUTLINE
        return out

    def save(self, path: Path) -> Path:
        """Write the PNG atomically."""
        from PIL import Image

        with atomic_output(path) as tmp:
            Image.fromarray(self.image()).save(tmp, format="PNG")
        return path
