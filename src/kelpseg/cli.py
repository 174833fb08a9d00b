"""The ``kelpseg`` command: one sub-command per pipeline stage.

Each command's help names the module that does its work.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from kelpseg import __version__
from kelpseg.config import DEFAULT_CONFIG, ConfigError, builtin_names, dump_config, load_config
from kelpseg.io.errors import NothingValidError, first_line

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find giant-kelp canopy in Landsat tiles and scenes. Stages run one by one or all "
    "together with `kelpseg run`; configs are YAML (`kelpseg config`), overridable with "
    "--set section.key=value.",
)

ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML file or built-in name (default, demo, tiny); `default` when not given.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override, e.g. train.max_epochs=3 (repeatable)."),
]
ModelsOpt = Annotated[
    list[Path] | None,
    typer.Option("--model", "-m", help="A member checkpoint; repeat for an ensemble."),
]
RunOpt = Annotated[
    Path | None,
    typer.Option(help="Every trained fold of a `kelpseg train`/`run` output (OUT/fold*)."),
]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit non-zero on any bad file.")]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume", help="Continue interrupted folds from OUT/fold*/last.ckpt; skip finished ones."
    ),
]

SlicesOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="SAHI-style: overlapping slices of 1/N of the window's side, up-sampled to the "
        "window before the model and blended back (1 = off).",
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kelpseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Find giant-kelp canopy in Landsat tiles and scenes."""


def _config(
    config: str | None, overrides: list[str] | None, strict: bool = False, announce: bool = True
):
    if config is None and announce:
        typer.secho(f"config: built-in '{DEFAULT_CONFIG}' (choose another with -c)", err=True)
    try:
        cfg = load_config(config, overrides)
    except ConfigError as err:
        typer.secho(f"config error: {err}", fg="red", err=True)
        raise typer.Exit(2) from err
    if strict:
        cfg.data.strict = True
    return cfg


def _stage_config(
    config: str | None,
    overrides: list[str] | None,
    out: Path,
    strict: bool = False,
    **flags: object,
):
    """The config of a stage command in work folder ``out``: ``flags`` (``groups.threshold``
    = value, None when not given) and the stage flags an earlier command remembered there."""
    from kelpseg.data.tables import remembered_flags

    cfg = _config(config, overrides, strict)
    given = {k.replace("__", "."): v for k, v in flags.items() if v is not None}
    try:
        for key, value in given.items():
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
    except ValueError as err:
        typer.secho(f"config error: {err}", fg="red", err=True)
        raise typer.Exit(2) from err
    explicit = [o.split("=", 1)[0].strip() for o in overrides or []]
    for note in remembered_flags(out, cfg, given, explicit):
        typer.echo(note, err=True)
    return cfg


def _fail(err: Exception) -> None:
    typer.secho(f"error: {err}", fg="red", err=True)
    raise typer.Exit(1) from err


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
        _fail(ValueError(f"two output folders given: {out} and -o {out_opt}"))
    out = out or out_opt
    if out is None:
        _fail(ValueError("give the output folder (OUT or -o)"))
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
        _fail(FileExistsError(f"{err}: choose another folder or pass --overwrite"))
    except ValueError as err:
        _fail(err)
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
        _fail(FileExistsError(f"{err}: choose another folder or pass --overwrite"))
    except ValueError as err:
        _fail(err)
    for sc in scenes:
        typer.echo(f"{sc.folder}  {sc.meta.sensor} {sc.meta.date}  true kelp {sc.kelp_ha:.2f} ha")
    typer.echo(f"DEM: {scenes[0].dem}\ntruth: {out}/*_truth.tif, *_truth.json")


