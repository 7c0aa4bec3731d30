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
    assert "prepared: suites of 23 and 7 layers" in log and "cffi" in log and "pycparser" in log


def test_it_writes_no_more_files_than_the_device_returns():
    """The device runner returns at most 8 files from the output folder: count what the
    script writes there; the comparisons' JSON and the refitted model go into one
    tarball."""
    import re
    text = SCRIPT.read_text()
    names = set(re.findall(r'\$OUTDIR/([A-Za-z0-9_.]+)"', text))
    runs = re.findall(r"^\s*compare (\w+) ", text, flags=re.M)
    assert names == {"gpu_check.log", "gpu_tests.log", "compare.txt", "sanitizer.log",
                     "ncu.txt", "results.tar.gz"}, names
    assert runs == ["tf32", "fp32", "gpu_tf32", "gpu_fp32", "refit_tf32"], runs
    assert '--json "$RESULTS/compare_$1.json"' in text


def test_the_gpu_suite_is_valid_and_gpu_sized():
    """bench/suite_gpu.json: every layer builds a spec, and each fills a 132-SM GPU (at
    least 1 GFLOP), unlike the public suite's batch-1 layers."""
    from convgen.core.layers import spec_from_op
    from convgen.core.spec import workload_of
    layers = json.loads((ROOT / "bench" / "suite_gpu.json").read_text())["layers"]
    assert len({layer["name"] for layer in layers}) == len(layers) == 7
    for layer in layers:
        spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])
        workload, _ = workload_of(spec, tuple(layer["x"]), "float32")
        assert layer["x"][0] == 32
        assert workload.flops >= 1e8 if "dw" in layer["name"] else workload.flops >= 1e9


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


# -- bench/cuda_compare.py end to end on a stand-in GPU: the CPU build of torch behind a
# proxy whose "cuda" tensors live on the CPU and whose events read the host clock, and
# stand-in kernels that compute with torch. What runs is the script's own control flow
# (compile list, warm-up, candidate sweep, interleaved timing, graph fallback, poisoned
# error check, table, JSON): a mistake there would cost a lent GPU's minutes.
class _StandInCuda:
    class Event:
        def __init__(self, enable_timing=False):
            self.at = None

        def record(self):
            self.at = time.perf_counter()

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return (end.at - self.at) * 1e3

    @staticmethod
    def is_available():
        return True

    @staticmethod
    def synchronize():
        pass

    @staticmethod
    def get_device_properties(index):
        from types import SimpleNamespace
        return SimpleNamespace(name="stand-in GPU", multi_processor_count=132)

    current = "the caller's stream"

    @staticmethod
    def Stream():
        raise RuntimeError("the stand-in has no graphs")

    @staticmethod
    def _sleep(cycles):
        pass

    @classmethod
    def current_stream(cls):
        return cls.current

    @classmethod
    def set_stream(cls, stream):
        cls.current = stream


class _StandInTorch:
    def __init__(self, torch):
        from types import SimpleNamespace
        self._torch, self.cuda = torch, _StandInCuda()
        self.version = SimpleNamespace(cuda="stand-in")

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def Generator(self, device=None):
        return self._torch.Generator()

    def randn(self, shape, device=None, generator=None):
        return self._torch.randn(shape, generator=generator)

    def empty(self, shape, dtype=None, device=None):
        return self._torch.empty(shape, dtype=dtype or self._torch.float32)


class _StandInKernel:
    def __init__(self, layer, index, torch):
        import torch.nn.functional as F
        self.op, self.args, self.torch = getattr(F, layer["op"]), layer["args"], torch
        self.plan = f"stand-in plan {index}"
        x = torch.zeros(layer["x"])
        self.output_shape = tuple(self.op(x, torch.zeros(layer["w"]), **self.args).shape)
        self.flops = 1e9
        self.index = index

    def __call__(self, x, w, b, out, stream=None):
        assert stream == "the caller's stream"   # torch's current stream, passed on
        time.sleep(2e-4 * (1 + self.index % 2))   # the odd candidates are slower
        out.copy_(self.op(x.double(), w.double(), b.double(), **self.args).float())
        return out


