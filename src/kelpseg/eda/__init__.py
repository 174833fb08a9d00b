"""Exploratory data analysis: the ``kelpseg eda`` HTML report (composites, stats, groups,
folds and every flagged tile)."""

from kelpseg.eda.report import build_report, fold_summary, load_tables

__all__ = ["build_report", "fold_summary", "load_tables"]
