"""Every script in examples/ runs, as a user runs it: a fresh process, from another directory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))


def test_there_are_examples():
    assert any(s.name == "compile_and_call.py" for s in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_example_runs(script, tmp_path):
    # The suite's cache (CONVGEN_CACHE_DIR from conftest) is inherited: kernels an earlier
    # test built load from it, the rest compile.
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "an example shows what it did"
    assert "False" not in done.stdout, done.stdout   # every check an example prints holds
