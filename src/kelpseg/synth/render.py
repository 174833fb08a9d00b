"""Rendering one acquisition (date) of an AOI into a 7-band tile, its mask and its truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from kelpseg.synth import spectra as sp
from kelpseg.synth.artifacts import corrupt_mask, saturate, scene_edge, slc_off_stripes
from kelpseg.synth.noise import fbm, smoothstep
from kelpseg.synth.plan import TilePlan
from kelpseg.synth.scene import PAD, AoiScene

KELP_THRESHOLD = 0.3
"""Canopy density above which a pixel is labelled kelp (Kelpwatch-like labels)."""


@dataclass
class Clouds:
    """Cloud layers of a date on the tile window."""

    thick: np.ndarray
    haze: np.ndarray
    shadow: np.ndarray
    rho: np.ndarray


@dataclass
class Rendered:
    """A rendered tile: the 7-band image, the written and true masks, and truth fields.

    ``layers`` holds the ground-truth layers behind the image: ``land``, ``cloud``
    (opaque), ``qa_commission`` (clear pixels the QA band flags as cloud), ``stripes``,
    ``scene_edge``, ``shadow`` (cloud shadow, boolean) and ``haze`` (thin-cloud weight, float).
    """

    image: np.ndarray
    mask: np.ndarray
    true_mask: np.ndarray
    truth: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, np.ndarray] = field(default_factory=dict)


def _col(spectrum: np.ndarray) -> np.ndarray:
    return spectrum[:, None, None]


def kelp_density(
    rng: np.random.Generator, scene: AoiScene, abundance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Canopy density of a date as labelled and as seen at the surface.

    Labels (like Kelpwatch's) and the image disagree: tides and currents pull part of the
    canopy under water on the image's date, and the labelled canopy was mapped with its own
    noise, so the two densities are correlated but not equal.

    Returns:
        ``(labelled, visible)`` densities in [0, 1].
    """
    cap = scene.crop(scene.kelp_capacity)
    if abundance <= 0 or not cap.any():
        return np.zeros_like(cap), np.zeros_like(cap)
    base = cap * abundance
    shared = fbm(rng, cap.shape, 6, 2)
    label = base * (1 + 0.3 * shared) + 0.05 * rng.standard_normal(cap.shape)
    own = 0.7 * shared + 0.71 * fbm(rng, cap.shape, 5, 2)
    tide = rng.uniform(0.55, 1.0)
    visible = base * tide * (1 + 0.3 * own) + 0.05 * rng.standard_normal(cap.shape)
    return np.clip(label, 0, 1).astype(np.float32), np.clip(visible, 0, 1).astype(np.float32)


