"""The CUDA kernels for real, on a GPU: the emulator's grid (test_cuda_emu.py) run through
target "cuda" with device arrays. Skipped, with the reason, on machines without an NVIDIA GPU
and driver -- the emulator tests prove the same generated kernels there.
"""
from __future__ import annotations

import numpy as np
import pytest

import convgen
from convgen.backends import get_target
from convgen.cuda import CudaKernel, DeviceArray, driver
from convgen.cuda.compile import nvcc_path
from helpers import assert_matches, rel_l2, torch_reference
from test_cuda_emu import (
    DEPTHWISE,
    DIRECT,
    FORWARD,
    TF32_CASES,
    TF32_TOLERANCE,
    TRANSPOSED,
    _gemm_plan,
    _ids,
    _math,
    operands,
    seed_of,
    spec_of,
)

pytestmark = [
    pytest.mark.skipif(not driver.available(),
                       reason="needs an NVIDIA GPU and its driver (libcuda), absent on this "
                              "machine; test_cuda_emu.py runs the same kernels in the emulator"),
    pytest.mark.skipif(nvcc_path() is None, reason="nvcc (the CUDA compiler) is absent"),
    pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning"),
]


def run(case, dtype, plan, tolerance=None):
    rng = np.random.default_rng(seed_of(f"gpu-{case['op']}-{case['name']}-{plan}"))
    x, w, b = operands(case, dtype, rng)
    ref = torch_reference(case["op"], x, w, b, **case["args"])
    kernel = convgen.compile(spec_of(case), case["x"], dtype, target="cuda", plan=plan)
    assert isinstance(kernel, CudaKernel)
    out = DeviceArray.from_host(np.full(kernel.output_shape, np.nan, dtype))   # poisoned
    result = kernel(DeviceArray.from_host(x), DeviceArray.from_host(w),
                    None if b is None else DeviceArray.from_host(b), out=out)
    assert result is out
    driver.driver().synchronize()
    y = out.copy_to_host()
    if tolerance is None:
        assert_matches(y, ref, dtype)
    else:
        assert np.isfinite(y).all() and rel_l2(y, ref) <= tolerance
    return kernel, y


def test_target_describes_the_present_gpu():
    target = get_target("cuda")
    props = driver.device_properties()
    assert target.cuda.device_name == props.name
    assert target.cuda.sm_count == props.sm_count


@pytest.mark.parametrize("index,case", list(enumerate(FORWARD)), ids=_ids(FORWARD))
def test_implicit_gemm_on_gpu(index, case):
    dtype = ("float64", "float32")[index % 2]
    run(case, dtype, _gemm_plan("implicit_gemm", index, dtype))


@pytest.mark.parametrize("index,case", list(enumerate(TRANSPOSED)), ids=_ids(TRANSPOSED))
def test_phase_gemm_on_gpu(index, case):
    dtype = ("float64", "float32")[index % 2]
    run(case, dtype, _gemm_plan("phase_gemm", index, dtype))


@pytest.mark.parametrize("index,case", list(enumerate(DIRECT)), ids=_ids(DIRECT))
def test_direct_on_gpu(index, case):
    run(case, ("float64", "float32")[index % 2], "direct")


@pytest.mark.parametrize("case,tile", DEPTHWISE, ids=[c["name"] + c["op"] for c, _ in DEPTHWISE])
def test_depthwise_on_gpu(case, tile):
    plan = (f"algorithm=depthwise tile={'x'.join(map(str, tile))} warp=- stages=1 split_k=1 "
            f"math={_math('float32')} threads=64")
    run(case, "float32", plan)


@pytest.mark.parametrize("case,algorithm,plan", TF32_CASES,
                         ids=[c["op"] + c["name"] for c, _, _ in TF32_CASES])
def test_tf32_on_gpu(case, algorithm, plan):
    if not get_target("cuda").cuda.tensor_cores_tf32:
        pytest.skip("this GPU has no TF32 tensor cores")
    run(case, "float32", f"algorithm={algorithm} {plan}", TF32_TOLERANCE)


def test_auto_plan_and_allocated_output():
    case = FORWARD[1]
    rng = np.random.default_rng(0)
    x, w, b = operands(case, "float32", rng)
    kernel = convgen.compile(spec_of(case), case["x"], "float32", target="cuda")
    out = kernel(DeviceArray.from_host(x), DeviceArray.from_host(w), DeviceArray.from_host(b))
    assert isinstance(out, DeviceArray)
    driver.driver().synchronize()
    assert_matches(out.copy_to_host(), torch_reference(case["op"], x, w, b, **case["args"]),
                   "float32")


def test_torch_cuda_tensors_and_streams():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    case = TRANSPOSED[1]
    rng = np.random.default_rng(1)
    x, w, b = operands(case, "float32", rng)
    kernel = convgen.compile(spec_of(case), case["x"], "float32", target="cuda")
    xt, wt, bt = (torch.from_numpy(a).cuda() for a in (x, w, b))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = kernel(xt, wt, bt, stream=stream)
    stream.synchronize()
    assert isinstance(out, torch.Tensor) and out.is_cuda
    assert_matches(out.cpu().numpy(), torch_reference(case["op"], x, w, b, **case["args"]),
                   "float32")


