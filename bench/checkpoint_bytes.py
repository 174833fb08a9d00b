"""Bytes of checkpoint files a tiny resnet18 fit leaves under its output folder (issue 7, 6).

Usage: ``python bench/checkpoint_bytes.py [OUT]`` (default ``/tmp/kelpseg-bench/ckpt``).
Counts regular ``*.ckpt`` files under ``OUT/e{1,3}`` (the fold folder and ``mlartifacts/``);
links are not counted, since they take no space.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.tiles

from kelpseg.config import load_config
from kelpseg.train.fit import train_fold
from tests.tiles import packed_folds


def main(root: Path) -> None:
    packed, tiles = packed_folds(16)
    for epochs in (1, 3):
        out = root / f"e{epochs}"
        shutil.rmtree(out, ignore_errors=True)
        opts = [f"train.max_epochs={epochs}", "train.samples_per_epoch=8", "train.log_images=0"]
        train_fold(load_config("tiny", opts), tiles, packed, 0, out)
        files = [p for p in sorted(out.rglob("*.ckpt")) if p.is_file() and not p.is_symlink()]
        total = sum(p.stat().st_size for p in files) / 1e6
        sizes = ", ".join(f"{p.relative_to(out)} {p.stat().st_size / 1e6:.1f}" for p in files)
        print(f"epochs={epochs}: {len(files)} checkpoint files, {total:.1f} MB: {sizes}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/kelpseg-bench/ckpt"))
