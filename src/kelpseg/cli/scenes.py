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
    scene: Annotated[Path, typer.Argument(help="A Landsat Collection 2 Level-2 scene folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The 7-band GeoTIFF to write.")],
    dem: DemOpt = None,
    qa_bits: Annotated[
        str,
        typer.Option(
            help="QA_PIXEL flags that make QA = 1: fill, dilated_cloud, cirrus, cloud, "
            "cloud_shadow, snow, cloud_conf_medium, cloud_conf_high, shadow_conf_high, "
            "snow_conf_high, cirrus_conf_high."
        ),
    ] = ",".join(("fill", "dilated_cloud", "cirrus", "cloud", "cloud_shadow")),
    block: Annotated[
        int, typer.Option(min=16, help="Window side in px (memory per window).")
    ] = 1024,
) -> None:
    """Scene folder (+ DEM) -> the model's 7-band int16 input (SWIR1, NIR, Red, Green, Blue, QA,
    DEM; -32768 fill), written window by window; the DEM's files and footprint are tagged.
    (kelpseg.io.landsat, kelpseg.geo.dem)"""
    from kelpseg.geo.dem import Dems
    from kelpseg.io.landsat import read_scene_meta, scene_grid, stack_scene

    if out.exists() and out.is_dir():
        fail(IsADirectoryError(f"-o {out}: a folder, give the .tif file to write"))
    tags = {}
    path = None
    if dem is not None:
        meta = read_scene_meta(scene)
        crs, transform, shape = scene_grid(scene)
        out.parent.mkdir(parents=True, exist_ok=True)
        choice = Dems(dem).choose(meta.scene_id, scene, crs, transform, shape)
        path = choice.source(out.parent)
        tags["dem"] = ",".join(str(f) for f in choice.files)
        if choice.footprint is not None:
            tags["dem_footprint"] = choice.footprint.wkt
    else:
        typer.secho(
            "warning: no --dem: the DEM band is missing, so land cannot be told from water "
            "(`kelpseg map` refuses such a raster unless --no-dem)",
            err=True,
        )
    try:
        meta = stack_scene(
            scene, out, path, qa_bits=qa_bits.split(","), block=block, progress=True, tags=tags
        )
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
            help="Landsat Collection 2 Level-2 scene folders (stacked on the fly) or 7-band "
            "int16 rasters of any size.",
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
    config: PredictConfigOpt = None,
    set_: SetOpt = None,
    strict: StrictOpt = False,
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
    if out.exists() and not out.is_dir():
        fail(NotADirectoryError(f"--out {out}: an existing file, not a folder"))
    dems = Dems(dem, no_dem=no_dem)
    ens = assemble(
        list(model or []),
        run,
        config=config,
        overrides=set_,
        flags={"weights": weights, "vote": vote, "precision": precision, "tta": tta},
        threshold=threshold,
        batch_size=batch_size,
        all_folds=all_folds,
    )
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
        )
    except ValueError as err:
        usage(str(err))
    res = map_inputs(ens, inputs, out, settings, dems=dems, overwrite=overwrite)
    res.report.finish(strict=strict)
    kept = f", {res.reused} kept from an earlier run" if res.reused else ""
    busy = f", {len(res.busy)} being mapped by another process" if res.busy else ""
    areas = out / "areas.csv"
    typer.echo(f"{len(res.scenes)} scenes ({ens.describe()}{kept}{busy}) -> {areas}")


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
        typer.Option(help="Area of interest (GeoJSON, GeoPackage...); default: whole scenes."),
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
    """Kelp area per acquisition (inside --aoi) with the observed fraction of the water, so a
    cloudy date is not read as kelp loss -> CSV (+ plot). (kelpseg.geo.timeseries)"""
    from kelpseg.geo.timeseries import plot_series, read_aoi, scene_series, tile_series
    from kelpseg.io.raster import atomic_write_text

    if groups is None and tiles is not None:
        fail(ValueError("--tiles goes with --groups (competition tiles mode)"))
    if groups is not None and aoi is not None:
        fail(ValueError("--aoi needs a `kelpseg map` folder; tiles are grouped by --groups"))
    try:
        if groups is not None:
            table, report, ungrouped = tile_series(maps, groups, tiles, min_observed=min_observed)
        else:
            area = read_aoi(aoi) if aoi is not None else None
            table, report = scene_series(maps, area, min_observed=min_observed)
        report.finish(strict=strict)
        atomic_write_text(out, table.to_csv(index=False))
        if plot is not None and not table.empty:
            plot_series(table, plot, min_observed=min_observed)
    except (NothingValidError, FileNotFoundError, ValueError, OSError) as err:
        fail(err)
    if table.empty:
        why = f"has an AOI group in {groups}" if groups else f"overlaps the AOI {aoi}"
        fail(ValueError(f"{maps}: no acquisition {why}"))
    if table["pixel_area_assumed"].any():
        typer.echo(
            "note: rasters without a CRS: 30 m x 30 m pixels assumed (column pixel_area_assumed)"
        )
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
    kelp = table.loc[~poor, "kelp_ha"]
    span = f"kelp {kelp.min():.1f} to {kelp.max():.1f} ha" if len(kelp) else "no well-observed row"
    typer.echo(
        f"{len(table)} rows, {span} where well observed, {int(poor.sum())} poorly observed "
        f"(observed fraction < {min_observed}) -> {out}" + (f", {plot}" if plot else "")
    )
