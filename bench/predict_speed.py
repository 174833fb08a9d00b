"""Prediction throughput of ``kelpseg.infer.predict.predict_tiles`` (end to end, files to files).

    python bench/predict_speed.py --tiles 16                 # CPU: fp32 and bf16, 1 and 3 models
    python bench/predict_speed.py --tiles 256 --host-only    # the pipeline without the network
    python bench/predict_speed.py --tiles 64 --naive         # also the naive loop, same run

Synthetic 350 x 350 int16 tiles are written once into ``--work`` (not timed); models follow
the ``demo`` recipe (Unet + tu-efficientnet_b0) with random weights (speed does not depend on
them). Each figure: tiles/s over all tiles after a 2-tile warm-up, outputs rewritten
(``overwrite=True``), masks only. ``--naive`` adds the loop the 2nd-place code ran (and
issue 8 compares against): per tile a rasterio read, the DEM correction and features, one fp32
forward of batch 1, a rasterio write; one model, same tiles.
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
    ap.add_argument("--naive", action="store_true", help="Also time the naive per-tile loop.")
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
    if args.naive and not args.host_only:
        naive(models[0], items[:2], args.work / "warm")
        t0 = time.perf_counter()
        naive(models[0], items, args.work / "naive")
        dt = time.perf_counter() - t0
        rows.append({"naive": "read, fp32, batch 1, write", "models": 1,
                     "tiles_per_s": args.tiles / dt})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    print(
        f"# {args.tiles} tiles of 350 px, {args.config} recipe, batch {args.batch_size}, "
        f"{device}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads{', network replaced by a constant' if args.host_only else ''}"
    )


@torch.inference_mode()
def naive(model: KelpSegModule, items: list[tuple[str, Path]], out: Path) -> None:
    """One tile at a time: read, correct, predict fp32 batch 1, write (synchronous)."""
    import rasterio

    from kelpseg.data.dem_shift import correct_dem

    out.mkdir(parents=True, exist_ok=True)
    dev = next(model.parameters()).device
    for tile_id, path in items:
        with rasterio.open(path) as src:
            raw = src.read()
        x = torch.from_numpy(correct_dem(raw)[None]).to(dev)
        mask = (model.predict_proba(x)[0] >= 0.5).to(torch.uint8).cpu().numpy()
        write_raster(out / f"{tile_id}_kelp.tif", mask, nodata=255)


if __name__ == "__main__":
    main()
