"""Where kelp can grow (kelpseg.geo.reach): which windows `kelpseg map` skips, and that kelp
within reach never changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import box

from kelpseg.config import load_config
from kelpseg.geo.reach import LAND, OFFSHORE, pixel_size_m, scene_reach
from kelpseg.infer.ensemble import Members
from kelpseg.infer.sliced import (
    ArraySource,
    RasterSource,
    WindowCounts,
    predict_sliced,
    window_offsets,
)
from kelpseg.io.landsat import stack_scene
from kelpseg.io.tiles import NODATA
from kelpseg.synth.landsat import write_landsat_scene
from kelpseg.train.module import KelpSegModule

WINDOW, OVERLAP = 64, 16


@pytest.fixture(scope="module")
def model() -> KelpSegModule:
    torch.manual_seed(0)
    return KelpSegModule(load_config("tiny").model_dump(mode="json")).eval()


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 384 px synthetic Landsat scene stacked with its DEM, and its truth (1 kelp)."""
    tmp = tmp_path_factory.mktemp("reach")
    s = write_landsat_scene(tmp / "scene", size=384, seed=0)
    stacked = tmp / "stack.tif"
    stack_scene(s.folder, stacked, s.dem)
    with rasterio.open(s.truth) as src:
        truth = src.read(1)
    assert (truth == 1).sum() > 500
    return stacked, truth


def _windows(h: int, w: int) -> list[tuple[int, int]]:
    rows = window_offsets(h, WINDOW, WINDOW - OVERLAP)
    cols = window_offsets(w, WINDOW, WINDOW - OVERLAP)
    return [(r, c) for r in rows for c in cols]


def _coastal(h: int = 400, w: int = 2400) -> np.ndarray:
    """Land in the first 100 columns, DEM 0 for 10 px offshore, missing beyond (open sea)."""
    raw = np.full((7, h, w), 8000, np.int16)
    raw[5] = 0
    raw[6] = NODATA
    raw[6, :, :100] = 50
    raw[6, :, 100:110] = 0
    return raw


@pytest.mark.parametrize("max_offshore_m", [5000.0, 1000.0])
def test_windows_holding_truth_kelp_are_never_skipped(scene, max_offshore_m: float) -> None:
    """At the default distance and at a tight 1 km (the generator's kelp grows <= 900 m from
    the shore), no window that holds a truth kelp pixel is skipped; at 1 km some are."""
    stacked, truth = scene
    with rasterio.open(stacked) as src:
        source = RasterSource(src)
        reach = scene_reach(
            source, max_offshore_m=max_offshore_m, crs=src.crs, transform=src.transform
        )
        reasons = {}
        for r, c in _windows(src.height, src.width):
            reasons[r, c] = reach.why_skip(source.read(r, c, WINDOW, WINDOW), r, c)
    assert reach.step == 1 and reach.max_offshore_m == max_offshore_m
    for (r, c), why in reasons.items():
        if (truth[r : r + WINDOW, c : c + WINDOW] == 1).any():
            assert why is None, (r, c, why)
    skipped = {why for why in reasons.values()}
    assert LAND in skipped
    if max_offshore_m == 1000.0:
        assert OFFSHORE in skipped


def test_kept_windows_predict_bit_for_bit_and_kelp_dice_cannot_drop(scene, model) -> None:
    """Skipping changes no probability a kept window gives (bit for bit) wherever only kept
    windows reach; truth kelp lies there, so TP and FN are unchanged and FP can only drop.
    Batch 1 (the CPU default): in larger batches the batch's make-up changes the network's
    float rounding (~1e-7) whether or not windows are skipped."""
    stacked, truth = scene
    engine = Members([model], [1.0])
    runs = {}
    with rasterio.open(stacked) as src:
        source = RasterSource(src)
        reach = scene_reach(source, max_offshore_m=1000.0, crs=src.crs, transform=src.transform)
        for name, rule in (("skip", reach.why_skip), ("all", None)):
            counts = WindowCounts()
            bands = predict_sliced(
                engine,
                source,
                window=WINDOW,
                overlap=OVERLAP,
                batch_size=1,
                progress=False,
                skip=rule,
                counts=counts,
            )
            runs[name] = (np.concatenate([b.mean for b in bands]), counts)
        kept = np.zeros(truth.shape, bool)  # pixels that only predicted windows cover
        skipped = np.zeros(truth.shape, bool)
        for r, c in _windows(src.height, src.width):
            why = reach.why_skip(source.read(r, c, WINDOW, WINDOW), r, c)
            (skipped if why else kept)[r : r + WINDOW, c : c + WINDOW] = True
    (p_skip, n_skip), (p_all, n_all) = runs["skip"], runs["all"]
    only_kept = kept & ~skipped
    assert np.array_equal(p_skip[only_kept], p_all[only_kept])
    assert (p_skip[skipped & ~kept] == 0).all()
    assert only_kept[truth == 1].all()
    assert n_all.predicted == n_all.total and n_skip.total == n_all.total
    assert 0 < n_skip.predicted < n_all.total
    assert n_skip.skipped.get("land", 0) > 0 and n_skip.skipped.get("offshore", 0) > 0
    judged = truth != 255
    for t in (0.3, 0.5, 0.7):
        a, b = (p_skip >= t) & judged, (p_all >= t) & judged
        k = truth == 1
        assert (a & k).sum() == (b & k).sum()  # TP, hence FN
        assert (a & ~k).sum() <= (b & ~k).sum()  # FP


