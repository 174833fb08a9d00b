"""Wall time of the table stages + training cache (what `kelpseg run` does before training).

Compares reading every training tile twice (stats, then the cache: the code before issue 7),
once (the stats pass fills the cache), and a second run on the same folder (tables and cache
reused on a matching fingerprint). Demo-sized data by default (24 AOIs, 350 px, 98 tiles).

    python bench/ingest.py [--aois 24] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from kelpseg.config import load_config
from kelpseg.data.cache import build_cache
from kelpseg.data.groups import dem_shifts
from kelpseg.pipeline import prepare
from kelpseg.synth import generate


def _once(data: Path, out: Path, *, pack: bool, reuse: bool) -> float:
    cfg = load_config("demo")
    t0 = time.perf_counter()
    prep = prepare(data, cfg, out, reuse=reuse, pack=pack)
    ids = prep.train["tile_id"].tolist()
    shifts = dict(zip(ids, dem_shifts(prep.stats, ids), strict=True))
    build_cache([prep.refs[t] for t in ids], out / "cache", 350, shifts)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--aois", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        res = generate(root / "data", aois=args.aois, seed=0)
        n = res.n_train + res.n_test
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            for name, pack in (("two reads (stats, then cache)", False), ("one read", True)):
                out = root / "out"
                shutil.rmtree(out, ignore_errors=True)
                t = _once(res.root, out, pack=pack, reuse=False)
                best[name] = min(best.get(name, t), t)
            t = _once(res.root, out, pack=True, reuse=True)
            best["second run (all reused)"] = min(best.get("second run (all reused)", t), t)
    print(f"{n} tiles, best of {args.repeat}: stats + groups + split + training cache")
    for name, t in best.items():
        print(f"  {name:32s} {t:6.2f} s")


if __name__ == "__main__":
    main()
