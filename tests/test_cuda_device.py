"""The "cuda" target's runtime path, exercised without a GPU through fakes: device arrays read
from __cuda_array_interface__ and DLPack, streams, checks before launching, CUDA statuses
turned into CudaError, the driver wrapper, convgen's own DeviceArray, nn modules on "cuda".

No kernel runs here: a fake library stands in for the loaded one and records what it is
given. tests/test_cuda_gpu.py runs the real thing where a GPU is present.
"""
from __future__ import annotations

import numpy as np
import pytest

import convgen
from convgen.backends import get_target
from convgen.core.layers import spec_from_op
from convgen.core.spec import workload_of
from convgen.cuda import BACKEND, CudaError, CudaKernel, CudaPlan, DeviceArray, device, driver
from convgen.cuda.device import (
    device_view,
    is_device_array,
    parse_capsule,
    same_stream,
    stream_handle,
)
from convgen.runtime.pipeline import Library

SPEC = spec_from_op("conv2d", (6, 4, 3, 3), True, (2, 4, 5, 5), padding=1)
WORKLOAD, _ = workload_of(SPEC, (2, 4, 5, 5), "float32")
PLAN = CudaPlan("direct", (64, 2), (), 1, 1, "fp32", 64)


class FakeDeviceArray:
    """What CuPy and torch expose: a device pointer behind __cuda_array_interface__."""

    def __init__(self, shape, dtype="float32", pointer=0x7F0000000000, strides=None,
                 readonly=False, stream=None):
        self.shape = tuple(shape)
        self.__cuda_array_interface__ = {
            "shape": self.shape, "typestr": np.dtype(dtype).str, "data": (pointer, readonly),
            "strides": strides, "version": 3, "stream": stream}


class FakeLibrary:
    """Stands in for a loaded kernel library; records every launch."""

    key, source = "f" * 64, "/* fake */"

    def __init__(self, status=0, description=""):
        self.status, self.description, self.calls = status, description, []

    def launch(self, *args):
        self.calls.append(args)
        return self.status

    def describe(self, status):
        return self.description


def operands(base=0x7F0000000000):
    x = FakeDeviceArray((2, 4, 5, 5), pointer=base)
    w = FakeDeviceArray((6, 4, 3, 3), pointer=base + 0x10000)
    b = FakeDeviceArray((6,), pointer=base + 0x20000)
    y = FakeDeviceArray((2, 6, 5, 5), pointer=base + 0x30000)
    return x, w, b, y


def fake_kernel(entry, workload=WORKLOAD, target="cuda", unbatched=False):
    """A CudaKernel whose launcher is ``entry`` (no library is compiled or loaded)."""
    library = Library(entry.key, "cg_fake", (("kernel.cu", entry.source),), {})
    return CudaKernel(BACKEND, workload, PLAN, get_target(target), unbatched, library, entry)


def cuda_kernel(library, workload=WORKLOAD, unbatched=False):
    return fake_kernel(library, workload, "cuda", unbatched)


def test_pointers_and_stream_reach_the_launcher():
    library = FakeLibrary()
    x, w, b, y = operands()
    assert cuda_kernel(library)(x, w, b, out=y, stream=7) is y
    assert library.calls == [(0x7F0000000000, 0x7F0000010000, 0x7F0000020000, 0x7F0000030000, 7)]


def test_a_repeated_call_skips_the_checks_a_changed_one_does_not(monkeypatch):
    """The checks of a call are kept for the next with the same operands (pointers,
    shapes, strides, dtypes, read-only flags, devices, stream); anything else is checked
    again, so a bad call after good ones is still refused before the launch."""
    library = FakeLibrary()
    kernel = cuda_kernel(library)
    checked = []
    original = kernel._check_views
    monkeypatch.setattr(kernel, "_check_views", lambda *a: (checked.append(1), original(*a)))
    x, w, b, y = operands()
    for _ in range(3):
        kernel(x, w, b, out=y)
    assert len(checked) == 1 and len(library.calls) == 3
    kernel(x, w, b, out=y, stream=5)                       # another stream: checked again
    assert len(checked) == 2
    with pytest.raises(ValueError, match="overlaps the input"):
        kernel(x, w, b, out=FakeDeviceArray((2, 6, 5, 5), pointer=0x7F0000000000))
    with pytest.raises(ValueError, match="read-only"):
        kernel(x, w, b, out=FakeDeviceArray((2, 6, 5, 5), pointer=0x7F0000030000,
                                            readonly=True))
    with pytest.raises(ValueError, match="shape"):
        kernel(FakeDeviceArray((2, 4, 5, 6), pointer=0x7F0000000000), w, b, out=y)
    assert len(library.calls) == 4                         # none of the bad calls launched
    kernel(x, w, b, out=y)
    assert len(checked) == 6 and len(library.calls) == 5


