"""AOI de-duplication (``kelpseg groups``).

The competition holds several acquisitions of one area of interest. Tiles whose DEM
embeddings have cosine similarity >= a threshold are joined, and connected components of that
graph are the AOIs, so near-duplicates never straddle training and validation.

Two embeddings:

- ``dem-pool`` (default) needs no weights: the DEM's land mask and elevation pooled to a coarse
  grid, centred and L2-normalised (cosine similarity is then a correlation of coastline shape).
  Pooling makes it tolerant to a few px of DEM misalignment; a shift detected by
  ``kelpseg stats`` can also be undone before embedding (``data.correct_dem_shift``).
- ``timm``: global-pooled features of a timm CNN (the seed used an ImageNet ResNet-50) on the
  DEM drawn as an image. It needs weights on disk (``groups.timm_weights``); kelpseg never
  downloads them and never falls back to random weights.

Tiles with no land at all carry no DEM information; they are put in one "all-water" group rather
than guessed apart (the safe choice against leakage). ``groups.max_group_size`` caps giant
groups: a group above the cap is split along stricter similarity thresholds first, and what is
still too big is cut into equal chunks in tile order (deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from kelpseg.data.dem_shift import shift_dem
from kelpseg.io.raster import open_raster
from kelpseg.io.tiles import DEM_INDEX, NODATA

FEATURELESS = -1
EMBEDDINGS: tuple[str, ...] = ("dem-pool", "timm")


@dataclass(frozen=True)
class TimmSpec:
    """A timm backbone for the ``timm`` embedding.

    Attributes:
        model: timm model name, e.g. ``resnet50``.
        weights: Local weights file (``.safetensors``, ``.pth``, ``.bin``) for that model.
        input_size: Side the DEM is resized to before the network.
        batch_size: Tiles per forward pass.
    """

    model: str = "resnet50"
    weights: Path | None = None
    input_size: int = 224
    batch_size: int = 32


def read_dem(path: Path, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The DEM band of a tile, float32 with NaN where missing.

    Args:
        path: The tile.
        shift: A detected DEM shift ``(dx, dy)`` to undo (see :func:`quality.shift_dem`).
    """
    with open_raster(path) as src:
        dem = src.read(DEM_INDEX + 1)
    dem = shift_dem(dem, *shift).astype(np.float32)
    dem[dem == NODATA] = np.nan
    return dem


