"""Throughput of sliced inference and of the whole `kelpseg map` output path, in megapixels/s.

Usage: python bench/map_speed.py [--size 1400] [--configs tiny demo] [--device cpu|cuda]

A ``size`` x ``size`` mosaic of synthetic 350 px tiles (bench/map_memory.py) is mapped with an
UNTRAINED network of each config (speed does not depend on the weights), 350 px windows, a
quarter-window overlap, fp32 on CPU (bf16 on a GPU). "sliced" times the windows through the
network and the blending only; "map" the whole `kelpseg.infer.mapping.map_raster` (COGs,
coverage, areas, polygons, quick-look). Pixels counted are the raster's, not the windows'.

``--footprint-deg 12`` makes the raster look like a Landsat scene: only a square footprint
rotated by that angle, its corners touching the raster's edges, holds data (29 % fill collar at
12 degrees); "sliced" is then timed twice, with and without skipping the windows that hold no
valid pixel.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import rasterio
    import torch
    from map_memory import mosaic_raster, synthetic_tiles, untrained_checkpoint

    from kelpseg.infer.checkpoint import load_model
    from kelpseg.infer.ensemble import Members, default_precision
    from kelpseg.infer.mapping import MapSettings, SceneInput, map_raster
    from kelpseg.infer.sliced import RasterSource, predict_sliced

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1400)
    ap.add_argument("--configs", nargs="+", default=["tiny", "demo"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--footprint-deg", type=float, default=0.0)
    args = ap.parse_args()
    dev = torch.device(args.device)
    prec = default_precision(dev)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[prec]
    mpx = args.size**2 / 1e6
    print(f"{args.size}x{args.size} px ({mpx:.2f} Mpx), window 350, overlap 87, "
          f"batch {args.batch_size}, {args.device} {prec}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print("| config (untrained) | stage | seconds | Mpx/s |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="map_speed_") as tmp:
        root = Path(tmp)
        raster = mosaic_raster(root / "scene.tif", args.size, synthetic_tiles(root / "synth"))
        if args.footprint_deg:
            print(f"footprint rotated {args.footprint_deg} deg: fill collar "
                  f"{footprint(raster, args.footprint_deg):.1%} of the raster")  # fmt: skip
        skips = (True, False) if args.footprint_deg else (True,)
        for config in args.configs:
            model = load_model(untrained_checkpoint(root / f"{config}.ckpt", config), args.device)
            engine = Members([model], [1.0], precision=dtype)
            for skip in skips:
                with rasterio.open(raster) as src:
                    t0 = time.perf_counter()
                    for _ in predict_sliced(
                        engine,
                        RasterSource(src),
                        window=350,
                        batch_size=args.batch_size,
                        skip_empty=skip,
                    ):
                        pass
                    secs = time.perf_counter() - t0
                stage = "sliced" if skip else "sliced, every window predicted"
                print(f"| {config} | {stage} | {secs:.1f} | {mpx / secs:.3f} |")
            engine.batch_size = args.batch_size
            scene = SceneInput(raster, "scene", None, None, False)
            (root / config).mkdir()
            t0 = time.perf_counter()
            map_raster(
                engine,
                raster,
                root / config,
                scene,
                MapSettings(window=350),
                threshold=0.5,
                cut=0.5,
            )
            secs = time.perf_counter() - t0
            print(f"| {config} | map (all outputs) | {secs:.1f} | {mpx / secs:.3f} |")
            sys.stdout.flush()


def footprint(raster: Path, degrees: float) -> float:
    """Set the raster to nodata outside a square rotated by ``degrees`` whose corners touch
    its edges (a Landsat scene's fill collar); returns the share of pixels set."""
    import numpy as np
    import rasterio

    with rasterio.open(raster, "r+") as dst:
        h, w = dst.height, dst.width
        th = np.radians(degrees)
        half = min(h, w) / 2 / (np.cos(th) + np.sin(th))  # the footprint's half side
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        yy, xx = yy - (h - 1) / 2, xx - (w - 1) / 2
        u = xx * np.cos(th) + yy * np.sin(th)
        v = -xx * np.sin(th) + yy * np.cos(th)
        outside = (np.abs(u) > half) | (np.abs(v) > half)
        data = dst.read()
        data[:, outside] = -32768
        dst.write(data)
    return float(outside.mean())


if __name__ == "__main__":
    main()
