"""The tile prediction pipeline shared by the torch and onnx backends (no torch import here).

Tiles are read, checked and decoded by a pool of reader threads (GDAL and numpy release the
GIL), batched while consecutive tiles share a shape, passed to an *engine* (any callable from a
raw int16 batch ``(N, 7, H, W)`` to the probability ``(N, H, W)`` and optionally the members'
spread), and written by a pool of writer threads. Every write is atomic; a tile's mask is
written last and carries a fingerprint of the models and settings, so a rerun with
``overwrite=False`` keeps exactly the tiles whose outputs are complete and were made the same
way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from tqdm.auto import tqdm

from kelpseg.config import PostprocessConfig
from kelpseg.infer.postprocess import apply as postprocess_mask
from kelpseg.io import BatchReport, Georef, TileError, write_raster
from kelpseg.io.discover import KELP_SUFFIX, PROBA_SUFFIX, duplicate_ids
from kelpseg.io.plausibility import check_band_order
from kelpseg.io.tiles import MASK_NODATA, missing_pixels, read_tile_georef

SPREAD_SUFFIX = "_spread.tif"
PROBA_U8_NODATA = 255
PROBA_FORMATS = ("float32", "uint8")

Engine = Callable[..., tuple[Any, Any]]
"""Raw int16 batch -> (probability ``(N, H, W)``, spread ``(N, H, W)`` or None); numpy arrays
or tensors (moved to the host here). An engine with a ``prepare`` method (one raw tile -> an
array or None) has it run in the reader threads; the stacked results come as its second
argument, so per-tile host work (the DEM shift correction) stays off the main thread."""


@dataclass
class PredictResult:
    """Written masks by tile id, the band-order warnings by tile id, and the batch report."""

    masks: dict[str, Path] = field(default_factory=dict)
    report: BatchReport = field(default_factory=lambda: BatchReport("predict"))
    warnings: dict[str, str] = field(default_factory=dict)
    threshold: float = 0.5
    batch_size: int = 8
    reused: int = 0


@dataclass
class Outputs:
    """What to write for each tile, and how (checked on creation; a post-processing config
    with every step off counts as none)."""

    threshold: float
    cut: float
    """The value the probability is compared with (0.5 for a hard vote's share of members)."""
    probabilities: bool = False
    proba_format: str = "float32"
    spread: bool = False
    postprocess: PostprocessConfig | None = None
    members: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.proba_format not in PROBA_FORMATS:
            raise ValueError(f"proba format must be float32 or uint8, got {self.proba_format!r}")
        if self.postprocess == PostprocessConfig():
            self.postprocess = None

    def settings(self) -> dict[str, Any]:
        """What of these changes the files written: part of every fingerprint."""
        found: dict[str, Any] = {"threshold": self.threshold, "proba_format": self.proba_format}
        if self.postprocess is not None:
            found["postprocess"] = self.postprocess.model_dump()
        return found


def check_batch_size(batch_size: int) -> None:
    """ValueError for a batch size below 1."""
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")


def fingerprint(parts: Iterable[bytes], settings: dict[str, Any]) -> str:
    """A short hash of the models (their bytes) and the settings: reruns reuse only files
    made the same way."""
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for part in parts:
        h.update(part)
    return h.hexdigest()[:16]


def _complete(paths: list[Path], print_: str) -> bool:
    """Every file is there, reads back, and was written with the same models and settings."""
    try:
        for path in paths:
            with rasterio.open(path) as src:
                if src.tags().get("fingerprint") != print_:
                    return False
                src.read()
    except Exception:  # missing, truncated or not a raster: redo it
        return False
    return True


def write_proba(
    path: Path,
    p: np.ndarray,
    missing: np.ndarray,
    georef: Georef,
    tags: dict[str, str],
    fmt: str = "float32",
) -> Path:
    """A probability map: float32 with NaN nodata, or uint8 ``p * 254`` with 255 nodata."""
    if fmt == "uint8":
        q = np.rint(np.clip(p, 0, 1) * 254).astype(np.uint8)
        q[missing] = PROBA_U8_NODATA
        return write_raster(
            path,
            q,
            georef=georef,
            nodata=PROBA_U8_NODATA,
            band_names=["kelp_probability_x254"],
            tags={**tags, "scale": str(1 / 254)},
        )
    pf = p.astype(np.float32)
    pf[missing] = np.nan
    return write_raster(
        path, pf, georef=georef, nodata=float("nan"), band_names=["kelp_probability"], tags=tags
    )


def io_threads() -> int:
    """Reader (and writer) threads of the prediction pipeline: half the CPUs, 2 to 8. Reading,
    decoding and checking a 350 px tile costs a few ms of CPU (GDAL and numpy release the GIL),
    so on a GPU host two threads would cap the pipeline near 200 tiles/s."""
    return max(2, min(8, (os.cpu_count() or 2) // 2))


def _host(x: Any) -> np.ndarray | None:
    """A tensor or array on the host, as numpy."""
    if x is None:
        return None
    return x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x)


def run(
    engine: Engine,
    items: list[tuple[str, Path]],
    out: Path,
    outputs: Outputs,
    *,
    batch_size: int,
    fingerprint: str,
    overwrite: bool = True,
    accept: Callable[[np.ndarray, Path], None] | None = None,
) -> PredictResult:
    """Predict ``{tile_id}_kelp.tif`` (and the requested outputs) for each ``(tile_id, path)``.

    Args:
        engine: The model(s); see :data:`Engine`.
        items: Tile ids and files; two inputs with one id are refused (ValueError).
        out: Output folder.
        outputs: What to write.
        batch_size: Tiles per engine call.
        fingerprint: Models-and-settings tag written into every output.
        overwrite: False keeps a tile whose outputs are complete and carry ``fingerprint``.
        accept: Raises :class:`TileError` for a tile the engine cannot take (reported, skipped).
    """
    check_batch_size(batch_size)
    dups = duplicate_ids(items)
    if dups:
        raise ValueError(dups)
    result = PredictResult(threshold=outputs.threshold, batch_size=batch_size)
    out.mkdir(parents=True, exist_ok=True)
    post = outputs.postprocess

    def paths(tile_id: str) -> list[Path]:
        found = [out / f"{tile_id}{KELP_SUFFIX}"]
        if outputs.probabilities:
            found.append(out / f"{tile_id}{PROBA_SUFFIX}")
        if outputs.spread:
            found.append(out / f"{tile_id}{SPREAD_SUFFIX}")
        return found

    def write_one(
        tile_id: str,
        path: Path,
        p: np.ndarray,
        sd_in: np.ndarray | None,
        missing: np.ndarray,
        georef: Georef,
        raw: np.ndarray,
    ) -> Path:
        if post is not None:
            mask = postprocess_mask(p, raw, post, outputs.cut)
        else:
            mask = (p >= outputs.cut).astype(np.uint8)
            mask[missing] = MASK_NODATA
        tags = {
            "threshold": str(outputs.threshold),
            "source": path.name,
            "fingerprint": fingerprint,
        }
        if outputs.members > 1:
            tags["members"] = str(outputs.members)
        if outputs.probabilities:
            fmt = outputs.proba_format
            write_proba(out / f"{tile_id}{PROBA_SUFFIX}", p, missing, georef, tags, fmt)
        if outputs.spread and sd_in is not None:
            sd = sd_in.astype(np.float32)
            sd[missing] = np.nan
            write_raster(
                out / f"{tile_id}{SPREAD_SUFFIX}",
                sd,
                georef=georef,
                nodata=float("nan"),
                band_names=["member_std"],
                tags=tags,
            )
        # the mask last: its presence (with the fingerprint) marks the tile done
        return write_raster(
            out / f"{tile_id}{KELP_SUFFIX}", mask, georef=georef, nodata=MASK_NODATA, tags=tags
        )

    pending: list[tuple[str, Path, np.ndarray, np.ndarray, Georef, Any]] = []
    writes: deque[tuple[str, Future[Path]]] = deque()
    prepare = getattr(engine, "prepare", None)

    def flush() -> None:
        if not pending:
            return
        batch = np.stack([p[2] for p in pending])
        if prepare is None:
            mean, std = engine(batch)
        else:
            ready = [p[5] for p in pending]
            both = all(r is not None for r in ready)
            mean, std = engine(batch, np.stack(ready) if both else None)
        mean_np, std_np = _host(mean), _host(std)
        assert mean_np is not None
        for i, (tile_id, path, raw, missing, georef, _) in enumerate(pending):
            sd = std_np[i] if std_np is not None else None
            args = (tile_id, path, mean_np[i], sd, missing, georef, raw)
            writes.append((tile_id, writer.submit(write_one, *args)))
        pending.clear()
        while len(writes) > 2 * batch_size:
            finish_write()

    def finish_write() -> None:
        tile_id, fut = writes.popleft()
        result.masks[tile_id] = fut.result()
        result.report.ok += 1

    def load(tile_id: str, path: Path) -> tuple[Any, ...]:
        """Runs in a reader thread: reuse marker, the read tile, or the TileError."""
        if not overwrite and _complete(paths(tile_id), fingerprint):
            return ("reused",)
        try:
            raw, georef = read_tile_georef(path)
            if accept is not None:
                accept(raw, path)
        except TileError as err:
            return ("error", err)
        ready = prepare(raw) if prepare is not None else None
        return ("tile", raw, georef, check_band_order(raw), missing_pixels(raw), ready)

    ahead = 2 * batch_size
    for stale in out.glob(".*.tif.*.tmp"):  # left by a killed run (ours are written later)
        stale.unlink(missing_ok=True)
    pool = io_threads()
    with ThreadPoolExecutor(pool) as readers, ThreadPoolExecutor(pool) as writer:
        queue: deque[tuple[str, Path, Future[tuple[Any, ...]]]] = deque()
        todo = iter(items)
        for tile_id, path in itertools.islice(todo, ahead):
            queue.append((tile_id, path, readers.submit(load, tile_id, path)))
        bar = tqdm(total=len(items), desc="predict", leave=False)
        while queue:
            tile_id, path, fut = queue.popleft()
            for nxt in itertools.islice(todo, 1):
                queue.append((*nxt, readers.submit(load, *nxt)))
            got = fut.result()
            bar.update()
            if got[0] == "reused":
                result.masks[tile_id] = out / f"{tile_id}{KELP_SUFFIX}"
                result.reused += 1
                result.report.ok += 1
                continue
            if got[0] == "error":
                result.report.add(got[1])
                continue
            _, raw, georef, warning, missing, ready = got
            if warning:
                result.warnings[tile_id] = warning
                print(f"[predict] warning: {path}: {warning}", file=sys.stderr)
            if pending and (len(pending) >= batch_size or pending[0][2].shape != raw.shape):
                flush()
            pending.append((tile_id, path, raw, missing, georef, ready))
        flush()
        bar.close()
        while writes:
            finish_write()
    return result
