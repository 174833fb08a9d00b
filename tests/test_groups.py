"""AOI grouping: DEM-shift correction, the size cap and the timm backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from kelpseg.data.groups import (
    TimmSpec,
    cap_groups,
    capped_groups,
    compute_groups,
    dem_shifts,
    group_embeddings,
    load_timm,
    timm_embedding,
)
from kelpseg.data.stats import compute_stats
from kelpseg.io import discover, write_raster
from kelpseg.synth import generate


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


def test_cap_splits_giant_groups_deterministically() -> None:
    rng = np.random.default_rng(0)
    # two tight clusters chained into one component at 0.9, plus 7 featureless tiles
    a = rng.normal(size=16)
    b = a + 0.6 * rng.normal(size=16)
    pts = [a + 0.02 * rng.normal(size=16) for _ in range(5)]
    pts += [b + 0.02 * rng.normal(size=16) for _ in range(5)]
    emb = np.array(pts)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    emb = np.vstack([emb, np.zeros((7, 16))])
    featureless = np.r_[np.zeros(10, bool), np.ones(7, bool)]
    threshold = float(np.dot(emb[0], emb[5])) - 0.01  # the clusters join at this threshold
    labels = group_embeddings(emb, featureless, threshold)
    assert np.bincount(labels).tolist() == [10, 7]
    capped, n = cap_groups(labels, emb, featureless, threshold, max_size=5)
    assert n == 2
    assert np.bincount(capped).max() <= 5
    assert len(set(capped[:5])) == 1 and len(set(capped[5:10])) == 1  # clusters kept whole
    assert set(capped[:5]).isdisjoint(capped[5:10])
    again, _ = cap_groups(labels, emb, featureless, threshold, max_size=5)
    assert np.array_equal(capped, again)


def test_compute_groups_reports_the_cap(synth_data) -> None:
    refs = [r for r in discover(synth_data.root) if r.split == "train"]
    ids, paths = [r.tile_id for r in refs], [r.image for r in refs]
    free = compute_groups(ids, paths, grid=8)
    big = int(free.groupby("aoi").size().max())
    capped = compute_groups(ids, paths, grid=8, max_group_size=big - 1)
    assert capped.groupby("aoi").size().max() <= big - 1
    assert capped_groups(capped) == capped.attrs["capped_groups"] >= 1
    assert capped_groups(free) == 0


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
