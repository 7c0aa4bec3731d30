"""The tuning loop: budgets, compile workers, one measurement at a time, Ctrl-C, the verdict.

A ``Session`` is one layer's tuning (its space, its search, its trials, its records); an
engine runs sessions. The local engine compiles each batch of candidates in worker
processes (one per core) while a single measurement child checks and times them one after
another. Where the machine has cores to spare beyond the kernels' threads, measurements
start as soon as a candidate is compiled; otherwise they wait until the batch's compiles
are done, so no compiler shares the cores with a kernel being timed.

When the budget is spent (or on Ctrl-C: the first stops the search, a second skips the
confirmation) the fastest plan, the runner-up and the default are measured again,
interleaved. The winner is recorded as the decision only if it beats the default by more
than the noise of those runs; otherwise the decision is the default. Every trial is in
the database the moment it is measured, so an interrupted run loses nothing measured.
"""
from __future__ import annotations

import math
import signal
import tempfile
import threading
import uuid
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, ThreadPoolExecutor, wait

from ..api import as_spec, layer_dtype
from ..backends import backend_for, get_target
from ..core.limits import check_workload_limits
from ..core.planning import check_accuracy
from ..core.spec import workload_of
from ..runtime.threads import default_threads
from ..target import host
from . import db as tuning_db
from .child import Runner
from .progress import Clock, Progress
from .results import TimeStats, Trial, TuneResult
from .search import Search, Space

MEASURE_TIMEOUT_S = 120.0
BUILD_TIMEOUT_S = 900.0
# Compile workers also compute the reference output (torch, OpenMP): their threads must
# sleep when idle, not spin on the cores a kernel is being timed on.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"}


def _check_budget(trials, seconds) -> None:
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int)
                               or trials < 1):
        raise ValueError(f"trials must be a positive int or None, got {trials!r}")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not seconds > 0):
        raise ValueError(f"seconds must be a positive number or None, got {seconds!r}")
    if trials is None and seconds is None:
        raise ValueError("give a budget: trials, seconds or both")