@app.command()
def stack(
    scene: Annotated[Path, typer.Argument(help="A Landsat Collection 2 Level-2 scene folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The 7-band GeoTIFF to write.")],
    dem: Annotated[
        Path | None,
        typer.Option(help="DEM GeoTIFF in any CRS (0 or nodata at sea); none: DEM band missing."),
    ] = None,
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
    DEM; -32768 fill), written window by window. (kelpseg.io.landsat)"""
    from kelpseg.io.landsat import SceneError, stack_scene

    if out.exists() and out.is_dir():
        _fail(IsADirectoryError(f"-o {out}: a folder, give the .tif file to write"))
    if dem is not None and not dem.is_file():
        _fail(FileNotFoundError(f"--dem {dem}: not found"))
    try:
        meta = stack_scene(scene, out, dem, qa_bits=qa_bits.split(","), block=block, progress=True)
    except (SceneError, ValueError, OSError) as err:
        _fail(err)
    typer.echo(f"{meta.scene_id} ({meta.sensor}, {meta.date}) -> {out}")


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

    cfg = _stage_config(config, set_, out, strict)
    try:
        _, table = run_stats(data, cfg, out)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        _fail(err)
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

    cfg = _stage_config(
        config, set_, out, groups__threshold=threshold, groups__max_group_size=max_group_size
    )
    try:
        refs, table = run_stats(data, cfg, out, find_tiles(data, need_train=True))
        require_train(table, data)
        g = run_groups(refs, table, cfg, out)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        _fail(err)
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

    cfg = _stage_config(config, set_, out, split__folds=folds)
    try:
        prep = prepare(data, cfg, out)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        _fail(err)
    counts = prep.train.groupby("fold").agg(tiles=("tile_id", "size"), aois=("aoi", "nunique"))
    typer.echo(counts.to_string())
    typer.echo(f"-> {out / 'splits.csv'}")


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("kelpseg_out"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    strict: StrictOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """Train the configured fold(s); checkpoints in OUT/fold*/, runs in MLflow. (kelpseg.train.fit)"""
    from kelpseg.pipeline import prepare, run_training

    cfg = _stage_config(config, set_, out, strict)
    cfg.train.resume = cfg.train.resume or resume
    try:
        prep = prepare(data, cfg, out, pack=True)
        results = run_training(prep, cfg, out)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        _fail(err)
    for r in results:
        typer.echo(
            f"fold {r.fold}: val Dice {r.val_dice:.4f}  checkpoint {r.checkpoint}  run {r.run_id}"
        )


@app.command()
def tune(
    data: Annotated[Path, typer.Argument(help="Dataset folder.")],
    space: Annotated[
        str,
        typer.Option(
            help="Search-space YAML, or built-in `space` (the 2nd-place grid) / `space_tiny`."
        ),
    ],
    trials: Annotated[
        int, typer.Option(min=1, help="Trials the study should hold, all workers together.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("kelpseg_tune"),
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL shared by workers, e.g. postgresql://user@host/db; "
            "default sqlite:///OUT/study.db."
        ),
    ] = None,
    study: Annotated[
        str, typer.Option(help="Study name (workers with the same one share it).")
    ] = "kelpseg",
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Start no new trial after S seconds.")
    ] = None,
    heartbeat: Annotated[
        int, typer.Option(min=1, help="Seconds between a running trial's heartbeats.")
    ] = 60,
    grace: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Seconds without heartbeat before a trial is failed and "
            "re-queued (default 2 x heartbeat).",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="TPE seed (default: the space's study.seed); one per worker."),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Optuna search (TPE, pruning on val/dice) over config keys -> OUT/best.yaml, trials.csv,
    plots; trials are MLflow runs nested under the study's run. (kelpseg.tune.study)"""
    from kelpseg.tune.space import load_space
    from kelpseg.tune.study import tune as run_tune

    cfg = _config(config, set_)
    if grace is not None and grace <= heartbeat:
        _fail(ValueError(f"--grace ({grace}) must be longer than --heartbeat ({heartbeat})"))
    try:
        space_path = Path(space)
        search = load_space(space_path, cfg)
        if seed is not None:
            search.study.seed = seed
        if not space_path.is_file():
            from importlib import resources

            space_path = Path(str(resources.files("kelpseg") / "configs" / f"{space}.yaml"))
        result = run_tune(
            data,
            cfg,
            search,
            space_path,
            out,
            trials,
            storage=storage,
            study_name=study,
            timeout=timeout,
            heartbeat=heartbeat,
            grace=grace,
        )
    except ConfigError as err:
        typer.secho(f"config error: {err}", fg="red", err=True)
        raise typer.Exit(2) from err
    except ImportError as err:  # no database driver for the --storage URL
        _fail(ImportError(f"--storage {storage}: {err} ({err.__cause__})"))
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        _fail(err)
    counts: dict[str, int] = {}
    for t in result.study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    typer.echo(
        f"study {study!r}: {len(result.study.trials)} trials ("
        + ", ".join(f"{n} {k.lower()}" for k, n in counts.items() if n)
        + f"), {result.ran} by this worker"
    )
    if result.best_yaml is None:
        typer.echo("no complete trial yet: no best.yaml")
    else:
        best = result.study.best_trial
        typer.echo(f"best: trial {best.number}, validation Dice {best.value:.4f}")
        typer.echo(f"-> {result.best_yaml} (kelpseg train DATA -c {result.best_yaml})")
    typer.echo(f"-> {result.trials_csv}")
    for path in result.plots:
        typer.echo(f"-> {path}")
    for why in result.skipped_plots:
        typer.echo(f"plot skipped: {why}")


