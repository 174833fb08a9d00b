"""``kelpseg map``: whole rasters and Landsat scenes -> COG maps, polygons, areas, quick-looks.

Each input (a Landsat Collection 2 Level-2 scene folder, stacked on the fly, or any 7-band int16
raster) is predicted by sliced inference (:mod:`kelpseg.infer.sliced`) and written to
``MAPS/{scene_id}/`` band by band: ``{id}_kelp.tif`` (uint8 1/0, 255 nodata),
``{id}_proba.tif`` (float32, NaN nodata), ``{id}_spread.tif`` (ensembles),
``{id}_coverage.tif`` (0 land, 1 clear water, 2 water not observed, 255 nodata), all COGs with
the input's CRS and transform; ``{id}_kelp.gpkg`` (+ ``.geojson``), ``{id}_quicklook.png``, and
``scene.json`` last: its presence with the same fingerprint marks the scene done. ``areas.csv``
is rebuilt from every ``scene.json`` at the end.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kelpseg.geo.coverage import coverage_codes, water_ha
from kelpseg.io.errors import BatchReport, TileError, first_line
from kelpseg.io.raster import atomic_write_text, georef_of, open_raster
from kelpseg.io.tiles import MASK_NODATA

AREAS_COLUMNS = [
    "scene_id",
    "sensor",
    "date",
    "kelp_ha",
    "water_clear_ha",
    "water_ha",
    "observed_fraction",
    "pixel_area_assumed",
]


class MapError(TileError):
    """An input that cannot be mapped, the file and the problem named in one line."""


@dataclass
class MapSettings:
    """How every input of one ``kelpseg map`` call is predicted and written."""

    threshold: float = 0.5
    vote: str = "soft"
    window: int = 350
    overlap: int | None = None
    batch_size: int = 8
    probabilities: bool = True
    geojson: bool = False
    min_area_ha: float = 0.0
    slices: int = 1
    compress: str = "DEFLATE"
    quicklook_px: int = 1000
    engine: dict[str, Any] = field(default_factory=dict)
    """Ensemble settings that change the output (weights, precision, TTA), for the fingerprint."""

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "quicklook_px"}


@dataclass
class MapResult:
    """Scene folders written or kept, and the batch report."""

    scenes: dict[str, Path] = field(default_factory=dict)
    reused: int = 0
    report: BatchReport = field(default_factory=lambda: BatchReport("map"))


def scene_of(path: Path) -> tuple[str, str | None, str | None]:
    """``(scene_id, sensor, date)`` of a raster: its tags, else the file stem."""
    with open_raster(path) as src:
        tags = src.tags()
    return tags.get("scene_id") or path.stem, tags.get("sensor"), tags.get("date")


def _input_stamp(path: Path) -> list[Any]:
    """What identifies an input's content cheaply: names, sizes, modification times."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def fingerprint(model_hash: str, settings: MapSettings, source: Path, dem: Path | None) -> str:
    """Models, settings and input (and DEM) stamps hashed: a rerun keeps only matching scenes."""
    stamp = {
        "models": model_hash,
        "settings": settings.as_dict(),
        "input": _input_stamp(source),
        "dem": _input_stamp(dem) if dem else None,
    }
    return hashlib.sha1(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]


def _done(folder: Path, fp: str) -> bool:
    try:
        return json.loads((folder / "scene.json").read_text()).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def _clean_stale(folder: Path) -> None:
    """Remove temporary files a killed run left."""
    for stale in [*folder.glob(".*.tmp"), *folder.glob(".*.tmp.*")]:  # .tmp.gpkg: polygons
        stale.unlink(missing_ok=True)


GDAL_CACHE_MB = 256
"""GDAL's block cache while mapping (its default, 5 % of RAM, grows with the scene's outputs)."""


