"""The CUDA kernels, proven without a GPU: target "cuda-emu" runs the generated CUDA on the CPU.

1. The emulation harness on its own (tests/cuda/harness_kernels.cu): barriers, shared memory,
   warp shuffles, atomics, the cp.async pipeline, dynamic shared memory limits, TF32 WMMA,
   and out-of-bounds accesses reported as errors, never crashes.
2. Every algorithm (direct, implicit GEMM, depthwise, the transposed stride-phase GEMM and the
   TF32 tensor-core path) forced on small shapes of all six ops over the argument grid,
   compared with torch in float64, outputs poisoned with NaN first.
3. The kernel object, the plan strings, the cache and convgen.nn with device="cuda-emu".
"""
from __future__ import annotations

import shutil
import subprocess
import zlib
from pathlib import Path

import cffi
import numpy as np
import pytest

import convgen
from convgen import cuda
from convgen.backends import get_target
from convgen.core.layers import spec_from_op
from convgen.core.spec import workload_of
from convgen.cuda import CudaError, CudaPlan
from convgen.cuda.compile import EMU_FLAGS, compile_library, host_compiler_path
from convgen.cuda.plan import launch_of
from convgen.cuda.planner import candidates
from convgen.cuda.render import emulator_include_dir
from convgen.cuda.render import render as render_sources
from convgen.runtime import kernel as runtime_kernel
from convgen.runtime import pipeline
from helpers import TRANSPOSED_OPS, assert_matches, poisoned_call, rel_l2, torch_reference

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning"),
    pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                       reason="no C++ compiler for the emulator"),
]
HERE = Path(__file__).resolve().parent
EMU = "cuda-emu"
TF32_TOLERANCE = 2e-3      # relative L2: TF32 keeps 10 mantissa bits (unit roundoff 2**-11)


