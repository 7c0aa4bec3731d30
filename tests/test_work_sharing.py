"""Work sharing in the SIMD kernels (direct_simd, implicit_gemm) and Winograd's on several
threads: each parallel loop's items split into one static range a thread, and a thread that
has finished its own takes the rest of the others' from their ends
(templates/cpu/_sharing.c.j2).

Built with CG_TEST_LATE_THREAD=t, thread t of a kernel waits until the other thread has
taken its whole range of the first loop (or 5 s pass) before it starts on its loops, as a
worker that is slow to wake or a core slowed by a neighbour: the call then finishes in well
under 5 s only if the other thread took that range, and its result, poisoned beforehand,
must still match torch's."""
from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np
import pytest

import convgen
from convgen.backends import get_target
from convgen.core.spec import workload_of
from convgen.cpu.compile import compile_shared
from convgen.cpu.derived import derive
from convgen.cpu.plan import Plan, native_vector
from helpers import assert_matches, direct_tile, gemm_tile, torch_reference
from test_correctness import make_case, operands, seed_of, spec_of

TARGET = get_target("cpu")

# every loop order and both algorithms; several parallel units (phases, staged groups of
# phases), batch above the thread count, a partial last channel tile
CASES = [
    (make_case("3x3_oc_outer", "conv2d", cin=20, cout=40, spatial=(9, 23), kernel=3,
               padding=1, batch=3), "implicit_gemm", "oc_outer", 0),
    (make_case("strided_pixel_outer", "conv2d", cin=16, cout=24, spatial=(15, 17), kernel=3,
               stride=2, padding=1), "direct_simd", "pixel_outer", 0),
    (make_case("panel", "conv2d", cin=24, cout=32, spatial=(7, 30), kernel=3, padding=1),
     "implicit_gemm", "panel", 2),
    (make_case("staged_tconv2d", "conv_transpose2d", cin=16, cout=24, spatial=(5, 7),
               kernel=4, stride=2, padding=1, output_padding=1), "implicit_gemm", "oc_outer", 0),
    (make_case("tconv_row_phases", "conv_transpose2d", cin=12, cout=20, spatial=(6, 9),
               kernel=3, stride=(2, 1), padding=1), "implicit_gemm", "pixel_outer", 0),
    (make_case("3d_oc_outer", "conv3d", cin=8, cout=16, spatial=(3, 5, 21), kernel=3,
               padding=1), "direct_simd", "oc_outer", 0),
]


def plan_for(case, algorithm: str, order: str, chunk_tiles: int, dtype: str) -> Plan:
    vector = native_vector(TARGET, dtype)
    if algorithm == "implicit_gemm":
        vectors, pixels = gemm_tile(2 if case.channels[1] > vector else 1, 5, TARGET)
        oc_tile, pixel_tile = vectors * vector, pixels
    else:
        oc_tile, vectors = direct_tile(8, 1, TARGET)
        pixel_tile = vectors * vector
    if order == "panel":
        return Plan(algorithm, oc_tile, pixel_tile, vector, "panel", 2,
                    chunk=chunk_tiles * pixel_tile)
    return Plan(algorithm, oc_tile, pixel_tile, vector, order, 2)


def late_thread_library(kernel: convgen.Kernel, late: int, tmp_path: Path):
    """The kernel's sources rebuilt with thread ``late`` held back in the kernel's own file
    (same flags as the kernel's own build; a Winograd kernel's exact fallback as it is):
    its prefix and the loaded library."""
    paths = []
    for name, text in kernel.sources.items():
        paths.append(tmp_path / name)
        held = f"#define CG_TEST_LATE_THREAD {late}\n" if name == "kernel.c" else ""
        paths[-1].write_text(held + text)
    library = tmp_path / "kernel.so"
    compile_shared(paths, library, kernel.target)
    prefix = kernel.source.split("size_t ", 1)[1].split("_workspace_bytes", 1)[0]
    return prefix, ctypes.CDLL(str(library))


