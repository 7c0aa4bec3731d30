"""ConvSpec: one convolution layer's configuration, normalised and validated once.

A ConvSpec is shape-independent (it is what a ``torch.nn.ConvNd`` module holds); a
``Workload`` binds it to one batched input shape and a dtype, and is what the planner,
the renderer and the cache receive. Both are frozen values: built once, validated once,
passed down, never re-derived.

The rules and their messages follow PyTorch 2.13 (``torch/nn/modules/conv.py`` and
ATen's ``Convolution.cpp``), so that convgen refuses exactly what PyTorch refuses.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from . import epilogue
from .dtypes import DTYPES, dtype_name

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
AXIS_NAMES = {1: ("w",), 2: ("h", "w"), 3: ("d", "h", "w")}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_tuple(value, ndim: int, name: str, expand_single: bool = False) -> tuple[int, ...]:
    """PyTorch's ``_ntuple``: an int is repeated, a sequence must have ``ndim`` ints.

    With ``expand_single`` a one-element sequence is repeated too, as ATen's
    ``expand_param_if_needed`` does for stride, padding, dilation and output_padding.
    """
    if _is_int(value):
        return (int(value),) * ndim
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be an int or a tuple of {ndim} ints, got {value!r}")
    items = tuple(value)
    if expand_single and len(items) == 1:
        items = items * ndim
    if len(items) != ndim or not all(_is_int(v) for v in items):
        raise ValueError(
            f"{name} must be an int or a tuple of {ndim} ints to match the "
            f"{ndim}-d convolution, got {value!r}"
        )
    return tuple(int(v) for v in items)


def _require(values: tuple[int, ...], name: str, minimum: int, rule: str) -> None:
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be {rule}, got {values}")


@dataclass(frozen=True)
class ConvSpec:
    """One layer: an N-d convolution or transposed convolution, every argument resolved.

    ``pad_before``/``pad_after`` are per spatial axis; they differ only for
    ``padding='same'`` with an odd total, where PyTorch puts the extra element after.
    """

    transposed: bool
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    output_padding: tuple[int, ...] = ()

    def __post_init__(self):
        nd = len(self.kernel_size)
        if nd not in (1, 2, 3):
            raise ValueError(f"kernel_size must have 1, 2 or 3 entries, got {self.kernel_size}")
        for name in ("stride", "pad_before", "pad_after", "dilation"):
            if len(getattr(self, name)) != nd:
                raise ValueError(f"{name} must have {nd} entries, got {getattr(self, name)}")
        if not self.output_padding:
            object.__setattr__(self, "output_padding", (0,) * nd)
        _check_channels(self.in_channels, self.out_channels, self.groups)
        _require(self.kernel_size, "kernel_size", 1, "positive")
        _require(self.stride, "stride", 1, "positive")
        _require(self.dilation, "dilation", 1, "positive")
        _require(self.pad_before + self.pad_after, "padding", 0, "non-negative")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}"
            )
        if self.transposed:
            self._check_transposed()
        elif any(self.output_padding):
            raise ValueError("output_padding applies only to transposed convolutions")

    def _check_transposed(self):
        if self.padding_mode != "zeros":
            raise ValueError(
                f'Only "zeros" padding mode is supported for transposed convolutions, '
                f"got padding_mode={self.padding_mode!r}"
            )
        if self.pad_before != self.pad_after:
            raise ValueError("transposed convolutions take symmetric padding only")
        _require(self.output_padding, "output_padding", 0, "non-negative")
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):
                raise ValueError(
                    f"output_padding must be smaller than either stride or dilation, got "
                    f"output_padding={self.output_padding}, stride={self.stride}, "
                    f"dilation={self.dilation}"
                )

    # -- construction from PyTorch's arguments ------------------------------------
    @classmethod
    def conv(cls, ndim, in_channels, out_channels, kernel_size, stride=1, padding=0,
             dilation=1, groups=1, bias=True, padding_mode="zeros") -> ConvSpec:
        """The layer of ``torch.nn.Conv{ndim}d`` with these constructor arguments."""
        if padding_mode in ("reflect", "replicate", "circular") and ndim > 1 and (
                _is_single(padding) or (isinstance(padding, str) and padding == "same"
                                         and _is_single(dilation))):
            # nn.ConvNd hands these to F.pad unexpanded: it fails, or pads the last axis only.
            raise ValueError(
                f"padding_mode={padding_mode!r} needs padding (and, with padding='same', "
                f"dilation) as an int or a tuple of {ndim} ints, got padding={padding!r}, "
                f"dilation={dilation!r}"
            )
        kernel_size = as_tuple(kernel_size, ndim, "kernel_size")
        stride = as_tuple(stride, ndim, "stride", expand_single=True)
        dilation = as_tuple(dilation, ndim, "dilation", expand_single=True)
        before, after = resolve_padding(padding, ndim, kernel_size, stride, dilation)
        return cls(False, _int(in_channels, "in_channels"), _int(out_channels, "out_channels"),
                   kernel_size, stride, before, after, dilation, _int(groups, "groups"),
                   bool(bias), padding_mode)

    @classmethod
    def conv_transpose(cls, ndim, in_channels, out_channels, kernel_size, stride=1, padding=0,
                       output_padding=0, groups=1, bias=True, dilation=1,
                       padding_mode="zeros") -> ConvSpec:
        """The layer of ``torch.nn.ConvTranspose{ndim}d`` with these constructor arguments."""
        if isinstance(padding, str):
            raise TypeError(
                f"padding of a transposed convolution must be an int or a tuple of ints, "
                f"got {padding!r} ('same'/'valid' apply to forward convolutions only)"
            )
        padding = as_tuple(padding, ndim, "padding", expand_single=True)
        return cls(True, _int(in_channels, "in_channels"), _int(out_channels, "out_channels"),
                   as_tuple(kernel_size, ndim, "kernel_size"),
                   as_tuple(stride, ndim, "stride", expand_single=True), padding, padding,
                   as_tuple(dilation, ndim, "dilation", expand_single=True),
                   _int(groups, "groups"), bool(bias), padding_mode,
                   as_tuple(output_padding, ndim, "output_padding", expand_single=True))

    # -- derived facts -------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.kernel_size)

    @property
    def op(self) -> str:
        return f"conv_transpose{self.ndim}d" if self.transposed else f"conv{self.ndim}d"

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The weight shape in PyTorch's layout."""
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def cin_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def cout_per_group(self) -> int:
        return self.out_channels // self.groups

    def output_spatial(self, in_spatial: tuple[int, ...]) -> tuple[int, ...]:
        """Output spatial size; may be <= 0 (the caller refuses that)."""
        sizes = []
        for i, size in enumerate(in_spatial):
            reach = self.dilation[i] * (self.kernel_size[i] - 1)
            if self.transposed:
                sizes.append((size - 1) * self.stride[i] - 2 * self.pad_before[i] + reach
                             + self.output_padding[i] + 1)
            else:
                padded = size + self.pad_before[i] + self.pad_after[i]
                sizes.append((padded - reach - 1) // self.stride[i] + 1)
        return tuple(sizes)

    def with_output_size(self, input_shape, output_size) -> ConvSpec:
        """Resolve ``output_size`` (transposed only) into ``output_padding``, with PyTorch's
        range check.

        ``input_shape`` is the input's whole shape, batched or unbatched, or just its spatial
        sizes. As in torch, ``output_size`` has one entry per spatial axis or one per input
        dimension (then the leading batch/channel entries are ignored).
        """
        if not self.transposed:
            raise ValueError("output_size applies only to transposed convolutions")
        nd, shape = self.ndim, tuple(input_shape)
        if len(shape) not in (nd, nd + 1, nd + 2):
            raise ValueError(f"Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input to "
                             f"{self.op}, but got input of shape {shape}")
        if isinstance(output_size, (str, bytes)) or not hasattr(output_size, "__iter__"):
            raise TypeError(f"output_size must be a sequence of ints, got {output_size!r}")
        sizes = tuple(output_size)
        if len(sizes) == len(shape):
            sizes = sizes[-nd:]
        if len(sizes) != nd or not all(_is_int(s) for s in sizes):
            allowed = f"{nd}" if len(shape) == nd else f"{nd} or {len(shape)}"
            raise ValueError(f"output_size: for {len(shape)}D input, output_size must have "
                             f"{allowed} ints, got {output_size!r}")
        in_spatial = shape[-nd:]
        base = ConvSpec(**{**self.__dict__, "output_padding": (0,) * nd})
        min_sizes = base.output_spatial(in_spatial)
        max_sizes = tuple(m + s - 1 for m, s in zip(min_sizes, self.stride))
        for size, lo, hi in zip(sizes, min_sizes, max_sizes):
            if not lo <= size <= hi:
                raise ValueError(
                    f"output_size: requested an output size of {list(sizes)}, but valid sizes "
                    f"range from {list(min_sizes)} to {list(max_sizes)} "
                    f"(for an input of {list(in_spatial)})"
                )
        padding = tuple(int(s - m) for s, m in zip(sizes, min_sizes))
        return ConvSpec(**{**self.__dict__, "output_padding": padding})

    def describe(self) -> str:
        """A one-line, stable description (used in generated headers and the CLI)."""
        parts = [f"{self.op}", f"in={self.in_channels}", f"out={self.out_channels}",
                 f"kernel={self.kernel_size}", f"stride={self.stride}",
                 f"pad={self.pad_before}/{self.pad_after}", f"dilation={self.dilation}",
                 f"groups={self.groups}", f"bias={self.bias}"]
        if self.transposed:
            parts.append(f"output_padding={self.output_padding}")
        else:
            parts.append(f"padding_mode={self.padding_mode}")
        return " ".join(parts)


def _is_single(value) -> bool:
    """A one-element sequence (which ATen repeats over all axes)."""
    if isinstance(value, (str, bytes)):
        return False
    try:
        return len(value) == 1
    except TypeError:   # an int, a 0-d array
        return False


def _int(value, name: str) -> int:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return int(value)


def _check_channels(in_channels: int, out_channels: int, groups: int) -> None:
    if groups <= 0:
        raise ValueError(f"groups must be a positive integer, got {groups}")
    if in_channels <= 0 or out_channels <= 0:
        raise ValueError(
            f"in_channels and out_channels must be positive, got {in_channels} and {out_channels}"
        )
    if in_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) must be divisible by groups ({groups})")
    if out_channels % groups:
        raise ValueError(f"out_channels ({out_channels}) must be divisible by groups ({groups})")


