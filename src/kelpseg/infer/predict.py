"""Prediction (``kelpseg predict``): checkpoint + tiles -> georeferenced kelp masks.

Every output keeps its input's CRS and transform (or none, as the competition tiles have).
Pixels missing in the input (``-32768`` in a reflectance band, or the file's declared nodata)
are nodata in the outputs, declared in the files: 255 in the uint8 masks, NaN in the float32
probabilities. A bad input file is reported and skipped; the batch goes on.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kelpseg.compat import ensure_torchvision

ensure_torchvision()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from kelpseg.data.dem_shift import correct_dem  # noqa: E402
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


def predict_tiles(
    model: KelpSegModule,
    items: list[tuple[str, Path]],
    out: Path,
    *,
    threshold: float | None = None,
    batch_size: int | None = None,
    probabilities: bool = False,
) -> PredictResult:
    """Predict ``{tile_id}_kelp.tif`` for each ``(tile_id, path)`` into ``out``.

    Masks are uint8: 1 kelp, 0 not, 255 (declared nodata) where the input is missing;
    probabilities (``{tile_id}_proba.tif``) are float32 with NaN there. The model sees the
    whole tile; only its output is masked. ``threshold`` and ``batch_size`` default to the
    checkpoint's ``predict`` settings. Tiles are batched while consecutive ones share a shape;
    scenes of any size work. When the model was trained with ``data.correct_dem_shift``, each
    tile's DEM misalignment is detected and undone first. A tile whose bands look out of order
    is predicted but warned about, naming the file.

    Raises:
        ValueError: a threshold outside [0, 1], a batch size below 1, or two inputs with the
            same tile id (they would write one output).
    """
    threshold = model.cfg.predict.threshold if threshold is None else float(threshold)
    batch_size = model.cfg.predict.batch_size if batch_size is None else int(batch_size)
    _check_settings(threshold, batch_size)
    dups = duplicate_ids(items)
    if dups:
        raise ValueError(dups)
    result = PredictResult(threshold=threshold, batch_size=batch_size)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    pending: list[tuple[str, Path, np.ndarray, np.ndarray, Georef]] = []

    def flush() -> None:
        if not pending:
            return
        raw = torch.from_numpy(np.stack([p[2] for p in pending])).to(device)
        proba = model.predict_proba(raw).float().cpu().numpy()
        for (tile_id, path, _, missing, georef), p in zip(pending, proba, strict=True):
            mask = (p >= threshold).astype(np.uint8)
            mask[missing] = MASK_NODATA
            tags = {"threshold": str(threshold), "source": path.name}
            result.masks[tile_id] = write_raster(
                out / f"{tile_id}{KELP_SUFFIX}",
                mask,
                georef=georef,
                nodata=MASK_NODATA,
                tags=tags,
            )
            if probabilities:
                p = p.astype(np.float32)
                p[missing] = np.nan
                write_raster(
                    out / f"{tile_id}{PROBA_SUFFIX}",
                    p,
                    georef=georef,
                    nodata=float("nan"),
                    band_names=["kelp_probability"],
                    tags={"source": path.name},
                )
            result.report.ok += 1
        pending.clear()

    correct = model.cfg.data.correct_dem_shift
    for tile_id, path in tqdm(items, desc="predict", leave=False):
        try:
            raw, georef = read_tile_georef(path)
        except TileError as err:
            result.report.add(err)
            continue
        warning = check_band_order(raw)
        if warning:
            result.warnings[tile_id] = warning
            print(f"[predict] warning: {path}: {warning}", file=sys.stderr)
        missing = missing_pixels(raw)
        if correct:
            raw = correct_dem(raw)
        if pending and (len(pending) >= batch_size or pending[0][2].shape != raw.shape):
            flush()
        pending.append((tile_id, path, raw, missing, georef))
    flush()
    return result
