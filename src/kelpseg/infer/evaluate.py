"""Evaluation (``kelpseg evaluate``): predicted masks vs truth masks, global and per tile."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kelpseg.io import BatchReport, TileError, read_mask
from kelpseg.io.discover import KELP_SUFFIX
from kelpseg.metrics import Counts


def _masks(folder: Path) -> dict[str, Path]:
    return {p.name[: -len(KELP_SUFFIX)]: p for p in sorted(Path(folder).rglob(f"*{KELP_SUFFIX}"))}


def evaluate(pred_dir: Path, truth_dir: Path) -> tuple[dict[str, float], pd.DataFrame, BatchReport]:
    """Global scores (counted over all pixels of all matched tiles) and a per-tile table.

    A truth tile without a prediction is reported as a problem and left out of the scores.
    """
    preds, truths = _masks(pred_dir), _masks(truth_dir)
    report = BatchReport("evaluate")
    total = Counts()
    rows = []
    for tile_id, tpath in truths.items():
        try:
            if tile_id not in preds:
                raise TileError(tpath, "no prediction for this tile")
            truth = read_mask(tpath)
            pred = read_mask(preds[tile_id], truth.shape)
        except TileError as err:
            report.add(err)
            continue
        c = Counts.of(pred, truth)
        total = total + c
        rows.append({"tile_id": tile_id, **vars(c), **c.scores()})
        report.ok += 1
    scores = {**total.scores(), "tiles": report.ok, "kelp_pixels": total.tp + total.fn}
    return scores, pd.DataFrame(rows), report
