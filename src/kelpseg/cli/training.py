"""Training commands: train, tune, run (the whole job), demo, the XGBoost baseline, runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kelpseg.cli.common import (
    ConfigOpt,
    ResumeOpt,
    SetOpt,
    StrictOpt,
    app,
    fail,
    load_cfg,
    stage_config,
)
from kelpseg.config import ConfigError
from kelpseg.io.errors import NothingValidError


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

    cfg = stage_config(config, set_, out, strict)
    cfg.train.resume = cfg.train.resume or resume
    try:
        prep = prepare(data, cfg, out, pack=True)
        results = run_training(prep, cfg, out)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        fail(err)
    for r in results:
        typer.echo(
            f"fold {r.fold}: val Dice {r.val_dice:.4f}  checkpoint {r.checkpoint}  run {r.run_id}"
        )


@app.command()
def tune(
    data: Annotated[Path, typer.Argument(help="Dataset folder.")],
    trials: Annotated[
        int, typer.Option(min=1, help="Trials the study should hold, all workers together.")
    ],
    space: Annotated[
        str | None,
        typer.Option(
            help="Search-space YAML, or built-in `space` (the 2nd-place grid) / `space_tiny`; "
            "default: the built-in `space` (configs/space.yaml), said when used."
        ),
    ] = None,
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

    cfg = load_cfg(config, set_)
    if grace is not None and grace <= heartbeat:
        fail(ValueError(f"--grace ({grace}) must be longer than --heartbeat ({heartbeat})"))
    try:
        if space is None:
            space = "space"
            typer.secho(
                "search space: built-in 'space' (kelpseg/configs/space.yaml, the 2nd-place grid; "
                "choose another with --space)",
                err=True,
            )
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
        fail(ImportError(f"--storage {storage}: {err} ({err.__cause__})"))
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        fail(err)
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

    cfg = stage_config(config, set_, out, strict)
    cfg.train.resume = cfg.train.resume or resume
    try:
        metrics = run_pipeline(data, cfg, out, truth)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        fail(err)
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

    cfg = stage_config(config, set_, out, strict)
    try:
        m = run_xgb(data, cfg, out, truth)
    except (NothingValidError, FileNotFoundError, ValueError) as err:
        fail(err)
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

    cfg = load_cfg(config, None, announce=False)
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
        fail(err)


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

    cfg = load_cfg(config, set_)
    data = out / "data"
    res = generate(data, aois=aois, seed=0, overwrite=True)
    typer.echo(f"synthetic data: {res.n_train} train + {res.n_test} test tiles in {data}")
    metrics = run_pipeline(data, cfg, out / "run", res.test_masks)
    typer.echo("mapping a synthetic Landsat scene with the ensemble (kelpseg map)...", err=True)
    scene = map_demo_scene(out / "run", out)
    print_metrics(metrics, out / "run")
    for line in scene_lines(scene):
        typer.echo(line)
