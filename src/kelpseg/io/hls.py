"""Harmonized Landsat Sentinel-2 (HLS v2) granules -> the model's 7-band int16 input.

An HLS granule is one file per band, named ``HLS.{L30|S30}.T{mgrs}.{yyyyddd}T{hhmmss}.v2.0.{band}.tif``
(int16 surface reflectance x 0.0001, nodata -9999) plus ``...Fmask.tif`` (uint8 bits, 255 fill),
already at 30 m on the MGRS tile's UTM grid. L30 (Landsat 8/9) uses Blue B02, Green B03, Red B04,
NIR B05, SWIR1 B06; S30 (Sentinel-2) Blue B02, Green B03, Red B04, NIR narrow B8A, SWIR1 B11.
Reflectance becomes Landsat-like DN (``(rho + 0.2) / 0.0000275``), the QA band is 1 where the
chosen Fmask bits are set, and the stack is written by the Landsat stacker's shared writer.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from kelpseg.io.errors import TileError
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

HLS_BANDS: dict[str, tuple[str, ...]] = {
    "L30": ("B06", "B05", "B04", "B03", "B02"),
    "S30": ("B11", "B8A", "B04", "B03", "B02"),
}
"""HLS band names of SWIR1, NIR, Red, Green, Blue for each product."""
FMASK = "Fmask"
FMASK_FILL = 255
HLS_NODATA = -9999
HLS_SCALE = 0.0001
"""Reflectance = value x 0.0001 (used when a file does not declare its own scale)."""

FMASK_BITS: dict[str, int] = {
    "cirrus": 0,
    "cloud": 1,
    "dilated_cloud": 2,  # "adjacent to cloud/shadow": Landsat's dilated-cloud bit
    "adjacent": 2,
    "cloud_shadow": 3,
    "snow": 4,
}
"""Fmask bits (HLS v2) by the names ``--qa-bits`` uses for Landsat's ``QA_PIXEL``.
Bit 0 (cirrus) is "reserved, not used" in HLS v2.0; kept as an option."""
QA_IGNORED = ("fill",)
"""Names accepted and ignored: fill always makes every band missing."""
HLS_QA_DEFAULT: tuple[str, ...] = ("cloud", "dilated_cloud", "cloud_shadow")

_NAME = re.compile(
    r"^(?P<gid>HLS\.(?P<product>[LS]30)\.(?P<tile>T\d{2}[A-Z]{3})\.(?P<year>\d{4})(?P<doy>\d{3})"
    r"T(?P<time>\d{6})\.v(?P<version>\d+\.\d+))\.(?P<band>[A-Za-z0-9]+)\.tiff?$",
    re.IGNORECASE,
)


class HlsError(SceneError):
    """An HLS granule (or one of its files) that cannot be stacked, named with the problem."""


@dataclass(frozen=True)
class HlsGranule:
    """One HLS granule's files and what its id says.

    Attributes:
        granule_id: e.g. ``HLS.L30.T11SKU.2021227T183919.v2.0``.
        product: ``L30`` or ``S30``.
        tile: MGRS tile, e.g. ``T11SKU``.
        date: Acquisition date (year and day of year of the id).
        bands: Files of SWIR1, NIR, Red, Green, Blue.
        fmask: The ``Fmask`` file.
        labels: HLS band names of ``bands``.
        folder: Where the files lie.
    """

    granule_id: str
    product: str
    tile: str
    date: dt.date
    bands: tuple[Path, ...]
    fmask: Path
    labels: tuple[str, ...]
    folder: Path

    @property
    def sensor(self) -> str:
        """``HLS_L30`` or ``HLS_S30``."""
        return f"HLS_{self.product}"

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file the stack reads."""
        return (*self.bands, self.fmask)


def parse_name(name: str) -> dict[str, str] | None:
    """The parts of an HLS file name (``gid``, ``product``, ``tile``, ``year``, ``doy``,
    ``band``...), upper-cased product and tile; None when it is not one."""
    m = _NAME.match(name)
    if m is None:
        return None
    parts = m.groupdict()
    parts["product"] = parts["product"].upper()
    parts["tile"] = parts["tile"].upper()
    return parts


def granule_date(year: str | int, doy: str | int) -> dt.date:
    """The date of a year and day of year (``2021``, ``227`` -> 2021-08-15)."""
    return dt.date(int(year), 1, 1) + dt.timedelta(days=int(doy) - 1)