def map_raster(
    engine,
    raster: Path,
    folder: Path,
    scene_id: str,
    settings: MapSettings,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict one 7-band raster into ``folder``; the scene's areas and outputs (no scene.json).

    GDAL's block cache is capped at :data:`GDAL_CACHE_MB` so memory does not grow with the
    scene.

    Raises:
        MapError: the raster is not a 7-band int16 raster.
    """
    import rasterio

    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        return _map_raster(engine, raster, folder, scene_id, settings, progress=progress)


def _map_raster(
    engine,
    raster: Path,
    folder: Path,
    scene_id: str,
    settings: MapSettings,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    from kelpseg.eda.quicklook import QuickLook
    from kelpseg.geo.area import row_areas_ha, value_areas_ha
    from kelpseg.geo.vector import kelp_polygons, write_polygons
    from kelpseg.infer.sliced import RasterSource, predict_sliced
    from kelpseg.io.cog import CogWriter

    with open_raster(raster) as src:
        try:
            source = RasterSource(src)
        except ValueError as err:
            raise MapError(raster, str(err)) from err
        georef = georef_of(src)
        H, W = src.height, src.width
        spread = engine.spread
        tags = {"threshold": str(settings.threshold), "source": str(raster)}
        common = {"height": H, "width": W, "georef": georef, "compress": settings.compress}
        names = {
            "kelp": folder / f"{scene_id}_kelp.tif",
            "proba": folder / f"{scene_id}_proba.tif",
            "spread": folder / f"{scene_id}_spread.tif",
            "coverage": folder / f"{scene_id}_coverage.tif",
        }
        writers = {
            "kelp": CogWriter(
                names["kelp"],
                dtype="uint8",
                nodata=MASK_NODATA,
                band_names=["kelp"],
                tags=tags,
                **common,
            ),
            "coverage": CogWriter(
                names["coverage"],
                dtype="uint8",
                nodata=MASK_NODATA,
                band_names=["coverage (0 land, 1 clear water, 2 water not observed)"],
                **common,
            ),
        }
        if settings.probabilities:
            writers["proba"] = CogWriter(
                names["proba"],
                dtype="float32",
                nodata=float("nan"),
                resampling="AVERAGE",
                band_names=["kelp_probability"],
                tags=tags,
                **common,
            )
        if spread:
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
        kelp_cut = engine.cut
        totals: dict[str, float] = {"kelp": 0.0, "water": 0.0, "clear": 0.0}
        try:
            for band in predict_sliced(
                engine,
                source,
                window=settings.window,
                overlap=settings.overlap,
                batch_size=settings.batch_size,
                progress=progress,
            ):
                missing = band.missing
                kelp = (band.mean >= kelp_cut).astype(np.uint8)
                kelp[missing] = MASK_NODATA
                cov = coverage_codes(band.raw)
                writers["kelp"].write_rows(band.row, kelp)
                writers["coverage"].write_rows(band.row, cov)
                if "proba" in writers:
                    writers["proba"].write_rows(band.row, np.where(missing, np.nan, band.mean))
                if "spread" in writers and band.std is not None:
                    writers["spread"].write_rows(band.row, np.where(missing, np.nan, band.std))
                look.add(band.row, band.raw, kelp)
                rows, _ = row_areas_ha(georef.crs, georef.transform, len(kelp), band.row)
                totals["kelp"] += float((kelp == 1).sum(axis=1) @ rows)
                water, clear = water_ha(value_areas_ha(cov, rows))
                totals["water"] += water
                totals["clear"] += clear
            for w in writers.values():
                w.finish()
        except BaseException:
            for w in writers.values():
                w.abort()
            raise
    look.save(folder / f"{scene_id}_quicklook.png")
    _, assumed = row_areas_ha(georef.crs, georef.transform, 1)
    with open_raster(names["kelp"]) as src:
        mask = src.read(1)  # polygons need the whole mask: 1 byte per pixel
    polys = kelp_polygons(
        mask, georef.transform, georef.crs, min_area_ha=settings.min_area_ha, nodata=MASK_NODATA
    )
    del mask
    write_polygons(polys, folder / f"{scene_id}_kelp.gpkg", geojson=settings.geojson)
    water = totals["water"]
    return {
        "crs": georef.crs.to_wkt() if georef.crs is not None else None,
        "pixel_area_assumed": bool(assumed),
        "kelp_ha": totals["kelp"],
        "water_ha": water,
        "water_clear_ha": totals["clear"],
        "observed_fraction": totals["clear"] / water if water > 0 else None,
        "polygons": len(polys),
    }


def rebuild_areas(maps: Path) -> Path:
    """``MAPS/areas.csv`` from every ``MAPS/*/scene.json`` (atomic), sorted by date and id."""
    rows = []
    for path in sorted(maps.glob("*/scene.json")):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    table = pd.DataFrame(rows, columns=AREAS_COLUMNS)
    table = table.sort_values(["date", "scene_id"], na_position="last", kind="stable")
    return atomic_write_text(maps / "areas.csv", table.to_csv(index=False))


def _model_hash(models: list) -> str:
    h = hashlib.sha1()
    for m in models:
        for t in m.state_dict().values():
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def build_engine(
    models: list,
    weights: Any,
    *,
    threshold: float | None = None,
    vote: str = "soft",
    tta: str = "none",
    precision: str | None = None,
    slices: int = 1,
    window: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    probabilities: bool = True,
    geojson: bool = False,
    min_area_ha: float = 0.0,
):
    """The ensemble engine and map settings for loaded ``models``; unset values come from the
    first member's config (threshold, batch size, tile size as the window)."""
    from kelpseg.infer.members import Members
    from kelpseg.infer.predict import PRECISIONS, default_precision

    first = models[0].cfg
    window = window or first.data.tile_size or 350
    if overlap is not None and not 0 <= overlap < window:
        raise ValueError(f"--overlap {overlap} must be smaller than the window ({window} px)")
    threshold = first.predict.threshold if threshold is None else float(threshold)
    prec = precision or default_precision(next(models[0].parameters()).device)
    engine = Members(
        models,
        weights,
        precision=PRECISIONS[prec],
        tta=tta,
        vote=vote,
        threshold=threshold,
        spread=True,
        slices=slices,
    )
    settings = MapSettings(
        threshold=threshold,
        vote=vote,
        window=window,
        overlap=overlap,
        batch_size=batch_size or first.predict.batch_for(next(models[0].parameters()).device.type),
        probabilities=probabilities,
        geojson=geojson,
        min_area_ha=min_area_ha,
        slices=slices,
        engine={"weights": [float(v) for v in weights], "precision": prec, "tta": tta},
    )
    return engine, settings


def map_run(
    run: Path,
    inputs: list[Path],
    maps: Path,
    *,
    dem: Path | None = None,
    overwrite: bool = False,
    **options: Any,
) -> MapResult:
    """Map ``inputs`` with every trained fold of ``run`` (equal weights, the run's tuned
    threshold); ``options`` go to :func:`build_engine`."""
    from kelpseg.infer.ensemble import member_weights, run_checkpoints
    from kelpseg.infer.predict import load_model
    from kelpseg.infer.threshold import read_threshold

    ckpts, _ = run_checkpoints(run)
    models = [load_model(c) for c in ckpts]
    options.setdefault("threshold", read_threshold(run, len(ckpts), options.get("vote", "soft")))
    engine, settings = build_engine(models, member_weights(len(ckpts)), **options)
    return map_inputs(engine, inputs, maps, settings, models=ckpts, dem=dem, overwrite=overwrite)


def map_inputs(
    engine,
    inputs: list[Path],
    maps: Path,
    settings: MapSettings,
    *,
    models: list[Path] | None = None,
    dem: Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> MapResult:
    """Map every input into ``maps`` one after another; a bad one is reported and skipped.

    Args:
        engine: The ensemble engine (:class:`kelpseg.infer.members.Members`).
        inputs: Scene folders or 7-band rasters.
        maps: Output folder.
        settings: Prediction and output settings.
        models: Checkpoint paths, recorded in scene.json.
        dem: DEM for stacking scene folders.
        overwrite: Redo scenes already done with the same fingerprint.
    """
    result = MapResult()
    maps.mkdir(parents=True, exist_ok=True)
    model_hash = _model_hash(engine.models)
    taken: dict[str, Path] = {}  # scene id -> the input mapped under it in this call
    for source in inputs:
        try:
            folder = _map_one(
                engine, source, maps, settings, model_hash, models or [], dem, overwrite, progress,
                taken,
            )  # fmt: skip
        except TileError as err:
            result.report.add(err)
            continue
        except (OSError, ValueError) as err:  # e.g. a scene folder that does not stack
            msg = first_line(err)
            result.report.add(MapError(source, msg.removeprefix(f"{source}: ")))
            continue
        if folder is None:
            continue
        kept, path = folder
        result.scenes[path.name] = path
        result.reused += kept
        result.report.ok += 1
    rebuild_areas(maps)
    return result


def _map_one(
    engine,
    source: Path,
    maps: Path,
    settings: MapSettings,
    model_hash: str,
    models: list[Path],
    dem: Path | None,
    overwrite: bool,
    progress: bool,
    taken: dict[str, Path],
) -> tuple[bool, Path] | None:
    """Map one input; ``(kept, folder)``. An input whose scene id another input of this call
    already has is refused (it would overwrite that scene's folder)."""
    if not source.exists():
        raise MapError(source, "not found")
    fp = fingerprint(model_hash, settings, source, dem if source.is_dir() else None)
    stacked: Path | None = None
    if source.is_dir():
        from kelpseg.io.landsat import is_scene_dir, read_scene_meta, stack_scene

        if not is_scene_dir(source):
            raise MapError(source, "a folder without a Landsat scene (*_SR_B*.TIF, QA_PIXEL)")
        meta = read_scene_meta(source)
        scene_id, sensor, date = meta.scene_id, meta.sensor, meta.date.isoformat()
    else:
        try:
            scene_id, sensor, date = scene_of(source)
        except Exception as err:  # rasterio raises several kinds for non-rasters
            raise MapError(source, f"not a readable raster: {first_line(err)}") from err
    if scene_id in taken:
        raise MapError(
            source, f"same scene id {scene_id!r} as {taken[scene_id]}: rename one of them"
        )
    taken[scene_id] = source
    folder = maps / scene_id
    if not overwrite and _done(folder, fp):
        return True, folder
    folder.mkdir(parents=True, exist_ok=True)
    _clean_stale(folder)
    (folder / "scene.json").unlink(missing_ok=True)
    raster = source
    try:
        if source.is_dir():
            stacked = folder / f".{scene_id}_stack.tif.tmp"
            stack_scene(source, stacked, dem)
            raster = stacked
        info = map_raster(engine, raster, folder, scene_id, settings, progress=progress)
    finally:
        if stacked is not None:
            stacked.unlink(missing_ok=True)
        if not any(folder.iterdir()):  # failed before writing anything
            folder.rmdir()
    scene = {
        "scene_id": scene_id,
        "sensor": sensor,
        "date": date,
        "source": str(source),
        **{k: v for k, v in info.items() if k != "polygons"},
        "threshold": settings.threshold,
        "models": [str(m) for m in models],
        "fingerprint": fp,
    }
    atomic_write_text(folder / "scene.json", json.dumps(scene, indent=2))  # last: marks it done
    kelp = f"{scene['kelp_ha']:.1f} ha kelp"
    print(f"[map] {scene_id}: {kelp}, {info['polygons']} beds -> {folder}", file=sys.stderr)
    return False, folder
