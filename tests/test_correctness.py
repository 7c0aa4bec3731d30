"""Every op matches PyTorch: an argument grid, random configurations, every plan, every target.

The oracle is ``helpers.torch_reference`` (float64 torch, padding_mode applied as nn.ConvNd does);
``poisoned_call`` fills the output with NaN first, so an element the kernel never writes shows up.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st

import convgen
from convgen.backends import get_target
from convgen.core.spec import ConvSpec, workload_of
from convgen.cpu.plan import ALGORITHMS, Plan, algorithms_for, native_vector
from convgen.cpu.planner import candidates, choose, legal_plans
from convgen.target.host import cpu_features as host_cpu_features
from helpers import TRANSPOSED_OPS, assert_matches, poisoned_call, random, torch_reference

FORWARD_OPS = ("conv1d", "conv2d", "conv3d")
# torch's note that 'same' with an even kernel copies the input is not our concern here
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
ALL_OPS = FORWARD_OPS + ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


# -- cases ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One call: op, operand shapes and the keyword arguments of the functional op."""
    name: str
    op: str
    x_shape: tuple
    w_shape: tuple
    bias: bool
    dtype: str
    args: tuple     # sorted (key, value) pairs, so the case is hashable and printable

    @property
    def kwargs(self) -> dict:
        return dict(self.args)

    @property
    def ndim(self) -> int:
        return len(self.w_shape) - 2

    @property
    def transposed(self) -> bool:
        return self.op in TRANSPOSED_OPS

    @property
    def groups(self) -> int:
        return self.kwargs.get("groups", 1)

    @property
    def channels(self) -> tuple[int, int]:
        """(in_channels, out_channels) of the layer."""
        if self.transposed:
            return self.w_shape[0], self.w_shape[1] * self.groups
        return self.w_shape[1] * self.groups, self.w_shape[0]

    def __str__(self) -> str:
        batch = "unbatched" if len(self.x_shape) == self.ndim + 1 else f"N={self.x_shape[0]}"
        return (f"{self.op}(x{self.x_shape} [{batch}], w{self.w_shape}, bias={self.bias}, "
                f"{self.dtype}, {self.kwargs})")


