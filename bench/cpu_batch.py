"""Tiles/s of the ensemble engine alone (`Members`, in-memory tiles) by batch size, on this device.

Usage: PYTHONPATH=src python bench/cpu_batch.py [--config demo] [--batches 1 2 4 8 16]

An untrained network of the config (speed does not depend on weights), fp32, 350 px tiles of
random digital numbers; each batch size is warmed up once, then timed over at least 32 tiles.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from kelpseg.config import load_config
from kelpseg.infer.ensemble import Members
from kelpseg.train.module import KelpSegModule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    args = ap.parse_args()
    torch.manual_seed(0)
    model = KelpSegModule(load_config(args.config).model_dump(mode="json")).eval()
    rng = np.random.default_rng(0)
    raw = rng.integers(6000, 12000, size=(max(args.batches), 7, 350, 350)).astype(np.int16)
    raw[:, 5:] = 0  # no cloud, sea level
    engine = Members([model], [1.0])
    print("| batch | tiles/s |\n|---|---|")
    for b in args.batches:
        engine(raw[:b])
        t0, n = time.perf_counter(), 0
        while n < 32:
            engine(raw[:b])
            n += b
        print(f"| {b} | {n / (time.perf_counter() - t0):.2f} |", flush=True)
    print(f"# {args.config}, fp32, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
