"""What every backend's planner shares: ranked candidates, plan strings, and ``explain``.

A plan prints as ``key=value`` words (``str(plan)``) and parses back; ``parse_fields``
does the parsing for every plan type and refuses unknown or missing keys. A planner ranks
``Candidate``s by predicted seconds; ``format_explain`` prints the ranking the same way
for every backend (``convgen plan``, ``Kernel.explain()``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .spec import Workload

ACCURACIES = ("fast", "strict")   # strict: exact algorithms only (no Winograd)


def check_accuracy(accuracy) -> str:
    if accuracy not in ACCURACIES:
        raise ValueError(f"accuracy must be one of {ACCURACIES}, got {accuracy!r}")
    return accuracy


@dataclass(frozen=True)
class Candidate:
    plan: object
    cost_s: float     # predicted seconds
    why: str          # the cost model's reasoning, in a line


def parse_fields(text: str, expected, what: str, optional=()) -> dict[str, str]:
    """``key=value`` words into a dict, refusing anything but the ``expected`` keys (and
    any of the ``optional`` ones)."""
    if not isinstance(text, str):
        raise TypeError(f"plan: {what} must be a string of key=value words, got {text!r}")
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


def format_explain(workload: Workload, target, ranked: list[Candidate], chosen, top: int,
                   notes: str = "") -> str:
    """The ranking as text: a header, then the best ``top`` candidates (``*`` marks the
    chosen plan, listed after them if it ranks lower)."""
    if top < 1:
        raise ValueError(f"top must be a positive number of candidates, got {top}")
    lines = [workload.spec.describe(),
             (f"input {workload.input_shape} -> output {workload.output_shape}, "
              f"{workload.dtype}, target {target.description}{notes}"),
             f"{len(ranked)} candidate plans; the best {min(top, len(ranked))}:"]
    shown = ranked[:top]
    for cand in shown:
        lines += _candidate_lines(cand, cand.plan == chosen)
    if chosen is not None and all(c.plan != chosen for c in shown):
        found = [c for c in ranked if c.plan == chosen]
        if found:
            rank = ranked.index(found[0]) + 1
            lines += _candidate_lines(found[0], True, f"   (the chosen plan, ranked {rank})")
    return "\n".join(lines)


def _candidate_lines(cand: Candidate, mark: bool, note: str = "") -> list[str]:
    return [f"  {'*' if mark else ' '} {cand.cost_s * 1e3:9.4f} ms  {cand.plan}{note}",
            f"                 {cand.why}"]
