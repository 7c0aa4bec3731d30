"""Generated kernels never read or write out of bounds: AddressSanitizer + UBSan builds.

A child process runs with libasan preloaded and CONVGEN_SANITIZE=1 (kernels compiled with
-fsanitize=address,undefined), calls a sample of every op, algorithm and padding mode on
random and edge shapes, and checks each against the numpy reference. Any sanitizer report
aborts the child.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

# (op, input shape, weight shape, args): every op and padding mode, with edge shapes:
# single output pixel, 1-wide axes, channels not a multiple of any block, groups, dilation.
SAMPLE = [
    ("conv1d", (2, 3, 11), (5, 3, 3), {"stride": 2, "padding": 1}),
    ("conv1d", (1, 4, 6), (4, 1, 3), {"padding": 5, "groups": 4, "padding_mode": "replicate"}),
    ("conv1d", (3, 4, 7), (6, 2, 3), {"padding": 7, "groups": 2, "padding_mode": "circular"}),
    ("conv2d", (2, 3, 7, 5), (4, 3, 3, 2), {"padding": "same", "padding_mode": "reflect",
                                            "dilation": (2, 3)}),
    ("conv2d", (1, 6, 5, 5), (6, 2, 5, 5), {"groups": 3}),                  # one output pixel
    ("conv2d", (2, 4, 1, 9), (8, 1, 1, 3), {"stride": (1, 3), "groups": 4, "padding": (0, 1)}),
    ("conv2d", (1, 5, 6, 4), (5, 5, 3, 3), {"padding": (3, 2), "padding_mode": "circular"}),
    # depthwise with zero padding and unit row stride: read in place, edges masked (a 3 x 5
    # kernel: no Winograd plans to build besides)
    ("conv2d", (1, 3, 4, 6), (6, 1, 3, 5), {"padding": (2, 2), "groups": 3}),
    ("conv3d", (1, 2, 3, 4, 5), (3, 2, 2, 3, 2), {"padding": (1, 2, 0), "stride": (2, 1, 2)}),
    ("conv3d", (2, 4, 3, 3, 3), (4, 2, 3, 3, 3), {"padding": 2, "groups": 2,
                                                  "padding_mode": "reflect"}),
    ("conv_transpose1d", (2, 4, 5), (4, 3, 4), {"stride": 3, "padding": 2, "output_padding": 2}),
    ("conv_transpose2d", (1, 4, 3, 5), (4, 2, 3, 3), {"stride": (2, 1), "padding": 1,
                                                      "groups": 2, "dilation": (1, 3),
                                                      "output_padding": (1, 2)}),
    ("conv_transpose2d", (2, 3, 1, 1), (3, 5, 2, 2), {}),
    ("conv_transpose3d", (1, 2, 2, 3, 2), (2, 3, 3, 2, 2), {"stride": 2, "padding": 1,
                                                            "output_padding": 1}),
]

# Run by the child scripts below: kernel(x, w, b, out=y), but with the packed weights and the
# workspace in arrays of their own, exactly sized. kernel(x, w, b) puts both in scratch
# shared by every kernel, as large as the largest so far, where an overrun past the packed
# weights lands unseen.
# The kernel's relative error against the float64 reference, on fresh operands, its output
# poisoned with NaN.
CALL_EXACT = textwrap.dedent("""
    import numpy as np
    from convgen.core.reference import convolve
    from convgen.runtime.loader import FFI

    def call_exact(kernel, x, w, b, y):
        packed = np.empty(kernel.packed_elements, kernel.dtype)
        work = np.empty(max(kernel.workspace_elements, 1), kernel.dtype)
        kernel._pack_c(FFI.from_buffer(w), FFI.from_buffer(packed, require_writable=True))
        kernel._run_c(FFI.from_buffer(x), FFI.from_buffer(packed),
                      FFI.NULL if b is None else FFI.from_buffer(b),
                      FFI.from_buffer(y, require_writable=True),
                      FFI.from_buffer(work, require_writable=True))

    def checked_error(kernel, rng):
        spec, dtype = kernel.workload.spec, kernel.dtype
        x = rng.standard_normal(kernel.workload.input_shape).astype(dtype)
        w = rng.standard_normal(spec.weight_shape).astype(dtype)
        b = rng.standard_normal(spec.out_channels).astype(dtype) if spec.bias else None
        y = np.full(kernel.output_shape, np.nan, dtype=dtype)
        call_exact(kernel, x, w, b, y)
        ref = convolve(kernel.workload, x, w, b)
        return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