# -- 1. the harness on its own ------------------------------------------------------------
HARNESS_API = """
int reverse(const float *, float *, int, int);
int coordinates(int *, int, int, int, int, int, int);
int block_sums(const float *, float *, int, int);
int divergent(float *, int);
int count(float *, int, int);
int pipeline(const float *, float *, int, int, int);
int big_shared(float *, int, int);
int wmma_tf32(const float *, const float *, float *, int);
const char *error_message(int);
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    out = tmp_path_factory.mktemp("harness") / "harness.so"
    command = [host_compiler_path(), *EMU_FLAGS, "-DCG_EMU_SMEM_OPTIN=232448",
               f"-I{emulator_include_dir()}", "-o", str(out),
               str(HERE / "cuda" / "harness_kernels.cu")]
    subprocess.run(command, check=True, capture_output=True, text=True)
    ffi = cffi.FFI()
    ffi.cdef(HARNESS_API)
    lib = ffi.dlopen(str(out))

    class Harness:
        def ptr(self, array, kind="float *"):
            return ffi.cast(kind, array.ctypes.data)

        def message(self, status):
            return ffi.string(lib.error_message(status)).decode()

    h = Harness()
    h.lib = lib
    return h


def test_syncthreads_orders_a_shared_memory_exchange(harness):
    x = np.arange(5 * 64, dtype=np.float32)
    y = np.zeros_like(x)
    assert harness.lib.reverse(harness.ptr(x), harness.ptr(y), 5, 0) == 0
    np.testing.assert_array_equal(y.reshape(5, 64), x.reshape(5, 64)[:, ::-1])


def test_every_index_variable(harness):
    grid, block = (2, 3, 2), (4, 2, 3)
    out = np.full(np.prod(grid) * np.prod(block), -1, np.int32)
    assert harness.lib.coordinates(harness.ptr(out, "int *"), *grid, *block) == 0
    threads = np.prod(block)
    expected = [1000 * (i // threads) + i % threads for i in range(out.size)]
    np.testing.assert_array_equal(out, expected)


def test_warp_shuffles_and_shared_partials(harness):
    rng = np.random.default_rng(1)
    x = rng.random(3 * 128).astype(np.float32)
    y = np.zeros(3, np.float32)
    assert harness.lib.block_sums(harness.ptr(x), harness.ptr(y), 3, 128) == 0
    np.testing.assert_allclose(y, x.reshape(3, 128).sum(1), rtol=1e-5)


def test_exited_threads_do_not_block_a_barrier(harness):
    y = np.zeros(64, np.float32)
    assert harness.lib.divergent(harness.ptr(y), 0) == 0
    assert (y[:16] == 1).all() and (y[16:] == 0).all()


def test_divergent_barriers_are_a_reported_deadlock(harness):
    y = np.zeros(64, np.float32)
    status = harness.lib.divergent(harness.ptr(y), 1)
    assert status == 719   # cudaErrorLaunchFailure
    message = harness.message(status)
    assert "deadlock" in message and "__syncthreads()" in message
    assert "warp collective" in message and "divergent_kernel" in message


def test_atomic_add_from_every_thread(harness):
    y = np.zeros(1, np.float32)
    assert harness.lib.count(harness.ptr(y), 7, 96) == 0
    assert y[0] == 7 * 96


def test_cp_async_pipeline(harness):
    rng = np.random.default_rng(2)
    x = rng.random(4 * 32).astype(np.float32)
    y = np.zeros_like(x)
    assert harness.lib.pipeline(harness.ptr(x), harness.ptr(y), 4, 32, 0) == 0
    np.testing.assert_array_equal(y.reshape(4, 32), x.reshape(4, 32)[:, ::-1])


def test_reading_a_stage_before_waiting_reads_nan(harness):
    """Copies land only when waited for, and dynamic shared memory starts as NaN: a
    pipeline that reads early shows it in its result."""
    x = np.ones(4 * 32, np.float32)
    y = np.zeros_like(x)
    assert harness.lib.pipeline(harness.ptr(x), harness.ptr(y), 4, 32, 1) == 0
    assert np.isnan(y).any()


def test_dynamic_shared_memory_limits(harness):
    y = np.zeros(32, np.float32)
    assert harness.lib.big_shared(harness.ptr(y), 40000, 0) == 0
    status = harness.lib.big_shared(harness.ptr(y), 60000, 0)
    assert status == 1 and "cudaFuncSetAttribute" in harness.message(status)
    assert harness.lib.big_shared(harness.ptr(y), 60000, 1) == 0
    status = harness.lib.big_shared(harness.ptr(y), 300000, 1)
    assert status == 1 and "232448" in harness.message(status)
    assert harness.lib.big_shared(harness.ptr(y), 1000, 0) == 0   # the error was cleared


def _tf32(values, rounding):
    bits = np.asarray(values, np.float32).view(np.uint32)
    if rounding:
        bits = bits + np.uint32(0x1000)
    return (bits & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.mark.parametrize("rounding", [0, 1], ids=["truncated-inputs", "rounded-inputs"])
def test_wmma_tf32_matches_a_tf32_model(harness, rounding):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((16, 8)).astype(np.float32)
    b = rng.standard_normal((8, 16)).astype(np.float32)
    c = np.zeros((16, 16), np.float32)
    assert harness.lib.wmma_tf32(harness.ptr(a), harness.ptr(b), harness.ptr(c), rounding) == 0
    model = _tf32(a, rounding).astype(np.float64) @ _tf32(b, rounding).astype(np.float64)
    np.testing.assert_allclose(c, model, rtol=1e-5, atol=1e-5)
    exact = a.astype(np.float64) @ b
    assert np.abs(c - exact).max() > 1e-4   # TF32 really is coarser than float32


def test_out_of_bounds_read_is_an_error_not_a_crash(harness):
    x = np.arange(4 * 64, dtype=np.float32)
    y = np.zeros_like(x)
    status = harness.lib.reverse(harness.ptr(x), harness.ptr(y), 4, 1)
    assert status == 700   # cudaErrorIllegalAddress
    message = harness.message(status)
    assert "out-of-bounds global memory read: x[256]" in message
    assert "thread (63,0,0) of block (3,0,0)" in message and "reverse_block" in message
    status = harness.lib.reverse(harness.ptr(x), harness.ptr(y), 4, -1)
    assert status == 700 and "x[-1]" in harness.message(status)
    # the process and the emulator go on working
    assert harness.lib.reverse(harness.ptr(x), harness.ptr(y), 4, 0) == 0


# -- 2. generated kernels against torch ------------------------------------------------------
def _t(nd, *values):
    return tuple(values[:nd])


def make_case(name, op, *, cin=4, cout=6, spatial, kernel=3, batch=2, bias=True, **args):
    nd = len(spatial)
    kernel = (kernel,) * nd if isinstance(kernel, int) else tuple(kernel)
    groups = args.get("groups", 1)
    w_shape = (cin, cout // groups, *kernel) if op in TRANSPOSED_OPS else (cout, cin // groups,
                                                                         *kernel)
    x_shape = (cin, *spatial) if batch is None else (batch, cin, *spatial)
    return {"name": name, "op": op, "x": x_shape, "w": w_shape, "bias": bias, "args": args}


SPATIAL = {1: (9,), 2: (6, 5), 3: (4, 5, 3)}
T_SPATIAL = {1: (5,), 2: (4, 3), 3: (3, 3, 2)}


def forward_cases(nd: int) -> list[dict]:
    sp, op = SPATIAL[nd], f"conv{nd}d"
    v = [
        ("basic", {}),
        ("stride2_pad1", dict(stride=2, padding=1)),
        ("stride_pad_mixed", dict(stride=_t(nd, 2, 1, 3), padding=_t(nd, 2, 0, 1))),
        ("dil_mixed", dict(dilation=_t(nd, 2, 1, 2), padding=_t(nd, 1, 1, 2))),
        ("same_k4_asym", dict(padding="same", kernel=4)),
        ("valid_k2", dict(padding="valid", kernel=2)),
        ("groups2_nobias", dict(groups=2, bias=False)),
        ("depthwise_mult", dict(cin=3, cout=6, groups=3, padding=1)),
        ("unbatched", dict(batch=None, padding=1)),
        ("k1_batch3", dict(kernel=1, batch=3, stride=2)),
        ("single_output", dict(padding=1, kernel=tuple(s + 2 for s in sp))),
        ("reflect", dict(padding=1, padding_mode="reflect")),
        ("replicate_stride", dict(padding=_t(nd, 2, 1, 3), stride=2, padding_mode="replicate")),
        ("circular_same_dil", dict(padding="same", dilation=2, padding_mode="circular")),
        ("reflect_max_pad", dict(padding=tuple(s - 1 for s in sp), padding_mode="reflect",
                                 groups=2)),
    ]
    return [make_case(n, op, spatial=sp, **a) for n, a in v]


def transposed_cases(nd: int) -> list[dict]:
    sp, op = T_SPATIAL[nd], f"conv_transpose{nd}d"
    v = [
        ("basic", {}),
        ("stride2_outpad1", dict(stride=2, padding=1, output_padding=1)),
        ("stride_outpad_mixed", dict(stride=_t(nd, 3, 2, 2), output_padding=_t(nd, 2, 0, 1))),
        ("outpad_ge_stride_lt_dil", dict(stride=2, dilation=3, output_padding=2, padding=1)),
        ("groups2_nobias", dict(groups=2, bias=False, stride=2)),
        ("depthwise", dict(cin=4, cout=4, groups=4, stride=2)),
        ("kernel_lt_stride", dict(kernel=2, stride=3, padding=1)),   # phases without taps
        ("k1_stride3_dil2", dict(kernel=1, stride=3, dilation=2, output_padding=1)),
        ("output_size", dict(stride=2, output_size=tuple(2 * s + 1 for s in sp))),
        ("unbatched_big_pad", dict(batch=None, stride=2, padding=2)),
        ("combo", dict(stride=2, padding=1, dilation=2, output_padding=1, groups=2,
                       batch=3)),
    ]
    return [make_case(n, op, spatial=sp, **a) for n, a in v]


def seed_of(text: str) -> int:
    return zlib.crc32(text.encode())


def spec_of(case):
    return spec_from_op(case["op"], case["w"], case["bias"], case["x"], **case["args"])


def operands(case, dtype, rng):
    spec = spec_of(case)
    x = rng.standard_normal(case["x"]).astype(dtype)
    w = rng.standard_normal(case["w"]).astype(dtype)
    b = rng.standard_normal(spec.out_channels).astype(dtype) if case["bias"] else None
    return x, w, b


def check(case, dtype, plan, tolerance=None, target=EMU):
    """A poisoned call of the kernel equals torch's float64 result; returns the kernel."""
    rng = np.random.default_rng(seed_of(f"{case['op']}-{case['name']}-{plan}"))
    x, w, b = operands(case, dtype, rng)
    ref = torch_reference(case["op"], x, w, b, **case["args"])
    kernel = convgen.compile(spec_of(case), case["x"], dtype, target=target, plan=plan)
    out = poisoned_call(kernel, x, w, b)
    if tolerance is None:
        assert_matches(out, ref, dtype)
    else:
        assert np.isfinite(out).all(), "an output element was not written"
        assert rel_l2(out, ref) <= tolerance
    return kernel, rel_l2(out, ref)


