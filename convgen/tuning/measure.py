"""Checking and timing kernels: what the measurement child runs (``child.py``).

A candidate is checked before it is timed: its output for a fixed input, written into a
NaN-poisoned buffer, must match the float64 reference (torch's where torch is installed,
else ``core.reference.convolve``). Timing then follows the rules of a careful benchmark:

- weights packed once and outputs preallocated, as a deployed layer runs;
- warm-up calls first (threads awake, pages touched, code in cache);
- repeated calls for at least ``min_time_s`` and ``min_runs`` runs, each call timed alone;
  the statistics are median, quartiles, min, mean and deviation;
- the input and output buffers rotate over a set larger than twice the L2 cache, so a
  small layer is not timed only from data the previous call left in cache;
- a run whose quartiles spread widely (another process took the cores) is repeated.

``confirm`` re-measures a few kernels interleaved round by round, so drift on a shared
machine hits them alike: that decides whether the search's winner beats the default.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..backends import backend_for, to_device
from ..core.reference import convolve
from ..core.spec import Workload
from ..runtime.arrays import output_array
from ..target import host
from .results import TimeStats

TOLERANCE = {"float32": 1e-4, "float64": 1e-10}   # relative L2 error against float64
MAX_BUFFERS = 16
MAX_ROTATION_BYTES = 512 << 20
# Interquartile range / median above which a run is timed again (up to ``attempts`` runs,
# the one with the lowest median kept): interference from other processes only ever adds
# time, so on a busy machine the quietest run is the truest.
NOISY = 0.25


# -- the data: inputs, weights and the reference output ---------------------------------------
def make_data(workload: Workload, seed: int = 0) -> dict:
    """Random input, weight and bias for the workload, and the float64 reference output."""
    rng = np.random.default_rng(seed)
    spec, dtype = workload.spec, workload.dtype
    x = rng.standard_normal(workload.input_shape).astype(dtype)
    w = rng.standard_normal(spec.weight_shape).astype(dtype)
    b = rng.standard_normal(spec.out_channels).astype(dtype) if spec.bias else None
    return {"x": x, "w": w, "b": b, "ref": reference(workload, x, w, b)}


def reference(workload: Workload, x, w, b) -> np.ndarray:
    """The output in float64: torch's convolution where torch is installed, else numpy's."""
    try:
        import torch
    except ImportError:
        return convolve(workload, x, w, b)
    return _torch_reference(torch, workload, x, w, b)


def _torch_reference(torch, workload: Workload, x, w, b) -> np.ndarray:
    import torch.nn.functional as F
    spec = workload.spec
    xt, wt = (torch.from_numpy(np.asarray(a, np.float64)) for a in (x, w))
    bt = None if b is None else torch.from_numpy(np.asarray(b, np.float64))
    nd = spec.ndim
    with torch.no_grad():
        if spec.transposed:
            y = getattr(F, f"conv_transpose{nd}d")(
                xt, wt, bt, stride=spec.stride, padding=spec.pad_before,
                output_padding=spec.output_padding, groups=spec.groups, dilation=spec.dilation)
        else:
            pads = [p for before, after in zip(reversed(spec.pad_before),
                                               reversed(spec.pad_after)) for p in (before, after)]
            mode = {"zeros": "constant"}.get(spec.padding_mode, spec.padding_mode)
            if any(pads):
                xt = F.pad(xt, pads, mode=mode)
            y = getattr(F, f"conv{nd}d")(xt, wt, bt, stride=spec.stride, padding=0,
                                         dilation=spec.dilation, groups=spec.groups)
    return y.numpy()


def save_data(data: dict, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in data.items():
        if value is not None:
            np.save(directory / f"{name}.npy", value)
    return directory


def load_data(directory: Path) -> dict:
    directory = Path(directory)
    return {name: np.load(directory / f"{name}.npy") if (directory / f"{name}.npy").exists()
            else None for name in ("x", "w", "b", "ref")}


def rel_error(out, ref) -> float:
    out = np.asarray(out, np.float64)
    if not np.all(np.isfinite(out)):
        return math.inf
    scale = float(np.linalg.norm(ref)) or 1.0
    return float(np.linalg.norm(out - ref)) / scale


# -- one kernel, ready to time -------------------------------------------------------------
class Bench:
    """A loaded kernel with its operands: packed weights, rotating inputs and outputs."""

    def __init__(self, workload: Workload, plan, target, data: dict, buffers: int):
        self.workload, self.plan, self.target = workload, plan, target
        backend = backend_for(target)
        self.kernel = backend.kernel(workload, plan, target)
        self.device = target.lang == "cuda" and not target.emulated
        self.data = data
        rng = np.random.default_rng(1)
        inputs = [data["x"]] + [rng.standard_normal(workload.input_shape).astype(workload.dtype)
                                for _ in range(buffers - 1)]
        self.inputs = [self._place(x) for x in inputs]
        self.outputs = [self._place(output_array(workload.output_shape, np.dtype(workload.dtype)))
                        for _ in range(buffers)]
        weight = self._place(data["w"])
        prepack = getattr(self.kernel, "prepack", None)
        self.weight = prepack(data["w"]) if prepack is not None and not self.device else weight
        self.bias = None if data["b"] is None else self._place(data["b"])
        self._sync = self._device_sync() if self.device else None
        self.turn = 0

    def _place(self, array):
        return to_device(array, "cuda") if self.device else array

    def _device_sync(self):
        """A synchronous copy of one element: waits for the launches before it."""
        probe = to_device(np.zeros(1, self.workload.dtype), "cuda")
        return probe.copy_to_host

    def check(self) -> float:
        """The relative error of the first input's output (NaN-poisoned buffer first)."""
        out = np.full(self.workload.output_shape, np.nan, self.workload.dtype)
        if self.device:
            out = to_device(out, "cuda")
        self.kernel(self.inputs[0], self.weight, self.bias, out=out)
        host_out = out.copy_to_host() if self.device else out
        return rel_error(host_out, self.data["ref"])

    def call(self) -> float:
        """One call on the next buffers; its seconds."""
        i = self.turn = (self.turn + 1) % len(self.inputs)
        x, out = self.inputs[i], self.outputs[i]
        start = time.perf_counter()
        self.kernel(x, self.weight, self.bias, out=out)
        if self._sync is not None:
            self._sync()
        return time.perf_counter() - start


