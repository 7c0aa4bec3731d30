"""The README's install path on a fresh copy: a new virtual environment, ``pip install .``,
then the compile-and-call example run from another directory.

About 15-25 s (creating the venv, pip resolving jinja2/cffi/numpy from the configured index
or its cache, building the wheel); deselect with ``-m "not install"`` where no package index
is reachable.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.install


def fresh_copy(destination: Path) -> Path:
    """The checkout as a clone would have it: tracked and new files, nothing git ignores
    (no .venv, no build output, no egg-info)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():                    # (a file deleted but not yet committed: skip)
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                    reason="needs a git checkout to copy")
def test_pip_install_into_a_new_venv_then_run_the_example(tmp_path):
    checkout = fresh_copy(tmp_path / "checkout")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "."], cwd=checkout,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["CONVGEN_CACHE_DIR"] = str(tmp_path / "cache")
    done = subprocess.run([str(python), str(checkout / "examples" / "compile_and_call.py")],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same result as the module: True" in done.stdout
    installed = subprocess.run([str(python), "-c", "import convgen; print(convgen.__file__)"],
                               cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert installed.stdout.startswith(str(venv))        # the installed copy, not the checkout
    cli = subprocess.run([str(venv / "bin" / "convgen"), "cache", "info"], cwd=elsewhere,
                         env=env, capture_output=True, text=True)
    assert cli.returncode == 0 and "entries: 2" in cli.stdout, cli.stderr
