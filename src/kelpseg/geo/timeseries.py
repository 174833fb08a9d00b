"""Kelp area per acquisition (``kelpseg timeseries``), with how much of the water was seen.

A scene's kelp area only counts the kelp that was *observed*: under a cloud or its shadow
nothing was seen (``kelpseg map`` marks those pixels unknown, 255, and counts kelp on clear
water only). So every row carries
``observed_fraction`` = clear water / all water (ha) of the area, and ``well_observed`` says
whether it reaches ``min_observed``; a cloudy date is a gap in the series, not kelp loss. A
date that saw no clear water there at all has ``kelp_ha`` empty (NaN), never 0.

Two inputs:

- a ``kelpseg map`` output folder ``MAPS/{scene_id}/`` (``scene.json``, ``{scene_id}_kelp.tif``,
  ``{scene_id}_coverage.tif``): one row per acquisition, sorted by footprint
  (:mod:`kelpseg.geo.footprint`: a WRS-2 path/row, an MGRS tile or a grid; two footprints are
  two areas and never one series), then date. Without an AOI the figures are the scene's own
  and only ``scene.json`` is read. With an AOI (:func:`read_aoi`: one series per feature), each
  feature is reprojected to each scene's CRS and the masks are read under it only; AOI pixels
  outside the scene or without data lower ``aoi_valid_fraction``, which ``well_observed`` also
  requires. :func:`quarterly` condenses the rows Kelpwatch-style.
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

from kelpseg.geo.area import class_areas_ha, geometry_areas_ha, to_pyproj
from kelpseg.geo.coverage import coverage_codes, water_ha
from kelpseg.geo.footprint import named_footprint, raster_footprint
from kelpseg.io.errors import BatchReport, TileError, first_line
from kelpseg.io.raster import atomic_write_text, georef_of, open_raster

OUTSIDE = 254
"""Internal value of pixels outside the AOI."""
SCENE_COLUMNS = (
    "footprint",
    "date",
    "scene_id",
    "sensor",
    "kelp_ha",
    "water_ha",
    "water_clear_ha",
    "observed_fraction",
    "well_observed",
    "pixel_area_assumed",
)
AOI_COLUMNS = ("aoi_ha", "aoi_valid_fraction")
TILE_COLUMNS = ("aoi", "order", "tile_id", *SCENE_COLUMNS[4:])
QUARTER_COLUMNS = (
    "year",
    "quarter",
    "kelp_ha_max",
    "kelp_ha_mean_well_observed",
    "dates",
    "dates_well_observed",
)
AREA_DECIMALS, FRACTION_DECIMALS = 2, 4
"""CSV rounding: 0.01 ha (a 30 m pixel is 0.09 ha) and 4 decimals of a fraction."""
LONLAT_HINT = (
    "coordinates look projected (metres?): GeoJSON is lon/lat (RFC 7946); reproject it or "
    "give a GeoPackage with its CRS / use --aoi-crs"
)


def _fraction(part: float, whole: float) -> float:
    return part / whole if whole > 0 else math.nan


def _note(text: str) -> None:
    print(f"[timeseries] note: {text}", file=sys.stderr)


# --- the AOI ------------------------------------------------------------------------------


def _read_vector(path: Path) -> Any:
    import geopandas as gpd

    try:
        gdf = gpd.read_file(path)
    except Exception as err:  # pyogrio raises its own DataSourceError and others
        raise ValueError(f"{path}: not a readable vector file: {first_line(err)}") from err
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if gdf.empty:
        raise ValueError(f"{path}: no geometry")
    return gdf


def _with_crs(gdf: Any, path: Path, crs: str | None) -> Any:
    """The features with their CRS: the file's, or ``crs`` (``--aoi-crs``) when given."""
    if crs is not None:
        try:
            given = to_pyproj(crs)
        except Exception as err:  # pyproj's CRSError
            raise ValueError(f"--aoi-crs {crs}: not a CRS: {first_line(err)}") from err
        if gdf.crs is not None and not gdf.crs.equals(given):
            _note(f"{path.name}: its CRS ({_crs_name(gdf.crs)}) replaced by --aoi-crs {crs}")
        return gdf.set_crs(given, allow_override=True)
    if gdf.crs is None:
        raise ValueError(
            f"{path}: the AOI has no CRS (a shapefile without its .prj?): "
            "give it with --aoi-crs EPSG:…, or use a GeoPackage"
        )
    return gdf


