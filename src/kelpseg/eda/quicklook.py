"""Quick-look PNG of a mapped scene: true colour, stretched, kelp outlined, with a title,
a legend and a scale bar.

Built row band by row band (:meth:`QuickLook.add`), so a whole Landsat scene becomes a
~1,000 px picture without holding the scene in memory: the colours from every ``step``-th
pixel, the kelp from every pixel (a block shows kelp when any of its pixels is kelp, so a
one-pixel bed is not lost to the decimation). Pixels without data (the scene's edge, SLC-off
gaps) are drawn as a light checkerboard, so they cannot be taken for dark water.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage

from kelpseg.eda.render import block_max, boundary
from kelpseg.io.tiles import NODATA

RGB = (2, 3, 4)  # Red, Green, Blue in the model's band order
OUTLINE = np.array([255, 40, 200], np.uint8)  # magenta: stands out on sea and land
FILL_LIGHT, FILL_DARK = 225, 190  # the checkerboard of pixels without data


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
        """``(h, w, 3)`` uint8: 2-98 % stretch per channel, a light checkerboard where data are
        missing, kelp outlined."""
        rgb = np.concatenate(self.rgb, axis=1).astype(np.float32)
        missing = (rgb == NODATA).any(0)
        out = np.zeros((*missing.shape, 3), np.uint8)
        for i, band in enumerate(rgb):
            valid = band[~missing]
            if valid.size:
                lo, hi = np.percentile(valid, (2, 98))
                out[..., i] = (np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(
                    np.uint8
                )
        yy, xx = np.indices(missing.shape)
        checker = np.where(((yy // 8) + (xx // 8)) % 2 == 0, FILL_LIGHT, FILL_DARK)
        out[missing] = checker[missing, None].astype(np.uint8)
        out[ndimage.binary_dilation(boundary(self.kelp))] = OUTLINE
        return out

    def save(
        self, path: Path, *, title: str = "", pixel_m: float | None = None, note: str = ""
    ) -> Path:
        """Write the PNG atomically: the picture, ``title`` above it, a legend and (with
        ``pixel_m``, the ground size of one raster pixel in metres) a scale bar below it."""
        from kelpseg.eda.plots import plt

        img = self.image()
        with plt.style.context("default"):  # the same picture whatever styled the process
            return self._draw(path, img, title=title, pixel_m=pixel_m, note=note)

    def _draw(
        self, path: Path, img: np.ndarray, *, title: str, pixel_m: float | None, note: str
    ) -> Path:
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        from kelpseg.eda.plots import plt, save_figure

        h, w = img.shape[:2]
        top, bottom = 44, 90  # px for the title; for the legend and the scale bar
        H = h + top + bottom
        fig = plt.figure(figsize=(max(w, 600) / 100, H / 100), dpi=100)
        ax = fig.add_axes((0, bottom / H, 1, h / H))
        ax.imshow(img, interpolation="nearest")
        ax.set_axis_off()
        if title:  # the scene id on its own line: a product id is ~40 characters
            first, _, rest = title.partition(" · ")
            text = f"{first}\n{rest}" if rest else first
            fig.text(0.5, 1 - 6 / H, text, ha="center", va="top", fontsize=9, linespacing=1.4)
        handles = [
            Line2D([], [], color=OUTLINE / 255, lw=2, label="kelp (outline)"),
            Patch(facecolor=(FILL_DARK / 255,) * 3, edgecolor="0.5", label="no data"),
        ]
        fig.legend(
            handles=handles, loc="lower right", bbox_to_anchor=(0.99, 0.005), ncol=2,
            fontsize=8, frameon=False,
        )  # fmt: skip
        if pixel_m:
            self._scale_bar(fig, w, H, pixel_m * self.step)
        if note:
            fig.text(0.01, 0.005, note, fontsize=7, color="0.35", va="bottom")
        return save_figure(fig, path, dpi=100)

    @staticmethod
    def _scale_bar(fig, w: int, H: int, metres_per_px: float) -> None:
        """A bar of a round length (about a fifth of the picture) under its left corner;
        ``H``: the figure's height in px."""
        from matplotlib.patches import Rectangle

        target = w * metres_per_px / 5
        exp = 10 ** math.floor(math.log10(target))
        length = max(m * exp for m in (1, 2, 5) if m * exp <= target)
        frac = length / metres_per_px / max(w, 600)
        y = 55 / H
        fig.add_artist(Rectangle((0.02, y), frac, 8 / H, transform=fig.transFigure, color="k"))
        label = f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"
        fig.text(0.02 + frac / 2, y - 4 / H, label, ha="center", va="top", fontsize=8)
