"""The runs table (``kelpseg runs``): finished trainings from the MLflow store, one row each.

``kelpseg train`` / ``run`` log one MLflow run per fold (run name ``fold{k}``, the flat config
as parameters, metric ``best/val_dice``, tag ``kelpseg.out`` = the run folder). Fold runs are
read with :meth:`mlflow.tracking.MlflowClient.search_runs` and grouped by that folder (older
runs without the tag: the folder two levels above their ``checkpoint`` tag), so one row is one
training: config highlights, validation Dice per fold, their mean and spread, and, while the
folder still exists, its tuned threshold (``threshold.json``) and test Dice
(``metrics.json``). Rows can be filtered (``col=value``, ``col!=value``, ``col>x``,
``col>=x``, ``col<x``, ``col<=x``) and sorted by any column.
"""

from __future__ import annotations

import ast
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

GROUP_TAG = "kelpseg.out"  # the fold runs' output folder (kelpseg.train.fit sets it)
DICE = "best/val_dice"
FORMATS = ("table", "csv", "json")
HIGHLIGHTS = {
    "arch": "model.arch",
    "encoder": "model.encoder",
    "epochs": "train.max_epochs",
    "lr": "train.lr",
    "samples": "train.samples_per_epoch",
}


class RunsError(ValueError):
    """A store, experiment, filter or column that cannot be used, said in one line."""


def resolve_uri(uri: str) -> str:
    """A tracking URI from a URI, a run folder (holding ``mlflow.db``) or a ``.db`` file.

    Raises:
        RunsError: a SQLite store that does not exist (MLflow would create an empty one).
    """
    path = Path(uri)
    if "://" not in uri:
        if path.is_dir() and (path / "mlflow.db").is_file():
            path = path / "mlflow.db"
        if path.suffix == ".db" or path.is_file():
            uri = f"sqlite:///{path.resolve()}"
        else:
            raise RunsError(f"{uri}: no MLflow store there (give --uri a run folder or a URI)")
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise RunsError(f"{db}: no MLflow store there (give --uri a run folder or a URI)")
    return uri


