"""Finding tiles on disk by their suffix, whatever the folders are called.

The competition ships ``train_satellite/{id}_satellite.tif``, ``train_kelp/{id}_kelp.tif``,
``test_satellite/...`` and ``metadata_fTq0l2T.csv``; other people re-arrange them into
``train/images`` and ``train/masks``. Tiles are matched to masks by tile id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kelpseg.io.errors import InputError

SAT_SUFFIX = "_satellite.tif"
KELP_SUFFIX = "_kelp.tif"
PROBA_SUFFIX = "_proba.tif"
OUTPUT_SUFFIXES = (KELP_SUFFIX, PROBA_SUFFIX)
"""Names ``kelpseg predict`` writes: never read back as inputs from a folder."""
METADATA_NAME = "metadata_fTq0l2T.csv"


@dataclass(frozen=True)
class TileRef:
    """One tile on disk: its id, image, mask (if any) and split ('train' or 'test')."""

    tile_id: str
    image: Path
    mask: Path | None
    split: str


def _tile_id(path: Path, suffix: str) -> str:
    return path.name[: -len(suffix)]


def _metadata_split(root: Path) -> dict[str, str]:
    files = sorted(root.rglob(METADATA_NAME))
    if not files:
        return {}
    meta = pd.read_csv(files[0])
    if not {"tile_id", "in_train"} <= set(meta.columns):
        return {}
    in_train = meta["in_train"].astype(str).str.lower().isin(("true", "1"))
    return dict(
        zip(meta["tile_id"].astype(str), in_train.map({True: "train", False: "test"}), strict=True)
    )


def discover(root: str | Path) -> list[TileRef]:
    """All tiles under ``root``, sorted by tile id.

    The split comes from the metadata CSV when present; otherwise a tile with a mask is
    'train' and one without is 'test'. Masks whose tile is missing are ignored here (the
    data-quality stage reports them).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    images = {_tile_id(p, SAT_SUFFIX): p for p in sorted(root.rglob(f"*{SAT_SUFFIX}"))}
    masks = {_tile_id(p, KELP_SUFFIX): p for p in sorted(root.rglob(f"*{KELP_SUFFIX}"))}
    split = _metadata_split(root)
    refs = []
    for tile_id in sorted(images):
        mask = masks.get(tile_id)
        default = "train" if mask is not None else "test"
        refs.append(TileRef(tile_id, images[tile_id], mask, split.get(tile_id, default)))
    return refs


def orphan_masks(root: str | Path) -> list[Path]:
    """Masks under ``root`` that have no satellite tile."""
    root = Path(root)
    images = {_tile_id(p, SAT_SUFFIX) for p in root.rglob(f"*{SAT_SUFFIX}")}
    return [
        p for p in sorted(root.rglob(f"*{KELP_SUFFIX}")) if _tile_id(p, KELP_SUFFIX) not in images
    ]


def find_images(paths: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """``(tile_id, path)`` for files and folders given to ``predict``.

    Folders contribute their ``*_satellite.tif`` files (or, when they hold none, every
    ``*.tif`` that is not an output of ``predict``: ``*_kelp.tif`` and ``*_proba.tif`` are
    skipped, so predicting into an input folder is safe to repeat). A file's id is its name
    without ``_satellite.tif`` / ``.tif``. A file reached twice is used once.

    Raises:
        InputError: a path that does not exist, a checkpoint given as a tile, or two different
            files with the same tile id (they would write one output).
    """
    found: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: not found")
        if p.is_dir():
            files = sorted(p.rglob(f"*{SAT_SUFFIX}")) or sorted(
                f for f in p.rglob("*.tif") if not f.name.endswith(OUTPUT_SUFFIXES)
            )
        elif p.suffix.lower() in (".ckpt", ".pt", ".pth"):
            raise InputError(
                f"{p}: a checkpoint among the tiles; predict takes one checkpoint, then tiles"
            )
        else:
            files = [p]
        for f in files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            tid = _tile_id(f, SAT_SUFFIX) if f.name.endswith(SAT_SUFFIX) else f.stem
            found.append((tid, f))
    dups = duplicate_ids(found)
    if dups:
        raise InputError(dups)
    return found


def duplicate_ids(items: Iterable[tuple[str, Path]]) -> str | None:
    """A message naming the files when two inputs share a tile id (one output name), else None."""
    first: dict[str, Path] = {}
    clashes = []
    for tid, path in items:
        if tid in first and Path(first[tid]).resolve() != Path(path).resolve():
            clashes.append(f"{first[tid]} and {path} (id {tid})")
        first.setdefault(tid, path)
    if not clashes:
        return None
    more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
    return (
        "inputs with the same file name would write one output: "
        + "; ".join(clashes[:3])
        + more
        + "; predict them into separate --out folders"
    )