def make_case(name, op, *, cin, cout, spatial, kernel, batch=2, bias=True, dtype="float64",
              **args) -> Case:
    nd = len(spatial)
    kernel = (kernel,) * nd if isinstance(kernel, int) else tuple(kernel)
    groups = args.get("groups", 1)
    if op in TRANSPOSED_OPS:
        w_shape = (cin, cout // groups, *kernel)
    else:
        w_shape = (cout, cin // groups, *kernel)
    x_shape = (cin, *spatial) if batch is None else (batch, cin, *spatial)
    return Case(name, op, x_shape, w_shape, bias, dtype, tuple(sorted(args.items())))


def seed_of(text: str) -> int:
    return zlib.crc32(text.encode())


def operands(case: Case, rng: np.random.Generator):
    x = random(rng, case.x_shape, case.dtype)
    w = random(rng, case.w_shape, case.dtype)
    b = random(rng, (case.channels[1],), case.dtype) if case.bias else None
    return x, w, b


def operands_and_reference(case: Case, seed_text: str):
    """Fresh operands seeded by ``seed_text``, and torch's float64 result for them."""
    x, w, b = operands(case, np.random.default_rng(seed_of(seed_text)))
    return x, w, b, torch_reference(case.op, x, w, b, **case.kwargs)


def spec_of(case: Case) -> ConvSpec:
    """The ConvSpec of the case, output_size resolved as nn.ConvTransposeNd resolves it."""
    a, nd = case.kwargs, case.ndim
    cin, cout = case.channels
    k = case.w_shape[2:]
    if case.transposed:
        spec = ConvSpec.conv_transpose(nd, cin, cout, k, a.get("stride", 1), a.get("padding", 0),
                                       a.get("output_padding", 0), a.get("groups", 1), case.bias,
                                       a.get("dilation", 1))
        if a.get("output_size") is not None:
            spec = spec.with_output_size(case.x_shape, a["output_size"])
        return spec
    return ConvSpec.conv(nd, cin, cout, k, a.get("stride", 1), a.get("padding", 0),
                         a.get("dilation", 1), a.get("groups", 1), case.bias,
                         a.get("padding_mode", "zeros"))


def torch_module_of(case: Case):
    """The torch.nn module of the case (not for output_size, which is a call argument)."""
    a, nd = case.kwargs, case.ndim
    cin, cout = case.channels
    k = tuple(case.w_shape[2:])
    if case.transposed:
        return getattr(torch.nn, f"ConvTranspose{nd}d")(
            cin, cout, k, stride=a.get("stride", 1), padding=a.get("padding", 0),
            output_padding=a.get("output_padding", 0), groups=a.get("groups", 1), bias=case.bias,
            dilation=a.get("dilation", 1))
    return getattr(torch.nn, f"Conv{nd}d")(
        cin, cout, k, stride=a.get("stride", 1), padding=a.get("padding", 0),
        dilation=a.get("dilation", 1), groups=a.get("groups", 1), bias=case.bias,
        padding_mode=a.get("padding_mode", "zeros"))


def check_case(case: Case, rng: np.random.Generator, *, via_torch_module=False, target="cpu",
               functional=True) -> None:
    """Functional call and a poisoned compiled call both equal torch's float64 result."""
    x, w, b = operands(case, rng)
    ref = torch_reference(case.op, x, w, b, **case.kwargs)
    ours = None
    if functional:
        ours = getattr(convgen, case.op)(x, w, b, **case.kwargs)
        assert isinstance(ours, np.ndarray) and ours.dtype == np.dtype(case.dtype)
        assert ours.flags.c_contiguous
        assert_matches(ours, ref, case.dtype)
    if via_torch_module and case.kwargs.get("output_size") is None:
        layer = torch_module_of(case)
    else:
        layer = spec_of(case)
    kernel = convgen.compile(layer, case.x_shape, case.dtype, target=target)
    assert kernel.output_shape == ref.shape
    poisoned = poisoned_call(kernel, x, w, b)
    assert_matches(poisoned, ref, case.dtype)
    if ours is not None and target == "cpu":
        # the same workload and plan: the very same kernel, bit for bit
        np.testing.assert_array_equal(poisoned, ours)


# -- 1. the argument grid -------------------------------------------------------------------
SPATIAL = {1: (11,), 2: (7, 5), 3: (5, 6, 4)}


def _t(nd, *values):
    """A per-axis tuple of the first ``nd`` values (mixed tuples: (2, 1, 3)[:nd])."""
    return tuple(values[:nd])


def forward_variants(nd: int):
    sp = SPATIAL[nd]
    base = dict(cin=4, cout=6, spatial=sp, kernel=3)
    v = [
        ("basic", {}),
        ("stride2", dict(stride=2)),
        ("stride_mixed", dict(stride=_t(nd, 2, 1, 3))),
        ("pad1", dict(padding=1)),
        ("pad_tuple", dict(padding=_t(nd, 2, 0, 1))),
        ("pad_large", dict(padding=4, kernel=2)),
        ("same_k3", dict(padding="same")),
        ("same_k4_asym", dict(padding="same", kernel=4)),
        ("same_k2_dil3_asym", dict(padding="same", kernel=2, dilation=3)),
        ("same_mixed", dict(padding="same", kernel=_t(nd, 4, 3, 2), dilation=_t(nd, 1, 2, 3),
                            groups=2)),
        ("valid", dict(padding="valid")),
        ("valid_stride2", dict(padding="valid", stride=2, kernel=2)),
        ("dil2", dict(dilation=2, padding=1)),
        ("dil_mixed", dict(dilation=_t(nd, 2, 1, 3), padding=_t(nd, 1, 1, 2))),
        ("groups2", dict(groups=2)),
        ("depthwise", dict(cin=4, cout=4, groups=4)),
        ("depthwise_mult", dict(cin=3, cout=6, groups=3, padding=1)),
        ("nobias", dict(bias=False)),
        ("batch1", dict(batch=1)),
        ("batch3", dict(batch=3, padding=1)),
        ("unbatched", dict(batch=None, padding=1, stride=2)),
        ("odd_sizes", dict(spatial=_t(nd, 7, 5, 3), kernel=_t(nd, 3, 2, 1))),
        ("one_wide", dict(spatial=_t(nd, 5, 1, 1) if nd > 1 else (1,),
                          kernel=_t(nd, 3, 1, 1) if nd > 1 else 1)),
        ("one_wide_pad", dict(spatial=_t(nd, 1, 6, 1), kernel=3, padding=1)),
        ("k1", dict(kernel=1)),
        ("k1_stride2_pad1", dict(kernel=1, stride=2, padding=1)),
        ("single_output", dict(padding=1, kernel=tuple(s + 2 for s in sp))),
        ("single_output_dil", dict(kernel=2, dilation=tuple(s - 1 for s in sp))),
        ("combo", dict(stride=_t(nd, 2, 1, 2), padding=_t(nd, 1, 2, 0),
                       dilation=_t(nd, 1, 2, 1), groups=2, bias=False)),
    ]
    for mode in ("reflect", "replicate", "circular"):
        v += [
            (f"{mode}_pad1", dict(padding=1, padding_mode=mode)),
            (f"{mode}_same_k4", dict(padding="same", kernel=4, padding_mode=mode)),
            (f"{mode}_same_mixed", dict(padding="same", kernel=_t(nd, 2, 3, 4),
                                        dilation=_t(nd, 2, 1, 1), padding_mode=mode)),
            (f"{mode}_combo", dict(padding=_t(nd, 2, 1, 3), stride=2, dilation=_t(nd, 2, 1, 1),
                                   groups=2, padding_mode=mode, batch=None)),
        ]
    v += [
        ("reflect_max_pad", dict(padding=tuple(s - 1 for s in sp), padding_mode="reflect")),
        ("reflect_max_pad_stride2", dict(padding=tuple(s - 1 for s in sp), stride=2,
                                         padding_mode="reflect", kernel=2)),
        ("circular_max_pad", dict(padding=sp, padding_mode="circular")),
        ("circular_max_pad_dil", dict(padding=sp, padding_mode="circular", dilation=2,
                                      kernel=4)),
        ("replicate_big_pad", dict(padding=_t(nd, 5, 9, 6), padding_mode="replicate")),
        ("reflect_one_wide", dict(spatial=_t(nd, 6, 2, 2) if nd > 1 else (2,), padding=1,
                                  padding_mode="reflect")),
        ("circular_one_wide", dict(spatial=_t(nd, 1, 3, 1), padding=1, padding_mode="circular")),
    ]
    for name, over in v:
        yield name, {**base, **over}


def transposed_variants(nd: int):
    sp = {1: (6,), 2: (5, 4), 3: (3, 4, 2)}[nd]
    base = dict(cin=4, cout=6, spatial=sp, kernel=3)
    v = [
        ("basic", {}),
        ("stride2", dict(stride=2)),
        ("stride_mixed", dict(stride=_t(nd, 2, 1, 3))),
        ("pad1", dict(padding=1)),
        ("pad_tuple", dict(padding=_t(nd, 1, 2, 0))),
        ("outpad1_stride2", dict(stride=2, output_padding=1, padding=1)),
        ("outpad_mixed", dict(stride=_t(nd, 3, 2, 2), output_padding=_t(nd, 2, 0, 1))),
        ("outpad_ge_stride_lt_dil", dict(stride=1, dilation=2, output_padding=1)),
        ("outpad_ge_stride_lt_dil2", dict(stride=2, dilation=3, output_padding=2, padding=1)),
        ("dil2", dict(dilation=2)),
        ("dil_mixed", dict(dilation=_t(nd, 2, 1, 3), padding=1)),
        ("groups2", dict(groups=2)),
        ("depthwise", dict(cin=4, cout=4, groups=4, stride=2)),
        ("depthwise_mult", dict(cin=3, cout=6, groups=3)),
        ("nobias", dict(bias=False)),
        ("batch1", dict(batch=1)),
        ("batch3", dict(batch=3, stride=2)),
        ("unbatched", dict(batch=None, stride=2, padding=1)),
        ("odd_sizes", dict(spatial=_t(nd, 7, 5, 3), kernel=_t(nd, 3, 2, 1))),
        ("one_wide", dict(spatial=_t(nd, 1, 5, 1), kernel=_t(nd, 1, 3, 2))),
        ("k1", dict(kernel=1)),
        ("k1_stride2", dict(kernel=1, stride=2)),     # every other output pixel is bias only
        ("k1_stride3_dil2", dict(kernel=1, stride=3, dilation=2, output_padding=1)),
        ("single_output", dict(spatial=(1,) * nd, kernel=3, padding=1)),
        ("kernel_lt_stride", dict(kernel=2, stride=3, padding=1)),
        ("output_size_min", dict(stride=_t(nd, 3, 2, 3), output_size="min")),
        ("output_size_max", dict(stride=_t(nd, 3, 2, 3), output_size="max", padding=1)),
        ("output_size_full", dict(stride=2, output_size="full", batch=3)),
        ("output_size_full_unbatched", dict(stride=(3, 2, 2)[:nd], output_size="full",
                                            batch=None)),
        ("output_size_unbatched", dict(stride=3, output_size="max", batch=None, dilation=2)),
        ("combo", dict(stride=2, padding=1, dilation=2, output_padding=1, groups=2,
                       bias=False)),
    ]
    for name, over in v:
        yield name, {**base, **over}


def _resolve_output_size(op, params) -> dict:
    """Replace output_size='min'|'max'|'full' with the sizes torch's valid range allows."""
    which = params.get("output_size")
    if which is None:
        return params
    params = dict(params)
    nd = len(params["spatial"])
    spec = ConvSpec.conv_transpose(
        nd, params["cin"], params["cout"], params["kernel"], params.get("stride", 1),
        params.get("padding", 0), 0, params.get("groups", 1), True, params.get("dilation", 1))
    lo = spec.output_spatial(params["spatial"])
    hi = tuple(m + s - 1 for m, s in zip(lo, spec.stride))
    if which == "min":
        params["output_size"] = lo
    elif which == "max":
        params["output_size"] = hi
    else:   # one entry per input dimension, as nn.ConvTransposeNd also accepts
        batch = params.get("batch", 2)
        lead = (params["cout"],) if batch is None else (batch, params["cout"])
        params["output_size"] = (*lead, *(h - 1 if h > low else h for low, h in zip(lo, hi)))
    return params


def build_grid() -> list[Case]:
    grid = []
    for op in ALL_OPS:
        nd = int(op[-2])
        variants = transposed_variants(nd) if op in TRANSPOSED_OPS else forward_variants(nd)
        for name, base in variants:
            params = _resolve_output_size(op, base)
            dtype = ("float32", "float64")[len(grid) % 2]
            grid.append(make_case(name, op, dtype=dtype, **params))
    # both dtypes for a few: the other dtype on the basic and combo cases
    for case in list(grid):
        if case.name in ("basic", "combo", "reflect_combo", "circular_max_pad"):
            other = "float64" if case.dtype == "float32" else "float32"
            grid.append(Case(case.name, case.op, case.x_shape, case.w_shape, case.bias, other,
                             case.args))
    return grid


GRID = build_grid()


def _forced_plans(case: Case):
    """(algorithm, plan) for every algorithm that applies to the case: a legal plan of that
    algorithm drawn by the case's seed, so the grid meets many tile shapes and tails.
    (Unpriced: ranking every candidate first took a sixth of the grid's time.)"""
    workload = workload_of(spec_of(case), case.x_shape, case.dtype)[0]
    by_algorithm = {}
    for plan in legal_plans(workload, _CPU):
        by_algorithm.setdefault(plan.algorithm, []).append(plan)
    seed = seed_of(f"{case.op}-{case.name}-{case.dtype}")
    return [(alg, plans[seed % len(plans)]) for alg, plans in sorted(by_algorithm.items())]


FORCED = [(case, alg) for case in GRID for alg in ALGORITHMS
          if alg in algorithms_for(workload_of(spec_of(case), case.x_shape, case.dtype)[0])]


@pytest.mark.parametrize("case,algorithm", FORCED,
                         ids=[f"{c.op}-{c.name}-{c.dtype}-{a}" for c, a in FORCED])
def test_grid_every_algorithm(case, algorithm):
    """Each algorithm on every grid case it applies to, not only where it would win. The
    planner's own algorithm runs its default plan as users reach it: the functional op,
    and compile() given a ConvSpec or the equivalent torch.nn module by turns; every other
    algorithm a plan of its own drawn by the case's seed."""
    workload = workload_of(spec_of(case), case.x_shape, case.dtype)[0]
    if algorithm == choose(workload, _CPU).algorithm:
        rng = np.random.default_rng(seed_of(f"{case.op}-{case.name}-{case.dtype}"))
        check_case(case, rng, via_torch_module=seed_of(case.name + case.op) % 2 == 1)
        # (the kernel check_case compiled, from the cache: it ran this algorithm)
        assert convgen.compile(spec_of(case), case.x_shape, case.dtype).plan.algorithm == algorithm
        return
    plan = dict(_forced_plans(case))[algorithm]
    rng = np.random.default_rng(seed_of(f"{case.op}-{case.name}-{case.dtype}-{algorithm}"))
    x, w, b = operands(case, rng)
    ref = torch_reference(case.op, x, w, b, **case.kwargs)
    kernel = convgen.compile(spec_of(case), case.x_shape, case.dtype, plan=plan)
    assert kernel.plan == plan
    assert_matches(poisoned_call(kernel, x, w, b), ref, case.dtype)
    # pre-packed weights give the very same result
    np.testing.assert_array_equal(kernel(x, kernel.prepack(w), b), kernel(x, w, b))


def test_grid_covers_every_argument():
    """The grid reaches what it claims: every op, mode, dtype, batch form and range edge."""
    seen = {(c.op, c.name) for c in GRID}
    for op in ALL_OPS:
        assert (op, "basic") in seen and (op, "combo") in seen
    for op in FORWARD_OPS:
        for name in ("reflect_max_pad", "circular_max_pad", "same_k4_asym", "valid"):
            assert (op, name) in seen
    for op in TRANSPOSED_OPS:
        for name in ("output_size_min", "output_size_max", "outpad_ge_stride_lt_dil"):
            assert (op, name) in seen
    assert {c.dtype for c in GRID} == {"float32", "float64"}
    for c in GRID:
        if c.name == "outpad_ge_stride_lt_dil":
            a = c.kwargs
            assert a["output_padding"] >= a["stride"] and a["output_padding"] < a["dilation"]


# -- 2. random configurations ---------------------------------------------------------------
MAX_SPATIAL = {1: 9, 2: 9, 3: 5}


def _per_axis(draw, nd, strategy):
    """Per-axis values, given as an int when all equal (half the time) or as a tuple."""
    values = tuple(draw(strategy) for _ in range(nd))
    if len(set(values)) == 1 and draw(st.booleans()):
        return values[0]
    return values


def _axes(value, nd):
    return (value,) * nd if isinstance(value, int) else tuple(value)


def _draw_layer(draw, nd: int):
    """What forward and transposed configurations share: groups, channels, kernel, stride and
    dilation."""
    groups = draw(st.sampled_from((1, 2, 3)))
    cin = groups * draw(st.integers(1, 6 // groups))
    cout = groups * draw(st.integers(1, 6 // groups))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = _per_axis(draw, nd, st.integers(1, 3))
    dilation = _per_axis(draw, nd, st.integers(1, 3))
    return groups, cin, cout, kernel, stride, dilation


@st.composite
def forward_configs(draw, nd: int) -> Case:
    groups, cin, cout, kernel, stride, dilation = _draw_layer(draw, nd)
    mode = draw(st.sampled_from(("zeros", "reflect", "replicate", "circular")))
    kinds = ["ints", "valid"] + (["same"] if _axes(stride, nd) == (1,) * nd else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "ints":
        padding = _per_axis(draw, nd, st.integers(0, 3))
    else:
        padding = kind
    spec = ConvSpec.conv(nd, cin, cout, kernel, stride, padding, dilation, groups, True, mode)
    spatial = []
    for i in range(nd):
        reach = spec.dilation[i] * (kernel[i] - 1) + 1
        pad = max(spec.pad_before[i], spec.pad_after[i])
        lo = max(1, reach - spec.pad_before[i] - spec.pad_after[i])
        if mode == "reflect":
            lo = max(lo, pad + 1)
        elif mode == "circular":
            lo = max(lo, pad)
        assume(lo <= MAX_SPATIAL[nd])       # the output would be empty or the padding invalid
        spatial.append(draw(st.integers(lo, MAX_SPATIAL[nd])))
    batch = draw(st.sampled_from((None, 1, 2, 3)))
    return make_case("random", f"conv{nd}d", cin=cin, cout=cout, spatial=tuple(spatial),
                     kernel=kernel, batch=batch, bias=draw(st.booleans()),
                     dtype=draw(st.sampled_from(("float32", "float64"))), stride=stride,
                     padding=padding, dilation=dilation, groups=groups, padding_mode=mode)


@st.composite
def transposed_configs(draw, nd: int) -> Case:
    groups, cin, cout, kernel, stride, dilation = _draw_layer(draw, nd)
    padding = _per_axis(draw, nd, st.integers(0, 3))
    s, d, p = _axes(stride, nd), _axes(dilation, nd), _axes(padding, nd)
    output_padding = tuple(draw(st.integers(0, max(si, di) - 1)) for si, di in zip(s, d))
    if len(set(output_padding)) == 1 and draw(st.booleans()):
        output_padding = output_padding[0]
    op_axes = _axes(output_padding, nd)
    spatial = []
    for i in range(nd):
        sizes = [n for n in range(1, MAX_SPATIAL[nd] + 1)
                 if (n - 1) * s[i] - 2 * p[i] + d[i] * (kernel[i] - 1) + op_axes[i] + 1 > 0]
        assume(sizes)
        spatial.append(draw(st.sampled_from(sizes)))
    args = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                dilation=dilation)
    if draw(st.booleans()):   # output_size instead (it overrides output_padding)
        out = []
        for i in range(nd):
            lo = (spatial[i] - 1) * s[i] - 2 * p[i] + d[i] * (kernel[i] - 1) + 1
            choices = [n for n in range(lo, lo + s[i]) if n > 0]
            assume(choices)
            out.append(draw(st.sampled_from(choices)))
        args["output_size"] = tuple(out)
    batch = draw(st.sampled_from((None, 1, 2, 3)))
    return make_case("random", f"conv_transpose{nd}d", cin=cin, cout=cout,
                     spatial=tuple(spatial), kernel=kernel, batch=batch,
                     bias=draw(st.booleans()), dtype=draw(st.sampled_from(("float32", "float64"))),
                     **args)


RANDOM = settings(max_examples=40, deadline=None, derandomize=False, database=None,
                  print_blob=True)


def _check_random(case: Case, seed: int) -> None:
    note(f"config: {case}")
    try:
        check_case(case, np.random.default_rng(seed))
    except Exception as exc:
        raise AssertionError(f"{case}: {exc}") from exc


@pytest.mark.parametrize("nd", (1, 2, 3))
@RANDOM
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_random_conv(nd, data, seed):
    _check_random(data.draw(forward_configs(nd), label="config"), seed)


@pytest.mark.parametrize("nd", (1, 2, 3))
@RANDOM
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_random_conv_transpose(nd, data, seed):
    _check_random(data.draw(transposed_configs(nd), label="config"), seed)


# -- 3. every plan --------------------------------------------------------------------------
PLAN_WORKLOADS = {
    "grouped_conv2d": make_case("grouped", "conv2d", cin=4, cout=8, spatial=(6, 5), kernel=3,
                                padding=1, groups=2, dtype="float32"),
    "conv3d": make_case("conv3d", "conv3d", cin=2, cout=4, spatial=(4, 5, 3), kernel=(2, 3, 2),
                        stride=(1, 2, 1), padding=1, dtype="float64", bias=False),
    "transposed_conv2d_s2": make_case("tconv2d", "conv_transpose2d", cin=3, cout=4, spatial=(4, 3),
                                      kernel=3, stride=2, padding=1, output_padding=1,
                                      dtype="float32"),
    "reflect_conv1d": make_case("reflect", "conv1d", cin=2, cout=16, spatial=(9,), kernel=3,
                                padding=2, padding_mode="reflect", dtype="float64"),
    # rows (11) and columns (19) that no row tile or vector divides; channel multiplier 2
    "depthwise_conv2d": make_case("depthwise", "conv2d", cin=3, cout=6, spatial=(11, 19),
                                  kernel=(3, 4), padding=(1, 2), dilation=(2, 1), groups=3,
                                  dtype="float32"),
}
_CPU = get_target("cpu")


def _workload(case: Case):
    return workload_of(spec_of(case), case.x_shape, case.dtype)[0]


def _plan_id(name: str, plan: Plan) -> str:
    return (f"{name}-{plan.algorithm}-oc{plan.oc_tile}-px{plan.pixel_tile}-r{plan.row_tile}"
            f"-v{plan.vector}-{plan.loop_order}-t{plan.threads}")


def _sample(plans: list[Plan]) -> list[Plan]:
    """Every algorithm's best plan, then, in rank order, each plan that brings a value not
    yet met of its algorithm's channel tile, pixel tile, row tile or loop order: every value
    the planner lists of each, each one's tails its own code. (Every combination of the
    three tiles, 372 kernels, took a tenth of the suite; this covers them in 270, adding
    the loop orders.)"""
    seen, picked = set(), []
    for plan in plans:
        a = plan.algorithm
        values = {(a,), (a, "oc", plan.oc_tile), (a, "px", plan.pixel_tile),
                  (a, "rows", plan.row_tile), (a, "order", plan.loop_order)}
        if not values <= seen:
            seen |= values
            picked.append(plan)
    return picked


PLAN_CASES = [(name, plan) for name, case in PLAN_WORKLOADS.items()
              for plan in _sample([c.plan for c in candidates(_workload(case), _CPU)])]


def test_candidates_are_many_and_distinct():
    for name, case in PLAN_WORKLOADS.items():
        plans = [c.plan for c in candidates(_workload(case), _CPU)]
        assert len(plans) == len(set(plans)) >= 4, name
        assert len({p.oc_tile for p in plans}) > 1, name
        assert len({p.algorithm for p in plans}) >= 2, name


def _check_plan(case: Case, plan, seed: int = 0):
    rng = np.random.default_rng(seed)
    x, w, b = operands(case, rng)
    ref = torch_reference(case.op, x, w, b, **case.kwargs)
    kernel = convgen.compile(spec_of(case), case.x_shape, case.dtype, plan=plan)
    assert_matches(poisoned_call(kernel, x, w, b), ref, case.dtype)
    return kernel


@pytest.mark.parametrize("name,plan", PLAN_CASES, ids=[_plan_id(n, p) for n, p in PLAN_CASES])
def test_every_candidate_plan(name, plan):
    kernel = _check_plan(PLAN_WORKLOADS[name], plan, seed_of(str(plan)))
    assert kernel.plan == plan
    assert str(plan) in kernel.source


@pytest.mark.parametrize("name", PLAN_WORKLOADS)
def test_plan_string_round_trips(name):
    case = PLAN_WORKLOADS[name]
    for cand in candidates(_workload(case), _CPU)[:3]:
        text = str(cand.plan)
        assert Plan.parse(text) == cand.plan
        assert str(Plan.parse(text)) == text
        kernel = _check_plan(case, text)
        assert kernel.plan == cand.plan


@pytest.mark.parametrize("name", PLAN_WORKLOADS)
def test_plan_by_algorithm_name(name):
    case = PLAN_WORKLOADS[name]
    algorithm = "transposed_gather" if case.transposed else "direct"
    kernel = _check_plan(case, algorithm)
    assert kernel.plan.algorithm == algorithm
    assert _check_plan(case, "implicit_gemm").plan.algorithm == "implicit_gemm"


# The host's float32 vector (16 lanes on AVX-512, 8 on AVX2): the plans below must run here.
_VL = native_vector(_CPU, "float32")


@pytest.mark.parametrize("plan", [
    Plan("direct", 2, 1, 1, "pixel_outer", 3),                 # more threads than cores
    Plan("implicit_gemm", _VL, 1, _VL, "pixel_outer", 4),      # one-pixel tiles
    Plan("implicit_gemm", _VL // 2, 5, _VL // 2, "oc_outer", 2),   # half-width vectors
    Plan("direct_simd", 2, _VL // 2, _VL // 2, "oc_outer", 1),     # half-width vectors
], ids=lambda p: _plan_id("grouped_conv2d", p))
def test_plan_outside_the_candidates(plan):
    """Any plan check_plan accepts computes the right thing, not only the listed ones."""
    assert _check_plan(PLAN_WORKLOADS["grouped_conv2d"], plan).plan == plan


@pytest.mark.parametrize("plan", [
    Plan("depthwise", 1, _VL // 2, _VL // 2, "oc_outer", 2, row_tile=4),  # half-width, row tail 1
    Plan("depthwise", 1, _VL, _VL, "oc_outer", 3, row_tile=9),   # one tile of all 9 rows
    Plan("depthwise", 1, 32, _VL, "oc_outer", 1, row_tile=1),    # one tile of the whole row
], ids=lambda p: _plan_id("depthwise_conv2d", p))
def test_depthwise_plan_outside_the_candidates(plan):
    assert _check_plan(PLAN_WORKLOADS["depthwise_conv2d"], plan).plan == plan


# A row's last, partial vector is written with a masked store where the ISA has one
# (AVX-512, AVX512VL for 256-bit vectors, AVX2) and through a copy elsewhere: every
# variant, in both dtypes, on rows of 13 outputs (no vector width divides them).
_TAIL_CASES = {dtype: make_case("tails", "conv2d", cin=4, cout=4, spatial=(5, 13), kernel=3,
                                padding=1, groups=4, dtype=dtype)
               for dtype in ("float32", "float64")}


_NO_AVX2 = pytest.mark.skipif("avx2" not in host_cpu_features(), reason="no AVX2")


# The portable target "c" computes in scalars: it has neither a half nor a partial vector.
@pytest.mark.parametrize("target, half", [
    ("cpu", False), ("cpu", True), ("c", False),
    pytest.param("x86-64-v3", False, marks=_NO_AVX2),
    pytest.param("x86-64-v3", True, marks=_NO_AVX2)],
    ids=["cpu-full_vectors", "cpu-half_vectors", "c-scalars", "x86-64-v3-full_vectors",
         "x86-64-v3-half_vectors"])
@pytest.mark.parametrize("dtype", sorted(_TAIL_CASES))
@pytest.mark.parametrize("algorithm", ["direct_simd", "depthwise"])
def test_partial_vector_stores(target, dtype, algorithm, half):
    resolved = get_target(target)
    case = _TAIL_CASES[dtype]
    vector = native_vector(resolved, dtype) // (2 if half else 1)
    plan = Plan(algorithm, 1, vector, vector, "oc_outer", 1,
                row_tile=2 if algorithm == "depthwise" else 1)
    rng = np.random.default_rng(seed_of(f"{target}-{dtype}-{algorithm}-{half}"))
    x, w, b = operands(case, rng)
    kernel = convgen.compile(spec_of(case), case.x_shape, dtype, target=target, plan=plan)
    assert_matches(poisoned_call(kernel, x, w, b), torch_reference(case.op, x, w, b, **case.kwargs),
                   dtype)
    uses_mask = "_mask_storeu_" in kernel.source or "_maskstore_" in kernel.source
    # 128-bit vectors (the portable target, AVX2's half width) have no masked store here
    assert uses_mask == (target != "c" and vector * np.dtype(dtype).itemsize >= 32)


@pytest.mark.parametrize("name,plan,match", [
    ("grouped_conv2d", Plan("direct", 3, 1, 1, "oc_outer", 1), "oc_tile"),
    ("grouped_conv2d", Plan("direct", 8, 2, 1, "oc_outer", 1), "pixel_tile"),
    ("grouped_conv2d", Plan("direct", 0, 1, 1, "oc_outer", 1), "positive"),
    ("grouped_conv2d", Plan("transposed_gather", 1, 1, 1, "oc_outer", 1), "does not apply"),
    ("transposed_conv2d_s2", Plan("direct", 1, 1, 1, "oc_outer", 1), "does not apply"),
    ("transposed_conv2d_s2", Plan("direct_simd", 1, 16, 16, "oc_outer", 1), "does not apply"),
    ("grouped_conv2d", Plan("direct", 1, 1, 1, "sideways", 1), "loop_order"),
    ("grouped_conv2d", Plan("direct", 1, 1, 1, "oc_outer", 0), "threads"),
    ("grouped_conv2d", Plan("implicit_gemm", 12, 4, 16, "oc_outer", 1), "multiple of vector"),
    ("grouped_conv2d", Plan("implicit_gemm", 16, 4, 3, "oc_outer", 1), "vector must be"),
    ("grouped_conv2d", Plan("implicit_gemm", 64, 8, 16, "oc_outer", 1), "registers"),
    ("grouped_conv2d", Plan("direct_simd", 3, 16, 16, "oc_outer", 1), "divide"),
    ("grouped_conv2d", Plan("direct_simd", 2, 20, 16, "oc_outer", 1), "multiple of vector"),
    ("grouped_conv2d", Plan("depthwise", 1, 16, 16, "oc_outer", 1), "does not apply"),
    ("grouped_conv2d", Plan("direct_simd", 2, 16, 16, "oc_outer", 1, row_tile=2), "row_tile"),
    ("depthwise_conv2d", Plan("depthwise", 2, 16, 16, "oc_outer", 1), "oc_tile=1"),
    ("depthwise_conv2d", Plan("depthwise", 1, 16, 16, "pixel_outer", 1), "loop_order=oc_outer"),
    ("depthwise_conv2d", Plan("depthwise", 1, 20, 16, "oc_outer", 1), "multiple of vector"),
    ("depthwise_conv2d", Plan("depthwise", 1, 16, 16, "oc_outer", 1, row_tile=12), "exceeds"),
    ("depthwise_conv2d", Plan("depthwise", 1, 64, 16, "oc_outer", 1, row_tile=7), "accumulators"),
    ("depthwise_conv2d", ("algorithm=depthwise oc_tile=1 pixel_tile=16 row_tile=0 vector=16 "
                          "loop_order=oc_outer threads=1"), "positive"),
    ("grouped_conv2d", "transposed_gather", "does not apply"),
    ("transposed_conv2d_s2", "direct", "does not apply"),
    ("grouped_conv2d", ("algorithm=direct oc_tile=3 pixel_tile=1 vector=1 loop_order=oc_outer "
                        "threads=1"), "oc_tile"),
    ("grouped_conv2d", ("algorithm=direct oc_tile=x pixel_tile=1 vector=1 loop_order=oc_outer "
                        "threads=1"), "malformed"),
    ("grouped_conv2d", "algorithm=direct oc_tile=1", "fields"),
    ("grouped_conv2d", "bogus", "plan must be"),
])
def test_invalid_plan_is_refused(name, plan, match):
    """Checked for the AVX-512 target whatever the host (the plans name its 16 lanes and 32
    registers): a plan is refused before any C is built, let alone run."""
    case = PLAN_WORKLOADS[name]
    with pytest.raises(ValueError, match=match):
        convgen.compile(spec_of(case), case.x_shape, case.dtype, plan=plan,
                        target="x86-64-v4")


# -- 4. targets -----------------------------------------------------------------------------
TARGET_CASES = [
    make_case("same_reflect", "conv2d", cin=4, cout=6, spatial=(7, 5), kernel=4, padding="same",
              padding_mode="reflect", groups=2, dtype="float32"),
    make_case("strided", "conv1d", cin=3, cout=6, spatial=(10,), kernel=3, stride=2, dilation=2,
              padding=2, padding_mode="circular", groups=3, dtype="float64"),
    make_case("conv3d", "conv3d", cin=2, cout=4, spatial=(4, 3, 5), kernel=2, padding=1,
              dtype="float32", batch=None),
    make_case("tconv2d", "conv_transpose2d", cin=4, cout=2, spatial=(4, 5), kernel=3, stride=2,
              padding=1, output_padding=1, dilation=2, groups=2, dtype="float64"),
    make_case("tconv3d", "conv_transpose3d", cin=2, cout=3, spatial=(2, 3, 2), kernel=2,
              stride=(2, 1, 3), dtype="float32", bias=False),
]
_HAS_AVX2 = "avx2" in host_cpu_features()
_HAS_AVX512 = "avx512f" in host_cpu_features()


@pytest.mark.parametrize("target", [
    "c", pytest.param("x86-64-v3", marks=pytest.mark.skipif(not _HAS_AVX2, reason="no AVX2")),
    pytest.param("x86-64-v4", marks=pytest.mark.skipif(not _HAS_AVX512, reason="no AVX-512"))])
@pytest.mark.parametrize("case", TARGET_CASES, ids=[f"{c.op}-{c.name}" for c in TARGET_CASES])
def test_targets(case, target):
    check_case(case, np.random.default_rng(seed_of(case.name + target)), target=target,
               functional=False)
    kernel = convgen.compile(spec_of(case), case.x_shape, case.dtype, target=target)
    assert kernel.target.name == target
    if target == "c":
        assert kernel.target.arch_flags == ()


# -- 5. non-contiguous and foreign inputs ---------------------------------------------------
def _strided_views(rng, x_shape, w_shape, dtype):
    """(x, w) pairs that equal fresh C-ordered data but are laid out otherwise."""
    x = random(rng, x_shape, dtype)
    w = random(rng, w_shape, dtype)
    # a transposed view: store the reversed-axes array, view it back
    x_t = np.ascontiguousarray(x.transpose(*reversed(range(x.ndim)))).transpose(
        *reversed(range(x.ndim)))
    w_t = np.ascontiguousarray(np.swapaxes(w, 0, 1)).swapaxes(0, 1)
    # every other element of a larger buffer
    x_big = random(rng, tuple(2 * s for s in x_shape), dtype)
    x_big[tuple(slice(None, None, 2) for _ in x_shape)] = x
    x_s = x_big[tuple(slice(None, None, 2) for _ in x_shape)]
    w_big = random(rng, (*w_shape[:-1], 2 * w_shape[-1] + 1), dtype)
    w_big[..., 1::2] = w
    w_s = w_big[..., 1::2]
    # negative strides
    x_r = np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    variants = {
        "transposed_views": (x_t, w_t),
        "strided_slices": (x_s, w_s),
        "fortran_order": (np.asfortranarray(x), np.asfortranarray(w)),
        "reversed_view": (x_r, np.asfortranarray(w)),
        "big_endian": (x.astype(x.dtype.newbyteorder(">")), w.astype(w.dtype.newbyteorder(">"))),
    }
    for xv, wv in variants.values():
        np.testing.assert_array_equal(xv, x)
        np.testing.assert_array_equal(wv, w)
    return x, w, variants


LAYOUT_CASES = [
    make_case("conv2d", "conv2d", cin=4, cout=6, spatial=(7, 5), kernel=3, stride=2, padding=1,
              groups=2, dtype="float32"),
    make_case("conv3d", "conv3d", cin=2, cout=3, spatial=(3, 4, 5), kernel=2,
              padding_mode="replicate", padding=1, dtype="float64"),
    make_case("conv_transpose1d", "conv_transpose1d", cin=4, cout=2, spatial=(6,), kernel=3,
              stride=2, output_padding=1, dtype="float64"),
    make_case("conv_transpose2d", "conv_transpose2d", cin=3, cout=6, spatial=(4, 5), kernel=2,
              stride=(2, 1), groups=3, dtype="float32", batch=None),
]


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=[c.name for c in LAYOUT_CASES])
def test_non_contiguous_operands(case):
    rng = np.random.default_rng(seed_of(case.name))
    x, w, variants = _strided_views(rng, case.x_shape, case.w_shape, case.dtype)
    b_big = random(rng, (2 * case.channels[1],), case.dtype)
    b = b_big[::2]                      # a strided bias too
    ref = torch_reference(case.op, x, w, b, **case.kwargs)
    fn = getattr(convgen, case.op)
    kernel = convgen.compile(spec_of(case), case.x_shape, case.dtype)
    for name, (xv, wv) in variants.items():
        ours = fn(xv, wv, b, **case.kwargs)
        assert ours.dtype == np.dtype(case.dtype), name
        assert ours.flags.c_contiguous, name
        assert_matches(ours, ref, case.dtype)
        assert_matches(poisoned_call(kernel, xv, wv, b), ref, case.dtype)
    # the operands were not modified in place
    np.testing.assert_array_equal(variants["fortran_order"][0], x)


@pytest.mark.parametrize("case", LAYOUT_CASES[:2], ids=[c.name for c in LAYOUT_CASES[:2]])
def test_non_native_byte_order(case):
    rng = np.random.default_rng(seed_of("swapped" + case.name))
    x, w, b = operands(case, rng)
    ref = torch_reference(case.op, x, w, b, **case.kwargs)
    swapped = [a.astype(a.dtype.newbyteorder(">" if a.dtype.byteorder != ">" else "<"))
               for a in (x, w, b)]
    np.testing.assert_array_equal(swapped[0], x)
    ours = getattr(convgen, case.op)(*swapped, **case.kwargs)
    assert ours.dtype == np.dtype(case.dtype) and ours.dtype.isnative
    assert_matches(ours, ref, case.dtype)
    kernel = convgen.compile(spec_of(case), case.x_shape, case.dtype)
    assert_matches(poisoned_call(kernel, *swapped), ref, case.dtype)


@pytest.mark.parametrize("case", LAYOUT_CASES, ids=[c.name for c in LAYOUT_CASES])
def test_torch_tensor_inputs(case):
    rng = np.random.default_rng(seed_of("torch" + case.name))
    x, w, b = operands(case, rng)
    ref = torch_reference(case.op, x, w, b, **case.kwargs)
    fn = getattr(convgen, case.op)
    xt = torch.from_numpy(x)
    assert_matches(fn(xt, w, b, **case.kwargs), ref, case.dtype)
    xg = torch.from_numpy(x.copy()).requires_grad_(True)
    wg = torch.from_numpy(w.copy()).requires_grad_(True)
    bg = torch.from_numpy(b.copy()).requires_grad_(True)
    ours = fn(xg, wg, bg, **case.kwargs)
    assert isinstance(ours, np.ndarray)
    assert_matches(ours, ref, case.dtype)
    # a non-contiguous tensor (a transposed view)
    xnc = torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, -1, -2))).transpose(-1, -2) \
        if x.ndim >= 2 else torch.from_numpy(x)
    assert_matches(fn(xnc, torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                      **case.kwargs), ref, case.dtype)
    kernel = convgen.compile(spec_of(case), case.x_shape, case.dtype)
    assert_matches(poisoned_call(kernel, xg, wg, bg), ref, case.dtype)


# -- 6. batch 0 -----------------------------------------------------------------------------
EMPTY_CASES = [
    make_case("conv1d", "conv1d", cin=2, cout=4, spatial=(7,), kernel=3, batch=0, stride=2),
    make_case("conv2d", "conv2d", cin=4, cout=6, spatial=(5, 4), kernel=3, batch=0, groups=2,
              padding="same", padding_mode="reflect", dtype="float32"),
    make_case("conv3d", "conv3d", cin=2, cout=3, spatial=(3, 4, 2), kernel=2, batch=0, padding=1),
    make_case("conv_transpose1d", "conv_transpose1d", cin=2, cout=4, spatial=(5,), kernel=3,
              batch=0, stride=2, output_padding=1),
    make_case("conv_transpose2d", "conv_transpose2d", cin=4, cout=2, spatial=(3, 4), kernel=2,
              batch=0, groups=2, dtype="float32", stride=2, output_size=(6, 9)),
    make_case("conv_transpose3d", "conv_transpose3d", cin=2, cout=3, spatial=(2, 2, 3),
              kernel=2, batch=0, stride=(1, 2, 1), bias=False),
]


@pytest.mark.parametrize("case", EMPTY_CASES, ids=[c.name for c in EMPTY_CASES])
def test_batch_zero(case):
    rng = np.random.default_rng(0)
    x, w, b = operands(case, rng)
    assert x.size == 0
    ref = torch_reference(case.op, x, w, b, **case.kwargs)
    ours = getattr(convgen, case.op)(x, w, b, **case.kwargs)
    assert ours.shape == ref.shape
    assert ours.dtype == np.dtype(case.dtype)
    kernel = convgen.compile(spec_of(case), case.x_shape, case.dtype)
    assert kernel.output_shape == ref.shape
    assert kernel(x, w, b).shape == ref.shape
