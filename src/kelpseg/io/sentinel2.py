"""Sentinel-2 Level-2A ``.SAFE`` products -> the model's 7-band int16 input at 30 m.

A ``.SAFE`` folder holds ``MTD_MSIL2A.xml`` and ``GRANULE/{granule}/IMG_DATA/R10m|R20m/``
with ``*_B02_10m.jp2`` ... (Blue B02, Green B03, Red B04 at 10 m; NIR narrow B8A, SWIR1 B11
and the scene classification ``SCL`` at 20 m). Reflectance = (DN + BOA_ADD_OFFSET) /
QUANTIFICATION_VALUE, both read from ``MTD_MSIL2A.xml`` (processing baseline 04.00 and later
add an offset of -1000; older products none); DN 0 is nodata.

Every band is resampled onto a 30 m grid with the tile's own CRS and origin by **area
averaging** (GDAL's ``average``, which weights each 10/20 m pixel by the area it shares with the
30 m pixel), then turned into Landsat-like DN (``(rho + 0.2) / 0.0000275``). A 30 m pixel is
missing (-32768 in all bands) when any 10/20 m pixel it overlaps is nodata (DN 0) or saturated
(DN 65535), or SCL 0 (no data) or 1 (saturated/defective): its value would describe only part of its area. QA is 1 when any
SCL pixel it overlaps is a chosen class (default 3 cloud shadow, 8/9 cloud medium/high
probability, 10 thin cirrus): "any", not the majority class, because a 30 m pixel overlaps four
20 m SCL pixels with weights 4/9, 2/9, 2/9, 1/9, and a majority vote would call a pixel clear
while up to 4/9 of it is cloud edge, the bright NIR that looks most like kelp. "Any" dilates
the flags by less than one 30 m pixel, as Landsat's dilated-cloud bit does.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from kelpseg.io.errors import first_line
from kelpseg.io.landsat import (
    Grid,
    SceneError,
    SceneMeta,
    check_block,
    open_raster_file,
    read_window,
    to_landsat_dn,
    write_stack,
)

PIXEL = 30.0
S2_BANDS: tuple[str, ...] = ("B11", "B8A", "B04", "B03", "B02")
"""Sentinel-2 bands of SWIR1, NIR (narrow), Red, Green, Blue."""
BAND_IDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip
"""``band_id`` of the metadata's per-band lists (used where it has no Spectral_Information)."""
MTD_NAME = "MTD_MSIL2A.xml"
SATURATED = 65535
"""The products' special value for a saturated pixel (0 is nodata): both make a 30 m pixel
they overlap missing."""
SCL_MISSING = (0, 1)
"""SCL classes that make a pixel missing: 0 no data, 1 saturated or defective."""
SCL_CLASSES: dict[str, tuple[int, ...]] = {
    "cloud": (8, 9),
    "cloud_conf_medium": (8, 9),
    "cloud_conf_high": (9,),
    "cirrus": (10,),
    "cloud_shadow": (3,),
    "snow": (11,),
}
"""SCL classes for the names ``--qa-bits`` uses for Landsat's ``QA_PIXEL``."""
QA_IGNORED = ("fill", "dilated_cloud")
"""Names accepted and ignored (fill always applies; SCL has no dilated-cloud class)."""
S2_QA_DEFAULT: tuple[str, ...] = ("cloud", "cirrus", "cloud_shadow")
"""Default: SCL 3, 8, 9, 10."""
ANY = 1e-3
"""A 30 m pixel is flagged when flagged source pixels cover more than this share of it."""

_BAND_FILE = re.compile(
    r"^(?P<prefix>.*?)_(?P<band>B\d[\dA]|SCL)_(?P<res>\d{2})m\.(?:jp2|tiff?)$", re.IGNORECASE
)
_TILE = re.compile(r"(?:^|_)(T\d{2}[A-Z]{3})(?:_|$)")


class Sentinel2Error(SceneError):
    """A ``.SAFE`` product (or one of its files) that cannot be stacked, named with the problem."""


