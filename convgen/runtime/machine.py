"""The machine model the CPU cost model prices plans with: measured once per machine class.

``current(target, measure)`` is, for the native target ("cpu"), this host's caches with
the throughputs the backend's micro-benchmarks measured (``measure(isa) -> fields``, run
on first use and stored under the cache directory), and any constants fitted to a tuning
database on this machine class laid over them (``save_fit``, from ``convgen tune fit``).
For a named target (x86-64-v3/v4, c) it is the ISA row's defaults: code built for another
machine must not be planned by this one's numbers.

Stored as ``<cache>/machine/<class>.json`` (written atomically; measuring holds
``<class>.lock``, so processes starting together measure once). A stored model that is
unreadable, from another model version or malformed is measured again, with a warning.
``CONVGEN_MACHINE=defaults`` skips the measurement and uses the ISA row's constants (with
any fitted ones laid over them).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import time
import warnings
from pathlib import Path

from ..target import Target, host
from ..target.isa import Isa
from ..target.machine import Machine, default_machine
from . import cache

MODEL_VERSION = 12  # 12: adds and FMAs mixed (Winograd's transforms);
                    # 11: the in-core rates sampled at three moments (a shared core's
                    #     slow spells);
                    # 10: L3's latency and misses in flight past the L2 (8x its size);
                    # 9: the FMA rate of 1, 2, ... independent chains;
                    # 8: the broadcast FMA rate within 16 registers (AVX2 spilled);
                    # 7: misses in flight per level; 6: a parallel region's fork/join;
                    # 5: the L2 tile rate measured without binding on the FMAs
_SIZES = {"l1d_bytes", "l2_bytes", "l3_bytes"}
FIELDS = {f.name for f in dataclasses.fields(Machine)} - _SIZES
LOCK_TIMEOUT_S = 120.0


def machine_class(isa: Isa) -> str:
    """A short stable name for (this host, this ISA): what measurements on it are keyed by."""
    text = json.dumps({**host.identity(), "isa": isa.name}, sort_keys=True)
    return f"{isa.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _directory() -> Path:
    directory = cache.checked_root() / "machine"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


def _path(isa: Isa, kind: str) -> Path:
    return _directory() / f"{machine_class(isa)}.{kind}.json"


# -- the model -------------------------------------------------------------------------------
def current(target: Target, measure=None) -> Machine:
    """The model of the machine ``target``'s code runs on (memoised; ``forget`` drops it).
    ``measure(isa) -> dict | None`` measures this host when nothing is stored yet."""
    if target.name != "cpu":
        return default_machine(target.isa_row)
    measured = os.environ.get("CONVGEN_MACHINE", "").strip() != "defaults"
    return _current(target.isa_row, measure if measured else None, measured)


@functools.cache
def _current(isa: Isa, measure, use_measured: bool) -> Machine:
    machine = default_machine(isa)
    measured = measured_fields(isa, measure) if use_measured else {}
    if measured:
        machine = dataclasses.replace(machine, **measured)
    fitted = load_fit(isa)
    return dataclasses.replace(machine, **fitted) if fitted else machine


def describe(target: Target, measure=None) -> dict:
    """The model and where each number came from (for ``convgen machine``)."""
    machine = current(target, measure)
    isa = target.isa_row
    measured = _read(isa, "measured", quiet=True) if target.name == "cpu" else None
    fitted = load_fit(isa) if target.name == "cpu" else {}
    origin = {}
    for name in FIELDS:
        origin[name] = ("fitted" if name in fitted else
                        "measured" if measured and name in (measured.get("fields") or {}) else
                        "default")
    return {"machine_class": machine_class(isa), "identity": host.identity(),
            "target": target.name, "isa": isa.name, "vector_bytes": isa.vector_bytes,
            "model": dataclasses.asdict(machine),
            "origin": origin,
            "measured_at": measured.get("measured_at") if measured else None,
            "measure_seconds": (measured.get("fields") or {}).get("measure_seconds")
            if measured else None}


def forget() -> None:
    """Drop the memoised model (the planner re-plans: the model is part of its memo key)."""
    _current.cache_clear()


# -- measured constants ----------------------------------------------------------------------
def measured_fields(isa: Isa, measure=None) -> dict:
    """The stored measurement, else a new one (under the class's lock), else {}."""
    stored = _read(isa, "measured")
    if stored is not None or measure is None:
        return _usable(stored)
    with _locked(isa):
        stored = _read(isa, "measured", quiet=True)   # measured while we waited?
        if stored is None:
            fields = measure(isa)
            stored = {"version": MODEL_VERSION, "machine_class": machine_class(isa),
                      "identity": host.identity(), "measured_at": time.time(),
                      "fields": fields,
                      "reason": None if fields else "this host cannot be measured"}
            _write(_path(isa, "measured"), stored)
    return _usable(stored)


def remeasure(isa: Isa, measure) -> dict:
    """Measure again now, replacing what is stored."""
    with contextlib.suppress(FileNotFoundError):
        _path(isa, "measured").unlink()
    forget()
    return measured_fields(isa, measure)


def _usable(stored: dict | None) -> dict:
    fields = (stored or {}).get("fields") or {}
    return {k: tuple(float(x) for x in v) if isinstance(v, list) else float(v)
            for k, v in fields.items() if k in FIELDS}


def _positive(value) -> bool:
    """A stored field's value: a positive finite number, or a non-empty list of them."""
    if isinstance(value, list):
        return bool(value) and all(_positive(x) for x in value)
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            and value != float("inf"))