def _check_lonlat(gdf: Any, path: Path) -> None:
    """Refuse projected-looking coordinates in a geographic CRS (a GeoJSON in metres)."""
    if not gdf.crs.is_geographic:
        return
    xmin, ymin, xmax, ymax = gdf.total_bounds
    if max(abs(xmin), abs(xmax)) > 180 or max(abs(ymin), abs(ymax)) > 90:
        where = f"bounds {_fmt_bounds((xmin, ymin, xmax, ymax))} in {_crs_name(gdf.crs)}"
        raise ValueError(f"{path}: {LONLAT_HINT} ({where})")


def _polygonal(geom: Any) -> Any:
    """The polygonal part of a geometry (a repaired bow-tie may add lines), or None."""
    import shapely

    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else None


def _repaired(geoms: Any, path: Path) -> Any:
    """Invalid geometries made valid (``shapely.make_valid``), polygonal parts kept."""
    import shapely

    invalid = ~geoms.is_valid
    if invalid.any():
        reason = shapely.is_valid_reason(geoms[invalid].iloc[0])
        geoms = geoms.copy()
        geoms[invalid] = shapely.make_valid(geoms[invalid].to_numpy())
        _note(
            f"{path.name}: {int(invalid.sum())} invalid geometr{'y' if invalid.sum() == 1 else 'ies'}"
            f" (e.g. {reason}) repaired with shapely.make_valid, polygonal parts kept"
        )
    return geoms.map(_polygonal)


def _aoi_names(gdf: Any, path: Path) -> list[str]:
    """One name per feature: its ``name`` or ``id`` column (said), else its index in the file."""
    columns = {str(c).lower(): c for c in gdf.columns if c != gdf.geometry.name}
    for key in ("name", "id"):
        col = columns.get(key)
        if col is None:
            continue
        values = gdf[col].astype("string").str.strip()
        if values.notna().all() and (values != "").all():
            _note(
                f"{path.name}: {len(gdf)} AOI feature(s) named by its column {col!r} (column aoi)"
            )
            return list(values)
    if len(gdf) > 1:
        _note(
            f"{path.name}: no name/id column: {len(gdf)} AOIs named by feature index (column aoi)"
        )
    return [str(i) for i in gdf.index]


def read_aoi(path: Path, *, crs: str | None = None, union: bool = False) -> Any:
    """The polygons of a vector file (GeoJSON, GeoPackage, shapefile...): one AOI per feature.

    Args:
        path: The vector file.
        crs: Its CRS when the file has none (a shapefile without .prj) or a wrong one
            (``--aoi-crs``); it replaces the file's, nothing is reprojected.
        union: One AOI, the union of every feature, named by the file's stem.

    Returns:
        A GeoSeries with a CRS, indexed by AOI name (the ``name`` or ``id`` column, else the
        feature index; features sharing a name are merged). Invalid geometries are repaired;
        features without area (points, lines) are left out.

    Raises:
        ValueError: Unreadable file, no polygon, no CRS, or lon/lat that are not.
    """
    import geopandas as gpd

    path = Path(path)
    gdf = _with_crs(_read_vector(path), path, crs)
    _check_lonlat(gdf, path)
    geoms = _repaired(gdf.geometry, path)
    keep = geoms.notna()
    if not keep.all():
        _note(f"{path.name}: {int((~keep).sum())} feature(s) without area (points, lines) left out")
    if not keep.any():
        raise ValueError(f"{path}: no polygon (an AOI needs an area)")
    gdf, geoms = gdf[keep], geoms[keep]
    if union:
        return gpd.GeoSeries(
            [geoms.union_all()], index=pd.Index([path.stem], name="aoi"), crs=gdf.crs
        )
    names = _aoi_names(gdf, path)
    if len(set(names)) < len(names):
        _note(f"{path.name}: features sharing a name are merged into one AOI each")
    frame = gpd.GeoDataFrame({"aoi": names}, geometry=list(geoms), crs=gdf.crs)
    merged = frame.dissolve("aoi", sort=False).geometry
    return merged.rename_axis("aoi")