def buffer_count(workload: Workload) -> int:
    """Buffers to rotate over: together more than twice the L2 cache (at most 16)."""
    size = np.dtype(workload.dtype).itemsize
    one = (math.prod(workload.input_shape) + math.prod(workload.output_shape)) * size
    wanted = math.ceil(2 * host.caches().l2_bytes / max(one, 1))
    return max(1, min(MAX_BUFFERS, wanted, MAX_ROTATION_BYTES // max(one, 1)))


def samples(bench: Bench, min_time_s: float, min_runs: int, max_runs: int) -> list[float]:
    times: list[float] = []
    start = time.perf_counter()
    while (len(times) < min_runs or time.perf_counter() - start < min_time_s) \
            and len(times) < max_runs:
        times.append(bench.call())
    return times


def warm_up(bench: Bench, seconds: float) -> None:
    start = time.perf_counter()
    calls = 0
    while calls < 2 or (time.perf_counter() - start < seconds and calls < 1000):
        bench.call()
        calls += 1


# -- the jobs --------------------------------------------------------------------------------
def measure(workload: Workload, plan, target, data: dict, settings: dict) -> dict:
    """Check one plan's kernel, then time it. A dict: status, rel_err, time."""
    bench = Bench(workload, plan, target, data, buffer_count(workload))
    err = bench.check()
    tolerance = settings.get("tolerance") or TOLERANCE[workload.dtype]
    if not err <= tolerance:
        return {"status": "wrong", "rel_err": err,
                "error": f"relative error {err:.3g} against the float64 reference "
                         f"(tolerance {tolerance:g})"}
    first = bench.call()
    cutoff = settings.get("cutoff_s")
    if cutoff is not None and first > cutoff:   # far slower than the best so far: 3 runs do
        times = [first] + [bench.call() for _ in range(2)]
        return {"status": "ok", "rel_err": err, "time": TimeStats.of(times).as_dict()}
    warm_up(bench, settings.get("warmup_s", 0.02))
    best = None
    for _ in range(settings.get("attempts", 3)):
        stats = TimeStats.of(samples(bench, settings.get("min_time_s", 0.1),
                                     settings.get("min_runs", 5), settings.get("max_runs", 100000)))
        if best is None or stats.median_s < best.median_s:
            best = stats
        if best.spread <= NOISY:   # a quiet run: no need to look again
            break
    return {"status": "ok", "rel_err": err, "time": best.as_dict()}


def confirm(workload: Workload, plans: list, target, data: dict, settings: dict) -> list:
    """Re-measure ``plans`` interleaved: ``rounds`` rounds, each plan timed for a slice of
    ``min_time_s`` per round, the order rotating. A TimeStats dict per plan."""
    buffers = buffer_count(workload)
    benches = [Bench(workload, plan, target, data, buffers) for plan in plans]
    rounds = settings.get("rounds", 7)
    slice_s = settings.get("min_time_s", 0.1) * 3 / rounds
    for bench in benches:
        warm_up(bench, settings.get("warmup_s", 0.02))
    times: list[list[float]] = [[] for _ in benches]
    for r in range(rounds):
        for k in range(len(benches)):
            i = (k + r) % len(benches)
            times[i] += samples(benches[i], slice_s, 3, settings.get("max_runs", 100000))
    return [TimeStats.of(t).as_dict() for t in times]
