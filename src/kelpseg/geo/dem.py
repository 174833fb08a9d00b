"""Which DEM each scene gets, and how much of the scene it covers.

The DEM tells land from water: without it every valid pixel counts as water (land included)
and the model, which learnt "no DEM" as "open sea", is free to call fields and roofs kelp. So
``kelpseg map`` never maps a scene folder without a DEM silently. :class:`Dems` finds a
scene's DEM from one of:

- one DEM file for every scene (``--dem dem.tif``);
- a folder of DEM tiles (``--dem dems/``, e.g. Copernicus GLO-30 or SRTM tiles, searched
  recursively): the tiles that overlap the scene, mosaicked by a GDAL VRT when several do;
- a mapping file (``--dem dems.csv``) with columns ``scene`` (a scene id or input name) and
  ``dem`` (a file, relative to the CSV).

Each choice records its files, its footprint on the scene (a polygon in the scene's CRS: the
DEM's bounds, densified and reprojected) and, once mapped, the share of the scene's valid
pixels inside it. Pixels outside every DEM are "land or water unknown" for the coverage layer.
A DEM that does not reach the scene at all is refused (:class:`DemError`).
"""

from __future__ import annotations

import csv
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from kelpseg.io.errors import TileError, first_line

WITHOUT_DEM = "none (--no-dem)"
"""The origin of a scene mapped without a DEM."""
DEM_SUFFIXES = (".tif", ".tiff", ".vrt", ".hgt", ".dt2", ".img")
"""Raster files a DEM folder is searched for."""


class DemError(TileError):
    """A DEM that cannot serve a scene (missing, unreadable, no CRS, not overlapping)."""


@dataclass(frozen=True)
class DemFile:
    """A DEM raster's CRS, bounds, grid and nodata (read once)."""

    path: Path
    crs: Any
    bounds: tuple[float, float, float, float]
    transform: Any
    width: int
    height: int
    nodata: float | None
    dtype: str

    @classmethod
    def read(cls, path: Path) -> DemFile:
        import rasterio
        from rasterio.errors import RasterioError

        try:
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise DemError(path, "the DEM has no CRS: it cannot be placed on a scene")
                return cls(
                    Path(path),
                    src.crs,
                    tuple(src.bounds),
                    src.transform,
                    src.width,
                    src.height,
                    src.nodata,
                    src.dtypes[0],
                )
        except (RasterioError, OSError) as err:
            raise DemError(path, f"not a readable raster: {first_line(err)}") from err

    def footprint(self, crs: Any) -> Any:
        """The DEM's bounds as a polygon in ``crs``, densified so its edges stay in place."""
        import geopandas as gpd
        from shapely.geometry import box

        poly = gpd.GeoSeries([box(*self.bounds)], crs=self.crs)
        xmin, ymin, xmax, ymax = self.bounds
        step = max(xmax - xmin, ymax - ymin) / 64
        return poly.segmentize(step).to_crs(crs).iloc[0] if step > 0 else poly.to_crs(crs).iloc[0]


@dataclass
class DemChoice:
    """The DEM a scene was (or will be) stacked with."""

    origin: str
    """Where the choice came from, for the record (``--dem FILE``, ``--dem FOLDER``...)."""
    tiles: list[DemFile] = field(default_factory=list)
    """The DEM files that overlap the scene (empty: no DEM, or the input's own band 7)."""
    files: list[Path] = field(default_factory=list)
    footprint: Any = None
    """Polygon in the scene's CRS outside which land and water are unknown (None: no limit)."""
    coverage: float | None = None
    """Share of the scene's valid pixels inside the footprint (set once mapped)."""
    land_fraction: float | None = None
    """Share of the scene's valid pixels the DEM calls land (set once mapped)."""

    def source(self, work: Path) -> Path | None:
        """What the stacker warps: the DEM file, a VRT mosaic of several written into ``work``
        (hidden; the caller removes it), or None without a DEM."""
        if not self.tiles:
            return None
        if len(self.tiles) == 1:
            return self.tiles[0].path
        return write_vrt(self.tiles, work / f".{os.getpid()}.dem.vrt")

    def record(self) -> dict[str, Any]:
        """What ``scene.json`` and the COG tags say about the DEM."""
        return {
            "origin": self.origin,
            "files": [str(f) for f in self.files],
            "coverage": None if self.coverage is None else round(self.coverage, 4),
            "land_fraction": None if self.land_fraction is None else round(self.land_fraction, 4),
        }


def scene_box(crs: Any, transform: Any, width: int, height: int) -> Any:
    """The raster's footprint polygon in its own CRS (rotated grids included)."""
    from shapely.geometry import Polygon

    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    return Polygon([transform * xy for xy in corners])


