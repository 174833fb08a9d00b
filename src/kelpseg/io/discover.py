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

SAT_SUFFIX = "_satellite.tif"
KELP_SUFFIX = "_kelp.tif"
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

    Folders contribute their ``*_satellite.tif`` files (or every ``*.tif`` when they hold
    none); a file's id is its name without ``_satellite.tif`` / ``.tif``.
    """
    found: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(p.rglob(f"*{SAT_SUFFIX}")) or sorted(
                f for f in p.rglob("*.tif") if not f.name.endswith(KELP_SUFFIX)
            )
        else:
            files = [p]
        for f in files:
            tid = _tile_id(f, SAT_SUFFIX) if f.name.endswith(SAT_SUFFIX) else f.stem
            found.append((tid, f))
    return found
