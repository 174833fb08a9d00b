"""Tile prediction commands: predict, evaluate, threshold, export (ONNX), submit."""

from __future__ import annotations

import json
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
from kelpseg.config import ConfigError, load_config
from kelpseg.infer.errors import PredictionError
from kelpseg.io.errors import NothingValidError, first_line


@app.command()
@reports(PredictionError, NothingValidError)
def predict(
    args: Annotated[
        list[Path],
        typer.Argument(
            help="[MODEL] INPUTS...: a .ckpt from `kelpseg train` (or an .onnx from `kelpseg "
            "export`) unless --model/--run, then tiles or folders of tiles. Outputs are named "
            "by tile id, so two inputs with the same file name are refused; *_kelp.tif / "
            "*_proba.tif in folders are skipped (outputs of an earlier predict).",
            show_default=False,
            metavar="CKPT_AND_INPUTS",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (may be an input folder).")
    ] = Path("predictions"),
    model: ModelsOpt = None,
    run: RunOpt = None,
    all_folds: AllFoldsOpt = False,
    weights: WeightsOpt = None,
    vote: VoteOpt = None,
    threshold: ThresholdOpt = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Tiles per batch (config: predict.batch_size).")
    ] = None,
    precision: PrecisionOpt = None,
    tta: TtaOpt = None,
    probabilities: Annotated[
        bool | None, typer.Option(help="Also write {id}_proba.tif (config: predict.probabilities).")
    ] = None,
    proba_format: Annotated[
        str | None,
        typer.Option(
            help="float32 (NaN nodata) or uint8 (p*254, 255 nodata) (config: predict.proba_format)."
        ),
    ] = None,
    spread: Annotated[
        bool | None,
        typer.Option(
            help="Ensembles: also write {id}_spread.tif (members' std) (config: predict.spread)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Redo every tile (default: keep complete outputs of a rerun).")
    ] = False,
    slices: SlicesOpt = 1,
    backend: Annotated[
        str,
        typer.Option(
            help="torch or onnx: which the members must be (checkpoints, or .onnx files of "
            "`kelpseg export` on onnxruntime); a member's file says it anyway."
        ),
    ] = "torch",
    config: PredictConfigOpt = None,
    set_: SetOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Checkpoint(s) + tiles -> {id}_kelp.tif masks (1 kelp, 0 not, 255 nodata where the input is
    missing) keeping each input's georeference. Members and settings: kelpseg.infer.assemble.
    (kelpseg.infer.predict)"""
    from kelpseg.infer.assemble import assemble
    from kelpseg.infer.predict import predict_assembly
    from kelpseg.io import find_images
    from kelpseg.io.errors import InputError

    if backend not in ("torch", "onnx"):
        usage(f"--backend must be torch or onnx, got {backend!r}")
    ckpts, inputs = list(model or []), list(args)
    if not ckpts and run is None:
        if len(inputs) < 2:
            usage("give a model (CKPT, --model or --run) and at least one input")
        ckpts, inputs = [inputs[0]], inputs[1:]
    if not inputs:
        usage("no inputs: give tiles or folders of tiles")
    onnx = [c for c in ckpts if c.suffix.lower() == ".onnx"]
    if backend == "onnx" and (run is not None or len(onnx) < len(ckpts)):
        usage("--backend onnx takes .onnx members: `kelpseg export` each checkpoint first")
    if out.exists() and not out.is_dir():
        fail(NotADirectoryError(f"--out {out}: an existing file, not a folder"))
    try:
        items = find_images(inputs)
    except InputError as err:
        fail(err)
    if not items:
        fail(FileNotFoundError(f"no .tif tiles in {', '.join(map(str, inputs))}"))
    flags = {"weights": weights, "vote": vote, "precision": precision, "tta": tta}
    flags |= {"probabilities": probabilities, "proba_format": proba_format, "spread": spread}
    ens = assemble(
        ckpts,  # every member is loaded and checked before any work
        run,
        config=config,
        overrides=set_,
        flags=flags,
        threshold=threshold,
        batch_size=batch_size,
        all_folds=all_folds,
    )
    for note in ens.notes:
        typer.secho(f"note: {note}", err=True)
    pc = ens.cfg.predict
    res = predict_assembly(
        ens,
        items,
        out,
        probabilities=pc.probabilities,
        proba_format=pc.proba_format,
        spread=pc.spread,
        overwrite=overwrite,
        slices=slices,
    )
    res.report.finish(strict=strict)
    reused = f", {res.reused} kept from an earlier run" if res.reused else ""
    typer.echo(f"{len(res.masks)} masks ({ens.describe()}{reused}) -> {out}")


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
        fail(err)
    if per_tile is not None:
        try:
            atomic_write_text(per_tile, table.to_csv(index=False))
        except OSError as err:
            fail(OSError(f"--per-tile {per_tile}: {err}"))
    typer.echo(json.dumps(scores, indent=2, allow_nan=False))


@app.command()
@reports(PredictionError, OSError, KeyError, ValueError)
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
    from kelpseg.infer.threshold import tune_threshold
    from kelpseg.infer.tta import TTA_MODES

    saved = None
    if (out / "config.yaml").is_file():
        try:
            saved = load_config(out / "config.yaml").predict
        except ConfigError as err:
            fail(ValueError(f"{out / 'config.yaml'}: {first_line(err)}"))
    weights = weights or (saved.weights if saved else "equal")
    tta = tta or (saved.tta if saved else "none")
    if tta not in TTA_MODES:
        fail(ValueError(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}"))
    calibration = None
    if tiles:
        from kelpseg.io import find_images
        from kelpseg.io.errors import InputError

        try:
            calibration = [path for _, path in find_images(tiles)]
        except InputError as err:
            fail(err)
        if not calibration:
            fail(FileNotFoundError(f"--tiles: no .tif tiles in {', '.join(map(str, tiles))}"))
    res = tune_threshold(
        out,
        device=device,
        batch_size=batch_size,
        weights=weights,
        tta=tta,
        vote=saved.vote if saved else "soft",
        calibration=calibration,
    )
    typer.echo(
        f"threshold {res['threshold']:.2f}: Dice {res['dice']:.4f} "
        f"(0.5: {res['dice_at_0.5']:.4f}), folds {res['folds']} -> {out / 'threshold.json'}"
    )
    hold = res.get("holdout")
    if "ensemble" in res:
        e = res["ensemble"]
        where = (
            f"tuned on held-out fold {hold['fold']}, {hold['tiles']} tiles"
            if hold
            else f"calibrated on {e['calibration_tiles']} tiles"
        )
        typer.echo(
            f"ensemble ({weights} weights): threshold {e['threshold']:.2f} (members "
            f"{e['member_threshold']:.2f}, {where})"
        )
    if hold:
        s, f = hold["single"], hold["single"]["fold"]
        line = f"held-out fold {hold['fold']}: best fold ({f}) Dice {s['dice']:.4f}"
        if "ensemble" in hold:
            line += f", ensemble {hold['ensemble']['dice']:.4f}: {hold['better']} is better"
        typer.echo(line)


@app.command()
@reports(PredictionError, OSError)
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
    from kelpseg.infer.onnx_export import export_onnx

    path = export_onnx(checkpoint, out, tile_size=tile_size, opset=opset)
    typer.echo(f"{checkpoint} -> {path}")


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
        fail(err)
    extra = f" ({sub.nodata_pixels} nodata pixels written as 0)" if sub.nodata_pixels else ""
    typer.echo(f"{sub.tiles} masks -> {sub.path}{extra}")