def _math(dtype):
    return "fp64" if dtype == "float64" else "fp32"


# plan families the GEMM grid cycles through: loaders with threads >, = and < BM, every
# pipeline depth, split-K (including splits left empty)
GEMM_PLANS = [
    "tile=32x32x8 warp=16x16 stages=1 split_k=1 threads=128",
    "tile=64x32x16 warp=32x16 stages=2 split_k=1 threads=128",
    "tile=128x64x8 warp=64x32 stages=3 split_k=1 threads=128",
    "tile=64x64x16 warp=32x32 stages=4 split_k=2 threads=128",
    "tile=128x32x8 warp=64x32 stages=2 split_k=1 threads=64",
    "tile=32x64x32 warp=32x16 stages=3 split_k=3 threads=128",
]


def _gemm_plan(algorithm, index, dtype):
    fields = GEMM_PLANS[index % len(GEMM_PLANS)].replace("threads", f"math={_math(dtype)} threads")
    return f"algorithm={algorithm} {fields}"


FORWARD = [c for nd in (1, 2, 3) for c in forward_cases(nd)]
TRANSPOSED = [c for nd in (1, 2, 3) for c in transposed_cases(nd)]
DTYPES = ("float64", "float32")


def _ids(cases):
    return [f"{c['op']}-{c['name']}" for c in cases]


@pytest.mark.parametrize("index,case", list(enumerate(FORWARD)), ids=_ids(FORWARD))
def test_implicit_gemm(index, case):
    dtype = DTYPES[index % 2]
    kernel, _ = check(case, dtype, _gemm_plan("implicit_gemm", index, dtype))
    assert kernel.plan.algorithm == "implicit_gemm"


@pytest.mark.parametrize("index,case", list(enumerate(TRANSPOSED)), ids=_ids(TRANSPOSED))
def test_phase_gemm(index, case):
    dtype = DTYPES[index % 2]
    kernel, _ = check(case, dtype, _gemm_plan("phase_gemm", index, dtype))
    assert kernel.plan.algorithm == "phase_gemm"