class Session:
    """One layer's tuning: the space, the search, the trials, the records."""

    def __init__(self, name: str, workload, target, accuracy: str, trials, seconds,
                 database: tuning_db.TuningDB, plans=(), seed: int = 0, min_time: float = 0.1):
        self.name, self.workload, self.target, self.accuracy = name, workload, target, accuracy
        self.trial_budget, self.seconds = trials, seconds
        self.db, self.seed, self.min_time = database, seed, min_time
        self.backend = backend_for(target)
        self.threads = default_threads()
        self.default = self.backend.choose(workload, target, None, accuracy)
        self.space = Space([c for c in self.backend.candidates(workload, target, accuracy)
                            if _arithmetic_allowed(c.plan, self.default)])
        user = [self._user_plan(p) for p in plans]
        self.search = Search(self.space, self.default, user, seed=seed, trials=trials)
        self.trials: list[Trial] = []
        self.session_id = uuid.uuid4().hex
        self.clock: Clock | None = None
        self.interrupted = False
        self.data_dir: str | None = None

    def _user_plan(self, plan):
        if isinstance(plan, str):
            plan = self.backend.plan_type.parse(plan) if "=" in plan else plan
        return self.backend.resolve(plan, self.workload, self.target, self.accuracy)

    # -- budget -----------------------------------------------------------------------------
    def begin(self) -> None:
        self.clock = Clock()

    def elapsed(self) -> float:
        return self.clock.elapsed() if self.clock else 0.0

    def has_budget(self) -> bool:
        if self.interrupted or self.search.exhausted():
            return False
        if self.trial_budget is not None and len(self.trials) >= self.trial_budget:
            return False
        return self.time_remains()

    def time_remains(self) -> bool:
        """Within the seconds budget (the default plan is measured whatever the budget)."""
        return self.seconds is None or not self.trials or self.elapsed() < self.seconds

    def next_batch(self, size: int) -> list:
        if not self.has_budget():
            return []
        if self.trial_budget is not None:
            size = min(size, self.trial_budget - len(self.trials))
        return self.search.propose(size)

    def budget_text(self) -> str:
        parts = []
        if self.trial_budget is not None:
            parts.append(f"{self.trial_budget} trials")
        if self.seconds is not None:
            parts.append(f"{self.seconds:g} s")
        return " / ".join(parts)

    def time_left(self) -> float | None:
        elapsed = self.elapsed()
        left = [self.seconds - elapsed] if self.seconds is not None else []
        done = len(self.trials)
        if self.trial_budget is not None and done:
            left.append(elapsed / done * (self.trial_budget - done))
        return max(0.0, min(left)) if left else None

    # -- results ----------------------------------------------------------------------------
    def record(self, plan, source: str, result: dict) -> Trial:
        """A trial from a build or measurement result; written to the database at once."""
        stats = TimeStats.from_dict(result["time"]) if result.get("status") == "ok" else None
        trial = Trial(len(self.trials), plan, result.get("status", "error"), source, stats,
                      str(result.get("error", ""))[:2000], self.space.predicted.get(plan),
                      result.get("rel_err"), result.get("compile_s"), self.elapsed())
        self.trials.append(trial)
        self.search.observe(plan, stats.median_s if stats else None)
        record = self._header("trial")
        record.update(plan=str(plan), status=trial.status, error=trial.error,
                      time=stats.as_dict() if stats else None, predicted_s=trial.predicted_s,
                      rel_err=_finite(trial.rel_err), compile_s=trial.compile_s,
                      source=source, trial=trial.index, elapsed_s=round(trial.elapsed_s, 3))
        self.db.append(record)
        return trial

    def _header(self, kind: str) -> dict:
        record = tuning_db.header(kind, self.workload, self.target, self.backend, self.accuracy,
                                  self.threads, self.session_id)
        record["name"] = self.name
        return record

    def ranked(self) -> list[Trial]:
        return sorted((t for t in self.trials if t.ok), key=lambda t: t.time.median_s)

    def best_time(self) -> float | None:
        ranked = self.ranked()
        return ranked[0].time.median_s if ranked else None

    def default_time(self) -> float | None:
        found = [t for t in self.trials if t.ok and t.plan == self.default]
        return found[0].time.median_s if found else None

    def finalists(self) -> list:
        """The fastest plan, the runner-up and the default, where measured."""
        chosen = [t.plan for t in self.ranked()[:2]]
        if self.default_time() is not None and self.default not in chosen:
            chosen.append(self.default)
        return chosen

    def decide(self, finalists: list, times: list | None) -> TuneResult:
        """The verdict from the confirmation runs (None: not confirmed; the default stays)."""
        result = TuneResult(self.name, self.workload, self.target, self.default, self.default,
                            list(self.trials), interrupted=self.interrupted,
                            elapsed_s=self.elapsed(), db=str(self.db.path))
        if not times:
            result.note = ("no plan could be measured" if not self.ranked() else
                           "the confirmation did not run: nothing recorded as better")
            return result
        stats = {plan: TimeStats.from_dict(t) for plan, t in zip(finalists, times)}
        winner = min(stats, key=lambda p: stats[p].median_s)
        default_stats = stats.get(self.default)
        if default_stats is not None and winner != self.default:
            noise = max(0.01, (default_stats.spread + stats[winner].spread) / 4)
            gain = default_stats.median_s / stats[winner].median_s
            if gain < 1 + noise:
                result.note = (f"kept the default: {winner} measured {gain:.3f}x the default, "
                               f"within the noise of the runs ({noise:.1%})")
                winner = self.default
        others = sorted((p for p in stats if p != winner), key=lambda p: stats[p].median_s)
        result.best, result.best_time = winner, stats[winner]
        result.default_time = default_stats
        result.confirmed = True
        record = self._header("decision")
        record.update(plan=str(winner), time=stats[winner].as_dict(), status="ok",
                      default_plan=str(self.default),
                      default_time=default_stats.as_dict() if default_stats else None,
                      runner_up=str(others[0]) if others else None,
                      runner_up_time=stats[others[0]].as_dict() if others else None,
                      speedup=result.speedup, trials=len(self.trials),
                      elapsed_s=round(self.elapsed(), 3), interrupted=self.interrupted,
                      note=result.note)
        self.db.append(record)
        return result

    # -- jobs -------------------------------------------------------------------------------
    def measure_job(self, plan) -> dict:
        settings = self.settings()
        best = self.best_time()
        if best is not None:   # a plan 10x slower than the best is timed 3 times, not for long
            settings["cutoff_s"] = 10 * best
        return {"op": "measure", "workload": self.workload, "plan": plan, "target": self.target,
                "data": self.data_dir, "settings": settings}

    def confirm_job(self, plans: list) -> dict:
        return {"op": "confirm", "workload": self.workload, "plans": plans,
                "target": self.target, "data": self.data_dir, "settings": self.settings()}

    def settings(self) -> dict:
        return {"min_time_s": self.min_time, "warmup_s": max(0.01, self.min_time / 5),
                "min_runs": 5}

    def measure_timeout(self, plan) -> float:
        predicted = self.space.predicted.get(plan) or 0.0
        return MEASURE_TIMEOUT_S + 20 * self.min_time + 2000 * predicted


