"""Data-problem detectors (``kelpseg.data.quality``) scored against the synthetic truth.

    python bench/quality.py                      # ~300 tiles: aois=80, size=350
    python bench/quality.py --speed --aois 125   # ~500 tiles: stats throughput, detectors off/on

Part 1 generates a set once (cached under --work), runs ``compute_stats`` (the code path of
``kelpseg stats``) and compares each detector with ``truth.csv``. Part 2 ("injected") renders
the same AOIs in memory and plants problems on purpose, so the rare ones are scored on
hundreds of cases: every kind of corrupted mask on every kelp tile (and the clean mask),
a random DEM shift on every tile with a coast (and the aligned DEM), and SLC-off stripes on
every unstriped tile. Every miss is listed with what the truth says about the tile.

Each detector's false-alarm rate (flags / negatives) is printed beside precision and recall;
for corrupted masks, the negatives are the clean training masks. The generator's QA band has
cloud-mask commission, and the share of clean masks with labelled kelp under QA = 1 is printed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kelpseg.data import quality as q
from kelpseg.data.stats import compute_stats
from kelpseg.io import discover
from kelpseg.io.tiles import NODATA, QA_INDEX, read_mask, read_tile
from kelpseg.synth import generate, plan
from kelpseg.synth.artifacts import corrupt_mask, slc_off_stripes
from kelpseg.synth.plan import MASK_CORRUPTIONS
from kelpseg.synth.render import render_tile
from kelpseg.synth.scene import build_aoi


def score(name: str, truth: pd.Series, pred: pd.Series) -> dict[str, object]:
    """Precision, recall and false-alarm rate (FP / negatives) of boolean predictions."""
    t, p = truth.astype(bool).to_numpy(), pred.astype(bool).to_numpy()
    tp, fp, fn = int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum())
    negatives = int((~t).sum())
    return {
        "detector": name,
        "positives": int(t.sum()),
        "negatives": negatives,
        "TP": tp,
        "FP": fp,
        "FN": fn,
        "precision": round(tp / (tp + fp), 3) if tp + fp else float("nan"),
        "recall": round(tp / (tp + fn), 3) if tp + fn else float("nan"),
        "false_alarms": round(fp / negatives, 4) if negatives else float("nan"),
    }


def commission_line(df: pd.DataFrame) -> str:
    """How hard the QA band is: clean training masks with labelled kelp under a QA flag."""
    clean = df[(df["split"] == "train") & ~df["mask_corrupted"] & (df["kelp_pixels_t"] > 0)]
    under = clean["kelp_under_qa"] > 0
    return (
        f"clean training masks with kelp: {len(clean)}, with labelled kelp under QA = 1: "
        f"{int(under.sum())} ({100 * under.mean():.0f} %)"
    )


def dataset(work: Path, aois: int, size: int, seed: int) -> Path:
    """Generate the set once; returns its root."""
    root = work / f"synth_a{aois}_s{size}_seed{seed}" / "data"
    if not (root / "metadata_fTq0l2T.csv").is_file():
        generate(root, aois=aois, seed=seed, size=size, overwrite=True)
    return root


def natural(root: Path) -> None:
    """Detectors on the generated set, as ``kelpseg stats`` computes them."""
    refs = discover(root)
    res = compute_stats(refs, size=None)
    truth = pd.read_csv(root.parent / "data_truth" / "truth.csv", dtype={"tile_id": str})
    under = {
        r.tile_id: int(((read_tile(r.image)[QA_INDEX] == 1) & (read_mask(r.mask) == 1)).sum())
        for r in refs
        if r.mask is not None
    }
    truth["kelp_under_qa"] = truth["tile_id"].map(under).fillna(0)
    df = res.tiles.merge(truth, on="tile_id", suffixes=("", "_t"))
    train = df[df["split"] == "train"]
    t_shift = np.maximum(df["dem_shift_x_t"].abs(), df["dem_shift_y_t"].abs()) >= 2
    e_shift = df["dem_shifted"] & (
        np.maximum(df["dem_shift_x"].abs(), df["dem_shift_y"].abs()) >= 2
    )
    coast = (df["water_pct"] > 0) & (df["water_pct"] < 100)
    rows = [
        score("corrupted mask (train)", train["mask_corrupted"], train["mask_suspect"]),
        score("DEM shift >= 2 px", t_shift, e_shift),
        score("DEM shift >= 2 px, coast in tile", t_shift[coast], e_shift[coast]),
        score("striping", df["striped_t"], df["striped"]),
        score("saturation", df["saturated_t"], df["saturated"]),
        score("heavy corruption", df["heavy_corrupted"], df["high_corrupted_pixels_pct"]),
        score("almost all water", df["almost_all_water_t"], df["almost_all_water"]),
        score("all land", df["all_land_t"], df["all_land"]),
    ]
    exact = (df["dem_shift_x"] == df["dem_shift_x_t"]) & (df["dem_shift_y"] == df["dem_shift_y_t"])
    print(f"\n== generated set: {len(df)} tiles ({len(train)} train), {root}")
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"DEM shift exact (dx, dy) on detected shifts: {exact[e_shift].mean():.3f}")
    print(commission_line(df))
    flagged = train[~train["mask_corrupted"]]["mask_suspect"]
    print(
        f"false alarms on clean training tiles: {int(flagged.sum())} / {len(flagged)} = "
        f"{100 * flagged.mean():.2f} %"
    )
    cols = ["tile_id", "water_pct", "cloud_pct", "missing_pct"]
    misses = {
        "corrupted masks missed": train[train["mask_corrupted"] & ~train["mask_suspect"]][
            [*cols, "mask_corruption", "kelp_pixels", "true_kelp_pixels"]
        ],
        "clean masks flagged": train[~train["mask_corrupted"] & train["mask_suspect"]][
            [*cols, "mask_suspect_reason", "kelp_pixels"]
        ],
        "DEM shifts missed": df[t_shift & ~e_shift][
            [*cols, "dem_shift_x_t", "dem_shift_y_t", "dem_shift_x", "dem_shift_y",
             "dem_shift_confidence"]
        ],
        "DEM shifts wrongly reported": df[~t_shift & e_shift][
            [*cols, "dem_shift_x_t", "dem_shift_y_t", "dem_shift_x", "dem_shift_y",
             "dem_shift_confidence"]
        ],
        "striping missed / wrong": df[df["striped_t"] != df["striped"]][
            [*cols, "striped_t", "scene_edge", "sensor"]
        ],
    }  # fmt: skip
    for title, frame in misses.items():
        if len(frame):
            print(f"-- {title}:\n{frame.to_string(index=False)}")


def injected(aois: int, size: int, seed: int, shift_seed: int = 7) -> None:
    """Plant corrupted masks, DEM shifts and stripes on rendered tiles and score detection."""
    aoi_plans, tiles = plan(aois=aois, seed=seed, size=size)
    rng = np.random.default_rng(shift_seed)
    masks, shifts, stripes = [], [], []
    for aoi in aoi_plans:
        mine = [t for t in tiles if t.aoi == aoi.index]
        scene = build_aoi(np.random.default_rng([seed, 1, aoi.index]), aoi, size)
        land = scene.crop(scene.land)
        for tile in mine:
            r = render_tile(
                np.random.default_rng([seed, 2, aoi.index, tile.acquisition]), scene, tile
            )
            image = r.image.copy()
            image[6] = scene.crop(scene.dem)  # aligned DEM
            maps = q.tile_maps(image)
            est = q.estimate_dem_shift(maps)
            if r.true_mask.sum() >= 5:
                clean = q.mask_problems(maps, r.true_mask, est)
                masks.append(
                    {
                        "kind": "clean",
                        "corrupted": False,
                        "flagged": bool(clean),
                        "reasons": ";".join(clean),
                        "tile": tile.tile_id,
                        "kelp_px": int(r.true_mask.sum()),
                    }
                )
                for kind in MASK_CORRUPTIONS:
                    bad, applied = corrupt_mask(rng, kind, r.true_mask, land)
                    found = q.mask_problems(maps, bad, est)
                    masks.append(
                        {
                            "kind": applied,
                            "corrupted": True,
                            "flagged": bool(found),
                            "reasons": ";".join(found),
                            "tile": tile.tile_id,
                            "kelp_px": int(bad.sum()),
                            "true_px": int(r.true_mask.sum()),
                            "overlap_px": int((bad & r.true_mask).sum()),
                        }
                    )
            if 0 < (~land).mean() < 1:
                for dx, dy in ((0, 0), tuple(int(v) for v in rng.integers(-5, 6, 2))):
                    shifted = image.copy()
                    shifted[6] = scene.crop(scene.dem, dx, dy)
                    e = q.estimate_dem_shift(q.tile_maps(shifted))
                    shifts.append(
                        {
                            "dx": dx,
                            "dy": dy,
                            "ex": e.dx,
                            "ey": e.dy,
                            "conf": e.confidence,
                            "trusted": e.trusted,
                            "water_pct": 100 * (~land).mean(),
                            "tile": tile.tile_id,
                        }
                    )
            missing = (image[:5] == NODATA).any(axis=0)
            stripes.append({"striped": bool(r.truth["striped"]), "pred": q.is_striped(missing)})
            if not r.truth["striped"]:
                planted = missing | slc_off_stripes(rng, size)
                stripes.append({"striped": True, "pred": q.is_striped(planted)})  # fmt: skip
    m, s, st = pd.DataFrame(masks), pd.DataFrame(shifts), pd.DataFrame(stripes)
    t_shift = np.maximum(s["dx"].abs(), s["dy"].abs()) >= 2
    e_shift = s["trusted"] & (np.maximum(s["ex"].abs(), s["ey"].abs()) >= 2)
    rows = [score("corrupted mask (all kinds)", m["corrupted"], m["flagged"])]
    for kind in sorted(m.loc[m["corrupted"], "kind"].unique()):
        part = m[(m["kind"] == kind) | ~m["corrupted"]]
        rows.append(score(f"  {kind} vs clean", part["corrupted"], part["flagged"]))
    rows += [
        score("DEM shift >= 2 px", t_shift, e_shift),
        score("striping", st["striped"], st["pred"]),
    ]
    print(f"\n== injected problems on {len(tiles)} rendered tiles (size {size})")
    print(pd.DataFrame(rows).to_string(index=False))
    exact = (s["ex"] == s["dx"]) & (s["ey"] == s["dy"])
    print(
        f"DEM shift exact (dx, dy) where trusted: {exact[s['trusted']].mean():.3f} "
        f"({int(s['trusted'].sum())} of {len(s)} coastal tiles trusted)"
    )
    clean = m.loc[~m["corrupted"], "flagged"]
    print(
        f"false alarms on clean masks: {int(clean.sum())} / {len(clean)} = "
        f"{100 * clean.mean():.2f} %"
    )
    missed = m[m["corrupted"] & ~m["flagged"]]
    if len(missed):
        print(f"-- corrupted masks missed:\n{missed.to_string(index=False)}")
    wrong = m[~m["corrupted"] & m["flagged"]]
    if len(wrong):
        print(f"-- clean masks flagged:\n{wrong.to_string(index=False)}")
    bad = s[t_shift != e_shift]
    if len(bad):
        print(f"-- DEM shifts missed / wrongly reported:\n{bad.round(3).to_string(index=False)}")


def speed(root: Path, repeat: int) -> None:
    """``compute_stats`` throughput without and with the detectors (best of ``repeat``)."""
    refs = discover(root)
    compute_stats(refs[:50], size=None)  # warm the page cache and imports
    for quality in (False, True):
        best, cpu = float("inf"), 0.0
        for _ in range(repeat):
            c0 = time.process_time()
            compute_stats(refs, size=None, quality=quality, workers=1)
            cpu = time.process_time() - c0
            t0 = time.perf_counter()
            compute_stats(refs, size=None, quality=quality)
            best = min(best, time.perf_counter() - t0)
        print(
            f"stats, detectors {'on ' if quality else 'off'}: {len(refs)} tiles in {best:.2f} s"
            f" = {len(refs) / best:.0f} tiles/s (best of {repeat}); "
            f"CPU {1e3 * cpu / len(refs):.1f} ms/tile in one process"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--aois", type=int, default=80)
    p.add_argument("--size", type=int, default=350)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/kelpseg-bench/quality"))
    p.add_argument("--speed", action="store_true", help="Only time compute_stats.")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    root = dataset(args.work, args.aois, args.size, args.seed)
    if args.speed:
        speed(root, args.repeat)
        return
    natural(root)
    injected(args.aois, args.size, args.seed)


if __name__ == "__main__":
    main()
