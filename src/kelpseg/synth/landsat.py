"""Synthetic Landsat Collection 2 Level-2 scene folders, with their DEM and kelp truth.

A scene is one piece of coast rendered by the tile generator's own machinery (the AOI builder
of :mod:`kelpseg.synth.scene` and the renderer of :mod:`kelpseg.synth.render`, same spectra,
clouds, confusers and SLC-off stripes) at any size, then written as USGS distributes it:
``{product_id}_SR_B{n}.TIF`` per sensor (uint16, 0 = fill), a bit-packed ``QA_PIXEL``, a
``QA_RADSAT``, an MTL text file, on a UTM grid. Beside the folder: a DEM in geographic
coordinates (EPSG:4326, 1 arc-second, its own grid; 0 near the coast, nodata offshore) and the
truth (``{product_id}_truth.tif``: 1 kelp, 0 not, 255 fill; ``{product_id}_truth.json``).
A series renders one area (same coast, DEM and kelp beds) on several dates whose kelp extent,
clouds, sensor and confusers vary.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import array_bounds
from rasterio.warp import reproject, transform_bounds

from kelpseg.io.landsat import QA_DEFAULT_BITS, SENSOR_BANDS, SceneMeta, qa_mask
from kelpseg.io.raster import Georef, atomic_write_text, write_raster
from kelpseg.synth import spectra as sp
from kelpseg.synth.plan import SLC_FAILURE, AoiPlan, TilePlan, _abundance
from kelpseg.synth.render import render_tile
from kelpseg.synth.scene import PAD, build_aoi

SENSOR_CODES: dict[str, str] = {
    "LANDSAT_4": "LT04",
    "LANDSAT_5": "LT05",
    "LANDSAT_7": "LE07",
    "LANDSAT_8": "LC08",
    "LANDSAT_9": "LC09",
}
_SENSOR_ID = {"LT04": "TM", "LT05": "TM", "LE07": "ETM", "LC08": "OLI_TIRS", "LC09": "OLI_TIRS"}
_RENDER_AS = {"LT04": "LT05"}  # noise model of the renderer
PIXEL = 30.0
DEM_RES = 1.0 / 3600.0  # 1 arc-second, as SRTM / Copernicus GLO-30
DN_FILL = 0
DN_MAX = 65455
QA_FILL = 1


@dataclass(frozen=True)
class SyntheticScene:
    """A written synthetic scene.

    Attributes:
        folder: The Collection 2 Level-2 scene folder.
        dem: A DEM GeoTIFF in EPSG:4326 on its own grid (0 near the coast, nodata offshore).
        truth: uint8 kelp truth on the scene grid (1 kelp, 0 not, 255 fill).
        meta: Product id, sensor, date and folder.
        kelp_ha: True kelp area (ha) on observed pixels (not fill, not under opaque cloud).
    """

    folder: Path
    dem: Path
    truth: Path
    meta: SceneMeta
    kelp_ha: float


@dataclass(frozen=True)
class SceneRender:
    """A scene in memory, before it is written (what the files hold).

    Attributes:
        sr: ``{band number: uint16 (H, W)}`` surface-reflectance DN, 0 = fill.
        qa_pixel: uint16 bit-packed quality.
        truth: uint8 kelp truth, 255 fill.
        dem_canvas: int16 DEM (-32768 offshore) on the scene grid padded by ``PAD`` px.
        dem: The DEM on the scene grid, ``dem_canvas`` cropped.
        land: True land on the scene grid.
        georef: The scene's CRS and transform.
        product_id: The Landsat product id.
        path_row: WRS-2 path and row of the area.
        truth_fields: What the truth JSON holds besides the file names.
    """

    sr: dict[int, np.ndarray]
    qa_pixel: np.ndarray
    truth: np.ndarray
    dem_canvas: np.ndarray
    dem: np.ndarray
    land: np.ndarray
    georef: Georef
    product_id: str
    path_row: tuple[int, int]
    truth_fields: dict[str, object]


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(h, w) < 64:
        raise ValueError(f"a synthetic scene needs at least 64 x 64 px, got {w} x {h}")
    return h, w


def _origin(crs: str, rng: np.random.Generator, h: int, w: int) -> tuple[CRS, Affine]:
    """A 30 m north-up grid in ``crs`` near the middle of its area of use (34 N if inside)."""
    pcrs = ProjCRS.from_user_input(crs)
    if not pcrs.is_projected or pcrs.axis_info[0].unit_name not in ("metre", "meter"):
        raise ValueError(f"a Landsat scene needs a projected CRS in metres (UTM), got {crs}")
    aou = pcrs.area_of_use
    west, south, east, north = aou.bounds if aou else (-120.0, 0.0, -114.0, 84.0)
    lat = (
        34.0 if south < 34.0 < north else (-34.0 if south < -34.0 < north else (south + north) / 2)
    )
    lon = (west + east) / 2 + rng.uniform(-0.5, 0.5)
    lat += rng.uniform(-0.5, 0.5)
    cx, cy = Transformer.from_crs("EPSG:4326", pcrs, always_xy=True).transform(lon, lat)
    x0 = PIXEL * round((cx - w * PIXEL / 2) / PIXEL)
    y0 = PIXEL * round((cy + h * PIXEL / 2) / PIXEL)
    return CRS.from_user_input(crs), Affine(PIXEL, 0.0, x0, 0.0, -PIXEL, y0)


def _area(area_seed: int) -> tuple[AoiPlan, tuple[int, int], np.random.Generator]:
    """The area's plan (a kelp coast), WRS path/row, and its generator for the AOI builder."""
    rng = np.random.default_rng([area_seed, 9_001])
    plan = AoiPlan(
        index=0,
        kind="coast",
        land_fraction=float(rng.uniform(0.25, 0.5)),
        has_kelp=True,
        coastal_vegetation=bool(rng.random() < 0.4),
        river=bool(rng.random() < 0.5),
        split="test",
        origin=(0.0, 0.0),
    )
    path_row = (30 + area_seed % 20, 30 + (area_seed // 20) % 10)  # distinct for 200 areas
    return plan, path_row, rng


def _qa_pixel(layers: dict[str, np.ndarray], missing: np.ndarray, oli: bool) -> np.ndarray:
    """Bit-packed ``QA_PIXEL`` as CFMask writes it, from the renderer's truth layers."""
    thick = layers["cloud"] & ~missing
    dilated = layers["qa_commission"] & ~missing & ~thick
    shadow = layers["shadow"] & ~missing & ~thick
    cirrus = (layers["haze"] > 0.25) & ~missing & ~thick if oli else np.zeros_like(thick)
    water = ~layers["land"] & ~thick
    u = np.uint16
    qa = np.where(thick, u(3), np.where(dilated, u(2), u(1))) << u(8)  # cloud confidence
    qa |= np.where(shadow, u(3), u(1)) << u(10)
    qa |= u(1) << u(12)  # snow confidence low
    if oli:
        qa |= np.where(cirrus, u(3), u(1)) << u(14)
    qa |= dilated.astype(u) << u(1)
    qa |= cirrus.astype(u) << u(2)
    qa |= thick.astype(u) << u(3)
    qa |= shadow.astype(u) << u(4)
    qa |= (~(thick | dilated)).astype(u) << u(6)
    qa |= water.astype(u) << u(7)
    qa[missing] = QA_FILL
    return qa.astype(np.uint16)


def _sr_bands(image: np.ndarray, missing: np.ndarray, code: str) -> dict[int, np.ndarray]:
    """``SR_B{n}`` of the sensor from the rendered SWIR1, NIR, Red, Green, Blue DN."""
    dn = image[:5].astype(np.float32)
    rho = dn * sp.SCALE + sp.OFFSET

    def derived(r: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(sp.to_dn(r)), 1, DN_MAX)

    bands = {n: dn[i] for i, n in enumerate(SENSOR_BANDS[f"LANDSAT_{int(code[2:])}"])}
    bands[7] = derived(0.7 * rho[0])  # SWIR2, darker than SWIR1
    if code in ("LC08", "LC09"):
        bands[1] = derived(1.03 * rho[4] + 0.002)  # coastal aerosol, like Blue
    out = {}
    for n in sorted(bands):
        b = np.clip(bands[n], 1, DN_MAX).astype(np.uint16)
        b[missing] = DN_FILL
        out[n] = b
    return out


SENSOR_YEARS = {
    "LANDSAT_4": (1982, 1993),
    "LANDSAT_5": (1984, 2011),  # TM imaging ended in November 2011
    "LANDSAT_7": (1999, 2024),
    "LANDSAT_8": (2013, None),
    "LANDSAT_9": (2021, None),
}
"""Years each sensor imaged (None: still flying)."""
DEFAULT_DATES = {
    "LANDSAT_4": dt.date(1988, 8, 15),
    "LANDSAT_5": dt.date(2005, 8, 15),
    "LANDSAT_7": dt.date(2001, 8, 15),  # before the SLC failure of May 2003
    "LANDSAT_8": dt.date(2021, 8, 15),
    "LANDSAT_9": dt.date(2022, 8, 15),
}
"""A late-summer date within each sensor's life, when none is given."""


def sensor_date(sensor: str, date: dt.date | None) -> dt.date:
    """``date``, or the sensor's default one; ValueError for a date the sensor never saw."""
    if sensor not in SENSOR_YEARS:
        raise ValueError(f"unknown sensor {sensor!r}: choose from {', '.join(SENSOR_YEARS)}")
    if date is None:
        return DEFAULT_DATES[sensor]
    first, last = SENSOR_YEARS[sensor]
    if date.year < first or (last is not None and date.year > last):
        span = f"{first}-{last}" if last else f"{first} on"
        raise ValueError(f"{sensor} imaged {span}, not on {date.isoformat()}")
    return date


def render_landsat(
    *,
    size: int | tuple[int, int] = 1024,
    sensor: str = "LANDSAT_8",
    date: dt.date | None = None,
    seed: int = 0,
    area_seed: int | None = None,
    acquisition: int = 0,
    cloud_fraction: float = 0.1,
    kelp_abundance: float | None = None,
    crs: str = "EPSG:32611",
) -> SceneRender:
    """Render a scene in memory (see :func:`write_landsat_scene` for the arguments)."""
    if sensor not in SENSOR_CODES:
        raise ValueError(f"unknown sensor {sensor!r}: choose from {', '.join(SENSOR_CODES)}")
    date = sensor_date(sensor, date)
    if not 0.0 <= cloud_fraction < 1.0:
        raise ValueError(f"cloud_fraction must be in [0, 1), got {cloud_fraction}")
    h, w = _shape(size)
    s = max(h, w)
    area_seed = seed if area_seed is None else area_seed
    plan, path_row, area_rng = _area(area_seed)
    scene = build_aoi(area_rng, plan, s)
    ref = Georef(*_origin(crs, np.random.default_rng([area_seed, 9_002]), h, w))
    code = SENSOR_CODES[sensor]
    rng = np.random.default_rng([seed, area_seed, acquisition, 9_003])
    abundance = _abundance(rng, date) if kelp_abundance is None else float(kelp_abundance)
    tile = TilePlan(
        tile_id=f"{area_seed}",
        aoi=0,
        acquisition=acquisition,
        split="test",
        sensor=_RENDER_AS.get(code, code),
        date=date,
        kelp_abundance=float(np.clip(abundance, 0.0, 1.0)),
        cloud_cover=float(cloud_fraction),
        scene_edge=float(rng.uniform(0.03, 0.08)),
        slc_off=code == "LE07" and date >= SLC_FAILURE,
        dem_shift=(0, 0),
        saturated=False,
        mask_corruption="",
        glint=bool(rng.random() < 0.2),
        surf=bool(rng.random() < 0.5),
        plume=plan.river and bool(rng.random() < 0.7),
    )
    r = render_tile(rng, scene, tile)
    crop = (slice(0, h), slice(0, w))
    layers = {k: v[crop] for k, v in r.layers.items()}
    missing = layers["stripes"] | layers["scene_edge"]
    image = r.image[(slice(None), *crop)]
    sr = _sr_bands(image, missing, code)
    qa = _qa_pixel(layers, missing, oli=code in ("LC08", "LC09"))
    truth = np.where(missing, np.uint8(255), r.true_mask[crop]).astype(np.uint8)
    processed = date + dt.timedelta(days=int(rng.integers(8, 20)))
    pid = f"{code}_L2SP_{path_row[0]:03d}{path_row[1]:03d}_{date:%Y%m%d}_{processed:%Y%m%d}_02_T1"
    ha = PIXEL * PIXEL / 10_000.0
    water = ~layers["land"] & ~missing
    clear = ~qa_mask(qa, QA_DEFAULT_BITS)
    fields: dict[str, object] = {
        "scene_id": pid,
        "sensor": sensor,
        "date": date.isoformat(),
        "kelp_ha": round(float((truth == 1).sum()) * ha, 4),
        "kelp_clear_ha": round(float(((truth == 1) & clear).sum()) * ha, 4),
        "kelp_pixels": int((truth == 1).sum()),
        "water_ha": round(float(water.sum()) * ha, 4),
        "water_clear_ha": round(float((water & clear).sum()) * ha, 4),
        "pixel_area_m2": PIXEL * PIXEL,
        "kelp_abundance": round(tile.kelp_abundance, 4),
        "cloud_fraction": round(float(layers["cloud"][~missing].mean()), 4),
        "fill_fraction": round(float(missing.mean()), 4),
        "slc_off": tile.slc_off,
        "seed": seed,
        "area_seed": area_seed,
        "acquisition": acquisition,
        "crs": crs,
        "height": h,
        "width": w,
    }
    return SceneRender(
        sr=sr,
        qa_pixel=qa,
        truth=truth,
        dem_canvas=scene.dem,
        dem=scene.crop(scene.dem)[crop],
        land=layers["land"],
        georef=ref,
        product_id=pid,
        path_row=path_row,
        truth_fields=fields,
    )


def _mtl(r: SceneRender, sensor: str, date: dt.date) -> str:
    """A Collection 2 Level-2 ``_MTL.txt`` with the groups and keys readers look for."""
    pid, code = r.product_id, SENSOR_CODES[sensor]
    h, w = r.qa_pixel.shape
    t = r.georef.transform
    names = [f'    FILE_NAME_BAND_{n} = "{pid}_SR_B{n}.TIF"' for n in sorted(r.sr)]
    refl = [
        f"    REFLECTANCE_MULT_BAND_{n} = 2.75E-05\n    REFLECTANCE_ADD_BAND_{n} = -0.200000"
        for n in sorted(r.sr)
    ]
    zone = r.georef.crs.to_epsg() % 100 if r.georef.crs.to_epsg() else 0
    lines = [
        "GROUP = LANDSAT_METADATA_FILE",
        "  GROUP = PRODUCT_CONTENTS",
        '    ORIGIN = "Image courtesy of the U.S. Geological Survey (synthetic: kelpseg)"',
        f'    LANDSAT_PRODUCT_ID = "{pid}"',
        '    PROCESSING_LEVEL = "L2SP"',
        "    COLLECTION_NUMBER = 02",
        '    COLLECTION_CATEGORY = "T1"',
        *names,
        f'    FILE_NAME_QUALITY_L1_PIXEL = "{pid}_QA_PIXEL.TIF"',
        f'    FILE_NAME_QUALITY_L1_RADIOMETRIC_SATURATION = "{pid}_QA_RADSAT.TIF"',
        f'    FILE_NAME_METADATA_ODL = "{pid}_MTL.txt"',
        "  END_GROUP = PRODUCT_CONTENTS",
        "  GROUP = IMAGE_ATTRIBUTES",
        f'    SPACECRAFT_ID = "{sensor}"',
        f'    SENSOR_ID = "{_SENSOR_ID[code]}"',
        f"    WRS_PATH = {r.path_row[0]}",
        f"    WRS_ROW = {r.path_row[1]}",
        f"    DATE_ACQUIRED = {date.isoformat()}",
        '    SCENE_CENTER_TIME = "18:30:00.0000000Z"',
        f"    CLOUD_COVER = {100 * float(r.truth_fields['cloud_fraction']):.2f}",
        "  END_GROUP = IMAGE_ATTRIBUTES",
        "  GROUP = PROJECTION_ATTRIBUTES",
        '    MAP_PROJECTION = "UTM"',
        '    DATUM = "WGS84"',
        f"    UTM_ZONE = {zone}",
        f"    GRID_CELL_SIZE_REFLECTIVE = {PIXEL:.2f}",
        f"    REFLECTIVE_LINES = {h}",
        f"    REFLECTIVE_SAMPLES = {w}",
        f"    CORNER_UL_PROJECTION_X_PRODUCT = {t.c:.3f}",
        f"    CORNER_UL_PROJECTION_Y_PRODUCT = {t.f:.3f}",
        "  END_GROUP = PROJECTION_ATTRIBUTES",
        "  GROUP = LEVEL2_SURFACE_REFLECTANCE_PARAMETERS",
        *refl,
        "  END_GROUP = LEVEL2_SURFACE_REFLECTANCE_PARAMETERS",
        "END_GROUP = LANDSAT_METADATA_FILE",
        "END",
    ]
    return "\n".join(lines) + "\n"


def write_dem(r: SceneRender, path: Path) -> Path:
    """The area's DEM in EPSG:4326 at 1 arc-second on its own grid, covering the scene.

    The generator's DEM (on the scene grid padded by ``PAD`` px) is reprojected bilinearly;
    offshore and outside the canvas it is nodata (-32768, declared).
    """
    src_t = r.georef.transform @ Affine.translation(-PAD, -PAD)
    h, w = r.qa_pixel.shape
    bounds = array_bounds(h, w, r.georef.transform)
    west, south, east, north = transform_bounds(r.georef.crs, "EPSG:4326", *bounds, densify_pts=21)
    m = 8 * DEM_RES
    west, north = (
        math.floor((west - m) / DEM_RES) * DEM_RES,
        math.ceil((north + m) / DEM_RES) * DEM_RES,
    )
    width = math.ceil((east + m - west) / DEM_RES)
    height = math.ceil((north - south + m) / DEM_RES)
    dst_t = Affine(DEM_RES, 0.0, west, 0.0, -DEM_RES, north)
    dem = np.full((height, width), sp.NODATA, np.int16)
    reproject(
        r.dem_canvas,
        dem,
        src_transform=src_t,
        src_crs=r.georef.crs,
        src_nodata=sp.NODATA,
        dst_transform=dst_t,
        dst_crs="EPSG:4326",
        dst_nodata=sp.NODATA,
        resampling=Resampling.bilinear,
    )
    ref = Georef(CRS.from_epsg(4326), dst_t)
    return write_raster(path, dem, georef=ref, nodata=sp.NODATA, band_names=["elevation"])


def write_landsat_scene(
    out: Path,
    *,
    size: int | tuple[int, int] = 1024,
    sensor: str = "LANDSAT_8",
    date: dt.date | None = None,
    seed: int = 0,
    area_seed: int | None = None,
    cloud_fraction: float = 0.1,
    crs: str = "EPSG:32611",
    acquisition: int = 0,
    kelp_abundance: float | None = None,
    overwrite: bool = False,
) -> SyntheticScene:
    """Write one synthetic Collection 2 Level-2 scene folder, its DEM and truth into ``out``.

    Args:
        out: Parent folder: ``out/{product_id}/`` (the scene), ``out/DEM_{path}{row}.tif``
            (WRS path/row are a function of ``area_seed``, distinct for 200 areas),
            ``out/{product_id}_truth.tif`` and ``_truth.json``.
        size: Side, or ``(rows, cols)``, in 30 m pixels.
        sensor: ``SPACECRAFT_ID``: LANDSAT_4/5/7/8/9 (band names and noise follow it;
            LANDSAT_7 after 31 May 2003 has SLC-off gaps).
        date: ``DATE_ACQUIRED`` (season and year drive the kelp abundance); default a late
            summer within the sensor's life (:data:`DEFAULT_DATES`); a date the sensor
            never imaged is refused.
        seed: Seed of the date (clouds, kelp extent, confusers).
        area_seed: Seed of the area (coast, DEM, kelp beds, grid); default ``seed``.
        cloud_fraction: Share of opaque cloud.
        crs: Projected CRS in metres of the scene grid.
        acquisition: Index of the date in a series (a seed of its own).
        kelp_abundance: Canopy abundance in [0, 1]; default drawn from season and year.
        overwrite: Replace an existing scene folder of the same product id.

    Returns:
        Where everything lies, the scene's metadata and the true kelp area.
    """
    out = Path(out)
    date = sensor_date(sensor, date)
    r = render_landsat(
        size=size,
        sensor=sensor,
        date=date,
        seed=seed,
        area_seed=area_seed,
        acquisition=acquisition,
        cloud_fraction=cloud_fraction,
        kelp_abundance=kelp_abundance,
        crs=crs,
    )
    pid = r.product_id
    folder = out / pid
    if folder.exists():
        if not overwrite:
            raise FileExistsError(f"{folder} already exists (pass overwrite to replace it)")
        shutil.rmtree(folder)
    part = out / f".{pid}.partial"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    try:
        for n, band in r.sr.items():
            write_raster(part / f"{pid}_SR_B{n}.TIF", band, georef=r.georef, nodata=DN_FILL)
        write_raster(part / f"{pid}_QA_PIXEL.TIF", r.qa_pixel, georef=r.georef, nodata=QA_FILL)
        radsat = np.zeros_like(r.qa_pixel)
        write_raster(part / f"{pid}_QA_RADSAT.TIF", radsat, georef=r.georef)
        atomic_write_text(part / f"{pid}_MTL.txt", _mtl(r, sensor, date))
        part.rename(folder)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    dem = write_dem(r, out / f"DEM_{r.path_row[0]:03d}{r.path_row[1]:03d}.tif")
    truth = write_raster(
        out / f"{pid}_truth.tif", r.truth, georef=r.georef, nodata=255, band_names=["kelp"]
    )
    fields = {**r.truth_fields, "folder": folder.name, "dem": dem.name, "truth": truth.name}
    atomic_write_text(out / f"{pid}_truth.json", json.dumps(fields, indent=2) + "\n")
    meta = SceneMeta(scene_id=pid, sensor=sensor, date=date, folder=folder)
    return SyntheticScene(
        folder=folder, dem=dem, truth=truth, meta=meta, kelp_ha=float(fields["kelp_ha"])
    )


def series_plan(acquisitions: int, seed: int = 0) -> list[tuple[str, dt.date, float]]:
    """``(sensor, date, cloud_fraction)`` of each date of a series: one late-summer date a
    year up to 2023, the sensor of the year, and clear, cloudy or poorly observed dates."""
    if acquisitions < 1:
        raise ValueError(f"acquisitions must be at least 1, got {acquisitions}")
    rng = np.random.default_rng([seed, 9_004])
    out = []
    for k in range(acquisitions):
        year = 2023 - (acquisitions - 1 - k)
        date = dt.date(year, 1, 1) + dt.timedelta(days=int(rng.integers(195, 275)))
        if year >= 2022:
            sensor = ("LANDSAT_8", "LANDSAT_9")[year % 2]
        elif year >= 2013:
            sensor = "LANDSAT_8"
        elif year == 2012:  # Landsat-5 ended in 2011, Landsat-8 began in 2013
            sensor = "LANDSAT_7"
        else:
            sensor = "LANDSAT_5"
        u = rng.random()
        cloud = (
            0.0 if u < 0.4 else float(rng.uniform(0.05, 0.3) if u < 0.85 else rng.uniform(0.5, 0.8))
        )
        out.append((sensor, date, cloud))
    return out


def write_landsat_series(
    out: Path,
    *,
    acquisitions: int,
    size: int | tuple[int, int] = 1024,
    seed: int = 0,
    sensor: str | None = None,
    crs: str = "EPSG:32611",
    overwrite: bool = False,
) -> list[SyntheticScene]:
    """Several dates of one area (same coast, DEM, kelp beds and grid) into ``out``.

    Kelp extent (season, year, marine heatwave 2014-2016), clouds and confusers vary by date;
    see :func:`series_plan`. ``sensor`` forces one sensor for every date.
    """
    scenes = []
    for k, (auto, date, cloud) in enumerate(series_plan(acquisitions, seed)):
        scenes.append(
            write_landsat_scene(
                out,
                size=size,
                sensor=sensor or auto,
                date=date,
                seed=seed,
                area_seed=seed,
                acquisition=k,
                cloud_fraction=cloud,
                crs=crs,
                overwrite=overwrite,
            )
        )
    return scenes