def _band_key(band: str) -> str:
    return FMASK if band.lower() == FMASK.lower() else band.upper()


def granule_from_files(files: Mapping[str, Path], folder: Path, granule_id: str) -> HlsGranule:
    """A granule from its ``{band name: file}`` (band names as HLS spells them, ``Fmask``).

    Raises:
        HlsError: naming the missing file (the bands of the product and ``Fmask`` are needed)
            or an id that is not an HLS granule id.
    """
    parts = parse_name(f"{granule_id}.{FMASK}.tif")
    if parts is None:
        raise HlsError(folder / granule_id, "not an HLS granule id (HLS.L30|S30.T.....)")
    product = parts["product"]
    wanted = HLS_BANDS[product]
    have = {_band_key(k): Path(v) for k, v in files.items()}
    for name in (*wanted, FMASK):
        if name not in have:
            raise HlsError(
                folder / f"{granule_id}.{name}.tif",
                f"missing (HLS {product} needs {', '.join(wanted)} and {FMASK})",
            )
    try:
        date = granule_date(parts["year"], parts["doy"])
    except ValueError as err:
        raise HlsError(folder / granule_id, f"bad day of year in the id: {err}") from err
    return HlsGranule(
        granule_id=parts["gid"],
        product=product,
        tile=parts["tile"],
        date=date,
        bands=tuple(have[b] for b in wanted),
        fmask=have[FMASK],
        labels=wanted,
        folder=folder,
    )


def find_granules(files: Iterable[Path]) -> tuple[list[HlsGranule], list[TileError]]:
    """The HLS granules among ``files`` (any folders), grouped by granule id and folder.

    Files whose names are not HLS names are ignored. A granule missing a band or its Fmask is
    a :class:`HlsError` naming the missing file; the others are still returned.
    """
    groups: dict[tuple[Path, str], dict[str, Path]] = {}
    for f in files:
        parts = parse_name(Path(f).name)
        if parts is None:
            continue
        key = (Path(f).parent, parts["gid"])
        groups.setdefault(key, {})[_band_key(parts["band"])] = Path(f)
    found: list[HlsGranule] = []
    errors: list[TileError] = []
    for (folder, gid), bands in sorted(groups.items()):
        try:
            found.append(granule_from_files(bands, folder, gid))
        except HlsError as err:
            errors.append(err)
    return found, errors


def read_granule(path: Path) -> HlsGranule:
    """The one granule of a folder of HLS files, or of the granule named by one of its files.

    Raises:
        HlsError: no granule, several, or a missing file.
    """
    path = Path(path)
    if path.is_file():
        parts = parse_name(path.name)
        if parts is None:
            raise HlsError(path, "not an HLS file name")
        siblings = [p for p in path.parent.iterdir() if p.name.startswith(parts["gid"] + ".")]
    else:
        siblings = sorted(p for p in path.iterdir() if p.is_file())
    found, errors = find_granules(siblings)
    if errors:
        raise errors[0]
    if len(found) != 1:
        raise HlsError(path, f"{len(found)} HLS granules here, expected one")
    return found[0]


def fmask_bits(qa_bits: Sequence[str] | None) -> tuple[str, ...]:
    """The QA names for Fmask, validated (None: :data:`HLS_QA_DEFAULT`).

    Raises:
        ValueError: a name Fmask has no bit for (Landsat's two-bit confidences).
    """
    if qa_bits is None:
        return HLS_QA_DEFAULT
    bits = tuple(b.strip() for b in qa_bits if b.strip())
    unknown = [b for b in bits if b not in FMASK_BITS and b not in QA_IGNORED]
    if unknown:
        raise ValueError(
            f"QA bit(s) {unknown} have no HLS Fmask bit: choose from {', '.join(FMASK_BITS)}"
        )
    return bits


def fmask_mask(fmask: np.ndarray, bits: Sequence[str]) -> np.ndarray:
    """True where any named Fmask bit is set (fill, 255, is not decoded here)."""
    value = sum({1 << FMASK_BITS[b] for b in bits if b in FMASK_BITS})
    return (fmask.astype(np.uint8) & np.uint8(value)) != 0