def call(lib, prefix: str, x, w, b, out_shape, dtype):
    """Pack, then run twice into poisoned outputs (the second call re-shares the items);
    the second output and the slower call's seconds."""
    pointer = lambda a: None if a is None else a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    for name in ("_workspace_bytes", "_packed_weights_bytes"):
        getattr(lib, prefix + name).restype = ctypes.c_size_t
    work = np.empty(getattr(lib, prefix + "_workspace_bytes")() // 8 + 1, np.float64)
    packed = np.empty(getattr(lib, prefix + "_packed_weights_bytes")() // 8 + 1, np.float64)
    getattr(lib, prefix + "_pack")(pointer(w), pointer(packed))
    slowest, y = 0.0, None
    for _ in range(2):
        y = np.full(out_shape, np.nan, dtype)
        start = time.perf_counter()
        status = getattr(lib, prefix + "_run")(pointer(x), pointer(packed), pointer(b),
                                               pointer(y), pointer(work))
        slowest = max(slowest, time.perf_counter() - start)
        assert status == 0
    return y, slowest


def assert_the_other_thread_covers(kernel, case, dtype: str, late: int, tmp_path: Path,
                                   items: str) -> None:
    """Thread ``late`` of ``kernel`` held back until its items are taken: the call ends
    well within the hold's 5 s (a kernel of this size takes milliseconds), and its output,
    poisoned beforehand, matches torch's."""
    prefix, lib = late_thread_library(kernel, late, tmp_path)
    rng = np.random.default_rng(seed_of(f"{case.name}{dtype}{late}{items}"))
    x, w, b = (None if a is None else np.ascontiguousarray(a.astype(dtype))
               for a in operands(case, rng))
    y, seconds = call(lib, prefix, x, w, b, kernel.output_shape, dtype)
    assert seconds < 2.5, f"thread {late}'s {items} were not taken by the other ({seconds:.2f} s)"
    assert_matches(y, torch_reference(case.op, x, w, b, **case.kwargs), dtype)


@pytest.mark.parametrize("late", [0, 1], ids=["master_late", "worker_late"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case,algorithm,order,chunk_tiles", CASES,
                         ids=[c[0].name for c in CASES])
def test_a_late_thread_s_range_is_taken_by_the_other(case, algorithm, order, chunk_tiles,
                                                     dtype, late, tmp_path):
    plan = plan_for(case, algorithm, order, chunk_tiles, dtype)
    kernel = convgen.compile(spec_of(case), case.x_shape, dtype, plan=plan)
    assert "take_items(" in kernel.source and "schedule(static) nowait" not in kernel.source
    assert_the_other_thread_covers(kernel, case, dtype, late, tmp_path, "rows")


def test_ranges_take_the_workspace_s_last_lines_and_only_on_several_threads():
    spec = convgen.ConvSpec.conv(2, 16, 32, 3, padding=1)
    workload = workload_of(spec, (2, 16, 12, 12), "float32")[0]
    two = derive(workload, Plan("implicit_gemm", 32, 6, 16, "oc_outer", 2), TARGET)
    one = derive(workload, Plan("implicit_gemm", 32, 6, 16, "oc_outer", 1), TARGET)
    assert two.ranges == 2 * len(two.lowering.phases) and one.ranges == 0
    assert two.ranges_at * 4 + (two.ranges + 1) * 64 <= two.workspace * 4
    assert "take_items(" not in convgen.compile(spec, (2, 16, 12, 12),
                                               plan=Plan("implicit_gemm", 32, 6, 16,
                                                         "oc_outer", 1)).source


# Winograd: 1-D and 2-D, dilated (sub-grids), batch above the thread count, several blocks
# a tile row
WINOGRAD_CASES = [
    (make_case("wino_2d_batch", "conv2d", cin=8, cout=16, spatial=(11, 37), kernel=3,
               padding=1, batch=3), "winograd2"),
    (make_case("wino_1d_dilated", "conv1d", cin=12, cout=8, spatial=(150,), kernel=3,
               padding=2, dilation=2), "winograd4"),
    (make_case("wino_2d_dilated", "conv2d", cin=8, cout=8, spatial=(13, 40), kernel=3,
               padding=2, dilation=2), "winograd4"),
]


@pytest.mark.parametrize("late", [0, 1], ids=["master_late", "worker_late"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case,algorithm", WINOGRAD_CASES, ids=[c[0].name for c in WINOGRAD_CASES])
def test_a_late_thread_s_winograd_blocks_are_taken_by_the_other(case, algorithm, dtype, late,
                                                                tmp_path):
    vector = native_vector(TARGET, dtype)
    plan = Plan(algorithm, 8, vector, vector, "pixel_outer", 2)
    kernel = convgen.compile(spec_of(case), case.x_shape, dtype, plan=plan)
    facts = derive(kernel.workload, plan, TARGET)
    assert facts.ranges == 2 and "take_items(" in kernel.source
    assert "collapse(2) schedule(static)" not in kernel.sources["kernel.c"]
    assert_the_other_thread_covers(kernel, case, dtype, late, tmp_path, "blocks")


# depthwise: in place (zero padding, unit row stride) and padded into a thread's plane
# (reflect, stride 2), a channel multiplier, batch above the thread count
DEPTHWISE_CASES = [
    make_case("dw_in_place", "conv2d", cin=12, cout=12, spatial=(9, 35), kernel=3,
              padding=1, groups=12, batch=3),
    make_case("dw_reflect_s2", "conv2d", cin=6, cout=12, spatial=(11, 20), kernel=3,
              padding=1, stride=2, groups=6, padding_mode="reflect"),
    make_case("dw_1d", "conv1d", cin=10, cout=10, spatial=(70,), kernel=5, padding=2,
              groups=10),
]


@pytest.mark.parametrize("late", [0, 1], ids=["master_late", "worker_late"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=[c.name for c in DEPTHWISE_CASES])
def test_a_late_thread_s_depthwise_channels_are_taken_by_the_other(case, dtype, late,
                                                                   tmp_path):
    vector = native_vector(TARGET, dtype)
    plan = Plan("depthwise", 1, vector, vector, "oc_outer", 2,
                row_tile=2 if len(case.x_shape) == 4 else 1)
    kernel = convgen.compile(spec_of(case), case.x_shape, dtype, plan=plan)
    assert derive(kernel.workload, plan, TARGET).ranges == 2
    assert "take_items(" in kernel.source and "CG_OMP(for schedule(static))" not in kernel.source
    assert_the_other_thread_covers(kernel, case, dtype, late, tmp_path, "channels")
