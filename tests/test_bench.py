"""``make bench`` runs what exists: the runner and the Makefile target agree with bench/."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_bench_calls_an_existing_script() -> None:
    recipe = re.search(r"^bench:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert recipe is not None
    script = recipe.group(1).split()[-1]
    assert (ROOT / script).is_file(), script


def test_runner_knows_every_benchmark_and_only_those() -> None:
    runner = _runner()
    on_disk = {p.name for p in (ROOT / "bench").glob("*.py")} - {"run_all.py"}
    assert set(runner.BENCHES) == on_disk
    with pytest.raises(SystemExit):
        runner.main(["--only", "no_such_bench.py"])