def test_decimation_keeps_a_one_pixel_islet_and_a_one_pixel_channel() -> None:
    """A 1 px rock far offshore keeps the water around it; a 1 px channel of water keeps its
    window off the land list; the grid is coarser than a pixel here (step 3)."""
    raw = _coastal()
    raw[6, 200, 1700] = 3  # a rock, 48 km offshore
    source = ArraySource(raw)
    reach = scene_reach(source, max_offshore_m=3000.0)
    assert reach.step == 3
    assert reach.why_skip(raw[:, 168:232, 1668:1732], 168, 1668) is None  # around the rock
    assert reach.why_skip(raw[:, 168:232, 1400:1464], 168, 1400) == OFFSHORE
    land = raw[:, 0:64, 0:64].copy()
    assert reach.why_skip(land, 0, 0) == LAND
    raw[6, 30, :100] = 0  # a one-pixel channel of water through the land
    assert reach.why_skip(raw[:, 0:64, 0:64], 0, 0) is None


def test_no_land_no_offshore_skipping_and_edges_count_as_coast() -> None:
    raw = _coastal()
    raw[6] = NODATA  # no DEM: no coast to measure from
    reach = scene_reach(ArraySource(raw))
    assert reach.max_offshore_m is None and "no land" in reach.note
    assert reach.why_skip(raw[:, 168:232, 1000:1064], 168, 1000) is None

    raw = _coastal()
    reach = scene_reach(ArraySource(raw), max_offshore_m=3000.0)
    # the raster's right edge may hide a coast: the last 100 px (3 km) are kept
    assert reach.why_skip(raw[:, 168:232, 2336:2400], 168, 2336) is None
    assert reach.why_skip(raw[:, 168:232, 2200:2264], 168, 2200) == OFFSHORE
    bare = scene_reach(ArraySource(raw), max_offshore_m=3000.0, edges_are_coast=False)
    assert bare.why_skip(raw[:, 168:232, 2336:2400], 168, 2336) == OFFSHORE
    # a wide fill collar may hide one too; a narrow fill stripe (SLC-off) does not
    collar, stripes = raw.copy(), raw.copy()
    collar[:, :, 1900:] = NODATA
    stripes[:, :, 1500:1510] = NODATA
    far = (168, 1750)
    win = np.s_[:, 168:232, 1750:1814]
    assert (
        scene_reach(ArraySource(collar), max_offshore_m=3000.0).why_skip(collar[win], *far) is None
    )
    striped = scene_reach(ArraySource(stripes), max_offshore_m=3000.0)
    assert striped.why_skip(stripes[win], *far) == OFFSHORE
    # 0 / None: never offshore; land still
    never = scene_reach(ArraySource(raw), max_offshore_m=0)
    assert never.why_skip(raw[:, 168:232, 2200:2264], 168, 2200) is None
    assert never.why_skip(raw[:, 168:232, 0:64], 168, 0) == LAND


def test_outside_the_dem_footprint_is_never_skipped() -> None:
    raw = _coastal()
    t = Affine(30, 0, 500_000, 0, -30, 4_000_000)
    inside = box(500_000, 4_000_000 - 400 * 30, 500_000 + 2000 * 30, 4_000_000)  # not x >= 2000
    reach = scene_reach(
        ArraySource(raw), max_offshore_m=100_000.0, crs=CRS.from_epsg(32611), transform=t,
        footprint=inside.difference(box(500_000, 4_000_000 - 30, 500_000 + 30, 4_000_000)),
    )  # fmt: skip
    assert reach.why_skip(raw[:, 100:164, 1960:2024], 100, 1960) is None  # touches x >= 2000
    assert reach.why_skip(raw[:, 0:64, 0:64], 0, 0) is None  # land, but its corner pixel: code 3
    assert reach.why_skip(raw[:, 100:164, 0:64], 100, 0) == LAND


def test_pixel_size_from_the_crs() -> None:
    utm = Affine(30, 0, 500_000, 0, -30, 4_000_000)
    assert pixel_size_m(CRS.from_epsg(32611), utm, 100) == (30.0, 30.0)
    assert pixel_size_m(None, None, 100) == (30.0, 30.0)
    feet = CRS.from_epsg(2229)  # California zone 5, US survey feet
    dy, dx = pixel_size_m(feet, Affine(100, 0, 0, 0, -100, 0), 10)
    assert dy == pytest.approx(30.48, rel=1e-4) and dx == dy
    geo = Affine(1 / 3600, 0, -120, 0, -1 / 3600, 34.5)
    dy, dx = pixel_size_m(CRS.from_epsg(4326), geo, 3600)
    assert dy == pytest.approx(30.92, rel=1e-3)
    assert dx == pytest.approx(30.92 * np.cos(np.radians(34.5)), rel=1e-3)


def test_map_records_its_windows(scene, tmp_path: Path) -> None:
    from tests.test_predict import _save

    stacked, _ = scene
    torch.manual_seed(0)
    cfg = load_config("tiny", ["data.tile_size=64"]).model_dump(mode="json")
    ckpt = _save(KelpSegModule(cfg).eval(), tmp_path / "m.ckpt")
    from typer.testing import CliRunner

    from kelpseg.cli import app

    res = CliRunner().invoke(
        app, ["map", "-m", str(ckpt), str(stacked), "-o", str(tmp_path / "maps"),
              "--max-offshore-m", "1000"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = json.loads(next((tmp_path / "maps").glob("*/scene.json")).read_text())
    w = meta["windows"]
    assert w["max_offshore_m"] == 1000.0 and w["total"] == len(_windows(384, 384))
    assert (
        w["predicted"] + w["skipped_fill"] + w["skipped_land"] + w["skipped_offshore"]
        == (w["total"])
    )
    assert w["skipped_land"] > 0 and w["skipped_offshore"] > 0
