"""Kelp area per acquisition (``kelpseg timeseries``), with how much of the water was seen.

A scene's kelp area only counts the kelp that was *observed*: under a cloud or its shadow
the mask says "not kelp" because nothing was seen. So every row carries
``observed_fraction`` = clear water / all water (ha) of the area, and ``well_observed`` says
whether it reaches ``min_observed``; a cloudy date is a gap in the series, not kelp loss.

Two inputs:

- a ``kelpseg map`` output folder ``MAPS/{scene_id}/`` (``scene.json``, ``{scene_id}_kelp.tif``,
  ``{scene_id}_coverage.tif``): one row per acquisition sorted by date. Without an AOI the
  figures are the scene's own (``scene.json``); with one, the AOI is reprojected to each
  scene's CRS and the masks are read over its bounds only. AOI pixels outside the scene or
  without data lower ``aoi_valid_fraction``, which ``well_observed`` also requires.
- competition tiles: a folder of ``{id}_kelp.tif`` predictions and the ``groups.csv`` of
  ``kelpseg groups`` (one series per AOI group, ordered by tile id: tiles carry no date);
  water and its observed share come from the tiles themselves (``--tiles``: DEM and QA band).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rasterio.errors import RasterioError
from rasterio.features import geometry_mask
from rasterio.windows import Window
from shapely.geometry import Polygon
from tqdm.auto import tqdm

from kelpseg.geo.area import class_areas_ha, geometry_areas_ha
from kelpseg.geo.coverage import coverage_codes, water_ha
from kelpseg.io.errors import BatchReport, TileError, first_line
from kelpseg.io.raster import georef_of, open_raster

OUTSIDE = 254
"""Internal value of pixels outside the AOI."""
SCENE_COLUMNS = (
    "scene_id",
    "sensor",
    "date",
    "kelp_ha",
    "water_ha",
    "water_clear_ha",
    "observed_fraction",
    "well_observed",
    "pixel_area_assumed",
)
AOI_COLUMNS = ("aoi_ha", "aoi_valid_fraction")
TILE_COLUMNS = ("aoi", "order", "tile_id", *SCENE_COLUMNS[3:])


def _fraction(part: float, whole: float) -> float:
    return part / whole if whole > 0 else math.nan


def read_aoi(path: Path) -> Any:
    """The union of every geometry of a vector file (GeoJSON, GeoPackage...) as a GeoSeries."""
    import geopandas as gpd

    try:
        gdf = gpd.read_file(path)
    except Exception as err:  # pyogrio raises its own DataSourceError and others
        first = first_line(err)
        raise ValueError(f"{path}: not a readable vector file: {first}") from err
    if gdf.empty or gdf.geometry.isna().all():
        raise ValueError(f"{path}: no geometry")
    if gdf.crs is None:
        raise ValueError(f"{path}: the AOI has no CRS")
    return gpd.GeoSeries([gdf.geometry.union_all()], crs=gdf.crs)


def _densified(aoi: Any, parts: int = 256) -> Any:
    """The AOI with vertices at most 1/``parts`` of its extent apart, so that its edges stay
    where they were once reprojected (a parallel is a curve in UTM: ~1 km off over 300 km)."""
    xmin, ymin, xmax, ymax = aoi.total_bounds
    step = max(xmax - xmin, ymax - ymin) / parts
    return aoi.segmentize(step) if step > 0 else aoi


def aoi_areas(
    kelp_path: Path, coverage_path: Path, aoi: Any, *, block_rows: int = 1024
) -> dict[str, Any] | None:
    """Areas inside the AOI (a one-geometry GeoSeries with a CRS) of one mapped scene.

    Only the part of the scene under the AOI's bounds is read, ``block_rows`` rows at a time.
    The part of the AOI outside the scene counts as no data in ``aoi_valid_fraction`` (its
    area from the geometry). Returns None when the AOI and the scene do not overlap.
    """
    with open_raster(kelp_path) as ksrc, open_raster(coverage_path) as csrc:
        if (ksrc.height, ksrc.width) != (csrc.height, csrc.width):
            raise TileError(coverage_path, f"shape differs from {kelp_path.name}")
        geo = georef_of(ksrc)
        if geo.crs is None:
            raise TileError(kelp_path, "no CRS: an AOI cannot be placed on it")
        geom = _densified(aoi).to_crs(geo.crs).iloc[0]
        corners = [(0, 0), (ksrc.width, 0), (ksrc.width, ksrc.height), (0, ksrc.height)]
        footprint = Polygon([ksrc.transform @ xy for xy in corners])
        if not geom.intersects(footprint):
            return None
        inv = ~ksrc.transform
        xmin, ymin, xmax, ymax = geom.bounds
        box = [inv @ xy for xy in ((xmin, ymin), (xmin, ymax), (xmax, ymin), (xmax, ymax))]
        cs, rs = zip(*box, strict=True)
        r0, r1 = max(math.floor(min(rs)), 0), min(math.ceil(max(rs)), ksrc.height)
        c0, c1 = max(math.floor(min(cs)), 0), min(math.ceil(max(cs)), ksrc.width)
        kelp_ha = 0.0
        cov_areas: dict[int, float] = {}
        for top in range(r0, r1, block_rows):
            win = Window(c0, top, c1 - c0, min(block_rows, r1 - top))
            transform = ksrc.window_transform(win)
            inside = geometry_mask(
                [geom], out_shape=(win.height, win.width), transform=transform, invert=True
            )
            kelp = np.where(inside, ksrc.read(1, window=win), OUTSIDE)
            cov = np.where(inside, csrc.read(1, window=win), OUTSIDE)
            kelp_ha += class_areas_ha(kelp, geo.crs, transform).get(1, 0.0)
            for value, area in class_areas_ha(cov, geo.crs, transform).items():
                cov_areas[value] = cov_areas.get(value, 0.0) + area
    water, clear = water_ha(cov_areas)
    beyond = float(geometry_areas_ha([geom.difference(footprint)], geo.crs)[0][0])
    aoi_ha = sum(a for v, a in cov_areas.items() if v != OUTSIDE) + beyond
    valid = aoi_ha - beyond - cov_areas.get(255, 0.0)
    return {
        "kelp_ha": kelp_ha,
        "water_ha": water,
        "water_clear_ha": clear,
        "observed_fraction": _fraction(clear, water),
        "pixel_area_assumed": False,
        "aoi_ha": aoi_ha,
        "aoi_valid_fraction": _fraction(valid, aoi_ha),
    }


def _scene_files(folder: Path, scene_id: str) -> tuple[Path, Path]:
    kelp, cov = folder / f"{scene_id}_kelp.tif", folder / f"{scene_id}_coverage.tif"
    for path in (kelp, cov):
        if not path.is_file():
            raise TileError(path, "missing (scene.json names this scene)")
    return kelp, cov


def _read_scene_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TileError(path, f"not readable JSON: {err}") from err
    if not isinstance(meta, dict) or not meta.get("scene_id"):
        raise TileError(path, "no scene_id")
    return meta


def scene_series(
    maps: Path, aoi: Any = None, *, min_observed: float = 0.8
) -> tuple[pd.DataFrame, BatchReport]:
    """One row per acquisition of a ``kelpseg map`` folder, sorted by date (see module doc).

    Args:
        maps: The ``MAPS`` folder (``MAPS/*/scene.json``).
        aoi: Optional one-geometry GeoSeries with a CRS (:func:`read_aoi`).
        min_observed: Observed fraction (and, with an AOI, valid fraction) of a well-observed date.
    """
    maps = Path(maps)
    if not maps.is_dir():
        raise FileNotFoundError(f"{maps}: not a folder")
    metas = sorted(maps.glob("*/scene.json"))
    if not metas:
        raise FileNotFoundError(f"{maps}: no */scene.json (not a `kelpseg map` output folder?)")
    report = BatchReport("timeseries")
    rows = []
    for path in tqdm(metas, desc="scenes", unit="scene", disable=len(metas) < 20):
        try:
            meta = _read_scene_json(path)
            row = {k: meta.get(k) for k in SCENE_COLUMNS if k != "well_observed"}
            if aoi is not None:
                kelp, cov = _scene_files(path.parent, str(meta["scene_id"]))
                try:
                    areas = aoi_areas(kelp, cov, aoi)
                except (RasterioError, OSError) as err:
                    raise TileError(kelp, f"not readable: {err}") from err
                if areas is None:
                    print(f"[timeseries] {meta['scene_id']}: outside the AOI", file=sys.stderr)
                    continue
                row.update(areas)
        except TileError as err:
            report.add(err)
            continue
        report.ok += 1
        rows.append(row)
    columns = list(SCENE_COLUMNS) + (list(AOI_COLUMNS) if aoi is not None else [])
    table = pd.DataFrame(rows, columns=columns)
    table["date"] = pd.to_datetime(table["date"], errors="coerce").dt.date
    for col in ("kelp_ha", "water_ha", "water_clear_ha", "observed_fraction"):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    table["pixel_area_assumed"] = table["pixel_area_assumed"].fillna(False).astype(bool)
    good = table["observed_fraction"].fillna(0.0) >= min_observed
    if aoi is not None:
        good &= table["aoi_valid_fraction"].fillna(0.0) >= min_observed
    table["well_observed"] = good
    table = table.sort_values(["date", "scene_id"], na_position="last").reset_index(drop=True)
    return table, report


def tile_series(
    pred: Path, groups_csv: Path, tiles: Path | None = None, *, min_observed: float = 0.8
) -> tuple[pd.DataFrame, BatchReport, list[str]]:
    """One series per AOI group of competition-tile predictions, ordered by tile id.

    Args:
        pred: Folder of ``{id}_kelp.tif`` masks.
        groups_csv: ``groups.csv`` of ``kelpseg groups`` (columns tile_id, aoi).
        tiles: Folder of the ``{id}_satellite.tif`` tiles, for water and its observed share;
            None: those columns are empty.
        min_observed: Observed fraction of a well-observed tile.

    Returns:
        The table, the batch report and the ids of predictions with no AOI group.
    """
    from kelpseg.io.discover import discover

    pred = Path(pred)
    if not pred.is_dir():
        raise FileNotFoundError(f"{pred}: not a folder")
    try:
        groups = pd.read_csv(groups_csv, dtype={"tile_id": str})
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{groups_csv}: not a readable CSV: {err}") from err
    if not {"tile_id", "aoi"} <= set(groups.columns):
        raise ValueError(f"{groups_csv}: needs columns tile_id and aoi (a `kelpseg groups` table)")
    aoi_of = dict(zip(groups["tile_id"], groups["aoi"], strict=True))
    masks = {p.name[: -len("_kelp.tif")]: p for p in sorted(pred.rglob("*_kelp.tif"))}
    if not masks:
        raise FileNotFoundError(f"{pred}: no *_kelp.tif predictions")
    images = {r.tile_id: r.image for r in discover(tiles)} if tiles is not None else {}
    ungrouped = sorted(t for t in masks if t not in aoi_of)
    report = BatchReport("timeseries")
    rows = []
    for tile_id in tqdm(sorted(t for t in masks if t in aoi_of), desc="tiles", unit="tile"):
        try:
            rows.append(_tile_row(tile_id, masks[tile_id], images.get(tile_id), tiles))
        except TileError as err:
            report.add(err)
            continue
        rows[-1]["aoi"] = aoi_of[tile_id]
        report.ok += 1
    table = pd.DataFrame(rows, columns=[c for c in TILE_COLUMNS if c != "order"])
    table["well_observed"] = table["observed_fraction"].fillna(0.0) >= min_observed
    if tiles is None:
        table["well_observed"] = pd.NA
    table = table.sort_values(["aoi", "tile_id"]).reset_index(drop=True)
    table.insert(1, "order", table.groupby("aoi").cumcount())
    return table, report, ungrouped


def _tile_row(tile_id: str, mask_path: Path, image: Path | None, tiles: Path | None) -> dict:
    from kelpseg.io.tiles import read_tile

    try:
        with open_raster(mask_path) as src:
            mask, geo = src.read(1), georef_of(src)
    except (RasterioError, OSError) as err:
        raise TileError(mask_path, f"not a readable raster: {err}") from err
    kelp = class_areas_ha(mask, geo.crs, geo.transform)
    row: dict[str, Any] = {
        "tile_id": tile_id,
        "kelp_ha": kelp.get(1, 0.0),
        "water_ha": math.nan,
        "water_clear_ha": math.nan,
        "observed_fraction": math.nan,
        "pixel_area_assumed": geo.crs is None,
    }
    if tiles is not None:
        if image is None:
            raise TileError(mask_path, f"no {tile_id}_satellite.tif under {tiles}")
        raw = read_tile(image, size=None)
        if raw.shape[1:] != mask.shape:
            raise TileError(image, f"shape {raw.shape[1:]} differs from the mask's {mask.shape}")
        water, clear = water_ha(class_areas_ha(coverage_codes(raw), geo.crs, geo.transform))
        row.update(water_ha=water, water_clear_ha=clear, observed_fraction=_fraction(clear, water))
    return row


def plot_series(table: pd.DataFrame, path: Path, *, min_observed: float = 0.8) -> Path:
    """Kelp area over time (or tile order, one line per AOI group): well-observed points
    filled, poorly observed ones hollow on a shaded band; observed fraction on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kelpseg.eda.plots import save_figure

    tiles = "aoi" in table.columns
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax2 = ax.twinx()
    series = table.groupby("aoi", sort=True) if tiles else [("", table)]
    for name, part in series:
        x = part["order"].to_numpy() if tiles else pd.to_datetime(part["date"]).to_numpy()
        good = part["well_observed"].fillna(True).astype(bool).to_numpy()
        label = f"AOI {name}" if tiles else "kelp area"
        kelp = part["kelp_ha"].to_numpy()
        # the line joins well-observed points only: a cloudy date is a gap, not a dip
        (line,) = ax.plot(x[good], kelp[good], "o-", lw=1, label=label)
        ax.plot(x[~good], kelp[~good], "o", mfc="none", color=line.get_color())
        for xi in x[~good]:
            ax2.axvline(xi, color="0.88", lw=8, zorder=0)
        ax2.plot(x, part["observed_fraction"], "x:", color="0.4", lw=1, ms=4, label="_")
    ax2.axhline(min_observed, color="0.6", lw=0.8, ls="--")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel(f"observed fraction of the water (x; dashed: {min_observed})")
    ax.set_ylabel("kelp area (ha)")
    ax.set_xlabel("tile order within its AOI group (tiles carry no date)" if tiles else "date")
    ax.set_title("Kelp area; hollow on grey: poorly observed (clouds), not kelp loss")
    if not tiles or table["aoi"].nunique() <= 10:
        ax.set_zorder(ax2.get_zorder() + 1)  # the legend over the second axis' lines
        ax.patch.set_visible(False)
        ax.legend(loc="upper left", fontsize="small", framealpha=0.9)
    if not tiles:
        fig.autofmt_xdate()
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
