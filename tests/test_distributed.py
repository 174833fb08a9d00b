"""`kelpseg map --ray`: a real Ray cluster maps the same archive as a serial run, byte for byte
where it matters (every COG's pixels and tags, polygons, scene.json less its timing,
areas.csv), retries a scene whose worker is killed mid-scene, never retries a bad input, and
refuses an address nobody answers at in one line."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from kelpseg.cli import app
from kelpseg.synth.landsat import write_landsat_scene
from tests.test_predict import _save

ray = pytest.importorskip("ray")

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"
RAY_BIN = Path(sys.executable).with_name("ray")
OBJECT_STORE = 100 * 2**20
# every cluster of these tests and its drivers share one token made here (Ray's token auth),
# so no test reads or writes ~/.ray/auth_token
QUIET = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "RAY_AUTH_MODE": "token",
         "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # fmt: skip


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model: the executor is under test, not the model's skill."""
    from kelpseg.config import load_config
    from kelpseg.train.module import KelpSegModule

    torch.manual_seed(0)
    m = KelpSegModule(load_config("tiny").model_dump(mode="json")).eval()
    return _save(m, tmp_path_factory.mktemp("ckpt") / "m.ckpt")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, ckpt: Path) -> dict:
    """Three small scenes with their DEMs, a fourth without one (refused on the worker), a
    file that is no raster (refused by the driver), and the serial run's maps."""
    root = tmp_path_factory.mktemp("archive")
    arch, rows = root / "archive", []
    for i, size in enumerate((96, 112, 96, 96)):
        sc = write_landsat_scene(root / f"made{i}", size=size, seed=i, area_seed=20 + i)
        shutil.copytree(sc.folder, arch / sc.folder.name)
        if i < 3:
            rows.append(f"{sc.meta.scene_id},{sc.dem}\n")
    broken = root / "broken.tif"  # named on the command line: refused by name
    broken.write_bytes(b"not a tiff")
    dems = root / "dems.csv"
    dems.write_text("scene,dem\n" + "".join(rows))
    serial = root / "serial"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a Ray worker's (1 CPU: OMP_NUM_THREADS=1); float sums depend on it
    try:
        res = runner.invoke(app, ["map", "-m", str(ckpt), str(arch), str(broken), "--dem",
                                  str(dems), "-o", str(serial), "--geojson"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    assert "3 ok, 2 skipped" in res.output, res.output
    return {"inputs": [arch, broken], "dems": dems, "serial": serial}


def _files(maps: Path) -> list[Path]:
    return sorted(p.relative_to(maps) for p in maps.rglob("*") if p.is_file()
                  and not p.name.startswith("."))  # fmt: skip


def assert_same_maps(a: Path, b: Path) -> None:
    """Every output of ``b`` is the one of ``a``: raster pixels, tags and georeference,
    polygons, the quick-look's bytes, scene.json less its timing, areas.csv."""
    import geopandas as gpd

    assert _files(a) == _files(b)
    assert (a / "areas.csv").read_text() == (b / "areas.csv").read_text()
    for rel in _files(a):
        x, y = a / rel, b / rel
        if rel.suffix == ".tif":
            with rasterio.open(x) as s, rasterio.open(y) as t:
                assert _profile(s) == _profile(t) and s.tags() == t.tags(), rel
                np.testing.assert_array_equal(s.read(), t.read(), err_msg=str(rel))
        elif rel.name == "scene.json":
            one, two = (json.loads(p.read_text()) for p in (x, y))
            one.pop("seconds"), two.pop("seconds")
            assert one == two, rel
        elif rel.suffix in (".gpkg", ".geojson"):
            s, t = gpd.read_file(x), gpd.read_file(y)
            pd.testing.assert_frame_equal(s.drop(columns="geometry"), t.drop(columns="geometry"))
            assert list(s.geometry.to_wkb()) == list(t.geometry.to_wkb()), rel
        else:
            assert x.read_bytes() == y.read_bytes(), rel


def _profile(src) -> dict:
    """A raster's profile, its NaN nodata made comparable."""
    out = dict(src.profile)
    if out.get("nodata") is not None and np.isnan(out["nodata"]):
        out["nodata"] = "nan"
    return out


def _short_tmp() -> Path:
    """Ray's session folder (its sockets need a short path), removed by the caller."""
    return Path(tempfile.mkdtemp(prefix="kray", dir="/tmp"))


def kill_first_mapper(maps: Path, stop: threading.Event, killed: list) -> None:
    """SIGKILL the first process seen holding a scene's lock (mid-scene: the lock is held from
    the DEM choice to scene.json). Holders are read from /proc/locks, never by taking a lock,
    so no worker ever finds a scene busy because of the test."""
    while not stop.is_set():
        locks = {p.stat().st_ino: p for p in maps.glob("*/.lock")} if maps.is_dir() else {}
        if locks:
            for line in Path("/proc/locks").read_text().splitlines():
                parts = line.split()
                if len(parts) > 5 and parts[1] == "FLOCK":
                    inode = int(parts[5].rsplit(":", 1)[1])
                    if inode in locks:
                        pid = int(parts[4])
                        os.kill(pid, signal.SIGKILL)
                        killed.append((pid, locks[inode].parent.name))
                        return
        time.sleep(0.02)


@pytest.fixture(scope="class")
def local_ray():
    """An in-process local cluster of 2 CPUs, shut down and its session folder removed."""
    tmp = _short_tmp()
    old = {k: os.environ.get(k) for k in QUIET}
    # RAY_AUTH_MODE stays unset here: `ray.init` then turns token auth on and refreshes its
    # config, which Ray read when imported (a mode set now would not reach it); the token is
    # the environment's, so no file is written
    os.environ.update({k: v for k, v in QUIET.items() if k != "RAY_AUTH_MODE"})
    os.environ.pop("RAY_AUTH_MODE", None)
    try:
        ray.init(num_cpus=2, object_store_memory=OBJECT_STORE, include_dashboard=False,
                 _temp_dir=str(tmp))  # fmt: skip
        yield ray
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def _assemble(assembly: dict):
    from kelpseg.infer.assemble import assemble

    return assemble(**assembly)


def _assembly(ckpt: Path) -> tuple[dict, object]:
    from kelpseg.infer.mapping import default_settings

    assembly = {"members": [ckpt]}
    return assembly, default_settings(_assemble(assembly), geojson=True)


@pytest.mark.usefixtures("local_ray")
class TestInProcessCluster:
    """``map_on_ray`` on a cluster the caller started (``ray.init``, 2 CPUs): it is used as it
    is and left running for the next test."""

    def test_maps_what_serial_maps_and_a_rerun_keeps_it(
        self, ckpt: Path, archive: dict, tmp_path: Path
    ) -> None:
        from kelpseg.infer.distributed import map_on_ray

        assembly, settings = _assembly(ckpt)
        maps, kw = tmp_path / "maps", {"dem": archive["dems"], "address": None}
        res = map_on_ray(assembly, archive["inputs"], maps, settings, **kw)
        assert res.report.ok == 3 and len(res.report.errors) == 2 and not res.busy
        problems = " ".join(str(e) for e in res.report.errors)
        assert "broken.tif" in problems and "no row for scene" in problems  # the worker's
        assert res.pool == 2 and res.retried == 0  # the 2nd may start after the last scene
        assert all(w.peak_rss_mb and w.start_s for w in res.workers)
        assert sum(w.scenes for w in res.workers) == 4  # the scene without a DEM too, once
        assert_same_maps(archive["serial"], maps)

        # the serial run's fingerprints: a rerun, serial here (a Ray rerun runs the same
        # map_scene), keeps every scene
        from kelpseg.geo.dem import Dems
        from kelpseg.infer.mapping import map_inputs

        again = map_inputs(_assemble(assembly), archive["inputs"], maps, settings,
                           dems=Dems(archive["dems"]))  # fmt: skip
        assert again.reused == 3 and again.report.ok == 3

    def test_a_killed_worker_without_retries_fails_its_scene_only(
        self, ckpt: Path, archive: dict, tmp_path: Path
    ) -> None:
        from kelpseg.infer.distributed import map_on_ray

        assembly, settings = _assembly(ckpt)
        maps = tmp_path / "maps"
        stop, killed = threading.Event(), []
        killer = threading.Thread(target=kill_first_mapper, args=(maps, stop, killed))
        killer.start()
        try:
            # one worker: its replacement maps the rest (two would load side by side, slower
            # on 2 cores, and test nothing more)
            res = map_on_ray(assembly, archive["inputs"], maps, settings, retries=0, workers=1,
                             dem=archive["dems"])  # fmt: skip
        finally:
            stop.set()
            killer.join()
        assert killed, "no worker was seen mapping"
        _, victim = killed[0]
        errors = [str(e) for e in res.report.errors]
        assert res.report.ok == 2 and res.retried == 0 and len(errors) == 3
        assert any(victim in e and "worker died while mapping it, 1 time" in e for e in errors)
        assert sum(w.died for w in res.workers) == 1  # and a fresh one took its place
        assert not (maps / victim / "scene.json").exists()
        assert sorted(pd.read_csv(maps / "areas.csv")["scene_id"]) == sorted(
            p.name for p in maps.iterdir() if (p / "scene.json").exists()
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_cluster(procs: list[subprocess.Popen], tmp: Path) -> None:
    """End what this test started: the `ray start --block` processes (each stops its node's
    processes), then any process still running from this test's own session folder."""
    import psutil

    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
    mine = str(tmp)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(mine in arg for arg in proc.info["cmdline"] or []):
            proc.kill()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def cluster():
    """A head node (1 CPU) and a second node (1 CPU) on this machine, as `ray start` makes
    them; yields the head's address."""
    tmp, port = _short_tmp(), _free_port()
    env = {**os.environ, **QUIET, "PYTHONPATH": str(SRC)}
    common = ["--num-cpus=1", f"--object-store-memory={OBJECT_STORE}", "--block",
              "--disable-usage-stats"]  # fmt: skip
    procs: list[subprocess.Popen] = []
    address = f"127.0.0.1:{port}"
    try:
        head = [str(RAY_BIN), "start", "--head", f"--port={port}", "--include-dashboard=false",
                f"--temp-dir={tmp}", *common]  # fmt: skip
        procs.append(subprocess.Popen(head, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))  # fmt: skip
        _wait_nodes(address, 1, env)
        # its own session folder, as on another machine (the same one would have both nodes'
        # log monitors forward every worker line to the driver twice)
        node = [str(RAY_BIN), "start", f"--address={address}", f"--temp-dir={tmp / 'node2'}",
                *common]  # fmt: skip
        procs.append(subprocess.Popen(node, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))  # fmt: skip
        _wait_nodes(address, 2, env)
        yield address, env
    finally:
        _stop_cluster(procs, tmp)


def _wait_nodes(address: str, n: int, env: dict, timeout: float = 180) -> None:
    code = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False);"
        "print(sum(x['Alive'] for x in ray.nodes())); ray.shutdown()"
    )
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        out = subprocess.run([sys.executable, "-c", code, address], env=env, capture_output=True,
                             text=True, timeout=timeout)  # fmt: skip
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(1)
    raise TimeoutError(f"the Ray cluster at {address} has not {n} nodes after {timeout} s")


def test_cli_on_a_ray_cluster_retries_a_killed_worker(
    ckpt: Path, archive: dict, tmp_path: Path, cluster
) -> None:
    address, env = cluster
    maps = tmp_path / "maps"
    cmd = [sys.executable, "-c", "from kelpseg.cli import app; app()", "map", "-m", str(ckpt),
           *map(str, archive["inputs"]), "--dem", str(archive["dems"]), "-o", str(maps),
           "--geojson", "--ray", address]  # fmt: skip
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_first_mapper, args=(maps, stop, killed))
    killer.start()
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    finally:
        stop.set()
        killer.join()
    log = out.stdout + out.stderr
    print(log)  # shown when the test fails (or with -rA)
    assert out.returncode == 0, log
    assert killed, "no worker was seen mapping"
    assert "retrying (1 of 2)" in log and killed[0][1] in log, log
    assert "3 ok, 2 skipped" in log and "on 2 Ray workers, 1 resubmitted" in log, log
    assert_same_maps(archive["serial"], maps)


