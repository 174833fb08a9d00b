"""What every ``kelpseg`` sub-command shares: the app, option types, config loading and one way
to report errors (:func:`reports`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from kelpseg import __version__
from kelpseg.config import DEFAULT_CONFIG, Config, ConfigError, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find giant-kelp canopy in Landsat tiles and scenes. Stages run one by one or all "
    "together with `kelpseg run`; configs are YAML (`kelpseg config`), overridable with "
    "--set section.key=value. Each command's help names the module that does its work.",
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
StrictOpt = Annotated[bool, typer.Option("--strict", help="Exit non-zero on any bad file.")]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume", help="Continue interrupted folds from OUT/fold*/last.ckpt; skip finished ones."
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", "-o")]

# prediction (predict, map): the members and the settings of kelpseg.infer.assemble
ModelsOpt = Annotated[
    list[Path] | None,
    typer.Option("--model", "-m", help="A member checkpoint; repeat for an ensemble."),
]
RunOpt = Annotated[
    Path | None,
    typer.Option(
        help="The trained folds of a `kelpseg train`/`run` output (OUT/fold*): all of them, "
        "or the best fold alone when `kelpseg run` chose it (OUT/metrics.json)."
    ),
]
AllFoldsOpt = Annotated[
    bool,
    typer.Option(
        "--all-folds", help="With --run: every fold, even when `run` chose its best fold alone."
    ),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        help="Ensemble weights: equal, dice (val Dice, min-max; --run) or 0.2,0.8 "
        "(config: predict.weights)."
    ),
]
VoteOpt = Annotated[
    str | None,
    typer.Option(
        help="soft: mean probability; hard: mean of thresholded masks (config: predict.vote)."
    ),
]
ThresholdOpt = Annotated[
    float | None,
    typer.Option(
        help="Decision threshold in [0, 1]; default: --set predict.threshold, else the run's "
        "tuned one for these members and weights (threshold.json), else the config's (the "
        "first model's unless -c)."
    ),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option(
        help="fp32, bf16 or fp16 autocast; default bf16 on a GPU with it, else fp32 "
        "(config: predict.precision)."
    ),
]
TtaOpt = Annotated[
    str | None,
    typer.Option(help="Test-time augmentation: none, flips or d4 (8) (config: predict.tta)."),
]
SlicesOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="SAHI-style: overlapping slices of 1/N of the window's side, up-sampled to the "
        "window before the model and blended back (1 = off).",
    ),
]
PredictConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML file or built-in name for the predict and postprocess settings; "
        "default: the (first) model's own config.",
    ),
]


class UsageError(ValueError):
    """A command line that cannot work as given (exit status 2)."""


F = TypeVar("F", bound=Callable[..., Any])


def reports(*errors: type[BaseException]) -> Callable[[F], F]:
    """Decorate a command: each of ``errors`` becomes one red ``error: ...`` line and exit 1;
    a :class:`~kelpseg.config.ConfigError` or :class:`UsageError` exits 2."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ConfigError as err:
                typer.secho(f"config error: {err}", fg="red", err=True)
                raise typer.Exit(2) from err
            except UsageError as err:
                typer.secho(f"error: {err}", fg="red", err=True)
                raise typer.Exit(2) from err
            except errors as err:
                typer.secho(f"error: {err}", fg="red", err=True)
                raise typer.Exit(1) from err

        return run  # type: ignore[return-value]

    return wrap


def fail(err: Exception) -> NoReturn:
    """One red ``error: ...`` line and exit 1."""
    typer.secho(f"error: {err}", fg="red", err=True)
    raise typer.Exit(1) from err


def usage(msg: str) -> NoReturn:
    """One red ``error: ...`` line and exit 2 (a command line that cannot work)."""
    raise UsageError(msg)


def load_cfg(
    config: str | None, overrides: list[str] | None, strict: bool = False, announce: bool = True
) -> Config:
    """The config of ``-c`` (``default`` when None, said when ``announce``) with ``--set``."""
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


def stage_config(
    config: str | None,
    overrides: list[str] | None,
    out: Path,
    strict: bool = False,
    **flags: object,
) -> Config:
    """The config of a stage command in work folder ``out``: ``flags`` (``groups__threshold``
    = value, None when not given) and the stage flags an earlier command remembered there."""
    from kelpseg.data.tables import remembered_flags

    cfg = load_cfg(config, overrides, strict)
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