def _densified(aoi: Any, parts: int = 256) -> Any:
    """Each AOI with vertices at most 1/``parts`` of its extent apart, so that its edges stay
    where they were once reprojected (a parallel is a curve in UTM: ~1 km off over 300 km)."""
    import geopandas as gpd
    import shapely

    bounds = aoi.bounds
    step = np.maximum(bounds["maxx"] - bounds["minx"], bounds["maxy"] - bounds["miny"]) / parts
    step = np.where(step > 0, step, np.inf)
    return gpd.GeoSeries(shapely.segmentize(aoi.to_numpy(), step), index=aoi.index, crs=aoi.crs)


def _crs_name(crs: Any) -> str:
    pcrs = to_pyproj(crs)
    if pcrs is None:
        return "no CRS"
    epsg = pcrs.to_epsg()
    return f"EPSG:{epsg}" if epsg else pcrs.name


def _fmt_bounds(bounds: tuple[float, ...] | Any) -> str:
    values = [float(v) for v in bounds]
    decimals = 4 if max(abs(v) for v in values) <= 360 else 0
    return ", ".join(f"{v:.{decimals}f}" for v in values)


# --- areas under an AOI -------------------------------------------------------------------


def _aoi_in_crs(aoi: Any, crs: Any, cache: dict[str, Any] | None) -> Any:
    key = crs.to_wkt()
    if cache is not None and key in cache:
        return cache[key]
    shapes = _densified(aoi).to_crs(crs)
    if cache is not None:
        cache[key] = shapes
    return shapes


def _areas_under(ksrc: Any, csrc: Any, geom: Any, footprint: Any, block_rows: int) -> dict:
    """Areas of one reprojected AOI geometry over one scene (both rasters open)."""
    crs = ksrc.crs
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
        kelp_ha += class_areas_ha(kelp, crs, transform).get(1, 0.0)
        for value, area in class_areas_ha(cov, crs, transform).items():
            cov_areas[value] = cov_areas.get(value, 0.0) + area
    water, clear = water_ha(cov_areas)
    beyond = float(geometry_areas_ha([geom.difference(footprint)], crs)[0][0])
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


def aoi_areas(
    kelp_path: Path,
    coverage_path: Path,
    aoi: Any,
    *,
    block_rows: int = 1024,
    cache: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any] | None]:
    """Areas inside each AOI (a GeoSeries with a CRS, :func:`read_aoi`) of one mapped scene.

    Only the part of the scene under an AOI's bounds is read, ``block_rows`` rows at a time.
    The part of an AOI outside the scene counts as no data in ``aoi_valid_fraction`` (its area
    from the geometry).

    Args:
        kelp_path, coverage_path: The scene's ``_kelp.tif`` and ``_coverage.tif``.
        aoi: The AOIs, indexed by name.
        block_rows: Rows read at a time.
        cache: AOIs already reprojected, by CRS (shared over the scenes of one series).

    Returns:
        For each AOI name its areas, or None when it does not overlap the scene.
    """
    with open_raster(kelp_path) as ksrc, open_raster(coverage_path) as csrc:
        if (ksrc.height, ksrc.width) != (csrc.height, csrc.width):
            raise TileError(coverage_path, f"shape differs from {kelp_path.name}")
        if georef_of(ksrc).crs is None:
            raise TileError(kelp_path, "no CRS: an AOI cannot be placed on it")
        shapes = _aoi_in_crs(aoi, ksrc.crs, cache)
        corners = [(0, 0), (ksrc.width, 0), (ksrc.width, ksrc.height), (0, ksrc.height)]
        footprint = Polygon([ksrc.transform @ xy for xy in corners])
        hits = shapes.intersects(footprint).to_numpy()
        return {
            str(name): _areas_under(ksrc, csrc, geom, footprint, block_rows) if hit else None
            for (name, geom), hit in zip(shapes.items(), hits, strict=True)
        }


def _scenes_bounds(kelp_paths: list[Path], crs: Any) -> tuple[float, ...] | None:
    """The bounds, in ``crs``, of every readable raster of ``kelp_paths`` together."""
    from rasterio.warp import transform_bounds

    boxes = []
    for path in kelp_paths:
        try:
            with open_raster(path) as src:
                if src.crs is not None:
                    boxes.append(transform_bounds(src.crs, crs, *src.bounds, densify_pts=21))
        except (RasterioError, OSError, ValueError):
            continue
    if not boxes:
        return None
    arr = np.array(boxes)
    return (*arr[:, :2].min(axis=0), *arr[:, 2:].max(axis=0))


