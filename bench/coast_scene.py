"""A scene-sized coastal raster, and `kelpseg map` timed on it: skip shares and seconds.

Usage:
    python bench/coast_scene.py --size 7800 [--footprint-fill 0.22] [--config demo]
        [--checkpoint CKPT] [--run "torch fp32" "onnx fp32" ...] [--max-offshore-m 5000]
        [--keep RASTER]

The raster (7 int16 bands, EPSG:32611, 30 m) is a mosaic of synthetic 350 px tiles
(bench/map_memory.py; those with < 1 % missing pixels, as a Landsat 8/9 scene) whose DEM band is replaced by one coast across the whole raster, so the
land / coastal band / open ocean mix is a scene's, not a tile's: land west of a wavy coastline
at ~35 % of the width (DEM rising inland), DEM 0 for 12 px (360 m) offshore and missing beyond
(open sea, as Copernicus / SRTM give it), three islands 20-35 % of the width offshore and a
2 px rock farther out; everything outside a square footprint rotated so that ``--footprint-fill``
of the raster is fill (a WRS-2 scene: ~22 %) is -32768 in all bands. Reflectances come from the
tiles, so land pixels do not look like land: the model here is UNTRAINED (weights change no
speed) unless ``--checkpoint``; this bench times, it does not score.

Each ``--run`` entry ("BACKEND PRECISION [OVERLAP]", e.g. "onnx fp32 44") maps the raster with
the `kelpseg map` command in a fresh process (model loading, ONNX export or its cache,
reading, skipping, every output) and reports wall seconds, Mpx/s and the windows of scene.json.
A ``noskip`` word in an entry sets ``--max-offshore-m 0`` (land windows are still skipped).
The first ONNX entry includes the export into a fresh cache (later ones reuse it). Also
counts the windows that hold valid water within 1 km of land (where kelp could grow) that the
skip rule leaves out: it must be 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

COAST_FRACTION = 0.35
DEM_ZERO_PX = 12
ISLANDS = ((0.40, 0.09, 0.008), (0.70, 0.20, 0.012), (0.25, 0.35, 0.005))
"""(row, distance offshore, radius) as fractions of the raster's side."""
ROCK = (0.55, 0.6)
"""A 2 px rock: row and column as fractions of the side."""


def coast_x(rows: np.ndarray, size: int) -> np.ndarray:
    """Column of the coastline at each row (land to the west)."""
    y = rows / size
    wave = (
        0.04 * np.sin(2 * np.pi * y + 0.3)
        + 0.015 * np.sin(2 * np.pi * 3 * y + 1.1)
        + 0.005 * np.sin(2 * np.pi * 9 * y + 2.0)
    )
    return (COAST_FRACTION + wave) * size


def footprint_angle(fill: float) -> float:
    """Rotation (degrees) of the square footprint whose corners touch the raster's edges
    that leaves ``fill`` of the raster outside: 1 - 1 / (cos t + sin t)^2 = fill."""
    if fill <= 0:
        return 0.0
    s = 1.0 / math.sqrt(1.0 - fill)  # cos t + sin t = sqrt(2) sin(t + 45)
    return math.degrees(math.asin(s / math.sqrt(2))) - 45.0


def footprint_outside(rows: np.ndarray, size: int, degrees: float) -> np.ndarray:
    """``(len(rows), size)`` bool: pixels of these rows outside the square footprint rotated
    by ``degrees`` whose corners touch the raster's edges."""
    th = math.radians(degrees)
    half = size / 2 / (math.cos(th) + math.sin(th))
    yy = rows[:, None] - (size - 1) / 2
    xx = np.arange(size)[None, :] - (size - 1) / 2
    u = xx * math.cos(th) + yy * math.sin(th)
    v = -xx * math.sin(th) + yy * math.cos(th)
    return (np.abs(u) > half) | (np.abs(v) > half)


