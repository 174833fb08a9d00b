"""Areas, polygons and an AOI time series on scene-sized masks (issue 9, areas).

Usage: ``python bench/area.py [--size 7800] [--beds 3000] [--acquisitions 3] [--out DIR]``.

A synthetic UTM kelp mask of ``size`` x ``size`` px (30 m) holds ``beds`` random elliptic beds,
a nodata edge and a coverage raster with a cloud. It measures, each with wall time and the
process's peak RSS:

- ``class_areas_ha`` over the whole mask (UTM, and the same grid in EPSG:4326 at 1 arc-second),
- ``kelp_polygons`` + ``write_polygons`` (GeoPackage + GeoJSON), and how far the polygons'
  summed area is from the pixel count x pixel area (projected and geographic),
- ``scene_series`` over ``acquisitions`` copies of the scene with an AOI in EPSG:4326 covering
  a quarter of it, against the count of kelp pixels inside.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import numpy as np
from affine import Affine
from pyproj import Transformer
from shapely.geometry import Polygon

from kelpseg.geo.area import class_areas_ha
from kelpseg.geo.timeseries import read_aoi, scene_series
from kelpseg.geo.vector import kelp_polygons, write_polygons
from kelpseg.io.raster import Georef, write_raster

UTM = Affine(30, 0, 300_000, 0, -30, 4_000_000)
GEO = Affine(1 / 3600, 0, -120.0, 0, -1 / 3600, 36.0)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(label: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"{label:48s} {time.perf_counter() - t0:8.2f} s   peak RSS {_peak_mb():7.0f} MB")
    return out


def _mask(size: int, beds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    for cy, cx, ry, rx in zip(
        rng.integers(0, size, beds),
        rng.integers(0, size, beds),
        rng.integers(2, 25, beds),
        rng.integers(2, 25, beds),
        strict=True,
    ):
        y0, y1, x0, x1 = (
            max(cy - ry, 0),
            min(cy + ry + 1, size),
            max(cx - rx, 0),
            min(cx + rx + 1, size),
        )
        yy, xx = np.ogrid[y0:y1, x0:x1]
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        inside &= rng.random(inside.shape) > 0.1  # ragged beds with holes
        mask[y0:y1, x0:x1][inside] = 1
    cov = np.ones((size, size), np.uint8)
    cov[: size // 5, : size // 3] = 2  # a cloud over the water
    mask[cov == 2] = 0
    mask[:, : size // 50] = 255  # a nodata edge
    cov[:, : size // 50] = 255
    return mask, cov


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=7800)
    p.add_argument("--beds", type=int, default=3000)
    p.add_argument("--acquisitions", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("/tmp/kelpseg-bench/area"))
    args = p.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    mask, cov = _timed(
        f"make a {args.size}^2 mask, {args.beds} beds", _mask, args.size, args.beds, 0
    )
    kelp_px = int((mask == 1).sum())
    print(f"kelp pixels: {kelp_px}")
    utm = _timed("class_areas_ha, UTM", class_areas_ha, mask, "EPSG:32611", UTM)
    geo = _timed("class_areas_ha, EPSG:4326 (geodesic per row)", class_areas_ha, mask, 4326, GEO)
    print(f"kelp area: UTM {utm[1]:.2f} ha (= {kelp_px} x 0.09), geographic {geo[1]:.2f} ha")
    for name, transform, crs, pixel_sum in (
        ("UTM", UTM, "EPSG:32611", utm[1]),
        ("EPSG:4326", GEO, "EPSG:4326", geo[1]),
    ):
        gdf = _timed(f"kelp_polygons, {name}", kelp_polygons, mask, transform, crs)
        rel = gdf["area_ha"].sum() / pixel_sum - 1
        print(f"  {len(gdf)} polygons, summed area vs pixel area: {rel:+.2e} (relative)")
    files = _timed(
        "write_polygons GPKG + GeoJSON (UTM)",
        write_polygons,
        kelp_polygons(mask, UTM, "EPSG:32611"),
        args.out / "kelp.gpkg",
        geojson=True,
    )
    print("  " + ", ".join(f"{f.name} {f.stat().st_size / 1e6:.1f} MB" for f in files))

    maps = args.out / "maps"
    for i in range(args.acquisitions):
        sid = f"S{i}"
        geo_ref = Georef("EPSG:32611", UTM)
        write_raster(maps / sid / f"{sid}_kelp.tif", mask, georef=geo_ref, nodata=255)
        write_raster(maps / sid / f"{sid}_coverage.tif", cov, georef=geo_ref, nodata=255)
        meta = {"scene_id": sid, "sensor": "LANDSAT_8", "date": f"2021-0{i % 9 + 1}-01"}
        (maps / sid / "scene.json").write_text(json.dumps(meta))
    half = args.size // 2
    to_ll = Transformer.from_crs(32611, 4326, always_xy=True)
    ring = [UTM @ (c, r) for c, r in ((0, 0), (half, 0), (half, half), (0, half))]
    aoi_file = args.out / "aoi.geojson"
    import geopandas as gpd

    # vertices every 30 m, so that the lon/lat polygon follows the UTM rectangle's edges
    dense = Polygon(ring).segmentize(30.0).exterior.coords
    poly = Polygon([to_ll.transform(x, y) for x, y in dense])
    gpd.GeoDataFrame(geometry=[poly], crs=4326).to_file(aoi_file, driver="GeoJSON")
    table, _ = _timed(
        f"scene_series, {args.acquisitions} scenes, AOI 1/4 (EPSG:4326)",
        scene_series,
        maps,
        read_aoi(aoi_file),
    )
    inside = int((mask[:half, :half] == 1).sum()) * 0.09
    print(
        f"  AOI kelp {table['kelp_ha'].iloc[0]:.2f} ha vs pixels inside {inside:.2f} ha; "
        f"observed fraction {table['observed_fraction'].iloc[0]:.3f}, "
        f"well observed {list(table['well_observed'])}"
    )


if __name__ == "__main__":
    main()
