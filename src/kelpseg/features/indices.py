"""Spectral index registry: the 2nd-place table, plus any index of the spyndex catalogue.

The 17 indices of the 2nd-place model are one table of formulas (DESIGN.md), including its
non-textbook IPVI, so results stay comparable with that pipeline. ``eps`` is added to every
denominator. Any other name (or ``spyndex:NAME``, which forces the catalogue's formula even for a
table name) is looked up in spyndex (Awesome Spectral Indices) and evaluated from its formula on
whatever array type the bands are (torch tensors on the device in training). Landsat tiles hold
Blue, Green, Red, NIR and SWIR1, so spyndex's ``B, G, R, N, S1``; constants take spyndex's
defaults and ``lambda*`` wavelengths its Landsat centre wavelengths; an index needing anything
else is refused with the list of what is missing.

Inputs are digital numbers (``units="dn"``, as the 2nd-place code) or surface reflectance
(``units="reflectance"``: ``DN * 0.0000275 - 0.2``; spyndex's formulas assume reflectance).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from torch import Tensor

EPS = 1e-10
REFLECTANCE_SCALE = 0.0000275
REFLECTANCE_OFFSET = -0.2
SPYNDEX_PREFIX = "spyndex:"

# spyndex band symbol -> field of :class:`Bands`.
LANDSAT_BANDS: dict[str, str] = {"B": "B", "G": "G", "R": "R", "N": "N", "S1": "S"}


class Bands(NamedTuple):
    """Named band tensors: S = SWIR1, N = NIR, R = Red, G = Green, B = Blue, DEM."""

    S: Tensor
    N: Tensor
    R: Tensor
    G: Tensor
    B: Tensor
    DEM: Tensor


IndexFn = Callable[[Bands], "Tensor"]

INDICES: dict[str, IndexFn] = {
    "DEMWM": lambda b: b.DEM.clamp_min(0),
    "NDVI": lambda b: (b.N - b.R) / (b.N + b.R + EPS),
    "ATSAVI": lambda b: (
        1.22
        * (b.N - 1.22 * b.R - 0.03)
        / (1.22 * b.N + b.R - 1.22 * 0.03 + 0.08 * (1 + 1.22**2) + EPS)
    ),
    "AVI": lambda b: 2 * b.N - b.R,
    "CI": lambda b: (b.R - b.B) / (b.R + EPS),
    "ClGreen": lambda b: b.N / (b.G + EPS) - 1,
    "GBNDVI": lambda b: (b.N - (b.G + b.B)) / (b.N + b.G + b.B + EPS),
    "GVMI": lambda b: ((b.N + 0.1) - (b.S + 0.02)) / ((b.N + 0.1) + (b.S + 0.02) + EPS),
    "IPVI": lambda b: (b.N / (b.N + b.R + EPS) / 2) * ((b.R - b.G) / (b.R + EPS) + b.G + 1),
    "KIVU": lambda b: (b.B - b.R) / (b.G + EPS),
    "MCARI": lambda b: ((b.N - b.R) - 0.2 * (b.N - b.G)) * (b.N / (b.R + EPS)),
    "MVI": lambda b: b.N / (b.S + EPS),
    "NormNIR": lambda b: b.N / (b.N + b.R + b.G + EPS),
    "PNDVI": lambda b: (b.N - (b.G + b.R + b.B)) / (b.N + b.G + b.R + b.B + EPS),
    "SABI": lambda b: (b.N - b.R) / (b.G + b.B + EPS),
    "WDRVI": lambda b: (0.1 * b.N - b.R) / (0.1 * b.N + b.R + EPS),
    "mCRIG": lambda b: (1 / (b.B + EPS) - 1 / (b.G + EPS)) * b.N,
}

WINNING_17: tuple[str, ...] = tuple(INDICES)


class UnknownIndexError(ValueError):
    """An index name that is neither in the table nor usable from spyndex."""


@dataclass(frozen=True)
class SpectralIndex:
    """One resolved index: the name as asked, where its formula comes from, and the formula."""

    name: str
    source: Literal["table", "spyndex"]
    formula: str
    fn: IndexFn

    def __call__(self, bands: Bands) -> Tensor:
        return self.fn(bands)


def _spyndex_fn(key: str, constants: dict[str, float]) -> IndexFn:
    """``spyndex.computeIndex`` on the batch's band tensors (it evaluates on torch as is)."""

    def fn(b: Bands) -> Tensor:
        import spyndex

        bands = {sym: getattr(b, field) for sym, field in LANDSAT_BANDS.items()}
        return spyndex.computeIndex(key, {**bands, **constants})

    return fn


@cache
def _from_spyndex(key: str) -> SpectralIndex:
    import spyndex

    if key not in spyndex.indices:
        raise UnknownIndexError(
            f"unknown spectral index {key!r}: not in the 2nd-place table ({', '.join(INDICES)}) "
            "nor in spyndex (names are case-sensitive, e.g. NDWI, EVI, SAVI)"
        )
    idx = spyndex.indices[key]
    constants: dict[str, float] = {}
    missing: list[str] = []
    for sym in idx.bands:
        if sym in LANDSAT_BANDS:
            continue
        const = spyndex.constants.get(sym)
        value = None if const is None else const.default
        band = sym.removeprefix("lambda")
        if value is None and sym.startswith("lambda") and band in LANDSAT_BANDS:
            value = spyndex.bands[band].landsat7.wavelength  # nm, as spyndex gives them
        if value is None:
            what = "band" if sym in spyndex.bands else "parameter without a default"
            missing.append(f"{sym} ({what})")
        else:
            constants[sym] = float(value)
    if missing:
        raise UnknownIndexError(
            f"spyndex index {key!r} = {idx.formula} needs {', '.join(missing)}, which Landsat "
            f"tiles do not provide (they have {', '.join(LANDSAT_BANDS)})"
        )
    return SpectralIndex(key, "spyndex", idx.formula, _spyndex_fn(key, constants))


def lookup(name: str) -> SpectralIndex:
    """Resolve one index name: the table first, then spyndex (``spyndex:NAME`` forces it).

    Raises:
        UnknownIndexError: for unknown names and spyndex indices Landsat tiles cannot feed.
    """
    if name.startswith(SPYNDEX_PREFIX):
        found = _from_spyndex(name.removeprefix(SPYNDEX_PREFIX))
        return SpectralIndex(name, found.source, found.formula, found.fn)
    if name in INDICES:
        return SpectralIndex(name, "table", f"table:{name}", INDICES[name])
    return _from_spyndex(name)


def resolve(names: list[str]) -> list[str]:
    """Validate index names (case-sensitive); raise :class:`UnknownIndexError` on bad ones."""
    errors = []
    for name in names:
        try:
            lookup(name)
        except UnknownIndexError as err:
            errors.append(str(err))
    if errors:
        raise UnknownIndexError("; ".join(errors))
    if len(set(names)) != len(names):
        raise UnknownIndexError(f"index names repeat: {names}")
    return list(names)


def landsat_spyndex_indices() -> list[str]:
    """Every spyndex index a Landsat tile can feed (for listings)."""
    import spyndex

    usable = []
    for key in spyndex.indices:
        try:
            _from_spyndex(key)
        except UnknownIndexError:
            continue
        usable.append(key)
    return usable