def coastal_dem(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """int16 DEM of the given rows (all columns) and the land mask."""
    from kelpseg.io.tiles import NODATA

    cols = np.arange(size, dtype=np.float32)[None, :]
    xc = coast_x(rows.astype(np.float32), size)[:, None]
    land = cols < xc
    for fy, fx, fr in ISLANDS:
        cy, cx, r = fy * size, coast_x(np.array([fy * size]), size)[0] + fx * size, fr * size
        land |= (rows[:, None] - cy) ** 2 + (cols - cx) ** 2 <= r * r
    ry, rx = int(ROCK[0] * size), int(ROCK[1] * size)
    land[(rows >= ry) & (rows < ry + 2), rx : rx + 2] = True
    dem = np.full(land.shape, NODATA, np.int16)
    dem[(cols >= xc) & (cols < xc + DEM_ZERO_PX)] = 0
    from scipy import ndimage

    near = ndimage.binary_dilation(land, iterations=DEM_ZERO_PX) & ~land
    dem[near] = 0
    dem[land] = np.clip(1 + (xc - cols) * 0.3, 1, 3000).astype(np.int16)[land]
    return dem, land


def coastal_raster(path: Path, size: int, tiles: list[np.ndarray], fill: float = 0.22) -> Path:
    """Write the coastal raster (see the module notes), 350 rows at a time."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from kelpseg.io.tiles import NODATA

    t = tiles[0].shape[1]
    n = -(-size // t)
    deg = footprint_angle(fill)
    profile = {
        "driver": "GTiff", "height": size, "width": size, "count": 7, "dtype": "int16",
        "crs": "EPSG:32611", "transform": Affine(30, 0, 300_000, 0, -30, 4_000_000),
        "tiled": True, "blockxsize": 256, "blockysize": 256, "nodata": NODATA,
        "compress": "deflate", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for i in range(n):
            row = np.concatenate([tiles[(i * n + j) % len(tiles)] for j in range(n)], axis=2)
            h = min(t, size - i * t)
            block = row[:, :h, :size].copy()
            rows = np.arange(i * t, i * t + h)
            block[6], _ = coastal_dem(rows, size)
            block[:, footprint_outside(rows, size, deg)] = NODATA
            dst.write(block, window=Window(0, i * t, size, h))
    return path


def reachable_windows(raster: Path, window: int, overlap: int, km: float = 1.0) -> set:
    """Windows holding a valid water pixel within ``km`` of land (where kelp could grow)."""
    import rasterio
    from scipy import ndimage

    from kelpseg.infer.sliced import window_offsets
    from kelpseg.io.tiles import NODATA

    with rasterio.open(raster) as src:
        dem = src.read(7)
        valid = src.read(1) != NODATA
    land = (dem > 0) & (dem != NODATA)
    near = ndimage.distance_transform_edt(~land) * 30.0 <= km * 1000
    kelp_zone = near & ~land & valid
    H, W = dem.shape
    rows = window_offsets(H, window, window - overlap)
    cols = window_offsets(W, window, window - overlap)
    return {(r, c) for r in rows for c in cols if kelp_zone[r : r + window, c : c + window].any()}


def main() -> None:
    from map_memory import synthetic_tiles, untrained_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=7800)
    ap.add_argument("--footprint-fill", type=float, default=0.22)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--run", nargs="*", default=["onnx fp32"])
    ap.add_argument("--max-offshore-m", type=float, default=5000.0)
    ap.add_argument("--keep", type=Path, default=None, help="Reuse / keep the raster here.")
    args = ap.parse_args()
    mpx = args.size**2 / 1e6
    with tempfile.TemporaryDirectory(prefix="coast_scene_") as tmp:
        root = Path(tmp)
        raster = args.keep or root / "coast.tif"
        if not raster.exists():
            t0 = time.perf_counter()
            tiles = [
                t for t in synthetic_tiles(root / "synth", n=48) if (t == -32768).mean() < 0.01
            ]
            coastal_raster(raster, args.size, tiles, args.footprint_fill)
            print(f"raster written in {time.perf_counter() - t0:.0f} s")
        ckpt = args.checkpoint or untrained_checkpoint(root / "model.ckpt", args.config)
        import rasterio

        with rasterio.open(raster) as src:
            fill = float((src.read(1, out_shape=(1000, 1000)) == -32768).mean())
        print(f"{args.size}x{args.size} px ({mpx:.1f} Mpx), fill ~{fill:.1%}; model "
              f"{args.checkpoint or 'untrained ' + args.config}")  # fmt: skip
        for edges in (True, False):
            secs, counts = rule_counts(raster, args.max_offshore_m, edges)
            print(f"skip rule ({'scene edges count as coast' if edges else 'land only'}): "
                  f"scene pass {secs:.1f} s; windows {counts.as_dict()}")  # fmt: skip
        print("| run | seconds | Mpx/s | windows predicted / total | skipped fill / land / "
              "offshore | kelp-zone windows skipped |\n|---|---|---|---|---|---|")  # fmt: skip
        zone: dict[int, set] = {}
        for entry in args.run:
            words = entry.split()
            backend, precision = words[0], words[1]
            overlap = next((int(w) for w in words[2:] if w.isdigit()), None)
            skip = "noskip" not in words
            out = root / f"maps_{len(zone)}_{'_'.join(words)}"
            cmd = [sys.executable, "-m", "kelpseg", "map", "-m", str(ckpt), str(raster),
                   "-o", str(out), "--backend", backend, "--precision", precision,
                   "--max-offshore-m", str(args.max_offshore_m if skip else 0)]  # fmt: skip
            if overlap is not None:
                cmd += ["--overlap", str(overlap)]
            env = {**os.environ, "KELPSEG_ONNX_CACHE": str(root / "onnx_cache")}
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            secs = time.perf_counter() - t0
            if res.returncode != 0:
                raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr[-2000:]}")
            meta = json.loads(next(out.glob("*/scene.json")).read_text())
            w = meta["windows"]
            ov = overlap if overlap is not None else 350 // 4
            if ov not in zone:
                zone[ov] = reachable_windows(raster, 350, ov)
                lost = zone_skipped(raster, zone[ov], args.max_offshore_m)
            print(
                f"| {entry} | {secs:.0f} | {mpx / secs:.3f} | {w['predicted']} / {w['total']} "
                f"| {w['skipped_fill']} / {w['skipped_land']} / {w['skipped_offshore']} "
                f"| {lost if skip else 0} of {len(zone[ov])} |",
                flush=True,
            )


def rule_counts(raster: Path, max_offshore_m: float, edges_are_coast: bool = True) -> tuple:
    """The skip rule's scene pass seconds and the windows' reasons (350 px, overlap 87)."""
    import rasterio

    from kelpseg.geo.reach import scene_reach
    from kelpseg.infer.sliced import RasterSource, WindowCounts, window_offsets
    from kelpseg.io.tiles import missing_pixels

    with rasterio.open(raster) as src:
        source = RasterSource(src)
        t0 = time.perf_counter()
        reach = scene_reach(
            source, max_offshore_m=max_offshore_m, crs=src.crs, transform=src.transform,
            edges_are_coast=edges_are_coast,
        )  # fmt: skip
        secs = time.perf_counter() - t0
        counts = WindowCounts()
        offs = [window_offsets(n, 350, 263) for n in (src.height, src.width)]
        for r in offs[0]:
            for c in offs[1]:
                x = source.read(r, c, 350, 350)
                counts.add("fill" if missing_pixels(x).all() else reach.why_skip(x, r, c))
    return secs, counts


def zone_skipped(raster: Path, zone: set, max_offshore_m: float) -> int:
    """Kelp-zone windows the skip rule would leave out (must be 0)."""
    import rasterio

    from kelpseg.geo.reach import scene_reach
    from kelpseg.infer.sliced import RasterSource

    with rasterio.open(raster) as src:
        source = RasterSource(src)
        reach = scene_reach(
            source, max_offshore_m=max_offshore_m, crs=src.crs, transform=src.transform
        )
        return sum(reach.why_skip(source.read(r, c, 350, 350), r, c) is not None for r, c in zone)


if __name__ == "__main__":
    main()
