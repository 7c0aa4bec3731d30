"""bench/network.py: a network built ahead of time, timed against torch and onnxruntime in
processes of their own, its output checked against torch's."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "network.py"


def run(*args, check=True):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          check=check, cwd=ROOT)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One run of the script on the small network, its build kept: (stdout, row, work dir)."""
    root = tmp_path_factory.mktemp("network")
    rows_file = root / "rows.json"
    done = run("--nets", "tiny_resnet", "--seconds", "0.05", "--rounds", "2", "--keep",
               str(root / "build"), "--json", str(rows_file))
    return done.stdout, json.loads(rows_file.read_text())["tiny_resnet"], root / "build"


def test_a_network_is_built_checked_and_timed(built):
    stdout, row, _ = built
    assert stdout.startswith("CPU: "), stdout
    assert "tiny_resnet" in stdout
    assert row["layers"] == 5                    # 2 + 3 convolutions (one downsample)
    assert row["rel_err"] < 1e-5
    libraries = ["convgen", "torch"] + (["onnxruntime"] if "onnxruntime" in row else [])
    assert all(row[library] > 0 for library in libraries)
    assert row["layers_ms"] > 0 and row["gflop"] > 0


def test_a_wrong_output_is_reported(built, tmp_path):
    """The check compares what the built library writes (into a poisoned buffer) with
    torch's output: a reference that disagrees shows up in the child's row."""
    work = tmp_path / "tiny_resnet"
    shutil.copytree(built[2] / "tiny_resnet", work)
    reference = np.load(work / "y.npy")
    np.save(work / "y.npy", reference * 1.01)
    done = run("--child", "convgen", "--nets", "tiny_resnet", "--work", str(work),
               "--seconds", "0.02")
    assert 0.005 < json.loads(done.stdout)["rel_err"] < 0.02


def test_an_unknown_network_is_named():
    done = run("--nets", "resnet_9000", check=False)
    assert done.returncode != 0 and "resnet_9000" in done.stderr
