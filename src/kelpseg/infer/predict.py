"""Prediction (``kelpseg predict``): checkpoint + tiles -> georeferenced kelp masks.

Every output keeps its input's CRS and transform (or none, as the competition tiles have).
Pixels missing in the input (``-32768`` in a reflectance band, or the file's declared nodata)
are nodata in the outputs, declared in the files: 255 in the uint8 masks, NaN in the float32
probabilities. A bad input file is reported and skipped; the batch goes on.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kelpseg.compat import ensure_torchvision

ensure_torchvision()

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from kelpseg.config import PostprocessConfig  # noqa: E402
from kelpseg.data.dem_shift import correct_dem  # noqa: E402
from kelpseg.infer.members import Members  # noqa: E402
from kelpseg.infer.postprocess import apply as postprocess_mask  # noqa: E402
from kelpseg.io import BatchReport, Georef, TileError, write_raster  # noqa: E402
from kelpseg.io.discover import KELP_SUFFIX, PROBA_SUFFIX, duplicate_ids  # noqa: E402
from kelpseg.io.plausibility import check_band_order  # noqa: E402
from kelpseg.io.tiles import MASK_NODATA, missing_pixels, read_tile_georef  # noqa: E402
from kelpseg.train.module import KelpSegModule  # noqa: E402


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for prediction, with the file and the problem named."""


@dataclass
class PredictResult:
    """Written masks by tile id, the band-order warnings by tile id, and the batch report."""

    masks: dict[str, Path] = field(default_factory=dict)
    report: BatchReport = field(default_factory=lambda: BatchReport("predict"))
    warnings: dict[str, str] = field(default_factory=dict)
    threshold: float = 0.5
    batch_size: int = 8
    reused: int = 0


