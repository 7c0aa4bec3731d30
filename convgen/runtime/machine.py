"""The machine model the CPU cost model uses: defaults, refined by what was learnt here.

``current(isa)`` is the ISA row's default throughputs on this host's caches
(``target.machine.default_machine``), with any constants fitted to a tuning database on
this machine class laid over them (``save_fit``, written by ``convgen tune fit``). The
fit is stored under the cache directory, one JSON file per machine class, and ignored
with a warning if it is unreadable or names fields the model does not have.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import warnings
from pathlib import Path

from ..target import host
from ..target.isa import Isa
from ..target.machine import Machine, default_machine
from . import cache

_FITTABLE = {f.name for f in dataclasses.fields(Machine)} - {"l1d_bytes", "l2_bytes", "l3_bytes"}


def machine_class(isa: Isa) -> str:
    """A short stable name for (this host, this ISA): what measurements on it are keyed by."""
    text = json.dumps({**host.identity(), "isa": isa.name}, sort_keys=True)
    return f"{isa.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _fit_path(isa: Isa) -> Path:
    return cache.checked_root() / "machine" / f"{machine_class(isa)}.fit.json"


def current(isa: Isa) -> Machine:
    """The model of this machine for code of ``isa`` (memoised; ``forget`` drops it)."""
    return _current(isa)


@functools.cache
def _current(isa: Isa) -> Machine:
    machine = default_machine(isa)
    fitted = load_fit(isa)
    return dataclasses.replace(machine, **fitted) if fitted else machine


def load_fit(isa: Isa) -> dict:
    """The fitted constants stored for this machine class ({} if none, or unusable)."""
    try:
        path = _fit_path(isa)
        if not path.exists():
            return {}
        stored = json.loads(path.read_text())
    except (OSError, ValueError, cache.CacheError) as exc:
        warnings.warn(f"convgen: ignoring the fitted machine model: {exc}", RuntimeWarning,
                      stacklevel=3)
        return {}
    fields = stored.get("fields") if isinstance(stored, dict) else None
    if not isinstance(fields, dict) or not set(fields) <= _FITTABLE or not all(
            isinstance(v, (int, float)) and v > 0 for v in fields.values()):
        warnings.warn(f"convgen: ignoring the fitted machine model in {path}: malformed",
                      RuntimeWarning, stacklevel=3)
        return {}
    return {k: float(v) for k, v in fields.items()}


def save_fit(isa: Isa, fields: dict, report: dict | None = None) -> Path:
    """Store fitted Machine constants for this machine class (atomically) and use them."""
    unknown = set(fields) - _FITTABLE
    if unknown:
        raise ValueError(f"fields {sorted(unknown)} are not constants of the machine model; "
                         f"fittable: {sorted(_FITTABLE)}")
    path = _fit_path(isa)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"machine_class": machine_class(isa), "identity": host.identity(),
                               "fields": fields, "report": report or {}}, indent=1))
    os.replace(tmp, path)
    forget()
    return path


def clear_fit(isa: Isa) -> None:
    try:
        _fit_path(isa).unlink()
    except FileNotFoundError:
        pass
    forget()


def forget() -> None:
    """Drop the memoised model (and the planner's choices made with it)."""
    _current.cache_clear()