@dataclass(frozen=True)
class S2Files:
    """What a Sentinel-2 L2A stack reads: band files and their radiometry.

    Attributes:
        bands: Files of SWIR1 (B11), NIR (B8A), Red, Green, Blue (B04, B03, B02), any of 10,
            20 m or other resolutions sharing one extent and CRS.
        scl: The scene classification (``SCL``) file.
        scale: Per band, reflectance = DN x scale + offset.
        offset: Per band, in reflectance.
        labels: Band names, for the ``bands`` tag.
    """

    bands: tuple[Path, ...]
    scl: Path
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    labels: tuple[str, ...] = S2_BANDS

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the stack reads."""
        return (*self.bands, self.scl)


@dataclass(frozen=True)
class SafeProduct:
    """A Sentinel-2 L2A ``.SAFE`` folder: what its metadata says and the files it stacks from.

    Attributes:
        path: The ``.SAFE`` folder.
        product_id: e.g. ``S2A_MSIL2A_20210815T183921_N0301_R070_T11SKU_20210816T023215``.
        sensor: ``SENTINEL_2A`` / ``_2B`` / ``_2C`` (``SPACECRAFT_NAME``).
        date: Acquisition date (``PRODUCT_START_TIME``).
        tile: MGRS tile, e.g. ``T11SKU``.
        baseline: ``PROCESSING_BASELINE``, e.g. ``04.00``.
        quantification: ``BOA_QUANTIFICATION_VALUE`` (10000).
        offsets: ``BOA_ADD_OFFSET`` of the stacked bands, in DN (0 before baseline 04.00).
        files: The band files and radiometry.
    """

    path: Path
    product_id: str
    sensor: str
    date: dt.date
    tile: str
    baseline: str
    quantification: float
    offsets: tuple[float, ...]
    files: S2Files


def baseline_at_least(baseline: str, major: int) -> bool:
    """Whether a processing baseline such as ``04.00`` (or ``N0400``) is ``major`` or later."""
    digits = re.sub(r"[^0-9.]", "", baseline)
    try:
        return float(digits) >= major if "." in digits else int(digits) >= major * 100
    except ValueError:
        return False


def band_name(name: str) -> str:
    """A band name as the files spell it: ``B1`` -> ``B01``, ``b8a`` -> ``B8A``."""
    m = re.fullmatch(r"B0?(\d{1,2})(A?)", name.strip().upper())
    if m is None:
        return name.strip().upper()
    return f"B{int(m[1])}A" if m[2] else f"B{int(m[1]):02d}"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_mtd(path: Path) -> dict[str, object]:
    """What ``MTD_MSIL2A.xml`` says: ``baseline``, ``quantification``, ``offsets`` (band name ->
    DN, empty when absent), ``spacecraft``, ``start`` (ISO time), ``product_uri``, ``level``.

    Raises:
        Sentinel2Error: unreadable, not XML, or no ``BOA_QUANTIFICATION_VALUE``.
    """
    path = Path(path)
    try:
        root = ET.fromstring(path.read_bytes())
    except OSError as err:
        raise Sentinel2Error(path, f"unreadable: {err.strerror or err}") from err
    except ET.ParseError as err:
        raise Sentinel2Error(path, f"not parseable as XML: {first_line(err)}") from err
    text: dict[str, str] = {}
    band_names = dict(enumerate(BAND_IDS))
    offsets_by_id: dict[int, float] = {}
    for el in root.iter():
        tag = _local(el.tag)
        if tag == "Spectral_Information" and el.get("bandId") and el.get("physicalBand"):
            band_names[int(el.get("bandId", "0"))] = band_name(el.get("physicalBand", ""))
        elif tag == "BOA_ADD_OFFSET" and el.get("band_id") is not None and el.text:
            offsets_by_id[int(el.get("band_id", "0"))] = float(el.text)
        elif len(el) == 0 and el.text is not None:
            text.setdefault(tag.upper(), el.text.strip())
    quant = next((v for k, v in text.items() if k.endswith("BOA_QUANTIFICATION_VALUE")), None)
    if quant is None:
        raise Sentinel2Error(path, "no BOA_QUANTIFICATION_VALUE: not a Level-2A metadata file")
    try:
        quantification = float(quant)
    except ValueError as err:
        raise Sentinel2Error(path, f"BOA_QUANTIFICATION_VALUE {quant!r} is not a number") from err
    return {
        "baseline": text.get("PROCESSING_BASELINE", ""),
        "quantification": quantification,
        "offsets": {band_names.get(i, f"#{i}"): v for i, v in offsets_by_id.items()},
        "spacecraft": text.get("SPACECRAFT_NAME", ""),
        "start": text.get("PRODUCT_START_TIME") or text.get("DATATAKE_SENSING_START", ""),
        "product_uri": text.get("PRODUCT_URI", ""),
        "level": text.get("PROCESSING_LEVEL", ""),
    }


def is_safe_dir(path: Path) -> bool:
    """Whether ``path`` is a folder named ``*.SAFE``."""
    path = Path(path)
    return path.is_dir() and path.suffix.upper() == ".SAFE"


def _band_files(granule: Path) -> dict[str, dict[int, Path]]:
    """``{band: {resolution: file}}`` under a granule's ``IMG_DATA``."""
    found: dict[str, dict[int, Path]] = {}
    img = granule / "IMG_DATA"
    for f in sorted(img.rglob("*")) if img.is_dir() else []:
        m = _BAND_FILE.match(f.name)
        if m and f.is_file():
            found.setdefault(m["band"].upper(), {})[int(m["res"])] = f
    return found


