"""Per-file errors and the end-of-batch summary: bad input never stops a batch."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): library
    errors (GDAL, onnxruntime, torch) can run over many lines."""
    text = str(err)
    return text.splitlines()[0] if text.strip() else type(err).__name__


class TileError(ValueError):
    """A file that cannot be used, with the file and the problem named."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class InputError(ValueError):
    """A command-line input that cannot be used at all (missing, or of the wrong kind)."""


class NothingValidError(RuntimeError):
    """Raised when a stage has no valid input left to work on."""


@dataclass
class BatchReport:
    """Collects per-file problems during a stage and prints one summary at the end."""

    stage: str
    ok: int = 0
    errors: list[TileError] = field(default_factory=list)

    def add(self, err: TileError, *, echo: bool = True) -> None:
        """Record a problem (and print it at once, so a long batch shows it early)."""
        self.errors.append(err)
        if echo:
            print(f"[{self.stage}] skipped {err}", file=sys.stderr)

    def summary(self) -> str:
        """One line: how many files were used and how many were skipped."""
        line = f"[{self.stage}] {self.ok} ok, {len(self.errors)} skipped"
        if self.errors:
            line += "; problems: " + "; ".join(str(e) for e in self.errors[:10])
            if len(self.errors) > 10:
                line += f"; ... and {len(self.errors) - 10} more"
        return line

    def finish(self, *, strict: bool = False) -> None:
        """Print the summary; raise when nothing valid is left, or on any problem if strict."""
        print(self.summary(), file=sys.stderr)
        if self.ok == 0 and self.errors:
            raise NothingValidError(f"{self.stage}: no valid input left ({len(self.errors)} bad)")
        if strict and self.errors:
            raise NothingValidError(f"{self.stage}: {len(self.errors)} bad file(s) and --strict")
