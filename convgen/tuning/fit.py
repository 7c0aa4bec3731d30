"""Feedback into the planner: the CPU cost model's machine constants fitted to measurements.

The samples are the database's measured trials for one target on this machine class
(median of the medians where a plan was measured more than once). The fit adjusts the
constants of ``target.machine.Machine`` (FMA and load throughputs, FMA latency, clock,
L2/L3/DRAM bandwidths) by coordinate descent on a log grid, within a factor of 4 of the
defaults, minimising the mean |log(predicted / measured)| plus two ranking terms (1 - the
Spearman correlation within each workload, and the log of the regret below: the model's
first job is to pick a layer's best plan). ``runtime.machine.save_fit`` stores the result
for this machine class; the planner uses it from then on (``convgen tune fit --clear`` removes it).

The report gives both errors before and after, over the same samples, and the *regret*:
how much slower the model's favourite among the measured plans is than the fastest one
(geometric mean over workloads).
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

from ..backends import backend_for, get_target
from ..runtime import machine as machine_model
from ..target.machine import Machine, default_machine
from . import records as rec
from .db import TuningDB

FIELDS = ("clock_hz", "fma_per_cycle", "loads_per_cycle", "vector_load_cost", "fma_latency",
          "l2_bytes_per_cycle", "l3_bytes_per_cycle", "dram_bytes_per_s")
FACTORS = (0.5, 0.7, 0.85, 1.0 / 0.85, 1.0 / 0.7, 2.0)
LIMIT = 4.0          # a constant stays within a factor of this of its default
MIN_SAMPLES = 6


@dataclass(frozen=True)
class Sample:
    workload: object
    plan: object
    measured_s: float


@dataclass(frozen=True)
class Errors:
    samples: int
    workloads: int
    spearman: float          # mean within-workload rank correlation (workloads of 3+ plans)
    median_abs_log: float    # median |log(predicted / measured)|
    mean_abs_log: float
    regret: float            # geometric mean over workloads: model's favourite / fastest

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (f"Spearman {self.spearman:+.3f}, median |log(pred/measured)| "
                f"{self.median_abs_log:.3f} (x{math.exp(self.median_abs_log):.2f}), "
                f"regret {self.regret:.3f}x")


@dataclass
class FitReport:
    target: str
    machine_class: str
    fields: dict
    before: Errors
    after: Errors
    saved_to: str | None = None

    def as_dict(self) -> dict:
        return {"target": self.target, "machine_class": self.machine_class, "fields": self.fields,
                "before": self.before.as_dict(), "after": self.after.as_dict()}

    def __str__(self) -> str:
        changed = ", ".join(f"{k}={v:.4g}" for k, v in sorted(self.fields.items())) or "none"
        return (f"fitted to {self.after.samples} measured plans of {self.after.workloads} "
                f"workloads ({self.target}, machine class {self.machine_class})\n"
                f"  before: {self.before}\n  after:  {self.after}\n  constants: {changed}"
                + (f"\n  saved: {self.saved_to}" if self.saved_to else "\n  (not saved)"))


# -- statistics ----------------------------------------------------------------------------
def ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else 0.0


# -- samples -------------------------------------------------------------------------------
def samples_from(database: TuningDB, target) -> list[Sample]:
    """This machine class's measured trials for ``target``, one sample per (workload, plan)."""
    backend = backend_for(target)
    klass, space = rec.machine_class(target, backend), rec.plan_space(backend)
    grouped: dict = defaultdict(list)
    workloads: dict = {}
    for record in database.records():
        if (record["kind"] != "trial" or record.get("status") != "ok"
                or record["target"] != target.name or record["machine_class"] != klass
                or record["plan_space"] != space):
            continue
        key = record["workload"]["key"]
        try:
            if key not in workloads:
                workloads[key] = rec.workload_from_record(record["workload"])
            plan = backend.plan_type.parse(record["plan"])
        except ValueError:
            continue
        grouped[(key, plan)].append(record["time"]["median_s"])
    return [Sample(workloads[key], plan, statistics.median(times))
            for (key, plan), times in grouped.items()]


def errors(samples: list[Sample], target, machine: Machine) -> Errors:
    estimate = backend_for(target).estimate
    predicted = [estimate(s.plan, s.workload, target, machine)[0] for s in samples]
    logs = [abs(math.log(p / s.measured_s)) for p, s in zip(predicted, samples)]
    by_workload: dict = defaultdict(list)
    for p, s in zip(predicted, samples):
        by_workload[s.workload].append((p, s.measured_s))
    rhos, regrets = [], []
    for pairs in by_workload.values():
        if len(pairs) >= 3:
            rhos.append(spearman([p for p, _ in pairs], [m for _, m in pairs]))
        favourite = min(pairs, key=lambda pm: pm[0])[1]
        regrets.append(favourite / min(m for _, m in pairs))
    return Errors(len(samples), len(by_workload),
                  statistics.fmean(rhos) if rhos else float("nan"),
                  statistics.median(logs), statistics.fmean(logs),
                  math.exp(statistics.fmean(math.log(r) for r in regrets)))


def _objective(samples, target, machine) -> float:
    found = errors(samples, target, machine)
    rank = 0.0 if math.isnan(found.spearman) else 1.0 - found.spearman
    return found.mean_abs_log + 0.25 * rank + math.log(found.regret)


# -- the fit -------------------------------------------------------------------------------
def fit_machine(samples: list[Sample], target, base: Machine, passes: int = 3):
    """Coordinate descent over ``FIELDS`` on a shrinking log grid; the fitted Machine."""
    default = default_machine(target.isa_row)
    best, score = base, _objective(samples, target, base)
    for step in range(passes):
        for name in FIELDS:
            reference = getattr(default, name)
            for factor in FACTORS:
                value = getattr(best, name) * factor ** (1.0 / (step + 1))
                if not reference / LIMIT <= value <= reference * LIMIT:
                    continue
                trial = dataclasses.replace(best, **{name: value})
                found = _objective(samples, target, trial)
                if found < score - 1e-9:
                    best, score = trial, found
    return best


def fit(db=None, target="cpu", save: bool = True) -> FitReport:
    """Fit the cost model to ``db`` (default: the default database) for ``target`` on this
    machine class; store the constants unless ``save`` is False."""
    resolved = get_target(target)
    if resolved.lang != "c":
        raise ValueError(f"the fit adjusts the CPU cost model; target {resolved.name!r} is not "
                         f"a CPU target")
    database = TuningDB(db)
    samples = samples_from(database, resolved)
    if len(samples) < MIN_SAMPLES:
        raise ValueError(f"{database.path} has {len(samples)} measured plan(s) for target "
                         f"{resolved.name!r} on this machine class; the fit needs at least "
                         f"{MIN_SAMPLES} (tune some layers first)")
    isa = resolved.isa_row
    default = default_machine(isa)
    current = backend_for(resolved).machine_model(resolved)
    before = errors(samples, resolved, current)
    fitted = fit_machine(samples, resolved, current)
    after = errors(samples, resolved, fitted)
    fields = {name: getattr(fitted, name) for name in FIELDS
              if getattr(fitted, name) != getattr(default, name)}
    report = FitReport(resolved.name, rec.machine_class(resolved, backend_for(resolved)), fields,
                       before, after)
    if save:
        report.saved_to = str(machine_model.save_fit(isa, fields, report.as_dict()))
    return report


def clear(target="cpu") -> None:
    machine_model.clear_fit(get_target(target).isa_row)
