"""``kelpseg tune`` workers sharing one study in a real PostgreSQL server (started by pgserver).

Two workers run at once as separate processes; then a worker is killed with SIGKILL in the
middle of a trial, and the next worker fails that trial (its heartbeat stopped), runs it again
and completes the study.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from kelpseg.config import load_config
from kelpseg.tune.study import storage_url

SRC = Path(__file__).resolve().parents[1] / "src"
SETS = [
    "data.tile_size=32",
    "groups.grid=4",
    "train.max_epochs=1",
    "train.samples_per_epoch=8",
    "train.log_images=0",
]
SPACE = {
    "study": {"startup_trials": 2, "pruner": "none"},
    "params": {
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.loss": [{"dice": 1.0}, {"dice": 0.5, "bce": 0.5}],
    },
}


@pytest.fixture(scope="module")
def postgres():
    """The URL of a PostgreSQL server started for this module (skipped if it cannot start)."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver (dev extra) is not installed")
    folder = tempfile.mkdtemp(prefix="kpg")  # short: the socket path has a length limit
    try:
        server = pgserver.get_server(folder, cleanup_mode="stop")
    except Exception as err:  # any failure to start the bundled server
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"pgserver could not start PostgreSQL in {folder}: {err}")
    yield server.get_uri()  # plain postgresql://, as a user would give it
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    """Tiny data and one prepared work folder (tables + cache) the workers copy."""
    from kelpseg.pipeline import pack_training, prepare
    from kelpseg.synth import generate

    root = tmp_path_factory.mktemp("pgtune")
    data = generate(root / "data", aois=8, seed=1, size=32).root
    cfg = load_config("tiny", SETS)
    prep = prepare(data, cfg, root / "base", pack=True)
    pack_training(prep, cfg, root / "base")
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    return data, root / "base", space


def _worker(data, base, space, out: Path, url: str, study: str, trials: int, seed: int, *more):
    """A `kelpseg tune` process working in its own copy of the prepared folder."""
    shutil.copytree(base, out)
    cmd = [sys.executable, "-m", "kelpseg", "tune", str(data), "-c", "tiny", "--space"]
    cmd += [str(space), "--trials", str(trials), "--storage", url, "--study", study]
    cmd += ["-o", str(out), "--heartbeat", "1", "--grace", "4", "--seed", str(seed)]
    cmd += [arg for s in [*SETS, *more] for arg in ("-s", s)]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


def _study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_url(url, Path()))


def test_two_workers_share_one_study(postgres, prepared, tmp_path) -> None:
    data, base, space = prepared
    t0 = time.perf_counter()
    procs = [
        _worker(data, base, space, tmp_path / f"w{i}", postgres, "shared", 4, seed=i)
        for i in range(2)
    ]
    logs = [_finish(p) for p in procs]
    seconds = time.perf_counter() - t0

    trials = _study(postgres, "shared").get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # no duplicate, no gap
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 4, [(t.number, t.state, t.user_attrs) for t in trials]
    # anything beyond 4 is a trial a worker started in a race and gave up at once
    assert all(t.user_attrs.get("surplus") for t in trials if t.state != TrialState.COMPLETE)
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) == 2, workers  # both processes ran trials
    assert {str(p.pid) for p in procs} == {w.rsplit(":", 1)[1] for w in workers}
    ran = [re.search(r"study 'shared': .*, (\d+) by this worker", log) for log in logs]
    assert all(ran), logs
    assert sum(int(m.group(1)) for m in ran if m) == 4  # each counted its own trials
    for i in range(2):  # each worker wrote the whole study's outputs
        assert load_config(tmp_path / f"w{i}" / "best.yaml").train.lr > 0
    print(f"two workers, 4 trials: {seconds:.1f} s")


def test_a_killed_worker_leaves_the_study_usable(postgres, prepared, tmp_path) -> None:
    data, base, space = prepared
    long = "train.max_epochs=20"  # so that it is killed mid-trial
    victim = _worker(data, base, space, tmp_path / "victim", postgres, "killed", 1, 0, long)
    # wait until its first trial has been running (training) for a moment, then kill it
    deadline = time.monotonic() + 180
    running = []
    while time.monotonic() < deadline and victim.poll() is None:
        try:
            running = _study(postgres, "killed").get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study does not exist yet
            running = []
        if running and time.time() - running[0].datetime_start.timestamp() > 1.0:
            break
        time.sleep(0.5)
    assert running and victim.poll() is None, "the worker never started a trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = running[0].number
    assert _study(postgres, "killed").trials[killed].state == TrialState.RUNNING  # stale

    time.sleep(4)  # the grace period: its heartbeat is now too old
    log = _finish(_worker(data, base, space, tmp_path / "next", postgres, "killed", 1, seed=1))

    study = _study(postgres, "killed")
    states = {t.number: t.state for t in study.trials}
    assert states[killed] == TrialState.FAIL
    # RetryHeartbeatStaleTrialCallback re-queues it, naming the original in "failed_trial"
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == study.trials[killed].params  # re-run with the same values
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 1  # the study's total
    assert study.best_trial.value >= 0  # the study is usable
    assert "best: trial" in log