def write_vrt(files: list[DemFile], path: Path) -> Path:
    """A GDAL VRT mosaic of DEM tiles sharing one CRS (band 1 of each, float32, the finest
    resolution, each tile's nodata kept)."""
    crs = files[0].crs
    bad = [f.path.name for f in files if f.crs != crs]
    if bad:
        raise DemError(files[0].path, f"DEM tiles in different CRSs cannot be mosaicked: {bad}")
    xres = min(abs(f.transform.a) for f in files)
    yres = min(abs(f.transform.e) for f in files)
    left = min(f.bounds[0] for f in files)
    bottom = min(f.bounds[1] for f in files)
    right = max(f.bounds[2] for f in files)
    top = max(f.bounds[3] for f in files)
    width = math.ceil(round((right - left) / xres, 6))
    height = math.ceil(round((top - bottom) / yres, 6))
    sources = []
    for f in files:
        x0 = (f.bounds[0] - left) / xres
        y0 = (top - f.bounds[3]) / yres
        w = (f.bounds[2] - f.bounds[0]) / xres
        h = (f.bounds[3] - f.bounds[1]) / yres
        nodata = f"<NODATA>{f.nodata!r}</NODATA>" if f.nodata is not None else ""
        sources.append(
            f'<ComplexSource><SourceFilename relativeToVRT="0">{escape(str(f.path.resolve()))}'
            f"</SourceFilename><SourceBand>1</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{f.width}" ySize="{f.height}"/>'
            f'<DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{w!r}" ySize="{h!r}"/>{nodata}'
            "</ComplexSource>"
        )
    xml = (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
        f"<SRS>{escape(crs.to_wkt())}</SRS>"
        f"<GeoTransform>{left!r}, {xres!r}, 0, {top!r}, 0, {-yres!r}</GeoTransform>"
        '<VRTRasterBand dataType="Float32" band="1"><NoDataValue>nan</NoDataValue>'
        + "".join(sources)
        + "</VRTRasterBand></VRTDataset>"
    )
    from kelpseg.io.raster import atomic_write_text

    return atomic_write_text(path, xml)


class Dems:
    """Where each scene's DEM comes from (see the module notes).

    Args:
        spec: A DEM file, a folder of DEM tiles, a ``.csv`` mapping file, or None.
        no_dem: The user accepts mapping without a DEM (``--no-dem``).

    Raises:
        DemError: a missing path, an unreadable mapping file.
    """

    def __init__(self, spec: Path | None, *, no_dem: bool = False) -> None:
        self.spec = Path(spec) if spec is not None else None
        self.no_dem = no_dem
        self._tiles: list[DemFile] | None = None
        self._mapping: dict[str, Path] | None = None
        if self.spec is None:
            return
        if not self.spec.exists():
            raise DemError(self.spec, "not found")
        if self.spec.is_file() and self.spec.suffix.lower() == ".csv":
            self._mapping = self._read_mapping(self.spec)

    @property
    def kind(self) -> str:
        if self.spec is None:
            return "none"
        if self._mapping is not None:
            return "mapping"
        return "folder" if self.spec.is_dir() else "file"

    @staticmethod
    def _read_mapping(path: Path) -> dict[str, Path]:
        try:
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, csv.Error, UnicodeDecodeError) as err:
            raise DemError(path, f"not a readable CSV: {first_line(err)}") from err
        if not rows or not {"scene", "dem"} <= set(rows[0]):
            raise DemError(path, "a DEM mapping needs the columns scene and dem")
        out = {}
        for row in rows:
            dem = Path(row["dem"].strip())
            out[row["scene"].strip()] = dem if dem.is_absolute() else path.parent / dem
        return out

    def tiles(self) -> list[DemFile]:
        """The DEM tiles of a folder (read once; unreadable files are skipped with a note)."""
        if self._tiles is None:
            assert self.spec is not None
            found, self._tiles = sorted(self.spec.rglob("*")), []
            for p in found:
                if p.is_file() and p.suffix.lower() in DEM_SUFFIXES and not p.name.startswith("."):
                    try:
                        self._tiles.append(DemFile.read(p))
                    except DemError as err:
                        print(f"[map] note: DEM folder: {err}", file=sys.stderr)
            if not self._tiles:
                raise DemError(self.spec, f"no DEM raster ({', '.join(DEM_SUFFIXES)}) in it")
        return self._tiles

    def _candidates(self, scene_id: str, source: Path) -> tuple[list[DemFile], str]:
        assert self.spec is not None
        if self._mapping is not None:
            keys = (scene_id, source.name, source.stem, str(source))
            path = next((self._mapping[k] for k in keys if k in self._mapping), None)
            if path is None:
                raise DemError(self.spec, f"no row for scene {scene_id} (column scene)")
            if not path.is_file():
                raise DemError(path, f"not found (the DEM of {scene_id} in {self.spec.name})")
            return [DemFile.read(path)], f"--dem {self.spec} (mapping)"
        if self.spec.is_dir():
            return self.tiles(), f"--dem {self.spec} (folder)"
        return [DemFile.read(self.spec)], f"--dem {self.spec}"

    def choose(
        self, scene_id: str, source: Path, crs: Any, transform: Any, shape: tuple[int, int]
    ) -> DemChoice:
        """The DEM of one scene on the grid ``crs``/``transform``/``shape``.

        Raises:
            DemError: no DEM and no ``--no-dem``; a DEM that does not reach the scene.
        """
        if self.spec is None:
            if self.no_dem:
                return DemChoice(WITHOUT_DEM)
            raise DemError(
                source,
                "no DEM: without one, land counts as water and the model can call it kelp. "
                "Give --dem (a file, a folder of DEM tiles or a scene,dem CSV), or --no-dem "
                "to map every valid pixel as water",
            )
        if crs is None:
            raise DemError(source, "the scene has no CRS: a DEM cannot be placed on it")
        here = scene_box(crs, transform, shape[1], shape[0])
        files, origin = self._candidates(scene_id, source)
        hits = []
        for f in files:
            fp = f.footprint(crs)
            if fp.intersects(here) and fp.intersection(here).area > 0:
                hits.append((f, fp))
        if not hits:
            names = ", ".join(f.path.name for f in files[:5]) + (" ..." * (len(files) > 5))
            raise DemError(
                files[0].path if len(files) == 1 else self.spec,
                f"does not overlap scene {scene_id} ({names}): give the DEM of this area, or "
                "--no-dem",
            )
        from shapely.ops import unary_union

        footprint = unary_union([fp for _, fp in hits])
        chosen = [f for f, _ in hits]
        cover = None if footprint.contains(here) else footprint
        return DemChoice(origin, chosen, [f.path for f in chosen], cover)
