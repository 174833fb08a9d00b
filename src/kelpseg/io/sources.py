"""Every input a user may have, found and stacked into the model's 7-band input.

:func:`find_sources` takes files and folders as given on the command line and returns one
:class:`Source` per scene: a Landsat Collection 2 Level-2 scene folder, an HLS v2 granule
(a folder of its files, or a folder of many granules' files), a Sentinel-2 L2A ``.SAFE``
folder, a local STAC Item / Collection / Catalog JSON file (links followed), a 7-band raster,
or a folder holding any of these at any depth. :func:`stack_source` writes a source's stack
(the 7-band int16 GeoTIFF ``kelpseg.io.landsat.stack_scene`` writes for a scene folder).

Inside folders, unrecognised files are ignored, as are hidden names (``.*``: temporary files).
A named file that is none of these, or a broken input (a ``.SAFE`` without
``MTD_MSIL2A.xml``, a granule missing a band, a STAC item missing an asset or pointing at a
remote file), is a :class:`~kelpseg.io.errors.TileError` naming the file and the problem;
the other inputs are still returned. A scene reached twice (a STAC item pointing at a scene
folder that is also in the tree, or one file named twice) is returned once, the direct
folder or file rather than the STAC item.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kelpseg.io.errors import TileError, first_line
from kelpseg.io.hls import HlsGranule, find_granules, parse_name, read_granule, stack_hls
from kelpseg.io.landsat import (
    QA_DEFAULT_BITS,
    Grid,
    LandsatFiles,
    SceneError,
    SceneMeta,
    is_scene_dir,
    open_raster_file,
    read_scene,
    stack_landsat_files,
)
from kelpseg.io.sentinel2 import (
    MTD_NAME,
    S2Files,
    Sentinel2Error,
    is_safe_dir,
    read_safe,
    stack_sentinel2_files,
)
from kelpseg.io.stac import read_stac, stac_type
from kelpseg.io.tiles import BAND_NAMES

KINDS = ("landsat", "hls", "sentinel2", "stac", "raster")
RASTER_SUFFIXES = (".tif", ".tiff")


class SourceError(TileError):
    """An input that is none of the kinds kelpseg reads, or cannot be reached."""


@dataclass(frozen=True)
class Source:
    """One scene to map, whatever its kind.

    Attributes:
        kind: ``landsat`` (C2 L2 scene folder), ``hls`` (HLS v2 granule), ``sentinel2``
            (L2A ``.SAFE``), ``stac`` (a STAC item's local assets) or ``raster`` (a 7-band
            raster, used as it is).
        path: The folder, item JSON or raster file (HLS: ``folder/{granule_id}``).
        scene_id: The product / granule id (a raster's ``scene_id`` tag, else its stem).
        sensor: ``LANDSAT_8``, ``HLS_L30``, ``HLS_S30``, ``SENTINEL_2A``...; a raster's
            ``sensor`` tag, else ``""``.
        date: Acquisition date; None for a raster without a ``date`` tag.
        footprint: WRS-2 ``PPPRRR`` (Landsat), MGRS tile ``T11SKU`` (HLS, Sentinel-2), None
            otherwise.
        product: What the stacker reads: :class:`~kelpseg.io.landsat.LandsatFiles`,
            :class:`~kelpseg.io.hls.HlsGranule`, :class:`~kelpseg.io.sentinel2.S2Files`; None
            for a raster.
        files: Every file the source reads (for fingerprints and to tell duplicates apart).
        tags: Extra tags for the stacked raster (e.g. Sentinel-2's processing baseline).
    """

    kind: str
    path: Path
    scene_id: str
    sensor: str
    date: dt.date | None
    footprint: str | None
    product: LandsatFiles | HlsGranule | S2Files | None = None
    files: tuple[Path, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()

    @property
    def meta(self) -> SceneMeta:
        """The source as :class:`~kelpseg.io.landsat.SceneMeta` (date required)."""
        if self.date is None:
            raise ValueError(f"{self.path}: no acquisition date")
        return SceneMeta(self.scene_id, self.sensor, self.date, self.path)


def _landsat(folder: Path) -> Source:
    meta, files = read_scene(folder)
    pid = meta.scene_id.split("_")
    footprint = pid[2] if len(pid) > 2 and pid[2].isdigit() and len(pid[2]) == 6 else None
    return Source(
        kind="landsat",
        path=folder,
        scene_id=meta.scene_id,
        sensor=meta.sensor,
        date=meta.date,
        footprint=footprint,
        product=files,
        files=(*files.bands, files.qa),
    )


def _hls(g: HlsGranule) -> Source:
    return Source(
        kind="hls",
        path=g.folder / g.granule_id,
        scene_id=g.granule_id,
        sensor=g.sensor,
        date=g.date,
        footprint=g.tile,
        product=g,
        files=g.files,
    )


def _safe(folder: Path) -> Source:
    p = read_safe(folder)
    tags = (
        ("processing_baseline", p.baseline),
        ("boa_add_offset", ",".join(f"{o:g}" for o in p.offsets)),
        ("quantification", f"{p.quantification:g}"),
    )
    return Source(
        kind="sentinel2",
        path=folder,
        scene_id=p.product_id,
        sensor=p.sensor,
        date=p.date,
        footprint=p.tile or None,
        product=p.files,
        files=p.files.files,
        tags=tags,
    )


def _stac(path: Path, visited: set[Path]) -> tuple[list[Source], list[TileError]]:
    scenes, errors = read_stac(path, visited)
    out = []
    for s in scenes:
        p = s.product
        files = (*p.bands, p.qa) if isinstance(p, LandsatFiles) else p.files
        out.append(
            Source(
                kind="stac",
                path=s.item,
                scene_id=s.scene_id,
                sensor=s.sensor,
                date=s.date,
                footprint=s.footprint,
                product=p,
                files=tuple(files),
                tags=(("stac_item", str(s.item)), *s.tags),
            )
        )
    return out, errors


def raster_source(path: Path) -> Source:
    """A 7-band raster as a source: ``scene_id``, ``sensor``, ``date``, ``footprint`` from its
    tags (``scene_id`` defaults to the file stem).

    Raises:
        SourceError: unreadable, or not 7 bands.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                count, tags = src.count, src.tags()
    except Exception as err:  # rasterio raises several kinds for non-rasters
        raise SourceError(path, f"not a readable raster: {first_line(err)}") from err
    if count != len(BAND_NAMES):
        raise SourceError(path, f"{count} band(s): the model's input has {len(BAND_NAMES)}")
    try:
        date = dt.date.fromisoformat(tags.get("date", ""))
    except ValueError:
        date = None
    return Source(
        kind="raster",
        path=Path(path),
        scene_id=tags.get("scene_id") or Path(path).stem,
        sensor=tags.get("sensor", ""),
        date=date,
        footprint=tags.get("footprint") or None,
        files=(Path(path),),
    )


class _Finder:
    def __init__(self) -> None:
        self.sources: list[Source] = []
        self.errors: list[TileError] = []
        self.visited_stac: set[Path] = set()
        self.visited_dirs: set[Path] = set()

    def _try(self, fn: Callable[..., object], *args: object) -> None:
        try:
            got = fn(*args)
        except TileError as err:
            self.errors.append(err)
            return
        if isinstance(got, Source):
            self.sources.append(got)

    def path(self, p: Path) -> None:
        """An input named by the user: it must be something kelpseg reads."""
        if not p.exists():
            self.errors.append(SourceError(p, "not found"))
        elif p.is_dir():
            before = (len(self.sources), len(self.errors))
            self.folder(p)
            if (len(self.sources), len(self.errors)) == before:
                self.errors.append(
                    SourceError(
                        p,
                        "no Landsat scene, HLS granule, .SAFE, STAC file or 7-band raster in "
                        "this folder or below",
                    )
                )
        else:
            self.file(p, named=True)

    def folder(self, d: Path) -> None:
        key = d.resolve()
        if key in self.visited_dirs:
            return
        self.visited_dirs.add(key)
        if is_safe_dir(d) or (d / MTD_NAME).is_file():  # a .SAFE, even renamed
            self._try(_safe, d)
            return
        if is_scene_dir(d):
            self._try(_landsat, d)
            return
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as err:
            self.errors.append(SourceError(d, f"unreadable folder: {err.strerror or err}"))
            return
        files, dirs = [], []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                (dirs if e.is_dir() else files if e.is_file() else []).append(Path(e.path))
            except OSError:
                continue
        granules, errs = find_granules(files)
        self.sources += [_hls(g) for g in granules]
        self.errors += errs
        for f in files:
            if parse_name(f.name) is None:
                self.file(f, named=False)
        for sub in dirs:
            self.folder(sub)

    def file(self, f: Path, *, named: bool) -> None:
        name = f.name.lower()
        if parse_name(f.name) is not None:
            if named:
                self._try(lambda: _hls(read_granule(f)))
            return
        if f.name == MTD_NAME and named:
            self._try(_safe, f.parent)
            return
        if name.endswith(".zip") and ("msil2a" in name or ".safe" in name):
            self.errors.append(
                Sentinel2Error(f, "a zipped .SAFE: unzip it and give the .SAFE folder")
            )
            return
        if name.endswith(".json"):
            kind = stac_type(f)
            if kind is not None:
                found, errs = _stac(f, self.visited_stac)
                self.sources += found
                self.errors += errs
            elif named:
                self.errors.append(SourceError(f, "a JSON file that is not a STAC Item/Catalog"))
            return
        if name.endswith(RASTER_SUFFIXES):
            try:
                self.sources.append(raster_source(f))
            except SourceError as err:
                if named:
                    self.errors.append(err)
            return
        if named:
            self.errors.append(
                SourceError(
                    f, "not a Landsat scene, HLS granule, .SAFE, STAC file or 7-band raster"
                )
            )


def _dedupe(sources: Sequence[Source]) -> list[Source]:
    """One source per set of files read, the direct kind preferred over a STAC item."""
    best: dict[frozenset[Path], int] = {}
    for i, s in enumerate(sources):
        key = frozenset(p.resolve() for p in s.files) or frozenset({s.path.resolve()})
        j = best.get(key)
        if j is None or (sources[j].kind == "stac" and s.kind != "stac"):
            best[key] = i
    keep = sorted(best.values())
    return [sources[i] for i in keep]


def find_sources(paths: Iterable[str | Path]) -> tuple[list[Source], list[TileError]]:
    """Every scene in ``paths`` (files and folders, folders searched recursively).

    Returns:
        ``(sources, errors)``: sources in the order found (each path's in turn, a folder's
        entries by name), and one :class:`~kelpseg.io.errors.TileError` per broken input.
    """
    finder = _Finder()
    for p in paths:
        finder.path(Path(p))
    return _dedupe(finder.sources), finder.errors


def stack_source(
    source: Source,
    out: Path,
    dem: Path | None = None,
    *,
    qa_bits: Sequence[str] | None = None,
    block: int = 1024,
    progress: bool = False,
    cache_mb: int = 64,
    tags: dict[str, str] | None = None,
) -> SceneMeta:
    """Write a source's 7-band int16 stack (SWIR1, NIR, Red, Green, Blue, QA, DEM; -32768
    fill; the source's CRS and transform, 30 m; tags ``scene_id``, ``sensor``, ``date``).

    Args:
        source: From :func:`find_sources`; not a ``raster`` (it is the model's input already).
        out: The GeoTIFF to write (atomically).
        dem: A DEM in any CRS, reprojected onto the scene; None leaves the band missing.
        qa_bits: QA names (those of ``--qa-bits``: ``cloud``, ``cloud_shadow``, ``cirrus``,
            ``dilated_cloud``, ``snow``, ``fill``...), each sensor's equivalent used; None:
            each sensor's default (Landsat: fill, dilated cloud, cirrus, cloud, cloud shadow;
            HLS Fmask: cloud, adjacent, shadow; Sentinel-2 SCL: 3, 8, 9, 10).
        block: Window side in pixels.
        progress: Show a progress bar.
        cache_mb: GDAL's block cache while stacking.
        tags: More tags for the stack (e.g. the DEM's footprint, see ``kelpseg stack``).

    Raises:
        TileError: naming the file and the problem.
        ValueError: a raster source, a QA name the sensor has no flag for, a block under 16.
    """
    p = source.product
    if source.kind == "raster" or p is None:
        raise ValueError(f"{source.path}: a 7-band raster needs no stacking: map it as it is")
    common = {"block": block, "progress": progress, "cache_mb": cache_mb}
    tags = {
        "footprint": source.footprint or "",
        "kind": source.kind,
        **dict(source.tags),
        **(tags or {}),
    }
    if isinstance(p, LandsatFiles):
        bits = QA_DEFAULT_BITS if qa_bits is None else qa_bits
        return stack_landsat_files(
            p, source.meta, out, dem, qa_bits=bits, source=source.path, extra_tags=tags,
            **common,
        )  # fmt: skip
    if isinstance(p, HlsGranule):
        return stack_hls(p, out, dem, qa_bits=qa_bits, extra_tags=tags, **common)
    if isinstance(p, S2Files):
        return stack_sentinel2_files(
            p, source.meta, out, dem, qa_bits=qa_bits, source=source.path, extra_tags=tags,
            **common,
        )  # fmt: skip
    raise SceneError(source.path, f"no stacker for {type(p).__name__}")


def source_grid(source: Source) -> Grid:
    """The grid a source's stack is written on (read from one file's header): what a DEM is
    chosen for before stacking.

    Raises:
        TileError: naming the file when it cannot be read.
    """
    from contextlib import ExitStack

    from kelpseg.io.sentinel2 import grid_30m

    p = source.product
    with ExitStack() as stack:
        if source.kind == "raster" or p is None:
            return Grid.of(open_raster_file(stack, source.path))
        if isinstance(p, LandsatFiles):
            return Grid.of(open_raster_file(stack, p.qa))
        if isinstance(p, HlsGranule):
            return Grid.of(open_raster_file(stack, p.fmask))
        if isinstance(p, S2Files):
            return grid_30m(open_raster_file(stack, p.scl))
    raise SceneError(source.path, f"no grid for {type(p).__name__}")
