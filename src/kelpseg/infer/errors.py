"""Errors of prediction, each naming the file or setting and the problem in one line.

Kept free of heavy imports so that the command line can catch them without loading torch.
"""

from __future__ import annotations


class PredictionError(ValueError):
    """Members or settings that cannot predict."""


class CheckpointError(PredictionError):
    """A checkpoint that cannot be used for prediction, with the file and the problem named."""


class EnsembleError(PredictionError):
    """An ensemble that cannot be built (e.g. weights that do not fit the members)."""


class AssembleError(PredictionError):
    """Members and settings that cannot be assembled (no member, a bad threshold...)."""


class RunFolderError(PredictionError):
    """A run folder that cannot be used, the folder and the problem named."""
