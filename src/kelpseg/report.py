"""Terminal summaries of a run."""

from __future__ import annotations

import shlex
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table


def mlflow_command(out: Path) -> str:
    """The shell command that opens the run's MLflow store (path quoted for the shell)."""
    uri = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    return f"mlflow ui --backend-store-uri {shlex.quote(uri)}"


def print_metrics(metrics: dict, out: Path) -> None:
    """The metrics table (network vs NDVI rule) and where the outputs are.

    The output lines are printed unwrapped and without markup, so that the paths and the
    ``mlflow ui`` command can be copied and pasted whole however narrow the terminal.
    """
    console = Console()

    def line(text: str) -> None:
        console.print(text, soft_wrap=True, markup=False, highlight=False)

    table = Table(
        title="kelpseg — kelp-class Dice, counted over all pixels",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for col in ("model", "thr.", "val", "OOF", "held-out", "test", "prec.", "recall"):
        if col == "model":  # the one that wraps in a narrow terminal, numbers never do
            table.add_column(col, ratio=1, overflow="fold")
        else:
            table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    test = metrics.get("test", {})
    if "dice" in test:  # a metrics.json of an older run: one prediction
        test = {"single": test}

    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.4f}"

    ens = metrics.get("ensemble", {})
    members = len(ens.get("members", [])) or 1
    thr = metrics.get("threshold")
    thr = thr if isinstance(thr, dict) else {"single": thr, "ensemble": thr}
    oof = metrics.get("oof_threshold", {})
    folds = metrics.get("folds", {}).values()
    best_val = max((v["val_dice"] for v in folds), default=metrics.get("val_dice"))
    choice = metrics.get("choice") or {}
    chosen = choice.get("predictions", "ensemble" if members > 1 else "single")
    held = (metrics.get("holdout") or {}) if members > 1 else {}
    rows = [("single", "best fold", best_val, oof.get("dice"))]
    if members > 1:
        name = f"{members} folds, {ens.get('weights_from', 'equal')}"
        rows.append(("ensemble", name, metrics.get("val_dice"), None))
    for key, label, val, oof_dice in rows:
        t = test.get(key, {})
        mark = "* " if members > 1 and key == chosen else ""
        table.add_row(
            mark + label,
            "—" if thr.get(key) is None else f"{thr[key]:.2f}",
            f(val),
            f(oof_dice),
            f((held.get(key) or {}).get("dice")),
            f(t.get("dice")),
            f(t.get("precision")),
            f(t.get("recall")),
        )
    rule = metrics.get("ndvi_rule", {})
    label = f"NDVI >= {rule.get('threshold', float('nan')):.2f}"
    table.add_row(label, "—", "—", "—", "—", f(rule.get("test_dice")), "—", "—")
    console.print(table)
    secs = metrics.get("seconds", {})
    console.print(
        f"{metrics['train_tiles']} training tiles in {metrics['aoi_groups']} AOI groups, "
        f"{metrics['test_tiles']} test tiles; train {secs.get('train')} s"
        + (f" ({len(secs['folds'])} folds)" if len(secs.get("folds") or {}) > 1 else "")
        + (f", threshold {secs['threshold']} s" if "threshold" in secs else "")
        + (f", predict {secs['predict']} s" if "predict" in secs else "")
        + f", total {secs.get('total')} s"
    )
    if members > 1:
        console.print(
            "Dice of the networks: val = the best fold's / the mean over folds; OOF = out of "
            "fold at the pooled out-of-fold threshold (none exists for an ensemble of the "
            "folds); held-out = on the held-out fold (train.holdout_fold) that no model "
            "trained on, each at its threshold tuned there; test = on the test tiles (--truth)"
        )
        if choice.get("reason"):
            console.print(f"* predictions (the one to submit): {chosen}; {choice['reason']}")
    line(f"outputs:  predictions  {out / 'predictions'}")
    preds = metrics.get("predictions", {})
    for key, label in (("single", "best fold   "), ("ensemble", "ensemble    ")):
        if key in preds and Path(preds[key]).name != "predictions":
            line(f"          {label} {preds[key]}")
    line(f"          metrics      {out / 'metrics.json'}")
    line(f"          checkpoint   {metrics['predicted_with']}")
    line(
        f"          tables       {out / 'tile_stats.csv'}, {out / 'groups.csv'}, {out / 'splits.csv'}"
    )
    line(f"          MLflow       {mlflow_command(out)}")
