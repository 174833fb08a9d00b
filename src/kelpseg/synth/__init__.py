"""A realistic synthetic data set in the exact DrivenData "Kelp Wanted" layout.

Each AOI is a fixed piece of coast (coastline, DEM, land cover, kelp reefs); each acquisition
renders one date of it with its own sensor, season, clouds, Landsat-7 stripes, confusers
(surf, river plumes, sun glint, vegetated shores, cloud shadows) and defects (DEM shifts,
saturation, scene edges, wrong masks).  Test masks and a ``truth.csv`` describing every tile
are written outside the distributed folder.

Example:
    >>> from kelpseg.synth import generate
    >>> result = generate(Path("data/synth"), aois=24, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from kelpseg.synth.layout import (
    default_truth_dir,
    georef,
    prepare,
    write_metadata,
    write_tile,
    write_truth,
)
from kelpseg.synth.plan import AoiPlan, TilePlan, plan_aois, plan_tiles
from kelpseg.synth.render import KELP_THRESHOLD, Rendered, render_tile
from kelpseg.synth.scene import build_aoi

__all__ = [
    "KELP_THRESHOLD",
    "TRUTH_COLUMNS",
    "AoiPlan",
    "Rendered",
    "SynthResult",
    "TilePlan",
    "generate",
    "plan",
    "render",
]

TRUTH_COLUMNS: tuple[str, ...] = (
    "tile_id", "split", "aoi", "acquisition", "aoi_kind", "sensor", "date",
    "kelp_pixels", "true_kelp_pixels", "kelp_abundance", "water_pct", "cloud_pct",
    "missing_pct", "striped", "scene_edge", "saturated", "dem_shift_x", "dem_shift_y",
    "mask_corrupted", "mask_corruption", "confusers", "almost_all_water", "all_land",
    "heavy_corrupted",
)  # fmt: skip


@dataclass(frozen=True)
class SynthResult:
    """Where a generated set lies.

    Attributes:
        root: The distributed folder (``train_satellite``, ``train_kelp``, ``test_satellite``,
            metadata CSV).
        truth_dir: Folder with the test masks and ``truth.csv``, outside ``root``.
        truth_csv: One row per tile describing what it really contains.
        test_masks: Folder of the test masks (``{id}_kelp.tif``).
        n_train: Number of train tiles.
        n_test: Number of test tiles.
    """

    root: Path
    truth_dir: Path
    truth_csv: Path
    test_masks: Path
    n_train: int
    n_test: int


def _truth_row(aoi: AoiPlan, tile: TilePlan, fields: dict[str, object]) -> dict[str, object]:
    row: dict[str, object] = {
        "tile_id": tile.tile_id,
        "split": tile.split,
        "aoi": tile.aoi,
        "acquisition": tile.acquisition,
        "aoi_kind": aoi.kind,
        "sensor": tile.sensor,
        "date": tile.date.isoformat(),
        "kelp_abundance": round(tile.kelp_abundance, 4),
        "dem_shift_x": tile.dem_shift[0],
        "dem_shift_y": tile.dem_shift[1],
        **fields,
    }
    return {c: row[c] for c in TRUTH_COLUMNS}


def plan(
    *,
    aois: int = 24,
    seed: int = 0,
    size: int = 350,
    acquisitions: tuple[int, int] = (2, 6),
    test_aoi_fraction: float = 0.2,
) -> tuple[list[AoiPlan], list[TilePlan]]:
    """The AOIs and tiles :func:`generate` would write, without rendering anything."""
    if aois < 1 or size < 32:
        raise ValueError(f"need aois >= 1 and size >= 32, got aois={aois}, size={size}")
    if not 0 <= test_aoi_fraction < 1:
        raise ValueError(f"test_aoi_fraction must be in [0, 1), got {test_aoi_fraction}")
    rng = np.random.default_rng([seed, 0])
    aoi_plans = plan_aois(rng, aois, size, test_aoi_fraction)
    return aoi_plans, plan_tiles(rng, aoi_plans, acquisitions)


def render(
    aoi_plans: list[AoiPlan], tiles: list[TilePlan], *, seed: int, size: int
) -> Iterator[tuple[AoiPlan, TilePlan, Rendered]]:
    """Render planned tiles in memory, AOI by AOI (each AOI's scene is built once).

    Every AOI and tile draws from its own generator seeded by ``(seed, aoi, acquisition)``,
    so a tile's pixels do not depend on which other tiles are rendered.
    """
    for aoi in aoi_plans:
        mine = [t for t in tiles if t.aoi == aoi.index]
        if not mine:
            continue
        scene = build_aoi(np.random.default_rng([seed, 1, aoi.index]), aoi, size)
        for tile in mine:
            rng = np.random.default_rng([seed, 2, aoi.index, tile.acquisition])
            yield aoi, tile, render_tile(rng, scene, tile)


def generate(
    out: Path,
    *,
    aois: int = 24,
    seed: int = 0,
    size: int = 350,
    acquisitions: tuple[int, int] = (2, 6),
    test_aoi_fraction: float = 0.2,
    truth_dir: Path | None = None,
    crs: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthResult:
    """Generate a synthetic Kelp-Wanted-format data set.

    Args:
        out: Folder to write the distributed layout into.
        aois: Number of areas of interest (fixed pieces of coast).
        seed: Random seed; the same seed writes byte-identical files.
        size: Tile side in pixels (350 in the competition).
        acquisitions: Inclusive range of the number of dates per AOI.
        test_aoi_fraction: Share of AOIs whose tiles all go to the test split.
        truth_dir: Where test masks and ``truth.csv`` go; default ``OUT/../{OUT.name}_truth``.
        crs: CRS to write (e.g. ``"EPSG:32611"``) with a 30 m transform per AOI; None writes
            ungeoreferenced tiles like the competition's.
        overwrite: Replace an earlier set in ``out``/``truth_dir`` instead of refusing.
        progress: Show a progress bar over tiles.

    Returns:
        The paths and split sizes of the written set.
    """
    aoi_plans, tiles = plan(
        aois=aois,
        seed=seed,
        size=size,
        acquisitions=acquisitions,
        test_aoi_fraction=test_aoi_fraction,
    )
    out = Path(out)
    truth_dir = Path(truth_dir) if truth_dir is not None else default_truth_dir(out)
    if truth_dir.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"truth_dir {truth_dir} must lie outside {out}: test masks are hidden")
    prepare(out, truth_dir, overwrite)
    rows = []
    rendered = render(aoi_plans, tiles, seed=seed, size=size)
    for aoi, tile, r in tqdm(
        rendered, total=len(tiles), desc="synth", unit="tile", disable=not progress
    ):
        ref = georef(crs, aoi.origin)
        write_tile(out, truth_dir, tile.tile_id, tile.split, r.image, r.mask, ref)
        rows.append(_truth_row(aoi, tile, r.truth))
    truth = pd.DataFrame(rows, columns=list(TRUTH_COLUMNS))
    write_metadata(out, truth)
    truth_csv = write_truth(truth_dir, truth)
    n_train = int((truth["split"] == "train").sum())
    return SynthResult(
        root=out,
        truth_dir=truth_dir,
        truth_csv=truth_csv,
        test_masks=truth_dir / "test_kelp",
        n_train=n_train,
        n_test=len(truth) - n_train,
    )
