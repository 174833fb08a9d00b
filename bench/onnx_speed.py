"""CPU tiles/s of one model: torch (``predict_proba``) against onnxruntime (``kelpseg export``).

Usage: ``python bench/onnx_speed.py [--batches 4] [--batch-size 8] [--repeat 2]``.
The demo recipe (Unet tu-efficientnet_b0, 17 indices, land masking, 350 px tiles), random
weights and bounds fitted on the synthetic tiles; both backends take the same raw int16 batch
(features computed inside each), fp32, all cores. Prints tiles/s (best of ``--repeat``) and the
largest probability difference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.tiles

import numpy as np
import torch

from kelpseg.config import load_config
from kelpseg.infer.onnx_export import OnnxModel, export_onnx
from kelpseg.train.module import KelpSegModule
from tests.tiles import make_tile


def _rate(fn, batch: np.ndarray, batches: int, repeat: int) -> float:
    fn(batch)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(batches):
            fn(batch)
        best = min(best, time.perf_counter() - t)
    return batches * len(batch) / best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args(argv)
    cfg = load_config("demo").model_dump(mode="json")
    torch.manual_seed(0)
    module = KelpSegModule(cfg).eval()
    rng = np.random.default_rng(0)
    raw = np.stack([make_tile(rng, size=350)[0] for _ in range(args.batch_size)])
    module.features.fit_bounds(torch.from_numpy(raw))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "demo.ckpt"
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": cfg}}, ckpt)
        t = time.perf_counter()
        onnx_model = OnnxModel(export_onnx(ckpt, Path(tmp) / "demo.onnx"))
        export_s = time.perf_counter() - t

        def run_torch(b: np.ndarray) -> np.ndarray:
            return module.predict_proba(torch.from_numpy(b)).numpy()

        diff = float(np.abs(run_torch(raw) - onnx_model.predict_proba(raw)).max())
        rates = {
            "torch": _rate(run_torch, raw, args.batches, args.repeat),
            "onnxruntime": _rate(onnx_model.predict_proba, raw, args.batches, args.repeat),
        }
    print(f"threads: torch {torch.get_num_threads()}; export {export_s:.1f} s")
    for name, rate in rates.items():
        print(f"{name}: {rate:.2f} tiles/s (batch {args.batch_size}, 350 px, fp32)")
    print(f"onnxruntime / torch: {rates['onnxruntime'] / rates['torch']:.2f}x")
    print(f"max |proba_onnx - proba_torch| = {diff:.2e}")


if __name__ == "__main__":
    main()
