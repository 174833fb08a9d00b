"""AOI de-duplication (``kelpseg groups``).

The competition holds several acquisitions of one area of interest. Tiles whose DEMs match are
joined, and connected components of that graph are the AOIs, so acquisitions of one area never
straddle training and validation.

The DEM of an acquisition has holes: Landsat-7 SLC-off gaps and scene edges are -32768 in all
seven bands, the DEM included, and each acquisition has its own. A DEM pixel is therefore
*unknown* where both the DEM and the spectral bands are missing; where only the DEM is missing
(offshore, beyond the DEM product's coverage) it is open sea, the same in every acquisition.

Two embeddings:

- ``dem-pool`` (default) needs no weights. Each DEM is pooled to a coarse grid over its known
  pixels (land share, log elevation and DEM coverage per cell) with a per-cell weight, the
  share of known pixels. Two tiles are compared by a weighted Pearson correlation over the
  cells known in both (weight ``(w_i * w_j)^2``), computed for all pairs with a few matrix
  products in blocks, and joined when it is >= ``threshold`` and they share at least
  ``min_overlap`` of the tile.
  A tile left alone by that rule (big holes) joins the tile it matches best if they share at
  least ``ATTACH_OVERLAP`` of the tile and still correlate >= ``threshold``; one that matches
  nothing stays a group of its own (never the all-water group, which the size cap cuts).
  Pooling makes it tolerant to a few px of DEM misalignment; a shift detected by
  ``kelpseg stats`` can also be undone before embedding (``data.correct_dem_shift``).
- ``timm``: global-pooled features of a timm CNN (the seed used an ImageNet ResNet-50) on the
  DEM drawn as an image (unknown pixels drawn as sea), joined at cosine >= ``threshold``. It
  needs weights on disk (``groups.timm_weights``); kelpseg never downloads them and never falls
  back to random weights.

Tiles whose known pixels hold no DEM at all (open sea beyond the DEM's coverage, or a coast
hidden in the holes) carry no DEM information; they are put in one "all-water" group rather
than guessed apart. A coastal strip of elevation 0 is information: it places a tile whose
land lies just outside it or in its holes.
``groups.max_group_size`` caps that group only (chunks in tile order, for fold balance): a real
area is never split, whatever its number of acquisitions, since its parts would land in
different folds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
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
NO_DEM = -1.0
""":func:`read_dem`'s value where the DEM product has no data under valid pixels (offshore)."""
MIN_OVERLAP = 0.25
"""Share of the tile that must be known in both DEMs for two tiles to be joined."""
ATTACH_OVERLAP = 0.05
"""Share known in both that lets a tile with no match at :data:`MIN_OVERLAP` join its best."""
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
    """The DEM of a tile file for grouping (see :func:`dem_for_grouping`); reads two bands."""
    with open_raster(path) as src:
        spectral, dem = src.read([1, DEM_INDEX + 1])
    return dem_for_grouping(spectral, dem, shift)


