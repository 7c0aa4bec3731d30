"""Test set-up: every test session compiles into its own fresh cache directory."""
import os
import tempfile

import pytest

# Set before convgen is imported anywhere, so no test touches the user's cache.
os.environ["CONVGEN_CACHE_DIR"] = os.environ.get("CONVGEN_TEST_CACHE_DIR") or tempfile.mkdtemp(
    prefix="convgen-test-cache-")


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """An empty cache directory of this test's own (for tests that count compiles)."""
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
