"""Tuning over a Dask cluster (``pip install 'convgen[distributed]'``).

Dask does the scheduling; convgen only says where each task may run, with worker
*resources* that a worker plugin (``TuningPlugin``) declares on every worker when the
tuner connects:

- ``convgen-build-<class>``: the worker can compile for the target the way this machine
  would (same compiler, same flags, and for ``-march=native`` the same CPU). Compile
  tasks ask for it, so they run on any such worker; the library's bytes travel back
  with the result.
- ``convgen-measure-<machine class>``: the worker may time kernels for records of that
  machine class (``records.machine_class``: CPU model, features, cores, compiler). One
  worker per physical machine declares it (it holds a file lock under the cache root for
  its lifetime), with a quantity of 1, so measurements on a machine never overlap.

The tuner (the Dask client) runs the search and writes every result into the database as
it arrives; each layer proceeds batch by batch, all layers at once. The machine class
tuned for is the client's own: run the tuner on a machine of the class you want records
for (a worker of that class must be in the cluster). Measurements run in a child process
of the worker (``child.Runner``), so a crashing kernel costs a child, not the worker.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time

from ..backends import backend_for, get_target
from ..runtime import cache
from . import records as rec
from .build import build, install
from .child import Runner

PLUGIN_NAME = "convgen-tuning"
RESOURCE_WAIT_S = 60.0
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}


def _dask():
    try:
        import distributed
    except ImportError as exc:
        raise ImportError("tuning on a Dask cluster needs Dask: pip install "
                          "'convgen[distributed]'") from exc
    return distributed


# -- resources -------------------------------------------------------------------------------
def build_class(target, backend) -> str:
    """Machines whose compiles for ``target`` give the same library: same compiler and
    flags, and for -march=native the same CPU."""
    parts = {"compiler": backend.toolchain_parts(target).get("compiler"),
             "target": target.name, "flags": list(target.arch_flags),
             "features": list(target.cpu_features)}
    if "-march=native" in target.arch_flags:
        from ..target import host
        parts["cpu"] = host.cpu_name()
        parts["native"] = backend.toolchain_parts(target).get("native")
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_resource(target, backend) -> str:
    return f"convgen-build-{build_class(target, backend)}"


def measure_resource(target, backend) -> str:
    return f"convgen-measure-{rec.machine_class(target, backend)}"


_MEASURE_LOCK: dict = {}


def _take_measure_lock() -> bool:
    """True if this process is (now, or already) the one measuring on this machine."""
    if "fd" in _MEASURE_LOCK:
        return True
    path = cache.checked_root() / "locks" / f"{rec.measure_lock_name()}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _MEASURE_LOCK["fd"] = fd    # held until this process exits
    return True


def worker_resources(target_names) -> dict:
    """The resources this process offers for ``target_names`` (see the module's doc)."""
    measuring = _take_measure_lock()
    found = {}
    for name in target_names:
        try:
            target = get_target(name)
            backend = backend_for(target)
            if target.missing_features():
                continue
            found[build_resource(target, backend)] = 1000
            if measuring:
                found[measure_resource(target, backend)] = 1
        except Exception:   # no compiler for this target here: offer nothing for it
            continue
    return found


def _plugin_class():
    distributed = _dask()

    class TuningPlugin(distributed.WorkerPlugin):
        """Declares each worker's convgen resources when it joins."""

        idempotent = False

        def __init__(self, target_names):
            self.target_names = tuple(target_names)

        async def setup(self, worker):
            resources = worker_resources(self.target_names)
            if resources:
                await worker.set_resources(**resources)

    return TuningPlugin


# -- the tasks (run on workers) -----------------------------------------------------------------
_STATE: dict = {}


def _runner(kind: str, env=None) -> Runner:
    runner = _STATE.get(kind)
    if runner is None:
        runner = _STATE[kind] = Runner(env)
    return runner


def _scratch() -> str:
    if "tmp" not in _STATE:
        _STATE["tmp"] = tempfile.mkdtemp(prefix="convgen-tune-worker-")
    return _STATE["tmp"]


def data_task(workload, seed: int) -> dict:
    """Input, weights and reference output (computed in a child: torch stays out of the
    worker, and its threads off the cores)."""
    from .measure import load_data
    directory = tempfile.mkdtemp(dir=_scratch())
    reply = _runner("data", WORKER_ENV).call(
        {"op": "data", "workload": workload, "seed": seed, "directory": directory}, 900)
    if reply.get("status") != "ok":
        raise RuntimeError(f"making the reference output failed: {reply.get('error')}")
    return {"key": rec.workload_key(workload), **load_data(directory)}


def build_task(workload, plan, target) -> dict:
    return build(workload, plan, target, ship=True)


def _data_dir(data: dict) -> str:
    from pathlib import Path

    from .measure import save_data
    directory = Path(_scratch()) / f"data-{data['key']}"
    if not (directory / "x.npy").exists():
        save_data({k: v for k, v in data.items() if k != "key"}, directory)
    return str(directory)


def measure_task(built: dict, data: dict, job: dict, timeout_s: float) -> dict:
    if built.get("status") != "ok":
        return {k: v for k, v in built.items() if k in ("status", "error", "compile_s")}
    install(built)
    reply = _runner("measure").call({**job, "data": _data_dir(data)}, timeout_s)
    reply.setdefault("compile_s", built.get("compile_s"))
    return reply


def confirm_task(builds: list, data: dict, job: dict, timeout_s: float) -> dict:
    for built in builds:
        install(built)
    return _runner("measure").call({**job, "data": _data_dir(data)}, timeout_s)


# -- the client's side --------------------------------------------------------------------------
def run_on_dask(sessions, progress, scheduler=None, workers=None) -> list:
    distributed = _dask()
    cluster = None
    if scheduler in (None, "local"):
        from ..target import host
        count = workers or host.usable_cores()
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"workers must be a positive number of processes, got {workers!r}")
        cluster = distributed.LocalCluster(n_workers=count, threads_per_worker=1,
                                           processes=True, dashboard_address=None)
        client = distributed.Client(cluster)
    else:
        client = distributed.Client(scheduler, timeout="30s")
    try:
        return Driver(client, sessions, progress).run()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


