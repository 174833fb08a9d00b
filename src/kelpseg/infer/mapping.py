"""``kelpseg map``: whole rasters and Landsat scenes -> COG maps, polygons, areas, quick-looks.

Each input (a Landsat Collection 2 Level-2 scene folder, stacked on the fly with its DEM, or any
7-band int16 raster) is predicted by sliced inference (:mod:`kelpseg.infer.sliced`) with an
ensemble assembled by :mod:`kelpseg.infer.assemble`, and written to ``MAPS/{scene_id}/`` band by
band: ``{id}_kelp.tif`` (uint8: 1 kelp on clear water, 0 not kelp, 255 unknown: no data, water
under a QA flag, or outside the DEM), ``{id}_proba.tif`` (float32, NaN nodata),
``{id}_spread.tif`` (ensembles), ``{id}_coverage.tif`` (:mod:`kelpseg.geo.coverage`), all COGs
with the input's CRS and transform and tags naming the scene, date, sensor, DEM, models and
threshold; ``{id}_kelp.gpkg`` (+ ``.geojson``), ``{id}_quicklook.png``, and ``scene.json``
last: its presence with the same fingerprint marks the scene done. ``areas.csv`` is rebuilt
from every ``scene.json`` at the end.

The mask is the coverage layer's: kelp is counted only where water was seen (coverage 1), land
is never kelp, and what the model finds on water under a QA flag is reported apart
(``kelp_flagged_ha``), never in ``kelp_ha``. A scene folder needs a DEM (:mod:`kelpseg.geo.dem`)
unless ``--no-dem`` says to map without one. A lock per scene folder lets several ``kelpseg
map`` processes share one ``MAPS`` folder: a scene being mapped by another is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kelpseg import __version__
from kelpseg.geo.coverage import CLEAR_WATER, CLOUDY_WATER, LAND, NAMES, NO_DEM, coverage_codes
from kelpseg.geo.dem import WITHOUT_DEM, DemChoice, DemError, Dems
from kelpseg.geo.footprint import footprint_id
from kelpseg.geo.reach import DEFAULT_MAX_OFFSHORE_M
from kelpseg.io.errors import BatchReport, TileError, first_line
from kelpseg.io.raster import atomic_write_text, georef_of, open_raster
from kelpseg.io.sources import find_sources
from kelpseg.io.tiles import DEM_INDEX, MASK_NODATA, NODATA

AREAS_COLUMNS = [
    "scene_id",
    "footprint",
    "sensor",
    "date",
    "kelp_ha",
    "kelp_flagged_ha",
    "water_clear_ha",
    "water_ha",
    "observed_fraction",
    "no_dem_ha",
    "dem_coverage",
    "pixel_area_assumed",
]
"""``areas.csv``: hectares rounded to 0.01, fractions to 4 decimals (see the README's table)."""


class MapError(TileError):
    """An input that cannot be mapped, the file and the problem named in one line."""


@dataclass
class MapSettings:
    """How every input of one ``kelpseg map`` call is written (the ensemble's settings are the
    assembly's)."""

    window: int = 350
    overlap: int | None = None
    probabilities: bool = True
    geojson: bool = False
    min_area_ha: float = 0.0
    slices: int = 1
    compress: str = "DEFLATE"
    quicklook_px: int = 1000
    max_offshore_m: float | None = DEFAULT_MAX_OFFSHORE_M
    """Skip windows farther offshore than this (:mod:`kelpseg.geo.reach`); 0/None: never."""
    backend: str = "torch"
    """``onnx``: checkpoint members run as cached ONNX exports (:func:`onnx_assembly`)."""

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "quicklook_px"}


@dataclass
class MapResult:
    """Scene folders written or kept, scenes another process was mapping, the batch report."""

    scenes: dict[str, Path] = field(default_factory=dict)
    reused: int = 0
    busy: list[str] = field(default_factory=list)
    report: BatchReport = field(default_factory=lambda: BatchReport("map"))


@dataclass(frozen=True)
class SceneInput:
    """What one input is, before any stacking (from :func:`kelpseg.io.sources.find_sources`)."""

    source: Path
    scene_id: str
    sensor: str | None
    date: str | None
    is_folder: bool
    """Whether it must be stacked first (a scene or product), or is a 7-band raster."""
    origin: Any = None
    """The :class:`kelpseg.io.sources.Source` it was found as."""
    files: tuple[Path, ...] = ()

    @classmethod
    def of(cls, src: Any) -> SceneInput:
        return cls(
            src.path,
            src.scene_id,
            src.sensor or None,
            src.date.isoformat() if src.date else None,
            src.kind != "raster",
            src,
            tuple(src.files),
        )


