"""ONNX deployment (``kelpseg export``, ``predict --backend onnx``): raw tiles in, no PyTorch.

The exported graph holds the whole inference path of a checkpoint: the raw int16 tile batch
``(N, 7, H, W)`` -> missing values, spectral indices, land/cloud masking, filling,
normalization, padding to the encoder's multiple, the network, cropping back and the sigmoid
-> kelp probability ``(N, H, W)``. The batch size is dynamic; the tile side is fixed at export
(350 px by default). The config (JSON), threshold, batch size and tile size are stored in the
file's ``metadata_props``, so :class:`OnnxModel` needs nothing else. Per-sample quantile
normalization (``sample_quantile``) has no ONNX operator and is refused at export.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kelpseg.infer.errors import PredictionError
from kelpseg.io.errors import first_line

OPSET = 17
META_CONFIG = "kelpseg_config"
META_THRESHOLD = "threshold"
META_BATCH = "batch_size"
META_TILE = "tile_size"
INPUT_NAME = "raw"
OUTPUT_NAME = "proba"
UNSUPPORTED_NORM = ("sample_quantile",)


class ExportError(PredictionError):
    """A checkpoint or option that cannot be exported, with the reason named."""


def _graph_module(model: Any) -> Any:
    """A traceable ``nn.Module``: raw int16 ``(N, 7, H, W)`` -> probability ``(N, H, W)``.

    It runs what :meth:`KelpSegModule.predict_proba` does: the model's own feature code
    (:meth:`kelpseg.features.pipeline.FeatureBuilder.build`, trace-safe: no data-dependent
    Python branch, no in-place channel write), padding to the encoder's multiple, the network,
    cropping back and the sigmoid, so the TorchScript tracer records it whole.
    """
    import torch
    from torch import Tensor, nn

    from kelpseg.features.pipeline import pad_to_multiple

    class RawToProba(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = model.features
            self.net = model.net
            self.divisor = int(model.divisor)

        def forward(self, raw: Tensor) -> Tensor:
            x = self.features.build(raw)
            h, w = x.shape[-2:]
            x, _ = pad_to_multiple(x, self.divisor)
            return torch.sigmoid(self.net(x)[..., :h, :w])[:, 0]

    return RawToProba().eval()


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    tile_size: int | None = None,
    opset: int = OPSET,
) -> Path:
    """Export ``checkpoint`` to ``out`` (written atomically); return the path.

    Args:
        checkpoint: A ``.ckpt`` from ``kelpseg train``.
        out: The ``.onnx`` file to write.
        tile_size: Tile side the graph takes; default the config's ``data.tile_size`` or 350.
        opset: ONNX opset (>= 17).

    Raises:
        CheckpointError: an unusable checkpoint (from :func:`kelpseg.infer.predict.load_model`).
        ExportError: a config option the graph cannot hold, or a bad tile size / opset.
    """
    import onnx
    import torch

    from kelpseg.infer.checkpoint import load_model
    from kelpseg.io.raster import temp_beside

    if opset < 17:
        raise ExportError(f"--opset must be at least 17, got {opset}")
    model = load_model(checkpoint, device="cpu")
    cfg = model.cfg
    if cfg.features.normalize in UNSUPPORTED_NORM:
        raise ExportError(
            f"{checkpoint}: features.normalize={cfg.features.normalize} (per-sample quantiles) "
            "has no ONNX operator; export a model trained with quantile, zscore, minmax, "
            "sample_minmax or none"
        )
    size = int(tile_size or cfg.data.tile_size or 350)
    if size < 8:
        raise ExportError(f"--tile-size must be at least 8 px, got {size}")
    graph = _graph_module(model)
    dummy = torch.zeros((2, 7, size, size), dtype=torch.int16)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(out)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on the fixed tile side's padding
            torch.onnx.export(
                graph,
                (dummy,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                opset_version=opset,
                dynamo=False,
            )
    except Exception as err:  # the exporter raises many kinds for unsupported operators
        tmp.unlink(missing_ok=True)
        line = first_line(err)[:300]
        raise ExportError(f"{checkpoint}: cannot export to ONNX: {line}") from err
    try:
        proto = onnx.load(str(tmp))
        meta = {
            META_CONFIG: json.dumps(model.hparams["config"]),
            META_THRESHOLD: str(float(cfg.predict.threshold)),
            META_BATCH: str(int(cfg.predict.batch_size)),
            META_TILE: str(size),
            "source": Path(checkpoint).name,
        }
        del proto.metadata_props[:]
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


class OnnxModel:
    """An exported kelpseg model on onnxruntime (CPU unless another provider is given).

    It is a member like a checkpoint's network (``cfg``, ``device``, ``predict_proba``), so
    :func:`kelpseg.infer.assemble.assemble` and the ensemble engine take it alike.
    """

    device = "cpu"

    def __init__(
        self, path: str | Path, providers: list[str] | None = None, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ONNX model not found")
        opts = ort.SessionOptions()
        if threads:  # default: onnxruntime's, one per physical core
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(
                str(self.path), opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            line = first_line(err)[:200]
            raise ExportError(f"{self.path}: not a readable ONNX model: {line}") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_CONFIG not in meta:
            raise ExportError(f"{self.path}: not exported by `kelpseg export` (no config)")
        self.config: dict[str, Any] = json.loads(meta[META_CONFIG])
        self.threshold = float(meta.get(META_THRESHOLD, 0.5))
        self.batch_size = int(meta.get(META_BATCH, 8))
        self.tile_size = int(meta.get(META_TILE, 350))

    @property
    def cfg(self) -> Any:
        """The checkpoint's config (:class:`kelpseg.config.Config`)."""
        from kelpseg.config import Config

        return Config.model_validate(self.config)

    def predict_proba(self, raw: Any) -> Any:
        """Kelp probability ``(N, H, W)`` float32 of raw int16 tiles ``(N, 7, H, W)``: numpy
        in, numpy out; a tensor in (the ensemble engine), a tensor out."""
        if hasattr(raw, "cpu"):  # a torch tensor
            import torch

            return torch.from_numpy(self.predict_proba(raw.cpu().numpy()))
        raw = np.ascontiguousarray(raw, dtype=np.int16)
        if raw.ndim == 3:
            return self.predict_proba(raw[None])[0]
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: raw})[0]

    def accept(self, raw: np.ndarray, path: Path) -> None:
        """A tile of another side than the exported one is refused, naming it."""
        from kelpseg.io import TileError

        side = self.tile_size
        if raw.shape[-2:] != (side, side):
            raise TileError(
                path, f"{raw.shape[-2]}x{raw.shape[-1]} px; this ONNX model takes {side}x{side}"
            )


