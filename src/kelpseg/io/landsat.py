"""Landsat Collection 2 Level-2 scene folders -> the model's 7-band int16 input.

A scene folder holds ``{product_id}_SR_B{n}.TIF`` (uint16 digital numbers, 0 = fill),
``{product_id}_QA_PIXEL.TIF`` (bit-packed quality) and an MTL file (``_MTL.txt``, ``.json`` or
``.xml``). :func:`stack_scene` picks the five bands of the model by sensor, turns ``QA_PIXEL``
into the 0/1 QA band from the chosen bits, reprojects a DEM from any CRS and grid onto the
scene's (``rasterio.vrt.WarpedVRT``, bilinear) and writes the result window by window, so
memory does not grow with the scene. The digital numbers are kept as they are: the competition
tiles use the same scale (reflectance = DN x 2.75e-05 - 0.2); fill becomes ``-32768``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from tqdm.auto import tqdm

from kelpseg.io.errors import TileError, first_line
from kelpseg.io.raster import atomic_output
from kelpseg.io.tiles import BAND_NAMES, NODATA

QA_DEFAULT_BITS: tuple[str, ...] = ("fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow")

QA_BITS: dict[str, int] = {
    "fill": 0,
    "dilated_cloud": 1,
    "cirrus": 2,
    "cloud": 3,
    "cloud_shadow": 4,
    "snow": 5,
}
"""Single-bit flags of ``QA_PIXEL`` that may mark a pixel as bad (bit numbers)."""
QA_CONFIDENCE: dict[str, tuple[int, int]] = {
    "cloud_conf_medium": (8, 2),
    "cloud_conf_high": (8, 3),
    "shadow_conf_high": (10, 3),
    "snow_conf_high": (12, 3),
    "cirrus_conf_high": (14, 3),
}
"""Two-bit confidences: ``name -> (first bit, lowest level that counts)`` (1 low, 2 medium,
3 high)."""

SENSOR_BANDS: dict[str, tuple[int, ...]] = {
    "LANDSAT_4": (5, 4, 3, 2, 1),
    "LANDSAT_5": (5, 4, 3, 2, 1),
    "LANDSAT_7": (5, 4, 3, 2, 1),
    "LANDSAT_8": (6, 5, 4, 3, 2),
    "LANDSAT_9": (6, 5, 4, 3, 2),
}
"""``SR_B{n}`` numbers of SWIR1, NIR, Red, Green, Blue for each ``SPACECRAFT_ID``."""
INT16_MAX = 32767
"""uint16 DN above this (reflectance > 0.70: bright cloud, snow) are clipped, as saturated."""
SR_SCALE = 0.0000275
SR_OFFSET = -0.2
"""Collection 2 Level-2 surface reflectance = DN x ``SR_SCALE`` + ``SR_OFFSET``."""

_SR = re.compile(r"^(?P<pid>.+)_SR_B(?P<band>\d+)\.TIF$", re.IGNORECASE)
_QA = re.compile(r"^(?P<pid>.+)_QA_PIXEL\.TIF$", re.IGNORECASE)
_MTL = re.compile(r"^(?P<pid>.+)_MTL\.(?P<ext>txt|json|xml)$", re.IGNORECASE)
_MTL_ORDER = ("txt", "json", "xml")
_TXT_LINE = re.compile(r'^\s*([A-Z0-9_]+)\s*=\s*"?(.*?)"?\s*$')


class SceneError(TileError):
    """A scene folder (or one of its files) that cannot be stacked, named with the problem."""


@dataclass(frozen=True)
class SceneMeta:
    """What a scene is: product id, sensor, acquisition date and where it lies.

    Attributes:
        scene_id: The product id, e.g. ``LC08_L2SP_042036_20210815_20210826_02_T1``.
        sensor: ``SPACECRAFT_ID`` from the MTL, e.g. ``LANDSAT_8``.
        date: ``DATE_ACQUIRED``.
        folder: The scene folder.
    """

    scene_id: str
    sensor: str
    date: dt.date
    folder: Path


@dataclass(frozen=True)
class _Files:
    product_id: str
    bands: dict[int, Path]
    qa: Path
    mtl: Path | None


def _files(folder: Path) -> _Files | None:
    """The scene files of ``folder`` matched case-insensitively, None if it holds no scene."""
    if not folder.is_dir():
        return None
    bands: dict[int, Path] = {}
    qa: Path | None = None
    mtls: dict[str, Path] = {}
    pids: set[str] = set()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file():
            continue
        if m := _SR.match(entry.name):
            bands[int(m["band"])] = Path(entry.path)
            pids.add(m["pid"])
        elif m := _QA.match(entry.name):
            qa = Path(entry.path)
            pids.add(m["pid"])
        elif m := _MTL.match(entry.name):
            mtls.setdefault(m["ext"].lower(), Path(entry.path))
    if not bands or qa is None:
        return None
    if len({p.upper() for p in pids}) > 1:
        raise SceneError(folder, f"files of several scenes in one folder: {sorted(pids)}")
    mtl = next((mtls[e] for e in _MTL_ORDER if e in mtls), None)
    return _Files(pids.pop(), bands, qa, mtl)


def is_scene_dir(path: Path) -> bool:
    """Whether ``path`` is a folder holding ``*_SR_B*.TIF`` and ``*_QA_PIXEL.TIF`` files."""
    try:
        return _files(Path(path)) is not None
    except SceneError:
        return True  # a scene folder, if a broken one: stacking it says what is wrong


def _walk(node: object) -> Iterator[tuple[str, object]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield str(key), value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def parse_mtl(path: Path) -> dict[str, str]:
    """Every ``KEY = value`` of an MTL file (text, JSON or XML) as one flat dict.

    Groups are flattened (the first occurrence of a key wins); text values lose their quotes.

    Raises:
        SceneError: the file cannot be read or parsed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise SceneError(path, f"MTL file unreadable: {err.strerror or err}") from err
    out: dict[str, str] = {}
    kind = path.suffix.lower()
    try:
        if kind == ".json":
            for key, value in _walk(json.loads(text)):
                if not isinstance(value, Mapping | list):
                    out.setdefault(key.upper(), str(value))
        elif kind == ".xml":
            for el in ET.fromstring(text).iter():
                if len(el) == 0 and el.text is not None:
                    out.setdefault(el.tag.upper(), el.text.strip())
        else:
            for line in text.splitlines():
                m = _TXT_LINE.match(line)
                if m and m[1] not in ("GROUP", "END_GROUP"):
                    out.setdefault(m[1], m[2])
    except (ValueError, ET.ParseError) as err:
        msg = first_line(err)
        raise SceneError(path, f"MTL file not parseable as {kind.lstrip('.')}: {msg}") from err
    if not out:
        raise SceneError(path, "MTL file holds no KEY = value entries")
    return out


