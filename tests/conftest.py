"""Test set-up: a run (all its xdist workers) compiles into one fresh cache of its own."""
import os
import shutil
import tempfile

import pytest

# The suite runs two xdist workers on two cores: libgomp's default spin, not convgen's
# longer one, so an idle worker's threads do not steal the other worker's core.
os.environ.setdefault("GOMP_SPINCOUNT", "300000")
# Plans from the ISA row's constants, not from this host's measured model: the same plans
# on every machine and in every worker (tests/test_machine.py measures on purpose).
os.environ.setdefault("CONVGEN_MACHINE", "defaults")
# Set before convgen is imported anywhere, so no test touches the user's cache. One cache
# for the whole run: the process that starts it makes the directory, and the xdist workers,
# which inherit its environment, compile into it too, so a kernel both need is compiled once
# (the cache's per-key lock) and each flag set's PCH built once. (2552 distinct kernels;
# two workers with a cache each took 14.3 min, sharing one 13.2.)
_RUN_CACHE = "CONVGEN_TEST_RUN_CACHE_DIR"
_IS_WORKER = "PYTEST_XDIST_WORKER" in os.environ
_OWN_CACHE = not os.environ.get("CONVGEN_TEST_CACHE_DIR") and not (
    _IS_WORKER and os.environ.get(_RUN_CACHE))
if _OWN_CACHE:
    os.environ[_RUN_CACHE] = tempfile.mkdtemp(prefix="convgen-test-cache-")
os.environ["CONVGEN_CACHE_DIR"] = (os.environ.get("CONVGEN_TEST_CACHE_DIR")
                                   or os.environ[_RUN_CACHE])


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:   # a few thousand kernels: don't leave them behind in /tmp on every run
        shutil.rmtree(os.environ["CONVGEN_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """An empty cache directory of this test's own (for tests that count compiles)."""
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
