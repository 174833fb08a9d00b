"""`kelpseg timeseries` at archive scale: thousands of scene.json, and AOIs read from COGs.

Usage: ``python bench/timeseries_scale.py [--scenes 2000] [--footprints 4] [--grid-scenes 100]
[--aoi-scenes 24] [--size 1024] [--features 5] [--repeat 3] [--out DIR]``

Writes a synthetic ``MAPS`` folder and times :func:`kelpseg.geo.timeseries.scene_series` (best
of ``repeat``), counting every ``rasterio.open``:

- ``scenes`` ``scene.json`` files (no raster at all) of Landsat product ids over ``footprints``
  WRS-2 path/rows, 1984-2024, half with a ``footprint`` key (new) and half without (old: the id
  names it); then :func:`quarterly` over them;
- ``grid-scenes`` old ``scene.json`` whose id names no footprint, each beside a small kelp COG
  whose header gives the grid (the only case without an AOI that opens a raster);
- ``aoi-scenes`` scenes with ``size`` x ``size`` px kelp and coverage COGs on two UTM grids (two
  footprints) and an AOI file of ``features`` rectangles in EPSG:4326: one series per feature.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from kelpseg.geo.timeseries import quarterly, read_aoi, scene_series
from kelpseg.io.cog import write_cog
from kelpseg.io.raster import Georef

UTM = Affine(30, 0, 400_020, 0, -30, 3_800_010)


@contextmanager
def counting_opens():
    """Count ``rasterio.open`` calls (every reader of kelpseg goes through it)."""
    calls = [0]
    original = rasterio.open

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    rasterio.open = counted
    try:
        yield calls
    finally:
        rasterio.open = original


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any, int]:
    """Best wall time of ``repeat`` calls (the first one's also printed: files just written,
    so in the page cache), the last result and the rasters one call opened."""
    times = []
    for _ in range(repeat):
        with counting_opens() as calls:
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
    print(f"  (wall times of the {repeat} calls: {', '.join(f'{t:.3f}' for t in times)} s)")
    return min(times), out, calls[0]


def _meta(scene_id: str, date: str, rng: np.random.Generator) -> dict[str, Any]:
    water = float(rng.uniform(5_000, 20_000))
    clear = water * float(rng.choice([1.0, rng.uniform(0, 1), 0.0], p=[0.6, 0.35, 0.05]))
    return {
        "scene_id": scene_id,
        "sensor": "LANDSAT_8",
        "date": date,
        "source": f"/archive/{scene_id}",
        "crs": "EPSG:32611",
        "pixel_area_assumed": False,
        "kelp_ha": float(rng.uniform(0, 800)) * (clear > 0),
        "water_ha": water,
        "water_clear_ha": clear,
        "observed_fraction": clear / water,
        "threshold": 0.45,
        "models": ["fold0.ckpt"],
        "fingerprint": "0" * 16,
    }


def write_archive(root: Path, scenes: int, footprints: int, seed: int = 0) -> None:
    """``scenes`` scene.json of Landsat ids over ``footprints`` path/rows, no raster: each
    path/row on distinct dates of an 8-day revisit (two satellites) from 1984 on, 40 years."""
    rng = np.random.default_rng(seed)
    slots = 40 * 365 // 8
    per = -(-scenes // footprints)
    if per > slots:
        raise SystemExit(f"{scenes} scenes need at least {-(-scenes // slots)} footprints")
    picks = [np.sort(rng.choice(slots, per, replace=False)) for _ in range(footprints)]
    for i in range(scenes):
        k, j = i % footprints, i // footprints
        path_row = f"{40 + k:03d}036"
        date = str(np.datetime64("1984-03-01") + int(8 * picks[k][j] + k))
        scene_id = f"LC08_L2SP_{path_row}_{date.replace('-', '')}_20220101_02_T1"
        meta = _meta(scene_id, date, rng)
        if i % 2:
            meta["footprint"] = path_row  # what a new scene.json carries
        (root / scene_id).mkdir(parents=True)
        (root / scene_id / "scene.json").write_text(json.dumps(meta))


def _scene_rasters(folder: Path, scene_id: str, size: int, shift: int, rng) -> None:
    kelp = (rng.random((size, size)) < 0.05).astype(np.uint8)
    cov = np.ones((size, size), np.uint8)
    cov[:, size * 3 // 4 :] = 0  # land
    cov[: int(rng.integers(0, size // 2)), : size * 3 // 4] = 2  # a cloud over the water
    kelp[cov != 1] = 0
    geo = Georef("EPSG:32611", UTM * Affine.translation(shift, 0))
    write_cog(folder / f"{scene_id}_kelp.tif", kelp, georef=geo, nodata=255)
    write_cog(folder / f"{scene_id}_coverage.tif", cov, georef=geo, nodata=255)


def write_raster_scenes(root: Path, scenes: int, size: int, *, named: bool, seed: int = 1) -> None:
    """Scenes with kelp and coverage COGs on two grids; Landsat ids if ``named``."""
    rng = np.random.default_rng(seed)
    for i in range(scenes):
        date = str(np.datetime64("2020-01-01") + 16 * i)
        scene_id = (
            f"LC08_L2SP_{42 + i % 2:03d}036_{date.replace('-', '')}_20220101_02_T1"
            if named
            else f"scene_{i:05d}"
        )
        folder = root / scene_id
        _scene_rasters(folder, scene_id, size, (i % 2) * size // 8, rng)
        meta = _meta(scene_id, date, rng)
        (folder / "scene.json").write_text(json.dumps(meta))


def write_aoi(path: Path, size: int, features: int) -> Path:
    """``features`` rectangles over the water of both grids, written in EPSG:4326."""
    import geopandas as gpd
    from shapely.geometry import box

    step = size * 3 // 4 // features
    shapes = []
    for k in range(features):
        (x0, y0), (x1, y1) = UTM * (k * step + size // 8, size // 8), UTM * ((k + 1) * step, size)
        shapes.append(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)).segmentize(300))
    names = [f"bed{k}" for k in range(features)]
    gpd.GeoDataFrame({"name": names}, geometry=shapes, crs=32611).to_crs(4326).to_file(path)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=2000)
    ap.add_argument("--footprints", type=int, default=4)
    ap.add_argument("--grid-scenes", type=int, default=100)
    ap.add_argument("--aoi-scenes", type=int, default=24)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--features", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="Keep the folders here.")
    args = ap.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="ts_scale_"))
    try:
        archive, grids, aoi_maps = work / "archive", work / "grid", work / "aoi"
        t0 = time.perf_counter()
        write_archive(archive, args.scenes, args.footprints)
        write_raster_scenes(grids, args.grid_scenes, 256, named=False)
        write_raster_scenes(aoi_maps, args.aoi_scenes, args.size, named=True)
        aoi = read_aoi(write_aoi(work / "beds.geojson", args.size, args.features))
        print(f"wrote the folders in {time.perf_counter() - t0:.1f} s under {work}")

        secs, (table, _), opens = best_of(args.repeat, lambda: scene_series(archive))
        print(
            f"scene_series, {args.scenes} scene.json, {table['footprint'].nunique()} footprints, "
            f"no AOI: {secs:.2f} s ({args.scenes / secs:,.0f} scenes/s), rasters opened: {opens}"
        )
        secs, quarters, _ = best_of(args.repeat, lambda: quarterly(table))
        print(f"quarterly over {len(table)} rows -> {len(quarters)} quarters: {secs:.3f} s")

        secs, (table, _), opens = best_of(args.repeat, lambda: scene_series(grids))
        print(
            f"scene_series, {args.grid_scenes} old scene.json without a named footprint: "
            f"{secs:.2f} s ({1e3 * secs / args.grid_scenes:.1f} ms/scene), rasters opened: "
            f"{opens} (one header each)"
        )

        secs, (table, _), opens = best_of(args.repeat, lambda: scene_series(aoi_maps, aoi))
        px = args.aoi_scenes * args.size**2
        print(
            f"scene_series, {args.aoi_scenes} scenes of {args.size}^2 px COGs, 2 footprints, "
            f"AOI of {args.features} features (EPSG:4326): {secs:.2f} s "
            f"({1e3 * secs / args.aoi_scenes:.0f} ms/scene, {px / secs / 1e6:.1f} Mpx/s of "
            f"scene), {len(table)} rows, rasters opened: {opens}"
        )
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