def _meta(folder: Path, files: _Files) -> SceneMeta:
    if files.mtl is None:
        raise SceneError(folder, f"no {files.product_id}_MTL.txt (or .json/.xml) in the folder")
    mtl = parse_mtl(files.mtl)
    sensor = mtl.get("SPACECRAFT_ID", "").upper()
    if not sensor:
        raise SceneError(files.mtl, "no SPACECRAFT_ID in the MTL file")
    if sensor not in SENSOR_BANDS:
        raise SceneError(
            files.mtl, f"unknown sensor SPACECRAFT_ID={sensor} (known: {', '.join(SENSOR_BANDS)})"
        )
    raw_date = mtl.get("DATE_ACQUIRED", "")
    try:
        date = dt.date.fromisoformat(raw_date)
    except ValueError as err:
        raise SceneError(files.mtl, f"DATE_ACQUIRED {raw_date!r} is not a YYYY-MM-DD date") from err
    scene_id = mtl.get("LANDSAT_PRODUCT_ID") or files.product_id
    return SceneMeta(scene_id=scene_id, sensor=sensor, date=date, folder=folder)


def read_scene_meta(folder: Path) -> SceneMeta:
    """Product id, sensor and date of a scene folder, from its MTL file.

    Raises:
        SceneError: naming the folder or file and the problem (no scene files, no or unreadable
            MTL, unknown sensor, bad date).
    """
    folder = Path(folder)
    files = _files(folder)
    if files is None:
        raise SceneError(folder, "not a Landsat scene folder (no *_SR_B*.TIF with *_QA_PIXEL.TIF)")
    return _meta(folder, files)


def qa_mask(qa: np.ndarray, bits: Sequence[str]) -> np.ndarray:
    """True where any of the named flags of a ``QA_PIXEL`` array is set.

    Args:
        qa: uint16 ``QA_PIXEL`` values.
        bits: Names from :data:`QA_BITS` and :data:`QA_CONFIDENCE`.
    """
    qa = qa.astype(np.uint16, copy=False)
    single = sum(1 << QA_BITS[b] for b in bits if b in QA_BITS)
    out = (qa & np.uint16(single)) != 0
    for b in bits:
        if b in QA_CONFIDENCE:
            first, level = QA_CONFIDENCE[b]
            out |= ((qa >> np.uint16(first)) & np.uint16(3)) >= level
    return out


