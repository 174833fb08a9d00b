"""Band-order plausibility check (``kelpseg.io.plausibility``) on a generated set.

    python bench/band_order.py                       # aois=24, seed=11, size=350
    python bench/band_order.py --aois 60 --seed 5

False alarms: generated tiles (correct order) that are warned about. Misses: tiles with enough
clear water or land to judge, re-stacked as Landsat's Blue, Green, Red, NIR, SWIR1, that are not;
and, for information, the same for NIR and Red swapped (a harder case the check is not built
for).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from kelpseg.io import discover, read_tile
from kelpseg.io.plausibility import band_order_votes, check_band_order
from kelpseg.synth import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--aois", type=int, default=24)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--size", type=int, default=350)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        generate(root, aois=args.aois, seed=args.seed, size=args.size, progress=False)
        refs = discover(root)
        alarms = judged = missed_landsat = missed_nir_red = 0
        seconds = 0.0
        for ref in refs:
            raw = read_tile(ref.image)
            t0 = time.perf_counter()
            alarms += check_band_order(raw) is not None
            seconds += time.perf_counter() - t0
            if not band_order_votes(raw):
                continue
            judged += 1
            landsat = raw.copy()
            landsat[:5] = raw[:5][::-1]
            missed_landsat += check_band_order(landsat) is None
            swapped = raw.copy()
            swapped[[1, 2]] = raw[[2, 1]]
            missed_nir_red += check_band_order(swapped) is None
        ms = 1000 * seconds / len(refs)
    print(f"{len(refs)} generated tiles ({args.size} px): {alarms} false alarms")
    print(f"{judged} judged: {missed_landsat} missed Blue,Green,Red,NIR,SWIR1 re-stacking")
    print(f"{judged} judged: {missed_nir_red} missed NIR<->Red swap (not a target)")
    print(f"{ms:.2f} ms per check on a {args.size} px tile")


if __name__ == "__main__":
    main()
