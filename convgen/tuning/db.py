"""The tuning database: JSON lines, one record per trial, readable, diffable and mergeable.

    {"schema": 1, "kind": "trial", "id": ..., "when": ..., "convgen": "0.4.6",
     "plan_space": "Plan-...", "machine_class": "x86_64-...", "machine": {...},
     "target": "cpu", "threads": 2, "accuracy": "fast", "workload": {...},
     "plan": "algorithm=... threads=2", "status": "ok", "time": {"median_s": ...}, ...}

Two kinds of record: a ``trial`` for every plan tried (its time statistics, or how it
failed), and a ``decision`` when a layer's tuning ends: the plan chosen after re-measuring
the fastest plans against the default, which is what ``compile(plan="auto")`` uses.

Appends take an exclusive ``flock`` on the file and write whole lines, so any number of
processes (and Dask clients) may record into one database without losing a record; a
line torn by a crash is closed off by the next append and ignored with a warning when
read. Readers take a shared lock.

A record is trusted (``TuningDB.best``) only for the same workload, target, thread count,
machine class and plan space (``records.py``) and only if its plan is still legal for the
workload; other records stay in the file (``convgen tune db show`` lists them) but are
never used, and the reader says how many it ignored.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .._version import __version__
from ..core.spec import Workload
from ..runtime import cache
from . import records as rec
from .records import SCHEMA, STATUSES

ENV = "CONVGEN_TUNING_DB"
OFF = ("off", "none", "0")
KINDS = ("trial", "decision")
GENERATION = 0   # appends made by this process (the lookup memo drops older answers)


def default_path() -> Path:
    """``CONVGEN_TUNING_DB`` if it names a file, else ``tuning/records.jsonl`` under the
    cache root (``CONVGEN_CACHE_DIR``)."""
    env = os.environ.get(ENV, "").strip()
    if env and env.lower() not in OFF:
        return Path(env).expanduser()
    return cache.cache_root() / "tuning" / "records.jsonl"


def lookups_disabled() -> bool:
    """``CONVGEN_TUNING_DB=off``: ``compile(plan="auto")`` ignores tuning databases."""
    return os.environ.get(ENV, "").strip().lower() in OFF


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# -- records -----------------------------------------------------------------------------------
def header(kind: str, workload: Workload, target, backend, accuracy: str, threads: int,
           session: str) -> dict:
    """The fields every record of one layer's tuning shares."""
    identity = rec.machine_identity(target, backend)
    return {"schema": SCHEMA, "kind": kind, "id": uuid.uuid4().hex, "when": now_iso(),
            "convgen": __version__, "plan_space": rec.plan_space(backend),
            "machine_class": rec.class_of(identity), "machine": identity,
            "target": target.name, "threads": threads, "accuracy": accuracy,
            "workload": rec.workload_record(workload), "session": session}


