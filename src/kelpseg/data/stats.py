"""Per-tile quality statistics and per-band statistics (``kelpseg stats``).

Per-tile columns follow the 2nd-place pipeline: has_kelp, kelp_pixels_pct, dem_nan_pixels_pct,
dem_zero_pixels_pct, almost_all_water, qa_ok, qa_corrupted_pixels_pct and
high_corrupted_pixels_pct (a flag: more than 70 % of pixels cloudy or missing), followed by the
data-problem columns of :mod:`kelpseg.data.quality` (suspect masks, DEM shift, striping,
saturation, ...). The table lists only tiles that passed validation, so later stages use it as
the list of usable tiles. Reading and the per-tile work run in worker processes (threads gain
nothing here: reading and the many small numpy steps hold the GIL).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kelpseg.data.cache import PackTarget
from kelpseg.data.quality import quality_flags
from kelpseg.io import BAND_NAMES, NODATA, BatchReport, TileError, TileRef, read_mask, read_tile
from kelpseg.io.plausibility import check_band_order
from kelpseg.io.raster import atomic_write_text
from kelpseg.io.tiles import DEM_INDEX, QA_INDEX

ALMOST_ALL_WATER_PCT = 98.0
HIGH_CORRUPTED_PCT = 70.0
QUANTILE_SAMPLE = 4096  # most pixels per tile and band kept for quantiles / median
QUANTILE_TOTAL = 2_000_000  # about this many per band over the whole set (memory bound)
PARALLEL_MIN_TILES = 64  # fewer tiles are measured in-process (no worker start-up)


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
class BandSums:
    """Per-band count, sum, sum of squares, min, max and a pixel sample; mergeable."""

    count: np.ndarray = field(default_factory=lambda: np.zeros(len(BAND_NAMES)))
    total: np.ndarray = field(default_factory=lambda: np.zeros(len(BAND_NAMES)))
    total_sq: np.ndarray = field(default_factory=lambda: np.zeros(len(BAND_NAMES)))
    lo: np.ndarray = field(default_factory=lambda: np.full(len(BAND_NAMES), np.inf))
    hi: np.ndarray = field(default_factory=lambda: np.full(len(BAND_NAMES), -np.inf))
    samples: list[list[np.ndarray]] = field(default_factory=lambda: [[] for _ in BAND_NAMES])

    @classmethod
    def of(
        cls, raw: np.ndarray, rng: np.random.Generator, k: int, where: np.ndarray | None = None
    ) -> BandSums:
        """The sums of one raw tile's valid (and ``where``) pixels, with ``k`` sampled per band."""
        out = cls()
        for b in range(raw.shape[0]):
            v = raw[b]
            ok = v != NODATA
            if where is not None:
                ok &= where
            vals = v[ok]
            if vals.size == 0:
                continue
            f = vals.astype(np.float64)
            out.count[b] = vals.size
            out.total[b] = f.sum()
            out.total_sq[b] = np.square(f).sum()
            out.lo[b], out.hi[b] = vals.min(), vals.max()
            if vals.size > k:
                vals = vals[rng.integers(0, vals.size, k)]
            out.samples[b].append(vals)
        return out

    def merge(self, other: BandSums) -> None:
        """Add ``other`` into these sums."""
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq
        self.lo = np.minimum(self.lo, other.lo)
        self.hi = np.maximum(self.hi, other.hi)
        for mine, theirs in zip(self.samples, other.samples, strict=True):
            mine.extend(theirs)

    def result(self) -> dict[str, dict[str, float]]:
        """``{band: {count, min, max, median, mean, std, q01, q99}}``."""
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
    warnings: dict[str, str] = field(default_factory=dict)  # file -> implausible band order


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


def tile_row(
    ref: TileRef, raw: np.ndarray, mask: np.ndarray | None, quality: bool = True
) -> dict[str, object]:
    """One row of ``tile_stats.csv``: id, split, the quality stats and, with ``quality``, the
    data-problem columns of :func:`kelpseg.data.quality.quality_flags`."""
    row: dict[str, object] = {"tile_id": ref.tile_id, "split": ref.split}
    row.update(height=raw.shape[1], width=raw.shape[2], **tile_flags(raw, mask))
    if quality:
        row.update(quality_flags(raw, mask))
    return row


@dataclass(frozen=True)
class _Job:
    ref: TileRef
    index: int
    size: int | None
    seed: int
    sample: int
    water_only: bool
    quality: bool
    pack: PackTarget | None = None
    pack_dem_shift: bool = True


_Done = tuple[
    dict[str, object] | None,
    BandSums | None,
    BandSums | None,
    tuple[str, str] | None,
    str | None,
]