def _number(value: object, default: float) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _radiometry(src: rasterio.io.DatasetReader) -> tuple[float, float, float]:
    """``(scale, offset, nodata)`` of an HLS band: the file's own where it declares them
    (GDAL scale/offset, else the ``scale_factor``/``add_offset`` tags), else 0.0001, 0, -9999."""
    tags = {k.lower(): v for k, v in src.tags(1).items()}
    if src.scales and src.scales[0] not in (0.0, 1.0):
        scale, offset = float(src.scales[0]), float(src.offsets[0] or 0.0)
    else:
        scale = _number(tags.get("scale_factor"), HLS_SCALE)
        offset = _number(tags.get("add_offset"), 0.0)
    nodata = float(src.nodata) if src.nodata is not None else float(HLS_NODATA)
    return scale, offset, nodata


def stack_hls(
    granule: HlsGranule,
    out: Path,
    dem: Path | None = None,
    *,
    qa_bits: Sequence[str] | None = None,
    block: int = 1024,
    progress: bool = False,
    cache_mb: int = 64,
    extra_tags: dict[str, str] | None = None,
) -> SceneMeta:
    """Write the model's 7-band int16 input from an HLS v2 granule.

    Bands: SWIR1, NIR, Red, Green, Blue of the product (L30 B06 B05 B04 B03 B02, S30 B11 B8A
    B04 B03 B02) as Landsat-like DN (``(value x 0.0001 + 0.2) / 0.0000275``, rounded, clipped
    to 1..32767), QA 1 where a chosen Fmask bit is set (default cloud, adjacent to
    cloud/shadow, cloud shadow; ``cirrus``, ``snow`` on request), DEM reprojected onto the
    granule's grid. ``-32768`` in all bands where any band is nodata (-9999, or the file's
    declared nodata) or Fmask is 255. Same grid, CRS and transform as the granule (HLS is
    already 30 m); tags ``scene_id`` (the granule id), ``sensor`` (``HLS_L30``/``HLS_S30``),
    ``date``, ``footprint`` (the MGRS tile).

    Raises:
        HlsError: naming the file and the problem (unreadable, not int16/uint8, grids differ).
        ValueError: a QA name Fmask has no bit for, or a block under 16.
    """
    bits = fmask_bits(qa_bits)
    check_block(block)
    meta = SceneMeta(
        scene_id=granule.granule_id, sensor=granule.sensor, date=granule.date, folder=granule.folder
    )
    source = granule.folder / granule.granule_id
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=cache_mb * 2**20))
        fm = _open(stack, granule.fmask)
        srcs = [_open(stack, p) for p in granule.bands]
        if fm.count != 1 or fm.dtypes[0] != "uint8":
            raise HlsError(
                granule.fmask, f"expected one uint8 band, found {fm.count} x {fm.dtypes[0]}"
            )
        for src in srcs:
            if src.count != 1 or src.dtypes[0] not in ("int16", "uint16"):
                raise HlsError(
                    src.name, f"expected one int16 band, found {src.count} x {src.dtypes[0]}"
                )
        grid = Grid.of(fm)
        for src in srcs:
            if Grid.of(src) != grid:
                raise HlsError(
                    src.name,
                    f"grid {Grid.of(src).describe()} differs from the Fmask's {grid.describe()}",
                )
        radio = [_radiometry(src) for src in srcs]

        def read_block(win: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            f = read_window(fm, win)
            fill = f == FMASK_FILL
            refl = np.empty((len(srcs), int(win.height), int(win.width)), np.int16)
            for i, (src, (scale, offset, nodata)) in enumerate(zip(srcs, radio, strict=True)):
                v = read_window(src, win)
                fill |= v == nodata
                refl[i] = to_landsat_dn(v.astype(np.float64) * scale + offset)
            return refl, fmask_mask(f, bits), fill

        tags = {
            "scene_id": meta.scene_id,
            "sensor": meta.sensor,
            "date": meta.date.isoformat(),
            "footprint": granule.tile,
            "qa_bits": ",".join(bits),
            "source": str(source),
            "bands": ",".join(granule.labels) + f",{FMASK},DEM",
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


def _open(stack: ExitStack, path: Path) -> rasterio.io.DatasetReader:
    try:
        return open_raster_file(stack, path)
    except SceneError as err:
        raise HlsError(err.path, err.problem) from err