def _missed_aoi_error(aoi: Any, kelp_paths: list[Path]) -> ValueError:
    """Why an AOI overlaps no scene, with both extents in the AOI's CRS: often a wrong CRS."""
    where = f"bounds {_fmt_bounds(aoi.total_bounds)}, {_crs_name(aoi.crs)}"
    scenes = _scenes_bounds(kelp_paths, aoi.crs)
    cover = f" (they cover {_fmt_bounds(scenes)})" if scenes is not None else ""
    return ValueError(
        f"no acquisition overlaps the AOI: the AOI ({where}) overlaps none of "
        f"{len(kelp_paths)} scenes{cover}: is its CRS right?"
    )


# --- scenes -------------------------------------------------------------------------------


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


def scene_footprint(meta: dict[str, Any], folder: Path) -> str:
    """A scene's footprint: ``scene.json``'s ``footprint``, else the one its id names, else
    (older ``scene.json``) its kelp raster's grid, read from the header only."""
    given = meta.get("footprint")
    if isinstance(given, str) and given.strip():
        return given.strip()
    scene_id = str(meta["scene_id"])
    named = named_footprint(scene_id)
    if named:
        return named
    kelp = folder / f"{scene_id}_kelp.tif"
    try:
        return raster_footprint(kelp)
    except (RasterioError, OSError) as err:
        why = "no footprint in scene.json and its id names none; its kelp raster"
        raise TileError(kelp, f"{why} is not readable: {first_line(err)}") from err


def _empty_if_unobserved(table: pd.DataFrame, column: str = "kelp_ha") -> pd.DataFrame:
    """``column`` empty (NaN) where no clear water was seen: unknown, not 0."""
    blind = pd.to_numeric(table["water_clear_ha"], errors="coerce") <= 0
    table[column] = table[column].where(~blind)
    return table


def _scene_table(rows: list[dict], aoi: Any, min_observed: float) -> pd.DataFrame:
    """The rows as a typed table, sorted by AOI (file order), footprint, date."""
    columns = list(SCENE_COLUMNS) + (list(AOI_COLUMNS) if aoi is not None else [])
    if aoi is not None:
        columns.insert(0, "aoi")
    table = pd.DataFrame(rows, columns=columns)
    table["date"] = pd.to_datetime(table["date"], errors="coerce").dt.date
    for col in ("kelp_ha", "water_ha", "water_clear_ha", "observed_fraction"):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    table["pixel_area_assumed"] = table["pixel_area_assumed"].fillna(False).astype(bool)
    table = _empty_if_unobserved(table)
    good = table["observed_fraction"].fillna(0.0) >= min_observed
    if aoi is not None:
        good &= table["aoi_valid_fraction"].fillna(0.0) >= min_observed
    table["well_observed"] = good
    keys = ["footprint", "date", "scene_id"]
    if aoi is not None:
        position = {str(name): i for i, name in enumerate(aoi.index)}
        table["_aoi"] = table["aoi"].map(position)
        keys.insert(0, "_aoi")
    table = table.sort_values(keys, na_position="last", kind="stable")
    return table.drop(columns="_aoi", errors="ignore").reset_index(drop=True)


def _scene_rows(
    path: Path, aoi: Any, cache: dict[str, Any]
) -> tuple[list[dict[str, Any]], Path | None]:
    """The rows of one ``scene.json`` (one per AOI it reaches) and its kelp raster (AOI mode)."""
    meta = _read_scene_json(path)
    row = {k: meta.get(k) for k in SCENE_COLUMNS if k != "well_observed"}
    row["footprint"] = scene_footprint(meta, path.parent)
    if aoi is None:
        return [row], None
    kelp, cov = _scene_files(path.parent, str(meta["scene_id"]))
    try:
        per_aoi = aoi_areas(kelp, cov, aoi, cache=cache)
    except (RasterioError, OSError) as err:
        raise TileError(kelp, f"not readable: {first_line(err)}") from err
    rows = [{**row, "aoi": name, **areas} for name, areas in per_aoi.items() if areas is not None]
    return rows, kelp


