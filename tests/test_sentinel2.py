"""Sentinel-2 L2A .SAFE products stacked at 30 m, against the generator's own expectation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.drivers import raster_driver_extensions

from kelpseg.io.landsat import SENSOR_BANDS
from kelpseg.io.sentinel2 import (
    Sentinel2Error,
    band_name,
    baseline_at_least,
    parse_mtd,
    read_safe,
    scl_classes,
    stack_safe,
)
from kelpseg.io.sources import find_sources
from kelpseg.synth.sensors import SyntheticSafe, area_average, write_sentinel2_safe

SIZE = 64  # 30 m pixels: 192 px at 10 m, 96 px at 20 m
NODATA = -32768
BASELINES = ("04.00", "02.14")


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[SyntheticSafe, Path]]:
    """One surface written under a baseline with the +1000 offset and one without, each
    stacked in windows of 32 px."""
    out = {}
    for baseline in BASELINES:
        root = tmp_path_factory.mktemp(f"s2_{baseline}")
        safe = write_sentinel2_safe(
            root, size=SIZE, seed=7, baseline=baseline, cloud_fraction=0.2, kelp_abundance=0.9
        )
        stacked = root / "stacked.tif"
        stack_safe(safe.path, stacked, safe.dem, block=32)
        out[baseline] = (safe, stacked)
    return out


def test_the_wheel_reads_and_writes_jpeg2000() -> None:
    """The synthetic .SAFE has real .jp2 bodies, so the reader is tested on JPEG2000."""
    assert raster_driver_extensions().get("jp2") == "JP2OpenJPEG"


def test_bands_are_area_averages_of_the_10_and_20_m_bands(products) -> None:
    safe, stacked = products["04.00"]
    st = _read(stacked)
    valid = _read(safe.truth)[0] != 255
    assert valid.mean() > 0.5
    for i, key in enumerate(("B11", "B8A", "B04", "B03", "B02")):
        path = safe.bands[key]
        assert path.suffix == ".jp2" and path.is_file()
        dn = _read(path)[0].astype(np.float64)
        res = 20.0 if key in ("B11", "B8A") else 10.0
        rho = (area_average(dn, res, (SIZE, SIZE)) - 1000.0) / 10_000.0
        expected = np.clip(np.rint((rho + 0.2) / 2.75e-5), 1, 32767)
        diff = np.abs(st[i].astype(np.float64) - expected)[valid]
        assert diff.max() <= 1, key  # GDAL's average in float32 vs exact: rounding only
    # B02-B04 come from the 10 m files, not from the 20 m copies the product also carries
    dn20 = _read(safe.bands["B02@20"])[0].astype(np.float64)
    from20 = np.rint(((area_average(dn20, 20.0, (SIZE, SIZE)) - 1000) / 1e4 + 0.2) / 2.75e-5)
    assert (np.abs(st[4] - from20)[valid] > 1).any()


def test_the_stack_is_the_rendered_surface(products) -> None:
    """Same coast, kelp and clouds as the Landsat render: 10 m bands within noise, 20 m bands
    (which also mix neighbouring 30 m pixels) close in the median."""
    safe, stacked = products["04.00"]
    st = _read(stacked).astype(np.float64)
    valid = _read(safe.truth)[0] != 255
    for i, n in enumerate(SENSOR_BANDS["LANDSAT_8"]):
        d = np.abs(st[i] - safe.render.sr[n])[valid]
        assert np.median(d) < (200 if i < 2 else 30), n


def test_same_surface_gives_the_same_dn_under_both_baselines(products) -> None:
    new, old = products["04.00"], products["02.14"]
    assert read_safe(new[0].path).offsets == (-1000.0,) * 5
    assert read_safe(old[0].path).offsets == (0.0,) * 5
    b02_new, b02_old = _read(new[0].bands["B02"])[0], _read(old[0].bands["B02"])[0]
    ok = b02_old > 0
    assert (b02_new[ok].astype(int) - b02_old[ok] == 1000).all()  # the files differ...
    assert np.array_equal(_read(new[1]), _read(old[1]))  # ...the stacks do not
    with rasterio.open(new[1]) as a, rasterio.open(old[1]) as b:
        assert a.tags()["boa_add_offset"] == "-1000,-1000,-1000,-1000,-1000"
        assert b.tags()["boa_add_offset"] == "0,0,0,0,0"
        assert a.tags()["processing_baseline"] == "04.00"


def test_fill_where_any_nodata_or_defective_pixel_overlaps(products) -> None:
    safe, stacked = products["04.00"]
    st = _read(stacked)
    fill = _read(safe.truth)[0] == 255
    scl = _read(safe.bands["SCL"])[0]
    assert (scl == 1).any() and (scl == 0).any()  # a defective patch and nodata
    assert np.array_equal(st[0] == NODATA, fill)
    assert (st[:, fill] == NODATA).all()
    # a defective patch in open water is missing, though its bands hold values
    defective = np.argwhere(scl == 1)[0]
    r, c = (defective * 20) // 30
    assert (st[:, r, c] == NODATA).all()


def test_a_saturated_10_m_pixel_makes_its_30_m_pixel_missing(products, tmp_path: Path) -> None:
    safe, stacked = products["02.14"]
    copy = tmp_path / safe.path.name
    shutil.copytree(safe.path, copy)
    b02 = next(copy.rglob("*_B02_10m.jp2"))
    with rasterio.open(b02) as src:
        data, crs, transform = src.read(1), src.crs, src.transform
    valid = np.argwhere(_read(safe.truth)[0] != 255)
    r, c = valid[len(valid) // 2]
    data[3 * r + 1, 3 * c + 2] = 65535
    lossless = {"QUALITY": 100, "REVERSIBLE": "YES"}
    shape = {"width": data.shape[1], "height": data.shape[0], "count": 1, "dtype": "uint16"}
    with rasterio.open(
        b02, "w", driver="JP2OpenJPEG", crs=crs, transform=transform, **shape, **lossless
    ) as dst:
        dst.write(data, 1)
    out = tmp_path / "sat.tif"
    stack_safe(copy, out, safe.dem, block=32)
    before, after = _read(stacked), _read(out)
    assert (after[:, r, c] == NODATA).all() and (before[:, r, c] != NODATA).all()
    after[:, r, c] = before[:, r, c]
    assert np.array_equal(before, after)


def test_qa_is_one_where_any_flagged_scl_pixel_overlaps(products) -> None:
    safe, stacked = products["04.00"]
    qa = _read(stacked)[5]
    valid = _read(safe.truth)[0] != 255
    assert np.array_equal(qa[valid] == 1, safe.expected_qa[valid])
    cloud = ((safe.render.qa_pixel >> 3) & 1).astype(bool)  # where the generator put cloud
    assert (cloud & valid).any() and (qa[cloud & valid] == 1).all()
    assert set(np.unique(qa[valid])) == {0, 1}


def test_the_30_m_grid_is_the_tiles_own(products, tmp_path: Path) -> None:
    safe, stacked = products["04.00"]
    with rasterio.open(safe.bands["B02"]) as b02, rasterio.open(stacked) as st:
        assert st.crs == b02.crs
        t10, t = b02.transform, st.transform
        assert (t.c, t.f) == (t10.c, t10.f) and (t.a, t.e) == (30.0, -30.0)
        assert (st.width, st.height) == (b02.width // 3, b02.height // 3) == (SIZE, SIZE)
        assert st.tags()["scene_id"] == safe.product_id
        assert st.tags()["sensor"] == "SENTINEL_2A" and st.tags()["footprint"] == safe.tile
    # another window size gives the same raster (an odd block is made even)
    other = tmp_path / "b17.tif"
    stack_safe(safe.path, other, safe.dem, block=17)
    a, b = _read(stacked), _read(other)
    assert np.array_equal(a[:6], b[:6]) and np.abs(a[6].astype(int) - b[6]).max() <= 1


def test_metadata_parsing() -> None:
    assert band_name("B1") == "B01" and band_name("b8a") == "B8A" and band_name("B11") == "B11"
    assert baseline_at_least("04.00", 4) and baseline_at_least("N0500", 4)
    assert not baseline_at_least("03.01", 4) and not baseline_at_least("N0214", 4)
    assert scl_classes(None)[1] == (3, 8, 9, 10)
    assert scl_classes(["cloud_conf_high"])[1] == (9,)
    assert scl_classes(["fill", "dilated_cloud", "cloud", "cloud_shadow", "cirrus"])[1] == (
        3,
        8,
        9,
        10,
    )  # fmt: skip  (Landsat's default names map onto SCL's default classes)
    with pytest.raises(ValueError, match="no Sentinel-2 SCL class"):
        scl_classes(["shadow_conf_high"])


def test_broken_products_are_one_error_naming_the_file(products, tmp_path: Path) -> None:
    good = products["02.14"][0]
    root = tmp_path / "tree"
    root.mkdir()
    shutil.copytree(good.path, root / good.path.name)
    # no MTD_MSIL2A.xml
    no_mtd = root / "S2B_MSIL2A_20210101T000000_N0400_R001_T11SKU_20210101T000000.SAFE"
    shutil.copytree(products["04.00"][0].path, no_mtd)
    (no_mtd / "MTD_MSIL2A.xml").unlink()
    sources, errors = find_sources([root])
    assert [s.scene_id for s in sources] == [good.product_id]
    assert [(e.path, "missing" in e.problem) for e in errors] == [(no_mtd / "MTD_MSIL2A.xml", True)]
    with pytest.raises(Sentinel2Error, match=r"MTD_MSIL2A\.xml: missing"):
        read_safe(no_mtd)
    # a band file missing
    (no_mtd / "MTD_MSIL2A.xml").write_text((good.path / "MTD_MSIL2A.xml").read_text())
    next(no_mtd.rglob("*_B11_20m.jp2")).unlink()
    with pytest.raises(Sentinel2Error, match=r"B11_20m\.jp2: missing"):
        read_safe(no_mtd)
    # baseline 04.00 without its offsets
    bad = tmp_path / "bad.SAFE"
    shutil.copytree(products["04.00"][0].path, bad)
    mtd = bad / "MTD_MSIL2A.xml"
    text = mtd.read_text()
    start, end = (
        text.index("<BOA_ADD_OFFSET_VALUES_LIST>"),
        text.index("</BOA_ADD_OFFSET_VALUES_LIST>"),
    )
    mtd.write_text(text[:start] + text[end + len("</BOA_ADD_OFFSET_VALUES_LIST>") :])
    assert parse_mtd(mtd)["offsets"] == {}
    with pytest.raises(Sentinel2Error, match="no BOA_ADD_OFFSET"):
        read_safe(bad)
    # a Level-1C product
    l1c = tmp_path / "S2A_MSIL1C_x.SAFE"
    l1c.mkdir()
    (l1c / "MTD_MSIL1C.xml").write_text("<x/>")
    with pytest.raises(Sentinel2Error, match="Level-1C"):
        read_safe(l1c)
