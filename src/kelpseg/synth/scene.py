"""The static physical scene of one AOI: coastline, DEM, land cover and kelp reefs.

Everything is built on a canvas padded by :data:`PAD` pixels on each side, so that distances
to a coast just outside the tile, cloud shadows and DEM shifts need no edge handling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from kelpseg.synth.noise import fbm, smoothstep
from kelpseg.synth.plan import AoiPlan
from kelpseg.synth.spectra import NODATA

PAD = 40


@dataclass(frozen=True)
class AoiScene:
    """Static layers of one AOI on the padded ``(P, P)`` canvas, ``P = size + 2 * PAD``.

    Attributes:
        size: Tile side in pixels.
        land: True on land (the true coastline).
        land_frac: Sub-pixel land fraction (mixed pixels along the shore).
        dist_sea: For water pixels, the distance to the nearest land in px (0 on land).
        dist_land: For land pixels, the distance to the nearest water in px (0 on water).
        dem: int16 elevation: metres on land, 0 near the coast, -32768 offshore.
        veg: Vegetation fraction of land pixels.
        sand: Beach-sand fraction of land pixels.
        texture: Multiplicative brightness texture of the land.
        kelp_capacity: Maximum canopy density a reef supports, in [0, 1].
        mouth: ``(row, col)`` of a river mouth on the padded canvas, or None.
    """

    size: int
    land: np.ndarray
    land_frac: np.ndarray
    dist_sea: np.ndarray
    dist_land: np.ndarray
    dem: np.ndarray
    veg: np.ndarray
    sand: np.ndarray
    texture: np.ndarray
    kelp_capacity: np.ndarray
    mouth: tuple[int, int] | None

    def crop(self, layer: np.ndarray, dx: int = 0, dy: int = 0) -> np.ndarray:
        """The tile window of a padded layer; ``(dx, dy)`` moves its content right/down."""
        s = self.size
        return layer[..., PAD - dy : PAD - dy + s, PAD - dx : PAD - dx + s]


def _remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def coastline(rng: np.random.Generator, plan: AoiPlan, size: int) -> np.ndarray:
    """Land mask: a random ramp perturbed by smooth noise, thresholded to the land fraction."""
    p = size + 2 * PAD
    yy, xx = np.mgrid[0:p, 0:p].astype(np.float32) - p / 2
    theta = rng.uniform(0, 2 * np.pi)
    field = (xx * np.cos(theta) + yy * np.sin(theta)) / size
    field += rng.uniform(0.08, 0.25) * fbm(rng, (p, p), size * 0.45, octaves=6, persistence=0.55)
    tile = field[PAD:-PAD, PAD:-PAD]
    f = plan.land_fraction
    if f <= 0:
        thr = tile.max() + rng.uniform(0.0, 0.4)  # the coast may lie just outside the tile
    elif f >= 1:
        thr = tile.min() - rng.uniform(0.02, 0.3)
    else:
        thr = np.quantile(tile, 1 - f)
    land = field > thr
    if 0 < f < 1:
        land = ndimage.binary_fill_holes(_remove_small(land, 30))  # no islets, no lakes
    return land


def _distances(land: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each water pixel to land and of each land pixel to water (inf if none)."""

    def edt(mask: np.ndarray) -> np.ndarray:
        if mask.all():  # no target anywhere on the canvas
            return np.full(mask.shape, np.inf, np.float32)
        return ndimage.distance_transform_edt(mask).astype(np.float32)

    return edt(~land), edt(land)


def elevation(
    rng: np.random.Generator, land: np.ndarray, dist_sea: np.ndarray, dist_land: np.ndarray
) -> np.ndarray:
    """DEM rising inland on land, 0 in a 5-15 px band offshore, missing beyond."""
    shape = land.shape
    hmax = rng.uniform(40, 300)
    ramp = 1 - np.exp(-dist_land / rng.uniform(15, 80))
    relief = 0.75 + 0.25 * np.tanh(fbm(rng, shape, shape[0] / 5, octaves=4))
    height = np.maximum(np.rint(hmax * ramp * relief + 1), 1)
    band = np.clip(rng.uniform(5, 15) + 2 * fbm(rng, shape, shape[0] / 4, octaves=2), 4, 16)
    sea = np.where(dist_sea <= band, 0, NODATA)
    return np.where(land, height, sea).astype(np.int16)


