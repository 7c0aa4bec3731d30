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
change a layer.

``weight`` and ``bias`` may be replaced (``bias`` even set to or from ``None``, as on a
torch module) but not edited in place: assigning one stores a read-only copy, so
``m.weight[...] = v`` raises numpy's read-only error instead of computing with weights
packed before the edit. A CPU module packs its weights into each kernel's order once, on
the first call of that kernel, and reuses the packs until ``weight`` or ``bias`` is
assigned (or ``load_state_dict`` runs). ``state_dict()`` and ``load_state_dict()`` use
torch's keys, "weight" and "bias", and torch's ``strict=`` rules. On ``device="cuda"``
the parameters are device arrays, read by the CUDA kernels as they are (nothing is packed).
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import numpy as np

from . import api, backends
from .core.dtypes import dtype_name
from .core.spec import ConvSpec
from .runtime.arrays import as_array

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
           "ConvTranspose3d", "IncompatibleKeys", "StateDictError", "manual_seed"]

_CONFIG = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
           "transposed", "output_padding", "groups", "padding_mode", "dtype", "spec")
_PARAMETERS = ("weight", "bias")
_RNG = np.random.default_rng()

# What load_state_dict returns with strict=False, as torch's ``_IncompatibleKeys``.
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class StateDictError(ValueError, RuntimeError):
    """``load_state_dict`` refused a state dict (missing or unexpected keys under
    ``strict=True``, a shape that differs): torch raises RuntimeError with the same text,
    convgen's rule is ValueError, so this is both."""


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
                  "_kernels": {}, "_packs": {}, "_device": device, "weight": None,
                  "bias": None}
        for name, value in config.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        if name in _CONFIG:
            raise AttributeError(f"{type(self).__name__}.{name} is read-only after construction "
                                 f"(the compiled kernels depend on it); build a new module")
        if name in _PARAMETERS:
            value = self._parameter(name, value)
            self._packs.clear()   # packed from the old weights: pack again on the next call
        object.__setattr__(self, name, value)

    # -- parameters ------------------------------------------------------------------
    def _parameter(self, name: str, value):
        """What ``self.<name> = value`` stores: a read-only copy, once its dtype (the
        module's) and shape are checked; device memory for "cuda"; None for no bias."""
        if value is None:
            if name == "weight":
                raise TypeError(f"{type(self).__name__}.weight cannot be None")
            return None
        shape = self._spec.weight_shape if name == "weight" else (self.out_channels,)
        if self._device == "cuda" and hasattr(value, "__cuda_array_interface__"):
            dtype = backends.device_dtype(value, name)   # a device array: kept as given
            _check_parameter(name, dtype, tuple(value.shape), self.dtype, shape)
            return value
        array = as_array(value, name)
        _check_parameter(name, array.dtype, array.shape, self.dtype, shape)
        if self._device == "cuda":
            return backends.to_device(array, self._device)
        owned = np.array(array, order="C", copy=True)
        owned.setflags(write=False)
        return owned[...]   # a view of a read-only array cannot be made writeable again

    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        """torch's ``state_dict``: "weight" and "bias" (when set) under ``prefix``; host
        values are writeable copies (``keep_vars=True``: the module's own read-only arrays)."""
        result = OrderedDict() if destination is None else destination
        for name in _PARAMETERS:
            value = getattr(self, name)
            if value is not None:
                as_is = keep_vars or not isinstance(value, np.ndarray)   # device arrays as is
                result[prefix + name] = value if as_is else np.array(value)
        return result

    def load_state_dict(self, state_dict, strict: bool = True):
        """torch's ``load_state_dict``: values are numpy arrays or CPU torch tensors (any
        float dtype, cast to the module's, as torch's copy casts). ``strict=True``: a missing
        or unexpected key is an error; ``strict=False``: they are returned as
        ``IncompatibleKeys(missing_keys, unexpected_keys)``. A shape mismatch is an error
        either way. Nothing is changed unless everything loads (torch may load part)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        expected = [name for name in _PARAMETERS if getattr(self, name) is not None]
        missing = [name for name in expected if name not in state_dict]
        unexpected = [key for key in state_dict if key not in expected]
        errors, loaded = [], {}
        if strict and missing:
            errors.append(f"Missing key(s) in state_dict: {_quoted(missing)}. ")
        if strict and unexpected:
            errors.append(f"Unexpected key(s) in state_dict: {_quoted(unexpected)}. ")
        for name in expected:
            if name in state_dict:
                loaded[name] = self._loaded_value(name, state_dict[name], errors)
        if errors:
            raise StateDictError(f"Error(s) in loading state_dict for {type(self).__name__}:"
                                 f"\n\t" + "\n\t".join(errors))
        for name, value in loaded.items():
            setattr(self, name, value)
        return IncompatibleKeys(missing, unexpected)

    def _loaded_value(self, name: str, value, errors: list):
        """``value`` cast to the module's dtype; a shape mismatch is added to ``errors``."""
        current = self._spec.weight_shape if name == "weight" else (self.out_channels,)
        if self._device == "cuda" and hasattr(value, "__cuda_array_interface__"):
            array = value     # a device array: its dtype must match (checked on assignment)
        else:
            array = _checkpoint_array(value, name, self.dtype)
        if tuple(array.shape) != tuple(current):
            errors.append(f"size mismatch for {name}: copying a param with shape "
                          f"{tuple(array.shape)} from checkpoint, the shape in current model "
                          f"is {tuple(current)}.")
        return array

    def __getstate__(self):
        # Compiled kernels and packs belong to this process: a copy or an unpickled module
        # compiles (or loads from the cache) again.
        return {k: v for k, v in self.__dict__.items() if k not in ("_kernels", "_packs")}

    def __setstate__(self, state):
        weight, bias = state.pop("weight"), state.pop("bias")
        self.__dict__.update(state, _kernels={}, _packs={}, weight=None, bias=None)
        self.weight, self.bias = weight, bias

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
        self.weight = _RNG.uniform(-bound, bound, shape).astype(self.dtype)
        if self._spec.bias:
            self.bias = _RNG.uniform(-bound, bound, self.out_channels).astype(self.dtype)

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
        return kernel(x, self._weight_for(key, kernel), self.bias)

    def _weight_for(self, key, kernel):
        """The weights as ``kernel`` reads them: packed once per kernel where it packs
        (CPU kernels), the array itself where it does not (CUDA kernels)."""
        if not hasattr(kernel, "prepack"):
            return self.weight
        packed = self._packs.get(key)
        if packed is None:
            packed = self._packs[key] = kernel.prepack(self.weight)
        return packed

    # -- interop and printing ----------------------------------------------------
    @classmethod
    def from_torch(cls, module):
        """The same layer as the ``torch.nn`` module ``module``, with copies of its weights."""
        import torch

        torch_class = getattr(torch.nn, cls.__name__)
        if not isinstance(module, torch_class):
            raise TypeError(f"{cls.__name__}.from_torch needs a torch.nn.{cls.__name__}, "
                            f"got {type(module).__name__}")
        spec = api.spec_of_torch(module)   # refuses a lazy module that has not run yet
        if module.weight.device.type == "cuda":   # stays on the GPU: torch CUDA tensors
            weight = module.weight.detach().clone().contiguous()
            bias = None if module.bias is None else module.bias.detach().clone().contiguous()
            device = "cuda"
        else:   # assignment copies
            weight = module.weight.detach()
            bias = None if module.bias is None else module.bias.detach()
            device = "cpu"
        dtype = _dtype_of(weight.dtype)
        self = cls.__new__(cls)
        self._configure(spec, module.padding, dtype, device)
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


def _check_parameter(name: str, dtype, shape: tuple, module_dtype: str, expected: tuple) -> None:
    if np.dtype(dtype) != np.dtype(module_dtype):
        raise TypeError(f"{name} has dtype {np.dtype(dtype)} but the module's dtype is "
                        f"{module_dtype}; convert it (load_state_dict converts for you)")
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(shape)}")


def _checkpoint_array(value, name: str, dtype: str) -> np.ndarray:
    """A state dict's value (numpy array, CPU torch tensor, nested lists) as a host array
    of ``dtype``: any real dtype is cast, as torch's ``copy_`` casts."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):   # a torch tensor
        import torch
        if value.device.type != "cpu":
            raise TypeError(f"{name} is a tensor on {value.device}; load CPU tensors (.cpu()) "
                            f"or numpy arrays")
        return value.detach().to(getattr(torch, dtype)).numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} could not be read as an array: {exc}") from exc
    if array.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array.astype(dtype, copy=False)


def _quoted(keys) -> str:
    return ", ".join(f'"{key}"' for key in keys)


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
