"""Test set-up: every test session (each xdist worker) compiles into its own fresh cache."""
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
# Set before convgen is imported anywhere, so no test touches the user's cache.
_OWN_CACHE = not os.environ.get("CONVGEN_TEST_CACHE_DIR")
os.environ["CONVGEN_CACHE_DIR"] = os.environ.get("CONVGEN_TEST_CACHE_DIR") or tempfile.mkdtemp(
    prefix="convgen-test-cache-")


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:   # a few hundred kernels: don't leave them behind in /tmp on every run
        shutil.rmtree(os.environ["CONVGEN_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """An empty cache directory of this test's own (for tests that count compiles)."""
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
