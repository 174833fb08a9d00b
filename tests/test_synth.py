"""The synthetic Kelp-Wanted generator: layout, determinism, and truth that matches the files."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kelpseg.io import read_georef, read_mask, read_tile
from kelpseg.synth import TRUTH_COLUMNS, SynthResult, generate, plan, render
from kelpseg.synth.artifacts import slc_off_stripes
from kelpseg.synth.layout import METADATA_NAME
from kelpseg.synth.noise import fbm
from kelpseg.synth.plan import MASK_CORRUPTIONS

SIZE = 64
NODATA = -32768


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return generate(tmp_path_factory.mktemp("synth") / "data", aois=12, seed=5, size=SIZE)


@pytest.fixture(scope="module")
def truth(synth: SynthResult) -> pd.DataFrame:
    return pd.read_csv(synth.truth_csv, keep_default_na=False)


@pytest.fixture(scope="module")
def tiles(synth: SynthResult, truth: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every tile and mask as read back by kelpseg.io, keyed by tile id."""
    out = {}
    for tid, split in zip(truth["tile_id"], truth["split"], strict=True):
        img = read_tile(synth.root / f"{split}_satellite" / f"{tid}_satellite.tif", size=SIZE)
        mask_dir = synth.root / "train_kelp" if split == "train" else synth.test_masks
        out[tid] = img, read_mask(mask_dir / f"{tid}_kelp.tif", shape=(SIZE, SIZE))
    return out


