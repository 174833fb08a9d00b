"""Test-time augmentation: outputs are mapped back by the exact inverse of each transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kelpseg.infer.tta import tta_proba


def _pixelwise(x: torch.Tensor) -> torch.Tensor:
    """A model that commutes with every transform: a function of each pixel's own value."""
    return torch.sigmoid(x[:, 0] * 0.5 - x[:, 1])


@pytest.mark.parametrize("mode", ["flips", "d4"])
@pytest.mark.parametrize("shape", [(6, 6), (5, 7)])
def test_equivariant_model_is_unchanged_by_tta(mode: str, shape: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(0))
    ref = tta_proba(_pixelwise, x, "none")
    torch.testing.assert_close(tta_proba(_pixelwise, x, mode), ref, rtol=0, atol=1e-7)


def test_fixed_pattern_is_averaged_over_the_inverse_transforms() -> None:
    """A model ignoring its input returns pattern P: TTA gives the mean of P's inverse images."""
    p = np.arange(16, dtype=np.float32).reshape(4, 4) ** 2  # no symmetry at all
    fixed = torch.from_numpy(p)

    def model(x: torch.Tensor) -> torch.Tensor:
        return fixed.expand(x.shape[0], *fixed.shape)

    x = torch.zeros(1, 2, 4, 4)
    flips = (p + p[:, ::-1] + p[::-1, :]) / 3
    np.testing.assert_allclose(tta_proba(model, x, "flips")[0].numpy(), flips, rtol=1e-6)
    d4 = np.mean([np.rot90(q, k) for q in (p, p.T) for k in range(4)], axis=0)
    np.testing.assert_allclose(tta_proba(model, x, "d4")[0].numpy(), d4, rtol=1e-6)
    assert not np.allclose(d4, p)  # the check has teeth


def test_position_dependent_model_sees_transformed_inputs() -> None:
    """Output = input channel 0 times a position ramp: each transform's output is inverted."""
    h, w = 3, 5
    x = torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(1))

    def model(t: torch.Tensor) -> torch.Tensor:
        ramp = torch.arange(t.shape[-1], dtype=t.dtype)[None, None, :]
        return t[:, 0] * ramp

    got = tta_proba(model, x, "flips")[0].numpy()
    xs = x[0, 0].numpy()
    r = np.arange(w, dtype=np.float32)
    want = (xs * r + xs * r[::-1] + xs * r) / 3  # identity, h-flip (ramp reversed), v-flip
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="tta"):
        tta_proba(_pixelwise, torch.zeros(1, 2, 2, 2), "rot")