def _arithmetic_allowed(plan, default) -> bool:
    """CUDA plans carry their arithmetic (``math``): the space keeps what "auto" may use,
    the default's own, and fp32 besides TF32 where TF32 is allowed (CONVGEN_CUDA_TF32).
    (The CUDA backend's ``candidates`` lists every arithmetic; ``choose`` filters.)"""
    math_ = getattr(plan, "math", None)
    if math_ is None:
        return True
    return math_ == default.math or (default.math == "tf32" and math_ == "fp32")


def _finite(value):
    return value if value is None or math.isfinite(value) else None


# -- Ctrl-C ----------------------------------------------------------------------------------
class Interrupts:
    """SIGINT as flags, read by the loop at safe points: the first sets ``stop`` (end the
    search, confirm what was measured), the second ``skip`` (skip the confirmation), a
    third raises KeyboardInterrupt. Outside the main thread nothing is installed."""

    def __init__(self):
        self.count = 0
        self._previous = None

    stop = property(lambda self: self.count >= 1)
    skip = property(lambda self: self.count >= 2)

    def _handler(self, signum, frame):
        self.count += 1
        if self.count >= 3:
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


# -- the local engine ----------------------------------------------------------------------------
class LocalEngine:
    """Compile workers (child processes, one per core) and one measurement child."""

    def __init__(self, threads: int):
        cores = host.usable_cores()
        self.overlap = cores >= threads + 2      # spare cores: compile while measuring
        self.workers = max(1, cores - threads) if self.overlap else max(1, cores)
        self.batch = max(2, self.workers)
        self._local = threading.local()
        self._runners: list[Runner] = []
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="convgen-build")
        self.runner = Runner()
        self.interrupts = Interrupts()
        self._tmp = tempfile.TemporaryDirectory(prefix="convgen-tune-")

    def _worker_call(self, job: dict, timeout_s: float) -> dict:
        runner = getattr(self._local, "runner", None)
        if runner is None:
            runner = self._local.runner = Runner(WORKER_ENV)
            with self._lock:
                self._runners.append(runner)
        reply = runner.call(job, timeout_s)
        if reply.get("status") in ("crash", "timeout", "error") and job["op"] == "build":
            reply = {"status": "compile_error", "error": f"the compile worker failed: "
                                                          f"{reply.get('error', '')}"}
        return reply

    def run(self, session: Session, progress: Progress) -> TuneResult:
        session.begin()
        progress.start(session)
        directory = tempfile.mkdtemp(dir=self._tmp.name)
        data = self.pool.submit(self._worker_call, {"op": "data", "workload": session.workload,
                                                    "seed": session.seed,
                                                    "directory": directory}, BUILD_TIMEOUT_S)
        pending: dict = {}
        with Interrupts() as interrupts:
            self.interrupts = interrupts
            while session.has_budget() and not interrupts.stop:
                batch = session.next_batch(self.batch)
                if not batch:
                    break
                pending = {self.pool.submit(self._worker_call, {
                    "op": "build", "workload": session.workload, "plan": plan,
                    "target": session.target}, BUILD_TIMEOUT_S): (plan, source)
                    for plan, source in batch}
                if self._ensure_data(session, data):
                    self._measure_batch(session, pending, progress)
                for future in pending:
                    future.cancel()
            if interrupts.stop:
                session.interrupted = True
                progress.note(session, "interrupted: confirming the best plan so far "
                                       "(Ctrl-C again to skip)")
            return self._finish(session, progress)

    def _wait(self, futures, return_when=FIRST_COMPLETED):
        """``concurrent.futures.wait`` in short slices, so Ctrl-C is seen (a signal must never
        interrupt the futures' own locking: a KeyboardInterrupt raised inside ``wait`` can
        leave a future's lock held, and the pool's shutdown waits on it for ever)."""
        while not self.interrupts.stop:
            done, _ = wait(futures, timeout=0.2, return_when=return_when)
            if done and (return_when == FIRST_COMPLETED or len(done) == len(futures)):
                return done
        return set()

    def _ensure_data(self, session: Session, data) -> bool:
        if session.data_dir is None:
            if not self._wait({data}):
                return False
            reply = data.result()
            if reply.get("status") != "ok":
                raise RuntimeError(f"could not make the reference output for "
                                   f"{session.name}: {reply.get('error')}")
            session.data_dir = reply["data"]
        return True

    def _measure_batch(self, session: Session, pending: dict, progress: Progress) -> None:
        remaining = set(pending)
        if not self.overlap:
            self._wait(remaining, ALL_COMPLETED)
        while remaining and not self.interrupts.stop:
            done = self._wait(remaining)
            for future in sorted(done, key=lambda f: list(pending).index(f)):
                remaining.discard(future)
                plan, source = pending[future]
                if not session.time_remains() or self.interrupts.stop:
                    return
                built = future.result()
                if built.get("status") != "ok":
                    result = built
                else:
                    result = self.runner.call(session.measure_job(plan),
                                              session.measure_timeout(plan),
                                              lambda: self.interrupts.stop)
                    if result.get("status") == "cancelled":
                        return     # Ctrl-C during the measurement: it does not count
                    result.setdefault("compile_s", built.get("compile_s"))
                progress.trial(session, session.record(plan, source, result))

    def _finish(self, session: Session, progress: Progress) -> TuneResult:
        finalists = session.finalists()
        times = None
        if finalists:
            reply = self.runner.call(session.confirm_job(finalists),
                                     MEASURE_TIMEOUT_S * len(finalists),
                                     lambda: self.interrupts.skip)
            times = reply.get("times") if reply.get("status") == "ok" else None
            if reply.get("status") == "cancelled":
                session.interrupted = True
                progress.note(session, "confirmation skipped")
            elif times is None:
                progress.note(session, f"the confirmation failed: {reply.get('error')}")
        result = session.decide(finalists, times)
        progress.done(session, result)
        return result

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.runner.close()
        for runner in self._runners:
            runner.close()
        self._tmp.cleanup()