def resolve_padding(padding, ndim, kernel_size, stride, dilation):
    """PyTorch's padding argument as (pad_before, pad_after) tuples.

    'same' splits the total ``dilation * (kernel - 1)`` with the smaller half before,
    exactly as ``nn.ConvNd`` and ATen's ``_convolution_mode`` do.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * ndim, (0,) * ndim
        if padding != "same":
            raise ValueError(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
        if any(s != 1 for s in stride):
            raise ValueError(
                f"padding='same' is not supported for strided convolutions (stride={stride})"
            )
        totals = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        return tuple(t // 2 for t in totals), tuple(t - t // 2 for t in totals)
    pads = as_tuple(padding, ndim, "padding", expand_single=True)
    return pads, pads


@dataclass(frozen=True)
class Workload:
    """A ConvSpec bound to one batched input shape and a dtype: what one kernel computes.

    ``epilogue`` (``core.epilogue``) is what the kernel does to each output after the bias:
    fused activations and a residual addition (empty for the ops of the public API).
    """

    spec: ConvSpec
    input_shape: tuple[int, ...]
    dtype: str
    epilogue: tuple = ()
    output_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self):
        spec, shape = self.spec, tuple(int(s) for s in self.input_shape)
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "epilogue", epilogue.check(self.epilogue))
        if self.dtype not in DTYPES:
            raise TypeError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if len(shape) != spec.ndim + 2:
            raise ValueError(
                f"input_shape must be (batch, channels, *{spec.ndim} spatial), got {shape}"
            )
        if shape[0] < 0:
            raise ValueError(f"batch size must be non-negative, got {shape[0]}")
        if shape[1] != spec.in_channels:
            raise ValueError(
                f"input has {shape[1]} channels but the layer expects in_channels="
                f"{spec.in_channels} (weight {spec.weight_shape}, groups={spec.groups})"
            )
        in_spatial = shape[2:]
        _require(in_spatial, "input spatial size", 1, "positive")
        _check_padding_mode_range(spec, in_spatial)
        out_spatial = spec.output_spatial(in_spatial)
        if any(s <= 0 for s in out_spatial):
            raise ValueError(_empty_output_message(spec, in_spatial, out_spatial))
        object.__setattr__(self, "output_shape", (shape[0], spec.out_channels, *out_spatial))

    @property
    def in_spatial(self) -> tuple[int, ...]:
        return self.input_shape[2:]

    @property
    def out_spatial(self) -> tuple[int, ...]:
        return self.output_shape[2:]

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the convolution (the transposed one counted in scatter form)."""
        spec = self.spec
        taps = math.prod(spec.kernel_size)
        if spec.transposed:
            return self.input_shape[0] * spec.in_channels * math.prod(self.in_spatial) \
                * spec.cout_per_group * taps
        return self.input_shape[0] * spec.out_channels * math.prod(self.out_spatial) \
            * spec.cin_per_group * taps

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _check_padding_mode_range(spec: ConvSpec, in_spatial) -> None:
    # F.pad's rules: reflect needs pad < size, circular pad <= size (one wrap at most).
    if spec.padding_mode == "reflect":
        for i, size in enumerate(in_spatial):
            if max(spec.pad_before[i], spec.pad_after[i]) >= size:
                raise ValueError(
                    f"padding_mode='reflect': padding ({spec.pad_before[i]}, {spec.pad_after[i]}) "
                    f"must be less than the input size {size} along spatial axis {i}"
                )
    elif spec.padding_mode == "circular":
        for i, size in enumerate(in_spatial):
            if max(spec.pad_before[i], spec.pad_after[i]) > size:
                raise ValueError(
                    f"padding_mode='circular': padding ({spec.pad_before[i]}, {spec.pad_after[i]}) "
                    f"must not exceed the input size {size} along spatial axis {i} "
                    f"(it would wrap around more than once)"
                )