def scene_series(
    maps: Path, aoi: Any = None, *, min_observed: float = 0.8
) -> tuple[pd.DataFrame, BatchReport]:
    """One row per acquisition (and AOI) of a ``kelpseg map`` folder (see the module notes).

    Without an AOI only the ``scene.json`` files are read (older ones without a ``footprint``
    and without a WRS-2 / MGRS id: also their kelp raster's header).

    Args:
        maps: The ``MAPS`` folder (``MAPS/*/scene.json``).
        aoi: Optional AOIs, a GeoSeries with a CRS indexed by name (:func:`read_aoi`).
        min_observed: Observed fraction (and, with an AOI, valid fraction) of a well-observed date.

    Raises:
        FileNotFoundError: No folder or no ``scene.json``.
        ValueError: The AOI overlaps none of the readable scenes (with both extents).
    """
    maps = Path(maps)
    if not maps.is_dir():
        raise FileNotFoundError(f"{maps}: not a folder")
    metas = sorted(maps.glob("*/scene.json"))
    if not metas:
        raise FileNotFoundError(f"{maps}: no */scene.json (not a `kelpseg map` output folder?)")
    report = BatchReport("timeseries")
    rows: list[dict[str, Any]] = []
    read: list[Path] = []
    outside: list[str] = []
    cache: dict[str, Any] = {}
    for path in tqdm(metas, desc="scenes", unit="scene", disable=len(metas) < 20):
        try:
            found, kelp = _scene_rows(path, aoi, cache)
        except TileError as err:
            report.add(err)
            continue
        report.ok += 1
        rows += found
        read += [kelp] if kelp is not None else []
        if kelp is not None and not found:
            outside.append(path.parent.name)
    if aoi is not None and read:
        if not rows:
            raise _missed_aoi_error(aoi, read)
        if outside:
            _note(f"{len(outside)} scene(s) reach no AOI, left out (e.g. {outside[0]})")
        reached = {r["aoi"] for r in rows}
        missed = [str(n) for n in aoi.index if str(n) not in reached]
        if missed:
            more = f" and {len(missed) - 5} more" if len(missed) > 5 else ""
            _note(f"AOI(s) {', '.join(missed[:5])}{more} overlap no scene: no row")
    return _scene_table(rows, aoi, min_observed), report


def quarterly(table: pd.DataFrame) -> pd.DataFrame:
    """Kelpwatch-style quarters of a scene series, per footprint (and AOI).

    ``kelp_ha_max``: the largest area of the quarter's dates (empty when none saw clear water);
    ``kelp_ha_mean_well_observed``: the mean over well-observed dates only (empty when none);
    ``dates`` and ``dates_well_observed``: how many dates of each. Quarters are calendar
    quarters (1: January-March); a quarter without a date has no row.
    """
    keys = [k for k in ("aoi", "footprint") if k in table.columns]
    dated = table[table["date"].notna()].copy()
    when = pd.to_datetime(dated["date"])
    dated["year"], dated["quarter"] = when.dt.year, when.dt.quarter
    good = dated["well_observed"].astype(bool)
    dated["_kelp_good"] = dated["kelp_ha"].where(good)
    dated["_date_good"] = dated["date"].where(good)
    groups = dated.groupby([*keys, "year", "quarter"], sort=False, dropna=False)
    out = groups.agg(
        kelp_ha_max=("kelp_ha", "max"),
        kelp_ha_mean_well_observed=("_kelp_good", "mean"),
        dates=("date", "nunique"),
        dates_well_observed=("_date_good", "nunique"),
    ).reset_index()
    first = {name: i for i, name in enumerate(pd.unique(dated["aoi"]))} if "aoi" in keys else {}
    out = out.sort_values(
        [*keys, "year", "quarter"], key=lambda s: s.map(first) if s.name == "aoi" else s
    )
    return out[[*keys, *QUARTER_COLUMNS]].reset_index(drop=True)


