"""What each synthetic AOI and tile will contain, decided up front from one seed.

Planning first (cheap, sequential) and rendering later (per-tile generators) keeps the data
set deterministic and makes the counts of rare cases (corrupted masks, heavy corruption,
saturation) exact rather than left to chance.
"""

from __future__ import annotations

import datetime as dt
import math
import string
from dataclasses import dataclass

import numpy as np

from kelpseg.synth.spectra import SENSOR_WEIGHTS, SENSOR_YEARS, SENSORS

MASK_CORRUPTIONS: tuple[str, ...] = ("kelp_on_land", "rectangle", "shifted")
SLC_FAILURE = dt.date(2003, 5, 31)
"""Landsat-7's scan-line corrector failed on this date: later LE07 scenes have gaps."""
SCENE_EDGE_RATE = 0.10
"""Share of tiles that lie on a scene edge (part of the tile outside the footprint)."""


@dataclass(frozen=True)
class AoiPlan:
    """A fixed piece of coast seen on several dates.

    Attributes:
        index: AOI number.
        kind: ``open_sea``, ``coast``, ``mostly_land`` or ``all_land``.
        land_fraction: Target share of land pixels in the tile.
        has_kelp: Whether the coast grows kelp at all.
        coastal_vegetation: Vegetated land right down to the water (an NDVI confuser).
        river: A river mouth that sometimes spills a turbid plume.
        split: ``train`` or ``test``.
        origin: Upper-left map coordinates used when a CRS is requested.
    """

    index: int
    kind: str
    land_fraction: float
    has_kelp: bool
    coastal_vegetation: bool
    river: bool
    split: str
    origin: tuple[float, float]


@dataclass(frozen=True)
class TilePlan:
    """One acquisition (date) of an AOI.

    Attributes:
        tile_id: Competition-style id, two letters and six digits.
        aoi: Index of the AOI.
        acquisition: Index of the date within the AOI.
        split: ``train`` or ``test``.
        sensor: Landsat sensor code (``LT05``, ``LE07``, ``LC08``, ``LC09``).
        date: Acquisition date.
        kelp_abundance: Canopy abundance on this date in [0, 1] (season and year).
        cloud_cover: Target share of opaque cloud, 0 for a clear date.
        scene_edge: Share of the tile outside the scene footprint, 0 for none.
        slc_off: Landsat-7 after the scan-line corrector failed: gaps in every band.
        dem_shift: ``(dx, dy)`` DEM misregistration in pixels.
        saturated: Whether some pixels saturate (32767).
        mask_corruption: Planned kind of wrong mask, empty for a correct one.
        glint: Sun glint on this date.
        surf: Breaking waves along the shore on this date.
        plume: The AOI's river plume is out on this date.
    """

    tile_id: str
    aoi: int
    acquisition: int
    split: str
    sensor: str
    date: dt.date
    kelp_abundance: float
    cloud_cover: float
    scene_edge: float
    slc_off: bool
    dem_shift: tuple[int, int]
    saturated: bool
    mask_corruption: str
    glint: bool
    surf: bool
    plume: bool


