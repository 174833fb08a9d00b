"""Per-tile quality statistics and per-band statistics (``kelpseg stats``).

Per-tile columns follow the 2nd-place pipeline: has_kelp, kelp_pixels_pct, dem_nan_pixels_pct,
dem_zero_pixels_pct, almost_all_water, qa_ok, qa_corrupted_pixels_pct and
high_corrupted_pixels_pct (a flag: more than 70 % of pixels cloudy or missing). The table lists
only tiles that passed validation, so later stages use it as the list of usable tiles.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kelpseg.io import BAND_NAMES, NODATA, BatchReport, TileError, TileRef, read_mask, read_tile
from kelpseg.io.raster import atomic_write_text
from kelpseg.io.tiles import DEM_INDEX, QA_INDEX

ALMOST_ALL_WATER_PCT = 98.0
HIGH_CORRUPTED_PCT = 70.0
QUANTILE_SAMPLE = 4096  # pixels per tile and band kept for quantiles / median


def tile_flags(raw: np.ndarray, mask: np.ndarray | None) -> dict[str, float | bool]:
    """Quality flags of one raw int16 tile (and its mask, when it has one)."""
    n = raw.shape[1] * raw.shape[2]
    dem, qa = raw[DEM_INDEX], raw[QA_INDEX]
    dem_nan = dem == NODATA
    dem_zero = dem == 0
    water = dem_nan | (dem <= 0)
    qa_bad = qa != 0  # 1 (cloud / bad) or missing
    missing = (raw[:5] == NODATA).any(axis=0)
    corrupted = qa_bad | missing
    row: dict[str, float | bool] = {
        "dem_nan_pixels_pct": 100.0 * dem_nan.sum() / n,
        "dem_zero_pixels_pct": 100.0 * dem_zero.sum() / n,
        "water_pixels_pct": 100.0 * water.sum() / n,
        "almost_all_water": bool(100.0 * water.sum() / n > ALMOST_ALL_WATER_PCT),
        "qa_ok": bool(not qa_bad.any()),
        "qa_corrupted_pixels_pct": 100.0 * qa_bad.sum() / n,
        "missing_pixels_pct": 100.0 * missing.sum() / n,
        "corrupted_pixels_pct": 100.0 * corrupted.sum() / n,
        "high_corrupted_pixels_pct": bool(100.0 * corrupted.sum() / n > HIGH_CORRUPTED_PCT),
    }
    if mask is not None:
        kelp = int(mask.sum())
        row.update(has_kelp=kelp > 0, kelp_pixels=kelp, kelp_pixels_pct=100.0 * kelp / n)
    else:
        row.update(has_kelp=np.nan, kelp_pixels=np.nan, kelp_pixels_pct=np.nan)
    return row


@dataclass
class _BandAccumulator:
    """Exact min/max/mean/std and a pixel sample for quantiles, per band."""

    rng: np.random.Generator
    count: np.ndarray = field(default_factory=lambda: np.zeros(len(BAND_NAMES)))
    total: np.ndarray = field(default_factory=lambda: np.zeros(len(BAND_NAMES)))
    total_sq: np.ndarray = field(default_factory=lambda: np.zeros(len(BAND_NAMES)))
    lo: np.ndarray = field(default_factory=lambda: np.full(len(BAND_NAMES), np.inf))
    hi: np.ndarray = field(default_factory=lambda: np.full(len(BAND_NAMES), -np.inf))
    samples: list[list[np.ndarray]] = field(default_factory=lambda: [[] for _ in BAND_NAMES])

    def add(self, raw: np.ndarray, where: np.ndarray | None = None) -> None:
        for b in range(raw.shape[0]):
            v = raw[b]
            ok = v != NODATA
            if where is not None:
                ok &= where
            vals = v[ok].astype(np.float64)
            if vals.size == 0:
                continue
            self.count[b] += vals.size
            self.total[b] += vals.sum()
            self.total_sq[b] += np.square(vals).sum()
            self.lo[b] = min(self.lo[b], vals.min())
            self.hi[b] = max(self.hi[b], vals.max())
            if vals.size > QUANTILE_SAMPLE:
                vals = self.rng.choice(vals, QUANTILE_SAMPLE, replace=False)
            self.samples[b].append(vals)

    def result(self) -> dict[str, dict[str, float]]:
        out = {}
        for b, name in enumerate(BAND_NAMES):
            if self.count[b] == 0:
                out[name] = {"count": 0}
                continue
            sample = np.concatenate(self.samples[b])
            mean = self.total[b] / self.count[b]
            var = max(self.total_sq[b] / self.count[b] - mean**2, 0.0)
            q01, med, q99 = np.quantile(sample, [0.01, 0.5, 0.99])
            out[name] = {
                "count": int(self.count[b]),
                "min": float(self.lo[b]),
                "max": float(self.hi[b]),
                "median": float(med),
                "mean": float(mean),
                "std": float(np.sqrt(var)),
                "q01": float(q01),
                "q99": float(q99),
            }
        return out


@dataclass
class StatsResult:
    """Per-tile table (valid tiles only), per-band stats and the batch report."""

    tiles: pd.DataFrame
    bands: dict[str, dict[str, dict[str, float]]]
    report: BatchReport


def _load(ref: TileRef, size: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    raw = read_tile(ref.image, size)
    mask = None
    if ref.mask is not None:
        mask = read_mask(ref.mask, raw.shape[1:])
    elif ref.split == "train":
        raise TileError(ref.image, "training tile has no *_kelp.tif mask")
    return raw, mask


def iter_tiles(
    refs: list[TileRef], size: int | None, report: BatchReport, desc: str = "tiles"
) -> Iterator[tuple[TileRef, np.ndarray, np.ndarray | None]]:
    """Read tiles on two threads (rasterio releases the GIL), reporting bad ones."""

    def load(ref: TileRef):
        try:
            return ref, *_load(ref, size)
        except TileError as err:
            return ref, err, None

    with ThreadPoolExecutor(max_workers=2) as pool:
        for ref, raw, mask in tqdm(pool.map(load, refs), total=len(refs), desc=desc, leave=False):
            if isinstance(raw, TileError):
                report.add(raw)
                continue
            report.ok += 1
            yield ref, raw, mask


def compute_stats(
    refs: list[TileRef], *, size: int | None = 350, seed: int = 0, water_only: bool = True
) -> StatsResult:
    """Per-tile flags and per-band statistics over all valid (and water-only) pixels."""
    report = BatchReport("stats")
    rng = np.random.default_rng(seed)
    acc_all, acc_water = _BandAccumulator(rng), _BandAccumulator(rng)
    rows = []
    for ref, raw, mask in iter_tiles(refs, size, report, desc="stats"):
        rows.append({"tile_id": ref.tile_id, "split": ref.split, **tile_flags(raw, mask)})
        acc_all.add(raw)
        if water_only:
            dem = raw[DEM_INDEX]
            acc_water.add(raw, where=(dem == NODATA) | (dem <= 0))
    table = pd.DataFrame(rows)
    bands = {"all": acc_all.result()}
    if water_only:
        bands["water"] = acc_water.result()
    return StatsResult(table, bands, report)


def write_stats(result: StatsResult, out: Path) -> tuple[Path, Path]:
    """Write ``tile_stats.csv`` and ``band_stats.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = atomic_write_text(out / "tile_stats.csv", result.tiles.to_csv(index=False))
    json_path = atomic_write_text(out / "band_stats.json", json.dumps(result.bands, indent=2))
    return csv_path, json_path
