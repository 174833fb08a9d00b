"""Synthetic HLS v2 granules, Sentinel-2 L2A ``.SAFE`` products and STAC catalogs.

Each product is rendered by the Landsat scene generator (:func:`kelpseg.synth.landsat.render_landsat`:
the same coast, DEM, kelp beds, clouds and confusers) and written as that product is
distributed, so its kelp truth is known on the product's 30 m grid:

- **HLS** (``L30``/``S30``): the rendered reflectance x 10,000 as int16 (nodata -9999) on the
  rendered 30 m UTM grid, an ``Fmask`` (uint8 bits, 255 fill) from the rendered cloud, shadow,
  cirrus and water layers.
- **Sentinel-2 L2A**: the rendered 30 m reflectance repeated onto 10 m pixels plus 10 m noise
  (B02, B03, B04, B08), whose 2 x 2 means are the 20 m bands (B8A, B11 and B02-B04 at 20 m:
  a sensor integrates its pixel's area); JPEG2000 bodies (lossless) as ESA writes them; DN =
  reflectance x 10,000 + 1,000 from processing baseline 04.00 on (0 = nodata); an ``SCL`` at
  20 m from the cloud layers plus a patch of class 1 (saturated/defective); and an
  ``MTD_MSIL2A.xml`` with the quantification and, from 04.00, the ``BOA_ADD_OFFSET`` list.
  Its truth is on the 30 m grid of the tile's origin (the rendered grid), 255 where a 30 m
  pixel overlaps any nodata or defective 10/20 m pixel, the pixels a reader must call missing.
- **STAC**: items (Collection 2 asset keys, ``eo:bands`` common names, ``raster:bands`` scale
  and offset, ``landsat:wrs_path``/``row``, ``platform``) for synthetic Landsat scenes, HLS
  granules and ``.SAFE`` products, saved as a catalog -> collection -> items tree with
  relative hrefs.

The surfaces keep Landsat's spectra: Sentinel-2's B8A and B11 are not Landsat's NIR and SWIR1
band passes, so a model's accuracy on these products measures the resampling and processing,
not the band-pass difference.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds

from kelpseg.io.hls import FMASK_BITS, FMASK_FILL, HLS_BANDS, HLS_NODATA
from kelpseg.io.landsat import SENSOR_BANDS, SR_OFFSET, SR_SCALE
from kelpseg.io.raster import Georef, atomic_write_text, write_raster
from kelpseg.synth.landsat import PIXEL, SceneRender, SyntheticScene, render_landsat, write_dem

MGRS_SQUARES = ("KU", "KT", "LU", "LT", "JV", "MS", "NS", "GU")
SCL_NODATA, SCL_DEFECTIVE, SCL_SHADOW, SCL_VEGETATION, SCL_WATER = 0, 1, 3, 4, 6
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS = 8, 9, 10
SCL_FLAGGED_DEFAULT = (SCL_SHADOW, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS)
_MODEL = ("swir1", "nir", "red", "green", "blue")


def mgrs_tile(crs: Georef | str, area_seed: int) -> str:
    """A plausible MGRS tile name (``T11SKU``) for a synthetic area: the UTM zone of the CRS,
    latitude band S (the generator's 34 N), a grid square chosen by the area."""
    epsg = crs.crs.to_epsg() if isinstance(crs, Georef) and crs.crs else None
    if epsg is None and isinstance(crs, str):
        epsg = int(crs.split(":")[-1])
    zone = (epsg or 32611) % 100
    return f"T{zone:02d}S{MGRS_SQUARES[area_seed % len(MGRS_SQUARES)]}"


def overlap_weights(n_src: int, src_res: float, n_dst: int, dst_res: float) -> np.ndarray:
    """``(n_dst, n_src)`` share of each destination pixel covered by each source pixel along
    one axis (grids with one origin): area averaging is ``W_rows @ a @ W_cols.T``."""
    lo_d = np.arange(n_dst)[:, None] * dst_res
    lo_s = np.arange(n_src)[None, :] * src_res
    ov = np.clip(np.minimum(lo_d + dst_res, lo_s + src_res) - np.maximum(lo_d, lo_s), 0, None)
    return ov / dst_res


def area_average(a: np.ndarray, src_res: float, shape: tuple[int, int], dst_res: float = PIXEL):
    """Exact area average of ``a`` (source pixels of ``src_res`` m) onto ``shape`` pixels of
    ``dst_res`` m sharing the origin: the generator's own expectation of a reader's result."""
    wr = overlap_weights(a.shape[0], src_res, shape[0], dst_res)
    wc = overlap_weights(a.shape[1], src_res, shape[1], dst_res)
    return wr @ a.astype(np.float64) @ wc.T


def any_overlap(flag: np.ndarray, src_res: float, shape: tuple[int, int]) -> np.ndarray:
    """True on 30 m pixels that any flagged source pixel overlaps."""
    return area_average(flag.astype(np.float64), src_res, shape) > 1e-9


def _rho(r: SceneRender) -> np.ndarray:
    """``(5, H, W)`` float64 surface reflectance of SWIR1, NIR, Red, Green, Blue."""
    nums = SENSOR_BANDS["LANDSAT_8"]
    return np.stack([r.sr[n].astype(np.float64) * SR_SCALE + SR_OFFSET for n in nums])


def _flags(r: SceneRender) -> dict[str, np.ndarray]:
    """The rendered QA_PIXEL as boolean layers."""
    q = r.qa_pixel
    bit = {name: ((q >> b) & 1).astype(bool) for name, b in
           (("fill", 0), ("dilated", 1), ("cirrus", 2), ("cloud", 3), ("shadow", 4), ("water", 7))}  # fmt: skip
    return bit


def _write_truth(
    out: Path, name: str, truth: np.ndarray, georef: Georef, fields: dict[str, object]
) -> tuple[Path, Path]:
    ha = PIXEL * PIXEL / 10_000.0
    path = write_raster(out / f"{name}_truth.tif", truth, georef=georef, nodata=255,
                        band_names=["kelp"])  # fmt: skip
    fields = {
        **fields,
        "kelp_ha": round(float((truth == 1).sum()) * ha, 4),
        "kelp_pixels": int((truth == 1).sum()),
        "fill_pixels": int((truth == 255).sum()),
        "truth": path.name,
    }
    js = atomic_write_text(out / f"{name}_truth.json", json.dumps(fields, indent=2) + "\n")
    return path, js


def _fresh(folder: Path, overwrite: bool) -> Path:
    if folder.exists():
        if not overwrite:
            raise FileExistsError(f"{folder} already exists (pass overwrite to replace it)")
        shutil.rmtree(folder)
    part = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    return part


# ---------------------------------------------------------------------------------------- HLS


@dataclass(frozen=True)
class SyntheticGranule:
    """A written synthetic HLS granule.

    Attributes:
        folder: The granule folder (one file per band, ``Fmask``).
        granule_id: e.g. ``HLS.L30.T11SKU.2021227T183919.v2.0``.
        product: ``L30`` or ``S30``.
        tile: MGRS tile.
        date: Acquisition date.
        dem: A DEM GeoTIFF (EPSG:4326) covering the granule.
        truth: uint8 kelp truth on the granule's grid (1 kelp, 0 not, 255 fill).
        render: What was rendered (30 m Landsat DN, QA bits, grid).
    """

    folder: Path
    granule_id: str
    product: str
    tile: str
    date: dt.date
    dem: Path
    truth: Path
    render: SceneRender = field(repr=False)

    def band(self, name: str) -> Path:
        """The file of an HLS band (``B05``, ``Fmask``...)."""
        return self.folder / f"{self.granule_id}.{name}.tif"


def _fmask(r: SceneRender) -> np.ndarray:
    f = _flags(r)
    fm = np.zeros(r.qa_pixel.shape, np.uint8)
    fm |= f["cirrus"].astype(np.uint8) << FMASK_BITS["cirrus"]
    fm |= f["cloud"].astype(np.uint8) << FMASK_BITS["cloud"]
    fm |= f["dilated"].astype(np.uint8) << FMASK_BITS["adjacent"]
    fm |= f["shadow"].astype(np.uint8) << FMASK_BITS["cloud_shadow"]
    fm |= (f["water"] & ~f["cloud"]).astype(np.uint8) << 5
    fm[f["fill"]] = FMASK_FILL
    return fm


def write_hls_granule(
    out: Path,
    *,
    product: str = "L30",
    size: int | tuple[int, int] = 96,
    date: dt.date = dt.date(2021, 8, 15),
    seed: int = 0,
    area_seed: int | None = None,
    cloud_fraction: float = 0.1,
    kelp_abundance: float | None = None,
    crs: str = "EPSG:32611",
    overwrite: bool = False,
) -> SyntheticGranule:
    """Write one synthetic HLS v2 granule folder, its DEM and truth into ``out``.

    ``out/{granule_id}/{granule_id}.{band}.tif`` for the product's bands (L30: B01-B07; S30:
    B01-B04, B8A, B11, B12), ``...Fmask.tif``; beside it ``DEM_{tile}.tif``,
    ``{granule_id}_truth.tif`` / ``.json``. Arguments as
    :func:`kelpseg.synth.landsat.write_landsat_scene`.
    """
    product = product.upper()
    if product not in HLS_BANDS:
        raise ValueError(f"product must be L30 or S30, got {product!r}")
    out = Path(out)
    area = seed if area_seed is None else area_seed
    r = render_landsat(
        size=size, sensor="LANDSAT_8", date=date, seed=seed, area_seed=area,
        cloud_fraction=cloud_fraction, kelp_abundance=kelp_abundance, crs=crs,
    )  # fmt: skip
    tile = mgrs_tile(r.georef, area)
    doy = date.timetuple().tm_yday
    gid = f"HLS.{product}.{tile}.{date.year}{doy:03d}T183919.v2.0"
    rho = _rho(r)
    fill = r.truth == 255
    values = np.clip(np.rint(rho * 10_000), -100, 16_000).astype(np.int16)
    values[:, fill] = HLS_NODATA
    bands = dict(zip(HLS_BANDS[product], values, strict=True))
    extra = {"B01": values[4] + 3}  # coastal aerosol, like Blue
    if product == "L30":
        extra["B07"] = (values[0] * 0.7).astype(np.int16)  # SWIR2
    else:
        extra["B12"] = (values[0] * 0.7).astype(np.int16)
    for b in extra.values():
        b[fill] = HLS_NODATA
    folder = out / gid
    part = _fresh(folder, overwrite)
    try:
        for name, v in sorted({**bands, **extra}.items()):
            write_raster(part / f"{gid}.{name}.tif", v, georef=r.georef, nodata=HLS_NODATA)
        write_raster(part / f"{gid}.Fmask.tif", _fmask(r), georef=r.georef, nodata=FMASK_FILL)
        part.rename(folder)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    dem = write_dem(r, out / f"DEM_{tile}.tif")
    truth, _ = _write_truth(
        out, gid, r.truth, r.georef,
        {"scene_id": gid, "sensor": f"HLS_{product}", "date": date.isoformat(),
         "folder": folder.name, "dem": dem.name, "seed": seed, "area_seed": area},
    )  # fmt: skip
    return SyntheticGranule(folder, gid, product, tile, date, dem, truth, r)


# -------------------------------------------------------------------------------- Sentinel-2


@dataclass(frozen=True)
class SyntheticSafe:
    """A written synthetic Sentinel-2 L2A ``.SAFE`` product.

    Attributes:
        path: The ``.SAFE`` folder.
        product_id: The product id (folder name without ``.SAFE``).
        baseline: Processing baseline (``04.00``, ``03.01``...).
        tile: MGRS tile.
        date: Acquisition date.
        dem: A DEM GeoTIFF (EPSG:4326) covering the tile.
        truth: uint8 kelp truth on the tile's 30 m grid (1 kelp, 0 not, 255 where a reader
            must call the pixel missing).
        grid: The 30 m grid's georeference (the tile's CRS and origin).
        bands: ``{band: file}`` of the written bands (``B02``... ``SCL``, at their resolution).
        expected_qa: bool ``(H, W)``: 30 m pixels any default-flagged SCL pixel overlaps.
        render: What was rendered (30 m Landsat DN, QA bits, grid).
    """

    path: Path
    product_id: str
    baseline: str
    tile: str
    date: dt.date
    dem: Path
    truth: Path
    grid: Georef
    bands: dict[str, Path] = field(repr=False)
    expected_qa: np.ndarray = field(repr=False)
    render: SceneRender = field(repr=False)


def _mtd(pid: str, baseline: str, spacecraft: str, start: str, files: Sequence[str]) -> str:
    """A Level-2A ``MTD_MSIL2A.xml`` with the elements readers use."""
    new = float(baseline) >= 4.0
    names = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
    offsets = "\n".join(
        f'        <BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13)
    )
    offset_list = (
        f"      <BOA_ADD_OFFSET_VALUES_LIST>\n{offsets}\n      </BOA_ADD_OFFSET_VALUES_LIST>\n"
        if new
        else ""
    )
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{b}"/>'
        for i, b in enumerate(names)
    )
    images = "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in files)
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{start}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{start}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{pid}.SAFE</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <Datatake datatakeIdentifier="G{pid[:3]}_{start[:4]}_synthetic_N{baseline}">
        <SPACECRAFT_NAME>{spacecraft}</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>{start}</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>70</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Product_Organisation>
        <Granule_List>
          <Granule imageFormat="JPEG2000">
{images}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
{offset_list}      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""


