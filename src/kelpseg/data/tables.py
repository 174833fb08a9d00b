"""Fingerprints of the pipeline tables: reuse a table only while its inputs and config match.

Every table a stage writes (``tile_stats.csv`` + ``band_stats.json``, ``groups.csv``,
``splits.csv``) gets an entry in the sidecar ``OUT/tables.json``: a hash of the input files
(path, size and modification time of every tile and mask) and the config keys the table
depends on. A stage reuses its table when both match and otherwise recomputes it, saying why.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kelpseg.config import Config, flatten
from kelpseg.io import TileRef
from kelpseg.io.raster import atomic_write_text

SIDECAR = "tables.json"
# table -> (files it is made of, config sections it depends on)
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "stats": (("tile_stats.csv", "band_stats.json"), ("data",)),
    "groups": (("groups.csv",), ("data", "groups")),
    "splits": (("splits.csv",), ("data", "groups", "split")),
}
# keys that change neither a table nor a trained fold
NEUTRAL_KEYS = ("data.strict", "train.resume", "train.progress", "train.folds", "train.num_workers")


def input_fingerprint(refs: Iterable[TileRef]) -> str:
    """Hash of every tile's id, split, and the path, size and mtime of its image and mask."""
    h = hashlib.sha256()
    for r in sorted(refs, key=lambda r: r.tile_id):
        h.update(f"{r.tile_id}|{r.split}\n".encode())
        for p in (r.image, r.mask):
            if p is not None:
                st = p.stat()
                h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def config_part(cfg: Config, sections: Iterable[str]) -> dict[str, Any]:
    """The flat config keys (``groups.threshold``, ...) of ``sections``, less neutral keys."""
    prefixes = tuple(f"{s}." for s in sections)
    return {
        k: v for k, v in flatten(cfg).items() if k.startswith(prefixes) and k not in NEUTRAL_KEYS
    }


def diff_keys(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """``groups.threshold 0.2 -> 0.97, ...``: the keys whose values differ."""
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    parts = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return ", ".join(parts)


@dataclass
class Stamp:
    """What a table was made from."""

    inputs: str
    config: dict[str, Any]


def _sidecar(out: Path) -> dict[str, Any]:
    path = out / SIDECAR
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def stamp(table: str, inputs: str, cfg: Config) -> Stamp:
    """The stamp ``table`` would get from these inputs and this config."""
    return Stamp(inputs, config_part(cfg, TABLES[table][1]))


def stale_reason(out: Path, table: str, now: Stamp) -> str | None:
    """None when ``table`` in ``out`` can be reused, else why not (``"missing"`` if absent)."""
    files = TABLES[table][0]
    if not all((out / f).is_file() for f in files):
        return "missing"
    saved = _sidecar(out).get(table)
    if saved is None:
        return "no fingerprint"
    if saved.get("inputs") != now.inputs:
        return "input tiles changed"
    if saved.get("config") != now.config:
        return diff_keys(saved.get("config", {}), now.config) + " changed"
    return None


def fresh(out: Path, table: str, now: Stamp) -> bool:
    """Whether ``table`` can be reused; says on stderr why not when it exists but is stale."""
    reason = stale_reason(out, table, now)
    name = TABLES[table][0][0]
    if reason is None:
        print(f"{name} is up to date: reused", file=sys.stderr)
        return True
    if reason != "missing":
        print(f"{name} is stale ({reason}): recomputing", file=sys.stderr)
    return False


def record(out: Path, table: str, now: Stamp, **extra: Any) -> None:
    """Store ``table``'s stamp (and ``extra`` facts) in the sidecar, atomically."""
    side = _sidecar(out)
    side[table] = {"inputs": now.inputs, "config": now.config, **extra}
    atomic_write_text(out / SIDECAR, json.dumps(side, indent=2, default=str))


def saved_extra(out: Path, table: str, key: str) -> Any:
    """A fact stored with ``table`` by :func:`record` (None if absent)."""
    return _sidecar(out).get(table, {}).get(key)


def fold_config_changes(saved: dict[str, Any], cfg: Config) -> str:
    """The training-relevant keys where ``cfg`` differs from a fold's saved config dict."""
    try:
        old = flatten(Config.model_validate(saved))
    except ValueError:
        return "the saved config cannot be read"
    new = flatten(cfg)
    skip = set(NEUTRAL_KEYS)
    other = ("predict.", "xgb.")  # settings that do not change a trained network
    old = {k: v for k, v in old.items() if k not in skip and not k.startswith(other)}
    new = {k: v for k, v in new.items() if k not in skip and not k.startswith(other)}
    return diff_keys(old, new) if old != new else ""


# Settings given to a stage command by its own flags (``groups --threshold``, ``split
# --folds``) are remembered in the work folder, so that the next stage run there (``split``,
# ``train``, ``run``) uses the tables they made instead of rebuilding them with the defaults.
STAGE_FLAGS = ("groups.threshold", "groups.max_group_size", "split.folds")


def remembered_flags(
    out: Path, cfg: Config, given: dict[str, Any], explicit: Iterable[str]
) -> list[str]:
    """Apply the stage flags remembered in ``out`` to ``cfg``; remember the ones ``given``.

    Args:
        out: Work folder.
        cfg: The command's config; changed in place.
        given: Stage flags this command sets (``{"groups.threshold": 0.2}``); remembered.
        explicit: Keys this command sets with ``--set``: they win and are remembered too.

    Returns:
        One note per remembered flag applied.
    """
    side = _sidecar(out)
    memory: dict[str, Any] = side.get("flags", {})
    explicit = set(explicit)
    notes = []
    for key, value in memory.items():
        if key in given or key in explicit or key not in STAGE_FLAGS:
            continue
        section, name = key.split(".")
        if getattr(getattr(cfg, section), name) != value:
            setattr(getattr(cfg, section), name, value)
            notes.append(f"using {key}={value} remembered in {out} (override with --set {key}=...)")
    new = dict(memory)
    new.update(given)
    for key in explicit & set(STAGE_FLAGS):
        section, name = key.split(".")
        new[key] = getattr(getattr(cfg, section), name)
    if new != memory:
        side["flags"] = new
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / SIDECAR, json.dumps(side, indent=2, default=str))
    return notes
