"""What tuning returns: a trial per plan tried, and the result of a layer's tuning."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TimeStats:
    """Seconds per call over ``runs`` timed calls (after warm-up)."""

    median_s: float
    min_s: float
    q25_s: float
    q75_s: float
    mean_s: float
    stdev_s: float
    runs: int

    @classmethod
    def of(cls, samples: list[float]) -> TimeStats:
        ordered = sorted(samples)
        if len(ordered) >= 2:
            q25, _, q75 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q25 = q75 = ordered[0]
        return cls(statistics.median(ordered), ordered[0], q25, q75, statistics.fmean(ordered),
                   statistics.stdev(ordered) if len(ordered) > 1 else 0.0, len(ordered))

    @property
    def spread(self) -> float:
        """The interquartile range relative to the median: how noisy the runs were."""
        return (self.q75_s - self.q25_s) / self.median_s if self.median_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {"median_s": self.median_s, "min_s": self.min_s, "q25_s": self.q25_s,
                "q75_s": self.q75_s, "mean_s": self.mean_s, "stdev_s": self.stdev_s,
                "runs": self.runs}

    @classmethod
    def from_dict(cls, stored: dict) -> TimeStats:
        return cls(*(float(stored[k]) for k in ("median_s", "min_s", "q25_s", "q75_s",
                                               "mean_s", "stdev_s")), int(stored["runs"]))

    def __str__(self) -> str:
        return f"{self.median_s * 1e3:.4f} ms (IQR {self.spread:.1%}, {self.runs} runs)"


@dataclass(frozen=True)
class Trial:
    """One plan tried: measured (``status == "ok"``, ``time``) or failed (``error`` says how:
    compile_error, crash, wrong, timeout, error)."""

    index: int
    plan: object
    status: str
    source: str                  # "default", "user", "planner" or "search"
    time: TimeStats | None = None
    error: str = ""
    predicted_s: float | None = None
    rel_err: float | None = None
    compile_s: float | None = None
    elapsed_s: float = 0.0       # since the layer's tuning began

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __str__(self) -> str:
        what = str(self.time) if self.ok else f"{self.status}: {self.error}"
        return f"#{self.index} [{self.source}] {self.plan}: {what}"


@dataclass
class TuneResult:
    """A layer's tuning: ``best`` is the plan recorded in the database (the default plan
    unless a faster one was confirmed by re-measuring it against the runner-up and the
    default); ``trials`` every plan tried, in order."""

    name: str
    workload: object
    target: object
    default: object
    best: object
    trials: list[Trial] = field(default_factory=list)
    best_time: TimeStats | None = None
    default_time: TimeStats | None = None
    confirmed: bool = False      # False: interrupted or nothing measured; best is the default
    interrupted: bool = False
    elapsed_s: float = 0.0
    db: str | None = None
    note: str = ""

    @property
    def speedup(self) -> float:
        """The default plan's time over the best plan's, from the confirmation runs."""
        if self.best_time is None or self.default_time is None:
            return 1.0
        return self.default_time.median_s / self.best_time.median_s

    @property
    def failures(self) -> list[Trial]:
        return [t for t in self.trials if not t.ok]

    def summary(self) -> str:
        ok = sum(t.ok for t in self.trials)
        lines = [(f"{self.name}: {len(self.trials)} trials ({ok} measured, "
                 f"{len(self.trials) - ok} failed) in {self.elapsed_s:.1f} s"
                 f"{', interrupted' if self.interrupted else ''}"),
                 f"  default: {self.default}" + (f"  {self.default_time}" if self.default_time
                                                 else ""),
                 f"  best:    {self.best}" + (f"  {self.best_time}" if self.best_time else "")]
        if self.confirmed:
            lines.append(f"  speedup over the default: {self.speedup:.2f}x (confirmed)")
        if self.note:
            lines.append(f"  {self.note}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<TuneResult {self.name} best=[{self.best}] {self.speedup:.2f}x default, "
                f"{len(self.trials)} trials>")
