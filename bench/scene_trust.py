"""What the DEM and the coverage rule change in a scene's areas: one synthetic scene mapped with
its DEM and with ``--no-dem``, against its truth.

Prints, for each run: water and clear-water hectares, kelp hectares (clear water only), the
model's kelp pixels on land (DEM > 0) and under QA flags (what the rule keeps out of the mask
and ``kelp_ha``), and the Dice of the kelp mask against the truth (pixels valid in both). The
difference between the two runs is what a missing DEM does to a user's figures.

    python bench/scene_trust.py [CKPT_OR_RUN] [--size 1024] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def main() -> None:
    from kelpseg.geo.dem import Dems
    from kelpseg.infer.assemble import assemble
    from kelpseg.infer.mapping import default_settings, map_inputs
    from kelpseg.metrics import dice
    from kelpseg.synth.landsat import write_landsat_scene

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "model", type=Path, nargs="?", default=Path("demo_out/run"),
        help="A checkpoint, or a run folder (every fold); default demo_out/run of `make demo`.",
    )  # fmt: skip
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.model.exists():
        ap.error(f"{args.model}: not found (run `make demo` first, or give a checkpoint)")
    ens = assemble(run=args.model) if args.model.is_dir() else assemble([args.model])
    print(f"{ens.describe()}; synthetic Landsat 8 scene {args.size}² px, seed {args.seed}")
    print(
        "| run | water ha | clear water ha | kelp ha | model's kelp px on land | "
        "on QA-flagged water | mask Dice | s |\n|---|---|---|---|---|---|---|---|"
    )
    with tempfile.TemporaryDirectory(prefix="scene_trust_") as tmp:
        root = Path(tmp)
        sc = write_landsat_scene(root / "scene", size=args.size, seed=args.seed)
        sid = sc.meta.scene_id
        truth = _read(sc.truth)
        land = None
        for name, dems in (("with its DEM", Dems(sc.dem)), ("--no-dem", Dems(None, no_dem=True))):
            maps = root / name.replace(" ", "_")
            t0 = time.perf_counter()
            res = map_inputs(ens, [sc.folder], maps, default_settings(ens), dems=dems)
            res.report.finish(strict=True)
            secs = time.perf_counter() - t0
            info = json.loads((maps / sid / "scene.json").read_text())
            cov = _read(maps / sid / f"{sid}_coverage.tif")
            proba = _read(maps / sid / f"{sid}_proba.tif")
            kelp = _read(maps / sid / f"{sid}_kelp.tif")
            land = cov == 0 if land is None else land  # the DEM's land, from the first run
            said = np.nan_to_num(proba) >= ens.threshold
            judged = (kelp != 255) & (truth != 255)
            print(
                f"| {name} | {info['water_ha']:.0f} | {info['water_clear_ha']:.0f} | "
                f"{info['kelp_ha'] or 0:.1f} | {int((said & land).sum()):,} | "
                f"{int((said & (cov == 2)).sum()):,} | "
                f"{dice(kelp[judged] == 1, truth[judged] == 1):.3f} | {secs:.0f} |"
            )
        true = json.loads(sc.truth.with_name(f"{sid}_truth.json").read_text())
        print(
            f"true kelp: {true['kelp_clear_ha']:.1f} ha on clear water (what kelp_ha counts), "
            f"{sc.kelp_ha:.1f} ha on every valid pixel"
        )


if __name__ == "__main__":
    main()