def _land_and_elevation(dems: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    dem = torch.from_numpy(np.nan_to_num(dems, nan=0.0)).float().clamp_min(0)[:, None]
    return (dem > 0).float(), torch.log1p(dem) / np.log1p(1000.0)


def dem_embedding(dems: np.ndarray, grid: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Embed ``(N, H, W)`` DEMs.

    Returns:
        ``(N, 2*grid*grid)`` unit vectors and a boolean array marking featureless tiles
        (no land pixel), whose vectors are zero.
    """
    land, elev = _land_and_elevation(dems)
    feats = torch.cat(
        [F.adaptive_avg_pool2d(land, grid), F.adaptive_avg_pool2d(elev, grid)], dim=1
    ).flatten(1)
    feats = feats - feats.mean(dim=1, keepdim=True)
    norm = feats.norm(dim=1, keepdim=True)
    featureless = (land.flatten(1).sum(1) == 0) | (norm[:, 0] < 1e-6)
    feats = torch.where(
        featureless[:, None], torch.zeros_like(feats), feats / norm.clamp_min(1e-12)
    )
    return feats.numpy(), featureless.numpy()


def load_timm(spec: TimmSpec) -> torch.nn.Module:
    """A pretrained timm feature extractor from local weights, in eval mode.

    Raises:
        ValueError: when no weights file is configured (kelpseg never downloads weights and
            never embeds with a randomly initialised network).
        FileNotFoundError: when the weights file does not exist.
    """
    if spec.weights is None:
        raise ValueError(
            f"groups.embedding=timm needs local weights for {spec.model!r}: set "
            "groups.timm_weights to a .safetensors/.pth file (kelpseg does not download "
            "weights), or use groups.embedding=dem-pool"
        )
    path = Path(spec.weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"groups.timm_weights: {path} is not a file")
    from kelpseg.compat import ensure_torchvision

    ensure_torchvision()
    import timm

    model = timm.create_model(
        spec.model, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)}
    )
    return model.eval()


def timm_embedding(
    dems: np.ndarray, spec: TimmSpec, model: torch.nn.Module | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Embed ``(N, H, W)`` DEMs with a pretrained timm CNN (land, elevation, land as RGB).

    Returns:
        L2-normalised features and the featureless flags, as :func:`dem_embedding`.
    """
    model = model if model is not None else load_timm(spec)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1)
    out, flags = [], []
    with torch.inference_mode():
        for i in range(0, len(dems), spec.batch_size):
            land, elev = _land_and_elevation(dems[i : i + spec.batch_size])
            img = torch.cat([land, elev.clamp(0, 1), land], dim=1)
            img = F.interpolate(img, size=spec.input_size, mode="bilinear", antialias=True)
            feats = model((img - mean) / std).flatten(1)
            out.append(F.normalize(feats, dim=1))
            flags.append(land.flatten(1).sum(1) == 0)
    feats, featureless = torch.cat(out), torch.cat(flags)
    feats[featureless] = 0
    return feats.numpy(), featureless.numpy()


def _components(emb: np.ndarray, threshold: float) -> np.ndarray:
    adj = emb @ emb.T >= threshold
    return connected_components(csr_matrix(adj), directed=False)[1]


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    _, first = np.unique(labels, return_index=True)
    order = {lab: i for i, lab in enumerate(labels[np.sort(first)])}
    return np.array([order[lab] for lab in labels], dtype=np.int64)


def group_embeddings(emb: np.ndarray, featureless: np.ndarray, threshold: float) -> np.ndarray:
    """AOI label per tile: connected components of ``cosine >= threshold``.

    Featureless tiles all share one group. Labels are 0..G-1, ordered by first appearance.
    """
    sim = emb @ emb.T
    adj = sim >= threshold
    adj[featureless, :] = False
    adj[:, featureless] = False
    _, labels = connected_components(csr_matrix(adj), directed=False)
    if featureless.any():
        labels = labels.copy()
        labels[featureless] = labels[featureless][0]
    return _first_appearance(labels)


def cap_groups(
    labels: np.ndarray,
    emb: np.ndarray,
    featureless: np.ndarray,
    threshold: float,
    max_size: int,
) -> tuple[np.ndarray, int]:
    """Split every group larger than ``max_size``.

    A big group is re-split at stricter thresholds (halfway to 1, up to five times), keeping
    the most similar tiles together; parts still too big (e.g. the featureless group) are cut
    into equal chunks in tile order. Deterministic.

    Returns:
        New labels (0..G-1 by first appearance) and the number of groups that were split.
    """
    out = labels.copy()
    next_label = int(labels.max()) + 1 if labels.size else 0
    sizes = np.bincount(labels)
    capped = 0
    for lab in np.flatnonzero(sizes > max_size):
        capped += 1
        pending = [np.flatnonzero(labels == lab)]
        t = threshold
        for _ in range(5):
            t = t + (1.0 - t) / 2
            split = []
            for idx in pending:
                if len(idx) <= max_size or featureless[idx].all():
                    split.append(idx)
                    continue
                sub = _components(emb[idx], t)
                split.extend(idx[sub == s] for s in np.unique(sub))
            pending = split
        for idx in pending:
            for chunk in np.array_split(idx, math.ceil(len(idx) / max_size)):
                out[chunk] = next_label
                next_label += 1
    return _first_appearance(out), capped


def embed_dems(
    dems: np.ndarray,
    embedding: str = "dem-pool",
    grid: int = 16,
    timm: TimmSpec | None = None,
    model: torch.nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and featureless flags of ``(N, H, W)`` DEMs with the named backend."""
    if embedding == "dem-pool":
        return dem_embedding(dems, grid)
    if embedding == "timm":
        return timm_embedding(dems, timm or TimmSpec(), model)
    raise ValueError(f"unknown embedding {embedding!r}; choose from {', '.join(EMBEDDINGS)}")


def embed_files(
    paths: list[Path],
    shifts: list[tuple[int, int]],
    embedding: str = "dem-pool",
    grid: int = 16,
    timm: TimmSpec | None = None,
    model: torch.nn.Module | None = None,
    batch: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Read and embed DEMs batch by batch (memory stays small for any number of tiles).

    DEMs whose shape differs from the first one's are resized to it (nearest).
    """
    embs, flags = [], []
    shape: tuple[int, ...] | None = None
    with tqdm(total=len(paths), desc="groups", leave=False) as bar:
        for i in range(0, len(paths), batch):
            part = zip(paths[i : i + batch], shifts[i : i + batch], strict=True)
            dems = [read_dem(p, s) for p, s in part]
            shape = shape or dems[0].shape
            dems = [
                d
                if d.shape == shape
                else F.interpolate(torch.from_numpy(d)[None, None], size=shape).numpy()[0, 0]
                for d in dems
            ]
            e, f = embed_dems(np.stack(dems), embedding, grid, timm, model)
            embs.append(e)
            flags.append(f)
            bar.update(len(dems))
    if not embs:
        return np.zeros((0, 1), np.float32), np.zeros(0, bool)
    return np.concatenate(embs), np.concatenate(flags)


def compute_groups(
    tile_ids: list[str],
    paths: list[Path],
    *,
    threshold: float = 0.97,
    grid: int = 16,
    embedding: str = "dem-pool",
    timm: TimmSpec | None = None,
    max_group_size: int | None = None,
    shifts: list[tuple[int, int]] | None = None,
) -> pd.DataFrame:
    """Group tiles into AOIs.

    Args:
        tile_ids: Tile ids, in the order of ``paths``.
        paths: Tiles to read the DEM from.
        threshold: Cosine similarity that joins two tiles.
        grid: Pooling grid of the ``dem-pool`` embedding.
        embedding: ``dem-pool`` or ``timm``.
        timm: Backbone and weights of the ``timm`` embedding.
        max_group_size: Split groups larger than this (None: no cap).
        shifts: Per-tile DEM shift ``(dx, dy)`` to undo before embedding.

    Returns:
        A table ``tile_id, aoi, featureless, uncapped_aoi`` (the group before the size cap);
        ``attrs["capped_groups"]`` counts the groups that were split.
    """
    if embedding not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {embedding!r}; choose from {', '.join(EMBEDDINGS)}")
    model = load_timm(timm or TimmSpec()) if embedding == "timm" else None  # fail early
    shifts = shifts or [(0, 0)] * len(paths)
    emb, featureless = embed_files(paths, shifts, embedding, grid, timm, model)
    before = labels = group_embeddings(emb, featureless, threshold)
    n_capped = 0
    if max_group_size is not None:
        labels, n_capped = cap_groups(labels, emb, featureless, threshold, max_group_size)
    table = pd.DataFrame(
        {"tile_id": tile_ids, "aoi": labels, "featureless": featureless, "uncapped_aoi": before}
    )
    table.attrs["capped_groups"] = n_capped
    return table


def capped_groups(groups: pd.DataFrame) -> int:
    """How many groups of a ``groups.csv`` table the size cap split."""
    if "uncapped_aoi" not in groups:
        return 0
    return int((groups.groupby("uncapped_aoi")["aoi"].nunique() > 1).sum())


def dem_shifts(stats: pd.DataFrame, tile_ids: list[str]) -> list[tuple[int, int]]:
    """The trusted DEM shifts of ``tile_ids`` from a ``tile_stats`` table, (0, 0) elsewhere."""
    if "dem_shifted" not in stats:
        return [(0, 0)] * len(tile_ids)
    rows = stats.set_index("tile_id").loc[tile_ids]
    trusted = rows["dem_shifted"].fillna(False).astype(bool)
    dx = np.where(trusted, rows["dem_shift_x"].fillna(0), 0).astype(int)
    dy = np.where(trusted, rows["dem_shift_y"].fillna(0), 0).astype(int)
    return [(int(x), int(y)) for x, y in zip(dx, dy, strict=True)]
