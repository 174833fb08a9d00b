"""Where kelp can grow: the windows of a scene that the model need not see.

Giant kelp grows on rocky reefs near the shore, in practice shallower than 30-40 m, which on
most coasts lies within a few kilometres of land. ``kelpseg map`` therefore skips a window
(:func:`kelpseg.infer.sliced.predict_sliced`) when it cannot hold kelp the user reads:

- **fill**: no valid pixel (a scene's fill collar; decided in :mod:`kelpseg.infer.sliced`);
- **land**: every valid pixel is land, DEM > 0 (:func:`kelpseg.infer.postprocess.land`, the
  rule of the coverage layer, whose mask is 0 on land whatever the model says), checked at full
  resolution on the window as it is read;
- **offshore**: every valid pixel lies farther than ``max_offshore_m`` from land.

The distance to land is computed once per scene (:func:`scene_reach`) on a grid of cells of
``step`` x ``step`` pixels (about 1,000 cells along the longer side: ~8 px on a full Landsat
scene), from a full-resolution pass over the raster in row strips, so that no pixel of land
can be lost to decimation (a cell is land when *any* of its pixels is). A cell is far offshore
only when its centre is farther than ``max_offshore_m`` plus one cell diagonal from every
possible coast, so every pixel in it is farther than ``max_offshore_m`` from every land pixel.
What counts as a possible coast, conservatively:

- land (DEM > 0);
- pixels outside the DEM's footprint (coverage code 3: land or water unknown); a window that
  touches one is never skipped, as land or offshore;
- the scene's fill wider than about 2 km (its collar: a coast may lie just beyond the scene's
  edge; narrower gaps such as Landsat 7 SLC-off stripes are ignored by a morphological opening)
  and everything beyond the raster's border.

Where the DEM is missing inside its footprint the sea is open sea (the coverage layer's rule),
so missing DEM values are never land. A scene without any land in its DEM (no DEM at all,
``--no-dem``, or a DEM of open sea) has no coast to measure from: no window is skipped as
offshore, and :attr:`Reach.note` says so. Pixels of skipped windows get probability 0 (so no
kelp), and no blend weight; every window that holds a water pixel within reach is predicted
exactly as before, so kelp within reach does not change (``tests/test_reach.py``).

What the rule cannot see: kelp on offshore banks with no land within ``max_offshore_m`` (e.g.
Cortes and Tanner Banks, 150-180 km off southern California). Map such areas with
``--max-offshore-m 0`` (never skip offshore).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from kelpseg.infer.postprocess import land as on_land
from kelpseg.io.tiles import missing_pixels

DEFAULT_MAX_OFFSHORE_M = 5000.0
"""Default ``--max-offshore-m``: kelp reefs (< 30-40 m deep) lie within ~1-3 km of the shore
on most coasts; 5 km leaves room for wide shelves, DEM coastlines drawn a few hundred metres
off, and the DEM's misregistration."""
ASSUMED_PIXEL_M = 30.0
"""Pixel size assumed without a CRS (the competition tiles' 30 m)."""
GRID_CELLS = 1024
"""Cells of the distance grid along the raster's longer side (at most)."""
FILL_OPENING_M = 1000.0
"""Fill narrower than twice this is not a possible coast (SLC-off stripes are ~0.4 km)."""
STRIP_ROWS = 256
"""Rows read at a time by :func:`scene_reach` (7 bands x 256 rows x 7,800 px = 28 MB)."""

FILL, LAND, OFFSHORE = "fill", "land", "offshore"
REASONS = (FILL, LAND, OFFSHORE)


@dataclass
class Reach:
    """Which windows of one raster may be skipped (see the module notes).

    Attributes:
        step: Pixels per grid cell along each side.
        near: ``(gh, gw)`` bool, cells within ``max_offshore_m`` (plus a cell diagonal) of a
            possible coast: a window touching one is not skipped as offshore.
        unknown: ``(gh, gw)`` bool, cells touching pixels outside the DEM's footprint: a window
            touching one is never skipped.
        max_offshore_m: The distance used; None when nothing is skipped as offshore.
        note: Why nothing is skipped as offshore, if so.
    """

    step: int
    near: np.ndarray
    unknown: np.ndarray
    max_offshore_m: float | None
    note: str | None = None

    def _cells(self, row: int, col: int, height: int, width: int) -> tuple[slice, slice]:
        s = self.step
        return slice(row // s, (row + height - 1) // s + 1), slice(
            col // s, (col + width - 1) // s + 1
        )

    def why_skip(self, raw: np.ndarray, row: int, col: int) -> str | None:
        """``"offshore"``, ``"land"`` or None (predict it) for the window ``raw`` (7, h, w) read
        at ``(row, col)``; pixels beyond the raster (padding) are missing and do not count."""
        cells = self._cells(row, col, *raw.shape[-2:])
        if self.unknown[cells].any():
            return None
        if self.max_offshore_m is not None and not self.near[cells].any():
            return OFFSHORE
        valid = ~missing_pixels(raw)
        if valid.any() and not (valid & ~on_land(raw)).any():
            return LAND
        return None

    def record(self) -> dict[str, Any]:
        """What ``scene.json`` says about the rule."""
        return {"max_offshore_m": self.max_offshore_m, "grid_step_px": self.step, "note": self.note}


