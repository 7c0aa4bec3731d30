"""Layers described as PyTorch's functional calls: an op name, a weight shape and keyword args.

This is how the CLI, the demo and the benchmark suite (``shared/bench/suite_public.json``)
name a layer; ``spec_from_op`` turns it into a ConvSpec with the same rules the
functional ops apply.
"""
from __future__ import annotations

import numbers

from .spec import ConvSpec

OPS = {"conv1d": (1, False), "conv2d": (2, False), "conv3d": (3, False),
       "conv_transpose1d": (1, True), "conv_transpose2d": (2, True),
       "conv_transpose3d": (3, True)}
FORWARD_ARGS = {"stride", "padding", "dilation", "groups", "padding_mode"}
TRANSPOSED_ARGS = {"stride", "padding", "output_padding", "groups", "dilation", "output_size"}


def op_info(op: str) -> tuple[int, bool]:
    if op not in OPS:
        raise ValueError(f"op must be one of {sorted(OPS)}, got {op!r}")
    return OPS[op]


def spec_from_op(op: str, weight_shape, bias: bool = True, input_shape=None, **args):
    """The ConvSpec of ``torch.nn.functional.<op>(x, weight, bias, **args)``.

    ``output_size`` (transposed ops) needs ``input_shape`` to be resolved.
    """
    ndim, transposed = op_info(op)
    allowed = TRANSPOSED_ARGS if transposed else FORWARD_ARGS
    unknown = set(args) - allowed
    if unknown:
        raise ValueError(f"{op} does not take {sorted(unknown)}; it takes {sorted(allowed)}")
    shape = tuple(weight_shape)
    if len(shape) != ndim + 2:
        raise ValueError(f"weight of {op} must have {ndim + 2} dimensions (channels, channels, "
                         f"*kernel), got shape {shape}")
    groups = _groups(args.get("groups", 1), shape, op)
    if not transposed:
        return ConvSpec.conv(ndim, shape[1] * groups, shape[0], shape[2:],
                             args.get("stride", 1), args.get("padding", 0),
                             args.get("dilation", 1), groups, bias,
                             args.get("padding_mode", "zeros"))
    output_size = args.get("output_size")
    # As nn.ConvTransposeNd: a given output_size replaces output_padding entirely.
    output_padding = 0 if output_size is not None else args.get("output_padding", 0)
    spec = ConvSpec.conv_transpose(ndim, shape[0], shape[1] * groups, shape[2:],
                                   args.get("stride", 1), args.get("padding", 0),
                                   output_padding, groups, bias, args.get("dilation", 1))
    if output_size is not None:
        if input_shape is None:
            raise ValueError("output_size needs the input shape to be resolved")
        spec = spec.with_output_size(input_shape, output_size)
    return spec


def _groups(groups, weight_shape: tuple[int, ...], op: str) -> int:
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups <= 0:
        raise ValueError(f"groups must be a positive integer, got {groups}")
    if weight_shape[0] % groups:
        raise ValueError(f"{op}: weight.shape[0] ({weight_shape[0]}) must be divisible by "
                         f"groups ({groups}); weight has shape {weight_shape}")
    return int(groups)
