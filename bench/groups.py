"""AOI grouping (``kelpseg.data.groups``): agreement with the generated AOIs, leakage, speed.

    python bench/groups.py                 # ~300 tiles: aois=80, size=350
    python bench/groups.py --aois 24       # the 24-AOI demo set
    python bench/groups.py --timm-weights resnet50.safetensors   # also the timm backend
    python bench/groups.py --no-speed      # agreement and leakage only

The generated DEMs have the holes of real data (SLC-off gaps on ~20 % of tiles, scene edges on
~10 %, -32768 in all seven bands, the DEM included).

Agreement: adjusted Rand index (ARI) between the groups and the generator's true AOIs, over all
tiles and over the tiles whose known DEM shows a coast (land, or the coastal strip of elevation
0; a DEM without says nothing about where a tile is: those share one all-water group by design),
with and without undoing the DEM shifts
``kelpseg stats`` detects (``data.correct_dem_shift``).

Leakage: the training tiles are grouped and split as ``kelpseg run`` does (``max_group_size``
50, 10 folds, seed 42, shifts corrected) and the tiles whose true AOI straddles folds are
counted: among tiles with a coast (land or the coastal strip of elevation 0) in their known
DEM, and among all tiles whose true AOI has land.

Speed: grouping the real set's 5,635 tiles. The DEMs of the generated tiles are turned into
5,635 distinct ones (8 flips/rotations x 3 circular shifts), pooled and grouped in memory and
timed; reading the DEM (and one spectral band, to tell holes from sea) is timed per tile on the
generated files and added for 5,635.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from kelpseg.data.groups import (
    TimmSpec,
    cap_groups,
    compute_groups,
    dem_shifts,
    group_pooled,
    pool_dems,
    read_dem,
)
from kelpseg.data.splits import make_folds
from kelpseg.data.stats import compute_stats
from kelpseg.io import discover
from kelpseg.synth import generate

REAL_TILES = 5635


def dataset(work: Path, aois: int, size: int, seed: int) -> Path:
    """Generate the set once; returns its root."""
    root = work / f"synth_a{aois}_s{size}_seed{seed}" / "data"
    if not (root / "metadata_fTq0l2T.csv").is_file():
        generate(root, aois=aois, seed=seed, size=size, overwrite=True)
    return root


def agreement(root: Path, threshold: float, grid: int, timm: TimmSpec | None) -> None:
    refs = discover(root)
    truth = pd.read_csv(root.parent / "data_truth" / "truth.csv", dtype={"tile_id": str})
    truth = truth.set_index("tile_id")
    ids, paths = [r.tile_id for r in refs], [r.image for r in refs]
    stats = compute_stats(refs, size=None).tiles
    t = truth.loc[ids]
    shifted = ((t["dem_shift_x"] != 0) | (t["dem_shift_y"] != 0)).to_numpy()
    holed = (t["missing_pct"] > 0).to_numpy()
    rows = []
    runs = [("dem-pool", None, False), ("dem-pool", None, True)]
    if timm is not None:
        runs += [("timm", timm, False), ("timm", timm, True)]
    for embedding, spec, correct in runs:
        t0 = time.perf_counter()
        g = compute_groups(
            ids,
            paths,
            threshold=threshold,
            grid=grid,
            embedding=embedding,
            timm=spec,
            shifts=dem_shifts(stats, ids) if correct else None,
        )
        seconds = time.perf_counter() - t0
        seen = ~g["featureless"].to_numpy()
        rows.append(
            {
                "embedding": embedding,
                "DEM shift corrected": correct,
                "ARI all tiles": round(adjusted_rand_score(t["aoi"], g["aoi"]), 3),
                "ARI tiles with a coast": round(
                    adjusted_rand_score(t["aoi"][seen], g["aoi"][seen]), 3
                ),
                "shifted tiles with land in their AOI's group": _joined(
                    t["aoi"], g, shifted & seen
                ),
                "holed tiles with land in their AOI's group": _joined(t["aoi"], g, holed & seen),
                "groups": g["aoi"].nunique(),
                "seconds": round(seconds, 1),
            }
        )
    n_aoi, n_fl = t["aoi"].nunique(), int((~seen).sum())
    print(f"\n== {len(ids)} tiles of {n_aoi} AOIs, threshold {threshold}, grid {grid}; {root}")
    print(f"{n_fl} tiles show no coast in their known DEM ({t['aoi'][~seen].nunique()} AOIs)")
    print(f"{int(holed.sum())} tiles have DEM holes, {int((t['missing_pct'] > 40).sum())} > 40 %")
    print(pd.DataFrame(rows).to_string(index=False))
    leakage(refs, stats, truth, threshold, grid)


def leakage(refs: list, stats: pd.DataFrame, truth: pd.DataFrame, threshold: float, grid: int):
    """Group and split the training tiles as ``kelpseg run`` does; count straddling AOIs."""
    train = stats[stats["split"] == "train"].reset_index(drop=True)
    ids = train["tile_id"].tolist()
    paths = {r.tile_id: r.image for r in refs}
    g = compute_groups(
        ids,
        [paths[i] for i in ids],
        threshold=threshold,
        grid=grid,
        max_group_size=50,
        shifts=dem_shifts(stats, ids),
    )
    folds = make_folds(train.merge(g[["tile_id", "aoi"]], on="tile_id"), 10, 42)
    t = truth.loc[folds["tile_id"]]
    true_aoi = pd.Series(t["aoi"].to_numpy())
    fold = pd.Series(folds["fold"].to_numpy())
    seen = pd.Series(~g.set_index("tile_id").loc[folds["tile_id"], "featureless"].to_numpy())
    straddles = fold.groupby(true_aoi).transform("nunique") > 1
    # folds of the tiles whose DEM shows where they are, per true AOI
    land_folds = fold.where(seen).groupby(true_aoi).transform("nunique")
    aoi_seen = seen.groupby(true_aoi).transform("any")
    aoi_land = pd.Series(t["water_pct"].to_numpy() < 100).groupby(true_aoi).transform("any")
    ari = adjusted_rand_score(true_aoi[seen], folds["aoi"][seen])
    print(
        f"\n== leakage: {len(ids)} training tiles, {g['aoi'].nunique()} groups "
        f"({g.attrs.get('capped_groups', 0)} split by max_group_size 50), 10 folds; "
        f"ARI {ari:.3f} over tiles with a coast in their known DEM"
    )
    print(
        "tiles with a coast in their known DEM whose true AOI's such tiles straddle folds: "
        f"{int((seen & (land_folds > 1)).sum())} of {int(seen.sum())}"
    )
    print(
        "tiles of a true AOI with land whose true AOI straddles folds: "
        f"{int((straddles & aoi_land).sum())} of {int(aoi_land.sum())}, because of "
        f"{int((~seen & aoi_seen & straddles).sum())} tiles whose known DEM shows no coast "
        "(the coast lies in their holes) while other tiles of their AOI do"
    )


def _joined(true_aoi: pd.Series, groups: pd.DataFrame, which: np.ndarray) -> str:
    """How many of ``which`` tiles share the group most of their true AOI's tiles with land
    in their known DEM are in."""
    pred = pd.Series(groups["aoi"].to_numpy(), index=true_aoi.index)
    seen = ~groups["featureless"].to_numpy()
    modal = pred[seen].groupby(true_aoi.to_numpy()[seen]).agg(lambda s: s.mode().iloc[0])
    ok = pred[which].to_numpy() == modal.loc[true_aoi[which].to_numpy()].to_numpy()
    return f"{int(ok.sum())}/{int(which.sum())}"


def _variants(dems: np.ndarray, n: int) -> np.ndarray:
    out = []
    size = dems.shape[-1]
    for roll in (0, size // 3, 2 * size // 3):
        for k in range(8):
            v = np.rot90(dems, k % 4, axes=(1, 2))
            v = v[:, :, ::-1] if k >= 4 else v
            out.append(np.roll(v, roll, axis=2))
            if sum(len(o) for o in out) >= n:
                return np.concatenate(out)[:n]
    return np.concatenate(out)[:n]


def speed(root: Path, threshold: float, grid: int, n: int, max_group_size: int) -> None:
    paths = [r.image for r in discover(root)]
    t0 = time.perf_counter()
    dems = np.stack([read_dem(p) for p in paths])
    read_per_tile = (time.perf_counter() - t0) / len(paths)
    many = _variants(dems, n)
    t0 = time.perf_counter()
    parts = [pool_dems(many[i : i + 256], grid) for i in range(0, n, 256)]
    pooled = type(parts[0]).concat(parts)
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    labels = group_pooled(pooled, threshold)
    t_group = time.perf_counter() - t0
    t0 = time.perf_counter()
    capped, n_capped = cap_groups(labels, pooled.featureless, max_group_size)
    t_cap = time.perf_counter() - t0
    total = read_per_tile * n + t_embed + t_group + t_cap
    print(f"\n== grouping {n} DEMs ({len(paths)} generated tiles x flips/rotations/shifts)")
    print(
        f"read {1e3 * read_per_tile:.2f} ms/tile -> {read_per_tile * n:.1f} s for {n}; "
        f"pool {t_embed:.1f} s; masked correlation + components {t_group:.1f} s; "
        f"cap at {max_group_size} {t_cap:.2f} s ({n_capped} groups split)"
    )
    print(
        f"total {total:.1f} s for {n} tiles: {labels.max() + 1} groups "
        f"({capped.max() + 1} after the cap), largest {np.bincount(labels).max()}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--aois", type=int, default=80)
    p.add_argument("--size", type=int, default=350)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.97)
    p.add_argument("--grid", type=int, default=16)
    p.add_argument("--tiles", type=int, default=REAL_TILES, help="Tiles for the speed test.")
    p.add_argument("--max-group-size", type=int, default=50)
    p.add_argument("--timm-model", default="resnet50")
    p.add_argument("--timm-weights", type=Path, default=None)
    p.add_argument("--work", type=Path, default=Path("/tmp/kelpseg-bench/groups"))
    p.add_argument("--no-speed", action="store_true", help="Skip the 5,635-tile speed test.")
    args = p.parse_args()
    root = dataset(args.work, args.aois, args.size, args.seed)
    timm = TimmSpec(args.timm_model, args.timm_weights) if args.timm_weights else None
    agreement(root, args.threshold, args.grid, timm)
    if not args.no_speed:
        speed(root, args.threshold, args.grid, args.tiles, args.max_group_size)


if __name__ == "__main__":
    main()
