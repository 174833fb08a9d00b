"""The spectral index registry beyond the 17-index table: spyndex by name, and `kelpseg indices`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import spyndex
import torch
from affine import Affine
from rasterio.crs import CRS
from typer.testing import CliRunner

from kelpseg.config import ConfigError, load_config
from kelpseg.features.export import compute_indices
from kelpseg.features.indices import INDICES, Bands, UnknownIndexError, lookup, resolve
from kelpseg.features.pipeline import FeatureBuilder
from kelpseg.io import Georef, write_raster

BAND_SYMBOLS = {"B": 4, "G": 3, "R": 2, "N": 1, "S1": 0}  # spyndex symbol -> tile band row


def _bands(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], Bands]:
    arrs = {s: rng.uniform(0.02, 0.5, size=(2, 8, 8)) for s in BAND_SYMBOLS}
    dem = rng.uniform(-5, 50, size=(2, 8, 8))
    t = {k: torch.from_numpy(v) for k, v in arrs.items()}
    return arrs, Bands(S=t["S1"], N=t["N"], R=t["R"], G=t["G"], B=t["B"], DEM=torch.from_numpy(dem))


@pytest.mark.parametrize("name", ["NDWI", "MNDWI", "EVI", "SAVI", "FAI", "GNDVI", "MSAVI"])
def test_spyndex_index_matches_spyndex(name: str) -> None:
    arrs, bands = _bands(np.random.default_rng(0))
    idx = spyndex.indices[name]
    params = {s: arrs[s] for s in idx.bands if s in arrs}
    for s in idx.bands:
        if s not in arrs:
            default = spyndex.constants[s].default
            if default is None:  # lambda* wavelengths: spyndex's Landsat centre wavelengths
                default = spyndex.bands[s.removeprefix("lambda")].landsat7.wavelength
            params[s] = default
    expected = spyndex.computeIndex(name, params=params)
    got = lookup(name)(bands)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), np.asarray(expected), rtol=1e-9, atol=1e-12)


def test_table_name_wins_and_prefix_forces_spyndex() -> None:
    _, bands = _bands(np.random.default_rng(1))
    assert lookup("ATSAVI").source == "table"
    table = lookup("ATSAVI")(bands)
    torch.testing.assert_close(table, INDICES["ATSAVI"](bands))
    forced = lookup("spyndex:ATSAVI")  # the catalogue's ATSAVI uses sla=1, slb=0
    assert forced.source == "spyndex" and not torch.allclose(forced(bands), table)
    assert resolve(["NDVI", "spyndex:NDVI", "NDWI"]) == ["NDVI", "spyndex:NDVI", "NDWI"]


@pytest.mark.parametrize(
    ("name", "needs"),
    [("NBR", "S2 (band)"), ("NDREI", "RE1"), ("kNDVI", "kNN"), ("spyndex:GVMI", "S2")],
)
def test_indices_landsat_cannot_feed_are_refused(name: str, needs: str) -> None:
    with pytest.raises(UnknownIndexError, match="Landsat tiles do not provide") as err:
        lookup(name)
    assert needs in str(err.value)


def test_unknown_names_fail_at_config_load() -> None:
    with pytest.raises(UnknownIndexError, match="unknown spectral index 'ndvi'"):
        resolve(["ndvi"])
    with pytest.raises(ConfigError, match="NBR"):
        load_config("tiny", ["features.indices=[NDVI,NBR]"])
    assert load_config("tiny", ["features.indices=[NDVI,EVI]"]).features.indices == ["NDVI", "EVI"]


def test_spyndex_index_in_the_feature_pipeline_is_masked_and_filled() -> None:
    rng = np.random.default_rng(2)
    raw = rng.integers(6000, 20000, size=(2, 7, 16, 16)).astype(np.int16)
    raw[:, 5] = 0
    raw[:, 6] = 0
    raw[:, 6, :, :4] = 20  # land on the left
    raw[0, 1, 8, 8] = -32768  # a missing NIR pixel
    raw_t = torch.from_numpy(raw)
    fb = FeatureBuilder(["NDWI"], "reflectance", mask_land=True, bands=[])
    feats = fb.raw_features(raw_t)
    assert torch.isnan(feats[:, 0, :, :4]).all() and torch.isnan(feats[0, 0, 8, 8])
    g = raw[:, 3].astype(float) * 0.0000275 - 0.2
    n = raw[:, 1].astype(float) * 0.0000275 - 0.2
    water = feats[1, 0, :, 4:].double().numpy()
    np.testing.assert_allclose(water, ((g - n) / (g + n))[1, :, 4:], rtol=1e-4)
    fb.fit_bounds(raw_t)
    assert torch.isfinite(fb(raw_t)).all()


def _georeferenced_tile(path: Path) -> Path:
    rng = np.random.default_rng(3)
    raw = rng.integers(6000, 20000, size=(7, 12, 10)).astype(np.int16)
    raw[5] = 0
    raw[6] = rng.integers(-3, 3, size=(12, 10))
    raw[2, 0, 0] = -32768
    georef = Georef(CRS.from_epsg(32611), Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 3700000.0))
    return write_raster(path, raw, georef=georef)


@pytest.mark.parametrize("units", ["dn", "reflectance"])
def test_indices_command_writes_named_bands_with_georeference(tmp_path: Path, units: str) -> None:
    from kelpseg.cli import app

    tile = _georeferenced_tile(tmp_path / "T1_satellite.tif")
    out = tmp_path / "idx.tif"
    names = ["NDVI", "ATSAVI", "spyndex:NDWI", "EVI"]
    res = CliRunner().invoke(
        app, ["indices", str(tile), "--names", ",".join(names), "--out", str(out), "--units", units]
    )
    assert res.exit_code == 0, res.output
    with rasterio.open(tile) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert dst.descriptions == tuple(names) and dst.dtypes == ("float32",) * 4
        assert dst.tags()["units"] == units
        data = dst.read()
        raw = src.read()
    np.testing.assert_allclose(data, compute_indices(raw, names, units), rtol=1e-6)
    assert np.isnan(data[0, 0, 0])  # the missing Red pixel stays missing (nodata NaN)


def test_indices_command_rejects_unusable_index(tmp_path: Path) -> None:
    from kelpseg.cli import app

    tile = _georeferenced_tile(tmp_path / "T1_satellite.tif")
    res = CliRunner().invoke(
        app, ["indices", str(tile), "--names", "NDVI,NBR", "--out", str(tmp_path / "x.tif")]
    )
    assert res.exit_code == 1
    assert "NBR" in res.output and not (tmp_path / "x.tif").exists()