def dem_for_grouping(
    spectral: np.ndarray, dem: np.ndarray, shift: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """A DEM as grouping reads it: float32 metres, :data:`NO_DEM` offshore, NaN where unknown.

    A pixel is unknown where the DEM and the spectral bands are all missing (SLC-off gaps,
    scene edges). A DEM missing under valid spectral pixels is sea beyond the DEM product's
    coverage (:data:`NO_DEM`), which every acquisition of an area shares, like the strip of
    elevation 0 along the coast. For a tile already in memory:
    ``dem_for_grouping(raw[0], raw[DEM_INDEX], shift)``.

    Args:
        spectral: Any one spectral band of the tile (``-32768`` where missing).
        dem: The raw DEM band.
        shift: A detected DEM shift ``(dx, dy)`` to undo (see :func:`quality.shift_dem`); the
            holes move with the DEM.
    """
    out = dem.astype(np.float32)
    gone = dem == NODATA
    out[gone] = NO_DEM
    out[gone & (spectral == NODATA)] = np.nan
    return shift_dem(out, *shift)


def _land_and_elevation(dems: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    dem = torch.from_numpy(np.nan_to_num(dems, nan=0.0)).float().clamp_min(0)[:, None]
    return (dem > 0).float(), torch.log1p(dem) / np.log1p(1000.0)


@dataclass(frozen=True)
class PooledDems:
    """DEMs pooled to a ``grid x grid`` raster of ``C`` cells over their known pixels.

    Attributes:
        values: ``(N, 3, C)`` per cell, over its known pixels: the share of land (elevation
            > 0), the mean ``log1p(metres) / log1p(1000)``, and the share the DEM covers
            (land and the coastal strip of elevation 0).
        weight: ``(N, C)`` share of known pixels in each cell (0: nothing known there).
        featureless: ``(N,)`` the DEM covers none of the known pixels (open sea, or the
            coast hidden in holes): nothing tells where the tile is.
    """

    values: np.ndarray
    weight: np.ndarray
    featureless: np.ndarray

    @staticmethod
    def concat(parts: list[PooledDems]) -> PooledDems:
        """One table from batches."""
        names = [f.name for f in fields(PooledDems)]
        return PooledDems(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in names})


def _cell_sums(x: np.ndarray, grid: int) -> np.ndarray:
    """Sums of ``(N, H, W)`` values over a ``grid x grid`` raster of cells -> ``(N, C)``."""
    rows = (np.arange(grid) * x.shape[1]) // grid
    cols = (np.arange(grid) * x.shape[2]) // grid
    sums = np.add.reduceat(np.add.reduceat(x, rows, axis=1), cols, axis=2)
    return sums.reshape(len(x), -1)


def pool_dems(dems: np.ndarray, grid: int = 16) -> PooledDems:
    """Pool ``(N, H, W)`` DEMs (:func:`read_dem`: NaN unknown) over their known pixels."""
    grid = min(grid, *dems.shape[1:])
    known = ~np.isnan(dems)
    dem = np.where(known, dems, NO_DEM).astype(np.float32)
    cover = dem >= 0
    channels = (dem > 0, np.log1p(np.maximum(dem, 0)) / np.float32(math.log1p(1000.0)), cover)
    n_known = _cell_sums(known.astype(np.float32), grid)
    area = _cell_sums(np.ones((1, *dems.shape[1:]), np.float32), grid)
    safe = np.maximum(n_known, 1.0)
    values = np.stack([_cell_sums(c.astype(np.float32), grid) / safe for c in channels], 1)
    return PooledDems(
        values=values.astype(np.float32),
        weight=(n_known / area).astype(np.float32),
        featureless=~(cover & known).reshape(len(dems), -1).any(1),
    )


@dataclass(frozen=True)
class Matches:
    """Pairs of tiles whose DEMs match, and each tile's best match.

    Attributes:
        pairs: ``(M, 2)`` tile indices ``i < j`` joined by the strict rule.
        best: ``(N,)`` index of the best-correlated tile sharing >= the attach overlap
            (-1: none).
        best_r: ``(N,)`` that correlation (-inf: none).
    """

    pairs: np.ndarray
    best: np.ndarray
    best_r: np.ndarray


def masked_matches(
    pooled: PooledDems,
    threshold: float,
    min_overlap: float,
    attach_overlap: float,
    block: int = 512,
) -> Matches:
    """Weighted Pearson correlation of every pair of pooled DEMs over the cells known in both.

    For tiles ``i, j`` each cell counts with weight ``(w_i * w_j)^2``; the channels (land share,
    elevation, DEM coverage) are pooled into one correlation. All pairs come from seven matrix
    products per block of rows (``block x N`` memory), so thousands of tiles take seconds.

    Args:
        pooled: Pooled DEMs.
        threshold: Correlation that joins two tiles.
        min_overlap: Jointly known share of the tile (``sum((w_i * w_j)^2) / C``) a joining
            pair needs.
        attach_overlap: Jointly known share a best match needs.
        block: Rows per block.
    """
    # A cell's mean over its known pixels is biased where a hole's border crosses the coast:
    # partly known cells count less (weight squared).
    w = pooled.weight.astype(np.float64) ** 2
    v = pooled.values.astype(np.float64)
    vw = v * w[:, None]
    a = vw.sum(1)  # per cell, weighted sums over the channels
    b = (vw * v).sum(1)  # weighted sums of squares
    p = vw.reshape(len(v), -1)
    n_tiles, cells = w.shape
    channels = v.shape[1]
    live = ~pooled.featureless
    pairs, best = [], np.full(n_tiles, -1, np.int64)
    best_r = np.full(n_tiles, -np.inf)
    for i0 in range(0, n_tiles, block):
        i1 = min(i0 + block, n_tiles)
        ww = w[i0:i1] @ w.T
        n = channels * ww
        sx, sy = a[i0:i1] @ w.T, w[i0:i1] @ a.T
        vx = b[i0:i1] @ w.T - sx * sx / np.maximum(n, 1e-12)
        vy = w[i0:i1] @ b.T - sy * sy / np.maximum(n, 1e-12)
        cov = p[i0:i1] @ p.T - sx * sy / np.maximum(n, 1e-12)
        ok = (vx > 1e-9 * n) & (vy > 1e-9 * n)
        r = np.where(ok, cov / np.sqrt(np.where(ok, vx * vy, 1.0)), 0.0)
        overlap = ww / cells
        rows = np.arange(i0, i1)
        r[rows - i0, rows] = -np.inf  # not oneself
        r[:, ~live] = -np.inf
        r[~live[i0:i1]] = -np.inf
        ii, jj = np.nonzero((r >= threshold) & (overlap >= min_overlap))
        keep = ii + i0 < jj
        pairs.append(np.stack([ii[keep] + i0, jj[keep]], axis=1))
        r = np.where(overlap >= attach_overlap, r, -np.inf)
        j = r.argmax(axis=1)
        best[i0:i1] = np.where(np.isfinite(r[rows - i0, j]), j, -1)
        best_r[i0:i1] = r[rows - i0, j]
    all_pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
    return Matches(all_pairs, best, best_r)


def _graph_labels(n: int, pairs: np.ndarray) -> np.ndarray:
    adj = csr_matrix((np.ones(len(pairs), bool), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(adj, directed=False)[1]


def group_pooled(
    pooled: PooledDems,
    threshold: float,
    min_overlap: float = MIN_OVERLAP,
    attach_overlap: float = ATTACH_OVERLAP,
) -> np.ndarray:
    """AOI label per tile from pooled DEMs (see :func:`masked_matches`).

    Tiles with no strict match join their best match when it correlates >= ``threshold``
    over at least ``attach_overlap`` of the tile (a tile with big holes). Featureless tiles
    all share one group. Labels are 0..G-1, ordered by first appearance.
    """
    n = len(pooled.featureless)
    m = masked_matches(pooled, threshold, min_overlap, attach_overlap)
    degree = np.bincount(m.pairs.ravel(), minlength=n)
    lonely = np.flatnonzero((degree == 0) & (m.best >= 0) & (m.best_r >= threshold))
    extra = np.stack([lonely, m.best[lonely]], axis=1)
    labels = _graph_labels(n, np.concatenate([m.pairs, extra]).astype(np.int64))
    return _with_featureless(labels, pooled.featureless)


def _with_featureless(labels: np.ndarray, featureless: np.ndarray) -> np.ndarray:
    if featureless.any():
        labels = labels.copy()
        labels[featureless] = labels[featureless][0]
    return _first_appearance(labels)


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
        L2-normalised features and flags for tiles with no land (their features are 0).
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


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    _, first = np.unique(labels, return_index=True)
    order = {lab: i for i, lab in enumerate(labels[np.sort(first)])}
    return np.array([order[lab] for lab in labels], dtype=np.int64)


def group_embeddings(emb: np.ndarray, featureless: np.ndarray, threshold: float) -> np.ndarray:
    """AOI label per tile: connected components of ``cosine >= threshold`` (timm embedding).

    Featureless tiles all share one group. Labels are 0..G-1, ordered by first appearance.
    """
    adj = emb @ emb.T >= threshold
    adj[featureless, :] = False
    adj[:, featureless] = False
    _, labels = connected_components(csr_matrix(adj), directed=False)
    return _with_featureless(labels, featureless)


def cap_groups(
    labels: np.ndarray, featureless: np.ndarray, max_size: int
) -> tuple[np.ndarray, int]:
    """Cut the featureless (all-water) group into chunks of at most ``max_size``, in tile order.

    Only that group is ever split: the tiles in it carry no DEM information anyway, while a
    real area (any group with land) cut into chunks would straddle folds. Deterministic.

    Returns:
        New labels (0..G-1 by first appearance) and the number of groups that were split.
    """
    out = labels.copy()
    idx = np.flatnonzero(featureless)
    if len(idx) <= max_size or np.isin(labels[idx], labels[~featureless]).any():
        return out, 0
    next_label = int(labels.max()) + 1
    for chunk in np.array_split(idx, math.ceil(len(idx) / max_size)):
        out[chunk] = next_label
        next_label += 1
    return _first_appearance(out), 1


def read_dems(
    paths: list[Path], shifts: list[tuple[int, int]], batch: int = 256
) -> Iterator[np.ndarray]:
    """``(B, H, W)`` batches of DEMs (:func:`read_dem`); memory stays small for any number.

    DEMs whose shape differs from the first one's are resized to it (nearest).
    """
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
            bar.update(len(dems))
            yield np.stack(dems)


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
    min_overlap: float = MIN_OVERLAP,
) -> pd.DataFrame:
    """Group tiles into AOIs.

    Args:
        tile_ids: Tile ids, in the order of ``paths``.
        paths: Tiles to read the DEM from.
        threshold: Correlation (``dem-pool``) or cosine similarity (``timm``) that joins two
            tiles.
        grid: Pooling grid of the ``dem-pool`` embedding.
        embedding: ``dem-pool`` or ``timm``.
        timm: Backbone and weights of the ``timm`` embedding.
        max_group_size: Cut the featureless group into chunks of at most this (None: no cap);
            groups with land are never split.
        shifts: Per-tile DEM shift ``(dx, dy)`` to undo before embedding.
        min_overlap: ``dem-pool``: jointly known share of the tile two tiles need to be joined.

    Returns:
        A table ``tile_id, aoi, featureless, uncapped_aoi`` (the group before the size cap);
        ``attrs["capped_groups"]`` counts the groups that were split.
    """
    if embedding not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {embedding!r}; choose from {', '.join(EMBEDDINGS)}")
    model = load_timm(timm or TimmSpec()) if embedding == "timm" else None  # fail early
    shifts = shifts or [(0, 0)] * len(paths)
    if not paths:
        featureless = np.zeros(0, bool)
        labels = np.zeros(0, np.int64)
    elif embedding == "dem-pool":
        pooled = PooledDems.concat([pool_dems(d, grid) for d in read_dems(paths, shifts)])
        featureless = pooled.featureless
        labels = group_pooled(pooled, threshold, min_overlap)
    else:
        parts = [timm_embedding(d, timm or TimmSpec(), model) for d in read_dems(paths, shifts)]
        emb, featureless = (np.concatenate(x) for x in zip(*parts, strict=True))
        labels = group_embeddings(emb, featureless, threshold)
    before, n_capped = labels, 0
    if max_group_size is not None:
        labels, n_capped = cap_groups(labels, featureless, max_group_size)
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
