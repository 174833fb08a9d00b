"""Pictures of a study as PNG files (optuna.visualization.matplotlib: offline, no kaleido)."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import optuna
from optuna.visualization import matplotlib as ovm

from kelpseg.eda.plots import plt, save_figure

PLOTS = {
    "parallel_coordinate.png": ovm.plot_parallel_coordinate,
    "param_importances.png": ovm.plot_param_importances,
    "optimization_history.png": ovm.plot_optimization_history,
}


def write_plots(study: optuna.Study, out: Path) -> tuple[list[Path], list[str]]:
    """Write the plots into ``out``; returns ``(written, reasons for the skipped ones)``."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    written, skipped = [], []
    for name, plot in PLOTS.items():
        if not complete:
            skipped.append(f"{name}: no complete trial")
            continue
        if plot is ovm.plot_param_importances and len(complete) < 2:
            skipped.append(f"{name}: needs 2 complete trials, have {len(complete)}")
            continue
        # optuna calls plt.style.use("ggplot"): keep it from restyling every later figure of
        # the process (a map's quick-look rendered after a study would differ)
        with plt.style.context("default"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # ExperimentalWarning of the backend
                    ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError) as err:
                skipped.append(f"{name}: {err}")
                continue
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(max(8.0, fig.get_figwidth()), max(5.0, fig.get_figheight()))
            fig.tight_layout()
            written.append(save_figure(fig, out / name, dpi=100))
    return written, skipped
