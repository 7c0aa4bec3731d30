"""Modules that mirror ``torch.nn.Conv{1,2,3}d`` and ``torch.nn.ConvTranspose{1,2,3}d``.

A module holds its configuration as a ConvSpec (validated once, at construction, by the
same rules as the functional ops) and its weight and bias as numpy arrays. Calling it
compiles a kernel on the first call for each input shape and reuses it afterwards.

``device=`` is "cpu" (the default), "cuda" (weights in GPU memory, inputs and outputs
device arrays: CuPy, PyTorch CUDA tensors, anything with ``__cuda_array_interface__`` or
DLPack) or "cuda-emu" (convgen's extension: the CUDA kernels run on the CPU in the
emulator, on numpy arrays).

The configuration attributes (``in_channels``, ``stride``, ``padding`` ...) are read-only
after construction, so the spec can never disagree with them: build a new module to
change a layer. ``weight`` and ``bias`` are ordinary attributes, read at every call, so
they may be modified in place or replaced (``bias`` may even be set to or from ``None``,
as on a torch module).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from . import api, backends
from .core.dtypes import dtype_name
from .core.spec import ConvSpec
from .runtime.arrays import as_array

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
           "ConvTranspose3d", "manual_seed"]

_CONFIG = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
           "transposed", "output_padding", "groups", "padding_mode", "dtype", "spec")
_RNG = np.random.default_rng()


def manual_seed(seed) -> None:
    """Seed the generator the modules initialise their weights from (as ``torch.manual_seed``)."""
    global _RNG
    _RNG = np.random.default_rng(seed)


def _check_device(device) -> str:
    """The module's device as a target name: "cpu", "cuda" or "cuda-emu"."""
    return backends.module_device(device)


def _dtype_of(dtype) -> str:
    return "float32" if dtype is None else dtype_name(dtype)


