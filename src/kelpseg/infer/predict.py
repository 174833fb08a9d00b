"""Prediction (``kelpseg predict``): checkpoint + tiles -> georeferenced kelp masks.

Every output keeps its input's CRS and transform (or none, as the competition tiles have).
A bad input file is reported and skipped; the batch goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kelpseg.compat import ensure_torchvision

ensure_torchvision()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from kelpseg.data.dem_shift import correct_dem  # noqa: E402
from kelpseg.io import BatchReport, Georef, TileError, write_raster  # noqa: E402
from kelpseg.io.tiles import read_tile_georef  # noqa: E402
from kelpseg.train.module import KelpSegModule  # noqa: E402


@dataclass
class PredictResult:
    """Written masks by tile id, and the batch report."""

    masks: dict[str, Path] = field(default_factory=dict)
    report: BatchReport = field(default_factory=lambda: BatchReport("predict"))


def load_model(checkpoint: str | Path, device: str | None = None) -> KelpSegModule:
    """Load a trained model for inference (CPU unless a GPU is there or asked for)."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = KelpSegModule.load_from_checkpoint(str(checkpoint), map_location=dev)
    return model.eval().to(dev)


def predict_tiles(
    model: KelpSegModule,
    items: list[tuple[str, Path]],
    out: Path,
    *,
    threshold: float = 0.5,
    batch_size: int = 8,
    probabilities: bool = False,
) -> PredictResult:
    """Predict ``{tile_id}_kelp.tif`` (uint8 0/1) for each ``(tile_id, path)`` into ``out``.

    Tiles are batched while consecutive ones share a shape; scenes of any size work. When the
    model was trained with ``data.correct_dem_shift``, each tile's DEM misalignment is detected
    and undone first, as it was for the training tiles.
    """
    result = PredictResult()
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    pending: list[tuple[str, Path, np.ndarray, Georef]] = []

    def flush() -> None:
        if not pending:
            return
        raw = torch.from_numpy(np.stack([p[2] for p in pending])).to(device)
        proba = model.predict_proba(raw).float().cpu().numpy()
        for (tile_id, path, _, georef), p in zip(pending, proba, strict=True):
            mask = (p >= threshold).astype(np.uint8)
            tags = {"threshold": str(threshold), "source": path.name}
            result.masks[tile_id] = write_raster(
                out / f"{tile_id}_kelp.tif", mask, georef=georef, tags=tags
            )
            if probabilities:
                write_raster(
                    out / f"{tile_id}_proba.tif",
                    p.astype(np.float32),
                    georef=georef,
                    band_names=["kelp_probability"],
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
        if correct:
            raw = correct_dem(raw)
        if pending and (len(pending) >= batch_size or pending[0][2].shape != raw.shape):
            flush()
        pending.append((tile_id, path, raw, georef))
    flush()
    return result
