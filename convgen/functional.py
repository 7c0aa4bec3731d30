"""The six functional ops: numpy in, numpy out, PyTorch's semantics."""
from __future__ import annotations

from .api import compile as compile_kernel
from .core.layers import op_info, spec_from_op
from .runtime.arrays import as_array, check_dtype, check_shape
from .runtime.memo import Memo

__all__ = ["conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d"]


def _operands(ndim: int, op: str, input, weight, bias):
    x = as_array(input, "input")
    w = as_array(weight, "weight")
    check_dtype(w, "weight", x.dtype, "the input's dtype")
    if bias is not None:
        bias = as_array(bias, "bias")
        check_dtype(bias, "bias", x.dtype, "the input's dtype")
    if w.ndim != ndim + 2:
        raise ValueError(f"weight of {op} must have {ndim + 2} dimensions (channels, channels, "
                         f"*kernel), got shape {tuple(w.shape)}")
    if x.ndim not in (ndim + 1, ndim + 2):
        raise ValueError(f"Expected {ndim + 1}D (unbatched) or {ndim + 2}D (batched) input to "
                         f"{op}, but got input of shape {tuple(x.shape)}")
    if bias is not None and bias.ndim != 1:
        raise ValueError(f"bias must be 1-dimensional, got shape {tuple(bias.shape)}")
    return x, w, bias


# (op, shapes, dtype, arguments with their types) -> Kernel: a repeated call skips
# building the spec and planning. Only calls that compiled are remembered.
_KERNELS: Memo = Memo("functional calls")


def _freeze(value):
    """A hashable, type-exact form of an argument (True and 1 must not share a key)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    return (type(value).__name__, value)


def _call(op: str, input, weight, bias, **args):
    ndim, _ = op_info(op)
    x, w, bias = _operands(ndim, op, input, weight, bias)
    try:
        memo = (op, x.shape, w.shape, bias is not None, x.dtype.str,
                tuple((k, _freeze(v)) for k, v in args.items()))
        kernel = _KERNELS.get(memo)
    except TypeError:   # an unhashable argument: no memo, the checks below report it
        memo = kernel = None
    if kernel is None:
        spec = spec_from_op(op, w.shape, bias is not None, x.shape, **args)
        if bias is not None:   # checked here, before compiling, as well as by the kernel
            check_shape(bias, "bias", (spec.out_channels,), "one value per output channel")
        kernel = compile_kernel(spec, x.shape, dtype=x.dtype)
        if memo is not None:
            kernel = _KERNELS.get_or_build(memo, lambda: kernel)
    return kernel(x, w, bias)


def _conv(ndim, input, weight, bias, stride, padding, dilation, groups, padding_mode):
    return _call(f"conv{ndim}d", input, weight, bias, stride=stride, padding=padding,
                 dilation=dilation, groups=groups, padding_mode=padding_mode)


def _conv_transpose(ndim, input, weight, bias, stride, padding, output_padding, groups,
                    dilation, output_size):
    return _call(f"conv_transpose{ndim}d", input, weight, bias, stride=stride,
                 padding=padding, output_padding=output_padding, groups=groups,
                 dilation=dilation, output_size=output_size)


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros"):
    return _conv(1, input, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros"):
    return _conv(2, input, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv3d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
           padding_mode="zeros"):
    return _conv(3, input, weight, bias, stride, padding, dilation, groups, padding_mode)


def conv_transpose1d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, output_size=None):
    return _conv_transpose(1, input, weight, bias, stride, padding, output_padding, groups,
                           dilation, output_size)


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, output_size=None):
    return _conv_transpose(2, input, weight, bias, stride, padding, output_padding, groups,
                           dilation, output_size)


def conv_transpose3d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, output_size=None):
    return _conv_transpose(3, input, weight, bias, stride, padding, output_padding, groups,
                           dilation, output_size)
