"""Throughput of sliced inference by engine and overlap, against tile prediction, in Mpx/s.

Usage: python bench/map_speed.py [--size 1400] [--configs demo] [--checkpoint CKPT]
    [--engines "torch fp32" "torch bf16" "onnx fp32"] [--overlaps 87 44] [--rounds 2]
    [--batch-size 1] [--map] [--footprint-deg 0] [--device cpu|cuda] [--threads 1 --cpu-time]

A ``size`` x ``size`` mosaic of synthetic 350 px tiles (bench/map_memory.py) is predicted by
each engine (the ensemble engine `Members` over one member: the torch network in fp32 or under
bf16 autocast, or its ONNX export on onnxruntime, fp32), the model an UNTRAINED network of the
config (speed does not depend on the weights) or ``--checkpoint``:

- "tiles": the raster's non-overlapping 350 px tiles through the engine (what `predict` does
  per tile): the Mpx/s without overlap;
- "sliced, overlap O": `kelpseg.infer.sliced.predict_sliced` with 350 px windows and that
  overlap, blending included (no skipping: every window predicted).

On a shared machine ``--threads 1 --cpu-time`` compares the process's CPU seconds with one
thread each (what the work costs, whatever else runs); without, wall seconds on every core.
Every measurement is repeated ``--rounds`` times, the engines interleaved (A B C A B C ...) so a
change of the machine's load hits them alike; the table gives each round's seconds and the
ratios within a round. The largest probability difference of each engine against torch fp32
(same windows) and the share of pixels whose mask at 0.5 differs are printed too.
``--map`` also times the whole `kelpseg.infer.mapping.map_raster` (every output) once per
engine. ``--footprint-deg D`` blanks everything outside a square footprint rotated by D
degrees (a Landsat fill collar: 29 % at 12 degrees).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def engines_for(
    ckpt: Path, names: list[str], window: int, cache: Path, device: str, threads: int | None
) -> dict:
    """``{"torch fp32": Members, ...}`` over the one checkpoint (ONNX on the CPU)."""
    import torch

    from kelpseg.infer.checkpoint import load_model
    from kelpseg.infer.ensemble import Members
    from kelpseg.infer.onnx_export import OnnxModel, cached_export

    out = {}
    model = load_model(ckpt, device)
    for name in names:
        backend, precision = name.split()
        if backend == "onnx":
            t0 = time.perf_counter()
            member = OnnxModel(cached_export(ckpt, window, cache), threads=threads)
            print(f"ONNX export (or cache) of {ckpt.name}: {time.perf_counter() - t0:.1f} s")
            out[name] = Members([member], [1.0])
        else:
            dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
            out[name] = Members([model], [1.0], precision=dtype)
    return out


def tiles_pass(engine, raw: np.ndarray, batch: int) -> np.ndarray:
    """Probabilities of the raster's 350 px tiles, each predicted alone (no overlap)."""
    _, H, W = raw.shape
    out = np.zeros((H, W), np.float32)
    boxes = [(r, c) for r in range(0, H - 349, 350) for c in range(0, W - 349, 350)]
    for i in range(0, len(boxes), batch):
        part = boxes[i : i + batch]
        x = np.stack([raw[:, r : r + 350, c : c + 350] for r, c in part])
        mean, _ = engine(x)
        for (r, c), p in zip(part, mean.float().cpu().numpy(), strict=True):
            out[r : r + 350, c : c + 350] = p
    return out


def sliced_pass(engine, raw: np.ndarray, overlap: int, batch: int) -> np.ndarray:
    from kelpseg.infer.sliced import ArraySource, predict_sliced

    bands = predict_sliced(
        engine, ArraySource(raw), window=350, overlap=overlap, batch_size=batch, progress=False
    )
    return np.concatenate([b.mean for b in bands])


