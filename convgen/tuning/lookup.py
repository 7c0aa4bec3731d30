"""The tuned plan for ``compile(plan="auto")``, on the hot path of every compile call.

Memoised per process by (database, workload, target, accuracy, thread setting). A memo
entry is trusted for a second; after that one ``stat`` of the database file says whether
it changed (another process tuned), and only then is the file read again. An append by
this process (a tune) makes every memo entry stale at once (``db.GENERATION``).
"""
from __future__ import annotations

import os
import threading
import time
import warnings

from . import db as tuning_db

RECHECK_S = 1.0

# os.environ.get encodes its key and costs more than a microsecond; the environment's own
# bytes dict (which os.environ keeps current) is read directly where CPython has it.
_RAW_ENV = getattr(os.environ, "_data", None)
if isinstance(_RAW_ENV, dict):
    _TUNING_DB, _CACHE_DIR, _THREADS = (os.environ.encodekey(name) for name in (
        tuning_db.ENV, "CONVGEN_CACHE_DIR", "CONVGEN_NUM_THREADS"))
    _getenv = _RAW_ENV.get
else:
    _TUNING_DB, _CACHE_DIR, _THREADS = tuning_db.ENV, "CONVGEN_CACHE_DIR", "CONVGEN_NUM_THREADS"
    _getenv = os.environ.get

_MEMO: dict = {}
_DATABASES: dict = {}
_LOCK = threading.Lock()


def tuned_plan(workload, target, backend, accuracy: str, db=None):
    """The database's plan for this compile, or None (then the planner decides)."""
    key = (db, _getenv(_TUNING_DB), _getenv(_CACHE_DIR), _getenv(_THREADS), workload, target,
           accuracy)
    found = _MEMO.get(key)
    now = time.monotonic()
    if found is not None and now - found[2] < RECHECK_S and found[3] == tuning_db.GENERATION:
        return found[0]
    if db is None and tuning_db.lookups_disabled():
        _MEMO[key] = (None, None, now, tuning_db.GENERATION)
        return None
    database = _database(db)
    version = database.version()
    if found is not None and found[1] == version:
        _MEMO[key] = (found[0], version, now, tuning_db.GENERATION)
        return found[0]
    plan = None
    if version is not None:
        try:
            plan = database.best(workload, target, accuracy)
        except OSError as exc:   # unreadable: the planner decides, and the user is told once
            warnings.warn(f"convgen: cannot read the tuning database {database.path}: {exc}; "
                          f"using the planner's choice", RuntimeWarning, stacklevel=3)
    _MEMO[key] = (plan, version, now, tuning_db.GENERATION)
    return plan


def _database(path) -> tuning_db.TuningDB:
    resolved = str(tuning_db.default_path() if path is None else os.path.expanduser(path))
    with _LOCK:
        found = _DATABASES.get(resolved)
        if found is None:
            found = _DATABASES[resolved] = tuning_db.TuningDB(resolved)
        return found


def forget() -> None:
    """Drop the memo (a record was just written; the next compile looks again)."""
    _MEMO.clear()
