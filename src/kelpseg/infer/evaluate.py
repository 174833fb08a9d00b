"""Evaluation (``kelpseg evaluate``): predicted masks vs truth masks, global and per tile."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from kelpseg.io import BatchReport, TileError, read_mask
from kelpseg.io.discover import KELP_SUFFIX
from kelpseg.io.errors import NothingValidError
from kelpseg.metrics import Counts


def _masks(folder: Path, role: str) -> dict[str, Path]:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{role} folder {folder}: not found")
    if not folder.is_dir():
        raise NotADirectoryError(f"{role} folder {folder}: not a folder")
    return {p.name[: -len(KELP_SUFFIX)]: p for p in sorted(folder.rglob(f"*{KELP_SUFFIX}"))}


def json_safe(scores: dict[str, Any]) -> dict[str, Any]:
    """``scores`` with NaN / inf floats (undefined scores) as None, so JSON stays valid."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in scores.items()
    }


def evaluate(pred_dir: Path, truth_dir: Path) -> tuple[dict[str, Any], pd.DataFrame, BatchReport]:
    """Global scores (counted over all pixels of all truth tiles) and a per-tile table.

    A truth tile without a prediction counts as predicted all-negative (its kelp pixels are
    false negatives) and is named: in ``scores["missing_predictions"]`` (sorted tile ids), in
    the table's ``prediction_missing`` column and in a warning line. Predicted pixels with the
    mask nodata value (255: input missing) count as not kelp. Undefined scores are None.

    Raises:
        FileNotFoundError: a folder that does not exist.
        NothingValidError: no truth masks, or no prediction for any truth tile.
    """
    truths = _masks(truth_dir, "truth")
    preds = _masks(pred_dir, "prediction")
    if not truths:
        raise NothingValidError(f"truth folder {truth_dir}: no *{KELP_SUFFIX} masks in it")
    if not set(truths) & set(preds):
        raise NothingValidError(
            f"prediction folder {pred_dir}: no predicted mask for any of the {len(truths)} "
            f"truth tiles in {truth_dir}"
        )
    report = BatchReport("evaluate")
    total = Counts()
    rows = []
    missing = []
    for tile_id, tpath in truths.items():
        try:
            truth = read_mask(tpath)
            if tile_id in preds:
                pred = read_mask(preds[tile_id], truth.shape, allow_nodata=True)
            else:
                pred = truth * 0
                missing.append(tile_id)
        except TileError as err:
            report.add(err)
            continue
        c = Counts.of(pred, truth)
        total = total + c
        row = {"tile_id": tile_id, "prediction_missing": tile_id not in preds}
        rows.append({**row, **vars(c), **json_safe(c.scores())})
        report.ok += 1
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        print(
            f"[evaluate] warning: {len(missing)} truth tile(s) have no prediction in {pred_dir}, "
            f"counted as all-negative: {shown}",
            file=sys.stderr,
        )
    scores = {
        **json_safe(total.scores()),
        "tiles": report.ok,
        "kelp_pixels": total.tp + total.fn,
        "missing_predictions": missing,
    }
    return scores, pd.DataFrame(rows), report