def _hashes(*roots: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _overlap(a: np.ndarray, b: np.ndarray, ox: int, oy: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of ``a`` and ``b`` such that ``a[y, x]`` faces ``b[y - oy, x - ox]``."""
    h, w = a.shape
    ya, xa = slice(max(oy, 0), h + min(oy, 0)), slice(max(ox, 0), w + min(ox, 0))
    yb, xb = slice(max(-oy, 0), h + min(-oy, 0)), slice(max(-ox, 0), w + min(-ox, 0))
    return a[ya, xa], b[yb, xb]


def _dice(pred: np.ndarray, mask: np.ndarray) -> float:
    return 2 * float((pred & mask).sum()) / max(float(pred.sum() + mask.sum()), 1.0)


def test_layout_and_metadata(synth: SynthResult, truth: pd.DataFrame) -> None:
    assert list(truth.columns) == list(TRUTH_COLUMNS)
    meta = pd.read_csv(synth.root / METADATA_NAME)
    assert list(meta.columns) == ["filename", "type", "tile_id", "in_train"]
    assert set(meta["type"]) == {"satellite", "kelp"}
    for row in meta.itertuples():
        assert row.filename == f"{row.tile_id}_{row.type}.tif"
        folder = f"{'train' if row.in_train else 'test'}_{row.type}"
        assert (synth.root / folder / row.filename).is_file()
    split = dict(zip(truth["tile_id"], truth["split"], strict=True))
    assert set(meta["tile_id"]) == set(split)
    in_train = dict(zip(meta["tile_id"], meta["in_train"], strict=True))
    assert all(split[t] == ("train" if it else "test") for t, it in in_train.items())
    assert not meta[~meta.in_train]["type"].eq("kelp").any()
    assert len(truth) == synth.n_train + synth.n_test and synth.n_test > 0
    assert all(re.fullmatch(r"[A-Z]{2}\d{6}", t) for t in truth["tile_id"])
    assert truth["tile_id"].is_unique


def test_test_masks_hidden_outside_root(synth: SynthResult, truth: pd.DataFrame) -> None:
    assert synth.truth_dir == synth.root.parent / f"{synth.root.name}_truth"
    assert not synth.truth_dir.resolve().is_relative_to(synth.root.resolve())
    assert not (synth.root / "test_kelp").exists()
    test_ids = set(truth.loc[truth["split"] == "test", "tile_id"])
    assert {p.name.split("_")[0] for p in synth.test_masks.glob("*_kelp.tif")} == test_ids
    assert not any(p.name.split("_")[0] in test_ids for p in synth.root.rglob("*_kelp.tif"))
    assert sorted(p.name for p in synth.root.iterdir()) == sorted(
        ["train_satellite", "train_kelp", "test_satellite", METADATA_NAME]
    )


def test_whole_aois_in_one_split(truth: pd.DataFrame) -> None:
    splits = truth.groupby("aoi")["split"].nunique()
    assert (splits == 1).all()
    assert truth.loc[truth["split"] == "test", "aoi"].nunique() >= 1
    assert (truth.groupby("aoi")["acquisition"].count().between(2, 6)).all()


def test_tiles_are_competition_format(tiles: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for img, mask in tiles.values():
        assert img.dtype == np.int16 and img.shape == (7, SIZE, SIZE)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        spectral = img[:5]
        valid = spectral[spectral != NODATA]
        assert valid.size == 0 or valid.min() >= 1
        dem = img[6]
        assert set(np.unique(img[5])) <= {0, 1, NODATA}
        assert (dem[dem != NODATA] >= 0).all() and (dem[dem != NODATA] <= 400).all()


def test_truth_matches_files(truth: pd.DataFrame, tiles: dict) -> None:
    for row in truth.itertuples():
        img, mask = tiles[row.tile_id]
        spectral, qa = img[:5], img[5]
        missing = (spectral == NODATA).any(0)
        assert row.kelp_pixels == int(mask.sum())
        assert row.missing_pct == pytest.approx(100 * missing.mean(), abs=1e-3)
        slc_off = row.sensor == "LE07" and row.date >= "2003-05-31"
        assert row.striped == slc_off == bool((missing & (qa == 1)).any())
        assert (img[6][missing] == NODATA).all()  # the holes are in the DEM band too
        assert row.scene_edge == bool((qa == NODATA).any())
        assert ((qa == NODATA) == (spectral == NODATA).all(0) & (qa == NODATA)).all()
        assert (qa[missing] != 0).all()  # stripes and scene edges are flagged
        assert row.saturated == bool((spectral == 32767).any())
        cloud = (qa == 1) & ~missing  # opaque cloud and the mask's commission
        assert 100 * cloud.mean() >= row.cloud_pct - row.missing_pct - 1e-3
        assert row.heavy_corrupted == ((qa != 0).mean() > 0.7)
        if (row.dem_shift_x, row.dem_shift_y) == (0, 0) and row.missing_pct == 0:
            water = (img[6] <= 0).mean() * 100  # DEM missing (-32768) or 0 at sea
            assert row.water_pct == pytest.approx(water, abs=1e-3)
        assert row.almost_all_water == (row.water_pct > 98)
        assert row.all_land == (row.water_pct == 0)
        if row.mask_corrupted:
            assert row.split == "train" and row.mask_corruption in MASK_CORRUPTIONS
        else:
            assert row.mask_corruption == "" and row.kelp_pixels == row.true_kelp_pixels


def test_kelp_only_where_dem_says_water(truth: pd.DataFrame, tiles: dict) -> None:
    for row in truth[~truth["mask_corrupted"]].itertuples():
        img, mask = tiles[row.tile_id]
        # the DEM was moved by (dx, dy): the mask faces the DEM at (y + dy, x + dx)
        m, dem = _overlap(mask, img[6], -row.dem_shift_x, -row.dem_shift_y)
        assert (dem[m == 1] <= 0).all(), row.tile_id


def test_acquisitions_share_dem_up_to_shift(truth: pd.DataFrame, tiles: dict) -> None:
    compared = 0
    for _, group in truth.groupby("aoi"):
        rows = list(group.itertuples())
        ref = rows[0]
        for other in rows[1:]:
            ox, oy = other.dem_shift_x - ref.dem_shift_x, other.dem_shift_y - ref.dem_shift_y
            a, b = _overlap(tiles[other.tile_id][0][6], tiles[ref.tile_id][0][6], ox, oy)
            ha, hb = (
                (tiles[t][0][:5] == NODATA).all(0) for t in (other.tile_id, ref.tile_id)
            )  # holes (SLC-off gaps, scene edges) differ between acquisitions
            ha, hb = _overlap(ha, hb, ox, oy)
            both = ~ha & ~hb
            np.testing.assert_array_equal(a[both], b[both])
            compared += 1
    assert compared > 0
    assert ((truth["dem_shift_x"] != 0) | (truth["dem_shift_y"] != 0)).any()
    assert truth[["dem_shift_x", "dem_shift_y"]].abs().max().max() <= 5


def test_data_set_has_the_hard_cases(truth: pd.DataFrame) -> None:
    assert (truth["kelp_pixels"] == 0).mean() > 1 / 3
    assert (truth["kelp_pixels"] > 0).sum() >= 5
    assert set(truth["aoi_kind"]) >= {"open_sea", "coast", "mostly_land"}
    for flag in ("striped", "saturated", "mask_corrupted", "heavy_corrupted", "almost_all_water"):
        assert truth[flag].any(), flag
    assert set(truth["sensor"]) >= {"LT05", "LE07", "LC08"}
    confusers = set(";".join(truth["confusers"]).split(";")) - {""}
    assert confusers >= {"surf", "glint", "coastal_vegetation", "cloud_shadow"}
    assert (truth["cloud_pct"] > 0).any() and (truth["cloud_pct"] == 0).any()


def test_dem_has_the_holes_of_real_data_at_the_stated_rates() -> None:
    _, tile_plans = plan(aois=1500, seed=4, size=SIZE)
    slc_off = np.mean([t.slc_off for t in tile_plans])
    edge = np.array([t.scene_edge for t in tile_plans])
    assert 0.15 <= slc_off <= 0.25  # not every Landsat-7 tile: the SLC failed in May 2003
    assert any(t.sensor == "LE07" and not t.slc_off for t in tile_plans)
    assert 0.08 <= (edge > 0).mean() <= 0.14
    assert (edge > 0.4).mean() > 0.01
    rng = np.random.default_rng(0)
    gaps = np.array([slc_off_stripes(rng, 350).mean() for _ in range(200)])
    assert 0.1 < np.median(gaps) < 0.3 and (gaps > 0.4).any()  # wide wedges: > 40 % missing
    aois, tile_plans = plan(aois=24, seed=2, size=96)
    holed = 0
    for _, _, r in render(aois, tile_plans, seed=2, size=96):
        missing = r.layers["stripes"] | r.layers["scene_edge"]
        np.testing.assert_array_equal(r.image[6] == NODATA, missing | (r.image[6] == NODATA))
        assert (r.image[:5, missing] == NODATA).all() and (r.image[6][missing] == NODATA).all()
        holed += bool(missing.any() and (r.image[6] > 0).any())
    assert holed >= 5  # acquisitions with land carry DEMs with their own holes


def test_ndvi_separates_kelp_only_imperfectly(tiles: dict) -> None:
    ndvi, masks, water = [], [], []
    for img, mask in tiles.values():
        nir, red = img[1].astype(np.float32), img[2].astype(np.float32)
        ok = (nir != NODATA) & (red != NODATA)
        ndvi.append(np.where(ok, (nir - red) / np.maximum(nir + red, 1), -1).ravel())
        masks.append(mask.ravel().astype(bool))
        water.append(((img[6] <= 0) & (img[5] == 0)).ravel())
    v, m, w = np.concatenate(ndvi), np.concatenate(masks), np.concatenate(water)

    def best(v: np.ndarray, m: np.ndarray) -> float:
        return max(_dice(v > t, m) for t in np.quantile(v, np.linspace(0.8, 0.9999, 300)))

    assert best(v, m) < 0.9  # vegetated land fires
    water_dice = best(v[w], m[w])
    assert 0.3 < water_dice < 0.9  # kelp is visible, but surf, glint, faint beds confuse


def test_qa_is_one_exactly_on_clouds_commission_and_stripes() -> None:
    aois, tile_plans = plan(aois=6, seed=1, size=SIZE)
    seen_cloud = seen_stripes = False
    for _, _, r in render(aois, tile_plans, seed=1, size=SIZE):
        layers, qa = r.layers, r.image[5]
        edge = layers["scene_edge"]
        flagged = layers["cloud"] | layers["qa_commission"] | layers["stripes"]
        np.testing.assert_array_equal((qa == 1)[~edge], flagged[~edge])
        assert (qa[edge] == NODATA).all()
        bright = r.image[:5, layers["cloud"] & ~layers["stripes"] & ~edge]
        assert ((bright >= 15_000) & (bright <= 25_000) | (bright == 32767)).all()
        assert not (r.true_mask.astype(bool) & (layers["land"] | layers["cloud"])).any()
        seen_cloud |= bool(layers["cloud"].any())
        seen_stripes |= bool(layers["stripes"].any())
    assert seen_cloud and seen_stripes


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kw = {"aois": 3, "size": 48, "acquisitions": (2, 3), "progress": False}
    a = generate(tmp_path / "a" / "set", seed=11, **kw)
    b = generate(tmp_path / "b" / "set", seed=11, **kw)
    c = generate(tmp_path / "c" / "set", seed=12, **kw)
    ha, hb = _hashes(a.root, a.truth_dir), _hashes(b.root, b.truth_dir)
    assert ha == hb and len(ha) > 5
    hc = _hashes(c.root, c.truth_dir)
    tiles_a = {h for k, h in ha.items() if k.endswith("_satellite.tif")}
    tiles_c = {h for k, h in hc.items() if k.endswith("_satellite.tif")}
    assert tiles_a and tiles_a.isdisjoint(tiles_c)  # (empty masks may coincide)


def test_crs_written_only_when_asked(
    tmp_path: Path, synth: SynthResult, truth: pd.DataFrame
) -> None:
    tid = truth["tile_id"].iloc[0]
    plain = read_georef(synth.root / "train_satellite" / f"{tid}_satellite.tif")
    assert not plain.is_georeferenced
    res = generate(tmp_path / "geo", aois=3, seed=2, size=48, crs="EPSG:32611", progress=False)
    t = pd.read_csv(res.truth_csv, keep_default_na=False)
    origins = {}
    for row in t.itertuples():
        tile = res.root / f"{row.split}_satellite" / f"{row.tile_id}_satellite.tif"
        mask_dir = res.root / "train_kelp" if row.split == "train" else res.test_masks
        ref = read_georef(tile)
        assert ref.crs is not None and ref.crs.to_epsg() == 32611
        assert (ref.transform.a, ref.transform.e) == (30.0, -30.0)
        assert read_georef(mask_dir / f"{row.tile_id}_kelp.tif") == ref
        origins.setdefault(row.aoi, set()).add((ref.transform.c, ref.transform.f))
    assert all(len(o) == 1 for o in origins.values())  # one place per AOI
    assert len(set.union(*origins.values())) == len(origins)  # each AOI its own place


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    kw = {"aois": 1, "size": 32, "acquisitions": (1, 1), "progress": False}
    generate(tmp_path / "set", seed=0, **kw)
    with pytest.raises(FileExistsError):
        generate(tmp_path / "set", seed=0, **kw)
    res = generate(tmp_path / "set", seed=1, overwrite=True, **kw)
    assert len(list(res.root.rglob("*.tif"))) == 2
    with pytest.raises(ValueError, match="outside"):
        generate(tmp_path / "x", truth_dir=tmp_path / "x" / "truth", **kw)


def test_plan_splits_and_small_sets() -> None:
    for n in (1, 2, 3, 10, 30):
        aois, _ = plan(aois=n, seed=0, size=SIZE)
        n_test = sum(a.split == "test" for a in aois)
        assert n_test == 0 if n < 3 else 1 <= n_test < n
        if n >= 10:
            kinds = [a.kind for a in aois]
            assert kinds.count("open_sea") >= 2 and "mostly_land" in kinds
    with pytest.raises(ValueError):
        plan(aois=0)


def test_fbm_is_standardized_and_smooth() -> None:
    field = fbm(np.random.default_rng(0), (128, 96), 32, octaves=3)
    assert field.shape == (128, 96) and field.dtype == np.float32
    assert abs(field.mean()) < 1e-4 and field.std() == pytest.approx(1, abs=1e-4)
    assert np.abs(np.diff(field, axis=0)).mean() < 0.3  # neighbours are correlated
