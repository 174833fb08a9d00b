"""``kelpseg map --ray``: map an archive on a Ray cluster, one task per scene.

The driver (the ``kelpseg map`` process) finds the scenes (:func:`kelpseg.io.sources.find_sources`)
and claims their scene ids as a serial run does, then hands them to a pool of Ray actors, one
per worker (:class:`SceneWorker`). Each actor assembles the ensemble once
(:func:`kelpseg.infer.assemble.assemble`, from the same checkpoint paths, run folder and flags
as the driver, so every worker predicts with the same settings and computes the same
fingerprints) and maps one scene at a time with the serial code path
(:func:`kelpseg.infer.mapping.map_scene`: DEM choice, the scene's lock, fingerprint, atomic
outputs). An actor asks for one CPU, or one GPU (and a CPU) when the cluster has GPUs.

Retries are the driver's: when a worker dies while mapping a scene (killed, out of memory, its
node lost), the driver replaces the worker with a fresh actor and resubmits the scene, at most
``retries`` times per scene. Ray's own actor restarts (``max_restarts`` + ``max_task_retries``)
were not used: they count an actor's deaths over its life, not a scene's, so one scene that
kills every worker it lands on would use up the restarts of the actor it landed on and fail the
healthy scenes queued behind it; resubmission counts per scene, names the scene and the attempt
on the driver, and lets the new actor land on any node. A scene refused because of its input
(a :class:`~kelpseg.io.errors.TileError`: a bad file, no DEM) is an outcome, not a failure of
the worker: it is reported as in a serial run and never retried; neither is an unexpected
error raised while mapping (it would recur). The killed worker's lock is the OS's (``flock``),
so it is released with the process, and the retry removes the temporary files it left.

``areas.csv`` is rebuilt once, by the driver, at the end; a rerun keeps the scenes done with the
same fingerprint, as a serial rerun does. The driver needs the same paths as the workers (a
shared filesystem, or the same paths on every node): it finds the scenes and writes
``areas.csv``; the workers start in the driver's working directory when their node has it, so
relative paths mean the same everywhere then (absolute paths are safest).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kelpseg import __version__
from kelpseg.geo.dem import Dems
from kelpseg.infer.errors import PredictionError
from kelpseg.infer.mapping import (
    MapError,
    MapResult,
    MapSettings,
    SceneInput,
    SceneOutcome,
    claim_scene,
    map_scene,
    rebuild_areas,
    scene_engine,
)
from kelpseg.io.errors import TileError, first_line
from kelpseg.io.sources import find_sources

LOCAL = ("", "local")
"""``--ray`` addresses that start (or attach to) a cluster on this machine: ``ray.init()``."""
CONNECT_TIMEOUT_S = 10.0
"""How long the driver tries to reach a cluster's address before saying it cannot."""
START_TIMEOUT_S = 600.0
"""How long the driver waits for the first worker to load the models (a busy cluster queues
actors until a CPU or GPU is free)."""
LOCAL_OBJECT_STORE_MB = 256
"""Object store of a cluster the driver starts itself: only paths and small records travel."""
RAY_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0"}
"""Environment set (unless already set) before the driver starts or joins a cluster: kelpseg
never reports usage statistics."""


class ClusterError(ConnectionError):
    """A Ray cluster that cannot be reached or used, named with the problem in one line."""


class WorkerError(PredictionError):
    """A worker that could not load the models or the DEMs on its node."""


@dataclass
class WorkerInfo:
    """One actor of the pool, as it reported itself."""

    pid: int
    node: str
    device: str
    scenes: int = 0
    peak_rss_mb: float | None = None
    died: bool = False
    start_s: float | None = None
    """Seconds from asking for the actor to its models loaded (the cluster's queue included)."""


@dataclass
class RayMapResult(MapResult):
    """A serial run's result, plus the workers and the scenes resubmitted after a death."""

    pool: int = 0
    """Actors the pool ran with (a dead one replaced by a fresh one)."""
    workers: list[WorkerInfo] = field(default_factory=list)
    """Every actor that loaded the models, replacements included."""
    retried: int = 0