def footprint_warning(table: pd.DataFrame) -> str | None:
    """One line when the rows come from several footprints (None otherwise)."""
    if "footprint" not in table.columns or table["footprint"].nunique() < 2:
        return None
    counts = table.groupby("footprint", sort=True)["scene_id"].nunique()
    named = [f"{fp} ({n} date{'s' if n != 1 else ''})" for fp, n in counts.head(10).items()]
    listed = ", ".join(named) + (f", ... and {len(counts) - 10} more" if len(counts) > 10 else "")
    if "aoi" in table.columns:
        return (
            f"the AOI rows come from {len(counts)} footprints: {listed}; the AOI is the same "
            "place in each, but each covers and observes it differently (column footprint)"
        )
    return (
        f"{len(counts)} footprints mixed: {listed}; each is its own series, never merged "
        "(column footprint; --aoi compares one place across them)"
    )


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """A copy with areas (``*_ha``, ``*_ha_*``) to 0.01 ha and fractions to 4 decimals."""
    out = table.copy()
    for col in out.columns:
        name = str(col)
        if name.endswith("_ha") or "_ha_" in name:
            out[col] = pd.to_numeric(out[col], errors="coerce").round(AREA_DECIMALS)
        elif name.endswith("_fraction"):
            out[col] = pd.to_numeric(out[col], errors="coerce").round(FRACTION_DECIMALS)
    return out


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """The table as a CSV (rounded, :func:`rounded`), written atomically."""
    return atomic_write_text(path, rounded(table).to_csv(index=False))


# --- competition tiles --------------------------------------------------------------------


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
    table = _empty_if_unobserved(table)
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


# --- the plot -----------------------------------------------------------------------------

MAX_LABELLED = 20
"""Series named in the legend; more are drawn but not named (the CSV has them)."""


def _series(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(label, rows)`` of each line: per AOI group (tiles), per AOI and footprint (scenes)."""
    if "order" in table.columns:
        return [(f"AOI {k}", part) for k, part in table.groupby("aoi", sort=True)]
    keys = [k for k in ("aoi", "footprint") if k in table.columns]
    out = []
    for key, part in table.groupby(keys, sort=False):
        values = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        label = f"footprint {values['footprint']}"
        out.append((f"AOI {values['aoi']}, {label}" if "aoi" in values else label, part))
    return out


def series_figure(table: pd.DataFrame, *, min_observed: float = 0.8) -> Any:
    """Kelp area over time (or tile order), one line per series with its legend outside the
    axes: well-observed points filled and joined, poorly observed ones hollow on a grey band,
    the observed fraction (x) on the right axis. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tiles = "order" in table.columns
    series = _series(table)
    labelled = len(series) <= MAX_LABELLED
    ncol = min(4, len(series) + 3)
    rows = math.ceil(((len(series) if labelled else 0) + 3) / ncol)
    fig, ax = plt.subplots(figsize=(10, 4.5 + 0.25 * rows), layout="constrained")
    ax2 = ax.twinx()
    for label, part in series:
        x = part["order"].to_numpy() if tiles else pd.to_datetime(part["date"]).to_numpy()
        good = part["well_observed"].fillna(True).astype(bool).to_numpy()
        kelp = part["kelp_ha"].to_numpy(dtype=float)
        # the line joins well-observed points only: a cloudy date is a gap, not a dip
        (line,) = ax.plot(x[good], kelp[good], "o-", lw=1, label=label if labelled else "_")
        ax.plot(x[~good], kelp[~good], "o", mfc="none", color=line.get_color(), label="_")
        for xi in x[~good]:
            ax2.axvline(xi, color="0.88", lw=8, zorder=0)
        ax2.plot(x, part["observed_fraction"], "x:", color=line.get_color(), alpha=0.6, lw=1, ms=4)
    ax2.axhline(min_observed, color="0.6", lw=0.8, ls="--")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("observed fraction of the water")
    ax.set_ylabel("kelp area (ha)")
    ax.set_xlabel("tile order within its AOI group (tiles carry no date)" if tiles else "date")
    ax.set_zorder(ax2.get_zorder() + 1)  # the kelp points over the grey bands
    ax.patch.set_visible(False)
    title = "Kelp area; hollow on grey: poorly observed (clouds), a gap, not kelp loss"
    ax.set_title(title if labelled else f"{title}\n{len(series)} series, not named: see the CSV")
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Line2D([], [], marker="o", mfc="none", ls="none", color="0.3", label="poorly observed"),
        Line2D([], [], marker="x", ls=":", color="0.4", label="observed fraction (right axis)"),
        Line2D([], [], ls="--", color="0.6", label=f"min. observed ({min_observed})"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize="small")
    if not tiles:
        ax.tick_params(axis="x", labelrotation=30)
    return fig


def plot_series(table: pd.DataFrame, path: Path, *, min_observed: float = 0.8) -> Path:
    """:func:`series_figure` written to a PNG (atomically)."""
    from kelpseg.eda.plots import save_figure

    return save_figure(series_figure(table, min_observed=min_observed), path, dpi=120)
