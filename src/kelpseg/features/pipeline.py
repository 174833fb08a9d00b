"""The on-device feature pipeline: raw int16 tiles -> normalized network input.

Steps, all on whole batches on the model's device: -32768 -> NaN, optional conversion to
reflectance, spectral indices appended to the 7 bands, optional masking of indices with QA and
the water mask, then quantile (q_low-q_high) min-max normalization with clipping. Non-finite
values are replaced per sample and channel (NaN / -inf -> channel minimum, +inf -> maximum), so
the network never sees a non-finite value. The quantiles are buffers of the module, so they are
saved with the model and prediction uses exactly what training used.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kelpseg.features.indices import (
    INDICES,
    REFLECTANCE_OFFSET,
    REFLECTANCE_SCALE,
    Bands,
    resolve,
)
from kelpseg.io.tiles import BAND_NAMES, DEM_INDEX, NODATA, QA_INDEX


def fill_nonfinite(x: Tensor) -> Tensor:
    """NaN / -inf -> per-sample channel minimum, +inf -> maximum (0 if nothing is finite)."""
    finite = torch.isfinite(x)
    lo = torch.where(finite, x, torch.full_like(x, torch.inf)).amin(dim=(-2, -1), keepdim=True)
    hi = torch.where(finite, x, torch.full_like(x, -torch.inf)).amax(dim=(-2, -1), keepdim=True)
    lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    hi = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi))
    x = torch.where(torch.isposinf(x), hi, x)
    return torch.where(torch.isfinite(x), x, lo)


class FeatureBuilder(nn.Module):
    """Raw ``(B, 7, H, W)`` int16 digital numbers -> ``(B, C, H, W)`` float features.

    Args:
        indices: Index names from :data:`kelpseg.features.indices.INDICES`.
        units: ``"dn"`` (as the 2nd-place code) or ``"reflectance"``.
        mask_land: Set indices to NaN where QA != 0 or DEMWM != 0 (before filling).
        q_low, q_high: Per-channel normalization bounds; identity until :meth:`set_bounds`.
    """

    def __init__(
        self,
        indices: list[str],
        units: str = "dn",
        mask_land: bool = False,
        q_low: list[float] | None = None,
        q_high: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.indices = resolve(indices)
        self.units = units
        self.mask_land = mask_land
        n = len(BAND_NAMES) + len(self.indices)
        self.register_buffer("q_low", torch.tensor(q_low if q_low else [0.0] * n))
        self.register_buffer("q_high", torch.tensor(q_high if q_high else [1.0] * n))

    @property
    def channel_names(self) -> list[str]:
        return [*BAND_NAMES, *self.indices]

    @property
    def num_channels(self) -> int:
        return len(BAND_NAMES) + len(self.indices)

    def raw_features(self, raw: Tensor) -> Tensor:
        """Bands + indices in physical units, NaN where missing (no filling, no scaling)."""
        x = raw.float()
        x = torch.where(raw == NODATA, torch.full_like(x, torch.nan), x)
        spectral = x[:, :5]
        if self.units == "reflectance":
            spectral = spectral * REFLECTANCE_SCALE + REFLECTANCE_OFFSET
        s, n, r, g, b = spectral.unbind(1)
        bands = Bands(S=s, N=n, R=r, G=g, B=b, DEM=x[:, DEM_INDEX])
        feats = [INDICES[name](bands) for name in self.indices]
        if self.mask_land and feats:
            qa, dem = x[:, QA_INDEX], x[:, DEM_INDEX]
            land = (qa != 0) | (dem.nan_to_num(0.0).clamp_min(0) != 0)
            feats = [
                f if name == "DEMWM" else f.masked_fill(land, torch.nan)
                for name, f in zip(self.indices, feats, strict=True)
            ]
        return torch.cat([spectral, x[:, 5:], *(f[:, None] for f in feats)], dim=1)

    def forward(self, raw: Tensor) -> Tensor:
        x = fill_nonfinite(self.raw_features(raw))
        lo = self.q_low.view(1, -1, 1, 1)
        hi = self.q_high.view(1, -1, 1, 1)
        return ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)

    @torch.no_grad()
    def fit_bounds(
        self, raws: Tensor, quantiles: tuple[float, float] = (0.01, 0.99), pixels: int = 200_000
    ) -> None:
        """Set the per-channel bounds to quantiles over finite values of ``raws``."""
        feats = self.raw_features(raws.to(self.q_low.device))
        flat = feats.transpose(0, 1).reshape(feats.shape[1], -1)
        gen = torch.Generator().manual_seed(0)
        lows, highs = [], []
        for ch in flat:
            vals = ch[torch.isfinite(ch)]
            if vals.numel() > pixels:
                vals = vals[torch.randperm(vals.numel(), generator=gen)[:pixels].to(vals.device)]
            if vals.numel() == 0:
                lows.append(0.0)
                highs.append(1.0)
                continue
            q = torch.quantile(vals.double(), torch.tensor(quantiles, dtype=torch.float64))
            lo, hi = float(q[0]), float(q[1])
            lows.append(lo)
            highs.append(hi if hi > lo else lo + 1.0)
        self.q_low.copy_(torch.tensor(lows))
        self.q_high.copy_(torch.tensor(highs))

    def bounds(self) -> dict[str, tuple[float, float]]:
        """Normalization bounds by channel name."""
        lo, hi = self.q_low.tolist(), self.q_high.tolist()
        return {n: (a, b) for n, a, b in zip(self.channel_names, lo, hi, strict=True)}


def pad_to_multiple(x: Tensor, multiple: int = 32) -> tuple[Tensor, tuple[int, int]]:
    """Pad the last two dims (bottom/right, reflect) up to a multiple; return the padding."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (ph, pw)