def _write_jp2(path: Path, data: np.ndarray, transform: Affine, crs: object) -> None:
    """A lossless JPEG2000 (GDAL's JP2OpenJPEG driver), as ESA's products are."""
    profile = {
        "driver": "JP2OpenJPEG",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "QUALITY": 100,
        "REVERSIBLE": "YES",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    Path(f"{path}.aux.xml").unlink(missing_ok=True)


def _scl(r: SceneRender, shape20: tuple[int, int]) -> np.ndarray:
    """SCL at 20 m: the class of the 30 m pixel under each 20 m pixel's centre."""
    f = _flags(r)
    scl30 = np.full(r.qa_pixel.shape, SCL_VEGETATION, np.uint8)
    scl30[f["water"]] = SCL_WATER
    scl30[f["dilated"]] = SCL_CLOUD_MEDIUM
    scl30[f["cirrus"]] = SCL_CIRRUS
    scl30[f["shadow"]] = SCL_SHADOW
    scl30[f["cloud"]] = SCL_CLOUD_HIGH
    scl30[f["fill"]] = SCL_NODATA
    rows = (2 * np.arange(shape20[0]) + 1) // 3
    cols = (2 * np.arange(shape20[1]) + 1) // 3
    return scl30[np.ix_(rows, cols)]


def write_sentinel2_safe(
    out: Path,
    *,
    size: int | tuple[int, int] = 96,
    baseline: str = "04.00",
    spacecraft: str = "Sentinel-2A",
    date: dt.date = dt.date(2021, 8, 15),
    seed: int = 0,
    area_seed: int | None = None,
    cloud_fraction: float = 0.1,
    kelp_abundance: float | None = None,
    defective: bool = True,
    noise: float = 0.0008,
    crs: str = "EPSG:32611",
    overwrite: bool = False,
) -> SyntheticSafe:
    """Write one synthetic Sentinel-2 L2A ``.SAFE`` folder, its DEM and 30 m truth into ``out``.

    Args:
        out: Parent folder: ``out/{product_id}.SAFE``, ``out/DEM_{tile}.tif``,
            ``out/{product_id}_truth.tif`` and ``_truth.json``.
        size: Side, or ``(rows, cols)``, of the 30 m grid (even: the 20 m bands then cover it
            exactly); the 10 m bands have three times as many pixels.
        baseline: Processing baseline; from ``04.00`` on DN carry the +1,000 offset and the
            metadata lists ``BOA_ADD_OFFSET`` -1000.
        spacecraft: ``SPACECRAFT_NAME``.
        date: Acquisition date.
        seed, area_seed, cloud_fraction, kelp_abundance, crs: As
            :func:`kelpseg.synth.landsat.write_landsat_scene` (the same arguments render the
            same surface, whatever the baseline).
        defective: Put a patch of SCL class 1 (saturated/defective) over open water.
        noise: Standard deviation of the 10 m reflectance about its 30 m pixel's value.
        overwrite: Replace an existing product of the same id.
    """
    out = Path(out)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h % 2 or w % 2:
        raise ValueError(f"size must be even in both directions, got {w} x {h}")
    area = seed if area_seed is None else area_seed
    r = render_landsat(
        size=(h, w), sensor="LANDSAT_8", date=date, seed=seed, area_seed=area,
        cloud_fraction=cloud_fraction, kelp_abundance=kelp_abundance, crs=crs,
    )  # fmt: skip
    rng = np.random.default_rng([seed, area, 9_101])
    tile = mgrs_tile(r.georef, area)
    add = 1000 if float(baseline) >= 4.0 else 0
    stamp = f"{date:%Y%m%d}T183921"
    pid = (
        f"S2{spacecraft[-1].upper()}_MSIL2A_{stamp}_N{baseline.replace('.', '')}_R070_{tile}_"
        f"{date:%Y%m%d}T230000"
    )
    fill30 = r.truth == 255
    rho30 = np.clip(_rho(r), 0.0005, 1.5)  # non-negative: old baselines cannot store < 0
    # 10 m field: each 30 m pixel's reflectance with zero-mean detail of the 10 m pixels
    field10 = np.repeat(np.repeat(rho30, 3, axis=1), 3, axis=2)
    field10 = np.clip(field10 + rng.normal(0.0, noise, field10.shape), 0.0005, 1.5)
    fill10 = np.repeat(np.repeat(fill30, 3, axis=0), 3, axis=1)
    h20, w20 = 3 * h // 2, 3 * w // 2
    field20 = field10.reshape(5, h20, 2, w20, 2).mean(axis=(2, 4))
    fill20 = fill10.reshape(h20, 2, w20, 2).any(axis=(1, 3))

    def dn(rho: np.ndarray, fill: np.ndarray) -> np.ndarray:
        v = np.clip(np.rint(rho * 10_000) + add, 1, 65_534).astype(np.uint16)
        v[fill] = 0
        return v

    idx = dict(zip(_MODEL, range(5), strict=True))
    t = r.georef.transform
    t10 = Affine(10.0, 0.0, t.c, 0.0, -10.0, t.f)
    t20 = Affine(20.0, 0.0, t.c, 0.0, -20.0, t.f)
    scl = _scl(r, (h20, w20))
    scl[fill20] = SCL_NODATA
    if defective:
        water = (scl == SCL_WATER) & ~fill20
        cand = np.argwhere(water[2:-4, 2:-4])
        if len(cand):
            i, j = cand[rng.integers(len(cand))] + 2
            scl[i : i + 2, j : j + 2] = SCL_DEFECTIVE
    gname = f"L2A_{tile}_A032089_{stamp}"
    prefix = f"{tile}_{stamp}"
    layers: dict[str, tuple[np.ndarray, int]] = {
        "B02": (dn(field10[idx["blue"]], fill10), 10),
        "B03": (dn(field10[idx["green"]], fill10), 10),
        "B04": (dn(field10[idx["red"]], fill10), 10),
        "B08": (dn(1.05 * field10[idx["nir"]], fill10), 10),  # broad NIR: not the model's
        "B8A": (dn(field20[idx["nir"]], fill20), 20),
        "B11": (dn(field20[idx["swir1"]], fill20), 20),
        "B12": (dn(0.7 * field20[idx["swir1"]], fill20), 20),
        "SCL": (scl, 20),
    }
    for b in ("B02", "B03", "B04"):  # the 20 m versions real products carry too
        layers[f"{b}@20"] = (dn(field20[idx[{"B02": "blue", "B03": "green", "B04": "red"}[b]]],
                                fill20), 20)  # fmt: skip
    folder = out / f"{pid}.SAFE"
    part = _fresh(folder, overwrite)
    rel: list[str] = []
    written: dict[str, Path] = {}
    try:
        img = part / "GRANULE" / gname / "IMG_DATA"
        for key, (arr, res) in layers.items():
            band = key.split("@")[0]
            sub = img / f"R{res}m"
            sub.mkdir(parents=True, exist_ok=True)
            name = f"{prefix}_{band}_{res}m.jp2"
            _write_jp2(sub / name, arr, t10 if res == 10 else t20, r.georef.crs)
            rel.append(f"GRANULE/{gname}/IMG_DATA/R{res}m/{name[:-4]}")
            written[key] = folder / "GRANULE" / gname / "IMG_DATA" / f"R{res}m" / name
        start = f"{date.isoformat()}T18:39:21.024Z"
        (part / "GRANULE" / gname / "MTD_TL.xml").write_text(
            f'<?xml version="1.0"?>\n<Level-2A_Tile_ID><TILE_ID>{gname}</TILE_ID>'
            f"<HORIZONTAL_CS_CODE>{r.georef.crs}</HORIZONTAL_CS_CODE></Level-2A_Tile_ID>\n"
        )
        (part / "MTD_MSIL2A.xml").write_text(_mtd(pid, baseline, spacecraft, start, rel))
        part.rename(folder)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    shape = (h, w)
    missing20 = fill20 | np.isin(scl, (SCL_NODATA, SCL_DEFECTIVE))
    fill = any_overlap(fill10, 10.0, shape) | any_overlap(missing20, 20.0, shape)
    qa = any_overlap(np.isin(scl, SCL_FLAGGED_DEFAULT), 20.0, shape) & ~fill
    truth = np.where(fill, np.uint8(255), r.truth).astype(np.uint8)
    dem = write_dem(r, out / f"DEM_{tile}.tif")
    truth_path, _ = _write_truth(
        out, pid, truth, r.georef,
        {"scene_id": pid, "sensor": spacecraft.upper().replace("-", "_"),
         "date": date.isoformat(), "baseline": baseline, "folder": folder.name,
         "dem": dem.name, "seed": seed, "area_seed": area},
    )  # fmt: skip
    return SyntheticSafe(
        path=folder, product_id=pid, baseline=baseline, tile=tile, date=date, dem=dem,
        truth=truth_path, grid=r.georef, bands=written, expected_qa=qa, render=r,
    )  # fmt: skip


# -------------------------------------------------------------------------------------- STAC


def _bbox(georef: Georef, shape: tuple[int, int]) -> list[float]:
    bounds = array_bounds(shape[0], shape[1], georef.transform)
    return list(transform_bounds(georef.crs, "EPSG:4326", *bounds, densify_pts=21))


def _geometry(bbox: Sequence[float]) -> dict[str, object]:
    w, s, e, n = bbox
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def _when(date: dt.date) -> dt.datetime:
    return dt.datetime(date.year, date.month, date.day, 18, 39, 21, tzinfo=dt.UTC)


LANDSAT_ASSETS: dict[str, tuple[str, str | None]] = {
    "coastal": ("SR_B1", "coastal"),
    "blue": ("SR_B2", "blue"),
    "green": ("SR_B3", "green"),
    "red": ("SR_B4", "red"),
    "nir08": ("SR_B5", "nir08"),
    "swir16": ("SR_B6", "swir16"),
    "swir22": ("SR_B7", "swir22"),
    "qa_pixel": ("QA_PIXEL", None),
}
"""Collection 2 Level-2 STAC asset keys of Landsat 8/9 -> (file suffix, common name)."""


def landsat_item(scene: SyntheticScene, *, keys: str = "c2"):
    """A STAC Item for a synthetic Landsat 8/9 scene, hrefs absolute (made relative on save).

    ``keys``: ``c2`` (``blue``, ``nir08``... as USGS and Planetary Computer name them) or
    ``files`` (``SR_B2``... with only ``eo:bands`` common names telling what each is).
    """
    import pystac

    meta = scene.meta
    if meta.sensor not in ("LANDSAT_8", "LANDSAT_9"):
        raise ValueError("landsat_item writes Landsat 8/9 items")
    pid = meta.scene_id
    with rasterio.open(scene.folder / f"{pid}_QA_PIXEL.TIF") as src:
        georef, shape = Georef(src.crs, src.transform), (src.height, src.width)
    bbox = _bbox(georef, shape)
    path, row = pid.split("_")[2][:3], pid.split("_")[2][3:]
    item = pystac.Item(
        id="_".join(pid.split("_")[:4] + pid.split("_")[5:]),  # as Planetary Computer: no
        geometry=_geometry(bbox),  # processing date
        bbox=bbox,
        datetime=_when(meta.date),
        properties={
            "platform": meta.sensor.lower().replace("_", "-"),
            "instruments": ["oli", "tirs"],
            "landsat:wrs_path": path,
            "landsat:wrs_row": row,
            "landsat:collection_number": "02",
            "landsat:correction": "L2SP",
            "proj:epsg": georef.crs.to_epsg(),
        },
    )
    for key, (suffix, common) in LANDSAT_ASSETS.items():
        href = str(scene.folder / f"{pid}_{suffix}.TIF")
        extra: dict[str, object] = {}
        if common:
            extra["eo:bands"] = [{"name": suffix, "common_name": common}]
            extra["raster:bands"] = [
                {"data_type": "uint16", "nodata": 0, "scale": SR_SCALE, "offset": SR_OFFSET}
            ]
        asset_key = key if keys == "c2" else suffix
        item.add_asset(
            asset_key,
            pystac.Asset(href=href, media_type=pystac.MediaType.COG, roles=["data"],
                         extra_fields=extra),
        )  # fmt: skip
    item.add_asset(
        "mtl.txt",
        pystac.Asset(href=str(scene.folder / f"{pid}_MTL.txt"), roles=["metadata"]),
    )
    return item


def hls_item(granule: SyntheticGranule):
    """A STAC Item for a synthetic HLS granule, assets keyed by HLS band names (as LP DAAC)."""
    import pystac

    r = granule.render
    bbox = _bbox(r.georef, r.qa_pixel.shape)
    item = pystac.Item(
        id=granule.granule_id,
        geometry=_geometry(bbox),
        bbox=bbox,
        datetime=_when(granule.date),
        properties={"platform": "landsat-8" if granule.product == "L30" else "sentinel-2a"},
        collection=f"HLS{granule.product}.v2.0",
    )
    for f in sorted(granule.folder.glob(f"{granule.granule_id}.*.tif")):
        key = f.name.removeprefix(granule.granule_id + ".").removesuffix(".tif")
        item.add_asset(key, pystac.Asset(href=str(f), media_type=pystac.MediaType.COG,
                                         roles=["data"]))  # fmt: skip
    return item


def sentinel2_item(safe: SyntheticSafe, *, raster_bands: bool = False):
    """A STAC Item for a synthetic ``.SAFE``'s band files, assets keyed as Planetary Computer
    (``B02``... ``SCL``) with ``s2:processing_baseline``; ``raster_bands`` also writes each
    band's ``raster:bands`` scale and offset (as Earth Search does)."""
    import pystac

    r = safe.render
    bbox = _bbox(r.georef, r.qa_pixel.shape)
    item = pystac.Item(
        id=safe.product_id,
        geometry=_geometry(bbox),
        bbox=bbox,
        datetime=_when(safe.date),
        properties={
            "platform": "sentinel-2a",
            "s2:processing_baseline": safe.baseline,
            "s2:mgrs_tile": safe.tile.removeprefix("T"),
            "s2:product_uri": f"{safe.product_id}.SAFE",
        },
        collection="sentinel-2-l2a",
    )
    offset = -0.1 if float(safe.baseline) >= 4.0 else 0.0
    for key in ("B02", "B03", "B04", "B08", "B8A", "B11", "SCL"):
        extra: dict[str, object] = {}
        if raster_bands and key != "SCL":
            extra["raster:bands"] = [{"nodata": 0, "scale": 0.0001, "offset": offset}]
        item.add_asset(key, pystac.Asset(href=str(safe.bands[key]),
                                         media_type=pystac.MediaType.JPEG2000, roles=["data"],
                                         extra_fields=extra))  # fmt: skip
    return item


def write_stac_catalog(out: Path, items: Sequence[object], *, catalog_id: str = "kelpseg-synth"):
    """Save ``items`` as ``out/catalog.json`` -> ``{collection}/collection.json`` -> items,
    every href relative (a self-contained catalog that can be moved with its data).

    Returns:
        The catalog file.
    """
    import pystac

    out = Path(out)
    catalog = pystac.Catalog(id=catalog_id, description="Synthetic scenes written by kelpseg")
    by_coll: dict[str, list[pystac.Item]] = {}
    for it in items:
        assert isinstance(it, pystac.Item)
        by_coll.setdefault(it.collection_id or "landsat-c2-l2", []).append(it)
    for cid, its in sorted(by_coll.items()):
        boxes = np.array([it.bbox for it in its], float)
        extent = pystac.Extent(
            pystac.SpatialExtent([[*boxes[:, :2].min(0), *boxes[:, 2:].max(0)]]),
            pystac.TemporalExtent([[min(i.datetime for i in its), max(i.datetime for i in its)]]),
        )
        coll = pystac.Collection(id=cid, description=f"synthetic {cid}", extent=extent)
        for it in its:
            coll.add_item(it)
        catalog.add_child(coll)
    catalog.normalize_hrefs(str(out))
    for it in catalog.get_items(recursive=True):
        it.make_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return out / "catalog.json"


def item_json(item: object, path: Path, *, relative: bool = True) -> Path:
    """Save one item alone as ``path`` (asset hrefs relative to it unless ``relative`` is
    False)."""
    import pystac

    assert isinstance(item, pystac.Item)
    item = item.clone()
    item.set_self_href(str(Path(path).resolve()))
    if relative:
        item.make_asset_hrefs_relative()
    d = item.to_dict(include_self_link=False)
    return atomic_write_text(path, json.dumps(d, indent=2) + "\n")
