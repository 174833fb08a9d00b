"""Terminal summaries of a run."""

from __future__ import annotations

import shlex
from pathlib import Path

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

    table = Table(title="kelpseg — kelp-class Dice, counted over all pixels")
    for col in ("model", "val Dice", "test Dice", "test IoU", "precision", "recall"):
        table.add_column(col, justify="right" if col != "model" else "left")
    test = metrics.get("test", {})

    def f(v: float | None) -> str:
        return "—" if v is None else f"{v:.4f}"

    table.add_row(
        "network",
        f(metrics["val_dice"]),
        f(test.get("dice")),
        f(test.get("iou")),
        f(test.get("precision")),
        f(test.get("recall")),
    )
    rule = metrics.get("ndvi_rule", {})
    label = f"NDVI >= {rule.get('threshold', float('nan')):.2f} on water"
    table.add_row(label, "—", f(rule.get("test_dice")), "—", "—", "—")
    console.print(table)
    secs = metrics.get("seconds", {})
    console.print(
        f"{metrics['train_tiles']} training tiles in {metrics['aoi_groups']} AOI groups, "
        f"{metrics['test_tiles']} test tiles; train {secs.get('train')} s, total {secs.get('total')} s"
    )
    line(f"outputs:  predictions  {out / 'predictions'}")
    line(f"          metrics      {out / 'metrics.json'}")
    line(f"          checkpoint   {metrics['predicted_with']}")
    line(
        f"          tables       {out / 'tile_stats.csv'}, {out / 'groups.csv'}, {out / 'splits.csv'}"
    )
    line(f"          MLflow       {mlflow_command(out)}")
