"""Ahead-of-time builds for the cuda target: the zoo model's CUDA build

- compiles with nvcc through its own Makefile, host code with -Wall -Wextra -Werror, every
  kernel (the generated ones and the build's elementwise ones) without spills or a stack
  frame (ptxas's report); skipped where nvcc is absent;
- runs, glue and kernels, under convgen's CUDA emulator on the CPU (the same sources,
  compiled by the host C++ compiler): every layer and NAME_run against torch;
- runs on a real GPU where one is present (skipped with the reason elsewhere).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import convgen
import test_aot
from convgen.core.paths import templates_dir
from convgen.cuda import driver
from convgen.cuda.compile import host_compiler_path, nvcc_path, parse_ptxas
from convgen.target.cuda_arch import CUDA_ARCHS
from test_aot import check_graph, check_layers, make, shared

zoo_files = test_aot.zoo_files   # the fixtures of the zoo model, shared with test_aot.py
zoo64 = test_aot.zoo64

ARCH = "sm_80"


@pytest.fixture(scope="session")
def cuda_build(zoo_files, tmp_path_factory) -> Path:
    """The zoo built for cuda (sources only; each test compiles its own copy)."""
    def build(directory: Path) -> None:
        convgen.build(zoo_files / "zoo.onnx", directory / "zoo", target="cuda", name="zoo",
                      arch=ARCH)

    return shared(tmp_path_factory, "zoo-cuda", build) / "zoo"


def test_a_cuda_build_needs_no_nvcc_on_the_build_machine(tmp_path, monkeypatch):
    """Sources only: nvcc is needed where make runs, not where convgen build runs."""
    monkeypatch.setenv("CONVGEN_NVCC", str(tmp_path / "no-nvcc-here"))
    assert nvcc_path() is None
    module = torch.nn.Conv2d(3, 4, 3, padding=1)
    result = convgen.build([(module, (1, 3, 8, 8))], tmp_path / "out", target="cuda",
                           name="alone")
    assert result.functions == ("alone_layer0",)
    assert (tmp_path / "out" / "kernels" / "layer0" / "kernel.cu").exists()


def test_the_cuda_build_says_what_it_is(cuda_build):
    header = (cuda_build / "zoo.h").read_text()
    assert "device pointers" in header or "device memory" in header
    assert "int zoo_cuda_status(" in header and "int zoo_run(" in header
    assert "CUDA_ARCH = sm_80" in (cuda_build / "Makefile").read_text()
    assert sorted(p.name for p in cuda_build.glob("kernels/*/*")) == ["kernel.cu"] * 9


@pytest.fixture(scope="module")
def nvcc_make(cuda_build, tmp_path_factory) -> tuple[Path, list]:
    """The CUDA build made with nvcc: host code with every warning an error, ptxas's report
    of every kernel."""
    if nvcc_path() is None:
        pytest.skip("nvcc (the CUDA compiler) is absent")
    copy = tmp_path_factory.mktemp("nvcc") / "zoo"
    shutil.copytree(cuda_build, copy)
    output = make(copy, "NVCCFLAGS=-O3 -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror "
                  "-Xptxas -v", "CFLAGS=-O2 -Wall -Wextra -Werror -pedantic", timeout=900)
    return copy, [k for k in parse_ptxas(output, ARCH) if k.entry]


def test_cuda_build_compiles_with_nvcc_warning_free(nvcc_make):
    out, kernels = nvcc_make
    assert (out / "example").exists() and (out / "libzoo.so").exists() \
        and (out / "libzoo.a").exists()
    report = json.loads((out / "build_report.json").read_text())
    ours = [k for k in kernels if "cg_ew_kernel" in k.function]
    # one per layer epilogue (the CUDA kernels fuse none) and one per standalone node
    assert len(ours) == sum(bool(layer["epilogue"]) for layer in report["layers"]) + sum(
        op.startswith("elementwise") for op in report["graph"]["operations"])
    for k in ours:   # the build's own elementwise kernels
        assert k.spill_stores == k.spill_loads == 0 and k.stack_bytes == 0, k


def test_the_generated_kernels_do_not_spill(nvcc_make):
    _, kernels = nvcc_make
    spilled = [k for k in kernels if k.spill_stores or k.spill_loads or k.stack_bytes]
    assert spilled == []


def _emulated_example(out: Path, directory: Path) -> Path:
    """The CUDA build compiled by the host compilers against convgen's emulator: each
    kernel a shared library of its own with hidden symbols (as cuda-emu kernels are built:
    the kernels' unprefixed __constant__ tables stay private), the glue and the example
    linked against them."""
    emu = templates_dir() / "cuda" / "emu"
    runtime = templates_dir() / "aot" / "emu"
    cxx = [host_compiler_path(), "-std=c++17", "-O0", "-DCONVGEN_EMULATE", "-w", "-fPIC",
           "-fno-strict-aliasing", f"-DCG_EMU_SMEM_OPTIN={CUDA_ARCHS[ARCH].smem_per_block}",
           f"-I{emu}", f"-I{runtime}", f"-I{out}"]
    kernels = sorted(out.glob("kernels/*/kernel.cu"))
    jobs = [[*cxx, "-shared", "-fvisibility=hidden", "-fvisibility-inlines-hidden", "-x", "c++",
             str(source), "-o", str(directory / f"libk{i}.so")] for i, source in enumerate(kernels)]
    jobs += [[*cxx, "-x", "c++", "-c", str(out / name), "-o", str(directory / f"{name}.o")]
             for name in ("zoo.cu", "example.c")]
    jobs.append(["cc", "-std=c99", "-O1", "-c", str(out / "zoo_weights.c"), "-o",
                 str(directory / "weights.o")])
    with ThreadPoolExecutor(2) as pool:
        for done in pool.map(lambda job: subprocess.run(job, capture_output=True, text=True),
                             jobs):
            assert done.returncode == 0, done.stderr[-3000:]
    program = directory / "example"
    subprocess.run([host_compiler_path(), str(directory / "zoo.cu.o"),
                    str(directory / "example.c.o"), str(directory / "weights.o"),
                    *(str(directory / f"libk{i}.so") for i in range(len(kernels))),
                    f"-Wl,-rpath,{directory}", "-o", str(program)], check=True)
    return program


def test_cuda_build_runs_in_the_emulator(cuda_build, zoo64, tmp_path):
    """The glue's epilogue kernels, residual scratch, copies and NAME_run on the stream,
    with the generated kernels, checked access by access by the emulator."""
    program = _emulated_example(cuda_build, tmp_path)
    report = json.loads((cuda_build / "build_report.json").read_text())
    check_layers(zoo64, report, program, tmp_path)
    check_graph(zoo64, report, program, tmp_path)


def _gpu_reason() -> str | None:
    if nvcc_path() is None:
        return "nvcc (the CUDA compiler) is absent"
    if not driver.available():
        return "no NVIDIA GPU and driver (libcuda) on this machine"
    return None


@pytest.mark.skipif(_gpu_reason() is not None, reason=_gpu_reason() or "")
def test_cuda_build_runs_on_the_gpu(zoo_files, zoo64, tmp_path):
    from convgen.cuda.target import present_gpu_arch

    out = tmp_path / "zoo"
    result = convgen.build(zoo_files / "zoo.onnx", out, target="cuda", name="zoo",
                           arch=present_gpu_arch().name)
    make(out, timeout=900)
    check_layers(zoo64, result.report, out / "example", tmp_path)
    check_graph(zoo64, result.report, out / "example", tmp_path)