def fold_runs(uri: str, experiment: str) -> pd.DataFrame:
    """One row per finished fold run of ``experiment``: ids, group folder, fold, Dice, params."""
    from mlflow.tracking import MlflowClient

    from kelpseg._quiet import quiet

    quiet()
    client = MlflowClient(tracking_uri=resolve_uri(uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise RunsError(f"no experiment {experiment!r} in {uri} (have: {names})")
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    rows = []
    for r in runs:
        dice = r.data.metrics.get(DICE)
        tags, params = r.data.tags, r.data.params
        if dice is None or "fold" not in params:  # unfinished, or a study's / trial's run
            continue
        group = tags.get(GROUP_TAG)
        if group is None and tags.get("checkpoint"):
            group = str(Path(tags["checkpoint"]).parent.parent)
        rows.append(
            {
                "run_id": r.info.run_id,
                "group": group or r.info.run_id,
                "start": r.info.start_time,
                "fold": int(params["fold"]),
                "val_dice": float(dice),
                **params,
            }
        )
    return pd.DataFrame(rows)


def _loss(params: pd.Series) -> str:
    terms = [
        f"{k.removeprefix('train.loss.')}:{float(v):g}"
        for k, v in params.items()
        if k.startswith("train.loss.") and pd.notna(v)
    ]
    return "+".join(sorted(terms))


def _count(value: object) -> float:
    try:
        return float(len(ast.literal_eval(str(value))))
    except (ValueError, SyntaxError, TypeError):
        return float("nan")


def _folder_figures(folder: Path) -> dict[str, float]:
    """Tuned threshold and test Dice of a run folder that still exists: `kelpseg run`'s
    ensemble (and its best fold as ``test_dice_single``), or a baseline's single score."""
    out = {"threshold": float("nan"), "test_dice": float("nan"), "test_dice_single": float("nan")}
    try:
        t = folder / "threshold.json"
        if t.is_file():
            out["threshold"] = float(json.loads(t.read_text())["threshold"])
        m = folder / "metrics.json"
        if m.is_file():
            test = json.loads(m.read_text()).get("test") or {}
            if "ensemble" in test:  # kelpseg run: the ensemble (submitted) and the best fold
                out["test_dice"] = float(test["ensemble"]["dice"])
                out["test_dice_single"] = float(test.get("single", {}).get("dice", "nan"))
            elif test.get("dice") is not None:
                out["test_dice"] = float(test["dice"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a damaged file: the figure stays unknown
    return out


def runs_table(folds: pd.DataFrame) -> pd.DataFrame:
    """One row per training (group of fold runs); the latest run of each fold counts."""
    if folds.empty:
        return pd.DataFrame(columns=["run", "mean_dice"])
    # the latest run of each fold, whole (not column-wise last non-null values)
    latest = folds.sort_values("start").drop_duplicates(["group", "fold"], keep="last")
    rows = []
    for group, g in latest.groupby("group", sort=False):
        newest = g.iloc[-1]  # config highlights: the most recent fold run
        row: dict[str, object] = {
            "run": Path(str(group)).name,
            "started": datetime.fromtimestamp(g["start"].min() / 1000, UTC).strftime(
                "%Y-%m-%d %H:%M"
            ),
        }
        for col, key in HIGHLIGHTS.items():
            row[col] = newest.get(key)
        row["loss"] = _loss(newest)
        row["indices"] = _count(newest.get("features.indices"))
        dice = g.set_index("fold")["val_dice"].sort_index()
        row["folds"] = len(dice)
        for k, v in dice.items():
            row[f"dice_f{k}"] = v
        row["mean_dice"] = float(dice.mean())
        row["std_dice"] = float(dice.std(ddof=0))
        row.update(_folder_figures(Path(str(group))))
        row["folder"] = str(group)
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in ("epochs", "lr", "samples", "indices"):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    for col in ("epochs", "samples", "indices"):
        if table[col].notna().all():
            table[col] = table[col].astype(int)
    folds_cols = sorted((c for c in table if c.startswith("dice_f")), key=lambda c: int(c[6:]))
    rest = [c for c in table if not c.startswith("dice_f") and c != "folder"]
    at = rest.index("mean_dice")
    return table[rest[:at] + folds_cols + rest[at:] + ["folder"]]


_FILTER = re.compile(r"^\s*([\w./-]+)\s*(>=|<=|!=|==|=|>|<)\s*(.*?)\s*$")


def apply_filter(table: pd.DataFrame, expr: str) -> pd.DataFrame:
    """Rows of ``table`` matching ``col OP value`` (OP: = != > >= < <=)."""
    m = _FILTER.match(expr)
    if not m:
        raise RunsError(f"--filter {expr!r}: expected COLUMN OP VALUE, e.g. mean_dice>0.5")
    col, op, value = m.groups()
    if col not in table:
        raise RunsError(f"--filter {expr!r}: no column {col!r}; have {', '.join(table.columns)}")
    numeric = pd.to_numeric(table[col], errors="coerce")
    try:
        number = float(value)
    except ValueError:
        number = None
    if op in ("=", "==", "!="):
        if number is not None and numeric.notna().any():
            hit = np.isclose(numeric, number)
        else:
            hit = table[col].astype(str) == value
        return table[hit if op != "!=" else ~hit]
    if number is None:
        raise RunsError(f"--filter {expr!r}: {op} needs a number, got {value!r}")
    cmp = {">": numeric > number, ">=": numeric >= number, "<": numeric < number}
    return table[cmp.get(op, numeric <= number)]


def sort_table(table: pd.DataFrame, column: str, ascending: bool = False) -> pd.DataFrame:
    """``table`` sorted by ``column`` (descending by default), unknown values last."""
    if column not in table:
        raise RunsError(f"--sort {column!r}: no such column; have {', '.join(table.columns)}")
    return table.sort_values(column, ascending=ascending, na_position="last", kind="stable")


def render(table: pd.DataFrame, fmt: str) -> str:
    """The table as aligned text, CSV or JSON (records)."""
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        return table.to_json(orient="records", indent=2) + "\n"
    if fmt != "table":
        raise RunsError(f"--format {fmt!r}: choose {', '.join(FORMATS)}")
    if table.empty:
        return "no finished runs\n"
    return table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}") + "\n"


def list_runs(
    uri: str,
    experiment: str,
    *,
    filters: list[str] | None = None,
    sort: str = "mean_dice",
    ascending: bool = False,
) -> pd.DataFrame:
    """The runs table of ``experiment`` in the store at ``uri``, filtered and sorted."""
    table = runs_table(fold_runs(uri, experiment))
    for expr in filters or []:
        table = apply_filter(table, expr)
    return sort_table(table, sort, ascending).reset_index(drop=True)