DIRECT = [c for c in FORWARD if c["name"] in ("basic", "stride_pad_mixed", "same_k4_asym",
                                                "depthwise_mult", "unbatched", "reflect",
                                                "circular_same_dil")] + \
         [c for c in TRANSPOSED if c["name"] in ("basic", "stride_outpad_mixed",
                                                   "outpad_ge_stride_lt_dil", "groups2_nobias",
                                                   "kernel_lt_stride", "output_size")]


@pytest.mark.parametrize("index,case", list(enumerate(DIRECT)), ids=_ids(DIRECT))
def test_direct(index, case):
    dtype = DTYPES[index % 2]
    spec = spec_of(case)
    oc_block = max(d for d in (1, 2, 3) if spec.cout_per_group % d == 0)
    pixels = (32, 64, 128)[index % 3]
    plan = (f"algorithm=direct tile={pixels}x{oc_block} warp=- stages=1 split_k=1 "
            f"math={_math(dtype)} threads={pixels}") if index % 2 else "direct"
    kernel, _ = check(case, dtype, plan)
    assert kernel.plan.algorithm == "direct"


def depthwise_cases():
    cases = []
    for nd in (1, 2, 3):
        sp, op = SPATIAL[nd], f"conv{nd}d"
        for name, args, tile in [
            ("dw", dict(cin=4, cout=4, groups=4, padding=1), _t(nd, 4, 2, 2)),
            ("dw_mult_stride", dict(cin=3, cout=6, groups=3, stride=2, padding=2), _t(nd, 2, 3, 1)),
            ("dw_dil_reflect", dict(cin=2, cout=2, groups=2, dilation=2, padding=2,
                                    padding_mode="reflect"), _t(nd, 8, 4, 4)),
            ("dw_same_circular", dict(cin=2, cout=4, groups=2, padding="same", kernel=4,
                                      padding_mode="circular", batch=None), _t(nd, 3, 2, 2)),
            ("dw_replicate_overhang", dict(cin=2, cout=2, groups=2, padding=1,
                                           padding_mode="replicate", bias=False), _t(nd, 16, 8, 8)),
        ]:
            cases.append((make_case(name, op, spatial=sp, **args), tile))
    return cases


DEPTHWISE = depthwise_cases()


@pytest.mark.parametrize("index,case,tile", [(i, c, t) for i, (c, t) in enumerate(DEPTHWISE)],
                         ids=[f"{c['op']}-{c['name']}" for c, _ in DEPTHWISE])
def test_depthwise(index, case, tile):
    dtype = DTYPES[index % 2]
    threads = (32, 64)[index % 2]
    plan = (f"algorithm=depthwise tile={'x'.join(map(str, tile))} warp=- stages=1 split_k=1 "
            f"math={_math(dtype)} threads={threads}")
    kernel, _ = check(case, dtype, plan if index % 3 else "depthwise")
    assert kernel.plan.algorithm == "depthwise"


TF32_CASES = [
    (forward_cases(2)[1], "implicit_gemm",
     "tile=32x32x8 warp=16x16 stages=1 split_k=1 math=tf32 threads=128"),
    (forward_cases(1)[12], "implicit_gemm",
     "tile=64x32x16 warp=32x16 stages=3 split_k=2 math=tf32 threads=128"),
    (forward_cases(3)[6], "implicit_gemm",
     "tile=32x64x8 warp=16x32 stages=2 split_k=1 math=tf32 threads=128"),
    (transposed_cases(2)[1], "phase_gemm",
     "tile=32x32x16 warp=16x16 stages=4 split_k=1 math=tf32 threads=128"),
    (transposed_cases(1)[3], "phase_gemm",
     "tile=64x32x8 warp=32x16 stages=2 split_k=2 math=tf32 threads=128"),
]


@pytest.mark.parametrize("case,algorithm,plan", TF32_CASES,
                         ids=[f"{c['op']}-{c['name']}" for c, _, _ in TF32_CASES])
def test_tf32_tensor_cores(case, algorithm, plan):
    """TF32 is rounded in the emulator as on the GPU: the error is TF32's, not float32's."""
    kernel, err = check(case, "float32", f"algorithm={algorithm} {plan}", TF32_TOLERANCE)
    assert kernel.plan.math == "tf32"
    assert err > 1e-5, f"relative error {err:.2e}: TF32 rounding was not applied"
    assert "mma.sync.aligned.m16n8k8" in kernel.source and "cg_ldsm_x4(" in kernel.source


def test_tf32_is_chosen_only_where_allowed(monkeypatch):
    case = forward_cases(2)[0]
    spec = spec_of(case)
    assert convgen.compile(spec, case["x"], "float32", target=EMU,
                           plan="implicit_gemm").plan.math == "fp32"
    assert convgen.compile(spec, case["x"], "float32", target=EMU,
                           plan="implicit_gemm+tf32").plan.math == "tf32"
    monkeypatch.setenv("CONVGEN_CUDA_TF32", "1")
    target = get_target(EMU)
    assert target.cuda.allow_tf32
    workload, _ = workload_of(spec, case["x"], "float32")
    assert cuda.choose(workload, target).math in ("tf32", "fp32")
    assert convgen.compile(spec, case["x"], "float32", target=target,
                           plan="implicit_gemm").plan.math == "tf32"
    assert convgen.compile(spec, case["x"], "float64", target=target,
                           plan="implicit_gemm").plan.math == "fp64"


