"""HLS v2 granules (L30, S30) stacked into the model's 7-band input, against the generator."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import rasterio

from kelpseg.io.hls import (
    HLS_BANDS,
    HlsError,
    find_granules,
    fmask_bits,
    granule_date,
    parse_name,
    read_granule,
    stack_hls,
)
from kelpseg.io.landsat import SENSOR_BANDS
from kelpseg.io.sources import find_sources
from kelpseg.synth.sensors import SyntheticGranule, write_hls_granule

SIZE = 72
NODATA = -32768


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture(scope="module")
def granules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[SyntheticGranule, Path]]:
    """An L30 and an S30 granule of one area, each stacked with its DEM (small windows)."""
    out = {}
    for product in ("L30", "S30"):
        root = tmp_path_factory.mktemp(product)
        g = write_hls_granule(
            root, product=product, size=SIZE, seed=5, cloud_fraction=0.2, kelp_abundance=0.9
        )
        stacked = root / "stacked.tif"
        stack_hls(read_granule(g.folder), stacked, g.dem, block=32)
        out[product] = (g, stacked)
    return out


@pytest.mark.parametrize("product", ["L30", "S30"])
def test_bands_are_the_products_bands_as_landsat_dn(granules, product) -> None:
    g, stacked = granules[product]
    st = _read(stacked)
    truth = _read(g.truth)[0]
    valid = truth != 255
    for i, band in enumerate(HLS_BANDS[product]):
        v = _read(g.band(band))[0].astype(np.float64)
        expected = np.clip(np.rint((v * 1e-4 + 0.2) / 2.75e-5), 1, 32767)
        assert np.array_equal(st[i][valid], expected[valid]), band
        # the same surface as the Landsat render, within HLS's 1e-4 quantisation (3.6 DN)
        landsat = g.render.sr[SENSOR_BANDS["LANDSAT_8"][i]].astype(np.float64)
        assert np.abs(st[i][valid] - landsat[valid]).max() <= 2.5


@pytest.mark.parametrize("product", ["L30", "S30"])
def test_fill_is_missing_in_all_seven_bands(granules, product) -> None:
    g, stacked = granules[product]
    st = _read(stacked)
    fill = _read(g.truth)[0] == 255
    assert fill.any() and not fill.all()
    assert (st[:, fill] == NODATA).all()
    assert (st[:5, ~fill] != NODATA).all() and (st[5, ~fill] != NODATA).all()


def test_qa_is_one_where_fmask_flags_cloud_adjacent_or_shadow(granules, tmp_path: Path) -> None:
    g, stacked = granules["L30"]
    st = _read(stacked)
    fm = _read(g.band("Fmask"))[0]
    valid = fm != 255
    assert np.array_equal(st[5][valid] == 1, (fm[valid] & 0b1110) != 0)
    cloud = ((g.render.qa_pixel >> 3) & 1).astype(bool)  # where the generator put cloud
    assert cloud[valid].any() and (st[5][valid & cloud] == 1).all()
    # cirrus on request (bit 0): QA grows by the cirrus-only pixels
    out = tmp_path / "cirrus.tif"
    stack_hls(read_granule(g.folder), out, qa_bits=["cloud", "dilated_cloud", "cloud_shadow",
                                                     "cirrus"])  # fmt: skip
    qa = _read(out)[5]
    assert np.array_equal(qa[valid] == 1, (fm[valid] & 0b1111) != 0)
    assert (qa[valid] >= st[5][valid]).all()


def test_grid_dem_and_tags(granules) -> None:
    g, stacked = granules["S30"]
    with rasterio.open(g.band("B8A")) as src, rasterio.open(stacked) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.width, dst.height) == (SIZE, SIZE)
        assert dst.dtypes[0] == "int16" and dst.nodata == NODATA
        tags = dst.tags()
        dem = dst.read(7)
    assert tags["scene_id"] == g.granule_id and tags["sensor"] == "HLS_S30"
    assert tags["date"] == "2021-08-15" and tags["footprint"] == g.tile
    assert tags["bands"] == "B11,B8A,B04,B03,B02,Fmask,DEM"
    land = g.render.land & (_read(g.truth)[0] != 255)
    assert (dem[land] > 0).mean() > 0.8  # the DEM was reprojected onto the granule


def test_names_and_dates() -> None:
    p = parse_name("HLS.S30.T11SKU.2020060T183919.v2.0.B8A.tif")
    assert p is not None and (p["product"], p["tile"], p["band"]) == ("S30", "T11SKU", "B8A")
    assert granule_date(p["year"], p["doy"]) == dt.date(2020, 2, 29)  # leap year
    assert granule_date(2021, 227) == dt.date(2021, 8, 15)
    assert parse_name("hls.l30.t11sku.2021227T183919.v2.0.fmask.tif") is not None
    assert parse_name("LC08_L2SP_042036_20210815_20210826_02_T1_SR_B5.TIF") is None
    assert fmask_bits(None) == ("cloud", "dilated_cloud", "cloud_shadow")
    with pytest.raises(ValueError, match="no HLS Fmask bit"):
        fmask_bits(["cloud_conf_high"])


def test_a_folder_of_several_granules_and_a_missing_band(tmp_path: Path) -> None:
    """Two granules' files side by side are two granules; one missing its NIR band is one
    error naming that file, and the other is still found."""
    a = write_hls_granule(tmp_path / "a", product="L30", size=64, seed=1)
    b = write_hls_granule(tmp_path / "b", product="S30", size=64, seed=2)
    flat = tmp_path / "flat"
    flat.mkdir()
    for g in (a, b):
        for f in g.folder.iterdir():
            f.rename(flat / f.name)
    (flat / f"{a.granule_id}.B05.tif").unlink()
    found, errors = find_granules(sorted(flat.iterdir()))
    assert [g.granule_id for g in found] == [b.granule_id]
    assert len(errors) == 1 and isinstance(errors[0], HlsError)
    assert errors[0].path == flat / f"{a.granule_id}.B05.tif"
    assert "missing" in errors[0].problem
    sources, errs = find_sources([flat])
    assert [(s.kind, s.scene_id, s.footprint) for s in sources] == [("hls", b.granule_id, b.tile)]
    assert [e.path for e in errs] == [flat / f"{a.granule_id}.B05.tif"]