@pytest.mark.parametrize("stream,handle", [
    (None, 0), (5, 5), (np.int64(9), 9),
    (type("TorchStream", (), {"cuda_stream": 11})(), 11),
    (type("CupyStream", (), {"ptr": 12})(), 12),
    (type("Protocol", (), {"__cuda_stream__": lambda self: (0, 13)})(), 13),
])
def test_stream_spellings(stream, handle):
    assert stream_handle(stream) == handle


def test_bad_stream_is_refused():
    with pytest.raises(TypeError, match="stream"):
        stream_handle("default")


def test_status_becomes_cuda_error():
    library = FakeLibrary(700, "an illegal memory access was encountered")
    x, w, b, y = operands()
    with pytest.raises(CudaError) as caught:
        cuda_kernel(library)(x, w, b, out=y)
    error = caught.value
    assert error.code == 700 and error.name == "cudaErrorIllegalAddress"
    assert "illegal memory access" in str(error) and "conv2d" in str(error)


@pytest.mark.parametrize("which,change,error,match", [
    ("x", dict(shape=(2, 4, 5, 6)), ValueError, "input must have shape"),
    ("w", dict(dtype="float64"), TypeError, "weight has dtype float64"),
    ("x", dict(dtype="float16"), TypeError, "float32 or float64"),
    ("x", dict(strides=(400, 100, 20, 8)), ValueError, "C-contiguous"),
    ("y", dict(readonly=True), ValueError, "writeable"),
    ("y", dict(pointer=0x7F0000000010), ValueError, "overlap"),
    ("b", dict(pointer=0x7F0000020002), ValueError, "aligned"),
])
def test_operands_are_checked_before_launching(which, change, error, match):
    library = FakeLibrary()
    arrays = dict(zip("xwby", operands()))
    old = arrays[which].__cuda_array_interface__
    shape = change.pop("shape", old["shape"])
    arrays[which] = FakeDeviceArray(shape, **{"dtype": np.dtype(old["typestr"]),
                                              "pointer": old["data"][0], **change})
    with pytest.raises(error, match=match):
        cuda_kernel(library)(arrays["x"], arrays["w"], arrays["b"], out=arrays["y"])
    assert library.calls == []


def test_c_contiguous_strides_are_accepted():
    library = FakeLibrary()
    x, w, b, y = operands()
    x = FakeDeviceArray((2, 4, 5, 5), pointer=0x7F0000000000, strides=(400, 100, 20, 4))
    cuda_kernel(library)(x, w, b, out=y)
    assert len(library.calls) == 1


def test_host_arrays_are_refused_by_the_cuda_target():
    library = FakeLibrary()
    x = np.ones((2, 4, 5, 5), np.float32)   # numpy: DLPack on the CPU
    _, w, b, y = operands()
    with pytest.raises(TypeError, match="input is in the CPU.*cuda-emu"):
        cuda_kernel(library)(x, w, b, out=y)
    with pytest.raises(TypeError, match="weight must be a CUDA device array"):
        cuda_kernel(library)(operands()[0], [[1.0]], b, out=y)


def test_device_arrays_are_refused_by_the_emulator():
    kernel = fake_kernel(FakeLibrary(), target="cuda-emu")
    x, w, b, _ = operands()
    with pytest.raises(TypeError, match="cuda-emu"):
        kernel(x, np.ones((6, 4, 3, 3), np.float32), np.ones(6, np.float32))


def test_bias_presence_is_checked():
    x, w, b, y = operands()
    with pytest.raises(ValueError, match="bias is required"):
        cuda_kernel(FakeLibrary())(x, w, None, out=y)


