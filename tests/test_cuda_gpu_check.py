"""The one-call GPU check (bench/gpu_check.sh, `make gpu-check`) is ready for a lent GPU: its
preparation works here, it carries wheels the GPU image's Python can install, and without
a GPU it stops at once with a clear message instead of hanging. bench/cuda_compare.py parses
its options and refuses clearly without a GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def run_check(*args, env=None, timeout=60):
    start = time.monotonic()
    result = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                            env=env, timeout=timeout, cwd=ROOT)
    return result, time.monotonic() - start


def test_preparation_works(tmp_path):
    result, _ = run_check("--prepare-only", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    log = (tmp_path / "gpu_check.log").read_text()
    assert "prepared: suite 23 layers" in log and "cffi" in log and "pycparser" in log


def test_the_carried_wheels_fit_the_gpu_image():
    """CPython 3.12 on x86-64 Linux (the image's python3), cffi and its one dependency."""
    wheels = sorted((ROOT / "bench" / "wheels").glob("*.whl"))
    names = {w.name.split("-")[0] for w in wheels}
    assert names == {"cffi", "pycparser"}
    for wheel in wheels:
        tags = wheel.name[:-4].split("-")[-3:]
        assert tags[0] in ("cp312", "py3"), wheel.name
        assert tags[2] == "any" or ("manylinux" in tags[2] and "x86_64" in tags[2]), wheel.name
        with zipfile.ZipFile(wheel) as archive:   # a real wheel, not a pointer file
            assert any(n.endswith("METADATA") for n in archive.namelist())


def test_without_a_gpu_it_stops_at_once_and_says_why(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed: no devices were found' >&2\n"
                   "exit 9\n")
    smi.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{os.environ['PATH']}")
    env.pop("OUT", None)
    result, seconds = run_check(str(out), env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    assert seconds < 30
    log = (out / "gpu_check.log").read_text()
    assert "no GPU" in log and "no devices were found" in log


def test_without_nvidia_smi_at_all(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin")
    result, seconds = run_check(str(tmp_path), env=env)
    if result.returncode != 3 and Path("/usr/bin/nvidia-smi").exists():
        pytest.skip("nvidia-smi lives in /usr/bin here")
    assert result.returncode == 3 and seconds < 30
    assert "nvidia-smi is not installed" in (tmp_path / "gpu_check.log").read_text()


def test_the_suite_in_the_repository_is_the_public_one():
    suite = json.loads((ROOT / "bench" / "suite_public.json").read_text())
    assert len(suite["layers"]) == 23
    shared = ROOT.parent / "shared" / "bench" / "suite_public.json"
    if shared.exists():
        assert json.loads(shared.read_text())["layers"] == suite["layers"]


def test_cuda_compare_refuses_clearly_without_a_gpu():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "cuda_compare.py"),
                             "--layers", "inception_3x3", "--candidates", "2"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2
    assert "needs an NVIDIA GPU" in result.stderr


def test_cuda_compare_helpers():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import cuda_compare
    finally:
        sys.path.pop(0)
    layers = {layer["name"]: layer for layer in cuda_compare.load_suite(
        cuda_compare.DEFAULT_SUITE, None)}
    assert cuda_compare.is_depthwise(layers["mbv1_dw_112"])
    assert not cuda_compare.is_depthwise(layers["grouped_32"])
    assert not cuda_compare.is_depthwise(layers["deconv3d"])
    assert cuda_compare.geomean([2.0, 0.5, None]) == pytest.approx(1.0)
