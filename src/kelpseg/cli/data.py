"""Data commands: synthetic data, quality stats, AOI groups, folds, EDA, indices, configs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kelpseg import __version__
from kelpseg.cli.common import ConfigOpt, SetOpt, StrictOpt, app, fail, load_cfg, stage_config
from kelpseg.config import DEFAULT_CONFIG, builtin_names, dump_config
from kelpseg.io.errors import NothingValidError


@app.command()
def synth(
    out: Annotated[
        Path | None,
        typer.Argument(
            help="Folder for the dataset (competition layout), or use -o.", show_default=False
        ),
    ] = None,
    out_opt: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (same as OUT).")
    ] = None,
    aois: Annotated[
        int, typer.Option(min=1, help="Areas of interest (each seen on several dates).")
    ] = 24,
    seed: int = 0,
    size: Annotated[
        int | None,
        typer.Option(
            min=16, help="Tile side in px (default 350 = competition); scene side (1024)."
        ),
    ] = None,
    crs: Annotated[
        str | None,
        typer.Option(
            help="Write georeferenced tiles, e.g. EPSG:32611 (scenes: default EPSG:32611)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier synthetic set in OUT.")
    ] = False,
    landsat_scene: Annotated[
        bool,
        typer.Option(
            "--landsat-scene",
            help="Write Landsat Collection 2 Level-2 scene folders (SR_B*, QA_PIXEL, MTL) with an "
            "EPSG:4326 DEM and the kelp truth beside them, instead of tiles.",
        ),
    ] = False,
    acquisitions: Annotated[
        int, typer.Option(min=1, help="Scenes: dates of one area (a series when > 1).")
    ] = 1,
    sensor: Annotated[
        str | None,
        typer.Option(help="Scenes: LANDSAT_4/5/7/8/9 (default LANDSAT_8; a series: by year)."),
    ] = None,
    cloud_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Scenes: opaque cloud share (one scene).")
    ] = 0.1,
) -> None:
    """Generate a synthetic Kelp-Wanted dataset (test masks + truth beside OUT), or with
    --landsat-scene synthetic Landsat scene folders. (kelpseg.synth, kelpseg.synth.landsat)"""
    if out is not None and out_opt is not None and out != out_opt:
        fail(ValueError(f"two output folders given: {out} and -o {out_opt}"))
    out = out or out_opt
    if out is None:
        fail(ValueError("give the output folder (OUT or -o)"))
    if landsat_scene:
        _synth_scenes(
            out,
            seed,
            size or 1024,
            crs or "EPSG:32611",
            overwrite,
            acquisitions,
            sensor,
            cloud_fraction,
        )
        return
    from kelpseg.synth import generate

    try:
        res = generate(out, aois=aois, seed=seed, size=size or 350, crs=crs, overwrite=overwrite)
    except FileExistsError as err:
        fail(FileExistsError(f"{err}: choose another folder or pass --overwrite"))
    except ValueError as err:
        fail(err)
    typer.echo(f"{res.n_train} train + {res.n_test} test tiles in {res.root}")
    typer.echo(f"test masks: {res.test_masks}\ntruth: {res.truth_csv}")


def _synth_scenes(
    out: Path,
    seed: int,
    size: int,
    crs: str,
    overwrite: bool,
    acquisitions: int,
    sensor: str | None,
    cloud_fraction: float,
) -> None:
    """``kelpseg synth --landsat-scene``: one scene, or a series of one area."""
    from kelpseg.synth.landsat import write_landsat_scene, write_landsat_series

    try:
        if acquisitions == 1:
            scenes = [
                write_landsat_scene(
                    out,
                    size=size,
                    sensor=sensor or "LANDSAT_8",
                    seed=seed,
                    crs=crs,
                    cloud_fraction=cloud_fraction,
                    overwrite=overwrite,
                )
            ]
        else:
            scenes = write_landsat_series(
                out,
                acquisitions=acquisitions,
                size=size,
                seed=seed,
                sensor=sensor,
                crs=crs,
                overwrite=overwrite,
            )
    except FileExistsError as err:
        fail(FileExistsError(f"{err}: choose another folder or pass --overwrite"))
    except ValueError as err:
        fail(err)
    for sc in scenes:
        typer.echo(f"{sc.folder}  {sc.meta.sensor} {sc.meta.date}  true kelp {sc.kelp_ha:.2f} ha")
    typer.echo(f"DEM: {scenes[0].dem}\ntruth: {out}/*_truth.tif, *_truth.json")


@app.command()
def stats(
    data: Annotated[Path, typer.Argument(help="Dataset folder (tiles found by suffix).")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("kelpseg_out"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Per-tile quality flags and per-band stats -> tile_stats.csv, band_stats.json. (kelpseg.data.stats)"""
    from kelpseg.data.quality import flag_summary
    from kelpseg.pipeline import run_stats

    cfg = stage_config(config, set_, out, strict)
    try:
        _, table = run_stats(data, cfg, out)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        fail(err)
    typer.echo(flag_summary(out / "tile_stats.csv"))
    typer.echo(f"{len(table)} usable tiles -> {out / 'tile_stats.csv'}, {out / 'band_stats.json'}")


