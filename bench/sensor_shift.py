"""One area as Landsat 8, HLS L30, HLS S30 and Sentinel-2 L2A: a Landsat-trained run's Dice on each.

The four products of every area are rendered from one synthetic scene (same coast, kelp,
clouds and date; `kelpseg.synth.sensors`), each written in its own format and read back by
its own reader (`kelpseg.io.sources`): HLS as int16 reflectance x 0.0001 on the MGRS grid,
Sentinel-2 as 10/20 m JPEG2000 with its offset, area-averaged back to 30 m. The run's ensemble
maps each (`kelpseg map`, the product's DEM) and its mask is scored against the product's own
30 m truth, counted on pixels both call valid. The synthetic Sentinel-2 keeps Landsat's
spectra, so the figure measures formats, resampling, radiometric processing and cloud masks,
**not** the band-pass difference of B8A/B11 against Landsat's NIR/SWIR1: that needs real data.

    python bench/sensor_shift.py [RUN] [--areas 3] [--size 384]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

from kelpseg.infer.mapping import default_settings, map_inputs
from kelpseg.metrics import Counts


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def main() -> None:
    from kelpseg.geo.dem import Dems
    from kelpseg.infer.assemble import assemble
    from kelpseg.synth.landsat import write_landsat_scene
    from kelpseg.synth.sensors import write_hls_granule, write_sentinel2_safe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "run", type=Path, nargs="?", default=Path("demo_out/run"),
        help="A trained `kelpseg run` folder (every fold); default demo_out/run of `make demo`.",
    )  # fmt: skip
    ap.add_argument("--areas", type=int, default=3)
    ap.add_argument("--size", type=int, default=384, help="Side in 30 m px (even).")
    ap.add_argument("--seed", type=int, default=100)
    args = ap.parse_args()
    if not list(args.run.glob("fold*/result.json")):
        ap.error(f"{args.run}: not a trained run folder (run `make demo` first, or give RUN)")
    ens = assemble(run=args.run)
    print(f"{ens.describe()}; {args.areas} areas of {args.size}² px")
    totals: dict[str, Counts] = {}
    with tempfile.TemporaryDirectory(prefix="sensor_shift_") as tmp:
        root = Path(tmp)
        for k in range(args.areas):
            seed = args.seed + k
            area = root / f"area{k}"
            common = {"size": args.size, "seed": seed, "area_seed": seed, "cloud_fraction": 0.1}
            made = {
                "Landsat 8": write_landsat_scene(area / "l8", **common),
                "HLS L30": write_hls_granule(area / "l30", product="L30", **common),
                "HLS S30": write_hls_granule(area / "s30", product="S30", **common),
                "Sentinel-2 L2A": write_sentinel2_safe(area / "s2", **common),
            }
            for name, product in made.items():
                folder = getattr(product, "folder", None) or product.path
                sid = getattr(product, "granule_id", None) or getattr(
                    product, "product_id", folder.name
                )
                maps = root / "maps" / name.replace(" ", "_")
                t0 = time.perf_counter()
                res = map_inputs(
                    ens, [folder], maps, default_settings(ens), dems=Dems(product.dem),
                    progress=False,
                )  # fmt: skip
                res.report.finish(strict=True)
                secs = time.perf_counter() - t0
                pred = _read(maps / sid / f"{sid}_kelp.tif")
                truth = _read(product.truth)
                judged = (pred != 255) & (truth != 255)
                c = Counts.of(np.where(judged, pred, 0), np.where(judged, truth, 0))
                totals[name] = totals.get(name, Counts()) + c
                info = json.loads((maps / sid / "scene.json").read_text())
                with rasterio.open(product.truth) as src:
                    px_ha = abs(src.transform.a * src.transform.e) / 10_000
                true_ha = (judged & (truth == 1)).sum() * px_ha  # where the map is scored
                print(
                    f"area {k} {name:15s} Dice {c.scores()['dice']:.3f}  kelp "
                    f"{info['kelp_ha'] or 0:.1f} ha (true {true_ha:.1f} ha)  ({secs:.1f} s)"
                )
            shutil.rmtree(area)
    print("\n| product | Dice over all areas (pixels valid in map and truth) |\n|---|---|")
    for name, c in totals.items():
        print(f"| {name} | {c.scores()['dice']:.3f} |")


if __name__ == "__main__":
    main()