def pixel_size_m(crs: Any, transform: Any, height: int) -> tuple[float, float]:
    """Ground size (m) of a pixel along rows and columns: the transform in the CRS's linear
    unit (projected), metres per degree at the raster's middle latitude (geographic), or
    :data:`ASSUMED_PIXEL_M` without a CRS or transform."""
    from kelpseg.geo.area import linear_unit_m, to_pyproj

    pcrs = to_pyproj(crs)
    if pcrs is None or transform is None:
        return ASSUMED_PIXEL_M, ASSUMED_PIXEL_M
    dx = math.hypot(transform.a, transform.d)
    dy = math.hypot(transform.b, transform.e)
    if pcrs.is_projected:
        unit = linear_unit_m(pcrs)
        return dy * unit, dx * unit
    lat = (transform * (0, height / 2))[1]
    metres = 111_320.0  # per degree of latitude (and of longitude at the equator)
    # the smaller east-west metres of the raster's poleward edge: distances only shrink
    edge = min(abs(lat) + height * dy / 2, 89.0)
    return dy * metres, dx * metres * math.cos(math.radians(edge))


def _block_any(mask: np.ndarray, step: int, pad: bool) -> np.ndarray:
    """``(ceil(h/step), ceil(w/step))``: any True in each ``step`` x ``step`` block (``pad``
    fills the ragged blocks' missing part)."""
    h, w = mask.shape
    gh, gw = -(-h // step), -(-w // step)
    full = np.full((gh * step, gw * step), pad, bool)
    full[:h, :w] = mask
    return full.reshape(gh, step, gw, step).any(axis=(1, 3))


def _opening(mask: np.ndarray, radius_m: float, sampling: tuple[float, float]) -> np.ndarray:
    """Morphological opening of ``mask`` by a disk of ``radius_m`` (two distance transforms:
    linear time, where a large structuring element would be quadratic)."""
    if not mask.any():
        return mask
    eroded = ndimage.distance_transform_edt(mask, sampling=sampling) > radius_m
    if not eroded.any():
        return eroded
    return ndimage.distance_transform_edt(~eroded, sampling=sampling) <= radius_m


def _outside_cells(
    footprint: Any, transform: Any, shape: tuple[int, int], step: int, H: int, W: int
):
    """Cells touching any pixel outside the DEM's footprint (all touched: conservative)."""
    from affine import Affine
    from rasterio.features import rasterize
    from shapely.geometry import Polygon

    corners = [transform * xy for xy in ((0, 0), (W, 0), (W, H), (0, H))]
    outside = Polygon(corners).difference(footprint)
    if outside.is_empty:
        return np.zeros(shape, bool)
    cell = transform * Affine.scale(step)
    burnt = rasterize([(outside, 1)], out_shape=shape, transform=cell, all_touched=True)
    return burnt.astype(bool)


def scene_reach(
    source: Any,
    *,
    max_offshore_m: float | None = DEFAULT_MAX_OFFSHORE_M,
    crs: Any = None,
    transform: Any = None,
    footprint: Any = None,
    grid_cells: int = GRID_CELLS,
    edges_are_coast: bool = True,
) -> Reach:
    """The skip rule of one raster (see the module notes).

    Args:
        source: The raster (:class:`kelpseg.infer.sliced.RasterSource` or ``ArraySource``):
            read once, in strips of :data:`STRIP_ROWS` rows.
        max_offshore_m: Skip windows farther than this from any possible coast; 0 or None:
            never skip offshore (land and fill windows still are).
        crs, transform: The raster's georeference (distances in metres; 30 m pixels assumed
            without).
        footprint: The DEM's footprint polygon in the raster's CRS (None: the whole raster).
        grid_cells: Cells of the distance grid along the longer side, at most.
        edges_are_coast: Count the fill collar and the raster's border as possible coasts
            (a coast may lie just beyond the scene); False measures from land alone (for
            benchmarks: what this caution costs).
    """
    H, W = source.height, source.width
    step = max(1, math.ceil(max(H, W) / grid_cells))
    gh, gw = -(-H // step), -(-W // step)
    land = np.zeros((gh, gw), bool)
    fill = np.zeros((gh, gw), bool)
    offshore = bool(max_offshore_m)
    if offshore:
        rows = max(step, STRIP_ROWS // step * step)
        for r in range(0, H, rows):
            raw = source.read(r, 0, min(rows, H - r), W)
            cells = slice(r // step, r // step + -(-raw.shape[1] // step))
            land[cells] = _block_any(on_land(raw), step, False)
            fill[cells] = ~_block_any(~missing_pixels(raw), step, False)
    unknown = np.zeros((gh, gw), bool)
    if footprint is not None and transform is not None:
        unknown = _outside_cells(footprint, transform, (gh, gw), step, H, W)
    if not offshore:
        return Reach(step, np.ones((gh, gw), bool), unknown, None)
    if not land.any():
        note = (
            "no land in the DEM: no coast to measure the distance from, so no window is "
            "skipped as offshore"
        )
        return Reach(step, np.ones((gh, gw), bool), unknown, None, note)
    py, px = pixel_size_m(crs, transform, H)
    cy, cx = py * step, px * step
    pad = max(1, math.ceil(FILL_OPENING_M / min(cy, cx))) + 1
    # beyond the border: a possible coast; the padding takes part in the opening so a
    # collar that touches the border keeps its full width
    coast = np.pad(land | unknown, pad, constant_values=edges_are_coast)
    if edges_are_coast:
        coast |= _opening(np.pad(fill, pad, constant_values=True), FILL_OPENING_M, (cy, cx))
    dist = ndimage.distance_transform_edt(~coast, sampling=(cy, cx))[pad:-pad, pad:-pad]
    near = dist <= float(max_offshore_m) + math.hypot(cy, cx)
    return Reach(step, near, unknown, float(max_offshore_m))
