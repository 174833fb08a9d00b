"""Peak memory of `kelpseg map` (sliced) at two raster sizes, against whole-array prediction.

Usage: python bench/map_memory.py [--sizes 2000 7800] [--whole-max 2000] [--config tiny]

Each raster is a mosaic of synthetic 350 px tiles (`kelpseg.synth.generate`) repeated over the
grid, 7 int16 bands, UTM CRS, written row band by row band. The model is an UNTRAINED network of
the chosen config (weights do not change memory or speed). Each measurement runs in its own
subprocess; its peak RSS is `ru_maxrss` of that child. Whole-array prediction
(`kelpseg predict` on the raster: read whole, predicted whole) runs only up to --whole-max px
(it needs ~0.5 GB per megapixel: a 7,800 px scene would not fit this machine).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

WRAP = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
    "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t)"
)


def synthetic_tiles(folder: Path, n: int = 16) -> list[np.ndarray]:
    """``n`` raw 350 px tiles from the synthetic generator."""
    from kelpseg.io.tiles import read_tile
    from kelpseg.synth import generate

    generate(folder, aois=max(3, n // 2), seed=0, overwrite=True, progress=False)
    paths = sorted((folder / "train_satellite").glob("*.tif"))[:n]
    return [read_tile(p) for p in paths]


def mosaic_raster(path: Path, size: int, tiles: list[np.ndarray]) -> Path:
    """A ``size`` x ``size`` 7-band int16 GeoTIFF (EPSG:32611, 30 m) tiled with ``tiles``."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    t = tiles[0].shape[1]
    n = -(-size // t)
    profile = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "count": 7,
        "dtype": "int16",
        "crs": "EPSG:32611",
        "transform": Affine(30, 0, 300_000, 0, -30, 4_000_000),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "nodata": -32768,
        "BIGTIFF": "IF_SAFER",
    }
    with rasterio.open(path, "w", **profile) as dst:
        for i in range(n):
            row = np.concatenate([tiles[(i * n + j) % len(tiles)] for j in range(n)], axis=2)
            h = min(t, size - i * t)
            dst.write(row[:, :h, :size], window=Window(0, i * t, size, h))
    return path


def untrained_checkpoint(path: Path, config: str = "tiny", tile_size: int = 350) -> Path:
    """An untrained model of ``config`` saved as `kelpseg train` would (seeded)."""
    from kelpseg.compat import ensure_torchvision

    ensure_torchvision()
    import lightning as L
    import torch

    from kelpseg.config import load_config
    from kelpseg.train.module import KelpSegModule

    torch.manual_seed(0)
    cfg = load_config(config, [f"data.tile_size={tile_size}"]).model_dump(mode="json")
    m = KelpSegModule(cfg)
    hp = {"config": cfg}
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": hp,
                "pytorch-lightning_version": L.__version__}, path)  # fmt: skip
    return path


def measure(cmd: list[str]) -> tuple[float, float]:
    """Peak RSS (GB) and seconds of ``cmd`` in a fresh subprocess."""
    out = subprocess.run([sys.executable, "-c", WRAP, *cmd], capture_output=True, text=True)
    rc, kb, secs = out.stdout.split()
    if rc != "0":
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}")
    return int(kb) / 1024**2, float(secs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 7800])
    ap.add_argument("--whole-max", type=int, default=2000)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    kelpseg = [sys.executable, "-m", "kelpseg"]
    with tempfile.TemporaryDirectory(prefix="map_memory_") as tmp:
        root = Path(tmp)
        ckpt = untrained_checkpoint(root / "model.ckpt", args.config)
        tiles = synthetic_tiles(root / "synth")
        print(f"untrained {args.config} model, window 350, batch {args.batch_size}, CPU fp32")
        print("| raster | approach | peak RSS (GB) | seconds | Mpx/s |\n|---|---|---|---|---|")
        for size in args.sizes:
            raster = mosaic_raster(root / f"scene{size}.tif", size, tiles)
            mpx = size * size / 1e6
            runs = {
                "kelpseg map (sliced)": [*kelpseg, "map", "-m", str(ckpt), str(raster),
                                         "-o", str(root / f"maps{size}"),
                                         "--batch-size", str(args.batch_size)],
            }  # fmt: skip
            if size <= args.whole_max:
                runs["whole array (kelpseg predict)"] = [
                    *kelpseg, "predict", "-m", str(ckpt), str(raster),
                    "-o", str(root / f"pred{size}"), "--batch-size", "1",
                ]  # fmt: skip
            for name, cmd in runs.items():
                gb, secs = measure(cmd)
                print(f"| {size}x{size} | {name} | {gb:.2f} | {secs:.0f} | {mpx / secs:.2f} |")
                sys.stdout.flush()
            raster.unlink()


if __name__ == "__main__":
    main()