def water(
    rng: np.random.Generator, scene: AoiScene, tile: TilePlan, canopy: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Water reflectance with kelp and the water confusers of the date."""
    s = scene.size
    shape = (s, s)
    dist = scene.crop(scene.dist_sea)
    sea = ~scene.crop(scene.land)
    rho = _col(sp.WATER * rng.uniform(0.9, 1.15)) + 0.0025 * fbm(rng, shape, s / 3, 3)[None] * (
        _col(np.array([0.4, 0.6, 1, 1, 1], np.float32))
    )
    rho = rho + _col(sp.SHALLOW) * np.exp(-dist / 6)[None]
    rho = rho + _col(sp.KELP * rng.uniform(0.65, 1.15)) * canopy[None]
    confusers = []
    if tile.plume and scene.mouth is not None:
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        r = np.hypot(yy - (scene.mouth[0] - PAD), xx - (scene.mouth[1] - PAD))
        spread = np.clip(1 + 0.4 * fbm(rng, shape, s / 6, 2), 0, None)
        plume = np.exp(-r / rng.uniform(10, 60)) * spread * rng.uniform(0.5, 1.0)
        rho = rho + _col(sp.PLUME) * plume[None]
        if (plume[sea] > 0.05).any():
            confusers.append("plume")
    coast = np.isfinite(dist) & (dist > 0) & (dist <= 4)
    if tile.surf and coast.any():
        foam = np.exp(-(dist - 1) / rng.uniform(0.6, 1.5)) * np.clip(
            1 + 0.6 * fbm(rng, shape, s / 5, 2), 0, 2
        )
        rho = rho + _col(sp.SURF) * (rng.uniform(0.2, 0.8) * np.where(sea, foam, 0))[None]
        confusers.append("surf")
    if tile.glint and sea.any():
        g = smoothstep(fbm(rng, shape, s / 3, 3), 0.3, 1.3) * (1 + 0.2 * fbm(rng, shape, 4, 1))
        rho = rho + _col(sp.GLINT) * (rng.uniform(0.02, 0.07) * g)[None]
        if (g[sea] > 0.05).any():
            confusers.append("glint")
    return rho.astype(np.float32), confusers


def land(rng: np.random.Generator, scene: AoiScene) -> np.ndarray:
    """Land reflectance of a date: vegetation (seasonal greenness), bare soil and sand."""
    veg, sand = scene.crop(scene.veg)[None], scene.crop(scene.sand)[None]
    green = sp.VEGETATION * np.array([1, rng.uniform(0.85, 1.12), 1, 1, 1], np.float32)
    rho = veg * _col(green) + (1 - veg) * _col(sp.BARE)
    rho = rho * (1 - sand) + sand * _col(sp.SAND)
    return rho * scene.crop(scene.texture)[None]


def clouds(rng: np.random.Generator, scene: AoiScene, cover: float) -> Clouds | None:
    """Opaque cloud (QA = 1), a thin haze around it and its shadow, or None on clear dates."""
    if cover <= 0:
        return None
    s = scene.size
    p = s + 2 * PAD
    n = fbm(rng, (p, p), s / 4, 4)
    thr = np.quantile(scene.crop(n), 1 - cover)
    thick = n > thr
    haze = np.where(thick, 0, 0.5 * np.clip((n - thr + 0.5) / 0.5, 0, 1))
    d = float(rng.uniform(8, 22))
    phi = float(rng.uniform(0, 2 * np.pi))
    shadow = scene.crop(thick, round(d * np.cos(phi)), round(d * np.sin(phi)))
    thick_t = scene.crop(thick)
    texture = 0.88 + 0.12 * np.tanh(fbm(rng, (s, s), s / 10, 3))
    rho = _col(sp.CLOUD * rng.uniform(0.92, 1.05)) * texture[None]
    return Clouds(thick_t, scene.crop(haze).astype(np.float32), shadow & ~thick_t, rho)


def qa_commission(
    rng: np.random.Generator, rho: np.ndarray, water: np.ndarray, thick: np.ndarray
) -> np.ndarray:
    """Clear pixels that the date's QA cloud mask flags anyway (commission).

    Real cloud masks (CFMask and the like) flag what they cannot tell from cloud, and the kelp
    labels come from another source, so labelled kelp under QA = 1 is common:

    - a brightness test with a threshold of the date, one over water and one over land (as
      CFMask runs separate water and land tests), flags thin haze in part, sun glint, surf,
      turbid plumes and bright sand or soil;
    - the cloud mask is buffered by 0-4 px (Landsat's "dilated cloud");
    - on some dates a few small false blobs appear anywhere (roofs, bright boats, noise).

    Args:
        rng: The date's generator for the QA band.
        rho: ``(5, H, W)`` reflectance as seen (haze, glint, surf, clouds included).
        water: True water pixels.
        thick: Opaque cloud.

    Returns:
        Flagged pixels that are not opaque cloud.
    """
    vis = rho[2:5].mean(axis=0)  # Red, Green, Blue: clear water ~0.04, sand ~0.29, cloud ~0.45
    t_water, t_land = rng.uniform(0.05, 0.2), rng.uniform(0.22, 0.45)
    flagged = thick | np.where(water, vis > t_water, vis > t_land)
    buffer = int(rng.integers(0, 5))
    if buffer and flagged.any():
        flagged = ndimage.binary_dilation(flagged, iterations=buffer)
    if rng.random() < 0.2:
        s = thick.shape[0]
        yy, xx = np.ogrid[0:s, 0:s]
        for _ in range(int(rng.integers(1, 5))):
            cy, cx = rng.uniform(0, s, 2)
            flagged |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(1.5, 5) ** 2
    return flagged & ~thick


def _to_dn(rng: np.random.Generator, rho: np.ndarray, sensor: str) -> np.ndarray:
    gain = 1 + 0.03 * rng.standard_normal(5).astype(np.float32)
    offset = 0.003 * rng.standard_normal(5).astype(np.float32)
    dn = sp.to_dn(rho * _col(gain) + _col(offset))
    dn += sp.SENSOR_NOISE_DN[sensor] * rng.standard_normal(dn.shape, dtype=np.float32)
    return np.clip(np.rint(dn), sp.DN_MIN, sp.DN_MAX)


def render_tile(rng: np.random.Generator, scene: AoiScene, tile: TilePlan) -> Rendered:
    """Render one date of an AOI.

    Args:
        rng: The tile's own random generator.
        scene: Static layers of the AOI.
        tile: What this date contains.

    Returns:
        The int16 ``(7, S, S)`` image, the written and true uint8 masks, and truth fields.
    """
    s = scene.size
    is_land = scene.crop(scene.land)
    density, visible = kelp_density(rng, scene, tile.kelp_abundance)
    water_rho, confusers = water(rng, scene, tile, visible)
    lf = scene.crop(scene.land_frac)[None]
    rho = lf * land(rng, scene) + (1 - lf) * water_rho
    green = scene.crop(scene.veg * (1 - scene.sand))[scene.crop(scene.dist_land) <= 2]
    if green.size and green.mean() > 0.7:
        confusers.append("coastal_vegetation")
    cl = clouds(rng, scene, tile.cloud_cover)
    thick = np.zeros((s, s), bool)
    if cl is not None:
        thick = cl.thick
        rho = rho * (1 - rng.uniform(0.3, 0.55) * cl.shadow)[None]
        rho = (1 - cl.haze[None]) * rho + cl.haze[None] * cl.rho
        rho = np.where(thick[None], cl.rho, rho)
        if (cl.shadow & ~is_land).any():
            confusers.append("cloud_shadow")
    dn = _to_dn(rng, rho, tile.sensor)
    dn = np.where(thick[None], np.clip(dn, 15_000, 25_000), dn)

    stripes = slc_off_stripes(rng, s) if tile.slc_off else np.zeros((s, s), bool)
    edge = scene_edge(rng, s, tile.scene_edge)
    missing = stripes | edge
    sat = saturate(rng, dn, ~missing) if tile.saturated else np.zeros(dn.shape, bool)
    dn[sat] = sp.SATURATED
    dn[:, missing] = sp.NODATA

    image = np.empty((7, s, s), np.int16)
    image[:5] = dn
    image[5] = (thick | stripes).astype(np.int16)
    commission = qa_commission(rng.spawn(1)[0], rho, ~is_land, thick) & ~missing
    image[5][commission] = 1  # a draw of its own: the other bands are as without it
    image[5][edge] = sp.NODATA  # outside the footprint the QA band is missing too
    dx, dy = tile.dem_shift
    image[6] = scene.crop(scene.dem, dx, dy)
    image[6][missing] = sp.NODATA  # gaps and scene edges are missing in the DEM band too

    true_mask = ((density > KELP_THRESHOLD) & ~is_land & ~thick & ~missing).astype(np.uint8)
    mask, corruption = true_mask, ""
    if tile.mask_corruption:
        mask, corruption = corrupt_mask(rng, tile.mask_corruption, true_mask, is_land)
    water_pct = 100.0 * float((~is_land).mean())
    bad = thick | commission | missing  # what the QA band says is cloudy or missing
    truth = {
        "water_pct": round(water_pct, 3),
        "cloud_pct": round(100.0 * float(thick.mean()), 3),
        "missing_pct": round(100.0 * float(missing.mean()), 3),
        "striped": bool(stripes.any()),
        "scene_edge": bool(edge.any()),
        "saturated": bool(sat.any()),
        "mask_corrupted": bool(corruption),
        "mask_corruption": corruption,
        "confusers": ";".join(confusers),
        "almost_all_water": water_pct > 98.0,
        "all_land": water_pct == 0.0,
        "heavy_corrupted": float(bad.mean()) > 0.7,
        "kelp_pixels": int(mask.sum()),
        "true_kelp_pixels": int(true_mask.sum()),
    }
    layers = {
        "land": is_land,
        "cloud": thick,
        "qa_commission": commission,
        "stripes": stripes,
        "scene_edge": edge,
        "shadow": cl.shadow if cl is not None else np.zeros((s, s), bool),
        "haze": cl.haze if cl is not None else np.zeros((s, s), np.float32),
    }
    return Rendered(image=image, mask=mask, true_mask=true_mask, truth=truth, layers=layers)