def _stamp(files: list[Path]) -> list[Any]:
    """What identifies files' content cheaply: names, sizes, modification times."""
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def fingerprint(
    model_hash: str, ens_settings: dict, settings: MapSettings, inputs: list[Path], dems: list[Path]
) -> str:
    """Models, settings and input (and DEM) stamps hashed: a rerun keeps only matching scenes."""
    stamp = {
        "models": model_hash,
        "ensemble": ens_settings,
        "settings": settings.as_dict(),
        "input": _stamp(sorted(inputs)),
        "dem": _stamp(dems),
    }
    return hashlib.sha1(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


def _done(folder: Path, fp: str) -> bool:
    try:
        return json.loads((folder / "scene.json").read_text()).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def _clean_stale(folder: Path) -> None:
    """Remove temporary files a killed run left (only the lock holder calls this)."""
    for stale in [*folder.glob(".*.tmp"), *folder.glob(".*.tmp.*"), *folder.glob(".*.dem.vrt")]:
        stale.unlink(missing_ok=True)


LOCK_NAME = ".lock"


@contextmanager
def scene_lock(folder: Path) -> Iterator[bool]:
    """Hold the scene folder's lock while the block runs; yields False (and holds nothing) when
    another process holds it. The lock is the OS's (``flock``): a killed holder releases it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): no concurrent protection
        yield True
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


GDAL_CACHE_MB = 256
"""GDAL's block cache while mapping (its default, 5 % of RAM, grows with the scene's outputs)."""


def _rows_outside(footprint: Any, transform: Any, row: int, height: int, width: int) -> Any:
    """``(height, width)`` bool: pixels of rows ``[row, row + height)`` outside ``footprint``."""
    from rasterio.features import geometry_mask
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    return geometry_mask(
        [footprint],
        out_shape=(height, width),
        transform=window_transform(Window(0, row, width, height), transform),
    )


def map_raster(
    engine: Any,
    raster: Path,
    folder: Path,
    scene: SceneInput,
    settings: MapSettings,
    *,
    threshold: float,
    cut: float,
    postprocess: Any = None,
    dem: DemChoice | None = None,
    tags: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict one 7-band raster into ``folder``; the scene's areas (no scene.json).

    Args:
        engine: The ensemble engine (:meth:`kelpseg.infer.assemble.Assembly.engine`).
        raster: The 7-band int16 raster (a scene's stack).
        folder: The scene's output folder.
        scene: The input's scene id, sensor, date.
        settings: Window, overlap and outputs.
        threshold: The decision threshold (recorded); ``cut``: what the combined value is
            compared with (the threshold, or 0.5 for a hard vote).
        postprocess: A ``postprocess`` config with a step on, applied to the whole scene's
            probabilities after the sliced pass (needs ~6 bytes per pixel); None: off.
        dem: Where the DEM is defined (pixels outside its footprint: coverage 3, unknown).
        tags: Tags of every output raster.

    GDAL's block cache is capped at :data:`GDAL_CACHE_MB` so memory does not grow with the
    scene.

    Raises:
        MapError: the raster is not a 7-band int16 raster.
    """
    import rasterio

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        return _map_raster(
            engine, raster, folder, scene, settings, threshold, cut, postprocess, dem,
            tags or {}, progress,
        )  # fmt: skip