def test_module_on_cuda():
    torch = pytest.importorskip("torch")
    module = convgen.nn.Conv2d(4, 6, 3, padding=1, device="cuda")
    assert isinstance(module.weight, DeviceArray)
    x = np.random.default_rng(2).standard_normal((2, 4, 7, 5)).astype(np.float32)
    y = module(DeviceArray.from_host(x))
    driver.driver().synchronize()
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(),
                                     torch.from_numpy(module.weight.copy_to_host()).double(),
                                     torch.from_numpy(module.bias.copy_to_host()).double(),
                                     padding=1).numpy()
    assert_matches(y.copy_to_host(), ref, "float32")



# -- the Hopper path (sm_90a: TMA + wgmma): proven here only, the emulator cannot run it ------
def _hopper():
    return get_target("cuda").cuda.name == "sm_90a"


WGMMA_CASES = [
    dict(name="pad1", op="conv2d", x=(2, 32, 9, 11), w=(40, 32, 3, 3), bias=True,
         args=dict(padding=1)),
    dict(name="stride2_k5", op="conv2d", x=(1, 64, 17, 13), w=(24, 64, 5, 5), bias=True,
         args=dict(stride=2, padding=2)),
    dict(name="dilated_nobias", op="conv2d", x=(3, 32, 12, 12), w=(136, 32, 3, 3),
         bias=False, args=dict(dilation=2, padding=2)),
    dict(name="asym_same_1x7", op="conv2d", x=(1, 96, 17, 17), w=(64, 96, 1, 7), bias=True,
         args=dict(padding=(0, 3))),
    dict(name="reflect", op="conv2d", x=(2, 32, 10, 9), w=(16, 32, 3, 3), bias=True,
         args=dict(padding=1, padding_mode="reflect")),
    dict(name="pointwise", op="conv2d", x=(2, 64, 14, 14), w=(128, 64, 1, 1), bias=True,
         args=dict()),
]


@pytest.mark.parametrize("case", WGMMA_CASES, ids=[c["name"] for c in WGMMA_CASES])
@pytest.mark.parametrize("bn", [64, 128])
def test_wgmma_on_hopper(case, bn):
    if not _hopper():
        pytest.skip("the sm_90a kernel (TMA, wgmma) needs a compute capability 9.0 GPU")
    plan = (f"algorithm=wgmma_gemm tile=128x{bn}x32 warp=64x{bn} stages=4 split_k=1 "
            f"math=tf32 threads=384")
    kernel, _ = run(case, "float32", plan, TF32_TOLERANCE)
    assert kernel.plan.algorithm == "wgmma_gemm"


def test_wgmma_channels_last_on_hopper():
    torch = pytest.importorskip("torch")
    if not _hopper() or not torch.cuda.is_available():
        pytest.skip("needs a compute capability 9.0 GPU and a CUDA torch")
    case = WGMMA_CASES[0]
    rng = np.random.default_rng(7)
    x, w, b = operands(case, "float32", rng)
    ref = torch_reference(case["op"], x, w, b, **case["args"])
    kernel = convgen.compile(spec_of(case), case["x"], "float32", target="cuda",
                             plan="wgmma_gemm")
    xt = torch.from_numpy(x).cuda().to(memory_format=torch.channels_last)
    out = kernel(xt, torch.from_numpy(w).cuda(), torch.from_numpy(b).cuda())
    torch.cuda.synchronize()
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert rel_l2(out.cpu().numpy(), ref) <= TF32_TOLERANCE


def test_channels_last_torch_tensors_on_gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    for index, case in enumerate(FORWARD[:6] + TRANSPOSED[:4]):
        if len(case["x"]) < 3:
            continue
        rng = np.random.default_rng(100 + index)
        x, w, b = operands(case, "float32", rng)
        ref = torch_reference(case["op"], x, w, b, **case["args"])
        kernel = convgen.compile(spec_of(case), case["x"], "float32", target="cuda")
        fmt = torch.channels_last if len(case["x"]) == 4 else (
            torch.channels_last_3d if len(case["x"]) == 5 else None)
        xt = torch.from_numpy(x).cuda()
        xt = xt.to(memory_format=fmt) if fmt else xt.transpose(1, 2).contiguous().transpose(1, 2)
        out = kernel(xt, torch.from_numpy(w).cuda(),
                     None if b is None else torch.from_numpy(b).cuda())
        torch.cuda.synchronize()
        assert out.stride()[1] == 1                      # channels innermost, as given
        assert_matches(out.cpu().numpy(), ref, "float32")


def test_torch_fast_path_reads_what_the_array_interface_says():
    """device_view reads torch tensors through data_ptr/stride/dtype, not torch's
    __cuda_array_interface__ (a dict built in Python on every call): the same pointer,
    shape, dtype, layout and device, on contiguous, channels-last, float64 and offset views."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA")
    from convgen.cuda.device import _from_cai, device_view
    from convgen.cuda.kernel import layout_of
    base = torch.randn(3, 8, 6, 5, device="cuda")
    for tensor in (base, base.to(memory_format=torch.channels_last), base.double(), base[1:],
                   base[:, 2:5]):
        fast, cai = device_view(tensor, "input"), _from_cai(tensor, "input")
        assert (fast.pointer, fast.shape, fast.dtype) == (cai.pointer, cai.shape, cai.dtype)
        assert fast.device == tensor.device.index and fast.stream is None
        assert layout_of(fast.shape, fast.strides, fast.dtype.itemsize) == \
            layout_of(cai.shape, cai.strides, cai.dtype.itemsize)
    with pytest.raises(TypeError, match="requires grad"):
        device_view(base.clone().requires_grad_(True), "weight")
