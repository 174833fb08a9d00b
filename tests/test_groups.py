"""AOI grouping: DEM holes, DEM-shift correction, the size cap, leakage and the timm backend."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from kelpseg.data.groups import (
    NO_DEM,
    TimmSpec,
    capped_groups,
    compute_groups,
    dem_for_grouping,
    dem_shifts,
    load_timm,
    timm_embedding,
)
from kelpseg.data.splits import make_folds
from kelpseg.data.stats import compute_stats
from kelpseg.io import discover, write_raster
from kelpseg.synth import generate, plan, render

NODATA = -32768


def _raw(dem: np.ndarray, hole: np.ndarray | None = None) -> np.ndarray:
    """A 7-band tile around ``dem``; ``hole`` is missing in all seven bands, as real gaps are."""
    raw = np.full((7, *dem.shape), 8000, np.int16)
    raw[5] = 0
    raw[6] = dem
    if hole is not None:
        raw[:, hole] = NODATA
    return raw


def _stripes(size: int, share: float, angle: float = 20.0, period: float = 30.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    t = np.deg2rad(angle)
    return (-xx * np.sin(t) + yy * np.cos(t)) % period < share * period


def _wedge_over_half_the_land(dem: np.ndarray, share: float) -> np.ndarray:
    """A scene-edge half-plane over ``share`` of the tile hiding about half of its land."""
    size = dem.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    land = dem > 0
    best, best_gap = None, 2.0
    for phi in np.linspace(0, 2 * np.pi, 24, endpoint=False):
        u = xx * np.cos(phi) + yy * np.sin(phi)
        wedge = u < np.quantile(u, share)
        gap = abs((wedge & land).sum() / land.sum() - 0.5)
        if gap < best_gap:
            best, best_gap = wedge, gap
    assert best is not None
    return best


@pytest.fixture(scope="module")
def shifted_set(tmp_path_factory: pytest.TempPathFactory):
    """128 px tiles (DEM shifts are a few px, so 64 px tiles are too small to align)."""
    root = tmp_path_factory.mktemp("groups") / "data"
    res = generate(root, aois=14, seed=11, size=128, progress=False)
    refs = discover(root)
    stats = compute_stats(refs, size=128).tiles
    truth = pd.read_csv(res.truth_csv, dtype={"tile_id": str}).set_index("tile_id")
    return refs, stats, truth


def test_correcting_detected_dem_shifts_recovers_the_shifted_tiles(shifted_set) -> None:
    refs, stats, truth = shifted_set
    ids, paths = [r.tile_id for r in refs], [r.image for r in refs]
    t = truth.loc[ids]
    moved = ((t["dem_shift_x"] != 0) | (t["dem_shift_y"] != 0)).to_numpy()
    shifts = dem_shifts(stats, ids)
    assert sum(s != (0, 0) for s in shifts) >= 3
    # a fine grid and a strict threshold make the embedding sensitive to a few px of shift
    plain = compute_groups(ids, paths, grid=16, threshold=0.99)
    fixed = compute_groups(ids, paths, grid=16, threshold=0.99, shifts=shifts)
    seen = ~fixed["featureless"].to_numpy()
    assert (moved & seen).sum() >= 3
    ari_plain = adjusted_rand_score(t["aoi"][seen], plain["aoi"][seen])
    ari_fixed = adjusted_rand_score(t["aoi"][seen], fixed["aoi"][seen])
    print(f"ARI on tiles with DEM information: {ari_plain:.3f} plain, {ari_fixed:.3f} corrected")
    assert ari_fixed >= 0.95, (ari_plain, ari_fixed)
    assert ari_fixed >= ari_plain + 0.05, (ari_plain, ari_fixed)


def test_a_hole_is_unknown_but_offshore_dem_nodata_is_sea() -> None:
    dem = np.array([[120, 0, NODATA, NODATA]], np.int16)
    spectral = np.array([[9000, 8000, 7000, NODATA]], np.int16)
    out = dem_for_grouping(spectral, dem)
    assert out[0, :3].tolist() == [120.0, 0.0, NO_DEM] and np.isnan(out[0, 3])


def test_groups_hold_true_areas_on_holed_dems_and_no_area_straddles_folds(shifted_set) -> None:
    """The default recipe (cap 50, shifts corrected) on DEMs with the holes of real data."""
    refs, stats, truth = shifted_set
    train = stats[stats["split"] == "train"].reset_index(drop=True)
    ids = train["tile_id"].tolist()
    paths = {r.tile_id: r.image for r in refs}
    t = truth.loc[ids]
    g = compute_groups(
        ids, [paths[i] for i in ids], max_group_size=50, shifts=dem_shifts(stats, ids)
    )
    land = ~g["featureless"].to_numpy()
    holed = (t["missing_pct"] > 0).to_numpy() & (t["water_pct"] < 99).to_numpy()
    assert (holed & land).sum() >= 8  # the set has the hard case: land tiles with DEM holes
    ari = adjusted_rand_score(t["aoi"][land], g["aoi"][land])
    assert ari >= 0.98, ari
    folds = make_folds(train.merge(g[["tile_id", "aoi"]], on="tile_id"), 5, 42)
    fold = pd.Series(folds["fold"].to_numpy(), index=folds["tile_id"])
    per_area = fold[land].groupby(t["aoi"].to_numpy()[land]).nunique()
    assert (per_area == 1).all(), per_area[per_area > 1]  # against the TRUE areas


@pytest.mark.parametrize("hole", ["stripes", "wedge"])
def test_tile_with_45_percent_of_its_dem_missing_joins_its_area(tmp_path: Path, hole) -> None:
    aois, tiles = plan(aois=10, seed=6, size=128, acquisitions=(3, 3))
    # no DEM shifts (the test above), and a first date without holes of its own to cut
    tiles = [
        replace(t, dem_shift=(0, 0))
        if t.acquisition
        else replace(t, dem_shift=(0, 0), slc_off=False, scene_edge=0.0)
        for t in tiles
    ]
    images: dict[tuple[int, int], np.ndarray] = {}
    for aoi, tile, r in render(aois, tiles, seed=6, size=128):
        images[(aoi.index, tile.acquisition)] = r.image
    coast = [a.index for a in aois if 0.2 <= a.land_fraction <= 0.7]
    assert len(coast) >= 3
    target = coast[0]
    dem = images[(target, 0)][6]
    assert (dem != NODATA).any() and (images[(target, 0)][:5] != NODATA).all()
    missing = _stripes(128, 0.45) if hole == "stripes" else _wedge_over_half_the_land(dem, 0.45)
    assert 0.43 <= missing.mean() <= 0.47 and (dem[~missing] > 0).any()
    paths, ids, areas = [], [], []
    for (a, j), img in images.items():
        raw = img.copy()
        if (a, j) == (target, 0):
            raw[:, missing] = NODATA  # missing in all seven bands
        paths.append(write_raster(tmp_path / f"T{a}x{j}_satellite.tif", raw))
        ids.append(f"T{a}x{j}")
        areas.append(a)
    g = compute_groups(ids, paths).set_index("tile_id")["aoi"]
    mine = {g[f"T{target}x{j}"] for j in range(3)}
    assert len(mine) == 1, mine  # the holed acquisition is in its area's group
    others = {g[i] for i, a in zip(ids, areas, strict=True) if a != target}
    assert mine.isdisjoint(others)  # and no other area was pulled in


def test_size_cap_only_splits_the_featureless_group(tmp_path: Path) -> None:
    """An area with 60 acquisitions (own holes each) stays ONE group under a cap of 50."""
    size = 64
    yy, xx = np.mgrid[0:size, 0:size]
    coast = 22 + 6 * np.sin(yy / 7)
    dem = np.where(xx < coast, (coast - xx) * 5 + 1, np.where(xx < coast + 6, 0, NODATA))
    rng = np.random.default_rng(0)
    paths, ids = [], []
    for k in range(60):  # one area, 60 dates; a third with SLC-off gaps of their own
        hole = _stripes(size, rng.uniform(0.1, 0.4), rng.uniform(10, 35)) if k % 3 == 0 else None
        paths.append(write_raster(tmp_path / f"A{k:03d}_satellite.tif", _raw(dem, hole)))
        ids.append(f"A{k:03d}")
    sea = np.full((size, size), NODATA)
    for k in range(55):  # open sea: no DEM at all
        paths.append(write_raster(tmp_path / f"S{k:03d}_satellite.tif", _raw(sea)))
        ids.append(f"S{k:03d}")
    g = compute_groups(ids, paths, grid=8, max_group_size=50)
    area, water = g.iloc[:60], g.iloc[60:]
    assert area["aoi"].nunique() == 1 and not area["featureless"].any()
    assert water["featureless"].all() and water["uncapped_aoi"].nunique() == 1
    assert water["aoi"].nunique() == 2 and water.groupby("aoi").size().max() <= 50
    assert set(area["aoi"]).isdisjoint(water["aoi"])
    assert capped_groups(g) == g.attrs["capped_groups"] == 1
    again = compute_groups(ids, paths, grid=8, max_group_size=50)
    assert again["aoi"].tolist() == g["aoi"].tolist()  # deterministic


def test_timm_needs_local_weights_and_never_falls_back() -> None:
    with pytest.raises(ValueError, match="timm_weights"):
        load_timm(TimmSpec("resnet18", None))
    with pytest.raises(FileNotFoundError):
        load_timm(TimmSpec("resnet18", Path("/nonexistent/weights.pth")))


def test_timm_backend_loads_local_weights_and_groups_tiles(tmp_path: Path) -> None:
    import torch

    from kelpseg.compat import ensure_torchvision

    ensure_torchvision()
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=0)
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    spec = TimmSpec("resnet18", weights, input_size=64, batch_size=4)
    model = load_timm(spec)
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name  # the file's weights, not new
    yy, xx = np.mgrid[0:96, 0:96]
    coasts = [xx < 40 + 10 * np.sin(yy / 9), yy < 30 + 0.5 * xx]
    dems = [
        np.where(land, 20.0 + 5 * k, 0.0).astype(np.float32) for k, land in enumerate(coasts * 2)
    ]
    dems.append(np.full((96, 96), np.nan, np.float32))
    emb, featureless = timm_embedding(np.stack(dems), spec, model)
    assert featureless.tolist() == [False] * 4 + [True]
    sim = emb[:4] @ emb[:4].T
    assert sim[0, 2] > sim[0, 1] and sim[1, 3] > sim[1, 0]  # same coast > other coast
    root = tmp_path / "tiles"
    paths = []
    for i, dem in enumerate(dems[:4]):
        raw = np.zeros((7, 96, 96), np.int16)
        raw[6] = np.nan_to_num(dem, nan=-32768).astype(np.int16)
        paths.append(write_raster(root / f"T{i}_satellite.tif", raw))
    g = compute_groups(
        [f"T{i}" for i in range(4)],
        paths,
        embedding="timm",
        timm=spec,
        threshold=float((sim[0, 2] + sim[0, 1]) / 2),
    )
    assert g["aoi"].tolist()[0] == g["aoi"].tolist()[2] != g["aoi"].tolist()[1]