def _map_raster(
    engine: Any,
    raster: Path,
    folder: Path,
    scene: SceneInput,
    settings: MapSettings,
    threshold: float,
    cut: float,
    post: Any,
    dem: DemChoice | None,
    tags: dict[str, str],
    progress: bool,
) -> dict[str, Any]:
    from kelpseg.eda.quicklook import QuickLook
    from kelpseg.geo.area import row_areas_ha
    from kelpseg.geo.reach import scene_reach
    from kelpseg.infer.postprocess import scene_mask
    from kelpseg.infer.sliced import RasterSource, WindowCounts, predict_sliced
    from kelpseg.io.cog import CogWriter

    sid = scene.scene_id
    names = {k: folder / f"{sid}_{k}.tif" for k in ("kelp", "proba", "spread", "coverage")}
    with open_raster(raster) as src:
        try:
            source = RasterSource(src)
        except ValueError as err:
            raise MapError(raster, str(err)) from err
        georef = georef_of(src)
        H, W = src.height, src.width
        common = {"height": H, "width": W, "georef": georef, "compress": settings.compress}
        footprint_of = footprint_id(sid, georef.crs, georef.transform, (H, W))
        tags = {"threshold": str(threshold), "footprint": footprint_of, **tags}
        writers = {
            "coverage": CogWriter(
                names["coverage"],
                dtype="uint8",
                nodata=MASK_NODATA,
                band_names=["coverage"],
                tags={**tags, "codes": ", ".join(f"{k} {v}" for k, v in NAMES.items())},
                **common,
            ),
        }
        if post is None:
            writers["kelp"] = _kelp_writer(names["kelp"], tags, common)
        if settings.probabilities or post is not None:
            writers["proba"] = CogWriter(
                names["proba"] if settings.probabilities else folder / f".{sid}_proba_work.tif",
                dtype="float32",
                nodata=float("nan"),
                resampling="AVERAGE",
                band_names=["kelp_probability"],
                tags=tags,
                **common,
            )
        if engine.spread:
            writers["spread"] = CogWriter(
                names["spread"],
                dtype="float32",
                nodata=float("nan"),
                resampling="AVERAGE",
                band_names=["member_std"],
                tags=tags,
                **common,
            )
        look = QuickLook(H, W, settings.quicklook_px)
        ha: dict[int, float] = {}
        px = {"valid": 0, "no_dem": 0, "land": 0}
        kelp_ha = flagged_ha = 0.0
        footprint = dem.footprint if dem is not None else None
        reach = scene_reach(
            source,
            max_offshore_m=settings.max_offshore_m,
            crs=georef.crs,
            transform=georef.transform,
            footprint=footprint,
        )
        if reach.note:
            print(f"[map] note: {sid}: {reach.note}", file=sys.stderr)
        counts = WindowCounts()
        try:
            for band in predict_sliced(
                engine,
                source,
                window=settings.window,
                overlap=settings.overlap,
                batch_size=engine_batch(engine),
                progress=progress,
                skip=reach.why_skip,
                counts=counts,
            ):
                h = len(band.mean)
                outside = (
                    _rows_outside(footprint, georef.transform, band.row, h, W)
                    if footprint is not None
                    else None
                )
                cov = coverage_codes(band.raw, outside)
                rows, _ = row_areas_ha(georef.crs, georef.transform, h, band.row)
                for code in (LAND, CLEAR_WATER, CLOUDY_WATER, NO_DEM):
                    ha[code] = ha.get(code, 0.0) + float((cov == code).sum(axis=1) @ rows)
                px["valid"] += int((cov != MASK_NODATA).sum())
                px["no_dem"] += int((cov == NO_DEM).sum())
                px["land"] += int((cov == LAND).sum())
                seen = band.mean >= cut
                flagged_ha += float((seen & (cov == CLOUDY_WATER)).sum(axis=1) @ rows)
                writers["coverage"].write_rows(band.row, cov)
                if "proba" in writers:
                    writers["proba"].write_rows(band.row, np.where(band.missing, np.nan, band.mean))
                if "spread" in writers and band.std is not None:
                    writers["spread"].write_rows(band.row, np.where(band.missing, np.nan, band.std))
                if post is None:
                    kelp = scene_mask(band.mean, cov, cut)
                    writers["kelp"].write_rows(band.row, kelp)
                    kelp_ha += float((kelp == 1).sum(axis=1) @ rows)
                    look.add(band.row, band.raw, kelp)
                else:
                    look.add(band.row, band.raw, np.zeros((h, W), np.uint8))
            for w in writers.values():
                w.finish()
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
    if post is not None:
        kelp_ha = _postprocessed_mask(writers["proba"].path, names, cut, post, tags, common, look)
        if not settings.probabilities:
            writers["proba"].path.unlink(missing_ok=True)
    with open_raster(names["kelp"]) as src:
        mask = src.read(1)  # polygons need the whole mask: 1 byte per pixel
    info = _polygons(mask, georef, folder, scene, settings, footprint_of)
    del mask
    _, assumed = row_areas_ha(georef.crs, georef.transform, 1)
    look.save(
        folder / f"{sid}_quicklook.png",
        title=" · ".join(str(v) for v in (sid, scene.date, scene.sensor) if v),
        pixel_m=None if assumed else _pixel_m(georef),
        note=f"kelp at threshold {threshold:g}; 30 m pixels assumed (no CRS)" * assumed
        or f"kelp at threshold {threshold:g}",
    )
    water, clear = ha[CLEAR_WATER] + ha[CLOUDY_WATER], ha[CLEAR_WATER]
    return {
        "footprint": footprint_of,
        "crs": georef.crs.to_wkt() if georef.crs is not None else None,
        "pixel_area_assumed": bool(assumed),
        # unobserved is empty, never 0: no clear water means nothing could be seen
        "kelp_ha": kelp_ha if clear > 0 else None,
        "kelp_flagged_ha": flagged_ha,
        "water_ha": water,
        "water_clear_ha": clear,
        "observed_fraction": clear / water if water > 0 else None,
        "no_dem_ha": ha[NO_DEM],
        "valid_px": px["valid"],
        "dem_coverage": 1 - px["no_dem"] / px["valid"] if px["valid"] else None,
        "land_fraction": px["land"] / px["valid"] if px["valid"] else None,
        "windows": {**counts.as_dict(), **reach.record()},
        **info,
    }


