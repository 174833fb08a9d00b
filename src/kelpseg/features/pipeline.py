"""The on-device feature pipeline: raw int16 tiles -> normalized network input.

Steps, all on whole batches on the model's device: -32768 -> NaN, optional conversion to
reflectance, the chosen bands in the chosen order followed by the spectral indices, optional
masking of indices on land (DEM) and, optionally, under the QA flag, then normalization (:mod:`.normalize`).
Non-finite values are replaced per sample and channel (NaN / -inf -> channel minimum, +inf ->
maximum), or missing pixels get a fixed value in the normalized output, so the network never
sees a non-finite value. The global statistics are buffers of the module, so they are saved
with the model and prediction uses exactly what training used.

:meth:`FeatureBuilder.build` is trace-safe: its only Python branches depend on the config,
never on the data (the one shortcut of :func:`fill_nonfinite` is skipped while tracing), and it
writes no channel in place, so ``kelpseg export`` (:mod:`kelpseg.infer.onnx_export`) records
this very code in the ONNX graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kelpseg.config import FeaturesConfig, NormMode
from kelpseg.features.indices import (
    REFLECTANCE_OFFSET,
    REFLECTANCE_SCALE,
    Bands,
    lookup,
    resolve,
)
from kelpseg.features.normalize import (
    CLIPPED_MODES,
    GLOBAL_MODES,
    apply_bounds,
    fit_channel,
    sample_bounds,
)
from kelpseg.io.tiles import BAND_NAMES, DEM_INDEX, NODATA, QA_INDEX

CPU_CHUNK = 2


def fill_nonfinite(x: Tensor) -> Tensor:
    """NaN / -inf -> per-sample channel minimum, +inf -> maximum (0 if nothing is finite).

    Returns ``x`` itself when every value is finite (a shortcut of eager runs only: a traced
    graph always fills, which is the identity when nothing is missing).
    """
    bad = ~torch.isfinite(x)
    if not torch.jit.is_tracing() and not bool(bad.any()):
        return x
    lo = x.masked_fill(bad, torch.inf).amin(dim=(-2, -1), keepdim=True)
    hi = x.masked_fill(bad, -torch.inf).amax(dim=(-2, -1), keepdim=True)
    lo = torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))
    hi = torch.where(torch.isfinite(hi), hi, torch.zeros_like(hi))
    return torch.where(bad, torch.where(x > 0, hi, lo), x)  # only +inf is > 0 among them


def water_mask(raw: Tensor) -> Tensor:
    """``(B, 1, H, W)`` True where the DEM is <= 0 or missing (DESIGN.md's water mask)."""
    dem = raw[:, DEM_INDEX : DEM_INDEX + 1]
    return (dem <= 0) | (dem == NODATA)


class FeatureBuilder(nn.Module):
    """Raw ``(B, 7, H, W)`` int16 digital numbers -> ``(B, C, H, W)`` float features.

    Args:
        indices: Index names (the 17-index table or spyndex, see :mod:`.indices`).
        units: ``"dn"`` (as the 2nd-place code) or ``"reflectance"``.
        mask_land: Set indices to NaN where DEMWM != 0 (land, before filling).
        mask_cloud: Also set them to NaN where QA != 0 (the 2nd-place code did both at once;
            real cloud masks flag clear pixels too, so this hides kelp under false flags).
        q_low, q_high: Per-channel global bounds ``(lo, hi)``; identity until fitted.
        bands: Tile bands to keep, in order (default all seven).
        normalize: Normalization mode (:mod:`.normalize`).
        stats_pixels: ``"valid"`` or ``"water"``: pixels the statistics are taken from.
        fill: ``"min"`` (channel minimum before normalization) or the normalized value
            written at missing pixels.
        quantiles: Bounds of the quantile modes.
    """

    def __init__(
        self,
        indices: list[str],
        units: str = "dn",
        mask_land: bool = False,
        q_low: list[float] | None = None,
        q_high: list[float] | None = None,
        *,
        bands: list[str] | None = None,
        normalize: NormMode = "quantile",
        stats_pixels: str = "valid",
        fill: str | float = "min",
        quantiles: tuple[float, float] = (0.01, 0.99),
        mask_cloud: bool = False,
    ) -> None:
        super().__init__()
        self.indices = resolve(indices)  # formulas are looked up per call: the module pickles
        self.bands = list(bands) if bands is not None else list(BAND_NAMES)
        unknown = set(self.bands) - set(BAND_NAMES)
        if unknown:
            raise ValueError(f"unknown band {sorted(unknown)}; tiles have {BAND_NAMES}")
        self._band_rows = [BAND_NAMES.index(b) for b in self.bands]
        self.units = units
        self.mask_land = mask_land
        self.mask_cloud = mask_cloud
        self.normalize = normalize
        self.stats_pixels = stats_pixels
        self.fill = fill
        self.quantiles = tuple(quantiles)
        n = self.num_channels
        self.register_buffer("q_low", torch.tensor(q_low if q_low else [0.0] * n))
        self.register_buffer("q_high", torch.tensor(q_high if q_high else [1.0] * n))

    @classmethod
    def from_config(cls, f: FeaturesConfig) -> FeatureBuilder:
        """Build from a :class:`kelpseg.config.FeaturesConfig`."""
        return cls(
            f.indices,
            f.units,
            f.mask_land,
            bands=f.bands,
            normalize=f.normalize,
            stats_pixels=f.stats_pixels,
            fill=f.fill,
            quantiles=f.quantiles,
            mask_cloud=f.mask_cloud,
        )

    @property
    def channel_names(self) -> list[str]:
        return [*self.bands, *self.indices]

    @property
    def num_channels(self) -> int:
        return len(self.bands) + len(self.indices)

    def raw_features(self, raw: Tensor) -> Tensor:
        """Bands + indices in physical units, NaN where missing (no filling, no scaling)."""
        x = raw.float().masked_fill(raw == NODATA, torch.nan)
        spectral = x[:, :5]
        if self.units == "reflectance":
            spectral = spectral * REFLECTANCE_SCALE + REFLECTANCE_OFFSET
        s, n, r, g, b = spectral.unbind(1)
        dem = x[:, DEM_INDEX]
        chans = [spectral[:, row] if row < 5 else x[:, row] for row in self._band_rows]
        bands = Bands(S=s, N=n, R=r, G=g, B=b, DEM=dem)
        land = None
        if self.mask_land:
            land = dem > 0  # a missing (NaN) DEM compares False: not land
        if self.mask_cloud:
            cloud = x[:, QA_INDEX] != 0
            land = cloud if land is None else land | cloud
        for name in self.indices:
            f = lookup(name)(bands)
            if land is not None and name != "DEMWM":
                f = f.masked_fill(land, torch.nan)
            chans.append(f)
        return torch.stack(chans, dim=1)

    def stats_mask(self, raw: Tensor, feats: Tensor) -> Tensor:
        """Pixels the statistics may use: finite, and water only when so configured."""
        valid = torch.isfinite(feats)
        if self.stats_pixels == "water":
            valid = valid & water_mask(raw)
        return valid

    @torch.no_grad()
    def forward(self, raw: Tensor) -> Tensor:
        if raw.device.type != "cpu" or len(raw) <= CPU_CHUNK:
            return self.build(raw)
        # On a CPU, a few samples at a time keep the ~200 elementwise passes in cache (2x faster).
        out = torch.empty(
            (len(raw), self.num_channels, *raw.shape[2:]), dtype=torch.float32, device=raw.device
        )
        for i in range(0, len(raw), CPU_CHUNK):
            out[i : i + CPU_CHUNK] = self.build(raw[i : i + CPU_CHUNK])
        return out

    def build(self, raw: Tensor) -> Tensor:
        """The features of a whole batch in one pass (what :meth:`forward` computes, without
        its CPU chunking, whose loop depends on the batch size): trace-safe, the ONNX graph's
        feature step."""
        feats = self.raw_features(raw)
        missing = torch.isnan(feats) if self.fill != "min" else None
        lo = hi = None
        if self.normalize in GLOBAL_MODES:
            lo, hi = self.q_low.view(1, -1, 1, 1), self.q_high.view(1, -1, 1, 1)
        elif self.normalize != "none":
            valid = self.stats_mask(raw, feats)
            lo, hi = sample_bounds(feats, valid, self.normalize, self.quantiles)
        x = fill_nonfinite(feats)
        if lo is not None:
            x = apply_bounds(x, lo, hi, self.normalize in CLIPPED_MODES)
        if missing is not None:
            x = x.masked_fill(missing, float(self.fill))
        return x

    _features = build  # the name tests and bench/train_throughput.py use

    @torch.no_grad()
    def fit_bounds(
        self,
        raws: Tensor,
        quantiles: tuple[float, float] | None = None,
        pixels: int = 200_000,
    ) -> None:
        """Fit the global statistics of the configured mode on ``raws`` (no-op per-sample).

        Args:
            raws: Raw tiles or pixels ``(B, 7, H, W)``.
            quantiles: Overrides the builder's quantiles (and is kept).
            pixels: At most this many pixels per channel (a fixed random subset).
        """
        if quantiles is not None:
            self.quantiles = tuple(quantiles)
        raws = raws.to(self.q_low.device)
        feats = self.raw_features(raws)
        valid = self.stats_mask(raws, feats)
        gen = torch.Generator().manual_seed(0)
        lows, highs = [], []
        for ch, ok in zip(feats.transpose(0, 1), valid.transpose(0, 1), strict=True):
            vals = ch[ok]
            if vals.numel() == 0:  # e.g. no water: fall back to every finite value
                vals = ch[torch.isfinite(ch)]
            if vals.numel() > pixels:
                pick = torch.randperm(vals.numel(), generator=gen)[:pixels].to(vals.device)
                vals = vals[pick]
            lo, hi = fit_channel(vals, self.normalize, self.quantiles)
            lows.append(lo)
            highs.append(hi)
        self.q_low.copy_(torch.tensor(lows))
        self.q_high.copy_(torch.tensor(highs))

    def bounds(self) -> dict[str, tuple[float, float]]:
        """Global normalization ``(lo, hi)`` by channel name."""
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