""")

# Every algorithm the planner lists for a sample layer is built and run, so a new
# algorithm is covered as soon as the planner offers it; test_samples_cover_every_algorithm
# fails if one of convgen.cpu.plan.ALGORITHMS applies to no sample layer (add one where it does).
CHILD = CALL_EXACT + textwrap.dedent("""
    import sys
    import numpy as np
    import convgen
    from convgen.core.layers import spec_from_op
    from convgen.cpu.planner import candidates
    from convgen.core.spec import workload_of
    from convgen.backends import get_target
    rng = np.random.default_rng(7)
    worst, count = 0.0, 0
    for op, x_shape, w_shape, args in SAMPLE:
        for dtype in ("float32", "float64"):
          spec = spec_from_op(op, w_shape, True, x_shape, **args)
          workload = workload_of(spec, x_shape, dtype)[0]
          ranked = [c.plan for c in candidates(workload, get_target("cpu"))]
          # every algorithm: its best plan in float64, one drawn at random in float32
          # (other tiles, other tails)
          plans = []
          for algorithm in dict.fromkeys(p.algorithm for p in ranked):
              mine = [p for p in ranked if p.algorithm == algorithm]
              plans.append(mine[0] if dtype == "float64" else mine[int(rng.integers(len(mine)))])
          for plan in plans:
            count += 1
            kernel = convgen.compile(spec, x_shape, dtype=dtype, plan=plan)
            assert kernel.target.sanitize, kernel.target
            err = checked_error(kernel, rng)
            assert err < (1e-5 if dtype == "float32" else 1e-12), (op, args, dtype, str(plan), err)
            worst = max(worst, err)
    print("checked", count, "kernels; worst relative error", worst)
""")

# Proof that the harness sees an overflow: hand a compiled kernel an input one row short,
# bypassing the Python-side validation that would normally refuse it.
OVERFLOW = textwrap.dedent("""
    import numpy as np
    import convgen
    from convgen.runtime.loader import FFI as _FFI
    k = convgen.compile(convgen.ConvSpec.conv(2, 2, 2, 3), (1, 2, 6, 6), dtype="float64",
                        plan="direct")   # reads the weights unpacked, needs no workspace
    short = np.ones((1, 2, 5, 6))
    w, b, y = np.ones((2, 2, 3, 3)), np.ones(2), np.empty(k.output_shape)
    k._run_c(_FFI.from_buffer(short), _FFI.from_buffer(w), _FFI.from_buffer(b),
             _FFI.from_buffer(y, require_writable=True), _FFI.NULL)
    print("no report")
""")


def _libasan() -> str:
    path = subprocess.run(["cc", "-print-file-name=libasan.so"], capture_output=True,
                          text=True).stdout.strip()
    if not os.path.isabs(path):
        pytest.skip("the C compiler has no AddressSanitizer runtime (libasan.so)")
    return path


def _run_sanitized(script: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONVGEN_SANITIZE": "1", "CONVGEN_CACHE_DIR": str(tmp_path / "cache"),
           "LD_PRELOAD": _libasan(), "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("sample", SAMPLE, ids=[f"{s[0]}-{i}" for i, s in enumerate(SAMPLE)])
def test_sample_of_every_op_is_clean_under_asan_and_ubsan(sample, tmp_path):
    done = _run_sanitized(f"SAMPLE = {[sample]!r}\n" + CHILD, tmp_path)
    report = done.stderr[-4000:]
    assert "AddressSanitizer" not in done.stderr and "runtime error" not in done.stderr, report
    assert done.returncode == 0, report
    assert "checked" in done.stdout


# The machine model's micro-benchmarks, built with the sanitizers too: their buffers (a
# pointer chase through a 64 MB cycle, streams, a tile's operands) are C of their own.
MACHINE = textwrap.dedent("""
    from convgen.cpu import measure
    from convgen.target import cpu_target, with_sanitize
    measure.cpu_target = lambda name: with_sanitize(cpu_target(name), True)
    fields = measure.measure(measure.cpu_target("cpu").isa_row)
    print("measured", len(fields))
""")


def test_the_machine_models_benchmarks_are_clean_under_asan_and_ubsan(tmp_path):
    """An odd number of a tile's steps once asked aligned_alloc for a size that is not a
    multiple of its alignment: glibc lets it pass, AddressSanitizer aborts."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the machine model measures x86-64 hosts only")
    done = _run_sanitized(MACHINE, tmp_path)
    report = done.stderr[-4000:]
    assert "AddressSanitizer" not in done.stderr and "runtime error" not in done.stderr, report
    assert done.returncode == 0 and "measured" in done.stdout, report


def test_samples_cover_every_algorithm():
    """Each algorithm the planner has applies to at least one sample layer above."""
    from convgen.core.layers import spec_from_op
    from convgen.core.spec import workload_of
    from convgen.cpu.plan import ALGORITHMS, algorithms_for
    covered = set()
    for op, x_shape, w_shape, args in SAMPLE:
        spec = spec_from_op(op, w_shape, True, x_shape, **args)
        covered.update(algorithms_for(workload_of(spec, x_shape, "float32")[0]))
    assert not set(ALGORITHMS) - covered, f"add a sample for {sorted(set(ALGORITHMS) - covered)}"