def engine_batch(engine: Any) -> int:
    """Windows per forward pass: the engine's ``batch_size`` (set by :func:`map_inputs`)."""
    return int(getattr(engine, "batch_size", 1))


def _kelp_writer(path: Path, tags: dict[str, str], common: dict[str, Any]) -> Any:
    from kelpseg.io.cog import CogWriter

    return CogWriter(
        path,
        dtype="uint8",
        nodata=MASK_NODATA,
        band_names=["kelp (1 kelp on clear water, 0 not kelp, 255 unknown)"],
        tags=tags,
        **common,
    )


def _postprocessed_mask(
    proba: Path, names: dict[str, Path], cut: float, post: Any, tags, common, look
) -> float:
    """The ``postprocess`` steps on the whole scene (object and hole sizes need all of it):
    the kelp COG from the probabilities and coverage written by the sliced pass; its kelp ha."""
    from kelpseg.eda.render import block_max
    from kelpseg.geo.area import row_areas_ha
    from kelpseg.infer.postprocess import scene_mask

    with open_raster(proba) as p, open_raster(names["coverage"]) as c:
        mask = scene_mask(np.nan_to_num(p.read(1), nan=0.0), c.read(1), cut, post)
    writer = _kelp_writer(names["kelp"], tags, common)
    try:
        writer.write_rows(0, mask)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    look.kelp = block_max(mask == 1, look.step)
    georef = common["georef"]
    rows, _ = row_areas_ha(georef.crs, georef.transform, mask.shape[0])
    return float((mask == 1).sum(axis=1) @ rows)


def _pixel_m(georef: Any) -> float | None:
    """Ground size (m) of one pixel, for the quick-look's scale bar (centre of a geographic
    raster)."""
    from kelpseg.geo.area import linear_unit_m, to_pyproj

    crs = to_pyproj(georef.crs)
    t = georef.transform
    if crs is None or t is None:
        return None
    if crs.is_projected:
        return abs(t.a) * linear_unit_m(crs)
    return abs(t.a) * 111_320.0  # metres per degree of longitude at the equator: a rough bar


def _polygons(
    mask: np.ndarray,
    georef: Any,
    folder: Path,
    scene: SceneInput,
    settings: MapSettings,
    footprint: str,
) -> dict[str, Any]:
    from kelpseg.geo.vector import kelp_polygons, write_polygons

    polys = kelp_polygons(
        mask,
        georef.transform,
        georef.crs,
        min_area_ha=settings.min_area_ha,
        nodata=MASK_NODATA,
        attributes={
            "scene_id": scene.scene_id,
            "footprint": footprint,
            "date": scene.date,
            "sensor": scene.sensor,
        },
    )
    write_polygons(polys, folder / f"{scene.scene_id}_kelp.gpkg", geojson=settings.geojson)
    return {"polygons": len(polys), "polygons_ha": float(polys["area_ha"].sum())}