@app.command()
def predict(
    args: Annotated[
        list[Path],
        typer.Argument(
            help="[MODEL] INPUTS...: a .ckpt from `kelpseg train` (.onnx from `kelpseg export` "
            "with --backend onnx) unless --model/--run, then tiles or folders of tiles. Outputs "
            "are named by tile id, so two inputs with the same file name are refused; "
            "*_kelp.tif / *_proba.tif in folders are skipped (outputs of an earlier predict).",
            show_default=False,
            metavar="CKPT_AND_INPUTS",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (may be an input folder).")
    ] = Path("predictions"),
    model: ModelsOpt = None,
    run: RunOpt = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="Ensemble weights: equal, dice (val Dice, min-max; --run) or 0.2,0.8 "
            "[config: predict.weights]."
        ),
    ] = None,
    vote: Annotated[
        str | None,
        typer.Option(
            help="soft: mean probability; hard: mean of thresholded masks [predict.vote]."
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Decision threshold in [0, 1]; default: --set predict.threshold, else the "
            "run's tuned one (threshold.json; its `ensemble` entry for several members), else "
            "the config's (the checkpoint's unless -c)."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Tiles per batch [predict.batch_size].")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="fp32, bf16 or fp16 autocast; default bf16 on a GPU with it, else fp32 "
            "[predict.precision]."
        ),
    ] = None,
    tta: Annotated[
        str | None,
        typer.Option(help="Test-time augmentation: none, flips or d4 (8) [predict.tta]."),
    ] = None,
    probabilities: Annotated[
        bool | None, typer.Option(help="Also write {id}_proba.tif [predict.probabilities].")
    ] = None,
    proba_format: Annotated[
        str | None,
        typer.Option(
            help="float32 (NaN nodata) or uint8 (p*254, 255 nodata) [predict.proba_format]."
        ),
    ] = None,
    spread: Annotated[
        bool | None,
        typer.Option(help="Ensembles: also write {id}_spread.tif (members' std) [predict.spread]."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Redo every tile (default: keep complete outputs of a rerun).")
    ] = False,
    slices: SlicesOpt = 1,
    backend: Annotated[
        str,
        typer.Option(
            help="torch (checkpoints) or onnx (one .onnx of `kelpseg export`, on onnxruntime)."
        ),
    ] = "torch",
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML file or built-in name for the predict and postprocess settings; "
            "default: the (first) model's own config.",
        ),
    ] = None,
    set_: SetOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Checkpoint(s) + tiles -> {id}_kelp.tif masks (1 kelp, 0 not, 255 nodata where the input is
    missing) keeping each input's georeference. (kelpseg.infer.predict)"""
    from kelpseg.config import Config, with_overrides
    from kelpseg.infer.ensemble import EnsembleError, member_weights, run_checkpoints
    from kelpseg.infer.predict import (
        PRECISIONS,
        PROBA_FORMATS,
        CheckpointError,
        load_model,
        predict_tiles,
    )
    from kelpseg.infer.threshold import read_threshold
    from kelpseg.infer.tta import TTA_MODES
    from kelpseg.io import find_images
    from kelpseg.io.errors import InputError

    def usage(msg: str) -> NoReturn:
        typer.secho(f"error: {msg}", fg="red", err=True)
        raise typer.Exit(2)

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        usage(f"--threshold must be in [0, 1], got {threshold}")
    if batch_size is not None and batch_size < 1:
        usage(f"--batch-size must be at least 1, got {batch_size}")
    if vote is not None and vote not in ("soft", "hard"):
        usage(f"--vote must be soft or hard, got {vote!r}")
    if tta is not None and tta not in TTA_MODES:
        usage(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    if precision is not None and precision not in PRECISIONS:
        usage(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if proba_format is not None and proba_format not in PROBA_FORMATS:
        usage(f"--proba-format must be float32 or uint8, got {proba_format!r}")
    if backend not in ("torch", "onnx"):
        usage(f"--backend must be torch or onnx, got {backend!r}")
    ckpts, dices = list(model or []), [None] * len(model or [])
    inputs = list(args)
    try:
        if run is not None:
            if backend == "onnx":
                usage("--run holds checkpoints: `kelpseg export` one, then --backend onnx on it")
            more, more_dice = run_checkpoints(run)
            ckpts, dices = ckpts + more, dices + more_dice
    except EnsembleError as err:
        _fail(err)
    if not ckpts:
        if len(inputs) < 2:
            usage("give a model (CKPT, --model or --run) and at least one input")
        ckpts, dices, inputs = [inputs[0]], [None], inputs[1:]
    if not inputs:
        usage("no inputs: give tiles or folders of tiles")
    if out.exists() and not out.is_dir():
        _fail(NotADirectoryError(f"--out {out}: an existing file, not a folder"))
    try:
        items = find_images(inputs)
    except InputError as err:
        _fail(err)
    if not items:
        _fail(FileNotFoundError(f"no .tif tiles in {', '.join(map(str, inputs))}"))
    if backend == "onnx":
        _predict_onnx(ckpts, items, out, config, set_, strict, threshold, batch_size,
                      dict(weights=weights, vote=vote, precision=precision, tta=tta,
                           probabilities=probabilities, proba_format=proba_format,
                           spread=spread), overwrite=overwrite)  # fmt: skip
        return
    try:
        models = [load_model(c) for c in ckpts]  # every member is checked before any work
    except CheckpointError as err:
        _fail(err)
    base: Config = models[0].cfg if config is None else _config(config, None, announce=False)
    try:
        cfg = with_overrides(base, set_)
    except ConfigError as err:
        typer.secho(f"config error: {err}", fg="red", err=True)
        raise typer.Exit(2) from err
    pc = cfg.predict
    explicit = {o.split("=", 1)[0].strip() for o in set_ or []}
    note = ""
    if threshold is None and "predict.threshold" in explicit:
        threshold = pc.threshold
    if threshold is None and run is not None and (run / "threshold.json").is_file():
        threshold = read_threshold(run, len(ckpts), vote or pc.vote)
        note = f", tuned in {run / 'threshold.json'}"
    if threshold is None:
        threshold = pc.threshold
        own = {m.cfg.predict.threshold for m in models}
        if config is None and len(own) > 1:
            note = f", the first member's ({ckpts[0]}); members disagree"
    try:
        w = member_weights(len(ckpts), weights if weights is not None else pc.weights, dices)
        res = predict_tiles(
            models,
            items,
            out,
            threshold=threshold,
            batch_size=batch_size or pc.batch_for(next(models[0].parameters()).device.type),
            probabilities=probabilities if probabilities is not None else pc.probabilities,
            weights=w,
            vote=vote or pc.vote,
            precision=precision or pc.precision,
            tta=tta or pc.tta,
            proba_format=proba_format or pc.proba_format,
            spread=spread if spread is not None else pc.spread,
            overwrite=overwrite,
            slices=slices,
            postprocess=cfg.postprocess,
        )
        res.report.finish(strict=strict)
    except (CheckpointError, NothingValidError, ValueError) as err:
        _fail(err)
    members = f", {len(models)} models" if len(models) > 1 else ""
    reused = f", {res.reused} kept from an earlier run" if res.reused else ""
    typer.echo(
        f"{len(res.masks)} masks (threshold {res.threshold}{note}{members}{reused}) -> {out}"
    )


def _predict_onnx(
    paths: list[Path],
    items: list,
    out: Path,
    config: str | None,
    overrides: list[str] | None,
    strict: bool,
    threshold: float | None,
    batch_size: int | None,
    flags: dict,
    overwrite: bool = True,
) -> None:
    """``predict --backend onnx``: one exported model on onnxruntime; the settings it does not
    have (ensembles, TTA, reduced precision, spread) are refused."""
    from kelpseg.config import Config, with_overrides
    from kelpseg.infer.onnx_export import ExportError, OnnxModel, predict_tiles_onnx

    if len(paths) > 1:
        _fail(ValueError("--backend onnx runs one model; ensembles need --backend torch"))
    try:
        onnx_model = OnnxModel(paths[0])
        base = Config.model_validate(onnx_model.config) if config is None else None
    except (ExportError, FileNotFoundError, ValueError) as err:
        _fail(err)
    try:
        cfg = with_overrides(base or _config(config, None, announce=False), overrides)
    except ConfigError as err:
        typer.secho(f"config error: {err}", fg="red", err=True)
        raise typer.Exit(2) from err
    pc = cfg.predict
    chosen = {k: v if v is not None else getattr(pc, k) for k, v in flags.items()}
    supported = {"vote": "soft", "tta": "none", "spread": False}
    for key, ok in supported.items():
        if chosen[key] != ok:
            flag = "--" + key.replace("_", "-")
            _fail(ValueError(f"{flag} {chosen[key]}: not supported by --backend onnx"))
    if chosen["precision"] not in (None, "fp32"):
        _fail(ValueError(f"--precision {chosen['precision']}: --backend onnx runs fp32 only"))
    explicit = {o.split("=", 1)[0].strip() for o in overrides or []}
    if threshold is None and (config is not None or "predict.threshold" in explicit):
        threshold = pc.threshold
    try:
        res = predict_tiles_onnx(
            paths[0],
            items,
            out,
            threshold=threshold,
            batch_size=batch_size or pc.batch_for("cpu"),  # onnxruntime's CPU provider
            probabilities=bool(chosen["probabilities"]),
            postprocess=cfg.postprocess,
            proba_format=chosen["proba_format"],
            overwrite=overwrite,
        )
        res.report.finish(strict=strict)
    except (ExportError, NothingValidError, ValueError) as err:
        _fail(err)
    reused = f", {res.reused} kept from an earlier run" if res.reused else ""
    typer.echo(f"{len(res.masks)} masks (threshold {res.threshold}, onnx{reused}) -> {out}")


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Folder of predicted *_kelp.tif.")],
    truth: Annotated[Path, typer.Argument(help="Folder of true *_kelp.tif.")],
    per_tile: Annotated[
        Path | None, typer.Option(help="Write the per-tile table (CSV) here.")
    ] = None,
) -> None:
    """Global Dice (all pixels), IoU, precision, recall + per-tile table; a truth tile with no
    prediction counts as all-negative and is listed. (kelpseg.infer.evaluate)"""
    from kelpseg.infer.evaluate import evaluate as run_eval
    from kelpseg.io.raster import atomic_write_text

    try:
        scores, table, report = run_eval(pred, truth)
        report.finish()
    except (NothingValidError, OSError) as err:
        _fail(err)
    if per_tile is not None:
        try:
            atomic_write_text(per_tile, table.to_csv(index=False))
        except OSError as err:
            _fail(OSError(f"--per-tile {per_tile}: {err}"))
    typer.echo(json.dumps(scores, indent=2, allow_nan=False))


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A .ckpt from `kelpseg train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.")] = Path(
        "model.onnx"
    ),
    tile_size: Annotated[
        int | None,
        typer.Option(help="Tile side (px) the model takes; default: the config's or 350."),
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).")] = 17,
) -> None:
    """Checkpoint -> ONNX model taking the raw int16 tiles (N, 7, H, W) and returning the kelp
    probability (N, H, W), features and padding inside the graph. (kelpseg.infer.onnx_export)"""
    from kelpseg.infer.onnx_export import ExportError, export_onnx
    from kelpseg.infer.predict import CheckpointError

    try:
        path = export_onnx(checkpoint, out, tile_size=tile_size, opset=opset)
    except (CheckpointError, ExportError, OSError) as err:
        _fail(err)
    typer.echo(f"{checkpoint} -> {path}")


@app.command()
def threshold(
    out: Annotated[Path, typer.Argument(help="Output folder of `kelpseg train` / `run`.")],
    device: Annotated[
        str | None,
        typer.Option(help="Device for the fold models; default: a GPU when there is one."),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1, help="Default: each model's predict.batch_size (cpu_batch_size on a CPU)."
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="Ensemble weights for the `ensemble` entry: equal, dice or 0.2,0.8; default: "
            "OUT/config.yaml's predict.weights, else equal."
        ),
    ] = None,
    tta: Annotated[
        str | None,
        typer.Option(help="TTA of the predictions: none, flips, d4; default: OUT/config.yaml's."),
    ] = None,
    tiles: Annotated[
        list[Path] | None,
        typer.Option(
            help="Unlabelled tiles (e.g. the test folder) on which the ensemble's threshold is "
            "calibrated; default: cached training tiles."
        ),
    ] = None,
) -> None:
    """Tune the decision threshold out of fold (each fold's model on its own validation tiles)
    for the best global Dice, and the ensemble's where several folds exist; writes
    OUT/threshold.json and threshold.png. (kelpseg.infer.threshold)"""
    from kelpseg.infer.ensemble import EnsembleError
    from kelpseg.infer.predict import CheckpointError
    from kelpseg.infer.threshold import ThresholdError, tune_threshold
    from kelpseg.infer.tta import TTA_MODES

    saved = None
    if (out / "config.yaml").is_file() and (weights is None or tta is None):
        try:
            saved = load_config(out / "config.yaml").predict
        except ConfigError as err:
            _fail(ValueError(f"{out / 'config.yaml'}: {first_line(err)}"))
    weights = weights or (saved.weights if saved else "equal")
    tta = tta or (saved.tta if saved else "none")
    if tta not in TTA_MODES:
        _fail(ValueError(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}"))
    calibration = None
    if tiles:
        from kelpseg.io import find_images
        from kelpseg.io.errors import InputError

        try:
            calibration = [path for _, path in find_images(tiles)]
        except InputError as err:
            _fail(err)
        if not calibration:
            _fail(FileNotFoundError(f"--tiles: no .tif tiles in {', '.join(map(str, tiles))}"))
    try:
        res = tune_threshold(
            out,
            device=device,
            batch_size=batch_size,
            weights=weights,
            tta=tta,
            calibration=calibration,
        )
    except (ThresholdError, CheckpointError, EnsembleError, OSError, KeyError, ValueError) as err:
        _fail(err)
    typer.echo(
        f"threshold {res['threshold']:.2f}: Dice {res['dice']:.4f} "
        f"(0.5: {res['dice_at_0.5']:.4f}), folds {res['folds']} -> {out / 'threshold.json'}"
    )
    if "ensemble" in res:
        e = res["ensemble"]
        typer.echo(
            f"ensemble ({weights} weights): threshold {e['threshold']:.2f} (members "
            f"{e['member_threshold']:.2f}, calibrated on {e['calibration_tiles']} tiles)"
        )


@app.command()
def submit(
    pred: Annotated[Path, typer.Argument(help="Folder of predicted {id}_kelp.tif masks.")],
    tiles: Annotated[
        Path, typer.Option("--tiles", help="Folder of the test tiles ({id}_satellite.tif).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .tar to write.")] = Path(
        "submission.tar"
    ),
) -> None:
    """Competition submission: a .tar of one 0/1 uint8 mask per test tile. (kelpseg.infer.submit)"""
    from kelpseg.infer.submit import SubmissionError, build_submission

    try:
        sub = build_submission(pred, tiles, out)
    except (SubmissionError, FileNotFoundError) as err:
        _fail(err)
    extra = f" ({sub.nodata_pixels} nodata pixels written as 0)" if sub.nodata_pixels else ""
    typer.echo(f"{sub.tiles} masks -> {sub.path}{extra}")


@app.command("map")
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
    dem: Annotated[
        Path | None, typer.Option(help="DEM GeoTIFF for scene folders (any CRS).")
    ] = None,
    weights: Annotated[
        str,
        typer.Option(help="Ensemble weights: equal, dice (val Dice, min-max; --run) or 0.2,0.8."),
    ] = "equal",
    vote: Annotated[
        str, typer.Option(help="soft: mean probability; hard: mean of thresholded masks.")
    ] = "soft",
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Decision threshold in [0, 1]; default: the run's tuned one, else the "
            "checkpoint's."
        ),
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(min=16, help="Window side (px); default: the model's data.tile_size."),
    ] = None,
    overlap: Annotated[
        int | None, typer.Option(min=0, help="Window overlap (px); default: a quarter window.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Windows per batch; default: the checkpoint's.")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="fp32, bf16 or fp16 autocast; default bf16 on a GPU with it, else fp32."),
    ] = None,
    tta: Annotated[
        str, typer.Option(help="Test-time augmentation: none, flips or d4 (8 transforms).")
    ] = "none",
    slices: SlicesOpt = 1,
    probabilities: Annotated[bool, typer.Option(help="Write {id}_proba.tif (float32 COG).")] = True,
    geojson: Annotated[bool, typer.Option(help="Also write the polygons as GeoJSON.")] = False,
    min_area_ha: Annotated[
        float, typer.Option(min=0.0, help="Minimum mapping unit: drop kelp beds under X ha.")
    ] = 0.0,
    overwrite: Annotated[
        bool, typer.Option(help="Redo every scene (default: keep scenes done by a rerun).")
    ] = False,
    strict: StrictOpt = False,
) -> None:
    """Scenes or rasters of any size -> MAPS/{scene_id}/: kelp, probability, spread, coverage
    COGs, kelp-bed polygons, quick-look PNG, scene.json; MAPS/areas.csv. Sliced, Hann-blended
    inference in bounded memory; scenes already done are kept. (kelpseg.infer.mapping)"""
    from kelpseg.infer.ensemble import EnsembleError, member_weights, run_checkpoints
    from kelpseg.infer.mapping import build_engine, map_inputs
    from kelpseg.infer.predict import PRECISIONS, CheckpointError, load_model
    from kelpseg.infer.threshold import read_threshold
    from kelpseg.infer.tta import TTA_MODES

    def usage(msg: str) -> NoReturn:
        typer.secho(f"error: {msg}", fg="red", err=True)
        raise typer.Exit(2)

    if threshold is not None and not 0.0 <= threshold <= 1.0:
        usage(f"--threshold must be in [0, 1], got {threshold}")
    if vote not in ("soft", "hard"):
        usage(f"--vote must be soft or hard, got {vote!r}")
    if tta not in TTA_MODES:
        usage(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    if precision is not None and precision not in PRECISIONS:
        usage(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if dem is not None and not dem.is_file():
        usage(f"--dem {dem}: not found")
    ckpts, dices = list(model or []), [None] * len(model or [])
    try:
        if run is not None:
            more, more_dice = run_checkpoints(run)
            ckpts, dices = ckpts + more, dices + more_dice
        if not ckpts:
            usage("give the model: --model CKPT (repeatable) or --run OUT")
        w = member_weights(len(ckpts), weights, dices)
    except EnsembleError as err:
        _fail(err)
    if out.exists() and not out.is_dir():
        _fail(NotADirectoryError(f"--out {out}: an existing file, not a folder"))
    if threshold is None and run is not None:
        threshold = read_threshold(run, len(ckpts), vote)
    try:
        models = [load_model(c) for c in ckpts]  # every member is checked before any work
    except CheckpointError as err:
        _fail(err)
    try:
        engine, settings = build_engine(
            models,
            w,
            threshold=threshold,
            vote=vote,
            tta=tta,
            precision=precision,
            slices=slices,
            window=window,
            overlap=overlap,
            batch_size=batch_size,
            probabilities=probabilities,
            geojson=geojson,
            min_area_ha=min_area_ha,
        )
    except ValueError as err:
        usage(str(err))
    threshold = settings.threshold
    try:
        res = map_inputs(engine, inputs, out, settings, models=ckpts, dem=dem, overwrite=overwrite)
        res.report.finish(strict=strict)
    except (NothingValidError, OSError) as err:
        _fail(err)
    kept = f", {res.reused} kept from an earlier run" if res.reused else ""
    typer.echo(f"{len(res.scenes)} scenes (threshold {threshold}{kept}) -> {out / 'areas.csv'}")


@app.command()
def run(
    data: Annotated[Path, typer.Argument(help="Dataset folder in the competition layout.")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("kelpseg_out"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    truth: Annotated[
        Path | None, typer.Option(help="Test masks, to score the predictions.")
    ] = None,
    strict: StrictOpt = False,
    resume: ResumeOpt = False,
) -> None:
    """The whole job: stats, groups, split, train the folds, tune the threshold out of fold,
    predict the test tiles with the best fold and with the ensemble, metrics.json. (kelpseg.pipeline)"""
    from kelpseg.pipeline import run_pipeline
    from kelpseg.report import print_metrics

    cfg = _stage_config(config, set_, out, strict)
    cfg.train.resume = cfg.train.resume or resume
    try:
        metrics = run_pipeline(data, cfg, out, truth)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        _fail(err)
    print_metrics(metrics, out)


@app.command()
def xgb(
    data: Annotated[Path, typer.Argument(help="Dataset folder in the competition layout.")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("kelpseg_out"),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    truth: Annotated[
        Path | None, typer.Option(help="Test masks, to score the predictions.")
    ] = None,
    strict: StrictOpt = False,
) -> None:
    """Per-pixel XGBoost baseline on the networks' folds (train.folds): OUT/xgb/fold*/model.json,
    test masks in OUT/xgb/predictions, importance.png/.csv, metrics.json. (kelpseg.baselines.xgb)"""
    from kelpseg.baselines.xgb import run_xgb

    cfg = _stage_config(config, set_, out, strict)
    try:
        m = run_xgb(data, cfg, out, truth)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        _fail(err)
    for k, f in m["folds"].items():
        typer.echo(
            f"fold {k}: val Dice {f['val_dice']:.4f}  {f['seconds']:.1f} s  {f['checkpoint']}"
        )
    dice = (m.get("test") or {}).get("dice")
    test = f"  test Dice {dice:.4f}" if dice is not None else ""
    typer.echo(
        f"mean val Dice {m['val_dice']:.4f}{test}  threshold {m['threshold']}  -> {out / 'xgb'}"
    )


@app.command()
def runs(
    uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow tracking URI, or a run folder holding mlflow.db; default: the "
            "config's tracking.uri, else kelpseg_out/mlflow.db."
        ),
    ] = None,
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment; default: the config's.")
    ] = None,
    sort: Annotated[str, typer.Option(help="Column to sort by (descending).")] = "mean_dice",
    ascending: Annotated[bool, typer.Option("--ascending", help="Sort ascending.")] = False,
    filter_: Annotated[
        list[str] | None,
        typer.Option(
            "--filter", help="COLUMN OP VALUE (= != > >= < <=), e.g. mean_dice>0.5 (repeatable)."
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    config: ConfigOpt = None,
) -> None:
    """Table of finished trainings from the MLflow store: config highlights, validation Dice
    per fold, mean and spread, tuned threshold, test Dice. (kelpseg.runs)"""
    from kelpseg.runs import RunsError, list_runs, render

    cfg = _config(config, None, announce=False)
    try:
        table = list_runs(
            uri or cfg.tracking.uri or "kelpseg_out",
            experiment or cfg.tracking.experiment,
            filters=filter_,
            sort=sort,
            ascending=ascending,
        )
        typer.echo(render(table, fmt), nl=False)
    except (RunsError, OSError) as err:
        _fail(err)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("demo_out"),
    aois: int = 24,
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
) -> None:
    """Synthetic dataset -> `kelpseg run` on CPU (3 folds), then the metrics table: best fold and
    ensemble side by side; then a synthetic Landsat scene mapped by the ensemble, its kelp area
    against the truth. (kelpseg.pipeline, kelpseg.scene_demo)"""
    from kelpseg.pipeline import run_pipeline
    from kelpseg.report import print_metrics
    from kelpseg.scene_demo import map_demo_scene, scene_lines
    from kelpseg.synth import generate

    cfg = _config(config, set_)
    data = out / "data"
    res = generate(data, aois=aois, seed=0, overwrite=True)
    typer.echo(f"synthetic data: {res.n_train} train + {res.n_test} test tiles in {data}")
    metrics = run_pipeline(data, cfg, out / "run", res.test_masks)
    typer.echo("mapping a synthetic Landsat scene with the ensemble (kelpseg map)...", err=True)
    scene = map_demo_scene(out / "run", out)
    print_metrics(metrics, out / "run")
    for line in scene_lines(scene):
        typer.echo(line)


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
        _fail(ValueError(f"--units must be dn or reflectance, not {units!r}"))
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    try:
        path = write_indices(
            tile, chosen, out, units=units, mask_land=mask_land, fill=fill, mask_cloud=mask_cloud
        )
    except (UnknownIndexError, TileError) as err:
        _fail(err)
    typer.echo(f"{len(chosen)} indices ({units}) -> {path}")


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

    cfg = _stage_config(config, set_, work or out)
    try:
        page = build_report(data, out, cfg, work=work, samples=samples)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        _fail(err)
    typer.echo(f"report -> {page}")


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
        _fail(ValueError("--tiles goes with --groups (competition tiles mode)"))
    if groups is not None and (aoi or aoi_crs or aoi_union or quarterly):
        _fail(ValueError("--aoi* and --quarterly need a `kelpseg map` folder (tiles: --groups)"))
    if aoi is None and (aoi_crs or aoi_union):
        _fail(ValueError("--aoi-crs and --aoi-union go with --aoi"))
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
        _fail(err)
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


@app.command("config")
def config_cmd(
    name: Annotated[
        str | None, typer.Argument(help="Built-in name or YAML path (default: `default`).")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """Print a config as YAML with every key spelled out: `kelpseg config demo > my.yaml`. (kelpseg.config)"""
    cfg = _config(name, set_, announce=False)
    typer.echo(
        f"# kelpseg {__version__} config: {name or DEFAULT_CONFIG}"
        + "".join(f" --set {o}" for o in set_ or [])
        + f"\n# built-in configs: {', '.join(builtin_names())}; read back with -c FILE"
    )
    typer.echo(dump_config(cfg))


def main() -> None:  # pragma: no cover
    sys.exit(app())