class Driver:
    """Runs every session's batches on the cluster and records results as they come."""

    def __init__(self, client, sessions, progress):
        self.client, self.sessions, self.progress = client, sessions, progress
        self.distributed = _dask()
        self.meta: dict = {}
        self.results: dict = {}
        self.builds: dict = {}      # (session id, plan) -> build future
        self.pending: dict = {}     # session id -> measurements in flight
        self.data: dict = {}

    def _resources(self, session):
        return (build_resource(session.target, session.backend),
                measure_resource(session.target, session.backend))

    def _register(self) -> None:
        names = sorted({s.target.name for s in self.sessions})
        self.client.register_plugin(_plugin_class()(names), name=PLUGIN_NAME)
        wanted = {self._resources(s)[1] for s in self.sessions}
        deadline = time.monotonic() + RESOURCE_WAIT_S
        while True:
            offered = set()
            for info in self.client.scheduler_info()["workers"].values():
                offered.update(info.get("resources", {}))
            missing = wanted - offered
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ValueError(
                    f"no Dask worker can measure for this machine class ({', '.join(missing)}): "
                    f"start a worker on a machine like this one (same CPU, cores and compiler), "
                    f"or run the tuner on a machine of the class you want to tune for")
            time.sleep(0.2)

    def run(self) -> list:
        self._register()
        self.queue = self.distributed.as_completed()
        for session in self.sessions:
            session.begin()
            self.progress.start(session)
            self.data[id(session)] = self.client.submit(data_task, session.workload, session.seed,
                                                        pure=False)
            self._launch(session)
        try:
            for future in self.queue:
                self._handle(future)
        except KeyboardInterrupt:
            for future in list(self.meta):
                future.cancel()
            for session in self.sessions:
                if id(session) not in self.results:
                    session.interrupted = True
                    self.progress.note(session, "interrupted: the default stays")
                    self._done(session, session.decide([], None))
        return [self.results[id(s)] for s in self.sessions]

    def _launch(self, session) -> None:
        batch = session.next_batch(max(2, self._threads()))
        if not batch:
            self._confirm(session)
            return
        build_res, measure_res = self._resources(session)
        for plan, source in batch:
            built = self.client.submit(build_task, session.workload, plan, session.target,
                                       resources={build_res: 1}, pure=False)
            measured = self.client.submit(
                measure_task, built, self.data[id(session)],
                {k: v for k, v in session.measure_job(plan).items() if k != "data"},
                session.measure_timeout(plan), resources={measure_res: 1}, pure=False)
            self.builds[(id(session), plan)] = built
            self.meta[measured] = (session, "measure", plan, source)
            self.queue.add(measured)
        self.pending[id(session)] = len(batch)

    def _threads(self) -> int:
        return sum(w.get("nthreads", 1) for w in self.client.scheduler_info()["workers"].values())

    def _confirm(self, session) -> None:
        finalists = session.finalists()
        if not finalists:
            self._done(session, session.decide([], None))
            return
        _, measure_res = self._resources(session)
        job = {k: v for k, v in session.confirm_job(finalists).items() if k != "data"}
        future = self.client.submit(
            confirm_task, [self.builds[(id(session), p)] for p in finalists],
            self.data[id(session)], job, 120.0 * len(finalists), resources={measure_res: 1},
            pure=False)
        self.meta[future] = (session, "confirm", finalists, None)
        self.queue.add(future)

    def _handle(self, future) -> None:
        session, kind, what, source = self.meta.pop(future)
        try:
            reply = future.result()
        except Exception as exc:   # the task itself failed (a worker died twice ...)
            reply = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        if kind == "confirm":
            times = reply.get("times") if reply.get("status") == "ok" else None
            if times is None:
                self.progress.note(session, f"the confirmation failed: {reply.get('error')}")
            self._done(session, session.decide(what, times))
            return
        self.progress.trial(session, session.record(what, source, reply))
        self.pending[id(session)] -= 1
        if self.pending[id(session)] == 0:
            self._launch(session)

    def _done(self, session, result) -> None:
        self.results[id(session)] = result
        self.progress.done(session, result)
        for key in [k for k in self.builds if k[0] == id(session)]:
            del self.builds[key]