def check_qa_bits(bits: Sequence[str]) -> tuple[str, ...]:
    """The QA flag names, validated.

    Raises:
        ValueError: an unknown name, naming the known ones.
    """
    bits = tuple(b.strip() for b in bits if b.strip())
    known = (*QA_BITS, *QA_CONFIDENCE)
    unknown = [b for b in bits if b not in known]
    if unknown:
        raise ValueError(f"unknown QA bit(s) {unknown}: choose from {', '.join(known)}")
    return bits


@dataclass(frozen=True)
class Grid:
    """The grid a stacked raster is written on: size, CRS (None where the input has none) and
    transform."""

    width: int
    height: int
    crs: CRS | None
    transform: Affine

    @classmethod
    def of(cls, src: rasterio.io.DatasetReader) -> Grid:
        """The grid of an open dataset."""
        return cls(src.width, src.height, src.crs, src.transform)

    def describe(self) -> str:
        """``WxH CRS (a, b, c, d, e, f)``, for messages."""
        return f"{self.width}x{self.height} {self.crs} {tuple(self.transform)[:6]}"


def _grid(src: rasterio.io.DatasetReader) -> Grid:
    return Grid.of(src)


def windows(height: int, width: int, block: int) -> Iterator[Window]:
    """``block`` x ``block`` windows covering a ``height`` x ``width`` raster, row by row."""
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def check_block(block: int) -> int:
    """The window side, validated.

    Raises:
        ValueError: a block under 16 px.
    """
    if block < 16:
        raise ValueError(f"block must be at least 16 px, got {block}")
    return int(block)


def to_landsat_dn(rho: np.ndarray) -> np.ndarray:
    """Surface reflectance -> Landsat Collection 2 Level-2 digital numbers as int16.

    ``DN = (rho + 0.2) / 0.0000275``, rounded, clipped to 1..32767 as the Landsat stacker
    clips (above 32767: reflectance > 0.70; 0 is Landsat's fill, so no valid pixel gets it).
    """
    dn = np.rint((np.asarray(rho, np.float64) - SR_OFFSET) / SR_SCALE)
    return np.clip(dn, 1, INT16_MAX).astype(np.int16)


def open_raster_file(stack: ExitStack, path: Path) -> rasterio.io.DatasetReader:
    """``rasterio.open`` inside ``stack``, quiet about missing georeference.

    Raises:
        SceneError: naming the file when it is not a readable raster.
    """
    return _open(stack, path)


def _open(stack: ExitStack, path: Path) -> rasterio.io.DatasetReader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return stack.enter_context(rasterio.open(path))
    except (RasterioError, OSError) as err:
        msg = first_line(err)
        raise SceneError(path, f"not a readable raster: {msg}") from err


def _dem_vrt(stack: ExitStack, dem: Path, grid: Grid) -> WarpedVRT:
    src = _open(stack, dem)
    if src.crs is None:
        raise SceneError(dem, "the DEM has no CRS: it cannot be placed on the scene")
    return stack.enter_context(
        WarpedVRT(
            src,
            crs=grid.crs,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.bilinear,
            src_nodata=src.nodata,
            nodata=np.nan,
            dtype="float32",
            # exact transforms: GDAL's approximation (0.125 px) made the DEM's nodata edge
            # depend on the window size (+0.5 s on a 2,000² scene)
            tolerance=1e-6,
        )
    )


def read_window(src: Any, win: Window, what: str | None = None) -> np.ndarray:
    """Band 1 of ``src`` in ``win``; a read error names the file (GDAL says "Read failed")."""
    try:
        return src.read(1, window=win)
    except (RasterioError, OSError) as err:
        name = what or Path(src.name).name
        raise SceneError(src.name, f"{name}: reading rows {win.row_off}-"
                         f"{win.row_off + win.height} failed ({first_line(err)}): truncated or "
                         "corrupted?") from err  # fmt: skip


