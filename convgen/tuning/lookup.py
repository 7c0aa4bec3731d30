"""The tuned plan for ``compile(plan="auto")``, on the hot path of every compile call.

Memoised per process by (database, workload, target, accuracy, thread setting). A memo
entry is trusted for a second; after that one ``stat`` of the database file says whether
it changed (another process tuned), and only then is the file read again. A tune in this
process clears the memo at once (``forget``).
"""
from __future__ import annotations

import os
import threading
import time
import warnings

from . import db as tuning_db

RECHECK_S = 1.0

_MEMO: dict = {}
_DATABASES: dict = {}
_LOCK = threading.Lock()


def tuned_plan(workload, target, backend, accuracy: str, db=None):
    """The database's plan for this compile, or None (then the planner decides)."""
    environ = os.environ
    key = (db, environ.get(tuning_db.ENV), environ.get("CONVGEN_CACHE_DIR"),
           environ.get("CONVGEN_NUM_THREADS"), workload, target, accuracy)
    found = _MEMO.get(key)
    now = time.monotonic()
    if found is not None and now - found[2] < RECHECK_S:
        return found[0]
    if db is None and tuning_db.lookups_disabled():
        _MEMO[key] = (None, None, now)
        return None
    database = _database(db)
    version = database.version()
    if found is not None and found[1] == version:
        _MEMO[key] = (found[0], version, now)
        return found[0]
    plan = None
    if version is not None:
        try:
            plan = database.best(workload, target, accuracy)
        except OSError as exc:   # unreadable: the planner decides, and the user is told once
            warnings.warn(f"convgen: cannot read the tuning database {database.path}: {exc}; "
                          f"using the planner's choice", RuntimeWarning, stacklevel=3)
    _MEMO[key] = (plan, version, now)
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
