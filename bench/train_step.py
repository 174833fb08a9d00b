"""CPU seconds of one training step of a config: features and augmentation, then the network's
forward and backward and an AdamW step, on a synthetic batch (after 2 warm-up steps).

    python bench/train_step.py [--config demo] [--steps 12]

Compare commits by running it with ``PYTHONPATH`` pointing at each checkout's ``src``.
"""

from __future__ import annotations

import argparse
import time

import torch

from kelpseg.config import load_config
from kelpseg.train.module import KelpSegModule


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = KelpSegModule(cfg.model_dump(mode="json")).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    n, size = cfg.train.batch_size, cfg.data.tile_size or 350
    raw = torch.randint(5000, 20000, (n, 7, size, size), generator=g).to(torch.int16)
    raw[:, 5] = 0  # QA clear
    raw[:, 6] = torch.randint(-10, 50, (n, size, size), generator=g).to(torch.int16)  # DEM
    mask = (torch.rand(n, size, size, generator=g) > 0.95).to(torch.uint8)
    feats = net = 0.0
    for i in range(args.steps):
        t0 = time.perf_counter()
        with torch.no_grad():
            x, y = model.training_inputs(raw, mask, i)
        t1 = time.perf_counter()
        loss = model.loss(model._net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            feats += t1 - t0
            net += time.perf_counter() - t1
    k = args.steps - 2
    print(
        f"{args.config}: batch {n}, crop {cfg.train.crop_size}, {torch.get_num_threads()} threads: "
        f"{(feats + net) / k:.3f} s/step (features + augmentation {feats / k * 1000:.0f} ms, "
        f"network + optimizer {net / k * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
