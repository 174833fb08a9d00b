"""Local STAC Items, Collections and Catalogs -> the scenes their assets hold.

An Item whose assets are Landsat Collection 2 Level-2 files (keys ``blue``, ``green``, ``red``,
``nir08``, ``swir16``, ``qa_pixel`` as USGS, Planetary Computer and Earth Search name them;
``SR_B*`` / ``QA_PIXEL`` keys; or any keys whose ``eo:bands`` / ``bands`` common names say
what they are) is stacked like a scene folder. HLS items (LP DAAC: ``B02``... ``Fmask``) go to
the HLS reader, Sentinel-2 L2A items (``B02``... ``B8A``, ``B11``, ``SCL`` as Planetary Computer,
or ``blue``... ``nir08``, ``swir16``, ``scl`` as Earth Search) to the Sentinel-2 reader, with the
reflectance scale and offset from ``raster:bands`` or else ``s2:processing_baseline``.

Catalogs and Collections are followed through their ``child`` and ``item`` links, recursively;
hrefs may be relative or absolute. kelpseg reads **local** files only: a remote href (http,
s3...) of a needed asset or link is an error naming the file, never a download attempt.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from kelpseg.io.errors import TileError, first_line
from kelpseg.io.hls import FMASK, HLS_BANDS, HlsError, HlsGranule, granule_from_files, parse_name
from kelpseg.io.landsat import SENSOR_BANDS, LandsatFiles, SceneError
from kelpseg.io.sentinel2 import S2_BANDS, S2Files, baseline_at_least

LANDSAT_ROLES: dict[str, tuple[str, ...]] = {
    "swir1": ("swir16", "swir1"),
    "nir": ("nir08", "nir"),
    "red": ("red",),
    "green": ("green",),
    "blue": ("blue",),
}
"""Asset keys / common names of each model band in a Landsat item."""
S2_ROLES: dict[str, tuple[str, ...]] = {
    "B11": ("b11", "swir16"),
    "B8A": ("b8a", "nir08"),
    "B04": ("b04", "red"),
    "B03": ("b03", "green"),
    "B02": ("b02", "blue"),
    "SCL": ("scl",),
}
"""Asset keys / common names of the bands a Sentinel-2 L2A item needs (``nir`` is B08, the
broad NIR band, and is not used)."""
_MODEL = ("swir1", "nir", "red", "green", "blue")
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|/vsi)", re.IGNORECASE)
_PID = re.compile(r"^(?P<pid>L[CEOT]0\d_L2\w\w_(?P<pr>\d{6})_\d{8}_\d{8}_\d\d_\w\w)_", re.I)
_LANDSAT_ID = re.compile(r"^L(?P<s>[CEOT])0(?P<n>\d)_\w{4}_(?P<pr>\d{6})_", re.IGNORECASE)
_MGRS = re.compile(r"(?:^|[_.])T?(\d{2}[A-Z]{3})(?:[_.]|$)")
STAC_TYPES = ("Feature", "Catalog", "Collection")


class StacError(SceneError):
    """A STAC file (or an asset it names) that cannot be used, named with the problem."""


@dataclass(frozen=True)
class StacScene:
    """One scene a STAC Item describes, resolved to local files.

    Attributes:
        item: The Item's JSON file.
        item_id: The Item's id.
        kind: ``landsat``, ``hls`` or ``sentinel2``: which reader stacks it.
        scene_id: The product id (Landsat: from the file names, as a scene folder's; else the
            item id or ``s2:product_uri``).
        sensor: ``LANDSAT_8``, ``HLS_L30``, ``SENTINEL_2A``...
        date: Acquisition date (``datetime``, else ``start_datetime``).
        footprint: WRS-2 ``PPPRRR`` or MGRS ``T11SKU``; None when the item does not say.
        product: What the reader needs: :class:`LandsatFiles`, :class:`HlsGranule` or
            :class:`S2Files`.
        tags: Extra tags for the stacked raster.
    """

    item: Path
    item_id: str
    kind: str
    scene_id: str
    sensor: str
    date: dt.date
    footprint: str | None
    product: LandsatFiles | HlsGranule | S2Files
    tags: tuple[tuple[str, str], ...] = ()


def is_remote(href: str) -> bool:
    """Whether an href names something that is not a local file (http, s3, /vsicurl/...)."""
    return bool(_REMOTE.match(href)) and not href.lower().startswith("file://")


def local_path(href: str) -> Path:
    """A local href (a path or ``file://`` URL) as a path."""
    if href.lower().startswith("file://"):
        return Path(unquote(urlparse(href).path))
    return Path(href)


def stac_type(path: Path) -> str | None:
    """``Feature``, ``Catalog`` or ``Collection`` when ``path`` is a STAC JSON file, else
    None (not JSON, not an object, no ``stac_version``)."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
            if "stac_version" not in head and '"type"' not in head:
                return None
            data = json.loads(head + f.read())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or "stac_version" not in data:
        return None
    kind = data.get("type")
    return kind if kind in STAC_TYPES else None


def _read(path: Path):
    import pystac

    try:
        return pystac.read_file(str(path))
    except Exception as err:  # pystac raises many kinds (STACTypeError, KeyError, OSError...)
        raise StacError(path, f"not a readable STAC file: {first_line(err)}") from err


def read_stac(
    path: Path, visited: set[Path] | None = None
) -> tuple[list[StacScene], list[TileError]]:
    """The scenes of a local STAC Item, Collection or Catalog file, following ``child`` and
    ``item`` links recursively.

    Every broken piece (an unreadable file, a remote link or asset, an item missing a band)
    is one :class:`StacError` naming the file; the rest is still returned. ``visited``
    (resolved paths) is shared by callers that reach one item from several places.
    """
    import pystac

    visited = set() if visited is None else visited
    scenes: list[StacScene] = []
    errors: list[TileError] = []
    stack = [Path(path)]
    while stack:
        p = stack.pop()
        key = p.resolve()
        if key in visited:
            continue
        visited.add(key)
        try:
            obj = _read(p)
        except StacError as err:
            errors.append(err)
            continue
        if isinstance(obj, pystac.Item):
            try:
                scenes.append(item_scene(obj, p))
            except TileError as err:
                errors.append(err)
            continue
        children = []
        for link in obj.links:
            if link.rel not in ("child", "item"):
                continue
            href = link.get_absolute_href() or link.href
            if is_remote(href):
                errors.append(
                    StacError(p, f"{link.rel} link {href} is remote: kelpseg reads local files")
                )
                continue
            target = local_path(href)
            if not target.is_file():
                errors.append(StacError(target, f"not found (a {link.rel} of {p.name})"))
                continue
            children.append(target)
        stack.extend(reversed(children))
    scenes.sort(key=lambda s: str(s.item))
    return scenes, errors


def _common_names(asset: Any) -> list[str]:
    names = []
    for band in asset.extra_fields.get("eo:bands", []) or []:
        if isinstance(band, dict):
            names += [band.get("common_name"), band.get("name")]
    for band in asset.extra_fields.get("bands", []) or []:
        if isinstance(band, dict):
            names += [band.get("eo:common_name"), band.get("name")]
    return [str(n).lower() for n in names if n]


def _find(assets: dict[str, Any], names: tuple[str, ...]) -> str | None:
    """The key of the asset named (by key, then by common name) by one of ``names``."""
    lower = {k.lower(): k for k in assets}
    for n in names:
        if n in lower:
            return lower[n]
    for n in names:
        for key, asset in assets.items():
            if n in _common_names(asset):
                return key
    return None


def _asset_path(item: Any, key: str, where: Path) -> Path:
    href = item.assets[key].get_absolute_href() or item.assets[key].href
    if is_remote(href):
        raise StacError(
            where,
            f"asset {key!r} is remote ({href}): kelpseg reads local files; download the assets "
            "and point the item's hrefs at them",
        )
    p = local_path(href)
    if not p.is_file():
        raise StacError(p, f"not found (asset {key!r} of item {item.id})")
    return p


def _date(item: Any, where: Path) -> dt.date:
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise StacError(where, "no datetime nor start_datetime")
    return when.date()


def _platform(item: Any) -> str:
    return str(item.properties.get("platform") or "").lower()


def item_kind(item: Any) -> str | None:
    """``landsat``, ``hls`` or ``sentinel2`` from the item's id, collection, platform and
    asset file names; None when it is none of them."""
    ident = item.id
    coll = (item.collection_id or "").lower()
    if (
        ident.upper().startswith("HLS.")
        or coll.startswith("hls")
        or any(parse_name(Path(a.href).name) for a in item.assets.values())
    ):
        return "hls"
    plat = _platform(item)
    if plat.startswith("sentinel-2") or "sentinel-2" in coll or re.match(r"^S2[ABC]_", ident):
        return "sentinel2"
    if plat.startswith("landsat") or "landsat" in coll or _LANDSAT_ID.match(ident):
        return "landsat"
    return None


def _landsat_sensor(item: Any) -> str:
    plat = _platform(item)
    m = re.match(r"landsat[-_ ]?(\d)", plat)
    if m:
        return f"LANDSAT_{m[1]}"
    m2 = _LANDSAT_ID.match(item.id)
    return f"LANDSAT_{m2['n']}" if m2 else ""


def _landsat(item: Any, where: Path) -> StacScene:
    sensor = _landsat_sensor(item)
    assets = dict(item.assets)
    keys: list[str] = []
    for role in _MODEL:
        key = _find(assets, LANDSAT_ROLES[role])
        if key is None and sensor in SENSOR_BANDS:  # SR_B{n} keys or band names
            n = SENSOR_BANDS[sensor][_MODEL.index(role)]
            key = _find(assets, (f"sr_b{n}", f"sr_b{n}.tif"))
        if key is None:
            raise StacError(
                where,
                f"item {item.id} has no {role} asset (looked for keys or common names "
                f"{', '.join(LANDSAT_ROLES[role])})",
            )
        keys.append(key)
    qa = _find(assets, ("qa_pixel", "qa_pixel.tif", "qa"))
    if qa is None:
        raise StacError(where, f"item {item.id} has no qa_pixel asset")
    if sensor not in SENSOR_BANDS:
        raise StacError(where, f"item {item.id}: unknown Landsat platform {_platform(item)!r}")
    bands = tuple(_asset_path(item, k, where) for k in keys)
    qa_path = _asset_path(item, qa, where)
    m = _PID.match(qa_path.name)
    scene_id = m["pid"] if m else item.id
    wp, wr = item.properties.get("landsat:wrs_path"), item.properties.get("landsat:wrs_row")
    if wp is not None and wr is not None:
        footprint: str | None = f"{int(wp):03d}{int(wr):03d}"
    else:
        mid = _LANDSAT_ID.match(item.id) or (m and _LANDSAT_ID.match(m["pid"]))
        footprint = mid["pr"] if mid else None
    return StacScene(
        item=where,
        item_id=item.id,
        kind="landsat",
        scene_id=scene_id,
        sensor=sensor,
        date=_date(item, where),
        footprint=footprint,
        product=LandsatFiles(bands=bands, qa=qa_path, labels=tuple(keys)),
    )


def _hls(item: Any, where: Path) -> StacScene:
    names = (parse_name(Path(a.href).name) for a in item.assets.values())
    gid = next((n["gid"] for n in names if n), item.id)
    parts = parse_name(f"{gid}.{FMASK}.tif")
    if parts is None:
        raise StacError(where, f"item {item.id}: no HLS granule id in its id or asset names")
    by_band: dict[str, str] = {}
    for key, asset in item.assets.items():
        n = parse_name(Path(asset.href).name)
        band = n["band"] if n else key
        by_band[FMASK if band.lower() == FMASK.lower() else band.upper()] = key
    wanted = (*HLS_BANDS[parts["product"]], FMASK)
    files: dict[str, Path] = {}
    for band in wanted:
        key = by_band.get(band)
        if key is None:
            raise StacError(
                where,
                f"item {item.id} has no {band} asset (HLS {parts['product']} needs "
                f"{', '.join(wanted)})",
            )
        files[band] = _asset_path(item, key, where)
    try:
        granule = granule_from_files(files, files[FMASK].parent, gid)
    except HlsError as err:
        raise StacError(where, f"item {item.id}: {err.problem}") from err
    return StacScene(
        item=where,
        item_id=item.id,
        kind="hls",
        scene_id=granule.granule_id,
        sensor=granule.sensor,
        date=granule.date,
        footprint=granule.tile,
        product=granule,
    )


def _raster_band(asset: Any) -> dict[str, Any]:
    for name in ("raster:bands", "bands"):
        bands = asset.extra_fields.get(name)
        if isinstance(bands, list) and bands and isinstance(bands[0], dict):
            return bands[0]
    return {}


def _sentinel2(item: Any, where: Path) -> StacScene:
    assets = dict(item.assets)
    paths: dict[str, Path] = {}
    scale: list[float] = []
    offset: list[float] = []
    baseline = str(item.properties.get("s2:processing_baseline") or "")
    for band in (*S2_BANDS, "SCL"):
        key = _find(assets, S2_ROLES[band])
        if key is None:
            raise StacError(
                where,
                f"item {item.id} has no {band} asset (looked for {', '.join(S2_ROLES[band])})",
            )
        paths[band] = _asset_path(item, key, where)
        if band == "SCL":
            continue
        rb = _raster_band(assets[key])
        if "scale" in rb or "offset" in rb:
            scale.append(float(rb.get("scale", 1.0)))
            offset.append(float(rb.get("offset", 0.0)))
        elif baseline:
            scale.append(1e-4)
            offset.append(-0.1 if baseline_at_least(baseline, 4) else 0.0)
        else:
            raise StacError(
                where,
                f"item {item.id}: neither raster:bands scale/offset nor s2:processing_baseline "
                "says how to turn its DN into reflectance",
            )
    plat = _platform(item)
    sensor = plat.upper().replace("-", "_") if plat else "SENTINEL_2"
    uri = str(item.properties.get("s2:product_uri") or "")
    scene_id = uri.removesuffix(".SAFE") or item.id
    tile = item.properties.get("s2:mgrs_tile")
    if not tile:
        z = item.properties.get("mgrs:utm_zone")
        lb = item.properties.get("mgrs:latitude_band")
        sq = item.properties.get("mgrs:grid_square")
        tile = f"{int(z):02d}{lb}{sq}" if z and lb and sq else None
    if not tile:
        m = _MGRS.search(scene_id)
        tile = m[1] if m else None
    tags = (("processing_baseline", baseline),) if baseline else ()
    return StacScene(
        item=where,
        item_id=item.id,
        kind="sentinel2",
        scene_id=scene_id,
        sensor=sensor,
        date=_date(item, where),
        footprint=f"T{str(tile).upper().removeprefix('T')}" if tile else None,
        product=S2Files(
            bands=tuple(paths[b] for b in S2_BANDS),
            scl=paths["SCL"],
            scale=tuple(scale),
            offset=tuple(offset),
        ),
        tags=tags,
    )


def item_scene(item: Any, where: Path) -> StacScene:
    """The scene a pystac Item describes, its needed assets resolved to local files.

    Raises:
        StacError: naming the item file (or the missing asset file) and the problem: not a
            Landsat/HLS/Sentinel-2 item, a needed asset missing, remote or not found, no date.
    """
    kind = item_kind(item)
    if kind == "landsat":
        return _landsat(item, where)
    if kind == "hls":
        return _hls(item, where)
    if kind == "sentinel2":
        return _sentinel2(item, where)
    raise StacError(
        where, f"item {item.id}: not a Landsat C2 L2, HLS or Sentinel-2 L2A item (platform "
        f"{_platform(item) or '?'}, collection {item.collection_id or '?'})"
    )  # fmt: skip