class OnnxEngine:
    """A prediction engine (:data:`kelpseg.infer.pipeline.Engine`) on an exported model: the
    DEM shift is undone on the host as in training (when the model's config asks), the rest
    happens in the graph."""

    def __init__(self, model: OnnxModel) -> None:
        from kelpseg.data.dem_shift import correct_dem

        self.model = model
        self.correct = bool(model.config.get("data", {}).get("correct_dem_shift", True))
        self._fix = correct_dem

    def prepare(self, raw: np.ndarray) -> np.ndarray | None:
        """One tile's DEM realigned (in a reader thread), or None when the model does not."""
        return self._fix(raw) if self.correct else None

    def __call__(self, raw: np.ndarray, fixed: np.ndarray | None = None) -> tuple[np.ndarray, None]:
        if self.correct and fixed is None:
            fixed = np.stack([self._fix(r) for r in raw])
        return self.model.predict_proba(raw if fixed is None else fixed), None

    def accept(self, raw: np.ndarray, path: Path) -> None:
        """A tile of another side than the exported one is refused, naming it."""
        self.model.accept(raw, path)


def predict_tiles_onnx(
    model_path: str | Path,
    items: list[tuple[str, Path]],
    out: Path,
    threshold: float | None = None,
    batch_size: int | None = None,
    probabilities: bool = False,
    postprocess: Any = None,
    *,
    proba_format: str = "float32",
    overwrite: bool = True,
) -> Any:
    """:func:`kelpseg.infer.predict.predict_tiles` on an exported model (onnxruntime): the
    same assembly of settings, pipeline and outputs. A tile whose side differs from the
    exported one is reported (naming it) and skipped.

    Raises:
        ValueError: a threshold outside [0, 1], a batch size below 1, duplicate tile ids.
        CheckpointError: the file is not a kelpseg ONNX model.
    """
    from kelpseg.infer.assemble import assemble
    from kelpseg.infer.predict import predict_assembly

    ens = assemble(
        [model_path], threshold=threshold, batch_size=batch_size, postprocess=postprocess
    )
    return predict_assembly(
        ens,
        items,
        out,
        probabilities=probabilities,
        proba_format=proba_format,
        overwrite=overwrite,
    )