def _empty_output_message(spec: ConvSpec, in_spatial, out_spatial) -> str:
    if spec.transposed:
        return (f"the output would be empty: transposed convolution of input size {in_spatial} "
                f"with kernel_size={spec.kernel_size}, stride={spec.stride}, "
                f"padding={spec.pad_before}, dilation={spec.dilation} gives {out_spatial}")
    padded = tuple(s + b + a for s, b, a in zip(in_spatial, spec.pad_before, spec.pad_after))
    reach = tuple(d * (k - 1) + 1 for d, k in zip(spec.dilation, spec.kernel_size))
    return (f"the output would be empty: padded input size {padded} is smaller than the dilated "
            f"kernel size {reach} (input {in_spatial}, padding {spec.pad_before}/{spec.pad_after})")


def workload_of(spec: ConvSpec, input_shape, dtype) -> tuple[Workload, bool]:
    """Bind a spec to an input shape; an unbatched shape (C, *spatial) becomes batch 1."""
    shape = tuple(input_shape)
    if not all(_is_int(s) for s in shape):
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}")
    nd = spec.ndim
    if len(shape) not in (nd + 1, nd + 2):
        raise ValueError(f"Expected {nd + 1}D (unbatched) or {nd + 2}D (batched) input to "
                         f"{spec.op}, but got input of shape {shape}")
    unbatched = len(shape) == nd + 1
    return Workload(spec, (1, *shape) if unbatched else shape, dtype_name(dtype)), unbatched