def test_the_harness_reports_an_out_of_bounds_read(tmp_path):
    done = _run_sanitized(OVERFLOW, tmp_path)
    assert done.returncode != 0 and "heap-buffer-overflow" in done.stderr, done.stderr[-2000:]


# Proof that sanitizer builds check prefetches too (CG_CHECK_PREFETCH: a prefetched span's
# ends are read): a Winograd kernel prefetches channel oc + 4's outputs before it writes
# channel oc's, so with an output one channel short its first report is the prefetch's
# 1-byte read, before any write reaches the missing channel (7 x 40 floats: 1120 bytes).
PREFETCH_OVERFLOW = textwrap.dedent("""
    import numpy as np
    import convgen
    from convgen.runtime.loader import FFI as _FFI
    k = convgen.compile(convgen.ConvSpec.conv(1, 4, 8, 3, padding=1), (1, 4, 40),
                        plan="winograd4")
    x, w = np.ones((1, 4, 40), np.float32), np.ones((8, 4, 3), np.float32)
    b = np.ones(8, np.float32)
    packed = np.empty(k.packed_elements, np.float32)
    k._pack_c(_FFI.from_buffer(w), _FFI.from_buffer(packed, require_writable=True))
    short = np.empty((1, 7, 40), np.float32)
    work = np.empty(k.workspace_elements, np.float32)
    k._run_c(_FFI.from_buffer(x), _FFI.from_buffer(packed), _FFI.from_buffer(b),
             _FFI.from_buffer(short, require_writable=True),
             _FFI.from_buffer(work, require_writable=True))
    print("no report")
""")


def test_the_harness_reports_a_prefetch_past_the_output(tmp_path):
    done = _run_sanitized(PREFETCH_OVERFLOW, tmp_path)
    report = done.stderr[-3000:]
    assert done.returncode != 0 and "heap-buffer-overflow" in done.stderr, report
    # a kernel's own reads are whole elements; 1 byte is the prefetch check's
    assert "READ of size 1 " in done.stderr and "1120-byte region" in done.stderr, report


# The panel order's prefetch of the next chunk (plan.prefetch) on layers where a row's
# last chunks end at the input's or the output's last element: read in place (unpadded,
# strided), padded into the workspace, transposed phases with strided output rows; each
# with its best plan and its smallest chunk, so that a short last chunk is fetched too.
# Then implicit_gemm's weight prefetch (oc_outer), whose lines a sanitizer build reads.
PANEL_PREFETCH = CALL_EXACT + textwrap.dedent("""
    from dataclasses import replace
    import numpy as np
    import convgen
    from convgen.core.layers import spec_from_op
    from convgen.core.spec import workload_of
    from convgen.cpu.planner import candidates
    from convgen.backends import get_target
    rng = np.random.default_rng(11)
    layers = [("conv1d", (2, 5, 37), (6, 5, 3), {}),
              ("conv2d", (1, 6, 9, 13), (8, 6, 1, 1), {"stride": 2}),
              ("conv2d", (2, 3, 7, 11), (5, 3, 3, 3), {"padding": 1, "padding_mode": "reflect"}),
              ("conv_transpose1d", (1, 4, 9), (4, 6, 5), {"stride": 3, "padding": 1})]
    count = 0
    for op, x_shape, w_shape, args in layers:
        for dtype in ("float32", "float64"):
            spec = spec_from_op(op, w_shape, True, x_shape, **args)
            workload = workload_of(spec, x_shape, dtype)[0]
            ranked = [c.plan for c in candidates(workload, get_target("cpu"), threads=2)]
            fetching = [p for p in ranked if p.prefetch]
            if not fetching:   # strided transposed rows: offered no panel, given one
                tile = next(p for p in ranked if p.algorithm == "implicit_gemm")
                fetching = [replace(tile, loop_order="panel", chunk=tile.pixel_tile * n,
                                    prefetch=1) for n in (2, 1)]
            # the best, and the smallest chunk of the tile: a row's most chunks
            smallest = min(fetching, key=lambda p: (p.chunk // p.pixel_tile, str(p)))
            for plan in dict.fromkeys([fetching[0], smallest]):
                kernel = convgen.compile(spec, x_shape, dtype=dtype, plan=plan)
                assert kernel.target.sanitize and "PREFETCH_SPAN(next_x" in kernel.source
                err = checked_error(kernel, rng)
                assert err < 1e-5, (op, dtype, str(plan), err)
                count += 1
    # implicit_gemm's oc_outer order: a channel tile's last tiles prefetch the next
    # tile's weights, the last but one the packed weights' last lines
    spec, x_shape = convgen.ConvSpec.conv(2, 16, 48, 3, padding=1, bias=False), (1, 16, 6, 7)
    for dtype in ("float32", "float64"):
        workload = workload_of(spec, x_shape, dtype)[0]
        ranked = [c.plan for c in candidates(workload, get_target("cpu"), threads=2)]
        tile = next(p for p in ranked if p.algorithm == "implicit_gemm")
        plan = replace(tile, oc_tile=tile.vector, pixel_tile=7, loop_order="oc_outer",
                       chunk=0, prefetch=0)
        kernel = convgen.compile(spec, x_shape, dtype=dtype, plan=plan)
        assert "PREFETCH_LINE(pf" in kernel.source, str(plan)
        assert checked_error(kernel, rng) < 1e-5, str(plan)
        count += 1
    print("checked", count, "kernels")
""")