def main() -> None:
    import rasterio
    import torch
    from map_memory import mosaic_raster, synthetic_tiles

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1400)
    ap.add_argument("--configs", "--config", nargs="+", default=["demo"])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--engines", nargs="+", default=None,
                    help='default: "torch fp32" "torch bf16", and "onnx fp32" on a CPU')  # fmt: skip
    ap.add_argument("--overlaps", type=int, nargs="*", default=[87])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--no-tiles", action="store_true", help="Skip the tile pass.")
    ap.add_argument("--map", action="store_true", help="Also time map_raster per engine.")
    ap.add_argument("--footprint-deg", type=float, default=0.0)
    ap.add_argument("--cpu-time", action="store_true",
                    help="Tables in process CPU seconds instead of wall seconds")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None,
                    help="Threads of torch and onnxruntime (default: theirs, one per core); "
                    "1 makes process CPU seconds a fair measure on a loaded machine")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.engines is None:
        args.engines = ["torch fp32", "torch bf16"] + ["onnx fp32"] * (args.device == "cpu")
    mpx = args.size**2 / 1e6
    load = os.getloadavg()
    print(f"{args.size}x{args.size} px ({mpx:.2f} Mpx), 350 px windows, batch {args.batch_size}, "
          f"{args.device}, torch {torch.__version__} ({torch.get_num_threads()} threads), load "
          f"average {load[0]:.1f} / {load[1]:.1f} at the start")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="map_speed_") as tmp:
        root = Path(tmp)
        raster = mosaic_raster(root / "scene.tif", args.size, synthetic_tiles(root / "synth"))
        if args.footprint_deg:
            from coast_scene import footprint_outside

            with rasterio.open(raster, "r+") as dst:
                data = dst.read()
                outside = footprint_outside(np.arange(args.size), args.size, args.footprint_deg)
                data[:, outside] = -32768
                dst.write(data)
            print(f"footprint rotated {args.footprint_deg} deg: fill {outside.mean():.1%}")
        with rasterio.open(raster) as src:
            raw = src.read()
        for config in args.configs:
            run_config(args, root, raster, raw, config, mpx)


def run_config(args, root: Path, raster: Path, raw: np.ndarray, config: str, mpx: float) -> None:
    from map_memory import untrained_checkpoint

    ckpt = args.checkpoint or untrained_checkpoint(root / f"{config}.ckpt", config)
    print(f"model: {args.checkpoint or 'untrained ' + config}")
    engines = engines_for(ckpt, args.engines, 350, root / "onnx_cache", args.device, args.threads)
    passes = [] if args.no_tiles else [("tiles", None)]
    passes += [(f"sliced, overlap {o}", o) for o in args.overlaps]
    for e in engines.values():  # warm-up (first-call allocations, oneDNN kernels)
        e(raw[None, :, :350, :350])
    secs: dict[tuple[str, str], list[float]] = {}
    probs: dict[tuple[str, str], np.ndarray] = {}
    for rnd in range(args.rounds):
        for stage, overlap in passes:
            for name, engine in engines.items():
                t0, c0 = time.perf_counter(), time.process_time()
                if overlap is None:
                    p = tiles_pass(engine, raw, args.batch_size)
                else:
                    p = sliced_pass(engine, raw, overlap, args.batch_size)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                secs.setdefault((stage, name), []).append(cpu if args.cpu_time else wall)
                probs[stage, name] = p
                print(f"  round {rnd + 1} {stage} {name}: {wall:.1f} s wall, {cpu:.1f} s CPU",
                      flush=True)  # fmt: skip
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} / {load[1]:.1f} at the end")
    first = args.engines[0]
    unit = "CPU seconds" if args.cpu_time else "seconds"
    print(
        f"| stage | engine | {unit} by round | Mpx/s (best) | speed vs "
        f"{first} (by round) | max abs dp vs {first} | mask at 0.5 differs |"
    )
    print("|---|---|---|---|---|---|---|")
    for stage, _ in passes:
        for name in engines:
            s = secs[stage, name]
            ratio = [a / b for a, b in zip(secs[stage, first], s, strict=True)]
            ref = probs[stage, first]
            got = probs[stage, name]
            diff = float(np.abs(got - ref).max())
            flips = float(((got >= 0.5) != (ref >= 0.5)).mean())
            print(f"| {stage} | {name} | {' / '.join(f'{x:.1f}' for x in s)} "
                  f"| {mpx / min(s):.3f} | {' / '.join(f'{x:.2f}x' for x in ratio)} "
                  f"| {diff:.1e} | {flips:.2%} |")  # fmt: skip
    if not args.no_tiles:
        for stage, _ in passes[1:]:
            for name in engines:
                cost = [a / b for a, b in zip(secs[stage, name], secs["tiles", name], strict=True)]
                print(f"overlap cost, {stage}, {name}: sliced / tiles seconds = "
                      + " / ".join(f"{c:.2f}" for c in cost))  # fmt: skip
    if args.map:
        from kelpseg.infer.mapping import MapSettings, SceneInput, map_raster

        for name, engine in engines.items():
            engine.batch_size = args.batch_size
            out = root / f"{config}_{name.replace(' ', '_')}"
            out.mkdir()
            t0 = time.perf_counter()
            map_raster(
                engine, raster, out, SceneInput(raster, "scene", None, None, False),
                MapSettings(window=350), threshold=0.5, cut=0.5, progress=False,
            )  # fmt: skip
            s = time.perf_counter() - t0
            print(f"map_raster (all outputs), {name}: {s:.1f} s wall, {mpx / s:.3f} Mpx/s")


if __name__ == "__main__":
    main()