def land_cover(
    rng: np.random.Generator, plan: AoiPlan, dist_land: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vegetation fraction, beach-sand fraction and brightness texture of the land."""
    shape = dist_land.shape
    veg = np.clip(0.5 + rng.uniform(-0.35, 0.35) + 0.3 * fbm(rng, shape, shape[0] / 4, 4), 0, 1)
    shore = dist_land <= rng.uniform(2, 5)
    if plan.coastal_vegetation:  # green cliffs down to the water: NDVI high right at the coast
        veg = np.where(shore, np.maximum(veg, 0.9), veg)
        sand = np.zeros(shape, np.float32)
    else:
        beach = (dist_land <= rng.uniform(1, 4)) & (fbm(rng, shape, shape[0] / 6, 2) > -0.3)
        sand = beach.astype(np.float32)
    texture = 1 + 0.06 * fbm(rng, shape, 3, 2) + 0.06 * fbm(rng, shape, shape[0] / 8, 2)
    return veg.astype(np.float32), sand, texture.astype(np.float32)


def kelp_reefs(rng: np.random.Generator, plan: AoiPlan, dist_sea: np.ndarray) -> np.ndarray:
    """Maximum canopy density: blobs in the water 2-30 px from shore, 0 elsewhere."""
    shape = dist_sea.shape
    if not plan.has_kelp or not np.isfinite(dist_sea).any():
        return np.zeros(shape, np.float32)
    dmin, dmax = rng.uniform(2, 4), rng.uniform(12, 30)
    zone = smoothstep(dist_sea, dmin, dmin + 1.5) * (1 - smoothstep(dist_sea, dmax - 6, dmax))
    blobs = fbm(rng, shape, rng.uniform(10, 24), octaves=3)
    inside = zone > 0.5
    if not inside.any():
        return np.zeros(shape, np.float32)
    thr = np.quantile(blobs[inside], 1 - rng.uniform(0.2, 0.55))
    capacity = np.clip((blobs - thr) / 0.7, 0, 1) ** 0.7 * zone
    return capacity.astype(np.float32)


def river_mouth(
    rng: np.random.Generator, plan: AoiPlan, dist_sea: np.ndarray
) -> tuple[int, int] | None:
    """A shore pixel inside the tile where a river meets the sea, if the AOI has one."""
    if not plan.river:
        return None
    shore = np.zeros_like(dist_sea, bool)
    shore[PAD:-PAD, PAD:-PAD] = (dist_sea[PAD:-PAD, PAD:-PAD] > 0) & (
        dist_sea[PAD:-PAD, PAD:-PAD] <= 1.5
    )
    rows, cols = np.nonzero(shore)
    if rows.size == 0:
        return None
    k = int(rng.integers(rows.size))
    return int(rows[k]), int(cols[k])


def build_aoi(rng: np.random.Generator, plan: AoiPlan, size: int) -> AoiScene:
    """Build the static layers of an AOI."""
    land = coastline(rng, plan, size)
    dist_sea, dist_land = _distances(land)
    dem = elevation(rng, land, dist_sea, dist_land)
    veg, sand, texture = land_cover(rng, plan, dist_land)
    return AoiScene(
        size=size,
        land=land,
        land_frac=np.clip(ndimage.gaussian_filter(land.astype(np.float32), 0.6), 0, 1),
        dist_sea=dist_sea,
        dist_land=dist_land,
        dem=dem,
        veg=veg,
        sand=sand,
        texture=texture,
        kelp_capacity=kelp_reefs(rng, plan, dist_sea),
        mouth=river_mouth(rng, plan, dist_sea),
    )
