"""Prediction (``kelpseg predict``): checkpoint + tiles -> georeferenced kelp masks.

Every output keeps its input's CRS and transform (or none, as the competition tiles have).
Pixels missing in the input (``-32768`` in a reflectance band, or the file's declared nodata)
are nodata in the outputs, declared in the files: 255 in the uint8 masks, NaN in the float32
probabilities. A bad input file is reported and skipped; the batch goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kelpseg.config import PostprocessConfig
from kelpseg.infer import pipeline
from kelpseg.infer.assemble import Assembly, assemble
from kelpseg.infer.checkpoint import CheckpointError, load_model  # noqa: F401 (the API)
from kelpseg.infer.pipeline import Outputs, PredictResult, fingerprint


def predict_tiles(
    model: Any | list[Any],
    items: list[tuple[str, Path]],
    out: Path,
    *,
    threshold: float | None = None,
    batch_size: int | None = None,
    probabilities: bool = False,
    weights: list[float] | np.ndarray | str | None = None,
    vote: str | None = None,
    precision: str | None = None,
    tta: str | None = None,
    proba_format: str = "float32",
    spread: bool = False,
    overwrite: bool = True,
    slices: int = 1,
    postprocess: PostprocessConfig | None = None,
) -> PredictResult:
    """Predict ``{tile_id}_kelp.tif`` for each ``(tile_id, path)`` into ``out`` with loaded
    member(s); unset settings come from the first member's config, as
    :func:`kelpseg.infer.assemble.assemble` resolves them (see :func:`predict_assembly`).

    ``weights`` are numbers (normalized to sum to 1), ``equal``/``dice`` or None (the config's).
    """
    models = list(model) if isinstance(model, list | tuple) else [model]
    if not models:
        raise ValueError("no model to predict with")
    if weights is not None and not isinstance(weights, str):
        weights = ",".join(repr(float(v)) for v in weights)
    flags = {"weights": weights, "vote": vote, "precision": precision, "tta": tta}
    ens = assemble(
        models, flags=flags, threshold=threshold, batch_size=batch_size, postprocess=postprocess
    )
    return predict_assembly(
        ens,
        items,
        out,
        probabilities=probabilities,
        proba_format=proba_format,
        spread=spread,
        overwrite=overwrite,
        slices=slices,
    )


def predict_assembly(
    ens: Assembly,
    items: list[tuple[str, Path]],
    out: Path,
    *,
    probabilities: bool = False,
    proba_format: str = "float32",
    spread: bool = False,
    overwrite: bool = True,
    slices: int = 1,
) -> PredictResult:
    """Predict ``{tile_id}_kelp.tif`` for each ``(tile_id, path)`` into ``out``.

    Masks are uint8: 1 kelp, 0 not, 255 (declared nodata) where the input is missing;
    probabilities (``{tile_id}_proba.tif``) are float32 with NaN there, or with
    ``proba_format="uint8"`` 0-254 (p * 254 rounded) with 255 nodata. The model sees the
    whole tile; only its output is masked. Tiles are batched while consecutive ones share a
    shape; scenes of any size work. When a model was trained with ``data.correct_dem_shift``,
    each tile's DEM misalignment is detected and undone first (per member). A tile whose bands
    look out of order is predicted but warned about, naming the file.

    The assembly's members form an ensemble: their probabilities (each under its TTA) are
    averaged with its weights, or with a hard vote their thresholded masks are. ``spread``
    writes ``{tile_id}_spread.tif``, the weighted standard deviation of the members'
    probabilities (float32, NaN nodata). ``slices > 1`` predicts SAHI-style: overlapping slices
    of 1/``slices`` of the tile's side, up-sampled to the tile's size before the model and
    blended back (kelpseg.infer.sliced). With ``overwrite=False`` a tile whose requested outputs
    exist, read back and carry the same models-and-settings fingerprint is skipped (counted
    ok); writes are atomic. The assembly's ``postprocess`` turns each probability map into its
    mask (the probabilities written are those before it).

    Raises:
        ValueError: a bad setting, or two inputs with the same tile id (they would write one
            output).
    """
    from kelpseg.infer.checkpoint import weight_bytes

    spread = spread and len(ens.models) > 1
    engine = ens.engine(spread=spread, slices=slices)
    outputs = Outputs(
        threshold=ens.threshold,
        cut=ens.cut,
        probabilities=probabilities,
        proba_format=proba_format,
        spread=spread,
        postprocess=ens.postprocess,
        members=len(ens.models),
    )
    settings = {
        **outputs.settings(),
        **{k: v for k, v in ens.settings().items() if k not in ("threshold", "postprocess")},
        **({"slices": slices} if slices > 1 else {}),
    }
    checks = [m.accept for m in ens.models if hasattr(m, "accept")]  # ONNX: its tile side

    def accept(raw: np.ndarray, path: Path) -> None:
        for check in checks:
            check(raw, path)

    return pipeline.run(
        engine,
        items,
        out,
        outputs,
        batch_size=ens.batch_size,
        fingerprint=fingerprint(weight_bytes(ens.models), settings),
        overwrite=overwrite,
        accept=accept if checks else None,
    )