def problem_with(record) -> str | None:
    """Why ``record`` is not a well-formed tuning record (None if it is)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    schema = record.get("schema")
    if not isinstance(schema, int) or schema < 1:
        return "no schema number"
    if schema > SCHEMA:
        return f"written by a newer convgen (schema {schema}; this one reads {SCHEMA})"
    if record.get("kind") not in KINDS:
        return f"kind must be one of {KINDS}"
    for name in ("machine_class", "target", "plan", "plan_space", "id"):
        if not isinstance(record.get(name), str) or not record[name]:
            return f"field {name!r} missing"
    if not isinstance(record.get("threads"), int):
        return "field 'threads' missing"
    workload = record.get("workload")
    if not isinstance(workload, dict) or not isinstance(workload.get("key"), str):
        return "field 'workload' missing"
    status = record.get("status", "ok")
    if status not in STATUSES:
        return f"status {status!r} unknown"
    if status == "ok" or record["kind"] == "decision":
        median = (record.get("time") or {}).get("median_s") if isinstance(
            record.get("time"), dict) else None
        if not isinstance(median, (int, float)) or not median > 0:
            return "no positive median time"
    return None


# -- reading -----------------------------------------------------------------------------------
@dataclass
class Snapshot:
    """One reading of the file: its well-formed records and what was wrong with the rest."""

    version: tuple | None
    records: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    decisions: dict = field(default_factory=dict)   # (workload key, target, class, threads)
    warned: set = field(default_factory=set)

    def index(self) -> None:
        for record in self.records:
            if record["kind"] == "decision":
                key = (record["workload"]["key"], record["target"], record["machine_class"],
                       record["threads"])
                self.decisions.setdefault(key, []).append(record)
        for found in self.decisions.values():
            found.sort(key=lambda r: r["time"]["median_s"])


def _version(path: Path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def read(path: Path) -> Snapshot:
    """Every line of the file, parsed and checked (under a shared lock)."""
    snapshot = Snapshot(_version(path))
    try:
        with open(path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            try:
                data = f.read()
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    except FileNotFoundError:
        return snapshot
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            torn = number == len(lines)   # the last line, unterminated
            snapshot.problems.append(f"line {number}: not valid JSON"
                                     + (" (a write cut short?)" if torn else ""))
            continue
        problem = problem_with(record)
        if problem:
            snapshot.problems.append(f"line {number}: {problem}")
        else:
            snapshot.records.append(record)
    snapshot.index()
    return snapshot


class TuningDB:
    """A tuning database file (JSON lines). ``TuningDB()`` is the default one.

    ``best(workload, target)`` is the plan ``compile(plan="auto")`` and ``convgen build
    --tuning-db`` use: the fastest confirmed decision for that workload, target, thread
    count and this machine class, or None.
    """

    def __init__(self, path=None):
        self.path = Path(path).expanduser() if path is not None else default_path()
        self._snapshot: Snapshot | None = None

    def __repr__(self) -> str:
        return f"TuningDB({str(self.path)!r})"

    # -- reading --------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The file as last read, read again if it changed since."""
        version = _version(self.path)
        if self._snapshot is None or self._snapshot.version != version:
            self._snapshot = read(self.path)
            if self._snapshot.problems:
                shown = "; ".join(self._snapshot.problems[:3])
                more = len(self._snapshot.problems) - 3
                warnings.warn(f"convgen: tuning database {self.path}: ignoring "
                              f"{len(self._snapshot.problems)} malformed line(s): {shown}"
                              + (f" (and {more} more)" if more > 0 else ""), RuntimeWarning,
                              stacklevel=3)
        return self._snapshot

    def version(self):
        return _version(self.path)

    def records(self) -> list[dict]:
        """Every well-formed record, in file order (malformed lines are warned about)."""
        return list(self.snapshot().records)

    def best(self, workload: Workload, target="cpu", accuracy: str = "fast",
             threads: int | None = None, machine_class: str | None = None):
        """The tuned plan for ``workload`` on ``target`` (a name or a Target) as a plan
        object; None where the database has no trusted decision. ``threads`` defaults to
        this process's thread count, ``machine_class`` to this machine's: an ahead-of-time
        build for another machine names the class its records were measured on
        (``convgen tune db show --all`` lists them)."""
        from ..backends import backend_for, get_target
        from ..runtime.threads import default_threads
        target = get_target(target)
        backend = backend_for(target)
        threads = threads if threads is not None else default_threads()
        snapshot = self.snapshot()
        space = rec.plan_space(backend)
        klass = machine_class or rec.machine_class(target, backend)
        if machine_class is None:
            self._warn_foreign(snapshot, target.name, klass, space)
        found = snapshot.decisions.get((rec.workload_key(workload), target.name, klass, threads),
                                       [])
        for record in found:
            if record["plan_space"] != space:
                continue
            try:
                plan = backend.plan_type.parse(record["plan"])
                backend.resolve(plan, workload, target)    # legal at all?
            except (ValueError, TypeError) as exc:
                self._warn_once(snapshot, ("illegal", record["id"]),
                                f"convgen: tuning database {self.path}: ignoring the tuned "
                                f"plan {record['plan']!r} for {workload.spec.describe()}: {exc}")
                continue
            try:   # legal, but not for this accuracy (a Winograd plan under "strict")
                return backend.resolve(plan, workload, target, accuracy)
            except ValueError:
                continue
        return None

    def _warn_foreign(self, snapshot: Snapshot, target: str, klass: str, space: str) -> None:
        mine = [r for r in snapshot.records if r["target"] == target]
        foreign = Counter(r["machine_class"] for r in mine if r["machine_class"] != klass)
        if foreign:
            self._warn_once(snapshot, ("foreign", target),
                            f"convgen: tuning database {self.path}: ignoring "
                            f"{sum(foreign.values())} record(s) for target {target!r} measured on "
                            f"other machine classes ({', '.join(sorted(foreign))}); this machine "
                            f"is {klass}")
        stale = sum(1 for r in mine if r["machine_class"] == klass and r["plan_space"] != space)
        if stale:
            self._warn_once(snapshot, ("space", target),
                            f"convgen: tuning database {self.path}: ignoring {stale} record(s) "
                            f"for target {target!r} from a convgen whose plans differ from "
                            f"this one's ({space}); tune again to use tuned plans")

    @staticmethod
    def _warn_once(snapshot: Snapshot, key, message: str) -> None:
        if key not in snapshot.warned:
            snapshot.warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    # -- writing --------------------------------------------------------------------------
    def append(self, *new_records: dict) -> None:
        """Append whole records under an exclusive lock (no record is ever lost or torn by
        another writer)."""
        for record in new_records:
            problem = problem_with(record)
            if problem:
                raise ValueError(f"not a tuning record ({problem}): {record!r:.200}")
        data = b"".join(json.dumps(r, sort_keys=True, separators=(",", ":")).encode() + b"\n"
                        for r in new_records)
        if not data:
            return
        self._prepare_directory()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data    # close off a line torn by a writer that died
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        global GENERATION
        GENERATION += 1    # lookup.py: this process's memo of tuned plans is stale

    def _prepare_directory(self) -> None:
        parent = self.path.parent
        if self.path == cache.cache_root() / "tuning" / "records.jsonl":
            cache.checked_root()   # the cache root: created private, or refused if shared
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def merge(self, *sources) -> int:
        """Append the well-formed records of other databases that this one lacks (by record
        id); returns how many were added."""
        have = {r["id"] for r in self.records()}
        added = []
        for source in sources:
            for record in TuningDB(source).records():
                if record["id"] not in have:
                    have.add(record["id"])
                    added.append(record)
        self.append(*added)
        return len(added)
