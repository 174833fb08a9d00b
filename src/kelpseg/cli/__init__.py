"""The ``kelpseg`` command: one sub-command per pipeline stage, one module per group of them.

=====================  ==============================================================
module                 commands
=====================  ==============================================================
``cli.data``           synth, stats, groups, split, eda, indices, config
``cli.training``       train, tune, run, xgb, runs, demo
``cli.predicting``     predict, evaluate, threshold, export, submit
``cli.scenes``         stack, map, timeseries
``cli.common``         the app, shared options, config loading, error reporting
=====================  ==============================================================

Each command's help names the module that does its work.
"""

from __future__ import annotations

import sys

from kelpseg.cli.common import app

# isort: off
# registered in the pipeline's order, which `kelpseg --help` lists
from kelpseg.cli import data, training, predicting, scenes  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover
    sys.exit(app())
