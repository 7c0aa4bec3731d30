"""gcc's precompiled <immintrin.h> (``cpu/pch.py``): the same libraries byte for byte, the
PCH really read, and no kernel ever lost to a damaged or missing one."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import convgen
from convgen.backends import get_target
from convgen.core import toolchain
from convgen.core.spec import ConvSpec, Workload
from convgen.cpu import BACKEND, pch
from convgen.cpu import compile as compiler
from convgen.runtime import cache, pipeline
from convgen.runtime import kernel as runtime_kernel

pytestmark = pytest.mark.skipif(not pch.is_gcc(compiler.compiler_path()),
                                reason="the PCH is gcc's; this compiler is not gcc")

# (spec, input shape, dtype, algorithm): every CPU algorithm that includes <immintrin.h>, a
# two-source kernel (Winograd's exact fallback), float64.
SAMPLES = {
    "implicit_gemm": (ConvSpec.conv(2, 16, 32, 3, padding=1), (1, 16, 12, 12), "float32",
                      "implicit_gemm"),
    "direct_simd": (ConvSpec.conv(1, 24, 20, 5), (2, 24, 40), "float64",
                    "direct_simd"),
    "depthwise": (ConvSpec.conv(2, 8, 8, 3, padding=1, groups=8), (1, 8, 13, 13), "float32",
                  "depthwise"),
    "winograd": (ConvSpec.conv(2, 16, 16, 3, padding=1), (1, 16, 10, 10), "float32",
                 "winograd2"),
}


def _library(name: str, tmp_path, target, use_pch: bool, monkeypatch) -> tuple[bytes, list]:
    """Compile a sample into tmp_path; return the library and every compiler command run."""
    spec, shape, dtype, algorithm = SAMPLES[name]
    workload = Workload(spec, shape, dtype)
    plan = next(c.plan for c in BACKEND.candidates(workload, target)
                if c.plan.algorithm == algorithm)
    _, sources, _ = pipeline.generate(BACKEND, workload, plan, target)
    where = tmp_path   # both builds at the same paths: only the PCH differs between them
    paths = []
    for file_name, text in sources:
        paths.append(where / file_name)
        paths[-1].write_text(text)
    if use_pch:   # the first compile that wants the PCH starts its build and goes without
        pch.include_args("#include <immintrin.h>", compiler.compiler_path(),
                         compiler.flags(target))
        pch.wait()
    with monkeypatch.context() as m:
        commands = _recording(m)
        if not use_pch:
            m.setattr(pch, "include_args", lambda *args: ())
        compiler.compile_shared(paths, where / "kernel.so", target)
    return (where / "kernel.so").read_bytes(), commands


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_the_library_is_the_same_with_and_without_the_pch(name, private_cache, tmp_path,
                                                         monkeypatch):
    target = get_target("cpu")
    without, plain = _library(name, tmp_path, target, False, monkeypatch)
    with_pch, commands = _library(name, tmp_path, target, True, monkeypatch)
    assert all("-include" not in c for c in plain)
    kernel_compile = commands[-1]
    assert "-include" in kernel_compile, commands
    assert with_pch == without
    # and gcc did read the PCH ("!" in -H's list), rather than quietly parse the header
    header = kernel_compile[kernel_compile.index("-include") + 1]
    shown = subprocess.run([*kernel_compile, "-H", "-fsyntax-only", "-Winvalid-pch"],
                           capture_output=True, text=True, check=True).stderr
    assert f"! {header}.gch" in shown.splitlines(), shown[:2000]


def _pch_dirs(root):
    found = (root / "pch").iterdir() if (root / "pch").is_dir() else ()
    return sorted(p for p in found if not p.name.startswith("."))


def _fresh_kernel(spec, shape):
    """A kernel compiled now (not loaded from memory), any PCH build it started finished."""
    runtime_kernel.forget_loaded()
    kernel = convgen.compile(spec, shape)
    pch.wait()
    return kernel


def _check(kernel, spec, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((spec.out_channels, spec.in_channels // spec.groups,
                             *spec.kernel_size)).astype(np.float32)
    b = rng.standard_normal(spec.out_channels).astype(np.float32)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x).double(),
                                          torch.from_numpy(w).double(),
                                          torch.from_numpy(b).double(), padding=1)
    np.testing.assert_allclose(kernel(x, w, b), expected.numpy(), rtol=1e-4, atol=1e-4)


SPEC = ConvSpec.conv(2, 16, 32, 3, padding=1)


def _recording(monkeypatch) -> list:
    """Every compiler command run from now on (``monkeypatch`` undoes it), in a list."""
    commands = []
    real_run = toolchain.run_compiler

    def recording(command, path):
        commands.append(list(command))
        return real_run(command, path)
    monkeypatch.setattr(toolchain, "run_compiler", recording)
    return commands


def _kernel_compiles(commands) -> list:
    return [c for c in commands if "c-header" not in c]


def test_the_first_compile_builds_the_pch_beside_it_and_later_ones_use_it(private_cache,
                                                                          monkeypatch):
    commands = _recording(monkeypatch)
    _check(_fresh_kernel(SPEC, (1, 16, 9, 9)), SPEC, (1, 16, 9, 9))
    [first] = _pch_dirs(private_cache)
    meta = json.loads((first / cache.META_NAME).read_text())
    assert meta["parts"]["flags"] == list(compiler.flags(get_target("cpu")))
    [kernel] = _kernel_compiles(commands)
    assert "-include" not in kernel                # it did not wait for the PCH
    assert sum("c-header" in c for c in commands) == 1
    _check(_fresh_kernel(SPEC, (1, 16, 10, 9)), SPEC, (1, 16, 10, 9))
    assert "-include" in _kernel_compiles(commands)[-1]
    assert _pch_dirs(private_cache) == [first]
    assert sum("c-header" in c for c in commands) == 1


def test_a_pch_that_does_not_match_its_hash_is_rebuilt(private_cache, monkeypatch):
    _fresh_kernel(SPEC, (1, 16, 9, 9))
    [first] = _pch_dirs(private_cache)
    gch = first / f"{pch.HEADER_NAME}.gch"
    data = bytearray(gch.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gch.write_bytes(bytes(data))
    commands = _recording(monkeypatch)
    _check(_fresh_kernel(SPEC, (1, 16, 10, 9)), SPEC, (1, 16, 10, 9))
    # the damaged one was removed before any compile read it, and built again
    assert all("-include" not in c for c in _kernel_compiles(commands))
    assert sum("c-header" in c for c in commands) == 1
    [rebuilt] = _pch_dirs(private_cache)
    assert rebuilt == first and gch.read_bytes() != bytes(data)
    _check(_fresh_kernel(SPEC, (1, 16, 11, 9)), SPEC, (1, 16, 11, 9))
    assert "-include" in _kernel_compiles(commands)[-1]


def test_a_compile_that_fails_with_the_pch_is_retried_without_it(private_cache):
    _fresh_kernel(SPEC, (1, 16, 9, 9))
    [first] = _pch_dirs(private_cache)
    # a header gcc would refuse, behind a PCH it cannot use: the compile with -include fails
    (first / pch.HEADER_NAME).write_text("#error a broken precompiled header\n")
    gch = first / f"{pch.HEADER_NAME}.gch"
    gch.write_bytes(b"not a PCH")
    meta = json.loads((first / cache.META_NAME).read_text())
    meta["gch_sha256"] = cache.file_sha256(gch)
    (first / cache.META_NAME).write_text(json.dumps(meta))
    _check(_fresh_kernel(SPEC, (1, 16, 10, 9)), SPEC, (1, 16, 10, 9))
    assert _pch_dirs(private_cache) == []          # removed; the next compile builds it again
    _fresh_kernel(SPEC, (1, 16, 11, 9))
    assert len(_pch_dirs(private_cache)) == 1
    assert (_pch_dirs(private_cache)[0] / pch.HEADER_NAME).read_text().startswith("/*")


def test_a_pch_that_cannot_be_built_costs_nothing_but_time(private_cache, monkeypatch):
    real_run = toolchain.run_compiler

    def no_headers(command, path):
        if "c-header" in command:
            raise toolchain.CompileError(command, path, "refused for the test")
        return real_run(command, path)
    monkeypatch.setattr(toolchain, "run_compiler", no_headers)
    _check(_fresh_kernel(SPEC, (1, 16, 9, 9)), SPEC, (1, 16, 9, 9))
    assert _pch_dirs(private_cache) == [] and list((private_cache / "tmp").iterdir()) == []


def test_no_pch_for_other_compilers_debug_builds_a_small_cap_or_no_immintrin(monkeypatch,
                                                                               private_cache):
    source = "#include <stddef.h>\n#include <immintrin.h>\n"
    cc, flags = compiler.compiler_path(), compiler.flags(get_target("cpu"))
    pch.include_args(source, cc, flags)
    pch.wait()
    assert pch.include_args(source, cc, flags)[0] == "-include"
    assert pch.include_args("#include <stddef.h>\n", cc, flags) == ()
    sanitized = compiler.flags(get_target("cpu", sanitize=True))   # -g: debug info differs
    assert "-g" in sanitized and pch.include_args(source, cc, sanitized) == ()
    monkeypatch.setenv("CONVGEN_CACHE_MAX_BYTES", str(pch.MIN_CAP_BYTES - 1))
    assert pch.include_args(source, cc, flags) == ()
    monkeypatch.setenv("CONVGEN_CACHE_MAX_BYTES", "none")
    monkeypatch.setattr(toolchain, "version_of",
                        lambda path: "clang version 18.1.0 | Target: x86_64-pc-linux-gnu")
    assert pch.include_args(source, cc, flags) == ()


def test_only_the_most_recently_used_pchs_are_kept(private_cache):
    cc = compiler.compiler_path()
    source = "#include <immintrin.h>\n"
    base = compiler.flags(get_target("cpu"))
    made = []
    for i in range(pch.KEEP + 2):      # flag sets that differ only in a harmless macro
        flags = (*base, f"-DCG_PCH_TEST={i}")
        assert pch.include_args(source, cc, flags) == ()     # building
        pch.wait()
        made.append(pch.include_args(source, cc, flags)[1])
    kept = {str(p / pch.HEADER_NAME) for p in _pch_dirs(private_cache)}
    assert kept == set(made[-pch.KEEP:])


def test_cache_info_shows_the_pchs_and_clear_removes_them(private_cache, capsys):
    from convgen.cli import main
    _fresh_kernel(SPEC, (1, 16, 9, 9))
    [found] = _pch_dirs(private_cache)
    info = cache.info()
    assert info["precompiled_headers"] == 1
    assert info["precompiled_header_bytes"] > (found / f"{pch.HEADER_NAME}.gch").stat().st_size
    assert info["bytes"] < info["precompiled_header_bytes"]       # kernels apart
    assert main(["cache", "info"]) == 0
    assert "precompiled headers: 1, " in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert _pch_dirs(private_cache) == []


CONCURRENT = """
import sys
from convgen.backends import get_target
from convgen.cpu import compile as compiler, pch
cc, flags = compiler.compiler_path(), compiler.flags(get_target("cpu"))
assert pch.include_args("#include <immintrin.h>", cc, flags) == ()   # started, not waited for
pch.wait()
print(pch.include_args("#include <immintrin.h>", cc, flags)[1])
"""


def test_processes_that_first_need_the_pch_at_once_all_get_one_whole(private_cache):
    env = {**os.environ, "CONVGEN_CACHE_DIR": str(private_cache)}
    children = [subprocess.Popen([sys.executable, "-c", CONCURRENT], env=env,
                                 stdout=subprocess.PIPE, text=True) for _ in range(4)]
    headers = {child.communicate(timeout=120)[0].strip() for child in children}
    assert all(child.returncode == 0 for child in children)
    [found] = _pch_dirs(private_cache)
    assert headers == {str(found / pch.HEADER_NAME)}
    assert list((private_cache / "tmp").iterdir()) == []     # the losers' builds are gone
    assert pch.include_args("#include <immintrin.h>", compiler.compiler_path(),
                            compiler.flags(get_target("cpu"))) == ("-include", headers.pop())


EXITING = """
from convgen.backends import get_target
from convgen.cpu import compile as compiler, pch
cc, flags = compiler.compiler_path(), compiler.flags(get_target("cpu"))
assert pch.include_args("#include <immintrin.h>", cc, flags) == ()
"""


def test_a_process_that_exits_right_away_still_leaves_its_pch(private_cache):
    env = {**os.environ, "CONVGEN_CACHE_DIR": str(private_cache)}
    subprocess.run([sys.executable, "-c", EXITING], env=env, check=True, timeout=120)
    [found] = _pch_dirs(private_cache)
    assert (found / f"{pch.HEADER_NAME}.gch").stat().st_size > 1 << 20
    assert list((private_cache / "tmp").iterdir()) == []