def test_an_unreachable_cluster_is_one_error_line(ckpt: Path, archive: dict, tmp_path: Path):
    port = _free_port()  # nobody listens there
    t0 = time.monotonic()
    res = runner.invoke(app, ["map", "-m", str(ckpt), str(archive["inputs"][0]), "--dem",
                              str(archive["dems"]), "-o", str(tmp_path / "m"),
                              "--ray", f"127.0.0.1:{port}"])  # fmt: skip
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], res.output
    assert "no Ray cluster answers" in errors[0]
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "m").exists()


def test_every_source_kind_and_a_refusal_travel_between_driver_and_worker(tmp_path: Path):
    """What the driver sends (a scene of each kind) and what a worker returns (an outcome, a
    refusal keeping its class) survive Ray's serializer; no cluster needed."""
    from ray import cloudpickle

    from kelpseg.geo.dem import DemError
    from kelpseg.infer.mapping import SceneInput, SceneOutcome
    from kelpseg.io.sources import find_sources
    from kelpseg.synth.sensors import (
        landsat_item,
        write_hls_granule,
        write_sentinel2_safe,
        write_stac_catalog,
    )

    arch = tmp_path / "archive"
    write_landsat_scene(arch / "l8", size=64, seed=1, area_seed=1)
    write_hls_granule(arch / "hls", size=64, seed=2, area_seed=2)
    write_sentinel2_safe(arch / "s2", size=64, seed=3, area_seed=3)
    l9 = write_landsat_scene(tmp_path / "l9", size=64, seed=4, area_seed=4, sensor="LANDSAT_9")
    write_stac_catalog(arch / "stac", [landsat_item(l9)])
    found, broken = find_sources([arch])
    assert not broken and {s.kind for s in found} >= {"landsat", "hls", "sentinel2", "stac"}
    for src in found:
        scene = SceneInput.of(src)
        assert cloudpickle.loads(cloudpickle.dumps(scene)) == scene
    out = SceneOutcome.failed(arch, DemError(arch / "dem.tif", "does not overlap scene X"))
    back = cloudpickle.loads(cloudpickle.dumps(out)).problem()
    assert (
        isinstance(back, DemError) and str(back) == f"{arch / 'dem.tif'}: does not overlap scene X"
    )


def test_ray_options_need_ray(ckpt: Path, archive: dict, tmp_path: Path) -> None:
    res = runner.invoke(app, ["map", "-m", str(ckpt), str(archive["inputs"][0]), "-o",
                              str(tmp_path / "m"), "--retries", "3"])  # fmt: skip
    assert res.exit_code == 2 and "go with --ray" in res.output
