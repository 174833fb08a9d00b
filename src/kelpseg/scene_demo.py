"""The demo's whole-scene step: a synthetic Landsat scene mapped by what the demo's run chose.

``kelpseg demo`` ends here: one Collection 2 Level-2 scene folder is generated offline
(:mod:`kelpseg.synth.landsat`), stacked on the fly and mapped by ``kelpseg map``'s engine
(:func:`kelpseg.infer.mapping.map_run`), and its kelp area and Dice are set against the truth.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from kelpseg.io.raster import atomic_write_text, open_raster
from kelpseg.io.tiles import MASK_NODATA
from kelpseg.metrics import dice

SCENE_SIZE = 1024


def map_demo_scene(run: Path, out: Path, *, size: int = SCENE_SIZE, seed: int = 0) -> dict:
    """Generate a scene into ``out/scene``, map it into ``out/maps``; return (and write to
    ``out/maps/demo_scene.json``) the mapped and true kelp areas and the scene's Dice."""
    from kelpseg.infer.mapping import map_run
    from kelpseg.synth.landsat import write_landsat_scene

    t0 = time.perf_counter()
    scene = write_landsat_scene(out / "scene", size=size, seed=seed, overwrite=True)
    maps = out / "maps"
    res = map_run(run, [scene.folder], maps, dem=scene.dem, overwrite=True)
    res.report.finish()
    sid = scene.meta.scene_id
    mapped = json.loads((maps / sid / "scene.json").read_text())
    with open_raster(maps / sid / f"{sid}_kelp.tif") as src:
        pred = src.read(1)
    with open_raster(scene.truth) as src:
        truth = src.read(1)
    judged = (truth != MASK_NODATA) & (pred != MASK_NODATA)
    true = json.loads(scene.truth.with_name(f"{sid}_truth.json").read_text())
    summary = {
        "scene_id": sid,
        "size_px": size,
        # kelp_ha counts clear water only: the truth on the same pixels (QA not flagged)
        "kelp_ha_mapped": mapped["kelp_ha"] or 0.0,
        "kelp_ha_true": true["kelp_clear_ha"],
        "observed_fraction": mapped["observed_fraction"],
        "dice": dice(pred[judged] == 1, truth[judged] == 1),
        "threshold": mapped["threshold"],
        "maps": str(maps / sid),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(maps / "demo_scene.json", json.dumps(summary, indent=2))
    return summary


def scene_lines(s: dict) -> list[str]:
    """The demo's printed lines about the scene."""
    ratio = s["kelp_ha_mapped"] / s["kelp_ha_true"] if s["kelp_ha_true"] else np.nan
    return [
        f"whole scene ({s['size_px']}x{s['size_px']} px synthetic Landsat 8, {s['seconds']} s): "
        f"kelp on clear water {s['kelp_ha_mapped']:.1f} ha mapped vs {s['kelp_ha_true']:.1f} ha "
        f"true ({ratio:.2f}x), scene Dice {s['dice']:.3f}, water observed "
        f"{s['observed_fraction']:.0%}",
        f"scene maps (COGs, polygons, quick-look): {s['maps']}",
    ]
