"""``kelpseg eda``: one self-contained HTML page (plus PNGs) describing a data set.

The tables come from the pipeline itself (:func:`kelpseg.pipeline.prepare` with ``reuse``):
``tile_stats.csv``, ``band_stats.json``, ``groups.csv`` and ``splits.csv`` already in the work
folder are used as they are, missing ones are computed and left there, so the report shows
exactly what training will see.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from kelpseg.config import Config
from kelpseg.data.groups import capped_groups
from kelpseg.eda import plots, render
from kelpseg.eda.select import example_groups, flagged, sample_tiles
from kelpseg.io import TileError, TileRef, read_mask, read_tile
from kelpseg.io.raster import atomic_write_text

PAGE = "index.html"
STAT_COLUMNS = ("count", "min", "max", "median", "mean", "std", "q01", "q99")


@dataclass
class Tables:
    """What the pipeline knows about a data set.

    Attributes:
        refs: Discovered tiles by id.
        tiles: ``tile_stats.csv``: every valid tile with its stats and flags.
        bands: ``band_stats.json`` (``all`` and ``water`` pixels), None when absent.
        groups: ``groups.csv`` (training tiles), None when grouping failed.
        folds: Training tiles with their ``fold``, None when splitting failed.
        note: Why groups or folds are missing.
    """

    refs: dict[str, TileRef]
    tiles: pd.DataFrame
    bands: dict | None
    groups: pd.DataFrame | None
    folds: pd.DataFrame | None
    note: str = ""


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, dtype={"tile_id": str}) if path.is_file() else None


def load_tables(data: Path, cfg: Config, work: Path) -> Tables:
    """Run (or reuse) stats, groups and split in ``work`` and read their tables."""
    from kelpseg.pipeline import find_tiles, prepare

    note = ""
    refs = find_tiles(data, need_train=True)
    try:
        prepare(data, cfg, work, refs)
    except ValueError as err:  # e.g. fewer AOI groups than folds: report what there is
        if not (work / "tile_stats.csv").is_file():
            raise
        note = str(err)
    tiles = _read(work / "tile_stats.csv")
    bands_path = work / "band_stats.json"
    bands = json.loads(bands_path.read_text()) if bands_path.is_file() else None
    groups = _read(work / "groups.csv")
    splits = _read(work / "splits.csv")
    folds = None
    if splits is not None and not note:
        folds = tiles.merge(splits[["tile_id", "aoi", "fold"]], on="tile_id")
    return Tables(refs, tiles, bands, groups, folds, note)


def fold_summary(folds: pd.DataFrame) -> pd.DataFrame:
    """Per fold: tiles, AOIs, tiles with kelp, kelp share and other balance figures."""
    kelp = folds["has_kelp"].fillna(False).astype(bool)
    g = folds.assign(_kelp=kelp).groupby("fold")
    out = pd.DataFrame(
        {
            "tiles": g.size(),
            "AOIs": g["aoi"].nunique(),
            "tiles with kelp": g["_kelp"].sum().astype(int),
            "% tiles with kelp": (100 * g["_kelp"].mean()).round(1),
            "kelp % of pixels": g["kelp_pixels_pct"].mean().round(3),
            "almost all water": g["almost_all_water"].sum().astype(int),
        }
    )
    out.index.name = "fold"
    return out


# ---------------------------------------------------------------- HTML helpers


def _e(x: object) -> str:
    return html.escape(str(x))


def _img(src: str, alt: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<img src="{_e(src)}" alt="{_e(alt)}"{c}>'


def _number(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 or float(v).is_integer() else f"{v:.4g}"


def _table(df: pd.DataFrame, index: bool = True) -> str:
    return df.to_html(index=index, border=0, classes="t", float_format=_number)


CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
img.fig{max-width:100%;height:auto}
h1{margin-bottom:4px} h2{border-bottom:2px solid #2a7f8f;padding-bottom:3px;margin-top:32px}
nav a{margin-right:12px} .muted{color:#666;font-size:90%}
table.t{border-collapse:collapse;font-size:13px;margin:8px 0}
table.t td,table.t th{border:1px solid #ccc;padding:3px 7px;text-align:right}
table.t th{background:#eef4f5} table.grid td{text-align:center;vertical-align:top;font-size:12px}
table.grid img,table.flag img{display:block;image-rendering:pixelated}
table.flag td{text-align:left;vertical-align:top} .row{display:flex;gap:6px;flex-wrap:wrap}
.row figure{margin:0;font-size:11px;text-align:center}
.flags li{margin:2px 0} code{background:#f3f3f3;padding:0 3px}
"""

