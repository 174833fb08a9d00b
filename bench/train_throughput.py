"""Training data-path throughput: kelpseg's batched path vs a per-sample CPU loop.

    python bench/train_throughput.py --tiles 200            # data paths (CPU or GPU)
    python bench/train_throughput.py --tiles 200 --model    # + full train steps (GPU only)

On the same synthetic 350 x 350 training tiles (generated once into ``--work``, not timed):

(a) kelpseg: the packed int16 memory-mapped cache read by ``PackedDataset.__getitems__`` under
    the weighted epoch sampler (one fancy-index read per batch), then, on the device (the GPU
    when there is one, else this CPU), the 17 indices with land masking, quantile
    normalization, flips/90° turns, a rotation within ±90° (kornia) and padding to 352.
    Reported twice: the loader alone (the host's share when a GPU does the rest) and the whole
    data path.
(b) naive: what the 2nd-place code does — a DataLoader whose ``__getitem__`` opens each tile
    with rasterio and computes the same 17 indices, NaN filling, normalization and rotation on
    the CPU, one sample at a time, in ``--workers`` worker processes.

``--model`` times whole training steps (Unet + tu-efficientnet_b5, 352², bf16-mixed, batch 32,
AdamW, channels_last) fed by path (a), if CUDA is available. Each figure is the best of
``--repeat`` timed windows after a warm-up batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import rasterio
import torch
from torch.utils.data import DataLoader, Dataset

from kelpseg.config import load_config
from kelpseg.data.cache import build_cache
from kelpseg.data.dataset import EpochWeightedSampler, PackedDataset, keep_batch
from kelpseg.features.indices import WINNING_17
from kelpseg.features.pipeline import FeatureBuilder, pad_to_multiple
from kelpseg.io import discover
from kelpseg.synth import generate
from kelpseg.train.augment import augment_batch, random_rotate, step_generator


def synthetic_tiles(work: Path, n: int) -> list:
    """At least ``n`` synthetic training tiles (with masks) in ``work``, generated once."""
    data = work / f"data{n}"
    refs = [r for r in discover(data) if r.mask is not None] if data.is_dir() else []
    aois = max(2, n // 3)
    while len(refs) < n:
        generate(data, aois=aois, seed=0, size=350, overwrite=True, progress=False)
        refs = [r for r in discover(data) if r.mask is not None]
        aois = int(aois * 1.3) + 1
    return refs[:n]


def features_17(bounds_from: torch.Tensor) -> FeatureBuilder:
    """The winning feature set (17 indices, land masking, quantile bounds fitted once)."""
    fb = FeatureBuilder(list(WINNING_17), "dn", mask_land=True)
    fb.fit_bounds(bounds_from)
    return fb


def timed(
    batches: Iterator,
    consume: Callable[[object], int],
    n_batches: int,
    repeat: int,
    warmup: int = 1,
) -> float:
    """Best samples/s over ``repeat`` windows of ``n_batches`` after ``warmup`` batches.

    With loader workers, the warm-up must drain the batches they prefetched, or the first
    window counts work done before the clock started.
    """
    for _ in range(warmup):
        consume(next(batches))
    best = 0.0
    for _ in range(repeat):
        t0, n = time.perf_counter(), 0
        for _ in range(n_batches):
            n += consume(next(batches))
        best = max(best, n / (time.perf_counter() - t0))
    return best


def forever(loader: DataLoader) -> Iterator:
    epoch = 0
    while True:
        if isinstance(loader.sampler, EpochWeightedSampler):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


class NaiveTiles(Dataset):
    """Per-sample CPU path: rasterio read, 17 indices, NaN fill, normalization, rotation."""

    def __init__(self, refs: list, fb: FeatureBuilder, degrees: float = 90.0) -> None:
        self.refs, self.fb, self.degrees = refs, fb, degrees

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        ref = self.refs[i]
        with rasterio.open(ref.image) as src:
            raw = torch.from_numpy(src.read())[None]
        with rasterio.open(ref.mask) as src:
            mask = torch.from_numpy(src.read(1)).float()[None, None]
        x = self.fb._features(raw)  # one sample at a time, no batching
        x, y, _ = random_rotate(x, mask, self.degrees, step_generator(i))
        x, _ = pad_to_multiple(x, 32)
        return x[0], y[0]


def kelpseg_paths(
    refs: list, cache: Path, device: torch.device, batch: int, n_batches: int, repeat: int
) -> dict[str, float]:
    packed = build_cache(refs, cache, 350)
    ds = PackedDataset(packed, np.arange(len(packed.tile_ids)))
    sampler = EpochWeightedSampler(np.ones(len(ds)), 10_240, seed=0)
    loader = DataLoader(
        ds,
        batch_size=batch,
        sampler=sampler,
        collate_fn=keep_batch,
        pin_memory=device.type == "cuda",
    )
    fb = features_17(torch.from_numpy(np.array(packed.images[:16]))).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def load_only(b) -> int:
        raw, mask = b
        raw.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        sync()
        return len(raw)

    step = iter(range(10**9))

    def whole_path(b) -> int:
        raw, mask = (t.to(device, non_blocking=True) for t in b)
        x = fb(raw)
        x, _ = augment_batch(
            x, mask[:, None].float(), rotate_degrees=90.0, generator=step_generator(0, next(step))
        )
        x, _ = pad_to_multiple(x, 32)
        sync()
        return len(raw)

    return {
        "kelpseg_loader_only": timed(forever(loader), load_only, n_batches, repeat),
        "kelpseg_data_path": timed(forever(loader), whole_path, max(2, n_batches // 4), repeat),
    }


def naive_path(
    refs: list, cache: Path, batch: int, workers: int, n_batches: int, repeat: int
) -> float:
    packed = build_cache(refs, cache, 350)
    fb = features_17(torch.from_numpy(np.array(packed.images[:16])))
    loader = DataLoader(
        NaiveTiles(refs, fb),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    drain = workers * 2 + 1  # DataLoader's default prefetch_factor is 2 per worker
    return timed(forever(loader), lambda b: len(b[0]), n_batches, repeat, warmup=drain)


def model_steps(refs: list, cache: Path, batch: int, n_steps: int, repeat: int) -> dict[str, float]:
    """Samples/s of whole bf16 train steps on the GPU, fed by kelpseg's data path."""
    from kelpseg.train.module import KelpSegModule

    cfg = load_config("default", [f"train.batch_size={batch}"])
    module = KelpSegModule(cfg.model_dump(mode="json")).cuda()
    packed = build_cache(refs, cache, 350)
    module.features.fit_bounds(torch.from_numpy(np.array(packed.images[:16])))
    opt = torch.optim.AdamW(module.parameters(), lr=3e-4, weight_decay=1e-4)
    ds = PackedDataset(packed, np.arange(len(packed.tile_ids)))
    loader = DataLoader(
        ds,
        batch_size=batch,
        sampler=EpochWeightedSampler(np.ones(len(ds)), 10_240, 0),
        collate_fn=keep_batch,
        pin_memory=True,
    )
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")

    def step(b) -> int:
        raw, mask = (t.cuda(non_blocking=True) for t in b)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = module.training_step((raw, mask), 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        return len(raw)

    module.log = lambda *a, **k: None  # no trainer attached
    return {"model_train_step": timed(forever(loader), step, n_steps, repeat)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiles", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=20, help="Batches per timed window.")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the naive path.")
    p.add_argument("--model", action="store_true", help="Also time full train steps (GPU).")
    p.add_argument("--work", type=Path, default=Path("/tmp/kelpseg-bench/train"))
    p.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = p.parse_args()

    refs = synthetic_tiles(args.work, args.tiles)
    cache = args.work / f"cache{args.tiles}"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    res: dict[str, float | str] = {
        "tiles": len(refs),
        "batch": args.batch,
        "device": where,
        "cpus": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    res.update(kelpseg_paths(refs, cache, device, args.batch, args.batches, args.repeat))
    res["naive_per_sample"] = naive_path(
        refs, cache, args.batch, args.workers, max(2, args.batches // 4), args.repeat
    )
    if args.model:
        if device.type == "cuda":
            res.update(model_steps(refs, cache, args.batch, max(5, args.batches // 2), args.repeat))
        else:
            res["model_train_step"] = "skipped: no GPU available"
    for key, value in res.items():
        shown = f"{value:,.1f} samples/s" if isinstance(value, float) else value
        print(f"{key:>22}: {shown}")
    if isinstance(res["naive_per_sample"], float) and res["naive_per_sample"] > 0:
        print(
            f"{'speed-up (data path)':>22}: {res['kelpseg_data_path'] / res['naive_per_sample']:.1f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