def test_auto_plans_of_all_six_ops():
    for case in (forward_cases(1)[2], forward_cases(2)[7], forward_cases(3)[11],
                 transposed_cases(1)[5], transposed_cases(2)[2], transposed_cases(3)[10]):
        check(case, "float32", "auto")


def test_batch_zero_launches_nothing():
    case = make_case("empty", "conv2d", spatial=(5, 4), batch=0, padding=1)
    kernel = convgen.compile(spec_of(case), case["x"], "float32", target=EMU,
                             plan="implicit_gemm")
    x = np.zeros(case["x"], np.float32)
    out = kernel(x, np.ones(case["w"], np.float32), np.ones(6, np.float32))
    assert out.shape == (0, 6, 5, 4)


# -- out-of-bounds accesses of generated kernels are caught -----------------------------------
def test_a_generated_kernel_reading_past_its_input_is_reported(tmp_path):
    """Remove the direct kernel's range guard: the emulator names the access."""
    case = make_case("oob", "conv1d", spatial=(9,), padding=1)
    workload, _ = workload_of(spec_of(case), case["x"], "float32")
    target = get_target(EMU)
    plan = CudaPlan("direct", (64, 1), (), 1, 1, "fp32", 64)
    source = render(workload, plan, target)
    guard = "  if (item >= ITEMS) return;\n"
    assert guard in source
    broken = tmp_path / "broken.cu"
    broken.write_text(source.replace(guard, ""))
    library = tmp_path / "broken.so"
    compile_library([broken], library, target)
    ffi = cffi.FFI()
    name = "cg_test"
    ffi.cdef(f"int {name}_launch(const void *, const void *, const void *, void *, void *);"
             f"const char *{name}_error(int);")
    lib = ffi.dlopen(str(library))
    x, w = np.ones(case["x"], np.float32), np.ones(case["w"], np.float32)
    b, y = np.ones(6, np.float32), np.zeros(workload.output_shape, np.float32)
    args = [ffi.cast("void *", a.ctypes.data) for a in (x, w, b, y)]
    status = getattr(lib, f"{name}_launch")(*args, ffi.NULL)
    assert status == 700
    message = ffi.string(getattr(lib, f"{name}_error")(status)).decode()
    assert "out-of-bounds global memory" in message and name in message


# -- 3. the kernel object, plans, cache, modules ------------------------------------------------
def test_kernel_object_behaves_as_convgen_kernel():
    case = forward_cases(2)[1]
    spec = spec_of(case)
    kernel = convgen.compile(spec, case["x"], "float32", target=EMU, plan="implicit_gemm")
    assert isinstance(kernel.plan, CudaPlan)
    assert str(kernel.plan) in kernel.source and "Generated by convgen" in kernel.source
    assert kernel.spec == spec and kernel.input_shape == case["x"]
    workload, _ = workload_of(spec, case["x"], "float32")
    assert kernel.output_shape == workload.output_shape and kernel.flops == workload.flops
    assert len(kernel.key) == 64
    assert convgen.compile(spec, case["x"], "float32", target=EMU,
                           plan=kernel.plan) is kernel                # memoised
    rng = np.random.default_rng(0)
    x, w, b = operands(case, "float32", rng)
    y = kernel(x, w, b)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert_matches(y, torch_reference(case["op"], x, w, b, **case["args"]), "float32")
    with pytest.raises(ValueError, match="bias"):
        kernel(x, w)
    with pytest.raises(ValueError, match="input"):
        kernel(x[:1], w, b)
    with pytest.raises(TypeError, match="dtype"):
        kernel(x.astype(np.float64), w, b)


def test_plan_strings_round_trip_and_compile():
    case = transposed_cases(2)[1]
    workload, _ = workload_of(spec_of(case), case["x"], "float64")
    ranked = candidates(workload, get_target(EMU))
    algorithms = {c.plan.algorithm for c in ranked}
    assert algorithms == {"direct", "phase_gemm"}
    for cand in ranked[:200]:
        assert CudaPlan.parse(str(cand.plan)) == cand.plan
    text = str(next(c.plan for c in ranked if c.plan.split_k > 1 or c.plan.stages > 1))
    kernel, _ = check(case, "float64", text)
    assert str(kernel.plan) == text


