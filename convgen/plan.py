"""Plans and the planner.

A ``Plan`` says how one workload is computed: the algorithm (which template), the
register tile (output channels x output pixels held in accumulators), the vector width,
the order of the parallel outer loops and the thread count. The planner enumerates every
legal plan for a workload and ranks them with the analytical cost model of ``cost.py`` (vector FMAs and
loads per register tile, lanes wasted on tails, bytes moved through the cache levels,
thread balance); ``explain`` shows the ranking.

Algorithms (each a template under ``templates/cpu/``):

- ``implicit_gemm``: output channels in vector lanes, a run of output pixels broadcast
  from the (padded) input; pre-packed weights; every op, every stride; transposed convs
  by stride-phase decomposition (``lower.py``).
- ``direct_simd``: output pixels of a row in vector lanes, a block of output channels
  broadcast from pre-packed weights; where the row's input is contiguous (unit stride
  along the innermost axis). Small groups and 3-D depthwise layers run here.
- ``depthwise``: one input channel per group (depthwise, any channel multiplier), 1-D
  and 2-D forward convs: each thread pads one channel at a time into its own buffer (it
  stays in L1/L2) and computes that channel's outputs in register tiles of ``row_tile``
  output rows x ``pixel_tile`` pixels, every tap unrolled with its offset a constant.
- ``direct`` / ``transposed_gather``: the scalar gather kernels, exact reference paths
  that cover everything and that the planner ranks last.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass

from . import winograd
from .lower import Lowering, lower
from .machine import host
from .spec import Workload, workload_of
from .target import Target, get_target

SIMD_ALGORITHMS = ("implicit_gemm", "direct_simd", "depthwise")
WINOGRAD_ALGORITHMS = ("winograd2", "winograd4")    # F(2, 3) and F(4, 3) per axis
GATHER_ALGORITHMS = ("direct", "transposed_gather")
ALGORITHMS = SIMD_ALGORITHMS + WINOGRAD_ALGORITHMS + GATHER_ALGORITHMS
ACCURACIES = ("fast", "strict")   # strict: exact algorithms only (no Winograd)
LOOP_ORDERS = ("oc_outer", "pixel_outer")
MAX_GATHER_OC_BLOCK = 16
_DTYPE_BYTES = {"float32": 4, "float64": 8}


@dataclass(frozen=True)
class Plan:
    algorithm: str
    oc_tile: int         # output channels per register tile
    pixel_tile: int      # output pixels per register tile (along the innermost axis)
    vector: int          # lanes per vector register (1: scalar code)
    loop_order: str      # "oc_outer": channel blocks outside pixel rows; "pixel_outer": inside
    threads: int
    row_tile: int = 1    # output rows per register tile (depthwise; every other algorithm: 1)

    _FIELDS = ("algorithm", "oc_tile", "pixel_tile", "vector", "loop_order", "threads")
    _OPTIONAL = ("row_tile",)   # printed only where it is not 1, so other plans read as before

    def __str__(self) -> str:
        words = [f"{name}={getattr(self, name)}" for name in self._FIELDS]
        if self.row_tile != 1:
            words.insert(3, f"row_tile={self.row_tile}")
        return " ".join(words)

    @classmethod
    def parse(cls, text: str) -> "Plan":
        """Inverse of ``str(plan)``."""
        fields = parse_fields(text, cls._FIELDS, "a plan", cls._OPTIONAL)
        fields.setdefault("row_tile", "1")
        try:
            numbers = {k: int(fields[k]) for k in ("oc_tile", "pixel_tile", "vector", "threads",
                                                   "row_tile")}
        except ValueError as exc:
            raise ValueError(f"plan: malformed number in {text!r}") from exc
        return cls(fields["algorithm"], loop_order=fields["loop_order"], **numbers)


def parse_fields(text: str, expected, what: str, optional=()) -> dict[str, str]:
    """``key=value`` words into a dict, refusing anything but the ``expected`` keys (and
    any of the ``optional`` ones)."""
    fields = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"plan: expected key=value, got {item!r} in {text!r}")
        fields[key] = value
    if set(fields) - set(optional) != set(expected):
        extra = f" (optional: {sorted(optional)})" if optional else ""
        raise ValueError(f"plan: {what} has the fields {sorted(expected)}{extra}, "
                         f"got {sorted(fields)}")
    return fields


def default_threads() -> int:
    """CONVGEN_NUM_THREADS, else every core this process may run on."""
    env = os.environ.get("CONVGEN_NUM_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"CONVGEN_NUM_THREADS must be a positive integer, got {env!r}")
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def registers(target: Target) -> int:
    """Vector registers the micro-kernel may fill (AVX-512 has 32, AVX2 and SSE 16)."""
    return 32 if target.isa == "avx512" else 16


def depthwise_accumulators(regs: int) -> int:
    """Accumulators a depthwise tile may hold: the rest of the registers carry the input
    vectors its rows share between taps."""
    return regs * 3 // 4


def native_vector(target: Target, dtype: str) -> int:
    return target.vector_bytes // _DTYPE_BYTES[dtype]


def algorithms_for(workload: Workload, accuracy: str = "fast") -> tuple[str, ...]:
    spec = workload.spec
    found = ["implicit_gemm"]
    # a row's outputs must be contiguous (a strided forward row is split into phases)
    if spec.stride[-1] == 1 or not spec.transposed:
        found.append("direct_simd")
    if depthwise_applies(spec):
        found.append("depthwise")
    if accuracy != "strict" and winograd.applies(spec):
        found += WINOGRAD_ALGORITHMS
    found.append("transposed_gather" if spec.transposed else "direct")
    return tuple(found)


def depthwise_applies(spec) -> bool:
    """One input channel per group, forward, 1-D or 2-D (3-D depthwise runs on direct_simd)."""
    return spec.cin_per_group == 1 and not spec.transposed and spec.ndim <= 2


def winograd_geometry(workload: Workload, plan: Plan) -> winograd.Geometry:
    line = 64 // _DTYPE_BYTES[workload.dtype]
    return winograd.geometry(workload, int(plan.algorithm[-1]), plan.pixel_tile, line, plan.vector)


def lowering_for(workload: Workload, plan: Plan) -> Lowering:
    """The lowering a plan's kernel computes (direct_simd reads whole vectors past a row's
    end, and stores a strided row as its column phases)."""
    if plan.algorithm in ("direct_simd", "depthwise"):
        return lower(workload, plan.vector, split_rows=True)
    return lower(workload, 1)


@dataclass(frozen=True)
class Buffers:
    """Elements of the buffers a kernel needs besides its operands."""
    packed_weights: int   # the weights in the order the kernel reads them
    workspace: int        # scratch: the padded input


def buffers(workload: Workload, plan: Plan) -> Buffers:
    spec = workload.spec
    if plan.algorithm in GATHER_ALGORITHMS:
        return Buffers(math.prod(spec.weight_shape), 0)
    if plan.algorithm in WINOGRAD_ALGORITHMS:
        geo = winograd_geometry(workload, plan)
        points = geo.alpha ** spec.ndim
        rows = math.prod(geo.padded[:-1])
        padded = workload.input_shape[0] * rows * spec.in_channels * geo.channel_stride
        return Buffers(points * spec.out_channels * spec.cin_per_group,
                       padded + plan.threads * geo.scratch)
    low = lowering_for(workload, plan)
    per_group = sum(oc_blocks(workload, plan) * spec.cin_per_group * p.taps * plan.oc_tile
                    for p in low.phases)
    if plan.algorithm == "depthwise":   # each thread pads one channel at a time
        planes = plan.threads * low.padded_spatial if low.copy_input else 0
        return Buffers(spec.groups * per_group, planes)
    padded = workload.input_shape[0] * spec.in_channels * low.padded_spatial if low.copy_input else 0
    return Buffers(spec.groups * per_group, padded)


def oc_blocks(workload: Workload, plan: Plan) -> int:
    """Register tiles per group along the output channels (the last one may be partial)."""
    return -(-workload.spec.cout_per_group // plan.oc_tile)


def check_plan(plan: Plan, workload: Workload, target: Target, accuracy: str = "fast") -> None:
    """Refuse a plan that cannot compute this workload on this target, saying why."""
    spec = workload.spec
    if accuracy == "strict" and plan.algorithm in WINOGRAD_ALGORITHMS:
        raise ValueError(f"plan: {plan.algorithm} is not exact (Winograd rounds differently); "
                         f"accuracy='strict' allows only {algorithms_for(workload, 'strict')}")
    if plan.algorithm not in algorithms_for(workload):
        raise ValueError(f"plan: algorithm {plan.algorithm!r} does not apply to this {spec.op}; "
                         f"choose one of {algorithms_for(workload)}")
    if plan.loop_order not in LOOP_ORDERS:
        raise ValueError(f"plan: loop_order must be one of {LOOP_ORDERS}, got {plan.loop_order!r}")
    if plan.threads < 1:
        raise ValueError(f"plan: threads must be positive, got {plan.threads}")
    if min(plan.oc_tile, plan.pixel_tile, plan.vector, plan.row_tile) < 1:
        raise ValueError(f"plan: oc_tile, pixel_tile, vector and row_tile must be positive, "
                         f"got {plan}")
    if plan.algorithm != "depthwise" and plan.row_tile != 1:
        raise ValueError(f"plan: row_tile={plan.row_tile}: only depthwise tiles several "
                         f"output rows; {plan.algorithm} takes row_tile=1")
    if plan.algorithm in GATHER_ALGORITHMS:
        _check_gather(plan, spec)
    else:
        _check_simd(plan, workload, target)


def _check_gather(plan: Plan, spec) -> None:
    if plan.vector != 1 or plan.pixel_tile != 1:
        raise ValueError(f"plan: the scalar {plan.algorithm} kernel takes vector=1 pixel_tile=1")
    if plan.oc_tile > MAX_GATHER_OC_BLOCK or spec.cout_per_group % plan.oc_tile:
        raise ValueError(f"plan: oc_tile={plan.oc_tile} must divide the output channels per "
                         f"group ({spec.cout_per_group}) and be at most {MAX_GATHER_OC_BLOCK}")


def _check_simd(plan: Plan, workload: Workload, target: Target) -> None:
    native = native_vector(target, workload.dtype)
    if plan.vector not in (native, native // 2) or plan.vector < 1:
        raise ValueError(f"plan: vector must be {native} (or {native // 2}) lanes of "
                         f"{workload.dtype} on target {target.name}, got {plan.vector}")
    regs = registers(target) * (native // plan.vector)   # half-width vectors: twice as many
    if plan.algorithm in WINOGRAD_ALGORITHMS and plan.loop_order != "pixel_outer":
        raise ValueError(f"plan: {plan.algorithm} runs blocks of tiles with every channel "
                         f"inside: loop_order must be 'pixel_outer'")
    if plan.algorithm == "implicit_gemm":
        if plan.oc_tile % plan.vector:
            raise ValueError(f"plan: implicit_gemm's oc_tile ({plan.oc_tile}) must be a "
                             f"multiple of vector ({plan.vector})")
        accumulators, loads = plan.pixel_tile * (plan.oc_tile // plan.vector), plan.oc_tile // plan.vector
    elif plan.algorithm == "depthwise":
        _check_depthwise(plan, workload)
        accumulators, loads = plan.row_tile * (plan.pixel_tile // plan.vector), 1
        if accumulators > depthwise_accumulators(regs):
            raise ValueError(f"plan: a depthwise tile of {plan.row_tile} rows x "
                             f"{plan.pixel_tile // plan.vector} vectors needs {accumulators} "
                             f"accumulators; at most {depthwise_accumulators(regs)} leave "
                             f"registers for the loads (more spilled: measured 2x slower)")
    else:
        if plan.pixel_tile % plan.vector:
            raise ValueError(f"plan: {plan.algorithm}'s pixel_tile ({plan.pixel_tile}) must be a "
                             f"multiple of vector ({plan.vector})")
        if workload.spec.cout_per_group % plan.oc_tile:
            raise ValueError(f"plan: {plan.algorithm}'s oc_tile ({plan.oc_tile}) must divide the "
                             f"output channels per group ({workload.spec.cout_per_group})")
        accumulators, loads = plan.oc_tile * (plan.pixel_tile // plan.vector), plan.pixel_tile // plan.vector
    if accumulators + loads + 1 > regs:
        raise ValueError(f"plan: a {plan.oc_tile}x{plan.pixel_tile} tile needs "
                         f"{accumulators + loads + 1} vector registers; the target has {regs}")


def _check_depthwise(plan: Plan, workload: Workload) -> None:
    if plan.oc_tile != 1 or plan.loop_order != "oc_outer":
        raise ValueError("plan: depthwise computes one output channel at a time, each "
                         "channel's rows inside: it takes oc_tile=1 loop_order=oc_outer")
    if plan.pixel_tile % plan.vector:
        raise ValueError(f"plan: depthwise's pixel_tile ({plan.pixel_tile}) must be a "
                         f"multiple of vector ({plan.vector})")
    rows = math.prod(workload.out_spatial[:-1])
    if plan.row_tile > rows:
        raise ValueError(f"plan: row_tile={plan.row_tile} exceeds the {rows} output row(s)")


@dataclass(frozen=True)
class Candidate:
    plan: Plan
    cost_s: float     # predicted seconds
    why: str


def candidates(workload: Workload, target: Target, threads: int | None = None,
               accuracy: str = "fast") -> list[Candidate]:
    """Every legal plan for the workload, cheapest first."""
    threads = threads or default_threads()
    found = []
    for plan in _enumerate(workload, target, threads, accuracy):
        try:
            check_plan(plan, workload, target, accuracy)
        except ValueError:
            continue
        cost, why = estimate(plan, workload, target, host())
        found.append(Candidate(plan, cost, why))
    found.sort(key=lambda c: (c.cost_s, str(c.plan)))
    return found


def _enumerate(workload: Workload, target: Target, threads: int, accuracy: str):
    spec = workload.spec
    teams = sorted({1, threads})
    vl = native_vector(target, workload.dtype)
    regs = registers(target)
    for algorithm in algorithms_for(workload, accuracy):
        if algorithm in GATHER_ALGORITHMS:
            tiles = [(b, 1, 1) for b in range(1, MAX_GATHER_OC_BLOCK + 1) if spec.cout_per_group % b == 0]
        elif algorithm == "implicit_gemm":
            wide = -(-spec.cout_per_group // vl)
            tiles = [(v * vl, r, vl) for v in range(1, min(wide, 4) + 1)
                     for r in range(1, (regs - v - 1) // v + 1)]
        elif algorithm == "depthwise":
            yield from _depthwise_plans(workload, vl, regs, teams)
            continue
        else:
            tiles = [(o, nv * vl, vl) for o in range(1, min(spec.cout_per_group, 16) + 1)
                     if spec.cout_per_group % o == 0
                     for nv in range(1, 9) if o * nv + nv + 1 <= regs]
        orders = ("pixel_outer",) if algorithm in WINOGRAD_ALGORITHMS else LOOP_ORDERS
        for oc_tile, pixel_tile, vector in tiles:
            for order in orders:
                for team in teams:
                    yield Plan(algorithm, oc_tile, pixel_tile, vector, order, team)


def _depthwise_plans(workload: Workload, vl: int, regs: int, teams):
    """Tiles of row_tile rows x nv vectors that leave registers for the shared input rows."""
    rows = math.prod(workload.out_spatial[:-1])
    for nv in range(1, 9):
        for row_tile in range(1, min(rows, 8) + 1):
            if row_tile * nv <= depthwise_accumulators(regs):
                for team in teams:
                    yield Plan("depthwise", 1, nv * vl, vl, "oc_outer", team, row_tile)


def plan(spec, input_shape=None, dtype="float32", target="cpu", threads=None,
         accuracy="fast") -> Plan:
    """The planner's choice for ``spec`` on inputs of ``input_shape`` (batched or not).

    ``spec`` may also be a Workload, which already carries the shape and dtype.
    ``accuracy="strict"`` keeps to exact algorithms (no Winograd).
    """
    if isinstance(spec, Workload):
        workload = spec
    else:
        workload, _ = workload_of(spec, input_shape, dtype)
    resolved = get_target(target)
    if resolved.lang == "cuda":
        from .cuda import plan_cuda
        return plan_cuda(workload, resolved)
    return choose(workload, resolved, threads, check_accuracy(accuracy))


def check_accuracy(accuracy) -> str:
    if accuracy not in ACCURACIES:
        raise ValueError(f"accuracy must be one of {ACCURACIES}, got {accuracy!r}")
    return accuracy


def choose(workload: Workload, target: Target, threads: int | None = None,
           accuracy: str = "fast") -> Plan:
    """The cheapest candidate (memoised: the hot path of every compile call)."""
    return _best(workload, target, threads or default_threads(), accuracy)


@functools.lru_cache(maxsize=4096)
def _best(workload: Workload, target: Target, threads: int, accuracy: str) -> Plan:
    return candidates(workload, target, threads, accuracy)[0].plan


def resolve(requested, workload: Workload, target: Target, accuracy: str = "fast") -> Plan:
    """A user's ``plan=`` argument ("auto", an algorithm name, a plan string, a Plan) as a Plan."""
    if isinstance(requested, Plan):
        chosen = requested
    elif requested == "auto":
        chosen = choose(workload, target, accuracy=accuracy)
    elif isinstance(requested, str) and requested in ALGORITHMS:
        ranked = [c.plan for c in candidates(workload, target) if c.plan.algorithm == requested]
        if not ranked:
            raise ValueError(f"plan: algorithm {requested!r} does not apply to this "
                             f"{workload.spec.op}; choose one of {algorithms_for(workload)}")
        chosen = ranked[0]
    elif isinstance(requested, str) and "=" in requested:
        chosen = Plan.parse(requested)
    else:
        raise ValueError(f"plan must be 'auto', an algorithm name {ALGORITHMS}, a plan string "
                         f"or a Plan, got {requested!r}")
    check_plan(chosen, workload, target, accuracy)
    return chosen


def explain(workload: Workload, target: Target, top: int = 5, accuracy: str = "fast") -> str:
    ranked = candidates(workload, target, accuracy=accuracy)
    lines = [f"{workload.spec.describe()}", f"input {workload.input_shape} -> output "
             f"{workload.output_shape}, {workload.dtype}, target {target.description}, "
             f"accuracy {accuracy}",
             f"{len(ranked)} candidate plans; the best {min(top, len(ranked))}:"]
    for i, cand in enumerate(ranked[:top]):
        lines.append(f"  {'*' if i == 0 else ' '} {cand.cost_s * 1e3:9.3f} ms  {cand.plan}")
        lines.append(f"                 {cand.why}")
    return "\n".join(lines)


from .cost import estimate  # noqa: E402  (cost.py reads this module's helpers)