ONNX_CACHE_ENV = "KELPSEG_ONNX_CACHE"
"""Environment variable naming the folder of cached exports (``map --backend onnx``)."""


def onnx_cache_dir() -> Path:
    """``$KELPSEG_ONNX_CACHE``, else ``$XDG_CACHE_HOME/kelpseg/onnx`` (``~/.cache/kelpseg/onnx``)."""
    given = os.environ.get(ONNX_CACHE_ENV)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kelpseg" / "onnx"


def file_digest(path: Path) -> str:
    """sha1 of a file's bytes (read in 1 MB blocks)."""
    import hashlib

    h = hashlib.sha1()
    with Path(path).open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def cached_export(checkpoint: str | Path, tile_size: int, cache: Path | None = None) -> Path:
    """The ONNX export of ``checkpoint`` for ``tile_size`` px tiles, exported once into the
    cache (:func:`onnx_cache_dir`) and reused while the key matches: the sha1 of the
    checkpoint's bytes, the tile size, the opset and the kelpseg version (whose graph code made
    it), all in the file's name (``{stem}-{sha1[:16]}-w{tile}-o{opset}-k{version}.onnx``).
    Written atomically, so concurrent processes at worst both export.

    Raises:
        CheckpointError, ExportError: as :func:`export_onnx`.
    """
    from kelpseg import __version__

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ExportError(f"{checkpoint}: checkpoint not found (needed for --backend onnx)")
    key = f"{file_digest(checkpoint)[:16]}-w{int(tile_size)}-o{OPSET}-k{__version__}"
    out = (cache or onnx_cache_dir()) / f"{checkpoint.stem}-{key}.onnx"
    if not out.is_file():
        export_onnx(checkpoint, out, tile_size=tile_size)
    return out


def onnx_assembly(ens: Any, tile_size: int, cache: Path | None = None) -> Any:
    """``ens`` (:class:`kelpseg.infer.assemble.Assembly`) with every network member replaced
    by its cached ONNX export (:func:`cached_export`) on onnxruntime's CPU provider; members
    that are ONNX already must take ``tile_size`` px tiles, other members (XGBoost) stay.
    Threshold, weights and every other setting are kept; the model hash becomes the ONNX
    files' (outputs record what made them).

    Raises:
        ExportError: a precision other than fp32 (the graph runs fp32), an ONNX member of
            another tile size, a member without its checkpoint file.
    """
    import dataclasses

    if ens.precision != "fp32":
        raise ExportError(f"--backend onnx runs fp32 only, not --precision {ens.precision}")
    models = []
    for m, path in zip(ens.models, ens.checkpoints, strict=True):
        if isinstance(m, OnnxModel):
            if m.tile_size != tile_size:
                raise ExportError(
                    f"{m.path}: exported for {m.tile_size} px tiles, the windows are "
                    f"{tile_size} px: pass --window {m.tile_size} or give the checkpoint"
                )
            models.append(m)
        elif hasattr(m, "net"):
            models.append(OnnxModel(cached_export(path, tile_size, cache)))
        else:
            models.append(m)
    return dataclasses.replace(ens, models=models)