@pytest.mark.parametrize("plan,match", [
    ("depthwise", "does not apply"),
    ("implicit_gemm", "does not apply"),          # a transposed conv: phase_gemm
    ("phase_gemm+tf32", "math"),                  # float64
    ("algorithm=phase_gemm tile=64x64x8 warp=32x32 stages=1 split_k=1 math=fp64 threads=64",
     "threads"),
    ("algorithm=phase_gemm tile=64x64x8 warp=24x32 stages=1 split_k=1 math=fp64 threads=128",
     "warp"),
    ("algorithm=phase_gemm tile=64x64x8 warp=32x32 stages=9 split_k=1 math=fp64 threads=128",
     "stages"),
    ("algorithm=phase_gemm tile=512x512x64 warp=64x64 stages=4 split_k=1 math=fp64 threads=2048",
     "threads"),
    ("algorithm=direct tile=64x5 warp=- stages=1 split_k=1 math=fp64 threads=64", "channels"),
    ("algorithm=direct tile=64 warp=- stages=1", "fields"),
    ("transposed_gather", "plan must be"),
])
def test_invalid_cuda_plans_are_refused(plan, match):
    case = transposed_cases(2)[1]
    with pytest.raises(ValueError, match=match):
        convgen.compile(spec_of(case), case["x"], "float64", target=EMU, plan=plan)


def test_plan_shared_memory_is_checked_against_the_architecture(monkeypatch):
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_75")
    case = forward_cases(2)[0]
    target = get_target(EMU)
    assert target.cuda.name == "sm_75" and target.cuda.smem_per_block == 64 * 1024
    with pytest.raises(ValueError, match="cp.async"):
        convgen.compile(spec_of(case), case["x"], "float32", target=target,
                        plan="algorithm=implicit_gemm tile=64x64x8 warp=32x32 stages=2 "
                             "split_k=1 math=fp32 threads=128")
    with pytest.raises(ValueError, match="shared memory"):
        convgen.compile(spec_of(case), case["x"], "float64", target=target,
                        plan="algorithm=implicit_gemm tile=128x128x32 warp=64x32 stages=1 "
                             "split_k=1 math=fp64 threads=256")


def render(workload, plan, target) -> str:
    """The kernel's one source file, rendered under a test prefix."""
    return render_sources(workload, plan, target, "cg_test")[0][1]


def test_cache_serves_a_second_load_without_compiling(private_cache, monkeypatch):
    from convgen.cuda import compile as cuda_compile

    case = forward_cases(1)[0]
    spec = spec_of(case)
    plan = ("algorithm=implicit_gemm tile=32x32x8 warp=16x16 stages=2 split_k=1 math=fp32 "
            "threads=128")
    first = convgen.compile(spec, case["x"], "float32", target=EMU, plan=plan)
    assert any(private_cache.rglob("kernel.so"))
    runtime_kernel.forget_loaded()

    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again instead of loading from the cache")

    monkeypatch.setattr(cuda_compile, "compile_library", no_compile)
    second = convgen.compile(spec, case["x"], "float32", target=EMU, plan=plan)
    assert second is not first and second.key == first.key


def test_keys_differ_by_target_and_arch(monkeypatch):
    case = forward_cases(1)[0]
    workload, _ = workload_of(spec_of(case), case["x"], "float32")
    target = get_target(EMU)
    plan = cuda.choose(workload, target)
    parts = pipeline.key_parts(cuda.BACKEND, workload, plan, target)
    assert parts["backend"] == "cuda" and parts["target"]["isa"] == "emu"
    assert parts["target"]["cuda"]["name"] == "sm_90"
    assert "-DCONVGEN_EMULATE" in parts["flags"] and parts["compiler"]["host"]["version"]
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_80")
    other = get_target(EMU)
    assert pipeline.key_parts(cuda.BACKEND, workload, plan, other)["target"] != parts["target"]


def test_get_target_cuda_without_a_gpu(monkeypatch):
    monkeypatch.delenv("CONVGEN_CUDA_ARCH", raising=False)
    target = get_target("cuda")
    assert target.lang == "cuda" and not target.emulated
    assert target.arch_flags == (f"-arch={target.cuda.name}",)
    emu = get_target("cuda-emu")
    assert emu.emulated and emu.cuda.name == "sm_90"
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_80")
    assert get_target("cuda").cuda.name == "sm_80"
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_99")
    with pytest.raises(ValueError, match="CONVGEN_CUDA_ARCH"):
        get_target("cuda")


def test_explain_names_the_choice():
    case = forward_cases(2)[0]
    workload, _ = workload_of(spec_of(case), case["x"], "float32")
    text = cuda.explain(workload, get_target(EMU), top=3)
    best = str(cuda.choose(workload, get_target(EMU)))
    assert "candidate plans" in text and best in text


def test_plan_via_public_planner():
    from convgen.api import choose_plan as public_plan

    case = forward_cases(3)[0]
    chosen = public_plan(spec_of(case), case["x"], "float64", EMU)
    assert isinstance(chosen, CudaPlan) and chosen.math == "fp64"


def test_launch_geometry_of_split_k_and_phases():
    case = transposed_cases(2)[1]   # stride 2 in both axes: 4 phases
    workload, _ = workload_of(spec_of(case), case["x"], "float32")
    plan = CudaPlan("phase_gemm", (32, 32, 8), (16, 16), 2, 3, "fp32", 128)
    launch = launch_of(plan, workload)
    assert launch.grid[2] == 1 * 4 * 3 and not launch.zero_output   # serial split-K
    assert launch.dynamic_smem == 2 * (32 + 32) * (8 + 4) * 4   # stages x rows x (BK + 16 B)