def test_output_is_allocated_like_the_input(monkeypatch):
    library = FakeLibrary()
    made = []

    def empty_like_input(x, shape, dtype, channels_last=False):
        made.append((shape, np.dtype(dtype)))
        return FakeDeviceArray(shape, dtype, pointer=0x7F0000900000)

    monkeypatch.setattr("convgen.cuda.kernel.empty_like_input", empty_like_input)
    x, w, b, _ = operands()
    out = cuda_kernel(library)(x, w, b)
    assert made == [((2, 6, 5, 5), np.dtype(np.float32))]
    assert library.calls[0][3] == 0x7F0000900000 and out.shape == (2, 6, 5, 5)


def test_producer_stream_is_synchronised(monkeypatch):
    synced = []

    class FakeDriver:
        def stream_synchronize(self, stream):
            synced.append(stream)

    # the kernel (and its target, which asks the real driver for a GPU) before the fake
    # driver: with the target not yet cached, the fake would be asked for devices too
    kernel = cuda_kernel(FakeLibrary())
    monkeypatch.setattr(driver, "driver", FakeDriver)
    x, w, b, y = operands()
    x = FakeDeviceArray((2, 4, 5, 5), stream=1)      # the legacy default stream: ours
    kernel(x, w, b, out=y)
    assert synced == []
    x = FakeDeviceArray((2, 4, 5, 5), stream=0x5000)  # another stream: wait for it
    kernel(x, w, b, out=y, stream=0)
    assert synced == [0x5000]
    assert same_stream(1, 0) and not same_stream(2, 0)


def test_batch_zero_launches_nothing():
    workload, _ = workload_of(SPEC, (0, 4, 5, 5), "float32")
    library = FakeLibrary()
    x = FakeDeviceArray((0, 4, 5, 5))
    _, w, b, _ = operands()
    y = FakeDeviceArray((0, 6, 5, 5), pointer=0x7F0000900000)
    assert cuda_kernel(library, workload)(x, w, b, out=y) is y
    assert library.calls == []


def test_unbatched_shapes():
    workload, _ = workload_of(SPEC, (1, 4, 5, 5), "float32")
    library = FakeLibrary()
    x = FakeDeviceArray((4, 5, 5))
    _, w, b, _ = operands()
    y = FakeDeviceArray((6, 5, 5), pointer=0x7F0000900000)
    cuda_kernel(library, workload, unbatched=True)(x, w, b, out=y)
    assert len(library.calls) == 1


# -- DLPack -------------------------------------------------------------------------------
def test_dlpack_capsule_fields():
    a = np.arange(12.0).reshape(3, 4)[:, 1:]    # a strided view
    fields = parse_capsule(a.__dlpack__())
    assert fields["pointer"] == a.ctypes.data
    assert fields["shape"] == (3, 3) and fields["strides"] == (4, 1)
    assert fields["device_type"] == device.DL_CPU and fields["dtype"] == (2, 64, 1)


class FakeDLPack:
    """A producer reporting CUDA memory through DLPack (the capsule wraps host memory)."""

    def __init__(self, array, kind=device.DL_CUDA):
        self.array, self.kind, self.streams = array, kind, []

    def __dlpack_device__(self):
        return (self.kind, 0)

    def __dlpack__(self, stream=None):
        self.streams.append(stream)
        return self.array.__dlpack__()


def test_dlpack_device_arrays():
    a = np.zeros((2, 4, 5, 5), np.float32)
    producer = FakeDLPack(a)
    assert is_device_array(producer) and not is_device_array(a)
    view = device_view(producer, "input", stream=0)
    assert view.pointer == a.ctypes.data and view.shape == a.shape
    assert view.dtype == np.float32 and view.c_contiguous and view.device == 0
    assert producer.streams == [1]          # the legacy default stream, in DLPack's spelling
    device_view(producer, "input", stream=0x77)
    assert producer.streams[-1] == 0x77
    library = FakeLibrary()
    _, w, b, y = operands()
    cuda_kernel(library)(producer, w, b, out=y)
    assert library.calls[0][0] == a.ctypes.data


def test_dlpack_on_another_device_kind_is_refused():
    with pytest.raises(TypeError, match="ROCm"):
        device_view(FakeDLPack(np.zeros(3, np.float32), kind=10), "input")
    with pytest.raises(TypeError, match="float32 or float64"):
        device_view(FakeDLPack(np.zeros(3, np.int32)), "input")


