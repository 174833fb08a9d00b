"""Loading trained members for prediction: Lightning checkpoints of ``kelpseg train`` and the
XGBoost baseline's ``model.json``, checked before any work, and a hash of their weights.

A network is built without pretrained weights (the checkpoint holds every weight), so a model
trained from ImageNet weights loads offline.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kelpseg.compat import ensure_torchvision
from kelpseg.infer.errors import CheckpointError

ensure_torchvision()

import torch  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from kelpseg.io.errors import first_line  # noqa: E402
from kelpseg.train.module import KelpSegModule  # noqa: E402


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


def load_member(path: str | Path, device: str | None = None) -> Any:
    """A network checkpoint (:func:`load_model`), an ``.onnx`` of ``kelpseg export`` (on
    onnxruntime's CPU provider) or an XGBoost baseline's ``model.json``.

    Raises:
        CheckpointError: naming the file and the problem.
    """
    from kelpseg.baselines.xgb import is_xgb_model, load_xgb

    path = Path(path)
    try:
        if path.suffix.lower() == ".onnx":
            from kelpseg.infer.onnx_export import OnnxModel

            return OnnxModel(path)
        if is_xgb_model(path):
            return load_xgb(path)
    except (OSError, ValueError) as err:
        raise CheckpointError(first_line(err)) from err
    return load_model(path, device)


def member_device(model: Any) -> torch.device:
    """The device a member runs on (a module's, or the XGBoost baseline's CPU)."""
    return torch.device(model.device)


def weight_bytes(models: Iterable[Any]) -> Iterable[bytes]:
    """The members' weights as bytes, in order (networks: every state-dict tensor; XGBoost:
    the booster's raw model)."""
    for m in models:
        if hasattr(m, "state_dict"):
            for t in m.state_dict().values():
                yield t.detach().cpu().contiguous().numpy().tobytes()
        elif hasattr(m, "session"):  # an ONNX model: its file
            yield m.path.read_bytes()
        else:
            yield bytes(m.booster.save_raw("json"))


def model_hash(models: Iterable[Any]) -> str:
    """A short hash of the members' weights: outputs record which models made them."""
    h = hashlib.sha1()
    for part in weight_bytes(models):
        h.update(part)
    return h.hexdigest()[:16]