def _read(isa: Isa, kind: str, quiet: bool = False) -> dict | None:
    """A stored record, validated; None (and a warning unless quiet) if it is unusable."""
    try:
        path = _path(isa, kind)
        if not path.exists():
            return None
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problem = f"unreadable ({exc})"
    else:
        problem = _problem(record, isa)
        if problem is None:
            return record
    if not quiet:
        warnings.warn(f"convgen: ignoring the stored machine model ({kind}) of "
                      f"{machine_class(isa)}: {problem}; measuring again", RuntimeWarning,
                      stacklevel=4)
    return None


def _problem(record, isa: Isa) -> str | None:
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("version") != MODEL_VERSION:
        return f"model version {record.get('version')!r}, not {MODEL_VERSION}"
    if record.get("machine_class") != machine_class(isa):
        return "recorded for another machine class"
    fields = record.get("fields")
    if fields is None:
        return None if record.get("reason") else "no fields and no reason"
    if not isinstance(fields, dict):
        return "malformed fields"
    bad = [k for k, v in fields.items() if k in FIELDS and not _positive(v)]
    return f"fields {bad} are not positive numbers" if bad else None


def _write(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(isa: Isa):
    path = _directory() / f"{machine_class(isa)}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        deadline, pause = time.monotonic() + LOCK_TIMEOUT_S, 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:   # a hung measurer: measure anyway
                    break
                time.sleep(pause)
                pause = min(2 * pause, 0.1)
        yield
    finally:
        os.close(fd)


# -- constants fitted to a tuning database ---------------------------------------------------
def load_fit(isa: Isa) -> dict:
    """The fitted constants stored for this machine class ({} if none, or unusable)."""
    try:
        path = _path(isa, "fit")
        if not path.exists():
            return {}
        stored = json.loads(path.read_text())
    except (OSError, ValueError, cache.CacheError) as exc:
        warnings.warn(f"convgen: ignoring the fitted machine model: {exc}", RuntimeWarning,
                      stacklevel=3)
        return {}
    fields = stored.get("fields") if isinstance(stored, dict) else None
    if not isinstance(fields, dict) or not set(fields) <= FIELDS or not all(
            isinstance(v, (int, float)) and v > 0 for v in fields.values()):
        warnings.warn(f"convgen: ignoring the fitted machine model in {path}: malformed",
                      RuntimeWarning, stacklevel=3)
        return {}
    return {k: float(v) for k, v in fields.items()}


def save_fit(isa: Isa, fields: dict, report: dict | None = None) -> Path:
    """Store fitted Machine constants for this machine class (atomically) and use them."""
    unknown = set(fields) - FIELDS
    if unknown:
        raise ValueError(f"fields {sorted(unknown)} are not constants of the machine model; "
                         f"fittable: {sorted(FIELDS)}")
    path = _path(isa, "fit")
    _write(path, {"machine_class": machine_class(isa), "identity": host.identity(),
                  "fields": fields, "report": report or {}})
    forget()
    return path


def clear_fit(isa: Isa) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(isa, "fit").unlink()
    forget()