@app.command()
def groups(
    data: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("kelpseg_out"),
    threshold: Annotated[
        float | None, typer.Option(help="DEM correlation that joins tiles.")
    ] = None,
    max_group_size: Annotated[
        int | None, typer.Option(help="Cut the all-water group into chunks (areas never).")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """AOI groups of the training tiles from DEM embeddings -> groups.csv. (kelpseg.data.groups)"""
    from kelpseg.data.groups import capped_groups
    from kelpseg.pipeline import find_tiles, require_train, run_groups, run_stats

    cfg = stage_config(
        config, set_, out, groups__threshold=threshold, groups__max_group_size=max_group_size
    )
    try:
        refs, table = run_stats(data, cfg, out, find_tiles(data, need_train=True))
        require_train(table, data)
        g = run_groups(refs, table, cfg, out)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        fail(err)
    capped = ", the all-water group cut by max_group_size" if capped_groups(g) else ""
    typer.echo(f"{len(g)} tiles in {g['aoi'].nunique()} AOI groups{capped} -> {out / 'groups.csv'}")


@app.command()
def split(
    data: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("kelpseg_out"),
    folds: Annotated[int | None, typer.Option(help="K of the grouped K-fold.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Stratified grouped K-fold over AOIs -> splits.csv. (kelpseg.data.splits)"""
    from kelpseg.pipeline import prepare

    cfg = stage_config(config, set_, out, split__folds=folds)
    try:
        prep = prepare(data, cfg, out)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        fail(err)
    counts = prep.train.groupby("fold").agg(tiles=("tile_id", "size"), aois=("aoi", "nunique"))
    typer.echo(counts.to_string())
    typer.echo(f"-> {out / 'splits.csv'}")


@app.command()
def eda(
    data: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("eda"),
    work: Annotated[
        Path | None, typer.Option(help="Folder of the stats/groups/splits tables (default OUT).")
    ] = None,
    samples: Annotated[int, typer.Option(help="Rows of the sample-tile grid.")] = 16,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """EDA report: one HTML page with stats, composites, AOI groups, folds, flagged tiles. (kelpseg.eda)"""
    from kelpseg.eda import build_report

    cfg = stage_config(config, set_, work or out)
    try:
        page = build_report(data, out, cfg, work=work, samples=samples)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        fail(err)
    typer.echo(f"report -> {page}")


@app.command()
def indices(
    tile: Annotated[Path, typer.Argument(help="A 7-band tile or scene (int16 GeoTIFF).")],
    names: Annotated[
        str, typer.Option(help="Comma-separated: table names (NDVI, ATSAVI...) or spyndex ones.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output GeoTIFF (float32).")],
    units: Annotated[str, typer.Option(help="dn (as the 2nd-place code) or reflectance.")] = "dn",
    mask_land: Annotated[bool, typer.Option(help="NaN where DEM > 0 (land).")] = False,
    mask_cloud: Annotated[bool, typer.Option(help="NaN where QA != 0.")] = False,
    fill: Annotated[
        bool, typer.Option(help="NaN/-inf -> band minimum, +inf -> maximum (as the network).")
    ] = False,
) -> None:
    """Spectral indices of TILE as named float32 bands keeping its georeference. (kelpseg.features.export)"""
    from kelpseg.features.export import write_indices
    from kelpseg.features.indices import UnknownIndexError
    from kelpseg.io import TileError

    if units not in ("dn", "reflectance"):
        fail(ValueError(f"--units must be dn or reflectance, not {units!r}"))
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    try:
        path = write_indices(
            tile, chosen, out, units=units, mask_land=mask_land, fill=fill, mask_cloud=mask_cloud
        )
    except (UnknownIndexError, TileError) as err:
        fail(err)
    typer.echo(f"{len(chosen)} indices ({units}) -> {path}")


@app.command("config")
def config_cmd(
    name: Annotated[
        str | None, typer.Argument(help="Built-in name or YAML path (default: `default`).")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Print a config as YAML with every key spelled out: `kelpseg config demo > my.yaml`. (kelpseg.config)"""
    cfg = load_cfg(name, set_, announce=False)
    typer.echo(
        f"# kelpseg {__version__} config: {name or DEFAULT_CONFIG}"
        + "".join(f" --set {o}" for o in set_ or [])
        + f"\n# built-in configs: {', '.join(builtin_names())}; read back with -c FILE"
    )
    typer.echo(dump_config(cfg))
