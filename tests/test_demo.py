"""``make demo`` (``python -m convgen.demo``), the quick start's first command: every sample
layer compiled, checked against the reference and timed; a second run loads them all."""
from __future__ import annotations

import os
import subprocess
import sys

from convgen.demo import SAMPLE_LAYERS


def _demo(cache_dir) -> str:
    env = {**os.environ, "CONVGEN_CACHE_DIR": str(cache_dir)}
    done = subprocess.run([sys.executable, "-m", "convgen.demo"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_demo_compiles_checks_and_times_every_sample_then_loads_them(tmp_path):
    first = _demo(tmp_path / "cache")
    assert "machine model: " in first
    n = len(SAMPLE_LAYERS)
    assert first.count(" OK\n") == n and "MISMATCH" not in first
    assert f"\n{n} compiled, 0 loaded from the disk cache; all match the reference." in first
    second = _demo(tmp_path / "cache")
    assert f"\n0 compiled, {n} loaded from the disk cache; all match the reference." in second