def test_cuda_compare_runs_end_to_end_on_a_stand_in_gpu(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import cuda_compare
    finally:
        sys.path.pop(0)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho '1980, 0x0000000000000000'\n")
    (fake / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "torch", _StandInTorch(torch))
    monkeypatch.setitem(sys.modules, "pynvml", None)
    layers = [{"name": "one", "op": "conv2d", "x": [1, 3, 9, 8], "w": [4, 3, 3, 3],
               "args": {"padding": 1}},
              {"name": "two", "op": "conv_transpose1d", "x": [2, 4, 7], "w": [4, 2, 3],
               "args": {"stride": 2}}]
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"layers": layers}))

    def compile_all(chosen, target, candidates, jobs):
        return {layer["name"]: [cuda_compare.Compiled(_StandInKernel(layer, i, torch), 1e-3 * i,
                                                      analytical_first=i == 1)
                                for i in range(candidates)] for layer in chosen}
    monkeypatch.setattr(cuda_compare, "compile_all", compile_all)
    precision = torch.backends.cudnn.conv.fp32_precision
    try:
        rc = cuda_compare.main(["--suite", str(suite), "--candidates", "3", "--min-time",
                                "0.01", "--warmup", "0.01", "--no-flush", "--markdown",
                                "--json", str(tmp_path / "out.json")])
    finally:
        torch.backends.cudnn.conv.fp32_precision = precision
    assert rc == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["complete"] and result["environment"]["gpu"] == "stand-in GPU"
    for row in result["layers"]:
        assert row["rel_err"] < 1e-6 and row["choice_rel_err"] < 1e-6
        assert [s["plan"] for s in row["sweep"]] == [f"stand-in plan {i}" for i in range(3)]
        assert all(s["measured_s"] > 0 for s in row["sweep"])
        assert row["plan"] in {s["plan"] for s in row["sweep"]} and row["regret"] > 0
        assert row["sm_mhz"] == "1980"
        assert [s["analytical_first"] for s in row["sweep"]] == [False, True, False]
        assert row["analytical_choice_regret"] >= 1.0 and row["choice_quick_regret"] >= 1.0
        # the stand-in kernels sleep at least 0.2 ms a call: the host's share is measured
        assert row["convgen_host_s"] >= 2e-4 and row["torch_host_s"] > 0
    assert "convgen_graph_s" in result["layers"][0] and result["layers"][0]["convgen_graph_s"] \
        is None   # the stand-in refuses graphs: reported, not fatal


def test_the_analytical_models_choice_is_timed_beside_the_fitted_ones(monkeypatch):
    """Where the planner's weights come from GPU timings (sm_90), cuda_compare also times
    what the analytical model would have chosen: vgg_conv1_2 with TF32, where the fit moved
    the choice from the mma.sync GEMM to wgmma."""
    import dataclasses

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import cuda_compare
    finally:
        sys.path.pop(0)
    from convgen.backends import get_target
    from convgen.core.layers import spec_from_op
    from convgen.core.spec import workload_of
    from convgen.cuda import candidates
    from convgen.target.cuda_arch import CUDA_ARCHS
    target = dataclasses.replace(get_target("cuda"), cuda=dataclasses.replace(
        CUDA_ARCHS["sm_90a"], allow_tf32=True))
    spec = spec_from_op("conv2d", (64, 64, 3, 3), True, (1, 64, 224, 224), padding=1)
    load = workload_of(spec, (1, 64, 224, 224), "float32")[0]
    ranked = [c for c in candidates(load, target) if c.plan.math == "tf32"]
    analytical = cuda_compare.analytical_choice(ranked, load, target)
    assert ranked[0].plan.algorithm == "wgmma_gemm"
    assert analytical.plan.algorithm == "implicit_gemm"


def test_compile_all_adds_and_marks_the_analytical_choice(monkeypatch):
    """The real compile step (nvcc, no GPU needed): the fitted planner's best plan for
    vgg_conv1_2 in TF32 (wgmma), then the analytical model's (the mma.sync GEMM), marked."""
    from convgen.cuda.compile import nvcc_path
    if nvcc_path() is None:
        pytest.skip("nvcc (the CUDA compiler) is absent")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import cuda_compare
    finally:
        sys.path.pop(0)
    from convgen.backends import get_target
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_90a")
    monkeypatch.setenv("CONVGEN_CUDA_TF32", "1")
    layers = [layer for layer in cuda_compare.load_suite(cuda_compare.DEFAULT_SUITE, None)
              if layer["name"] == "vgg_conv1_2"]
    compiled = cuda_compare.compile_all(layers, get_target("cuda"), 1, 2)["vgg_conv1_2"]
    assert [c.kernel.plan.algorithm for c in compiled] == ["wgmma_gemm", "implicit_gemm"]
    assert [c.analytical_first for c in compiled] == [False, True]
    assert compiled[0].predicted_s < compiled[1].predicted_s


def test_the_profiled_script_finds_its_layer_and_refuses_clearly_without_a_gpu():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    script = str(ROOT / "bench" / "cuda_profile_one.py")
    result = subprocess.run([sys.executable, script, "resnet_3x3_256_b32"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 2 and "needs an NVIDIA GPU" in result.stderr
    result = subprocess.run([sys.executable, script, "no_such_layer"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode != 0 and "no layer 'no_such_layer'" in result.stderr
