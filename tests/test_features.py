"""Spectral indices, the on-device feature pipeline and normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kelpseg.features.indices import INDICES, WINNING_17, Bands
from kelpseg.features.pipeline import FeatureBuilder, fill_nonfinite, pad_to_multiple

EPS = 1e-10

# DESIGN.md's table, written out again independently in numpy (float64).
REFERENCE = {
    "DEMWM": lambda S, N, R, G, B, D: np.maximum(D, 0),
    "NDVI": lambda S, N, R, G, B, D: (N - R) / (N + R + EPS),
    "ATSAVI": lambda S, N, R, G, B, D: (
        1.22 * (N - 1.22 * R - 0.03) / (1.22 * N + R - 1.22 * 0.03 + 0.08 * (1 + 1.22**2) + EPS)
    ),
    "AVI": lambda S, N, R, G, B, D: 2 * N - R,
    "CI": lambda S, N, R, G, B, D: (R - B) / (R + EPS),
    "ClGreen": lambda S, N, R, G, B, D: N / (G + EPS) - 1,
    "GBNDVI": lambda S, N, R, G, B, D: (N - (G + B)) / (N + G + B + EPS),
    "GVMI": lambda S, N, R, G, B, D: ((N + 0.1) - (S + 0.02)) / ((N + 0.1) + (S + 0.02) + EPS),
    "IPVI": lambda S, N, R, G, B, D: (N / (N + R + EPS) / 2) * ((R - G) / (R + EPS) + G + 1),
    "KIVU": lambda S, N, R, G, B, D: (B - R) / (G + EPS),
    "MCARI": lambda S, N, R, G, B, D: ((N - R) - 0.2 * (N - G)) * (N / (R + EPS)),
    "MVI": lambda S, N, R, G, B, D: N / (S + EPS),
    "NormNIR": lambda S, N, R, G, B, D: N / (N + R + G + EPS),
    "PNDVI": lambda S, N, R, G, B, D: (N - (G + R + B)) / (N + G + R + B + EPS),
    "SABI": lambda S, N, R, G, B, D: (N - R) / (G + B + EPS),
    "WDRVI": lambda S, N, R, G, B, D: (0.1 * N - R) / (0.1 * N + R + EPS),
    "mCRIG": lambda S, N, R, G, B, D: (1 / (B + EPS) - 1 / (G + EPS)) * N,
}


def test_registry_has_the_17_winning_indices() -> None:
    assert set(WINNING_17) == set(REFERENCE) and len(WINNING_17) == 17


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("units", ["dn", "reflectance"])
def test_index_matches_design_formula(name: str, units: str) -> None:
    rng = np.random.default_rng(0)
    lo, hi = (6000, 20000) if units == "dn" else (0.02, 0.5)
    arrs = [rng.uniform(lo, hi, size=(2, 16, 16)) for _ in range(5)] + [
        rng.uniform(-5, 50, (2, 16, 16))
    ]
    bands = Bands(*(torch.from_numpy(a) for a in arrs))
    got = INDICES[name](bands).numpy()
    np.testing.assert_allclose(got, REFERENCE[name](*arrs), rtol=1e-9, atol=1e-12)


def _raw(rng: np.random.Generator, b: int = 2, size: int = 16) -> torch.Tensor:
    raw = rng.integers(6000, 20000, size=(b, 7, size, size)).astype(np.int16)
    raw[:, 5] = 0
    raw[:, 6] = rng.integers(-5, 50, size=(b, size, size))
    return torch.from_numpy(raw)


def test_pipeline_output_is_finite_and_in_unit_range() -> None:
    raw = _raw(np.random.default_rng(1))
    raw[0, :5, :4, :4] = -32768  # missing pixels
    raw[1, 2] = 0  # Red = 0 -> divisions by ~0 -> huge values
    fb = FeatureBuilder(list(WINNING_17), mask_land=True)
    fb.fit_bounds(raw)
    x = fb(raw)
    assert x.shape == (2, 7 + 17, 16, 16)
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def test_reflectance_units_convert_before_indices() -> None:
    raw = _raw(np.random.default_rng(2))
    dn = FeatureBuilder(["NDVI"], units="dn").raw_features(raw)
    refl = FeatureBuilder(["NDVI"], units="reflectance").raw_features(raw)
    n, r = raw[:, 1].double() * 0.0000275 - 0.2, raw[:, 2].double() * 0.0000275 - 0.2
    torch.testing.assert_close(refl[:, -1].double(), (n - r) / (n + r + EPS), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(dn[:, -1], refl[:, -1])


def test_land_masking_leaves_demwm_and_masks_indices() -> None:
    raw = _raw(np.random.default_rng(3))
    raw[:, 6] = 0
    raw[:, 6, :, :8] = 30  # land on the left
    feats = FeatureBuilder(["DEMWM", "NDVI"], mask_land=True).raw_features(raw)
    assert torch.isnan(feats[:, -1, :, :8]).all() and torch.isfinite(feats[:, -1, :, 8:]).all()
    assert torch.isfinite(feats[:, -2]).all()


def test_fill_nonfinite_uses_channel_extremes() -> None:
    x = torch.tensor(
        [[[[1.0, float("nan")], [float("-inf"), float("inf")]], [[5.0, 2.0], [3.0, float("nan")]]]]
    )
    y = fill_nonfinite(x)
    assert y[0, 0].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert y[0, 1].tolist() == [[5.0, 2.0], [3.0, 2.0]]


def test_bounds_are_quantiles_of_valid_pixels_and_saved_in_state() -> None:
    raw = _raw(np.random.default_rng(4), b=4, size=32)
    raw[:, 0, :2] = -32768
    fb = FeatureBuilder(["NDVI"])
    fb.fit_bounds(raw, (0.01, 0.99))
    swir = raw[:, 0].flatten().numpy()
    swir = swir[swir != -32768].astype(float)
    assert fb.q_low[0].item() == pytest.approx(np.quantile(swir, 0.01), rel=1e-3)
    assert fb.q_high[0].item() == pytest.approx(np.quantile(swir, 0.99), rel=1e-3)
    state = fb.state_dict()
    fb2 = FeatureBuilder(["NDVI"])
    fb2.load_state_dict(state)
    assert torch.equal(fb2(raw), fb(raw))


def test_pad_to_multiple_of_32() -> None:
    x, pad = pad_to_multiple(torch.zeros(1, 3, 350, 350))
    assert x.shape[-2:] == (352, 352) and pad == (2, 2)


@pytest.mark.parametrize("normalize", ["quantile", "zscore", "sample_minmax"])
def test_cpu_chunking_does_not_change_the_features(normalize: str) -> None:
    from kelpseg.config import FeaturesConfig

    raw = _raw(np.random.default_rng(5), b=5)
    raw[1, :5, :3] = -32768
    cfg = FeaturesConfig(indices=list(WINNING_17), mask_land=True, normalize=normalize)
    fb = FeatureBuilder.from_config(cfg)
    fb.fit_bounds(raw)
    assert torch.equal(fb(raw), fb._features(raw))  # forward goes 2 samples at a time on a CPU


def test_cloud_masking_is_separate_from_land_masking() -> None:
    """Real QA flags clear pixels too (labelled kelp lies under them): land masking leaves
    QA-flagged water alone; mask_cloud (the 2nd-place code's extra step) masks it."""
    raw = _raw(np.random.default_rng(4))
    raw[:, 6] = 0
    raw[:, 6, :, :4] = 30  # land on the left
    raw[:, 5] = 0
    raw[:, 5, :4, 8:] = 1  # a QA flag over water
    land_only = FeatureBuilder(["NDVI"], mask_land=True).raw_features(raw)[:, -1]
    assert torch.isnan(land_only[:, :, :4]).all() and torch.isfinite(land_only[:, :, 4:]).all()
    both = FeatureBuilder(["NDVI"], mask_land=True, mask_cloud=True).raw_features(raw)[:, -1]
    assert torch.isnan(both[:, :4, 8:]).all() and torch.isfinite(both[:, 4:, 4:]).all()
    from kelpseg.config import FeaturesConfig

    cfg = FeaturesConfig(indices=["NDVI"], mask_land=True, mask_cloud=True)
    assert FeatureBuilder.from_config(cfg).mask_cloud
