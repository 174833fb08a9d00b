"""Sliced inference over a raster of any size, in memory that does not grow with the raster.

The raster is cut into overlapping windows of the model's training size (``data.tile_size``).
Window offsets step by ``window - overlap``; the last window of a row or column is moved back to
end at the raster's edge, so only a raster smaller than one window is padded (bottom/right, with
``-32768`` = missing, as the training cache pads small tiles). Windows are batched, predicted by
the ensemble engine (:class:`kelpseg.infer.ensemble.Members`) and blended with a Hann weight
(with a small floor, so the raster's own edges, seen only by window edges, still get weight);
each pixel's probability is the weighted sum divided by the summed weights, so overlaps never
change the scale. The weighted sums are kept only for the rows that windows still to come can
touch: finished rows are handed on as :class:`Band` s (read window by window, written band by
band), so peak memory depends on the window, batch and raster width, not on the raster's height.

Features are computed per window, as in training: per-sample normalization and ``fill: min``
see one window, not the scene. A window with no valid pixel (a Landsat scene's fill collar,
a quarter of a WRS-2 scene) is not sent to the model: every window that touches a valid pixel
still is, so no valid pixel's probability changes. A ``skip`` rule (``kelpseg map``'s
:class:`kelpseg.geo.reach.Reach`: windows all on land or far offshore) may leave out more
windows; their pixels get probability 0 and no blend weight, and :class:`WindowCounts` says how
many windows were predicted and why the others were not.

:func:`sahi` is the SAHI-style option on the same blending: each input is cut into overlapping
slices of ``1/slices`` of its side, up-sampled (nearest) to the input's size before the model,
and the probabilities area-averaged back to the slice and blended.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kelpseg.io.tiles import BAND_NAMES, NODATA, _declared_nodata_to_missing, missing_pixels

if TYPE_CHECKING:
    from torch import Tensor

    from kelpseg.infer.ensemble import Members

WEIGHT_FLOOR = 0.01
"""Smallest blend weight (relative to the window centre's 1)."""


def window_offsets(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering ``[0, size)``; the last one ends at ``size``."""
    if stride < 1:
        raise ValueError(f"window stride must be at least 1 px, got {stride}")
    if size <= window:
        return [0]
    offs = list(range(0, size - window, stride))
    return [*offs, size - window]


def blend_weight(height: int, width: int, floor: float = WEIGHT_FLOOR) -> np.ndarray:
    """``(height, width)`` float32 Hann window (no zeros at the borders), at least ``floor``."""

    def hann(n: int) -> np.ndarray:
        return np.hanning(n + 2)[1:-1]

    return np.maximum(np.outer(hann(height), hann(width)), floor).astype(np.float32)


class Source(Protocol):
    """What sliced inference reads: a shape and boundless window reads of raw int16 bands."""

    height: int
    width: int

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray: ...


class ArraySource:
    """A raw ``(7, H, W)`` int16 array as a :class:`Source`."""

    def __init__(self, raw: np.ndarray) -> None:
        self.raw = raw
        self.height, self.width = raw.shape[1:]

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        out = np.full((self.raw.shape[0], height, width), NODATA, np.int16)
        part = self.raw[:, row : row + height, col : col + width]
        out[:, : part.shape[1], : part.shape[2]] = part
        return out


class RasterSource:
    """An open rasterio dataset (7 int16 bands) as a :class:`Source`; declared nodata values
    become ``-32768`` as :func:`kelpseg.io.tiles.read_tile` does."""

    def __init__(self, src) -> None:  # rasterio.io.DatasetReader
        if src.count != len(BAND_NAMES):
            raise ValueError(f"expected {len(BAND_NAMES)} bands {BAND_NAMES}, found {src.count}")
        if src.dtypes[0] != "int16":
            raise ValueError(f"expected int16 digital numbers, found {src.dtypes[0]}")
        self.src = src
        self.height, self.width = src.height, src.width
        self.nodata = tuple(src.nodatavals)

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        from rasterio.windows import Window

        h, w = min(height, self.height - row), min(width, self.width - col)
        part = self.src.read(window=Window(col, row, w, h))
        _declared_nodata_to_missing(part, self.nodata)
        if (h, w) == (height, width):
            return part
        out = np.full((part.shape[0], height, width), NODATA, np.int16)
        out[:, :h, :w] = part
        return out


@dataclass
class Band:
    """Finished rows ``[row, row + height)`` of the raster: the raw input, the blended ensemble
    probability and spread (float32; not yet masked where the input is missing)."""

    row: int
    raw: np.ndarray
    mean: np.ndarray
    std: np.ndarray | None

    @property
    def missing(self) -> np.ndarray:
        """True where any reflectance band of the input is missing."""
        return missing_pixels(self.raw)


@dataclass
class WindowCounts:
    """Windows of one sliced pass: how many, how many predicted, and why the others were not
    (``fill``: no valid pixel; ``land`` / ``offshore``: the ``skip`` rule's reasons)."""

    total: int = 0
    predicted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str | None) -> None:
        self.total += 1
        if reason is None:
            self.predicted += 1
        else:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, int]:
        """``{"total", "predicted", "skipped_fill", "skipped_land", "skipped_offshore"}``."""
        return {
            "total": self.total,
            "predicted": self.predicted,
            **{f"skipped_{k}": self.skipped.get(k, 0) for k in ("fill", "land", "offshore")},
        }


def default_overlap(window: int) -> int:
    """A quarter of the window."""
    return window // 4


def predict_sliced(
    engine: Members,
    source: Source,
    *,
    window: int,
    overlap: int | None = None,
    batch_size: int = 8,
    band_rows: int = 0,
    progress: bool = True,
    skip_empty: bool = True,
    skip: Callable[[np.ndarray, int, int], str | None] | None = None,
    counts: WindowCounts | None = None,
) -> Iterator[Band]:
    """Blended ensemble probabilities of a raster, yielded as finished row bands, top to bottom.

    Args:
        engine: The ensemble engine.
        source: The raster (:class:`RasterSource`, :class:`ArraySource`).
        window: Window side in px (the model's training tile size).
        overlap: Overlap of neighbouring windows in px (default a quarter window).
        batch_size: Windows per forward pass.
        band_rows: Hold finished rows until at least this many are ready (0: hand on every
            finished row at once); the result does not depend on it, only the memory does.
        progress: Show a progress bar over windows.
        skip_empty: Do not predict windows without a valid pixel (their pixels, all missing,
            get probability 0).
        skip: ``(raw window, row, col) -> reason or None``: windows with a reason are not
            predicted either (e.g. :meth:`kelpseg.geo.reach.Reach.why_skip`); their pixels get
            probability 0 unless a predicted window covers them too.
        counts: Filled with the windows predicted and skipped (by reason) as the pass runs.
    """
    overlap = default_overlap(window) if overlap is None else int(overlap)
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need 0 <= overlap < window, got window {window}, overlap {overlap}")
    H, W = source.height, source.width
    rows = window_offsets(H, window, window - overlap)
    cols = window_offsets(W, window, window - overlap)
    wins = [(r, c) for r in rows for c in cols]
    weight = blend_weight(window, window)
    spread = engine.spread
    top = 0  # first raster row held in the accumulators
    acc_w = np.zeros((0, W), np.float32)
    acc_p = np.zeros((0, W), np.float32)
    acc_s = np.zeros((0, W), np.float32) if spread else None

    def grow(bottom: int) -> None:
        nonlocal acc_w, acc_p, acc_s
        extra = bottom - (top + acc_w.shape[0])
        if extra > 0:
            pad = np.zeros((extra, W), np.float32)
            acc_w, acc_p = np.vstack([acc_w, pad]), np.vstack([acc_p, pad])
            if acc_s is not None:
                acc_s = np.vstack([acc_s, pad])

    def take(done: int) -> Band:
        nonlocal top, acc_w, acc_p, acc_s
        n = done - top
        wsum = np.where(acc_w[:n] > 0, acc_w[:n], 1.0)  # 0 only under skipped windows
        mean = acc_p[:n] / wsum
        std = acc_s[:n] / wsum if acc_s is not None else None
        band = Band(top, reader.submit(source.read, top, 0, n, W).result(), mean, std)
        acc_w, acc_p = acc_w[n:], acc_p[n:]
        if acc_s is not None:
            acc_s = acc_s[n:]
        top = done
        return band

    prepare = getattr(engine, "prepare", None)

    def why(x: np.ndarray, r: int, c: int) -> str | None:
        if skip_empty and missing_pixels(x).all():
            return "fill"
        return skip(x, r, c) if skip is not None else None

    def load(
        batch: list[tuple[int, int]],
    ) -> tuple[np.ndarray, list[str | None], np.ndarray | None]:
        """In the reader thread: the batch's windows, why each is not predicted (None: it is),
        and the engine's host-side preparation of those predicted."""
        raw = np.stack([source.read(r, c, window, window) for r, c in batch])
        reasons = [why(x, r, c) for x, (r, c) in zip(raw, batch, strict=True)]
        ready = (
            [prepare(x) for x, k in zip(raw, reasons, strict=True) if k is None] if prepare else []
        )
        both = bool(ready) and all(r is not None for r in ready)
        return raw, reasons, np.stack(ready) if both else None

    starts = list(range(0, len(wins), batch_size))
    bar = tqdm(total=len(wins), desc="map", unit="win", leave=False, disable=not progress)
    counts = counts if counts is not None else WindowCounts()
    # one reader thread owns the dataset (GDAL handles are not shared between threads): it
    # reads the next batch while the model runs on this one
    reader = ThreadPoolExecutor(1)
    nxt_batch = reader.submit(load, wins[:batch_size])
    try:
        for start in starts:
            batch = wins[start : start + batch_size]
            raw, reasons, fixed = nxt_batch.result()
            keep = [k is None for k in reasons]
            if start + batch_size < len(wins):
                nxt_batch = reader.submit(load, wins[start + batch_size : start + 2 * batch_size])
            if any(keep):
                mean, std = engine(raw[keep], fixed) if fixed is not None else engine(raw[keep])
                mean_np = mean.float().cpu().numpy()
                std_np = std.float().cpu().numpy() if std is not None else None
            for k in reasons:
                counts.add(k)
            j = 0  # index into the predicted windows
            for (r, c), kept in zip(batch, keep, strict=True):
                h, w = min(window, H - r), min(window, W - c)
                grow(r + h)
                if not kept:
                    continue
                i, j = j, j + 1
                ww = weight[:h, :w]
                sl = np.s_[r - top : r - top + h, c : c + w]
                acc_w[sl] += ww
                acc_p[sl] += ww * mean_np[i, :h, :w]
                if acc_s is not None and std_np is not None:
                    acc_s[sl] += ww * std_np[i, :h, :w]
            bar.update(len(batch))
            if counts.skipped:
                bar.set_postfix(predicted=counts.predicted, **counts.skipped, refresh=False)
            nxt = start + batch_size
            done = wins[nxt][0] if nxt < len(wins) else H
            if done > top and (done == H or done - top >= max(band_rows, 1)):
                yield take(done)
    finally:
        bar.close()
        reader.shutdown(cancel_futures=True)


def sahi(engine: Members, raw_np: np.ndarray, slices: int) -> tuple[Tensor, Tensor | None]:
    """SAHI-style prediction of a batch ``(B, 7, H, W)``: overlapping slices of ``1/slices`` of
    each side (a quarter slice of overlap), up-sampled to ``(H, W)``, predicted, area-averaged
    back and blended with the Hann weight. Returns ``(mean, std | None)`` as the engine does."""
    B, _, H, W = raw_np.shape
    sh, sw = max(1, math.ceil(H / slices)), max(1, math.ceil(W / slices))
    rows = window_offsets(H, sh, max(1, sh - sh // 4))
    cols = window_offsets(W, sw, max(1, sw - sw // 4))
    weight = torch.from_numpy(blend_weight(sh, sw)).to(engine.device)
    acc_w = torch.zeros((H, W), device=engine.device)
    acc_p = torch.zeros((B, H, W), device=engine.device)
    acc_s = torch.zeros((B, H, W), device=engine.device) if engine.spread else None
    for r in rows:
        for c in cols:
            part = torch.from_numpy(np.ascontiguousarray(raw_np[:, :, r : r + sh, c : c + sw]))
            up = F.interpolate(part.float(), size=(H, W), mode="nearest").to(torch.int16)
            mean, std = engine.combine(engine.probas(up.numpy()))
            mean = F.interpolate(mean[:, None], size=(sh, sw), mode="area")[:, 0]
            acc_w[r : r + sh, c : c + sw] += weight
            acc_p[:, r : r + sh, c : c + sw] += weight * mean
            if acc_s is not None and std is not None:
                std = F.interpolate(std[:, None], size=(sh, sw), mode="area")[:, 0]
                acc_s[:, r : r + sh, c : c + sw] += weight * std
    return acc_p / acc_w, None if acc_s is None else acc_s / acc_w