class _ConvNd:
    """What the six modules share: configuration, initialisation, repr and the call."""

    _ndim: int = 0

    def _configure(self, spec: ConvSpec, padding, dtype: str, device: str = "cpu") -> None:
        """Set the torch-style attributes from a validated spec (``padding`` as torch stores it)."""
        config = {"in_channels": spec.in_channels, "out_channels": spec.out_channels,
                  "kernel_size": spec.kernel_size, "stride": spec.stride,
                  "padding": padding if isinstance(padding, str) else spec.pad_before,
                  "dilation": spec.dilation, "transposed": spec.transposed,
                  "output_padding": spec.output_padding, "groups": spec.groups,
                  "padding_mode": spec.padding_mode, "dtype": dtype, "_spec": spec,
                  "_kernels": {}, "_device": device, "weight": None, "bias": None}
        for name, value in config.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        if name in _CONFIG:
            raise AttributeError(f"{type(self).__name__}.{name} is read-only after construction "
                                 f"(the compiled kernels depend on it); build a new module")
        object.__setattr__(self, name, value)

    @property
    def spec(self) -> ConvSpec:
        """The layer as compiled; ``bias`` follows whether ``self.bias`` is currently set."""
        has_bias = self.bias is not None
        if has_bias == self._spec.bias:
            return self._spec
        return dataclasses.replace(self._spec, bias=has_bias)

    def reset_parameters(self) -> None:
        """PyTorch's init: kaiming_uniform(a=sqrt(5)) is U(-b, b) with b = 1/sqrt(fan_in)."""
        shape = self._spec.weight_shape
        bound = 1.0 / math.sqrt(shape[1] * math.prod(shape[2:]))
        self.weight = self._placed(_RNG.uniform(-bound, bound, shape).astype(self.dtype))
        if self._spec.bias:
            self.bias = self._placed(_RNG.uniform(-bound, bound, self.out_channels)
                                     .astype(self.dtype))

    def _placed(self, array: np.ndarray):
        """A parameter where the module computes: host arrays, or device memory for "cuda"."""
        return backends.to_device(array, self._device)

    # -- calling -----------------------------------------------------------------
    def __call__(self, *args, **kwargs) -> np.ndarray:
        return self.forward(*args, **kwargs)

    def _input(self, input) -> np.ndarray:
        if self._device == "cuda":
            dtype = backends.device_dtype(input, "input")
            if dtype != self.dtype:
                raise TypeError(f"input has dtype {dtype} but the module's dtype is "
                                f"{self.dtype}; convert the input or build the module with "
                                f"dtype={dtype.name!r}")
            return input
        x = as_array(input, "input")
        if x.dtype != self.dtype:
            raise TypeError(f"input has dtype {x.dtype} but the module's dtype is {self.dtype}; "
                            f"convert the input or build the module with dtype={x.dtype.name!r}")
        return x

    def _run(self, x: np.ndarray, layer=None, extra=None) -> np.ndarray:
        """Call the kernel for this shape, compiling it first if this module has not yet."""
        shape = tuple(x.shape)
        key = (shape, self.bias is not None, extra)
        kernel = self._kernels.get(key)
        if kernel is None:
            kernel = api.compile(self if layer is None else layer, shape, dtype=self.dtype,
                                 target=self._device)
            self._kernels[key] = kernel
        return kernel(x, self.weight, self.bias)

    # -- interop and printing ----------------------------------------------------
    @classmethod
    def from_torch(cls, module):
        """The same layer as the ``torch.nn`` module ``module``, with copies of its weights."""
        import torch

        torch_class = getattr(torch.nn, cls.__name__)
        if not isinstance(module, torch_class):
            raise TypeError(f"{cls.__name__}.from_torch needs a torch.nn.{cls.__name__}, "
                            f"got {type(module).__name__}")
        if isinstance(module.weight, torch.nn.parameter.UninitializedParameter):
            raise ValueError(f"{type(module).__name__} has uninitialised (lazy) parameters; "
                             f"run it once before converting it")
        if module.weight.device.type == "cuda":   # stays on the GPU: torch CUDA tensors
            weight = module.weight.detach().clone().contiguous()
            bias = None if module.bias is None else module.bias.detach().clone().contiguous()
            dtype, device = _dtype_of(str(weight.dtype).replace("torch.", "")), "cuda"
        else:
            weight = module.weight.detach().cpu().numpy().copy()
            bias = None if module.bias is None else module.bias.detach().cpu().numpy().copy()
            dtype, device = _dtype_of(weight.dtype), "cpu"
        self = cls.__new__(cls)
        self._configure(api.spec_of_torch(module), module.padding, dtype, device)
        self.weight, self.bias = weight, bias
        return self

    def extra_repr(self) -> str:
        """torch's ``_ConvNd.extra_repr``, to the character."""
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0,) * len(self.padding):
            s += f", padding={self.padding}"
        if self.dilation != (1,) * len(self.dilation):
            s += f", dilation={self.dilation}"
        if self.output_padding != (0,) * len(self.output_padding):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        return s

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class _Conv(_ConvNd):
    # One signature for Conv1d/2d/3d: torch.nn.ConvNd's names, order and defaults.
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", device=None, dtype=None):
        device = _check_device(device)
        dtype = _dtype_of(dtype)
        spec = ConvSpec.conv(self._ndim, in_channels, out_channels, kernel_size, stride, padding,
                             dilation, groups, bias, padding_mode)
        self._configure(spec, padding, dtype, device)
        self.reset_parameters()

    def forward(self, input) -> np.ndarray:
        return self._run(self._input(input))


class _ConvTranspose(_ConvNd):
    # One signature for ConvTranspose1d/2d/3d: torch.nn.ConvTransposeNd's.
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None):
        device = _check_device(device)
        dtype = _dtype_of(dtype)
        spec = ConvSpec.conv_transpose(self._ndim, in_channels, out_channels, kernel_size, stride,
                                       padding, output_padding, groups, bias, dilation,
                                       padding_mode)
        self._configure(spec, padding, dtype, device)
        self.reset_parameters()

    def forward(self, input, output_size=None) -> np.ndarray:
        x = self._input(input)
        if output_size is None:
            return self._run(x)
        spec = self.spec.with_output_size(x.shape, output_size)
        return self._run(x, spec, spec.output_padding)


class Conv1d(_Conv):
    """``torch.nn.Conv1d``: same arguments and attributes, numpy in and out."""

    _ndim = 1


class Conv2d(_Conv):
    """``torch.nn.Conv2d``: same arguments and attributes, numpy in and out."""

    _ndim = 2


class Conv3d(_Conv):
    """``torch.nn.Conv3d``: same arguments and attributes, numpy in and out."""

    _ndim = 3


class ConvTranspose1d(_ConvTranspose):
    """``torch.nn.ConvTranspose1d``: same arguments and attributes; ``m(x, output_size=None)``."""

    _ndim = 1


class ConvTranspose2d(_ConvTranspose):
    """``torch.nn.ConvTranspose2d``: same arguments and attributes; ``m(x, output_size=None)``."""

    _ndim = 2


class ConvTranspose3d(_ConvTranspose):
    """``torch.nn.ConvTranspose3d``: same arguments and attributes; ``m(x, output_size=None)``."""

    _ndim = 3
