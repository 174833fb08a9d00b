"""matplotlib figures of the EDA report (Agg backend, written as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

DISTRIBUTIONS: tuple[tuple[str, str], ...] = (
    ("kelp_pixels_pct", "kelp pixels (% of tile, training tiles)"),
    ("water_pixels_pct", "water pixels (% of tile, DEM <= 0 or missing)"),
    ("qa_corrupted_pixels_pct", "QA-corrupted pixels (% of tile)"),
    ("dem_nan_pixels_pct", "DEM-missing pixels (% of tile)"),
)


def save_figure(fig: plt.Figure, path: str | Path, *, dpi: int = 90, **kwargs) -> Path:
    """Write ``fig`` as a PNG atomically (temporary file + rename) and close it."""
    from kelpseg.io.raster import atomic_output

    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, **kwargs)
    finally:
        plt.close(fig)
    return Path(path)


def _save(fig: plt.Figure, path: Path) -> Path:
    return save_figure(fig, path, bbox_inches="tight")


def distributions(tiles: pd.DataFrame, path: Path) -> Path:
    """Histograms of the per-tile percentages in :data:`DISTRIBUTIONS`."""
    fig, axes = plt.subplots(1, len(DISTRIBUTIONS), figsize=(4 * len(DISTRIBUTIONS), 3))
    for ax, (col, title) in zip(axes, DISTRIBUTIONS, strict=True):
        vals = pd.to_numeric(tiles[col], errors="coerce").dropna() if col in tiles else []
        top = 100.0 if col != "kelp_pixels_pct" or not len(vals) else max(float(vals.max()), 1.0)
        ax.hist(vals, bins=np.linspace(0, top, 41), color="#2a7f8f")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("%")
        ax.set_yscale("log")
        ax.set_ylabel("tiles (log)")
    fig.tight_layout()
    return _save(fig, path)


def group_sizes(groups: pd.DataFrame, path: Path) -> Path:
    """Bar chart: how many AOI groups have 1, 2, 3, ... tiles."""
    sizes = groups.groupby("aoi").size()
    counts = sizes.value_counts().sort_index()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(counts.index.astype(int), counts.to_numpy(), color="#5a6fb0")
    ax.set_xlabel("tiles in the group")
    ax.set_ylabel("groups")
    ax.set_title(f"{len(sizes)} AOI groups of {len(groups)} training tiles", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def folds(summary: pd.DataFrame, path: Path) -> Path:
    """Stacked bars of tiles with and without kelp per fold, AOIs as a line."""
    fig, ax = plt.subplots(figsize=(6, 3))
    x = summary.index.to_numpy()
    with_kelp = summary["tiles with kelp"].to_numpy()
    ax.bar(x, with_kelp, color="#2e8b57", label="tiles with kelp")
    ax.bar(x, summary["tiles"] - with_kelp, bottom=with_kelp, color="#b0b0b0", label="no kelp")
    ax.plot(x, summary["AOIs"], "o-", color="#c0392b", label="AOIs")
    ax.set_xlabel("fold")
    ax.set_xticks(x)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)