CHECK_SCRIPT = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-broken', broken.length);
  var p = document.getElementById('img-check');
  p.textContent = (imgs.length - broken.length) + ' of ' + imgs.length + ' images loaded' +
    (broken.length ? '; missing: ' + broken.map(function (i) { return i.getAttribute('src'); }).join(', ') : '');
});
</script>
"""


# ---------------------------------------------------------------- sections


def _overview(t: Tables) -> str:
    tiles = t.tiles
    kelp = tiles["has_kelp"]
    rows = []
    for split, part in tiles.groupby("split"):
        k = kelp[part.index]
        known = k.notna().any()
        rows.append(
            {
                "split": split,
                "tiles": len(part),
                "with kelp": int(k.fillna(False).astype(bool).sum()) if known else "-",
                "without kelp": int((~k.fillna(True).astype(bool)).sum()) if known else "-",
                "excluded from training": int(part.get("excluded", pd.Series(False)).sum()),
            }
        )
    n_found = len(t.refs)
    skipped = n_found - len(tiles)
    extra = f" {skipped} tile(s) failed validation and are left out." if skipped else ""
    return f"<p>{n_found} tiles found, {len(tiles)} valid.{extra}</p>" + _table(
        pd.DataFrame(rows), index=False
    )


def _band_tables(t: Tables) -> str:
    if not t.bands:
        return "<p>band_stats.json is missing.</p>"
    parts = []
    for key, title in (("all", "all valid pixels"), ("water", "water pixels only")):
        if key in t.bands:
            df = pd.DataFrame(t.bands[key]).T.reindex(columns=list(STAT_COLUMNS))
            parts.append(f"<h3>{_e(title)}</h3>{_table(df)}")
    return "".join(parts) + '<p class="muted">Digital numbers as stored (-32768 excluded).</p>'


def _sample_grid(samples: list[tuple[str, str]], panels: dict[str, dict[str, str]]) -> str:
    if not samples:
        return "<p>No tiles to show.</p>"
    names = render.PANELS
    head = "<tr><th>tile</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
    body = []
    for label, tid in samples:
        cells = []
        for n in names:
            src = panels[tid].get(n)
            cells.append(f"<td>{_img(src, f'{tid} {n}') if src else 'no mask (test tile)'}</td>")
        body.append(f"<tr><td><b>{_e(label)}</b><br>{_e(tid)}</td>{''.join(cells)}</tr>")
    legend = (
        '<p class="muted">Composites are stretched per band to the tile\'s q01-q99 over clear '
        "water pixels, so water detail shows and land saturates; magenta = missing pixels. "
        "Mask outline in yellow on the false colour composite.</p>"
    )
    return legend + f'<table class="t grid">{head}{"".join(body)}</table>'


def _groups_section(t: Tables, examples: list[list[str]], thumbs: dict[str, str]) -> str:
    if t.groups is None:
        return f"<p>No AOI groups: {_e(t.note)}</p>"
    g = t.groups
    featureless = int(g["featureless"].astype(bool).sum())
    sizes = g.groupby("aoi").size()
    capped = capped_groups(g)
    parts = [
        f"<p>{len(g)} training tiles in {len(sizes)} AOI groups; largest {sizes.max()} tiles, "
        f"{int((sizes == 1).sum())} single-tile groups. {featureless} tiles show no coast in "
        "the known part of their DEM and share one all-water group"
        + (", cut into chunks by <code>groups.max_group_size</code>" if capped else "")
        + ".</p>",
        _img("img/group_sizes.png", "group sizes", "fig"),
        "<h3>Largest groups, side by side</h3>"
        '<p class="muted">False colour with the DEM coastline (orange) and the mask outline '
        "(yellow): the same coast on different dates.</p>",
    ]
    for members in examples:
        aoi = g.loc[g["tile_id"] == members[0], "aoi"].iloc[0]
        figs = "".join(
            f"<figure>{_img(thumbs[m], m)}<figcaption>{_e(m)}</figcaption></figure>"
            for m in members
        )
        parts.append(f'<p>AOI {aoi} ({int(sizes[aoi])} tiles)</p><div class="row">{figs}</div>')
    return "".join(parts)


def _folds_section(t: Tables) -> str:
    if t.folds is None:
        return f"<p>No split: {_e(t.note or 'splits.csv is missing')}</p>"
    summary = fold_summary(t.folds)
    return (
        _table(summary)
        + _img("img/folds.png", "tiles per fold", "fig")
        + '<p class="muted">Stratified grouped K-fold: no AOI group lies in two folds.</p>'
    )


def _flagged_section(flags: pd.DataFrame, thumbs: dict[str, str]) -> str:
    if flags.empty:
        return "<p>No tile is flagged.</p>"
    counts = flags["reasons"].explode().str.split(":| \\(| by", regex=True).str[0].value_counts()
    summary = ", ".join(f"{_e(k)}: {v}" for k, v in counts.items())
    rows = []
    for _, r in flags.iterrows():
        reasons = "".join(f"<li>{_e(x)}</li>" for x in r["reasons"])
        rows.append(
            f"<tr><td>{_img(thumbs[r['tile_id']], r['tile_id'])}</td>"
            f"<td><b>{_e(r['tile_id'])}</b><br>{_e(r['split'])}</td>"
            f'<td><ul class="flags">{reasons}</ul></td></tr>'
        )
    return (
        f"<p>{len(flags)} flagged tiles ({summary}).</p>"
        '<table class="t flag"><tr><th>thumbnail</th><th>tile</th><th>reasons</th></tr>'
        + "".join(rows)
        + "</table>"
    )


# ---------------------------------------------------------------- assembly


def _render_tiles(
    t: Tables,
    out: Path,
    sample_ids: list[str],
    thumb_ids: list[str],
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Write the sample panels and thumbnails; returns their relative paths."""
    panels: dict[str, dict[str, str]] = {}
    thumbs: dict[str, str] = {}
    todo = list(dict.fromkeys(sample_ids + thumb_ids))
    for tid in tqdm(todo, desc="eda images", leave=False):
        ref = t.refs[tid]
        try:
            raw = read_tile(ref.image)
            mask = read_mask(ref.mask, raw.shape[1:]) if ref.mask is not None else None
        except TileError:
            continue
        if tid in sample_ids:
            panels[tid] = {}
            for k, (name, rgb) in enumerate(render.tile_panels(raw, mask).items()):
                if rgb is not None:
                    rel = f"img/sample/{tid}_{k}.png"
                    render.save_png(rgb, out / rel)
                    panels[tid][name] = rel
        if tid in thumb_ids:
            rel = f"img/thumb/{tid}.png"
            render.save_png(render.thumbnail(raw, mask), out / rel)
            thumbs[tid] = rel
    return panels, thumbs