class FakeTorchTensor:
    """What a torch CUDA tensor exposes (its class lives in module "torch"): read through
    data_ptr/shape/stride/dtype/device, not torch's slow __cuda_array_interface__."""

    def __init__(self, shape, stride, dtype="torch.float32", device="cuda", index=0,
                 pointer=0x7F0000001000, requires_grad=False):
        from types import SimpleNamespace
        self.shape, self._stride, self.dtype = tuple(shape), tuple(stride), dtype
        self.device = SimpleNamespace(type=device, index=index if device == "cuda" else None)
        self._pointer, self.requires_grad = pointer, requires_grad

    def data_ptr(self):
        return self._pointer

    def stride(self):
        return self._stride

    @property
    def __cuda_array_interface__(self):
        raise AssertionError("the torch fast path must not build the interface dict")


FakeTorchTensor.__module__ = "torch"


def test_torch_tensors_are_read_through_their_attributes():
    x = FakeTorchTensor((2, 4, 5, 5), (100, 25, 5, 1), index=1)
    view = device_view(x, "input")
    assert (view.pointer, view.shape, view.dtype, view.device) == \
        (0x7F0000001000, (2, 4, 5, 5), np.float32, 1)
    assert view.strides == (400, 100, 20, 4) and view.c_contiguous and not view.readonly
    assert view.stream is None and view.owner is x
    cl = FakeTorchTensor((2, 4, 5, 5), (100, 1, 20, 4), dtype="torch.float64")
    view = device_view(cl, "input")
    assert view.dtype == np.float64 and view.strides == (800, 8, 160, 32)
    assert not view.c_contiguous
    with pytest.raises(TypeError, match="input is a torch tensor on cpu"):
        device_view(FakeTorchTensor((3,), (1,), device="cpu"), "input")
    with pytest.raises(TypeError, match=r"weight requires grad.*weight.detach\(\)"):
        device_view(FakeTorchTensor((3,), (1,), requires_grad=True), "weight")
    with pytest.raises(TypeError, match="float32 or float64, got dtype torch.float16"):
        device_view(FakeTorchTensor((3,), (1,), dtype="torch.float16"), "bias")
    library = FakeLibrary()   # a whole call: the kernel takes them like any device array
    kernel = cuda_kernel(library)
    pointers = [0x7F0000000000 + i * 0x100000 for i in range(4)]
    tensors = [FakeTorchTensor(shape, stride, pointer=p) for (shape, stride), p in zip(
        [((2, 4, 5, 5), (100, 25, 5, 1)), ((6, 4, 3, 3), (36, 9, 3, 1)), ((6,), (1,)),
         ((2, 6, 5, 5), (150, 25, 5, 1))], pointers)]
    assert kernel(*tensors[:3], out=tensors[3]) is tensors[3]
    assert library.calls[0][:4] == tuple(pointers)


def test_a_real_cpu_torch_tensor_is_refused_by_name():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="input is a torch tensor on cpu"):
        device_view(torch.ones(3), "input")


# -- the driver ----------------------------------------------------------------------------
def test_no_gpu_here_is_reported_clearly():
    if driver.available():
        pytest.skip("a GPU is present")
    assert driver.device_properties() is None
    with pytest.raises(CudaError, match="no NVIDIA GPU.*cuda-emu"):
        driver.driver()


def test_driver_status_becomes_cuda_error():
    names = {2: b"CUDA_ERROR_OUT_OF_MEMORY"}
    texts = {2: b"out of memory"}
    keep = []

    class FakeLib:
        def cuInit(self, flags):
            return 0

        def cuGetErrorName(self, status, out):
            if status not in names:
                return 1
            keep.append(driver._FFI.new("char[]", names[status]))
            out[0] = keep[-1]
            return 0

        def cuGetErrorString(self, status, out):
            keep.append(driver._FFI.new("char[]", texts[status]))
            out[0] = keep[-1]
            return 0

        def cuMemAlloc_v2(self, pointer, size):
            return 2

        def cuCtxGetCurrent(self, context):
            context[0] = driver._FFI.cast("CUcontext", 1)
            return 0

    fake = driver.Driver(FakeLib())
    with pytest.raises(CudaError) as caught:
        fake.alloc(1 << 40)
    assert str(caught.value) == ("cuMemAlloc(1099511627776 bytes) failed: "
                                 "CUDA_ERROR_OUT_OF_MEMORY (2): out of memory")
    with pytest.raises(CudaError, match="CUDA_ERROR_999"):
        fake.check(999, "cuSomething")