def tile_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` unique ids like ``AA498489`` (two uppercase letters, six digits)."""
    letters = np.array(list(string.ascii_uppercase))
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        pair = "".join(rng.choice(letters, 2))
        tid = f"{pair}{int(rng.integers(0, 1_000_000)):06d}"
        if tid not in seen:
            seen.add(tid)
            ids.append(tid)
    return ids


def _aoi_kinds(n: int) -> list[str]:
    n_open = max(2 if n >= 10 else int(n >= 5), round(0.12 * n))
    n_mostly = int(n >= 10)
    n_all = int(n >= 20)
    return (
        ["open_sea"] * n_open
        + ["mostly_land"] * n_mostly
        + ["all_land"] * n_all
        + ["coast"] * (n - n_open - n_mostly - n_all)
    )


def _land_fraction(rng: np.random.Generator, kind: str) -> float:
    if kind == "open_sea":
        return 0.0
    if kind == "all_land":
        return 1.0
    if kind == "mostly_land":
        return float(rng.uniform(0.85, 0.97))
    if rng.random() < 0.15:  # a headland just touching the tile: > 98 % water
        return float(rng.uniform(0.004, 0.018))
    return float(rng.uniform(0.05, 0.7))


def _test_aois(rng: np.random.Generator, has_kelp: list[bool], fraction: float) -> set[int]:
    n = len(has_kelp)
    n_test = round(fraction * n)
    if n >= 3:
        n_test = max(1, n_test)
    n_test = min(n_test, n - 1) if n > 1 else 0
    if n_test == 0:
        return set()
    order = [int(i) for i in rng.permutation(n)]
    kelp = [i for i in order if has_kelp[i]]
    first = kelp[0] if len(kelp) >= 2 else order[0]  # a kelp AOI in test, one left for train
    rest = [i for i in order if i != first]
    return {first, *rest[: n_test - 1]}


def plan_aois(rng: np.random.Generator, n: int, size: int, test_fraction: float) -> list[AoiPlan]:
    """Decide the kind, coast and split of ``n`` AOIs."""
    kinds = [str(k) for k in rng.permutation(_aoi_kinds(n))]
    coasts = [i for i, k in enumerate(kinds) if k == "coast"]
    kelp_free = set(rng.permutation(coasts)[: round(0.15 * len(coasts))].tolist())
    has_kelp = [k == "coast" and i not in kelp_free for i, k in enumerate(kinds)]
    test = _test_aois(rng, has_kelp, test_fraction)
    spacing = 1.5 * size * 30.0
    aois = []
    for i, kind in enumerate(kinds):
        coastal = kind in ("coast", "mostly_land")
        origin = (
            300_000.0 + spacing * (i % 8) + 30.0 * int(rng.integers(0, 100)),
            4_000_000.0 - spacing * (i // 8) - 30.0 * int(rng.integers(0, 100)),
        )
        aois.append(
            AoiPlan(
                index=i,
                kind=kind,
                land_fraction=_land_fraction(rng, kind),
                has_kelp=has_kelp[i],
                coastal_vegetation=coastal and rng.random() < 0.4,
                river=coastal and rng.random() < 0.35,
                split="test" if i in test else "train",
                origin=origin,
            )
        )
    return aois


def _abundance(rng: np.random.Generator, date: dt.date) -> float:
    """Kelp canopy abundance: a late-summer peak, poor years, some dates nearly gone."""
    if rng.random() < 0.12:
        return float(rng.uniform(0.0, 0.1))
    doy = date.timetuple().tm_yday
    season = 0.6 + 0.4 * math.cos(2 * math.pi * (doy - 250) / 365.25)
    year = 0.35 if 2014 <= date.year <= 2016 else rng.uniform(0.6, 1.0)  # marine heatwave
    return float(np.clip(season * year * rng.uniform(0.85, 1.2), 0.0, 1.0))


def _pick(rng: np.random.Generator, pool: list[int], k: int) -> set[int]:
    return set(rng.permutation(pool)[:k].tolist()) if pool and k > 0 else set()


def plan_tiles(
    rng: np.random.Generator, aois: list[AoiPlan], acquisitions: tuple[int, int]
) -> list[TilePlan]:
    """Decide every tile's date, sensor, artefacts and confusers."""
    lo, hi = acquisitions
    if not 1 <= lo <= hi:
        raise ValueError(f"acquisitions must be 1 <= min <= max, got {acquisitions}")
    counts = [int(rng.integers(lo, hi + 1)) for _ in aois]
    keys = [(a.index, j) for a, c in zip(aois, counts, strict=True) for j in range(c)]
    n = len(keys)
    ids = tile_ids(rng, n)
    train = [i for i, (a, _) in enumerate(keys) if aois[a].split == "train"]
    kelp_train = [i for i in train if aois[keys[i][0]].has_kelp] or train
    heavy = _pick(rng, list(range(n)), max(int(n >= 20), round(0.015 * n)))
    saturated = _pick(rng, list(range(n)), max(int(n >= 20), round(0.04 * n)))
    n_corrupt = max(int(len(train) >= 10), round(0.02 * len(train)))
    corrupted = _pick(rng, kelp_train, n_corrupt)
    tiles = []
    for i, (a, j) in enumerate(keys):
        aoi = aois[a]
        sensor = str(rng.choice(SENSORS, p=SENSOR_WEIGHTS / SENSOR_WEIGHTS.sum()))
        y0, y1 = SENSOR_YEARS[sensor]
        date = dt.date(int(rng.integers(y0, y1 + 1)), 1, 1) + dt.timedelta(
            days=int(rng.integers(0, 365))
        )
        cloud = float(rng.uniform(0.02, 0.45)) if rng.random() < 0.3 else 0.0
        edge = float(rng.uniform(0.05, 0.5)) if rng.random() < SCENE_EDGE_RATE else 0.0
        if i in heavy:
            if rng.random() < 0.5:
                cloud = float(rng.uniform(0.78, 0.97))
            else:
                edge = float(rng.uniform(0.75, 0.95))
        shift = (0, 0)
        if rng.random() < 0.15:
            while shift == (0, 0):
                shift = (int(rng.integers(-5, 6)), int(rng.integers(-5, 6)))
        coastal = aoi.kind != "open_sea"
        tiles.append(
            TilePlan(
                tile_id=ids[i],
                aoi=a,
                acquisition=j,
                split=aoi.split,
                sensor=sensor,
                date=date,
                kelp_abundance=_abundance(rng, date) if aoi.has_kelp else 0.0,
                cloud_cover=cloud,
                scene_edge=edge,
                slc_off=sensor == "LE07" and date >= SLC_FAILURE,
                dem_shift=shift,
                saturated=i in saturated,
                mask_corruption=str(rng.choice(MASK_CORRUPTIONS)) if i in corrupted else "",
                glint=bool(rng.random() < 0.2),
                surf=coastal and bool(rng.random() < 0.5),
                plume=aoi.river and bool(rng.random() < 0.7),
            )
        )
    return tiles