def test_prefetches_stay_inside_the_arrays_they_fetch_from(tmp_path):
    done = _run_sanitized(PANEL_PREFETCH, tmp_path)
    assert done.returncode == 0 and "checked" in done.stdout, done.stderr[-3000:]
    assert "ERROR: AddressSanitizer" not in done.stderr, done.stderr[-3000:]


# Fused epilogues (AOT builds): add then silu, on every vector algorithm, rows with a tail.
# The residual is read from the output before it is written: whole vectors, the masked
# last one, the scalar tails (Winograd's rows, implicit GEMM's transposed store).
EPILOGUE = CALL_EXACT + textwrap.dedent("""
    import numpy as np
    from convgen.backends import backend_for
    from convgen.core.epilogue import Step
    from convgen.core.layers import spec_from_op
    from convgen.core.spec import Workload
    from convgen.backends import get_target
    target = get_target("cpu")
    backend = backend_for(target)
    assert target.sanitize, target
    rng = np.random.default_rng(3)
    both = ("float32", "float64")
    layers = [("conv2d", (1, 8, 5, 37), (8, 8, 3, 3), {"padding": 1}, "winograd2", both),
              ("conv2d", (1, 8, 6, 21), (8, 8, 3, 3), {"padding": 1}, "winograd4", both),
              ("conv2d", (1, 8, 3, 35), (40, 8, 3, 3), {"padding": 1}, "implicit_gemm", both),
              ("conv2d", (1, 8, 3, 35), (12, 8, 1, 1), {}, "direct_simd", both),
              ("conv2d", (1, 8, 4, 35), (8, 1, 3, 3), {"padding": 1, "groups": 8}, "depthwise",
               both),
              # staged rows (the epilogue in the stage), Winograd stored DIL_W apart
              ("conv_transpose2d", (1, 8, 3, 21), (8, 20, 4, 4), {"stride": 2, "padding": 1},
               "implicit_gemm", ("float32",)),
              ("conv1d", (1, 8, 70), (8, 8, 3), {"padding": 3, "dilation": 3}, "winograd4",
               ("float32",))]
    count = 0
    for op, x_shape, w_shape, args, algorithm, dtypes in layers:
        for dtype in dtypes:
            spec = spec_from_op(op, w_shape, True, x_shape, **args)
            workload = Workload(spec, x_shape, dtype, (Step("add"), Step("silu")))
            kernel = backend.kernel(workload, backend.resolve(algorithm, workload, target), target)
            x = rng.standard_normal(x_shape).astype(dtype)
            w = rng.standard_normal(w_shape).astype(dtype)
            b = rng.standard_normal(spec.out_channels).astype(dtype)
            residual = rng.standard_normal(kernel.output_shape).astype(dtype)
            y = residual.copy()
            call_exact(kernel, x, w, b, y)
            v = convolve(workload, x, w, b) + residual
            ref = v / (1 + np.exp(-v))
            err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
            assert err < (1e-5 if dtype == "float32" else 1e-12), (algorithm, dtype, err)
            count += 1
    print("checked", count, "kernels")
""")


def test_fused_epilogues_stay_inside_the_output(tmp_path):
    done = _run_sanitized(EPILOGUE, tmp_path)
    assert "AddressSanitizer" not in done.stderr and "runtime error" not in done.stderr, \
        done.stderr[-3000:]
    assert done.returncode == 0 and "checked 12 kernels" in done.stdout, done.stderr[-3000:]


def test_sanitizer_builds_are_o0_with_the_sanitizers_and_plain_builds_o3():
    from convgen.backends import get_target
    from convgen.cpu.compile import flags
    from convgen.target import with_sanitize
    plain, sanitized = get_target("cpu"), with_sanitize(get_target("cpu"), True)
    assert "-O3" in flags(plain) and "-fsanitize=address,undefined" not in flags(plain)
    assert "-O0" in flags(sanitized) and "-O3" not in flags(sanitized)
    assert "-fsanitize=address,undefined" in flags(sanitized)