class SceneWorker:
    """A Ray actor's state: the ensemble assembled once, then scenes mapped one at a time.

    A plain class: :func:`map_on_ray` makes it an actor (``ray.remote``), so importing this
    module needs no Ray. The heavy start (models, DEM index) runs in :meth:`ready`, which
    returns a problem as text instead of raising, so the driver can name it in one line.
    """

    def __init__(
        self,
        assembly: dict[str, Any],
        settings: MapSettings,
        maps: Path,
        dem: Path | None,
        no_dem: bool,
        overwrite: bool,
        cwd: str | None,
    ) -> None:
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths mean what they meant to the driver
        self.assembly, self.settings, self.maps = assembly, settings, Path(maps)
        self.dem, self.no_dem, self.overwrite = dem, no_dem, overwrite

    def ready(self) -> dict[str, Any]:
        """Assemble the ensemble; who and where this worker is, or ``{"error": ...}``."""
        import ray

        from kelpseg.infer.assemble import assemble

        node = ray.util.get_node_ip_address()
        try:
            self.ens = assemble(**self.assembly)
            self.engine = scene_engine(self.ens, self.settings)
            self.dems = Dems(self.dem, no_dem=self.no_dem)
        except (PredictionError, TileError) as err:  # they name the file and the problem
            return {"error": first_line(err), "node": node, "pid": os.getpid()}
        except Exception as err:  # anything else that stops a start, named in one line too
            return {"error": f"{type(err).__name__}: {first_line(err)}", "node": node,
                    "pid": os.getpid()}  # fmt: skip
        return {
            "pid": os.getpid(),
            "node": node,
            "device": str(self.ens.device),
            "version": __version__,
        }

    def map(self, scene: SceneInput) -> SceneOutcome:
        """One scene, exactly as a serial run maps it."""
        return map_scene(
            self.ens, self.engine, scene, self.maps, self.settings, self.dems, self.overwrite,
            progress=False,
        )  # fmt: skip

    def peak_rss_mb(self) -> float:
        """This worker process's peak resident memory (MiB)."""
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of ``host:port`` or ``ray://host:port``; None when it names neither."""
    addr = address.removeprefix("ray://")
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def _reachable(address: str, shown: str) -> None:
    """Refuse, in one line and within :data:`CONNECT_TIMEOUT_S`, an address nobody answers at
    (``ray.init`` itself would retry for minutes)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        why = "timed out" if isinstance(err, TimeoutError) else (err.strerror or first_line(err))
        raise ClusterError(
            f"--ray {shown}: no Ray cluster answers at {hp[0]}:{hp[1]} ({why}); start one "
            "there with `ray start --head`, or check the address and port"
        ) from err


def _existing_address(address: str | None) -> str | None:
    """Where ``ray.init`` would connect for ``address`` (None: ``ray.init()`` would start a
    cluster; ``auto``: the cluster running on this machine, found as Ray finds it)."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        return canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as err:
        raise ClusterError(f"--ray {address}: {first_line(err)}") from err


def _runtime_env() -> dict[str, Any] | None:
    """The driver's ``PYTHONPATH`` (made absolute) for the workers: they import the same
    kelpseg where those folders exist (elsewhere, the kelpseg installed on the node)."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if not paths:
        return None
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(str(Path(p).resolve()) for p in paths)}}


@contextmanager
def connect(address: str | None) -> Iterator[Any]:
    """Ray, initialised for ``address`` (see :data:`LOCAL`; ``auto``, ``host:6379``,
    ``ray://host:10001``) and shut down afterwards; a connection the caller already made (a
    notebook, a test) is used as it is and left open.

    Raises:
        ClusterError: nobody answers at the address, or Ray cannot start or connect.
    """
    import ray

    if ray.is_initialized():
        yield ray
        return
    for key, value in RAY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    shown = address if address not in (None, "") else "local"
    target = None if address in LOCAL else address
    if target is None or target == "auto":
        target = _existing_address(target)  # a cluster running here, else start one
    if target is not None:
        _reachable(target, shown if address not in LOCAL else f"local (running at {target})")
    try:
        if target is None:
            ray.init(
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE_MB * 2**20,
                log_to_driver=True,
            )
        else:
            ray.init(address=target, log_to_driver=True)
    except Exception as err:  # Ray raises many kinds (ConnectionError, RuntimeError, ...)
        if any(k in str(err) for k in ("InvalidAuthToken", "Unauthenticated")):
            raise ClusterError(
                f"--ray {shown}: the cluster asks for Ray's authentication token: set "
                "RAY_AUTH_MODE=token and the head node's token (RAY_AUTH_TOKEN, or the file "
                "~/.ray/auth_token) where kelpseg runs"
            ) from err
        raise ClusterError(f"--ray {shown}: {first_line(err)}") from err
    try:
        yield ray
    finally:
        ray.shutdown()


def _capacity(ray: Any, workers: int | None) -> tuple[int, dict[str, float], str]:
    """How many actors, what each asks for (one CPU, or one GPU and one CPU), the kind."""
    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
    if gpus:
        per, fits, what = {"num_cpus": 1, "num_gpus": 1}, min(gpus, max(cpus, 1)), "GPU"
    else:
        per, fits, what = {"num_cpus": 1}, cpus, "CPU"
    if fits < 1:
        raise ClusterError("the Ray cluster has no CPU for a worker")
    if workers is not None and workers > fits:
        print(f"[map] note: --workers {workers}: the cluster has {fits} {what}(s): {fits} "
              "workers", file=sys.stderr)  # fmt: skip
    return min(workers or fits, fits), per, what


def _deaths() -> tuple[type[BaseException], ...]:
    """Ray's errors for a task whose worker (or node) died under it."""
    from ray import exceptions as rx

    return (
        rx.RayActorError,
        rx.WorkerCrashedError,
        rx.NodeDiedError,
        rx.OutOfMemoryError,
        rx.LocalRayletDiedError,
    )