def read_safe(path: Path) -> SafeProduct:
    """A ``.SAFE`` folder's metadata and the files its stack reads, checked to be there.

    Bands B02/B03/B04 are taken at 10 m (20 m when a product has no 10 m file), B8A, B11 and
    SCL at 20 m.

    Raises:
        Sentinel2Error: naming the file and the problem (no or unparseable
            ``MTD_MSIL2A.xml``, a Level-1C product, not one granule, a missing band, a baseline
            04.00 or later without ``BOA_ADD_OFFSET``).
    """
    path = Path(path)
    mtd = path / MTD_NAME
    if not mtd.is_file():
        if (path / "MTD_MSIL1C.xml").is_file():
            raise Sentinel2Error(
                path, "a Level-1C product (top of atmosphere): kelpseg needs Level-2A (MSIL2A)"
            )
        raise Sentinel2Error(mtd, "missing: not a Sentinel-2 Level-2A product")
    info = parse_mtd(mtd)
    granules = sorted(p for p in (path / "GRANULE").glob("*") if p.is_dir())
    if len(granules) != 1:
        raise Sentinel2Error(
            path / "GRANULE", f"{len(granules)} granule folders, expected one (single-tile L2A)"
        )
    found = _band_files(granules[0])
    chosen: list[Path] = []
    for band in (*S2_BANDS, "SCL"):
        res = found.get(band, {})
        prefer = (20,) if band in ("B8A", "B11", "SCL") else (10, 20)
        f = next((res[r] for r in prefer if r in res), None)
        if f is None:
            where = granules[0] / "IMG_DATA" / ("R20m" if 20 in prefer[:1] else "R10m")
            raise Sentinel2Error(
                where / f"*_{band}_{prefer[0]}m.jp2", "missing (L2A needs B02 B03 B04 B8A B11 SCL)"
            )
        chosen.append(f)
    baseline = str(info["baseline"])
    offsets_all: dict[str, float] = info["offsets"]  # type: ignore[assignment]
    if offsets_all:
        missing = [b for b in S2_BANDS if b not in offsets_all]
        if missing:
            raise Sentinel2Error(mtd, f"BOA_ADD_OFFSET of {', '.join(missing)} missing")
        offsets = tuple(offsets_all[b] for b in S2_BANDS)
    elif baseline_at_least(baseline, 4):
        raise Sentinel2Error(
            mtd, f"processing baseline {baseline} but no BOA_ADD_OFFSET: cannot scale reflectance"
        )
    else:
        offsets = (0.0,) * len(S2_BANDS)
    quant = float(info["quantification"])  # type: ignore[arg-type]
    start = str(info["start"])
    try:
        date = dt.date.fromisoformat(start[:10])
    except ValueError as err:
        raise Sentinel2Error(mtd, f"PRODUCT_START_TIME {start!r} is not a date") from err
    spacecraft = str(info["spacecraft"]).upper().replace("-", "_") or "SENTINEL_2"
    product_id = str(info["product_uri"]).removesuffix(".SAFE") or path.name.removesuffix(".SAFE")
    tile_m = _TILE.search(product_id) or _TILE.search(chosen[0].name)
    return SafeProduct(
        path=path,
        product_id=product_id,
        sensor=spacecraft,
        date=date,
        tile=tile_m[1] if tile_m else "",
        baseline=baseline,
        quantification=quant,
        offsets=offsets,
        files=S2Files(
            bands=tuple(chosen[:5]),
            scl=chosen[5],
            scale=(1.0 / quant,) * 5,
            offset=tuple(o / quant for o in offsets),
        ),
    )