def build_report(
    data: Path, out: Path, cfg: Config, *, work: Path | None = None, samples: int = 16
) -> Path:
    """Write the EDA page ``out/index.html`` and its images.

    Args:
        data: Dataset folder (tiles found by suffix).
        out: Report folder.
        cfg: Pipeline config (stats, groups and split settings).
        work: Folder of the pipeline tables to reuse or create (default ``out``).
        samples: Rows of the sample-tile grid.

    Returns:
        The page's path.
    """
    out = Path(out)
    work = Path(work) if work is not None else out
    out.mkdir(parents=True, exist_ok=True)
    t = load_tables(Path(data), cfg, work)
    steps = tqdm(total=4, desc="eda", leave=False)
    plots.distributions(t.tiles, out / "img/distributions.png")
    if t.groups is not None:
        plots.group_sizes(t.groups, out / "img/group_sizes.png")
    if t.folds is not None:
        plots.folds(fold_summary(t.folds), out / "img/folds.png")
    steps.update()
    chosen = sample_tiles(t.tiles, samples)
    examples = example_groups(t.groups) if t.groups is not None else []
    flags = flagged(t.tiles)
    thumb_ids = [m for members in examples for m in members] + flags["tile_id"].tolist()
    panels, thumbs = _render_tiles(t, out, [tid for _, tid in chosen], thumb_ids)
    steps.update()
    chosen = [(label, tid) for label, tid in chosen if tid in panels]
    examples = [[m for m in members if m in thumbs] for members in examples]
    flags = flags[flags["tile_id"].isin(thumbs)]
    sections = [
        ("overview", "Tiles", _overview(t)),
        ("bands", "Per-band statistics", _band_tables(t)),
        (
            "distributions",
            "Distributions",
            _img("img/distributions.png", "per-tile distributions", "fig"),
        ),
        ("samples", "Sample tiles", _sample_grid(chosen, panels)),
        ("groups", "AOI groups", _groups_section(t, examples, thumbs)),
        ("folds", "Folds", _folds_section(t)),
        ("flagged", "Flagged tiles", _flagged_section(flags, thumbs)),
    ]
    steps.update()
    nav = " ".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<h2 id="{sid}">{_e(title)}</h2>{content}' for sid, title, content in sections)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>kelpseg EDA: {_e(Path(data).name)}</title><style>{CSS}</style></head><body>"
        f"<h1>kelpseg EDA: {_e(Path(data).resolve())}</h1>"
        f'<p class="muted">tables in {_e(work.resolve())} &middot; '
        f'<span id="img-check">images not checked (scripts off)</span></p><nav>{nav}</nav>{body}{CHECK_SCRIPT}</body></html>'
    )
    path = atomic_write_text(out / PAGE, page)
    steps.update()
    steps.close()
    return path