BlockReader = Callable[[Window], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""One window of a source: ``(reflectance, qa, fill)``: int16 ``(5, h, w)`` Landsat-like DN of
SWIR1, NIR, Red, Green, Blue, bool ``(h, w)`` QA (True = cloud/bad), bool ``(h, w)`` fill."""


def write_stack(
    out: Path,
    grid: Grid,
    read_block: BlockReader,
    *,
    stack: ExitStack,
    tags: Mapping[str, str],
    dem: Path | None = None,
    block: int = 1024,
    progress: bool = False,
    desc: str = "stack",
    source: Path | None = None,
) -> None:
    """Write the model's 7-band int16 input window by window, atomically: what every sensor's
    stacker shares.

    ``read_block`` gives each window's reflectance, QA and fill; the DEM is reprojected onto
    ``grid`` (bilinear, GDAL's warper) and ``-32768`` written in all seven bands where the
    window is fill (and in the DEM where it has no data). The file declares nodata -32768,
    names its bands, carries ``tags`` (plus ``dem``) and keeps the grid's CRS and transform.
    Sources must be opened in ``stack`` (so they close after the write, whatever happens).

    Raises:
        SceneError: naming ``source`` (or ``out``) when GDAL fails while reading or writing.
    """
    block = check_block(block)
    vrt = _dem_vrt(stack, Path(dem), grid) if dem is not None else None
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": len(BAND_NAMES),
        "dtype": "int16",
        "nodata": NODATA,
        "compress": "deflate",
        "predictor": 2,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "BIGTIFF": "IF_SAFER",
        "transform": grid.transform,
    }
    if grid.crs is not None:
        profile["crs"] = grid.crs
    all_tags = {**tags, "dem": str(dem) if dem is not None else ""}
    wins = list(windows(grid.height, grid.width, block))
    try:
        with atomic_output(out) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for i, name in enumerate(BAND_NAMES, start=1):
                dst.set_band_description(i, name)
            dst.update_tags(**all_tags)
            for win in tqdm(wins, desc=desc, disable=not progress):
                dst.write(_assemble(read_block, vrt, win), window=win)
    except RasterioError as err:
        msg = first_line(err)
        raise SceneError(source or out, f"reading the scene failed: {msg}") from err


def _assemble(read_block: BlockReader, vrt: WarpedVRT | None, win: Window) -> np.ndarray:
    """The 7-band int16 block of one window."""
    h, w = int(win.height), int(win.width)
    refl, qa, fill = read_block(win)
    out = np.empty((len(BAND_NAMES), h, w), np.int16)
    out[:5] = refl
    out[5] = qa
    if vrt is None:
        out[6] = NODATA
    else:
        z = read_window(vrt, win, "the DEM")
        ok = np.isfinite(z)
        out[6] = np.where(ok, np.clip(np.rint(np.where(ok, z, 0)), -INT16_MAX, INT16_MAX), NODATA)
    out[:, fill] = NODATA
    return out


@dataclass(frozen=True)
class LandsatFiles:
    """The files a Landsat Collection 2 Level-2 stack reads.

    Attributes:
        bands: uint16 ``SR_B*`` files of SWIR1, NIR, Red, Green, Blue (0 = fill).
        qa: The ``QA_PIXEL`` file.
        labels: What each band is (e.g. ``SR_B6``), for the ``bands`` tag.
    """

    bands: tuple[Path, ...]
    qa: Path
    labels: tuple[str, ...]


def read_scene(folder: Path) -> tuple[SceneMeta, LandsatFiles]:
    """A scene folder's metadata and the files its stack reads, checked to be there.

    Raises:
        SceneError: naming the folder or file and the problem (no scene files, MTL, unknown
            sensor, bad date, a band of the sensor missing).
    """
    folder = Path(folder)
    meta = read_scene_meta(folder)
    files = _files(folder)
    assert files is not None
    wanted = SENSOR_BANDS[meta.sensor]
    for b in wanted:
        if b not in files.bands:
            raise SceneError(
                folder,
                f"band {files.product_id}_SR_B{b}.TIF missing ({meta.sensor} needs "
                f"{', '.join(f'B{n}' for n in wanted)})",
            )
    return meta, LandsatFiles(
        bands=tuple(files.bands[b] for b in wanted),
        qa=files.qa,
        labels=tuple(f"SR_B{b}" for b in wanted),
    )


def stack_landsat_files(
    files: LandsatFiles,
    meta: SceneMeta,
    out: Path,
    dem: Path | None = None,
    *,
    qa_bits: Sequence[str] = QA_DEFAULT_BITS,
    block: int = 1024,
    progress: bool = False,
    cache_mb: int = 64,
    source: Path | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> SceneMeta:
    """:func:`stack_scene` from explicit files (a scene folder's, or a STAC item's assets).

    ``source`` is what errors and the ``source`` tag name (default ``meta.folder``);
    ``extra_tags`` are added to the file's tags.

    Raises:
        SceneError: naming the file and the problem.
        ValueError: unknown ``qa_bits`` or a block under 16.
    """
    out = Path(out)
    source = Path(source) if source is not None else meta.folder
    qa_bits = check_qa_bits(qa_bits)
    check_block(block)
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=cache_mb * 2**20))
        qa_src = _open(stack, files.qa)
        srcs = [_open(stack, p) for p in files.bands]
        for src in (qa_src, *srcs):
            if src.count != 1 or src.dtypes[0] != "uint16":
                raise SceneError(
                    src.name, f"expected one uint16 band, found {src.count} x {src.dtypes[0]}"
                )
        grid = _grid(qa_src)
        for src in srcs:
            if _grid(src) != grid:
                raise SceneError(
                    src.name,
                    f"grid {_grid(src).describe()} differs from {Path(files.qa).name}'s "
                    f"{grid.describe()}",
                )

        def read_block(win: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            qa = read_window(qa_src, win)
            fill = (qa & 1) != 0
            refl = np.empty((len(srcs), int(win.height), int(win.width)), np.int16)
            for i, src in enumerate(srcs):
                dn = read_window(src, win)
                fill |= dn == 0
                refl[i] = np.minimum(dn, INT16_MAX)
            return refl, qa_mask(qa, qa_bits), fill

        tags = {
            "scene_id": meta.scene_id,
            "sensor": meta.sensor,
            "date": meta.date.isoformat(),
            "qa_bits": ",".join(qa_bits),
            "source": str(source),
            "bands": ",".join(files.labels) + ",QA_PIXEL,DEM",
            **(extra_tags or {}),
        }
        write_stack(
            out,
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


def stack_scene(
    folder: Path,
    out: Path,
    dem: Path | None = None,
    *,
    qa_bits: Sequence[str] = QA_DEFAULT_BITS,
    block: int = 1024,
    progress: bool = False,
    cache_mb: int = 64,
    tags: Mapping[str, str] | None = None,
) -> SceneMeta:
    """Write the model's 7-band int16 input from a Collection 2 Level-2 scene folder.

    Bands: SWIR1, NIR, Red, Green, Blue (``SR_B*`` by sensor, DN kept, above 32767 clipped),
    QA (1 where any of ``qa_bits`` is set in ``QA_PIXEL``), DEM (metres, reprojected and
    resampled bilinearly onto the scene grid by GDAL's warper; the warper fits its kernel to
    each chunk, so the DEM can differ by a few centimetres, 1 m after rounding, between block
    sizes). ``-32768`` in every band where the scene is fill
    (``QA_PIXEL`` bit 0 or a 0 in any band used), and in the DEM where it has no data. The
    output keeps the scene's CRS and transform, declares nodata -32768, names its bands and
    carries the tags ``scene_id``, ``sensor``, ``date``; it is written window by window into a
    temporary file renamed at the end (:func:`write_stack`, shared by every sensor's stacker).

    Args:
        folder: The scene folder.
        out: The GeoTIFF to write.
        dem: A DEM GeoTIFF in any CRS (0 or nodata at sea); None leaves the DEM band missing.
        qa_bits: Flags of ``QA_PIXEL`` that make QA = 1 (see :data:`QA_BITS`,
            :data:`QA_CONFIDENCE`).
        block: Window side in pixels (memory per window ~ 40 bytes x block^2).
        progress: Show a progress bar over windows.
        cache_mb: GDAL's block cache while stacking (``GDAL_CACHEMAX``; GDAL's default, 5 % of
            the RAM, would let memory grow with the scene up to that much).
        tags: More tags for the output (e.g. the DEM's footprint, see ``kelpseg map``).

    Returns:
        The scene's metadata.

    Raises:
        SceneError: naming the file and the problem.
        ValueError: unknown ``qa_bits`` or a block under 16.
    """
    check_qa_bits(qa_bits)
    check_block(block)
    meta, files = read_scene(Path(folder))
    return stack_landsat_files(
        files,
        meta,
        out,
        dem,
        qa_bits=qa_bits,
        block=block,
        progress=progress,
        cache_mb=cache_mb,
        source=Path(folder),
        extra_tags=tags,
    )