def rebuild_areas(maps: Path) -> Path | None:
    """``MAPS/areas.csv`` from every ``MAPS/*/scene.json`` (atomic), sorted by footprint, date
    and id, rounded as the time series are (:func:`kelpseg.geo.timeseries.write_table`);
    nothing is written when no scene is done (no header-only file)."""
    from kelpseg.geo.timeseries import FRACTION_DECIMALS, write_table

    rows = []
    for path in sorted(maps.glob("*/scene.json")):
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        meta["dem_coverage"] = (meta.get("dem") or {}).get("coverage")
        rows.append(meta)
    if not rows:
        return None
    table = pd.DataFrame(rows, columns=AREAS_COLUMNS)
    table["dem_coverage"] = pd.to_numeric(table["dem_coverage"]).round(FRACTION_DECIMALS)
    table = table.sort_values(["footprint", "date", "scene_id"], na_position="last", kind="stable")
    return write_table(table, maps / "areas.csv")


def map_run(
    run: Path,
    inputs: list[Path],
    maps: Path,
    *,
    dem: Path | None = None,
    no_dem: bool = False,
    overwrite: bool = False,
    settings: MapSettings | None = None,
    progress: bool = True,
    **assembly: Any,
) -> MapResult:
    """Map ``inputs`` with the trained folds of ``run`` (every fold, or the best fold alone
    when ``kelpseg run`` chose it; the predict settings of the first fold's config, the run's
    tuned threshold for them); ``assembly`` goes to :func:`kelpseg.infer.assemble.assemble`."""
    from kelpseg.infer.assemble import assemble

    ens = assemble(run=run, **assembly)
    return map_inputs(
        ens,
        inputs,
        maps,
        settings or default_settings(ens),
        dems=Dems(dem, no_dem=no_dem),
        overwrite=overwrite,
        progress=progress,
    )


def default_settings(ens: Any, **given: Any) -> MapSettings:
    """Map settings for an assembly: the window is the first member's ``data.tile_size`` (350
    when any size was trained) unless given; an overlap must be smaller than the window."""
    given = {k: v for k, v in given.items() if v is not None}
    window = given.pop("window", None) or ens.models[0].cfg.data.tile_size or 350
    overlap = given.get("overlap")
    if overlap is not None and not 0 <= overlap < window:
        raise ValueError(f"--overlap {overlap} must be smaller than the window ({window} px)")
    return MapSettings(window=window, **given)


