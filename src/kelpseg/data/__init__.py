"""Data stages: quality stats, AOI grouping, splits, the packed cache and datasets."""
