"""Prediction throughput of ``kelpseg.infer.predict.predict_tiles`` (end to end, files to files).

    python bench/predict_speed.py --tiles 16                 # CPU: fp32 and bf16, 1 and 3 models
    python bench/predict_speed.py --tiles 256 --host-only    # the pipeline without the network

Synthetic 350 x 350 int16 tiles are written once into ``--work`` (not timed); models follow
the ``demo`` recipe (Unet + tu-efficientnet_b0) with random weights (speed does not depend on
them). Each figure: tiles/s over all tiles after a 2-tile warm-up, outputs rewritten
(``overwrite=True``), masks only.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from kelpseg.config import load_config
from kelpseg.infer.predict import predict_tiles
from kelpseg.io import write_raster
from kelpseg.train.module import KelpSegModule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=16)
    ap.add_argument("--members", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--work", type=Path, default=Path("/tmp/kelpseg_predict_speed"))
    ap.add_argument(
        "--host-only",
        action="store_true",
        help="Replace the network by a constant: the ceiling of reading, checks and writing.",
    )
    args = ap.parse_args()
    if args.host_only:
        from kelpseg.infer import members

        def constant(self, raw, fixed=None):
            b, _, h, w = raw.shape
            return torch.full((b, h, w), 0.25, device=self.device), None

        members.Members.__call__ = constant

    rng = np.random.default_rng(0)
    tiles = args.work / "tiles"
    items = []
    for i in range(args.tiles):
        path = tiles / f"B{i:04d}_satellite.tif"
        if not path.is_file():
            img = rng.integers(6000, 12000, size=(7, 350, 350)).astype(np.int16)
            img[5] = 0  # DEM: all sea
            img[6] = 0
            write_raster(path, img)
        items.append((path.stem.split("_")[0], path))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = load_config(args.config).model_dump(mode="json")
    models = []
    for seed in range(max(args.members)):
        torch.manual_seed(seed)
        models.append(KelpSegModule(cfg).eval().to(device))
    rows = []
    for prec in args.precision:
        for n in args.members:
            kw = dict(batch_size=args.batch_size, precision=prec)
            predict_tiles(models[:n], items[:2], args.work / "warm", **kw)
            t0 = time.perf_counter()
            predict_tiles(models[:n], items, args.work / "out", **kw)
            dt = time.perf_counter() - t0
            rows.append({"precision": prec, "models": n, "tiles_per_s": args.tiles / dt})
            print(json.dumps(rows[-1]), flush=True)
    print(
        f"# {args.tiles} tiles of 350 px, {args.config} recipe, batch {args.batch_size}, "
        f"{device}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads{', network replaced by a constant' if args.host_only else ''}"
    )


if __name__ == "__main__":
    main()