def map_on_ray(
    assembly: dict[str, Any],
    inputs: list[Path],
    maps: Path,
    settings: MapSettings,
    *,
    dem: Path | None = None,
    no_dem: bool = False,
    overwrite: bool = False,
    address: str | None = None,
    workers: int | None = None,
    retries: int = 2,
) -> RayMapResult:
    """Map every input into ``maps`` on a Ray cluster (see the module notes).

    Args:
        assembly: Keyword arguments of :func:`kelpseg.infer.assemble.assemble` (checkpoint
            paths, run folder, config, flags): each worker assembles its own ensemble from them.
        inputs: Scene folders, products, 7-band rasters or folders of them.
        maps: Output folder (on a filesystem every node reaches at this path).
        settings: Window, overlap and outputs (:func:`kelpseg.infer.mapping.default_settings`).
        dem: ``--dem`` (a file, a folder of tiles, a ``scene,dem`` CSV); ``no_dem``: ``--no-dem``.
        overwrite: Redo scenes already done with the same fingerprint.
        address: ``None``/``""``/``local``: a cluster on this machine (``ray.init()``: started,
            or the running one joined); ``auto``, ``host:6379``, ``ray://host:10001``.
        workers: Actors in the pool; default one per CPU of the cluster, or one per GPU when
            it has GPUs (never more than the cluster holds, nor than the scenes).
        retries: Resubmissions of a scene whose worker died while mapping it.

    Raises:
        ClusterError: the cluster cannot be reached or has no room for a worker.
        WorkerError: a worker could not load the models or DEMs on its node.
    """
    if retries < 0:
        raise ValueError(f"--retries must be at least 0, got {retries}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    result = RayMapResult()
    Dems(dem, no_dem=no_dem)  # a missing DEM path is refused here, before any cluster
    if address and _host_port(address) is not None:
        _reachable(address, address)  # fail fast, before searching the inputs
    found, broken = find_sources(inputs)
    for err in broken:
        result.report.add(err)
    taken: dict[str, Path] = {}
    scenes: list[SceneInput] = []
    for src in found:
        try:
            scenes.append(claim_scene(src, taken))
        except TileError as err:
            result.report.add(err)
    if scenes:
        maps.mkdir(parents=True, exist_ok=True)
        with connect(address) as ray:
            pool = _Pool(ray, assembly, settings, maps, dem, no_dem, overwrite, workers)
            try:
                pool.run(scenes, retries, result)
            except BaseException:  # Ctrl-C, a worker that cannot start: end the workers now
                pool.close(ask=False)
                raise
            result.workers = pool.close()
        for w in result.workers:
            rss = f"{w.peak_rss_mb:.0f} MiB" if w.peak_rss_mb is not None else "unknown"
            print(
                f"[map] Ray worker pid {w.pid} on {w.node} ({w.device}): {w.scenes} scenes, "
                f"models loaded in {w.start_s} s, peak RSS {rss}" + " (died)" * w.died,
                file=sys.stderr,
            )
    if maps.is_dir():
        rebuild_areas(maps)
    return result


class _Pool:
    """The driver's side: actors, their queue of scenes, deaths and resubmissions."""

    def __init__(
        self,
        ray: Any,
        assembly: dict[str, Any],
        settings: MapSettings,
        maps: Path,
        dem: Path | None,
        no_dem: bool,
        overwrite: bool,
        workers: int | None,
    ) -> None:
        self.ray = ray
        self.n, per, self.what = _capacity(ray, workers)
        self.args = (assembly, settings, maps, dem, no_dem, overwrite, os.getcwd())
        self.actor = ray.remote(SceneWorker).options(
            **per,
            max_restarts=0,  # the driver replaces a dead actor and resubmits (module notes)
            max_task_retries=0,
            scheduling_strategy="SPREAD",
            runtime_env=_runtime_env(),
        )
        self.handles: dict[int, Any] = {}
        self.info: dict[int, WorkerInfo] = {}
        self.starting: dict[Any, int] = {}  # ready() ref -> slot
        self.asked: dict[int, float] = {}  # slot -> when its actor was asked for
        self.idle: deque[int] = deque()
        self.serial = 0

    def _start(self) -> None:
        slot, self.serial = self.serial, self.serial + 1
        handle = self.actor.remote(*self.args)
        self.handles[slot] = handle
        self.starting[handle.ready.remote()] = slot
        self.asked[slot] = time.monotonic()

    def _retire(self, slot: int) -> None:
        handle = self.handles.pop(slot, None)
        if slot in self.info:
            self.info[slot].died = True
        if handle is not None:
            with suppress(Exception):  # already gone
                self.ray.kill(handle, no_restart=True)

    def run(self, scenes: list[SceneInput], retries: int, result: RayMapResult) -> None:
        ray = self.ray
        n = result.pool = min(self.n, len(scenes))
        print(
            f"[map] {len(scenes)} scenes on {n} Ray workers (1 {self.what} each)", file=sys.stderr
        )
        for _ in range(n):
            self._start()
        queue = deque(range(len(scenes)))
        attempts = [0] * len(scenes)
        tasks: dict[Any, tuple[int, int]] = {}  # map() ref -> (slot, scene index)
        t0, up, lost = time.monotonic(), False, 0
        deaths = _deaths()
        while queue or tasks:
            while self.idle and queue:
                slot, i = self.idle.popleft(), queue.popleft()
                tasks[self.handles[slot].map.remote(scenes[i])] = (slot, i)
            waiting = [*tasks, *self.starting]
            if not waiting:  # cannot happen: a dead worker is replaced at once
                raise WorkerError("no Ray worker left")
            done, _ = ray.wait(waiting, num_returns=1, timeout=10.0)
            if not done:
                if not up and time.monotonic() - t0 > START_TIMEOUT_S:
                    raise ClusterError(
                        f"no Ray worker started within {START_TIMEOUT_S:.0f} s: has the "
                        f"cluster a free {self.what} for each? (ray status)"
                    )
                continue
            ref = done[0]
            if ref in self.starting:
                slot = self.starting.pop(ref)
                try:
                    info = ray.get(ref)
                except deaths as err:  # died while loading: another one takes its place
                    print(f"[map] a Ray worker died while starting: {first_line(err)}",
                          file=sys.stderr)  # fmt: skip
                    self._retire(slot)
                    lost += 1
                    if lost > 3 * n:
                        raise WorkerError(f"Ray workers keep dying while starting ({lost} "
                                          f"so far): {first_line(err)}") from err  # fmt: skip
                    self._start()
                    continue
                if "error" in info:
                    raise WorkerError(
                        f"a Ray worker on {info['node']} could not start: {info['error']}"
                    )
                if info["version"] != __version__:
                    raise WorkerError(
                        f"the Ray worker on {info['node']} runs kelpseg {info['version']}, "
                        f"this driver {__version__}: install the same version on every node"
                    )
                self.info[slot] = WorkerInfo(
                    info["pid"], info["node"], info["device"],
                    start_s=round(time.monotonic() - self.asked[slot], 1),
                )  # fmt: skip
                self.idle.append(slot)
                up = True
                continue
            slot, i = tasks.pop(ref)
            scene = scenes[i]
            try:
                outcome = ray.get(ref)
            except deaths as err:
                attempts[i] += 1
                self._retire(slot)
                self._start()
                why = first_line(err)
                if attempts[i] <= retries:
                    result.retried += 1
                    print(
                        f"[map] {scene.source}: its Ray worker died while mapping it ({why}); "
                        f"retrying ({attempts[i]} of {retries})",
                        file=sys.stderr,
                    )
                    queue.appendleft(i)
                    continue
                outcome = SceneOutcome.failed(
                    scene.source,
                    MapError(
                        scene.source,
                        f"its Ray worker died while mapping it, {attempts[i]} time(s) (killed, "
                        f"or out of memory?): not retried again (--retries {retries})",
                    ),
                )
            except ray.exceptions.RayTaskError as err:  # not the input's fault: not retried
                cause = err.cause if getattr(err, "cause", None) is not None else err
                outcome = SceneOutcome.failed(
                    scene.source,
                    MapError(scene.source, f"{type(cause).__name__}: {first_line(cause)}"),
                )
                self.idle.append(slot)
            else:
                self.info[slot].scenes += 1
                self.idle.append(slot)
            outcome.record(result)

    def close(self, ask: bool = True) -> list[WorkerInfo]:
        """Ask each live worker its peak memory (``ask``: they are idle), then end them all."""
        refs = {slot: h.peak_rss_mb.remote() for slot, h in self.handles.items()
                if slot in self.info and ask}  # fmt: skip
        for slot, ref in refs.items():
            with suppress(Exception):  # a worker gone or stuck: its figure stays unknown
                self.info[slot].peak_rss_mb = round(float(self.ray.get(ref, timeout=30)), 1)
        for slot in list(self.handles):
            handle = self.handles.pop(slot)
            with suppress(Exception):
                self.ray.kill(handle, no_restart=True)
        return [self.info[k] for k in sorted(self.info)]