def _checkpoint_config(path: Path, ckpt: Any) -> dict[str, Any]:
    """The saved config of a Lightning checkpoint, or a CheckpointError saying what it is."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a kelpseg checkpoint (holds a {type(ckpt).__name__})")
    if "state_dict" not in ckpt:
        kind = "a bare state dict" if all(torch.is_tensor(v) for v in ckpt.values()) else "a dict"
        raise CheckpointError(
            f"{path}: {kind} without the model's config; give a checkpoint written by "
            "`kelpseg train` (OUT/fold*/best.ckpt)"
        )
    config = (ckpt.get("hyper_parameters") or {}).get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: checkpoint holds no kelpseg config (not from kelpseg?)")
    return config


def _load_problem(path: Path, err: Exception) -> str:
    """A short reason why ``torch.load`` failed (torch's own messages run to paragraphs)."""
    text = str(err)
    with path.open("rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if "zip archive" in text or "central directory" in text:
        return "truncated or corrupted (incomplete zip archive)"
    if "Weights only load failed" in text:
        if is_zip:
            return "it holds Python objects besides weights and settings (not from kelpseg train)"
        return "not a PyTorch checkpoint file"
    line = text.splitlines()[0] if text else type(err).__name__
    return line[:200]


def load_model(checkpoint: str | Path, device: str | None = None) -> KelpSegModule:
    """Load a trained model for inference (CPU unless a GPU is there or asked for).

    The network is built without pretrained weights (the checkpoint holds every weight), so a
    model trained from ImageNet weights loads offline.

    Raises:
        CheckpointError: naming the file when it is missing, not a checkpoint, truncated, a bare
            state dict, or its weights do not fit its config.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found" + (" (a folder)" * path.is_dir()))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for garbage or truncated files
        raise CheckpointError(
            f"{path}: not a readable checkpoint: {_load_problem(path, err)}"
        ) from err
    saved = _checkpoint_config(path, ckpt)
    config = copy.deepcopy(saved)
    config.setdefault("model", {})["encoder_weights"] = None
    try:
        model = KelpSegModule(config)
        model.load_state_dict(ckpt["state_dict"])
    except (ValidationError, ValueError, RuntimeError, KeyError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path}: its weights or config do not fit kelpseg: {msg}") from err
    model.hparams["config"] = saved  # what it was trained with
    model.cfg.model.encoder_weights = saved.get("model", {}).get("encoder_weights")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.eval().to(dev)


def _check_settings(threshold: float, batch_size: int) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PROBA_FORMATS = ("float32", "uint8")
PROBA_U8_NODATA = 255
SPREAD_SUFFIX = "_spread.tif"


def default_precision(device: torch.device) -> str:
    """bf16 on a CUDA GPU that supports it, else fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _fingerprint(models: list[KelpSegModule], settings: dict[str, Any]) -> str:
    """A short hash of the members' weights and the settings: reruns reuse only matching files."""
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for m in models:
        for t in m.state_dict().values():
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _complete(paths: list[Path], fingerprint: str) -> bool:
    """Every file is there, reads back, and was written with the same models and settings."""
    try:
        for path in paths:
            with rasterio.open(path) as src:
                if src.tags().get("fingerprint") != fingerprint:
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


def predict_tiles(
    model: KelpSegModule | list[KelpSegModule],
    items: list[tuple[str, Path]],
    out: Path,
    *,
    threshold: float | None = None,
    batch_size: int | None = None,
    probabilities: bool = False,
    weights: list[float] | np.ndarray | None = None,
    vote: str = "soft",
    precision: str | None = None,
    tta: str = "none",
    proba_format: str = "float32",
    spread: bool = False,
    overwrite: bool = True,
    slices: int = 1,
    postprocess: PostprocessConfig | None = None,
) -> PredictResult:
    """Predict ``{tile_id}_kelp.tif`` for each ``(tile_id, path)`` into ``out``.

    Masks are uint8: 1 kelp, 0 not, 255 (declared nodata) where the input is missing;
    probabilities (``{tile_id}_proba.tif``) are float32 with NaN there, or with
    ``proba_format="uint8"`` 0-254 (p * 254 rounded) with 255 nodata. The model sees the
    whole tile; only its output is masked. ``threshold`` and ``batch_size`` default to the
    (first) checkpoint's ``predict`` settings. Tiles are batched while consecutive ones share a
    shape; scenes of any size work. When a model was trained with ``data.correct_dem_shift``,
    each tile's DEM misalignment is detected and undone first (per member). A tile whose bands
    look out of order is predicted but warned about, naming the file.

    Several models form an ensemble: their probabilities (each under ``tta``) are averaged with
    ``weights`` (normalized to sum to 1; equal by default), or with ``vote="hard"`` their
    thresholded masks are. ``spread`` writes ``{tile_id}_spread.tif``, the weighted standard
    deviation of the members' probabilities (float32, NaN nodata). ``precision`` is the
    autocast dtype (``fp32``, ``bf16``, ``fp16``; default bf16 on a GPU that has it, else fp32).
    ``slices > 1`` predicts SAHI-style: overlapping slices of 1/``slices`` of the tile's side,
    up-sampled to the tile's size before the model and blended back (kelpseg.infer.sliced).
    With ``overwrite=False`` a tile whose requested outputs exist, read back and carry the same
    models-and-settings fingerprint is skipped (counted ok); writes are atomic. ``postprocess``
    (:mod:`kelpseg.infer.postprocess`; all off by default) turns each probability map into its
    mask (the probabilities written are those before it).

    Raises:
        ValueError: a bad setting, or two inputs with the same tile id (they would write one
            output).
    """
    from kelpseg.infer.ensemble import member_weights
    from kelpseg.infer.tta import TTA_MODES

    models = list(model) if isinstance(model, list | tuple) else [model]
    if not models:
        raise ValueError("no model to predict with")
    first = models[0]
    threshold = first.cfg.predict.threshold if threshold is None else float(threshold)
    batch_size = first.cfg.predict.batch_size if batch_size is None else int(batch_size)
    _check_settings(threshold, batch_size)
    if vote not in ("soft", "hard"):
        raise ValueError(f"vote must be soft or hard, got {vote!r}")
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    if proba_format not in PROBA_FORMATS:
        raise ValueError(f"proba format must be float32 or uint8, got {proba_format!r}")
    device = next(first.parameters()).device
    precision = precision or default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if any(next(m.parameters()).device != device for m in models):
        raise ValueError("all models of an ensemble must be on one device")
    w = member_weights(len(models), None if weights is None else list(map(float, weights)))
    dups = duplicate_ids(items)
    if dups:
        raise ValueError(dups)
    result = PredictResult(threshold=threshold, batch_size=batch_size)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "threshold": threshold,
        "weights": [float(v) for v in w],
        "vote": vote,
        "precision": precision,
        "tta": tta,
        "proba_format": proba_format,
        **({"slices": slices} if slices > 1 else {}),
    }
    post = postprocess if postprocess is not None and postprocess != PostprocessConfig() else None
    if post is not None:
        settings["postprocess"] = post.model_dump()
    fingerprint = _fingerprint(models, settings)
    spread = spread and len(models) > 1

    def outputs(tile_id: str) -> list[Path]:
        paths = [out / f"{tile_id}{KELP_SUFFIX}"]
        if probabilities:
            paths.append(out / f"{tile_id}{PROBA_SUFFIX}")
        if spread:
            paths.append(out / f"{tile_id}{SPREAD_SUFFIX}")
        return paths

    engine = Members(
        models,
        w,
        precision=PRECISIONS[precision],
        tta=tta,
        vote=vote,
        threshold=threshold,
        spread=spread,
        slices=slices,
        dem_fix=correct_dem,
    )
    pending: list[tuple[str, Path, np.ndarray, np.ndarray, Georef]] = []

    def write_one(
        tile_id: str,
        path: Path,
        p: np.ndarray,
        sd_in: np.ndarray | None,
        missing: np.ndarray,
        georef: Georef,
        raw: np.ndarray,
    ) -> Path:
        cut = 0.5 if vote == "hard" else threshold
        if post is not None:
            mask = postprocess_mask(p, raw, post, cut)
        else:
            mask = (p >= cut).astype(np.uint8)
            mask[missing] = MASK_NODATA
        tags = {"threshold": str(threshold), "source": path.name, "fingerprint": fingerprint}
        if len(models) > 1:
            tags["members"] = str(len(models))
        if probabilities:
            write_proba(out / f"{tile_id}{PROBA_SUFFIX}", p, missing, georef, tags, proba_format)
        if sd_in is not None:
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
            out / f"{tile_id}{KELP_SUFFIX}",
            mask,
            georef=georef,
            nodata=MASK_NODATA,
            tags=tags,
        )

    def flush() -> None:
        if not pending:
            return
        mean, std = engine(np.stack([p[2] for p in pending]))
        mean_np = mean.cpu().numpy()
        std_np = std.cpu().numpy() if std is not None else None
        for i, (tile_id, path, raw, missing, georef) in enumerate(pending):
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
        if not overwrite and _complete(outputs(tile_id), fingerprint):
            return ("reused",)
        try:
            raw, georef = read_tile_georef(path)
        except TileError as err:
            return ("error", err)
        return ("tile", raw, georef, check_band_order(raw), missing_pixels(raw))

    writes: deque[tuple[str, Future[Path]]] = deque()
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
            _, raw, georef, warning, missing = got
            if warning:
                result.warnings[tile_id] = warning
                print(f"[predict] warning: {path}: {warning}", file=sys.stderr)
            if pending and (len(pending) >= batch_size or pending[0][2].shape != raw.shape):
                flush()
            pending.append((tile_id, path, raw, missing, georef))
        flush()
        bar.close()
        while writes:
            finish_write()
    return result