# -- the API --------------------------------------------------------------------------------
def make_session(name, layer, input_shape, dtype, target, trials, seconds, database, accuracy,
                 plans=(), seed=0, min_time=0.1) -> Session:
    spec = as_spec(layer)
    workload, _ = workload_of(spec, input_shape, layer_dtype(layer) if dtype is None else dtype)
    check_workload_limits(workload)
    if name is None:
        name = f"{spec.op}_{'x'.join(map(str, workload.input_shape))}"
    return Session(name, workload, target, accuracy, trials, seconds, database, plans, seed,
                   min_time)


def _common(target, trials, seconds, db, accuracy, min_time):
    _check_budget(trials, seconds)
    if not isinstance(min_time, (int, float)) or not min_time > 0:
        raise ValueError(f"min_time must be a positive number of seconds, got {min_time!r}")
    return get_target(target), tuning_db.TuningDB(db), check_accuracy(accuracy)


def tune(layer, input_shape, target="cpu", trials=64, seconds=None, db=None, *, dtype=None,
         accuracy="fast", plans=(), workers=None, scheduler=None, progress=None, report=None,
         name=None, seed=0, min_time=0.1) -> TuneResult:
    resolved, database, accuracy = _common(target, trials, seconds, db, accuracy, min_time)
    session = make_session(name, layer, input_shape, dtype, resolved, trials, seconds, database,
                           accuracy, plans, seed, min_time)
    return _run([session], workers, scheduler, progress, report)[0]


def tune_many(layers, target="cpu", trials=64, seconds=None, db=None, *, accuracy="fast",
              workers=None, scheduler=None, progress=None, report=None, seed=0,
              min_time=0.1) -> list[TuneResult]:
    resolved, database, accuracy = _common(target, trials, seconds, db, accuracy, min_time)
    sessions = []
    for entry in layers:
        name, layer, shape, dtype = _layer_entry(entry)
        sessions.append(make_session(name, layer, shape, dtype, resolved, trials, seconds,
                                     database, accuracy, (), seed, min_time))
    if not sessions:
        raise ValueError("layers: nothing to tune (no conv layers given)")
    return _run(sessions, workers, scheduler, progress, report)


def _layer_entry(entry):
    if not isinstance(entry, (tuple, list)) or len(entry) not in (3, 4):
        raise TypeError(f"layers: each entry must be (name, layer, input_shape[, dtype]), "
                        f"got {entry!r:.120}")
    return (*entry, None) if len(entry) == 3 else tuple(entry)


def _run(sessions, workers, scheduler, progress, report) -> list[TuneResult]:
    shown = progress if isinstance(progress, Progress) else Progress(progress)
    if scheduler is not None or workers is not None:
        from .distributed import run_on_dask
        results = run_on_dask(sessions, shown, scheduler=scheduler, workers=workers)
    else:
        engine = LocalEngine(sessions[0].threads)
        try:
            results = []
            for session in sessions:
                results.append(engine.run(session, shown))
                if session.interrupted:
                    break
        finally:
            engine.close()
    if report is not None:
        from .report import write_report
        write_report(results, report)
    return results