# -- convgen.nn on the emulator ------------------------------------------------------------
@pytest.mark.parametrize("name,args,kwargs,x_shape", [
    ("Conv2d", (4, 6, 3), dict(padding=1, groups=2), (2, 4, 6, 5)),
    ("Conv1d", (3, 6, 3), dict(groups=3, padding_mode="reflect", padding=2), (3, 7)),
    ("ConvTranspose2d", (4, 2, 3), dict(stride=2, padding=1, output_padding=1), (1, 4, 3, 4)),
])
def test_modules_on_the_emulator(name, args, kwargs, x_shape):
    import torch

    module = getattr(convgen.nn, name)(*args, **kwargs, device=EMU, dtype="float64")
    torch_module = getattr(torch.nn, name)(*args, **kwargs, dtype=torch.float64)
    # state_dict: writeable copies (the module's own arrays are read-only, which torch warns of)
    torch_module.load_state_dict({k: torch.from_numpy(v) for k, v in module.state_dict().items()})
    x = np.random.default_rng(4).standard_normal(x_shape)
    y = module(x)
    with torch.no_grad():
        ref = torch_module(torch.from_numpy(x)).numpy()
    assert_matches(y, ref, "float64")
    (kernel,) = module._kernels.values()
    assert kernel.target.name == EMU
    assert repr(module) == repr(torch_module)


def test_module_device_cuda_needs_a_gpu():
    from convgen.cuda import driver

    if driver.available():
        pytest.skip("a GPU is present: device='cuda' works here")
    with pytest.raises(ValueError, match="cuda-emu"):
        convgen.nn.Conv2d(2, 2, 3, device="cuda")


def test_cuda_error_is_raised_for_a_failing_launch():
    case = forward_cases(1)[0]
    kernel = convgen.compile(spec_of(case), case["x"], "float32", target=EMU, plan="direct")

    class Failing:
        @staticmethod
        def launch(*args):
            return 700

        @staticmethod
        def describe(status):
            return "out-of-bounds global memory read: input[99]"

    broken = cuda.CudaKernel(cuda.BACKEND, kernel.workload, kernel.plan, kernel.target, False,
                             kernel._library, Failing)
    x, w, b = operands(case, "float32", np.random.default_rng(0))
    with pytest.raises(CudaError, match="cudaErrorIllegalAddress .*input\\[99\\]"):
        broken(x, w, b)


# -- channels-last inputs: read in place, output in the same layout ---------------------------
def _channels_last(array: np.ndarray) -> np.ndarray:
    """The same values laid out (N, *spatial, C) in memory, viewed as (N, C, *spatial)."""
    order = (0, *range(2, array.ndim), 1)
    return np.ascontiguousarray(array.transpose(order)).transpose(np.argsort(order))


CHANNELS_LAST = [
    (forward_cases(2)[0], "float32", ("algorithm=implicit_gemm tile=32x32x8 warp=16x16 stages=2 "
     "split_k=1 math=fp32 threads=128")),
    (forward_cases(2)[11], "float64", ("algorithm=implicit_gemm tile=64x32x16 warp=32x16 "
     "stages=3 split_k=2 math=fp64 threads=128")),                       # reflect: a copy
    (forward_cases(3)[6], "float32", ("algorithm=implicit_gemm tile=32x64x8 warp=16x32 stages=2 "
     "split_k=1 math=tf32 threads=128")),
    (make_case("cl_c8", "conv2d", cin=8, cout=8, spatial=(6, 5), padding=1), "float32",
     ("algorithm=implicit_gemm tile=32x32x16 warp=16x16 stages=3 split_k=1 math=tf32 "
     "threads=128")),                                                   # read in place, TF32
    (make_case("cl_1x1", "conv1d", cin=8, cout=4, spatial=(9,), kernel=1), "float32",
     ("algorithm=implicit_gemm tile=32x32x8 warp=16x16 stages=1 split_k=1 math=tf32 "
     "threads=128")),                                                   # weights in place too
    (transposed_cases(2)[1], "float32", ("algorithm=phase_gemm tile=32x32x16 warp=16x16 "
     "stages=4 split_k=1 math=fp32 threads=128")),
    (make_case("cl_t8", "conv_transpose1d", cin=8, cout=4, spatial=(5,), stride=2, padding=1),
     "float32", ("algorithm=phase_gemm tile=32x32x8 warp=16x16 stages=2 split_k=1 math=tf32 "
     "threads=128")),
    (forward_cases(2)[1], "float64", "direct"),
    (transposed_cases(1)[2], "float32", "direct"),
    (DEPTHWISE[6][0], "float32", "depthwise"),
    (DEPTHWISE[12][0], "float64", "depthwise"),
]


@pytest.mark.parametrize("case,dtype,plan", CHANNELS_LAST,
                         ids=[f"{c['op']}-{c['name']}-{p.split()[0]}" for c, _, p in CHANNELS_LAST])
