"""Prediction (``kelpseg predict``): checkpoint + tiles -> georeferenced kelp masks.

Every output keeps its input's CRS and transform (or none, as the competition tiles have).
Pixels missing in the input (``-32768`` in a reflectance band, or the file's declared nodata)
are nodata in the outputs, declared in the files: 255 in the uint8 masks, NaN in the float32
probabilities. A bad input file is reported and skipped; the batch goes on.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from kelpseg.compat import ensure_torchvision

ensure_torchvision()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from kelpseg.config import PostprocessConfig  # noqa: E402
from kelpseg.data.dem_shift import correct_dem  # noqa: E402
from kelpseg.infer import pipeline  # noqa: E402
from kelpseg.infer.members import Members  # noqa: E402
from kelpseg.infer.pipeline import (  # noqa: E402, F401 (re-exported)
    PROBA_FORMATS,
    PROBA_U8_NODATA,
    SPREAD_SUFFIX,
    Outputs,
    PredictResult,
    fingerprint,
    io_threads,
    write_proba,
)
from kelpseg.io.errors import first_line  # noqa: E402
from kelpseg.train.module import KelpSegModule  # noqa: E402


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for prediction, with the file and the problem named."""


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
    return first_line(err)[:200]


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
        msg = first_line(err)
        raise CheckpointError(f"{path}: its weights or config do not fit kelpseg: {msg}") from err
    model.hparams["config"] = saved  # what it was trained with
    model.cfg.model.encoder_weights = saved.get("model", {}).get("encoder_weights")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.eval().to(dev)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_precision(device: torch.device) -> str:
    """bf16 on a CUDA GPU that supports it, else fp32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


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
    device = next(first.parameters()).device
    threshold = first.cfg.predict.threshold if threshold is None else float(threshold)
    if batch_size is None:
        batch_size = first.cfg.predict.batch_for(device.type)
    batch_size = int(batch_size)
    if vote not in ("soft", "hard"):
        raise ValueError(f"vote must be soft or hard, got {vote!r}")
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    precision = precision or default_precision(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if any(next(m.parameters()).device != device for m in models):
        raise ValueError("all models of an ensemble must be on one device")
    w = member_weights(len(models), None if weights is None else list(map(float, weights)))
    spread = spread and len(models) > 1
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
    outputs = Outputs(
        threshold=threshold,
        cut=engine.cut,
        probabilities=probabilities,
        proba_format=proba_format,
        spread=spread,
        postprocess=postprocess,
        members=len(models),
    )
    settings = {
        **outputs.settings(),
        "weights": [float(v) for v in w],
        "vote": vote,
        "precision": precision,
        "tta": tta,
        **({"slices": slices} if slices > 1 else {}),
    }
    weights_bytes = (
        t.detach().cpu().contiguous().numpy().tobytes()
        for m in models
        for t in m.state_dict().values()
    )
    return pipeline.run(
        engine,
        items,
        out,
        outputs,
        batch_size=batch_size,
        fingerprint=fingerprint(weights_bytes, settings),
        overwrite=overwrite,
    )