def scl_classes(qa_bits: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The QA names and the SCL classes they flag (None: :data:`S2_QA_DEFAULT`).

    Raises:
        ValueError: a name SCL has no class for.
    """
    bits = S2_QA_DEFAULT if qa_bits is None else tuple(b.strip() for b in qa_bits if b.strip())
    unknown = [b for b in bits if b not in SCL_CLASSES and b not in QA_IGNORED]
    if unknown:
        raise ValueError(
            f"QA bit(s) {unknown} have no Sentinel-2 SCL class: choose from "
            f"{', '.join(SCL_CLASSES)}"
        )
    return bits, tuple(sorted({c for b in bits for c in SCL_CLASSES.get(b, ())}))


def grid_30m(src: rasterio.io.DatasetReader) -> Grid:
    """The 30 m grid of a tile: the band's CRS and origin, 30 m pixels, the whole pixels that
    fit in its extent (an MGRS tile's 109,800 m give 3,660)."""
    t = src.transform
    if t.b != 0 or t.d != 0:
        raise Sentinel2Error(src.name, "a rotated grid: cannot resample onto a north-up 30 m grid")
    width = math.floor(round(src.width * abs(t.a) / PIXEL, 6))
    height = math.floor(round(src.height * abs(t.e) / PIXEL, 6))
    if width < 1 or height < 1:
        raise Sentinel2Error(src.name, "smaller than one 30 m pixel")
    sx = PIXEL if t.a > 0 else -PIXEL
    sy = -PIXEL if t.e < 0 else PIXEL
    return Grid(width, height, src.crs, Affine(sx, 0.0, t.c, 0.0, sy, t.f))


def _bounds(src: rasterio.io.DatasetReader) -> tuple[float, ...]:
    return tuple(round(v, 3) for v in src.bounds)


class _Resampler:
    """Area-averages arrays of one source resolution onto windows of the 30 m grid."""

    def __init__(self, src: rasterio.io.DatasetReader, grid: Grid) -> None:
        self.src = src
        self.grid = grid
        self.fx = PIXEL / abs(src.transform.a)
        self.fy = PIXEL / abs(src.transform.e)

    def window(self, win: Window) -> Window:
        """The source pixels a 30 m window covers (whole pixels, inside the source)."""
        c0 = math.floor(round(win.col_off * self.fx, 6))
        r0 = math.floor(round(win.row_off * self.fy, 6))
        c1 = math.ceil(round((win.col_off + win.width) * self.fx, 6))
        r1 = math.ceil(round((win.row_off + win.height) * self.fy, 6))
        c1, r1 = min(c1, self.src.width), min(r1, self.src.height)
        return Window(c0, r0, c1 - c0, r1 - r0)

    def average(self, array: np.ndarray, src_win: Window, win: Window) -> np.ndarray:
        """A ``(h, w)`` source array of ``src_win`` (uint8, uint16 or float32) -> ``(H, W)``
        float32 area averages on the 30 m window ``win``."""
        out = np.zeros((int(win.height), int(win.width)), np.float32)
        reproject(
            array,
            out,
            src_transform=window_transform(src_win, self.src.transform),
            src_crs=self.src.crs,
            dst_transform=window_transform(win, self.grid.transform),
            dst_crs=self.grid.crs,
            resampling=Resampling.average,
        )
        return out


def stack_sentinel2_files(
    files: S2Files,
    meta: SceneMeta,
    out: Path,
    dem: Path | None = None,
    *,
    qa_bits: Sequence[str] | None = None,
    block: int = 1024,
    progress: bool = False,
    cache_mb: int = 64,
    source: Path | None = None,
    extra_tags: dict[str, str] | None = None,
) -> SceneMeta:
    """The 7-band 30 m stack of Sentinel-2 L2A band files (a ``.SAFE``'s or a STAC item's).

    See the module's description for the resampling, missing pixels and QA.

    Raises:
        Sentinel2Error: naming the file and the problem (unreadable, bands of different
            extents or CRSs).
        ValueError: a QA name SCL has no class for, or a block under 16.
    """
    bits, flagged = scl_classes(qa_bits)
    block = check_block(block + block % 2)  # even: 20 m windows then start on whole pixels
    source = Path(source) if source is not None else meta.folder
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=cache_mb * 2**20))
        srcs = [_open(stack, p) for p in files.bands]
        scl = _open(stack, files.scl)
        for src in (*srcs, scl):
            if src.count != 1:
                raise Sentinel2Error(src.name, f"expected one band, found {src.count}")
            if src.crs != scl.crs or _bounds(src) != _bounds(scl):
                raise Sentinel2Error(
                    src.name,
                    f"extent {_bounds(src)} {src.crs} differs from the SCL's "
                    f"{_bounds(scl)} {scl.crs}",
                )
        grid = grid_30m(scl)
        # sources of one resolution are read and averaged together
        groups: dict[tuple[float, float], list[int]] = {}
        for i, src in enumerate(srcs):
            groups.setdefault(src.res, []).append(i)
        resamplers = {res: _Resampler(srcs[idx[0]], grid) for res, idx in groups.items()}
        scl_rs = _Resampler(scl, grid)

        def read_block(win: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            h, w = int(win.height), int(win.width)
            refl = np.empty((len(srcs), h, w), np.int16)
            fill = np.zeros((h, w), bool)
            for res, idx in groups.items():  # one band at a time: memory ~ one 10 m band
                rs = resamplers[res]
                sw = rs.window(win)
                missing = None
                for i in idx:
                    dn = read_window(srcs[i], sw)
                    bad = (dn == 0) | (dn == SATURATED)
                    missing = bad if missing is None else (missing | bad)
                    rho = rs.average(dn, sw, win).astype(np.float64) * files.scale[i]
                    refl[i] = to_landsat_dn(rho + files.offset[i])
                    del dn
                fill |= rs.average(missing.view(np.uint8), sw, win) > ANY
            sw = scl_rs.window(win)
            c = read_window(scl, sw)
            fill |= scl_rs.average(np.isin(c, SCL_MISSING).view(np.uint8), sw, win) > ANY
            qa = scl_rs.average(np.isin(c, flagged).view(np.uint8), sw, win) > ANY
            return refl, qa, fill

        tags = {
            "scene_id": meta.scene_id,
            "sensor": meta.sensor,
            "date": meta.date.isoformat(),
            "qa_bits": ",".join(bits),
            "scl_flagged": ",".join(map(str, flagged)),
            "source": str(source),
            "bands": ",".join(files.labels) + ",SCL,DEM",
            "resampling": "average (area-weighted) to 30 m",
            **(extra_tags or {}),
        }
        write_stack(
            Path(out),
            grid,
            read_block,
            stack=stack,
            tags=tags,
            dem=dem,
            block=block,
            progress=progress,
            desc=f"stack {meta.scene_id}",
            source=source,
        )
    return meta


def stack_safe(
    product: SafeProduct | Path,
    out: Path,
    dem: Path | None = None,
    *,
    qa_bits: Sequence[str] | None = None,
    block: int = 1024,
    progress: bool = False,
    cache_mb: int = 64,
) -> SceneMeta:
    """Write the model's 7-band int16 input at 30 m from a Sentinel-2 L2A ``.SAFE`` folder.

    Bands SWIR1 (B11), NIR (B8A), Red (B04), Green (B03), Blue (B02) area-averaged to 30 m on
    the tile's grid and turned into Landsat-like DN; QA from SCL; DEM reprojected onto the
    30 m grid; tags ``scene_id`` (product id), ``sensor`` (``SENTINEL_2A``...), ``date``,
    ``footprint`` (MGRS tile), ``processing_baseline``, ``boa_add_offset``.

    Raises:
        Sentinel2Error: naming the file and the problem.
        ValueError: a QA name SCL has no class for, or a block under 16.
    """
    p = product if isinstance(product, SafeProduct) else read_safe(Path(product))
    meta = SceneMeta(scene_id=p.product_id, sensor=p.sensor, date=p.date, folder=p.path)
    extra = {
        "footprint": p.tile,
        "processing_baseline": p.baseline,
        "boa_add_offset": ",".join(f"{o:g}" for o in p.offsets),
        "quantification": f"{p.quantification:g}",
    }
    return stack_sentinel2_files(
        p.files,
        meta,
        out,
        dem,
        qa_bits=qa_bits,
        block=block,
        progress=progress,
        cache_mb=cache_mb,
        source=p.path,
        extra_tags=extra,
    )


def _open(stack: ExitStack, path: Path) -> rasterio.io.DatasetReader:
    try:
        return open_raster_file(stack, path)
    except SceneError as err:
        raise Sentinel2Error(err.path, err.problem) from err