class FakeMemoryDriver:
    """Device memory as a dict of host buffers: enough for DeviceArray and the modules."""

    def __init__(self):
        self.memory, self.next = {}, 0x7F1000000000

    def alloc(self, nbytes):
        pointer, self.next = self.next, self.next + max(nbytes, 1) + 256
        self.memory[pointer] = bytearray(nbytes)
        return pointer

    def free(self, pointer):
        del self.memory[pointer]

    def copy_to_device(self, pointer, host):
        self.memory[pointer][:] = host.tobytes()

    def copy_to_host(self, host, pointer):
        host[...] = np.frombuffer(self.memory[pointer], host.dtype).reshape(host.shape)


def test_device_array_round_trip(monkeypatch):
    fake = FakeMemoryDriver()
    monkeypatch.setattr(driver, "driver", lambda: fake)
    host = np.arange(6, dtype=np.float64).reshape(2, 3)
    array = DeviceArray.from_host(host)
    cai = array.__cuda_array_interface__
    assert cai["shape"] == (2, 3) and cai["typestr"] == "<f8" and cai["data"][0] in fake.memory
    np.testing.assert_array_equal(array.copy_to_host(), host)
    view = device_view(array, "out")
    assert view.pointer == array.pointer and view.c_contiguous
    pointer = array.pointer
    del array, view   # the view holds its owner alive
    assert pointer not in fake.memory   # freed with the array


def test_module_on_cuda_keeps_weights_on_the_device(monkeypatch):
    fake = FakeMemoryDriver()
    monkeypatch.setattr(driver, "driver", lambda: fake)
    monkeypatch.setattr(driver, "available", lambda: True)
    compiled = []

    class FakeKernel:
        def __call__(self, x, weight, bias):
            return ("ran", x, weight, bias)

    def fake_compile(layer, shape, dtype, target):
        compiled.append((shape, dtype, target))
        return FakeKernel()

    monkeypatch.setattr(convgen.api, "compile", fake_compile)
    module = convgen.nn.Conv2d(4, 6, 3, padding=1, device="cuda")
    assert isinstance(module.weight, DeviceArray) and isinstance(module.bias, DeviceArray)
    assert module.weight.copy_to_host().shape == (6, 4, 3, 3)
    x = FakeDeviceArray((2, 4, 5, 5))
    result = module(x)
    assert compiled == [((2, 4, 5, 5), "float32", "cuda")]
    assert result[1] is x and result[2] is module.weight
    with pytest.raises(TypeError, match="dtype"):
        module(FakeDeviceArray((2, 4, 5, 5), dtype="float64"))
    with pytest.raises(ValueError, match="device"):
        convgen.nn.Conv2d(4, 6, 3, device="cuda:1")


def test_module_on_cuda_parameters_and_state_dict(monkeypatch):
    """Host values assigned or loaded go to the device; device arrays are kept as given;
    state_dict hands back the device arrays under torch's keys."""
    fake = FakeMemoryDriver()
    monkeypatch.setattr(driver, "driver", lambda: fake)
    monkeypatch.setattr(driver, "available", lambda: True)
    module = convgen.nn.Conv2d(4, 6, 3, device="cuda")
    host = np.arange(6 * 4 * 9, dtype=np.float64).reshape(6, 4, 3, 3)
    module.load_state_dict({"weight": host, "bias": np.ones(6)})     # cast to float32, copied
    assert isinstance(module.weight, DeviceArray)
    np.testing.assert_array_equal(module.weight.copy_to_host(), host.astype(np.float32))
    state = module.state_dict()
    assert list(state) == ["weight", "bias"] and state["weight"] is module.weight
    given = FakeDeviceArray((6, 4, 3, 3))
    module.weight = given                                          # a device array: kept
    assert module.weight is given
    with pytest.raises(TypeError, match="float64 but the module's dtype is float32"):
        module.weight = FakeDeviceArray((6, 4, 3, 3), dtype="float64")
    with pytest.raises(ValueError, match=r"must have shape \(6,\)"):
        module.bias = FakeDeviceArray((5,))
    with pytest.raises(convgen.nn.StateDictError, match="size mismatch for bias"):
        module.load_state_dict({"weight": host, "bias": np.ones(5)})
