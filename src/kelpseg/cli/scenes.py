"""Scene commands: stack a Landsat scene, map whole scenes, kelp-area time series."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kelpseg.cli.common import (
    AllFoldsOpt,
    ModelsOpt,
    PrecisionOpt,
    PredictConfigOpt,
    RunOpt,
    SetOpt,
    SlicesOpt,
    StrictOpt,
    ThresholdOpt,
    TtaOpt,
    VoteOpt,
    WeightsOpt,
    app,
    fail,
    reports,
    usage,
)
from kelpseg.infer.errors import PredictionError
from kelpseg.io.errors import NothingValidError, TileError

DemOpt = Annotated[
    Path | None,
    typer.Option(
        help="The DEM (any CRS; 0 or nodata at sea): one file for every scene, a folder of DEM "
        "tiles (those overlapping each scene are mosaicked), or a CSV with columns scene,dem."
    ),
]
NoDemOpt = Annotated[
    bool,
    typer.Option(
        "--no-dem",
        help="Map without a DEM: every valid pixel counts as water, land included (recorded in "
        "scene.json); without it a scene lacking a DEM is refused.",
    ),
]


@app.command()
@reports(TileError, ValueError, OSError)
def stack(
    scene: Annotated[
        Path,
        typer.Argument(
            help="A Landsat Collection 2 Level-2 scene folder, an HLS granule, a Sentinel-2 L2A "
            ".SAFE folder or a local STAC item."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The 7-band GeoTIFF to write.")],
    dem: DemOpt = None,
    qa_bits: Annotated[
        str | None,
        typer.Option(
            help="Flags that make QA = 1 (each sensor's equivalent): fill, dilated_cloud, "
            "cirrus, cloud, cloud_shadow, snow, cloud_conf_medium, cloud_conf_high, "
            "shadow_conf_high, snow_conf_high, cirrus_conf_high; default: each sensor's "
            "(Landsat: fill, dilated_cloud, cirrus, cloud, cloud_shadow)."
        ),
    ] = None,
    block: Annotated[
        int, typer.Option(min=16, help="Window side in px (memory per window).")
    ] = 1024,
) -> None:
    """A scene or product (+ DEM) -> the model's 7-band int16 input (SWIR1, NIR, Red, Green,
    Blue, QA, DEM; -32768 fill), written window by window; the DEM's files and footprint are
    tagged. (kelpseg.io.sources, kelpseg.io.landsat, kelpseg.geo.dem)"""
    from kelpseg.geo.dem import Dems
    from kelpseg.io.sources import find_sources, source_grid, stack_source

    if out.exists() and out.is_dir():
        fail(IsADirectoryError(f"-o {out}: a folder, give the .tif file to write"))
    found, broken = find_sources([scene])
    if broken:
        raise broken[0]
    wanted = [s for s in found if s.kind != "raster"]
    if not wanted:
        rasters = " (only 7-band rasters, which need no stacking)" * bool(found)
        fail(FileNotFoundError(f"{scene}: no Landsat scene folder, HLS granule, Sentinel-2 "
                               f".SAFE or STAC item{rasters}"))  # fmt: skip
    if len(wanted) > 1:
        what = ", ".join(s.scene_id for s in wanted[:5])
        usage(f"{scene}: stack takes one scene or product, found {len(wanted)} ({what})")
    src = wanted[0]
    tags: dict[str, str] = {}
    path = None
    if dem is not None:
        g = source_grid(src)
        choice = Dems(dem).choose(src.scene_id, src.path, g.crs, g.transform, (g.height, g.width))
        out.parent.mkdir(parents=True, exist_ok=True)
        path = choice.source(out.parent)
        tags["dem_files"] = ",".join(str(f) for f in choice.files)
        if choice.footprint is not None:
            tags["dem_footprint"] = choice.footprint.wkt
    else:
        typer.secho(
            "warning: no --dem: the DEM band is missing, so land cannot be told from water "
            "(`kelpseg map` refuses such a raster unless --no-dem)",
            err=True,
        )
    bits = qa_bits.split(",") if qa_bits else None
    try:
        meta = stack_source(src, out, path, qa_bits=bits, block=block, progress=True, tags=tags)
    finally:
        if path is not None and path.name.endswith(".dem.vrt"):
            path.unlink(missing_ok=True)
    typer.echo(f"{meta.scene_id} ({meta.sensor}, {meta.date}) -> {out}")


@app.command("map")
@reports(PredictionError, TileError, NothingValidError, OSError)
def map_cmd(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Landsat Collection 2 Level-2 scene folders, HLS granules, Sentinel-2 L2A .SAFE "
            "folders, local STAC items or catalogs (each stacked on the fly), 7-band int16 "
            "rasters of any size, or folders of any of these (searched recursively).",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="MAPS folder.")] = Path("maps"),
    model: ModelsOpt = None,
    run: RunOpt = None,
    all_folds: AllFoldsOpt = False,
    dem: DemOpt = None,
    no_dem: NoDemOpt = False,
    weights: WeightsOpt = None,
    vote: VoteOpt = None,
    threshold: ThresholdOpt = None,
    window: Annotated[
        int | None,
        typer.Option(min=16, help="Window side (px); default: the model's data.tile_size."),
    ] = None,
    overlap: Annotated[
        int | None, typer.Option(min=0, help="Window overlap (px); default: a quarter window.")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Windows per batch; default: the config's predict.batch_size."),
    ] = None,
    precision: PrecisionOpt = None,
    tta: TtaOpt = None,
    slices: SlicesOpt = 1,
    probabilities: Annotated[bool, typer.Option(help="Write {id}_proba.tif (float32 COG).")] = True,
    geojson: Annotated[bool, typer.Option(help="Also write the polygons as GeoJSON.")] = False,
    min_area_ha: Annotated[
        float, typer.Option(min=0.0, help="Minimum mapping unit: drop kelp beds under X ha.")
    ] = 0.0,
    overwrite: Annotated[
        bool, typer.Option(help="Redo every scene (default: keep scenes done by a rerun).")
    ] = False,
    max_offshore_m: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Skip windows whose valid pixels all lie farther than this (m) from land or "
            "the scene's edge (no kelp there); 0: never skip offshore. Windows all on land are "
            "always skipped. (kelpseg.geo.reach)",
        ),
    ] = 5000.0,  # kelpseg.geo.reach.DEFAULT_MAX_OFFSHORE_M
    backend: Annotated[
        str,
        typer.Option(
            help="torch, or onnx: each checkpoint exported once (cached, keyed by its bytes "
            "and the window) and run on onnxruntime, fp32. (kelpseg.infer.onnx_export)"
        ),
    ] = "torch",
    config: PredictConfigOpt = None,
    set_: SetOpt = None,
    strict: StrictOpt = False,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Map on a Ray cluster, one task per scene: local (start one here, or join the "
            "one running here), auto, HOST:6379 or ray://HOST:10001.",
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option(help="serial (here, one scene after another) or ray (= --ray local).")
    ] = "serial",
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --ray: workers, each loading the models once; default one per CPU of "
            "the cluster, or one per GPU when it has GPUs.",
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="With --ray: resubmissions of a scene whose worker died (killed, out of "
            "memory); default 2. A bad input is never retried.",
        ),
    ] = None,
) -> None:
    """Scenes or rasters of any size -> MAPS/{scene_id}/: kelp, probability, spread, coverage
    COGs, kelp-bed polygons, quick-look PNG, scene.json; MAPS/areas.csv. Kelp is counted on
    clear water only; scene folders need a DEM (--dem) unless --no-dem. Sliced, Hann-blended
    inference in bounded memory; scenes already done are kept. (kelpseg.infer.mapping)"""
    from kelpseg.geo.dem import Dems
    from kelpseg.infer.assemble import assemble
    from kelpseg.infer.mapping import default_settings, map_inputs

    if dem is not None and no_dem:
        usage("--dem and --no-dem: choose one")
    if backend not in ("torch", "onnx"):
        usage(f"--backend must be torch or onnx, got {backend!r}")
    if backend == "onnx" and precision not in (None, "fp32"):
        usage(f"--backend onnx runs fp32 only, not --precision {precision}")
    if out.exists() and not out.is_dir():
        fail(NotADirectoryError(f"--out {out}: an existing file, not a folder"))
    if executor not in ("serial", "ray"):
        usage(f"--executor {executor}: serial or ray")
    on_ray = ray is not None or executor == "ray"
    if not on_ray and (workers is not None or retries is not None):
        usage("--workers and --retries go with --ray ADDRESS (or --executor ray)")
    if ray not in (None, "", "local", "auto") and Path(ray).exists():
        usage(
            f"--ray {ray}: a path, not a cluster address (local, auto, HOST:6379, ray://HOST:10001)"
        )
    dems = Dems(dem, no_dem=no_dem)
    assembly = {
        "members": list(model or []),
        "run": run,
        "config": config,
        "overrides": set_,
        "flags": {"weights": weights, "vote": vote, "precision": precision, "tta": tta},
        "threshold": threshold,
        "batch_size": batch_size,
        "all_folds": all_folds,
    }
    # with --ray the workers load the models; the driver's copy (on the CPU) checks the flags
    ens = assemble(**assembly, **({"device": "cpu"} if on_ray else {}))
    for note in ens.notes:
        typer.secho(f"note: {note}", err=True)
    try:
        settings = default_settings(
            ens,
            window=window,
            overlap=overlap,
            probabilities=probabilities,
            geojson=geojson,
            min_area_ha=min_area_ha,
            slices=slices,
            max_offshore_m=max_offshore_m,
            backend=backend,
        )
    except ValueError as err:
        usage(str(err))
    cluster = ""
    if on_ray:
        from kelpseg.infer.distributed import map_on_ray

        res = map_on_ray(
            assembly, inputs, out, settings, dem=dem, no_dem=no_dem, overwrite=overwrite,
            address=ray, workers=workers, retries=2 if retries is None else retries,
        )  # fmt: skip
        redone = f", {res.retried} resubmitted after a worker died" if res.retried else ""
        cluster = f", on {res.pool} Ray workers{redone}"
    else:
        res = map_inputs(ens, inputs, out, settings, dems=dems, overwrite=overwrite)
    res.report.finish(strict=strict)
    kept = f", {res.reused} kept from an earlier run" if res.reused else ""
    busy = f", {len(res.busy)} being mapped by another process" if res.busy else ""
    areas = out / "areas.csv"
    typer.echo(f"{len(res.scenes)} scenes ({ens.describe()}{kept}{busy}{cluster}) -> {areas}")


@app.command()
def timeseries(
    maps: Annotated[
        Path,
        typer.Argument(help="A `kelpseg map` output folder, or (with --groups) tile predictions."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The CSV to write.")] = Path(
        "timeseries.csv"
    ),
    aoi: Annotated[
        Path | None,
        typer.Option(
            help="Areas of interest (GeoPackage, GeoJSON, shapefile...): one series per feature, "
            "named by its name/id column; default: whole scenes."
        ),
    ] = None,
    aoi_crs: Annotated[
        str | None,
        typer.Option(help="The AOI's CRS (e.g. EPSG:32611) when its file has none or a wrong one."),
    ] = None,
    aoi_union: Annotated[
        bool, typer.Option("--aoi-union", help="One AOI: the union of every feature.")
    ] = False,
    quarterly: Annotated[
        Path | None,
        typer.Option(help="Also write Kelpwatch-style quarters (max, well-observed mean) here."),
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw the series to this PNG.")] = None,
    min_observed: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Observed fraction of a well-observed date.")
    ] = 0.8,
    groups: Annotated[
        Path | None,
        typer.Option(help="Tiles mode: groups.csv of `kelpseg groups`; MAPS holds {id}_kelp.tif."),
    ] = None,
    tiles: Annotated[
        Path | None,
        typer.Option(help="Tiles mode: folder of the {id}_satellite.tif (water, clouds)."),
    ] = None,
    strict: StrictOpt = False,
) -> None:
    """Kelp area per acquisition and footprint (inside each --aoi feature) with the observed
    fraction of the water, so a cloudy date is not read as kelp loss -> CSV (+ quarters, plot).
    (kelpseg.geo.timeseries)"""
    from kelpseg.geo.timeseries import (
        footprint_warning,
        plot_series,
        read_aoi,
        scene_series,
        tile_series,
        write_table,
    )
    from kelpseg.geo.timeseries import quarterly as quarters_of

    if groups is None and tiles is not None:
        fail(ValueError("--tiles goes with --groups (competition tiles mode)"))
    if groups is not None and (aoi or aoi_crs or aoi_union or quarterly):
        fail(ValueError("--aoi* and --quarterly need a `kelpseg map` folder (tiles: --groups)"))
    if aoi is None and (aoi_crs or aoi_union):
        fail(ValueError("--aoi-crs and --aoi-union go with --aoi"))
    try:
        if groups is not None:
            table, report, ungrouped = tile_series(maps, groups, tiles, min_observed=min_observed)
        else:
            area = read_aoi(aoi, crs=aoi_crs, union=aoi_union) if aoi is not None else None
            table, report = scene_series(maps, area, min_observed=min_observed)
        report.finish(strict=strict)
        if table.empty:
            why = f"has an AOI group in {groups}" if groups else f"overlaps the AOI {aoi}"
            raise ValueError(f"{maps}: no acquisition {why}")
        quarters = quarters_of(table) if quarterly is not None else None
        # everything is known: only now write (each file atomically), nothing on failure
        if plot is not None:
            plot_series(table, plot, min_observed=min_observed)
        if quarters is not None and quarterly is not None:
            write_table(quarters, quarterly)
        write_table(table, out)
    except (NothingValidError, FileNotFoundError, ValueError, OSError) as err:
        fail(err)
    if table["pixel_area_assumed"].any():
        typer.echo(
            "note: rasters without a CRS: 30 m x 30 m pixels assumed (column pixel_area_assumed)"
        )
    warning = footprint_warning(table)
    if warning:
        typer.secho(f"warning: {warning}", fg="yellow", err=True)
    if groups is not None:
        typer.echo(
            f"tiles carry no date: one series per AOI group ({table['aoi'].nunique()}), "
            "ordered by tile id (column order)"
        )
        if ungrouped:
            typer.echo(
                f"{len(ungrouped)} prediction(s) not in {groups} left out, e.g. {ungrouped[0]}"
            )
        if tiles is None:
            typer.echo("no --tiles: water and observed fraction left empty")
    poor = table["well_observed"] == False  # noqa: E712 (NA in tiles mode without --tiles)
    kelp = table.loc[~poor, "kelp_ha"].dropna()
    span = f"kelp {kelp.min():.2f} to {kelp.max():.2f} ha" if len(kelp) else "no well-observed row"
    blind = int(table["kelp_ha"].isna().sum())
    unseen = f", {blind} without clear water (kelp_ha empty)" if blind else ""
    written = [str(p) for p in (quarterly, plot) if p is not None]
    typer.echo(
        f"{len(table)} rows, {span} where well observed, {int(poor.sum())} poorly observed "
        f"(observed fraction < {min_observed}){unseen} -> {out}"
        + "".join(f", {w}" for w in written)
    )
