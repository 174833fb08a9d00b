"""Tile panels as RGB arrays: composites, QA, DEM and outlines, and writing them as PNG.

Composites are stretched per band between the tile's q01 and q99 over its clear water pixels
away from the coast (all clear pixels when it has almost no water), so faint water detail such
as kelp canopy shows; land then saturates. Missing pixels are drawn magenta in every panel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from kelpseg.data.quality import dilate
from kelpseg.io.tiles import DEM_INDEX, NODATA, QA_INDEX

SWIR, NIR, RED, GREEN, BLUE = range(5)
COMPOSITES: dict[str, tuple[int, int, int]] = {
    "true colour (R,G,B)": (RED, GREEN, BLUE),
    "false colour (NIR,R,G)": (NIR, RED, GREEN),
    "SWIR (SWIR1,NIR,R)": (SWIR, NIR, RED),
}
QA_PANEL = "QA (clear / cloud / missing)"
DEM_PANEL = "DEM (missing / 0 / land), image coastline red"
MASK_PANEL = "mask outline"
PANELS: tuple[str, ...] = (*COMPOSITES, QA_PANEL, DEM_PANEL, MASK_PANEL)
MISSING_RGB = (200, 0, 200)
QA_CLEAR, QA_BAD = (225, 225, 225), (70, 140, 230)
DEM_NODATA, DEM_ZERO = (25, 45, 100), (140, 190, 235)
OUTLINE_RGB = (255, 225, 0)
COAST_RGB = (255, 120, 0)
IMAGE_COAST_RGB = (230, 30, 30)


def downsample(raw: np.ndarray, step: int) -> np.ndarray:
    """Every ``step``-th pixel of a ``(..., H, W)`` array (cheap thumbnails)."""
    return raw[..., ::step, ::step] if step > 1 else raw


def block_max(mask: np.ndarray, step: int) -> np.ndarray:
    """Downsample a boolean mask keeping any True in each ``step`` x ``step`` block."""
    if step <= 1:
        return mask.astype(bool)
    h, w = mask.shape
    hh, ww = -(-h // step) * step, -(-w // step) * step
    padded = np.zeros((hh, ww), bool)
    padded[:h, :w] = mask
    return padded.reshape(hh // step, step, ww // step, step).any(axis=(1, 3))


def _stretch_pixels(raw: np.ndarray) -> np.ndarray:
    """Pixels whose values set the stretch: clear water 3 px or more off the DEM coast (surf
    and mixed shore pixels would swamp the stretch), else clear, else all non-missing."""
    spec = raw[:5]
    clear = (spec.min(axis=0) != NODATA) & (raw[QA_INDEX] == 0)
    water = clear & ~dilate(raw[DEM_INDEX] > 0, 3)
    if water.sum() >= 0.01 * water.size:
        return water
    if clear.any():
        return clear
    return spec.min(axis=0) != NODATA


def composite(raw: np.ndarray, bands: tuple[int, int, int]) -> np.ndarray:
    """``(H, W, 3)`` uint8 composite of three bands, each stretched q01-q99 (module doc)."""
    sel = _stretch_pixels(raw)
    missing = (raw[:5] == NODATA).any(axis=0)
    out = np.zeros((*raw.shape[1:], 3), np.uint8)
    for i, b in enumerate(bands):
        v = raw[b].astype(np.float32)
        vals = v[sel]
        lo, hi = np.quantile(vals, [0.01, 0.99]) if vals.size else (0.0, 1.0)
        out[..., i] = np.clip((v - lo) / max(hi - lo, 1.0) * 255.0, 0, 255).astype(np.uint8)
    out[missing] = MISSING_RGB
    return out


def qa_panel(raw: np.ndarray) -> np.ndarray:
    """QA band: clear light grey, cloud/bad blue, missing magenta."""
    qa = raw[QA_INDEX]
    out = np.empty((*qa.shape, 3), np.uint8)
    out[:] = QA_CLEAR
    out[qa == 1] = QA_BAD
    out[(qa == NODATA) | (raw[:5] == NODATA).any(axis=0)] = MISSING_RGB
    return out


def dem_panel(raw: np.ndarray) -> np.ndarray:
    """DEM: missing dark blue, 0 (sea near the coast) light blue, land by elevation (terrain)."""
    from matplotlib import colormaps

    dem = raw[DEM_INDEX].astype(np.float32)
    land = dem > 0
    out = np.empty((*dem.shape, 3), np.uint8)
    out[:] = DEM_NODATA
    out[dem == 0] = DEM_ZERO
    if land.any():
        level = np.log1p(dem[land]) / np.log1p(max(float(dem[land].max()), 10.0))
        rgb = colormaps["terrain"](0.25 + 0.75 * level)[:, :3]
        out[land] = (rgb * 255).astype(np.uint8)
    return out


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that touch a pixel outside it (4-neighbours)."""
    m = mask.astype(bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def outline(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """``rgb`` with the outline of ``mask`` drawn in ``colour`` (a copy)."""
    out = rgb.copy()
    out[boundary(mask)] = colour
    return out


def save_png(rgb: np.ndarray, path: Path) -> Path:
    """Write an ``(H, W, 3)`` uint8 array as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, compress_level=3)
    return path


def tile_panels(
    raw: np.ndarray, mask: np.ndarray | None, step: int = 2
) -> dict[str, np.ndarray | None]:
    """The sample-grid panels of one tile, downsampled by ``step``.

    Returns:
        ``{name: rgb}`` for every name in :data:`PANELS`: the three composites, QA, DEM and the
        mask outline on the false colour composite (None for a tile without a mask).
    """
    small = downsample(raw, step)
    panels: dict[str, np.ndarray | None] = {
        name: composite(small, bands) for name, bands in COMPOSITES.items()
    }
    panels[QA_PANEL] = qa_panel(small)
    clear = (small[:5].min(axis=0) != NODATA) & (small[QA_INDEX] == 0)
    # MNDWI < 0 as in kelpseg.data.quality; cloudy / missing pixels follow the DEM (no line)
    image_land = np.where(clear, small[GREEN] < small[SWIR], small[DEM_INDEX] > 0)
    panels[DEM_PANEL] = outline(dem_panel(small), image_land, IMAGE_COAST_RGB)
    false = panels["false colour (NIR,R,G)"]
    panels[MASK_PANEL] = (
        None if mask is None else outline(false, block_max(mask, step), OUTLINE_RGB)
    )
    return panels


def thumbnail(raw: np.ndarray, mask: np.ndarray | None, step: int = 4) -> np.ndarray:
    """False colour, the DEM coastline in orange and the mask outline in yellow."""
    small = downsample(raw, step)
    rgb = outline(
        composite(small, COMPOSITES["false colour (NIR,R,G)"]), small[DEM_INDEX] > 0, COAST_RGB
    )
    if mask is not None:
        rgb = outline(rgb, block_max(mask, step), OUTLINE_RGB)
    return rgb