def _measure(job: _Job) -> _Done:
    """Read one tile and compute its row and band sums (runs in a worker process)."""
    try:
        raw, mask = _load(job.ref, job.size)
    except TileError as err:
        return None, None, None, (str(err.path), err.problem), None
    rng = np.random.default_rng([job.seed, job.index])
    row = tile_row(job.ref, raw, mask, job.quality)
    if job.pack is not None and mask is not None:  # one read feeds the training cache too
        from kelpseg.data.groups import dem_shifts

        shift = (0, 0)
        if job.pack_dem_shift:
            shift = dem_shifts(pd.DataFrame([row]), [job.ref.tile_id])[0]
        job.pack.put(job.ref.tile_id, raw, mask, shift)
    sums_all = BandSums.of(raw, rng, job.sample)
    sums_water = None
    if job.water_only:
        dem = raw[DEM_INDEX]
        sums_water = BandSums.of(raw, rng, job.sample, where=(dem == NODATA) | (dem <= 0))
    return row, sums_all, sums_water, None, check_band_order(raw)


def _run(jobs: list[_Job], workers: int) -> Iterator[_Done]:
    """``_measure`` over ``jobs`` in order, on ``workers`` processes when more than one."""
    if workers <= 1:
        yield from map(_measure, jobs)
        return
    # fork (as torch's DataLoader does): no re-import of __main__, no start-up cost
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        yield from pool.map(_measure, jobs, chunksize=8)


def default_workers(n_tiles: int) -> int:
    """Worker processes for ``n_tiles``: one (no start-up cost) for small sets, else the CPUs."""
    if n_tiles < PARALLEL_MIN_TILES:
        return 1
    return max(1, min(8, len(os.sched_getaffinity(0))))


def compute_stats(
    refs: list[TileRef],
    *,
    size: int | None = 350,
    seed: int = 0,
    water_only: bool = True,
    quality: bool = True,
    workers: int | None = None,
    pack: PackTarget | None = None,
    pack_dem_shift: bool = True,
) -> StatsResult:
    """Per-tile flags and per-band statistics over all valid (and water-only) pixels.

    Args:
        refs: Tiles to read.
        size: Expected tile side (None accepts any).
        seed: Seed of the pixel sample behind the quantiles (drawn per tile, so the result
            does not depend on ``workers``).
        water_only: Also compute band stats over water pixels (DEM <= 0 or missing).
        quality: Add the data-problem columns (suspect masks, DEM shift, striping, ...).
        workers: Processes reading and measuring tiles; None picks :func:`default_workers`.
        pack: Training-cache arrays to fill with each tile of ``pack.rows`` as it is read
            (with ``pack_dem_shift`` its detected DEM shift undone), so the cache needs no
            second read of the tiles.
    """
    report = BatchReport("stats")
    sample = int(np.clip(QUANTILE_TOTAL // max(len(refs), 1), 256, QUANTILE_SAMPLE))
    jobs = [
        _Job(r, i, size, seed, sample, water_only, quality, pack, pack_dem_shift)
        for i, r in enumerate(refs)
    ]
    n_workers = default_workers(len(refs)) if workers is None else workers
    sums_all, sums_water = BandSums(), BandSums()
    rows = []
    warnings: dict[str, str] = {}
    done = tqdm(_run(jobs, n_workers), total=len(jobs), desc="stats", leave=False)
    for job, (row, part_all, part_water, error, warning) in zip(jobs, done, strict=True):
        if error is not None:
            report.add(TileError(*error))
            continue
        if warning:
            warnings[str(job.ref.image)] = warning
            print(f"[stats] warning: {job.ref.image}: {warning}", file=sys.stderr)
        report.ok += 1
        rows.append(row)
        sums_all.merge(part_all)
        if part_water is not None:
            sums_water.merge(part_water)
    bands = {"all": sums_all.result()}
    if water_only:
        bands["water"] = sums_water.result()
    return StatsResult(pd.DataFrame(rows), bands, report, warnings)


def mark_excluded(tiles: pd.DataFrame, flags: list[str]) -> pd.DataFrame:
    """Add ``excluded``: a training tile with any of ``flags`` set (test tiles never are)."""
    tiles = tiles.copy()
    excluded = pd.Series(False, index=tiles.index)
    if flags and len(tiles):
        missing = [f for f in flags if f not in tiles]
        if missing:
            raise ValueError(f"data.exclude names {missing}, not columns of the tile table")
        hit = tiles[flags].fillna(False).astype(bool).any(axis=1)
        excluded = hit & (tiles["split"] == "train")
    tiles["excluded"] = excluded.astype(bool)
    return tiles


def write_stats(result: StatsResult, out: Path) -> tuple[Path, Path]:
    """Write ``tile_stats.csv`` and ``band_stats.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = atomic_write_text(out / "tile_stats.csv", result.tiles.to_csv(index=False))
    json_path = atomic_write_text(out / "band_stats.json", json.dumps(result.bands, indent=2))
    return csv_path, json_path
