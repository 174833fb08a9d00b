"""Which tiles and groups the EDA report shows, and why each flagged tile is flagged."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from kelpseg.data.quality import FLAG_COLUMNS


def _flag(tiles: pd.DataFrame, col: str) -> pd.Series:
    if col not in tiles:
        return pd.Series(False, index=tiles.index)
    return tiles[col].fillna(False).astype(bool)


def _num(tiles: pd.DataFrame, col: str) -> pd.Series:
    if col not in tiles:
        return pd.Series(0.0, index=tiles.index)
    return pd.to_numeric(tiles[col], errors="coerce").fillna(0.0)


def reasons(row: pd.Series) -> list[str]:
    """Why a ``tile_stats`` row is flagged, most serious first (empty when it is not)."""

    def on(col: str) -> bool:
        v = row.get(col, False)
        return bool(v) if not pd.isna(v) else False

    out = []
    if on("mask_suspect"):
        out.append(f"suspect mask: {str(row.get('mask_suspect_reason', '')).replace(';', ', ')}")
    if on("high_corrupted_pixels_pct"):
        out.append(
            f"heavy corruption: {row.get('corrupted_pixels_pct', 0):.0f} % cloudy or missing"
        )
    if on("dem_shifted"):
        out.append(
            f"DEM shifted by ({int(row['dem_shift_x'])}, {int(row['dem_shift_y'])}) px, "
            f"confidence {row['dem_shift_confidence']:.2f}"
        )
    if on("saturated"):
        out.append(f"saturated: {int(row.get('saturated_pixels', 0))} px")
    if on("striped"):
        out.append(f"Landsat-7 SLC-off stripes ({row.get('missing_pixels_pct', 0):.0f} % missing)")
    if on("all_land"):
        out.append("all land")
    if on("almost_all_water"):
        out.append(f"almost all water ({row.get('water_pixels_pct', 0):.1f} %)")
    return out


def flagged(tiles: pd.DataFrame) -> pd.DataFrame:
    """Tiles with any flag of :data:`FLAG_COLUMNS`, most serious first, with ``reasons``."""
    any_flag = pd.Series(False, index=tiles.index)
    for col in FLAG_COLUMNS:
        any_flag |= _flag(tiles, col)
    out = tiles[any_flag].copy()
    out["reasons"] = [reasons(r) for _, r in out.iterrows()]
    severity = {"suspect": 0, "heavy": 1, "DEM": 2, "saturated": 3, "Landsat-7": 4, "all": 5}
    out["_rank"] = [severity.get(r[0].split()[0].rstrip(":"), 6) for r in out["reasons"]]
    return out.sort_values(["_rank", "tile_id"]).drop(columns="_rank")


Rule = tuple[str, Callable[[pd.DataFrame], pd.Series], Callable[[pd.DataFrame], pd.Series]]


def _rules(tiles: pd.DataFrame) -> list[Rule]:
    train = (tiles["split"] == "train") & ~_flag(tiles, "mask_suspect")
    kelp = _flag(tiles, "has_kelp")
    heavy = _flag(tiles, "high_corrupted_pixels_pct")
    rules: list[Rule] = [
        ("kelp, most canopy", lambda t: train & kelp, lambda t: -_num(t, "kelp_pixels_pct")),
        ("kelp, little canopy", lambda t: train & kelp, lambda t: _num(t, "kelp_pixels_pct")),
        (
            "coast without kelp",
            lambda t: train & ~kelp & _num(t, "water_pixels_pct").between(20, 90),
            lambda t: _num(t, "corrupted_pixels_pct"),
        ),
    ]
    for reason in sorted(
        {r for v in tiles.get("mask_suspect_reason", pd.Series(dtype=str)).dropna()
         for r in str(v).split(";") if r}
    ):  # fmt: skip
        rules.append(
            (
                f"suspect mask ({reason})",
                lambda t, r=reason: t["mask_suspect_reason"].fillna("").str.contains(r),
                lambda t: -_num(t, "kelp_pixels_pct"),
            )
        )
    rules += [
        ("DEM shifted", lambda t: _flag(t, "dem_shifted"), lambda t: -_num(t, "dem_shift_confidence")),
        ("heavy corruption", lambda t: heavy, lambda t: -_num(t, "corrupted_pixels_pct")),
        (
            "cloudy",
            lambda t: ~heavy & (_num(t, "qa_corrupted_pixels_pct") > 5),
            lambda t: -_num(t, "qa_corrupted_pixels_pct"),
        ),
        ("Landsat-7 stripes", lambda t: _flag(t, "striped"), lambda t: _num(t, "missing_pixels_pct")),
        ("saturated", lambda t: _flag(t, "saturated"), lambda t: -_num(t, "saturated_pixels")),
        ("almost all water", lambda t: _flag(t, "almost_all_water"), lambda t: _num(t, "water_pixels_pct")),
        ("all land", lambda t: _flag(t, "all_land"), lambda t: _num(t, "corrupted_pixels_pct")),
        ("test tile", lambda t: t["split"] == "test", lambda t: _num(t, "corrupted_pixels_pct")),
    ]  # fmt: skip
    return rules


def sample_tiles(tiles: pd.DataFrame, limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` ``(label, tile_id)`` pairs: one tile of each kind and each flag.

    Each rule picks the best not-yet-shown tile (deterministic: by its score, then tile id).
    """
    chosen: list[tuple[str, str]] = []
    seen: set[str] = set()
    for label, where, score in _rules(tiles):
        if len(chosen) >= limit:
            break
        cand = tiles[where(tiles) & ~tiles["tile_id"].isin(seen)]
        if cand.empty:
            continue
        order = cand.assign(_s=score(cand)).sort_values(["_s", "tile_id"])
        tid = str(order["tile_id"].iloc[0])
        chosen.append((label, tid))
        seen.add(tid)
    return chosen


def example_groups(groups: pd.DataFrame, n: int = 3, members: int = 6) -> list[list[str]]:
    """Tile ids of the ``n`` largest groups with DEM information (up to ``members`` each)."""
    g = groups[~groups["featureless"].astype(bool)]
    sizes = g.groupby("aoi").size()
    sizes = sizes[sizes > 1].sort_values(ascending=False, kind="stable")
    return [
        sorted(g.loc[g["aoi"] == aoi, "tile_id"].astype(str))[:members] for aoi in sizes.index[:n]
    ]
