"""The EDA report: built from the pipeline's tables, every flagged tile listed, and it renders."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from kelpseg.config import load_config
from kelpseg.eda import build_report


@pytest.fixture(scope="module")
def report(synth_data, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eda")
    return build_report(synth_data.root, out, load_config("tiny"), samples=8)


def _srcs(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_page_shows_the_pipeline_tables(report: Path, synth_data) -> None:
    out = report.parent
    page = report.read_text()
    stats = pd.read_csv(out / "tile_stats.csv", dtype={"tile_id": str})
    splits = pd.read_csv(out / "splits.csv", dtype={"tile_id": str})
    truth = pd.read_csv(synth_data.truth_csv, dtype={"tile_id": str})
    for band in ("SWIR1", "NIR", "Red", "Green", "Blue", "QA", "DEM"):
        assert f"<th>{band}</th>" in page
    n_train = int((stats["split"] == "train").sum())
    assert re.search(rf"<td>train</td>\s*<td>{n_train}</td>", page)
    for fold, n in splits.groupby("fold").size().items():  # the fold table is splits.csv's
        assert re.search(rf"<th>{fold}</th>\s*<td>{n}</td>", page), fold
    flagged_part = page.split('id="flagged"')[1]
    corrupted = truth.loc[truth["mask_corrupted"], "tile_id"]
    assert len(corrupted) >= 1
    for tid in corrupted:  # the generator's wrong masks are listed, with the reason
        assert re.search(rf"<b>{tid}</b>.*?suspect mask", flagged_part, re.S), tid
    for col in ("striped", "saturated", "dem_shifted", "mask_suspect"):
        for tid in stats.loc[stats[col].astype(bool), "tile_id"]:
            assert f"<b>{tid}</b>" in flagged_part, (col, tid)
    assert "suspect mask (" in page.split('id="samples"')[1].split('id="groups"')[0]


def test_every_image_exists_and_is_a_png(report: Path) -> None:
    srcs = _srcs(report.read_text())
    assert len(srcs) >= 20
    for src in srcs:
        with Image.open(report.parent / src) as im:
            assert im.format == "PNG" and im.width > 0


def test_second_run_reuses_the_tables(report: Path, synth_data) -> None:
    stats = report.parent / "tile_stats.csv"
    before = stats.stat().st_mtime_ns
    build_report(synth_data.root, report.parent, load_config("tiny"), samples=4)
    assert stats.stat().st_mtime_ns == before


def _chromium() -> str | None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe or os.geteuid() != 0 or not shutil.which("apt-get"):
        return exe
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "chromium"], env=env, capture_output=True, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return shutil.which("chromium")


def test_page_renders_in_a_browser_with_every_image(report: Path, tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium, and it cannot be installed here (needs root and apt-get)")
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
        report.resolve().as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    n = len(_srcs(report.read_text()))
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    assert f'data-images="{n}"' in body.group(0), body.group(0)
    assert 'data-broken="0"' in body.group(0), re.search(r'id="img-check">[^<]*', dom)