def map_inputs(
    ens: Any,
    inputs: list[Path],
    maps: Path,
    settings: MapSettings,
    *,
    dems: Dems | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> MapResult:
    """Map every input into ``maps`` one after another; a bad one is reported and skipped, one
    another process is mapping is skipped and named in ``busy``.

    Args:
        ens: The assembled ensemble (:class:`kelpseg.infer.assemble.Assembly`).
        inputs: Scene folders or 7-band rasters.
        maps: Output folder.
        settings: Window, overlap and outputs.
        dems: Where each scene folder's DEM comes from (default: none, which refuses them).
        overwrite: Redo scenes already done with the same fingerprint.
    """
    result = MapResult()
    dems = dems or Dems(None)
    engine = scene_engine(ens, settings)
    taken: dict[str, Path] = {}  # scene id -> the input mapped under it in this call
    found, broken = find_sources(inputs)
    for err in broken:
        result.report.add(err)
    for src in found:
        try:
            scene = claim_scene(src, taken)
        except TileError as err:
            result.report.add(err)
            continue
        map_scene(ens, engine, scene, maps, settings, dems, overwrite, progress).record(result)
    if maps.is_dir():
        rebuild_areas(maps)
    return result


def scene_engine(ens: Any, settings: MapSettings) -> Any:
    """The ensemble engine every scene of a call is predicted with (spread on, the slices and
    batch size of the call; checkpoint members as cached ONNX graphs under ``--backend onnx``)."""
    if settings.backend == "onnx":
        from kelpseg.infer.onnx_export import onnx_assembly

        ens = onnx_assembly(ens, settings.window)
    engine = ens.engine(spread=True, slices=settings.slices)
    engine.batch_size = ens.batch_size
    return engine


def claim_scene(src: Any, taken: dict[str, Path]) -> SceneInput:
    """The input of a found source, its scene id claimed in ``taken`` (scene id -> input).

    Raises:
        MapError: a second input with a scene id already claimed (it would overwrite the
            first's folder).
    """
    scene = SceneInput.of(src)
    if scene.scene_id in taken:
        raise MapError(
            src.path, f"same scene id {scene.scene_id!r} as {taken[scene.scene_id]}: "
            "rename one of them",
        )  # fmt: skip
    taken[scene.scene_id] = src.path
    return scene


@dataclass
class SceneOutcome:
    """What became of one input: written or kept (``folder``), ``busy`` (another process holds
    its lock), or refused (``error``: the problem's class, file and text). Plain data, so a
    worker process can hand it back to the one that reports (:mod:`kelpseg.infer.distributed`).
    """

    source: Path
    folder: Path | None = None
    kept: bool = False
    busy: bool = False
    error: tuple[type, str, str] | None = None

    @classmethod
    def failed(cls, source: Path, err: TileError) -> SceneOutcome:
        return cls(source, error=(type(err), str(err.path), err.problem))

    def problem(self) -> TileError | None:
        """The refusal as the error it was raised as (a :class:`~kelpseg.io.errors.TileError`)."""
        if self.error is None:
            return None
        kind, path, problem = self.error
        try:
            return kind(path, problem)
        except TypeError:  # a subclass with another signature: the message is what counts
            return MapError(path, problem)

    def record(self, result: MapResult) -> None:
        """Add it to the batch's result as the serial run does (and say so on stderr)."""
        err = self.problem()
        if err is not None:
            result.report.add(err)
        elif self.busy:
            result.busy.append(str(self.source))
            print(
                f"[map] {self.source}: being mapped by another kelpseg process: skipped (rerun "
                "later to pick it up)",
                file=sys.stderr,
            )
        elif self.folder is not None:
            result.scenes[self.folder.name] = self.folder
            result.reused += self.kept
            result.report.ok += 1


def map_scene(
    ens: Any,
    engine: Any,
    scene: SceneInput,
    maps: Path,
    settings: MapSettings,
    dems: Dems,
    overwrite: bool,
    progress: bool,
) -> SceneOutcome:
    """Map one input into ``maps`` (DEM choice, lock, fingerprint, atomic outputs); a bad input
    is an outcome naming the file, not an exception. Serial and distributed runs both call it.
    """
    source = scene.source
    try:
        maps.mkdir(parents=True, exist_ok=True)
        done = _map_one(ens, engine, scene, maps, settings, dems, overwrite, progress)
    except TileError as err:
        return SceneOutcome.failed(source, err)
    except (OSError, ValueError) as err:  # e.g. a scene folder that does not stack
        msg = first_line(err)
        return SceneOutcome.failed(source, MapError(source, msg.removeprefix(f"{source}: ")))
    if done is None:
        return SceneOutcome(source, busy=True)
    kept, path = done
    return SceneOutcome(source, folder=path, kept=kept)


def _raster_dem(scene: SceneInput, dems: Dems) -> DemChoice:
    """A raster carries its DEM in band 7 (``kelpseg stack`` also records its footprint): a
    raster whose DEM band holds no value at all is refused unless ``--no-dem``."""
    import rasterio
    from shapely import wkt

    with open_raster(scene.source) as src:
        tags = src.tags()
        if src.count < 7:
            raise MapError(scene.source, f"{src.count} bands; a model input has 7")
        side = max(src.height, src.width)
        step = max(1, side // 1024)
        dem = src.read(
            DEM_INDEX + 1,
            out_shape=(max(1, src.height // step), max(1, src.width // step)),
            resampling=rasterio.enums.Resampling.nearest,
        )
    has_dem = bool((dem != NODATA).any())
    if not has_dem and not dems.no_dem:
        raise DemError(
            scene.source,
            "band 7 (DEM) holds no value: without a DEM, land counts as water and the model "
            "can call it kelp. Stack the scene with its DEM (kelpseg stack --dem), or pass "
            "--no-dem to map every valid pixel as water",
        )
    if not has_dem:
        return DemChoice(WITHOUT_DEM)
    footprint = wkt.loads(tags["dem_footprint"]) if tags.get("dem_footprint") else None
    files = [Path(f) for f in tags.get("dem_files", "").split(",") if f]
    return DemChoice("band 7 of the input", [], files, footprint)


def _map_one(
    ens: Any,
    engine: Any,
    scene: SceneInput,
    maps: Path,
    settings: MapSettings,
    dems: Dems,
    overwrite: bool,
    progress: bool,
) -> tuple[bool, Path] | None:
    """Map one input; ``(kept, folder)``, or None when another process holds its lock."""
    folder = maps / scene.scene_id
    source = scene.source
    if scene.is_folder:
        from kelpseg.io.sources import source_grid

        g = source_grid(scene.origin)
        dem = dems.choose(scene.scene_id, source, g.crs, g.transform, (g.height, g.width))
    else:
        dem = _raster_dem(scene, dems)
    fp = fingerprint(ens.model_hash, ens.settings(), settings, list(scene.files), dem.files)
    if not overwrite and _done(folder, fp):
        return True, folder
    with scene_lock(folder) as mine:
        if not mine:
            return None
        if not overwrite and _done(folder, fp):  # the other process finished it meanwhile
            return True, folder
        return _map_locked(ens, engine, scene, folder, settings, dem, fp, progress)


def _map_locked(
    ens: Any,
    engine: Any,
    scene: SceneInput,
    folder: Path,
    settings: MapSettings,
    dem: DemChoice,
    fp: str,
    progress: bool,
) -> tuple[bool, Path]:
    t0 = time.perf_counter()
    _clean_stale(folder)
    (folder / "scene.json").unlink(missing_ok=True)
    sid = scene.scene_id
    tags = {
        "scene_id": sid,
        "date": scene.date or "",
        "sensor": scene.sensor or "",
        "source": str(scene.source.resolve()),
        "dem": ",".join(str(f) for f in dem.files) or dem.origin,
        "model_hash": ens.model_hash,
        "members": str(len(ens.models)),
        "fingerprint": fp,
        "software": f"kelpseg {__version__}",
    }
    raster, stacked = scene.source, None
    try:
        if scene.is_folder:
            from kelpseg.io.sources import stack_source

            stacked = folder / f".{sid}_stack.tif.tmp"
            stack_source(scene.origin, stacked, dem.source(folder))
            raster = stacked
        info = map_raster(
            engine,
            raster,
            folder,
            scene,
            settings,
            threshold=ens.threshold,
            cut=ens.cut,
            postprocess=ens.postprocess,
            dem=dem,
            tags=tags,
            progress=progress,
        )
    finally:
        if stacked is not None:
            stacked.unlink(missing_ok=True)
        for vrt in folder.glob(f".{os.getpid()}.dem.vrt"):
            vrt.unlink(missing_ok=True)
        if not any(p.name != LOCK_NAME for p in folder.iterdir()):  # nothing written
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()
    dem.coverage, dem.land_fraction = info["dem_coverage"], info["land_fraction"]
    record = {
        "scene_id": sid,
        "footprint": info.pop("footprint"),
        "sensor": scene.sensor,
        "date": scene.date,
        "source": str(scene.source.resolve()),
        "dem": dem.record() if dem.origin != WITHOUT_DEM else None,
        **{k: v for k, v in info.items() if k not in ("valid_px", "land_fraction", "polygons_ha")},
        "units": "areas in hectares; fractions 0-1",
        "threshold": ens.threshold,
        "threshold_source": ens.threshold_source,
        "ensemble": ens.settings(),
        "models": [str(m) for m in ens.checkpoints],
        "model_hash": ens.model_hash,
        "kelpseg": __version__,
        "seconds": round(time.perf_counter() - t0, 1),
        "fingerprint": fp,
    }
    _warn_dem(sid, dem, info)
    atomic_write_text(folder / "scene.json", json.dumps(record, indent=2))  # last: marks it done
    kelp = "no clear water" if info["kelp_ha"] is None else f"{info['kelp_ha']:.1f} ha kelp"
    print(f"[map] {sid}: {kelp}, {info['polygons']} beds -> {folder}", file=sys.stderr)
    return False, folder


def _warn_dem(scene_id: str, dem: DemChoice, info: dict[str, Any]) -> None:
    """Say loudly what the DEM could not tell."""
    if dem.origin == WITHOUT_DEM:
        print(
            f"[map] warning: {scene_id}: mapped without a DEM (--no-dem): every valid pixel "
            "counts as water, land included; kelp and water areas may be too large",
            file=sys.stderr,
        )
        return
    cov = dem.coverage
    if cov is not None and cov < 0.99:
        print(
            f"[map] warning: {scene_id}: the DEM covers {cov:.0%} of the scene's valid pixels; "
            f"the rest ({info['no_dem_ha']:.0f} ha) is 'no DEM' in the coverage layer and "
            "counts neither as water nor as kelp",
            file=sys.stderr,
        )
    if info.get("land_fraction") == 0 and info.get("valid_px"):
        print(
            f"[map] warning: {scene_id}: the DEM has no land in this scene: is it the right "
            "DEM (a coastal scene has some land)?",
            file=sys.stderr,
        )