def test_channels_last_inputs(case, dtype, plan):
    rng = np.random.default_rng(seed_of(f"cl-{case['op']}-{case['name']}-{plan}"))
    x, w, b = operands(case, dtype, rng)
    ref = torch_reference(case["op"], x, w, b, **case["args"])
    kernel = convgen.compile(spec_of(case), case["x"], dtype, target=EMU, plan=plan)
    tolerance = TF32_TOLERANCE if kernel.plan.math == "tf32" else None
    if len(case["x"]) < 3:
        pytest.skip("an unbatched input has no batch axis to lay out channels-last")
    xc = _channels_last(x)
    assert not xc.flags.c_contiguous
    y = kernel(xc, w, b)                                  # allocated in the input's layout
    assert y.shape == ref.shape and not y.flags.c_contiguous
    np.testing.assert_array_equal(y, _channels_last(y))
    out = _channels_last(np.full(ref.shape, np.nan, dtype))   # poisoned
    assert kernel(xc, w, b, out=out) is out
    for result in (y, out):
        if tolerance is None:
            assert_matches(result, ref, dtype)
        else:
            assert np.isfinite(result).all() and rel_l2(result, ref) <= tolerance


def test_channels_last_input_needs_a_channels_last_out():
    case = forward_cases(2)[0]
    kernel = convgen.compile(spec_of(case), case["x"], "float32", target=EMU, plan="direct")
    x, w, b = operands(case, "float32", np.random.default_rng(0))
    with pytest.raises(ValueError, match="channels-last"):
        kernel(_channels_last(x), w, b, out=np.empty(kernel.output_shape, np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("args,tile", [(dict(padding=1), (4, 8)),
                                       (dict(padding=2, stride=2, kernel=5), (3, 4)),
                                       (dict(padding=(1, 3), dilation=(1, 2), cout=8), (2, 16))])
def test_depthwise_vector_halo_rows(dtype, aligned, args, tile):
    """Rows of 16-byte vectors (width 8 or 12) stage the halo as vectors when the input is
    aligned, with the alignment shift; a misaligned input takes the scalar path."""
    case = make_case("dw_vec", "conv2d", cin=4, cout=args.pop("cout", 4), groups=4,
                     spatial=(5, 12 if "stride" in args else 8), **args)
    rng = np.random.default_rng(seed_of(f"dwvec-{dtype}-{aligned}-{tile}"))
    x, w, b = operands(case, dtype, rng)
    if not aligned:   # the same values one element past a 16-byte boundary
        raw = np.empty(x.size + 16, dtype=dtype)
        start = (-raw.ctypes.data % 16) // raw.itemsize + 1
        x = raw[start:start + x.size].reshape(x.shape)
        x[...] = operands(case, dtype, rng)[0]
        assert x.ctypes.data % 16
    plan = (f"algorithm=depthwise tile={'x'.join(map(str, tile))} warp=- stages=1 split_k=1 "
            f"math={_math(dtype)} threads=32")
    ref = torch_reference(case["op"], x, w, b, **case["args"])
    kernel = convgen.compile(spec_of(case), case["x"], dtype, target=EMU, plan=plan)
    assert "#define VECTOR_ROWS    1" in kernel.source
    assert_matches(poisoned_call(kernel, x, w, b), ref, dtype)


def test_the_hopper_kernel_is_refused_by_the_emulator(monkeypatch):
    monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_90a")
    case = make_case("wide", "conv2d", cin=32, cout=8, spatial=(6, 5), padding=1)
    with pytest.raises(ValueError, match="cannot be emulated"):
        convgen.compile(spec_of(case), case["x"], "float32", target=EMU,
                        plan="algorithm=wgmma_gemm tile=128x64x32 warp=64x64 stages=3 "
                             "split_k=1 math=tf32 threads=384")
    with pytest.raises(ValueError, match="sm_90a"):
        monkeypatch.setenv("CONVGEN_CUDA_ARCH", "sm_90")
        convgen.compile(spec_of(case), case["x"], "float32", target=EMU, plan="wgmma_gemm")


def _mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum(1 for _ in maps)


def test_launches_give_their_fiber_stacks_back():
    """Each emulated kernel is a library with a runtime of its own; fiber stacks kept after
    a launch (two mappings each) once took a test process to the kernel's limit of 65530
    mappings, and every later dlopen failed."""
    kernels = []
    for channels in (5, 6, 7):   # three kernels: three libraries, three runtimes
        spec = convgen.ConvSpec.conv(2, channels, channels, 3, padding=1)
        kernels.append((convgen.compile(spec, (1, channels, 9, 9), target="cuda-emu",
                                        plan="implicit_gemm"), channels))
    rng = np.random.default_rng(0)
    before = _mappings()
    for kernel, channels in kernels:
        x = rng.standard_normal((1, channels, 9, 9)).astype(np.float32)
        w = rng.standard_normal((channels, channels, 3, 3)).astype(np.float32)
        kernel(x, w, np.zeros(channels, np.float32))
        assert kernel.plan.threads >= 64   # a block of fibers: 128 mappings if they stayed
    assert _mappings() - before < 32
