"""Which plans to measure next: the planner's ranking first, then a search that learns.

The space is the planner's list of legal plans with their predicted times
(``backend.candidates``), for any backend: a plan is a frozen dataclass, and the search
only reads its fields.

1. **Planner phase.** The default plan (the planner's choice) is always measured first,
   then plans the user named, then the top of the ranking interleaved with the best
   ranked plan of each algorithm and loop order that the model prices within 8x of its
   favourite (so a model that is wrong about a whole family does not hide it).
2. **Evolutionary phase.** Parents are the fastest plans measured so far; children are
   their neighbours in the space (plans that differ in one or two fields: another tile,
   vector width, loop order, thread count, algorithm). Children are ranked by a
   *surrogate*: the cost model's prediction times a correction learnt from every
   measurement so far (ridge regression of log(measured / predicted) on the plan's
   fields), refitted after each batch. Most picks are the surrogate's best; some are
   random (exploration), so a wrong correction is found out.

Failed plans are never proposed again and never become parents.
"""
from __future__ import annotations

import dataclasses
import math
import random

import numpy as np


def _fields(plan) -> dict:
    return {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan)}


class Space:
    """The legal plans for one workload and target, with the cost model's predictions."""

    def __init__(self, candidates):
        self.plans = [c.plan for c in candidates]
        self.predicted = {c.plan: c.cost_s for c in candidates}
        self.rank = {plan: i for i, plan in enumerate(self.plans)}
        self.field_names = list(_fields(self.plans[0])) if self.plans else []
        self._values = {plan: _fields(plan) for plan in self.plans}

    def __len__(self) -> int:
        return len(self.plans)

    def __contains__(self, plan) -> bool:
        return plan in self.predicted

    def neighbours(self, plan, max_changes: int = 1) -> list:
        """Plans of the space that differ from ``plan`` in 1..max_changes fields."""
        mine = self._values.get(plan) or _fields(plan)
        found = []
        for other in self.plans:
            theirs = self._values[other]
            changes = sum(mine[name] != theirs[name] for name in self.field_names)
            if 0 < changes <= max_changes:
                found.append(other)
        return found

    def features(self, plan) -> dict:
        """Numbers describing a plan: log2 of each numeric field (and of each entry of a
        tuple field), with an indicator where it is 0 (log2 alone makes 0 and 1 alike: a
        panel's prefetch off and on), an indicator per value of a text field."""
        out = {}
        for name, value in self._values.get(plan, _fields(plan)).items():
            if isinstance(value, (bool, str)):
                out[f"{name}={value}"] = 1.0
            elif isinstance(value, (int, float)):
                out[name] = math.log2(max(value, 1))
                if value == 0:
                    out[f"{name}=0"] = 1.0
            elif isinstance(value, tuple):
                for i, item in enumerate(value):
                    if isinstance(item, (int, float)):
                        out[f"{name}[{i}]"] = math.log2(max(item, 1))
                out[f"{name}#len"] = float(len(value))
        return out


class Surrogate:
    """log(measured) ~ log(predicted) + w . features(plan): the cost model, corrected by
    ridge regression on the measurements so far (no correction until there are three)."""

    def __init__(self, space: Space, ridge: float = 1.0):
        self.space, self.ridge = space, ridge
        self.names: list[str] = []
        self.weights = None
        self.bias = 0.0

    def fit(self, measured: dict) -> None:
        points = [(p, t) for p, t in measured.items() if p in self.space.predicted]
        if len(points) < 3:
            self.weights, self.bias = None, 0.0
            return
        rows = [self.space.features(p) for p, _ in points]
        self.names = sorted({name for row in rows for name in row})
        matrix = np.array([[row.get(n, 0.0) for n in self.names] for row in rows])
        target = np.array([math.log(t / self.space.predicted[p]) for p, t in points])
        self.bias = float(np.median(target))
        centred = target - self.bias
        mean = matrix.mean(axis=0)
        x = matrix - mean
        gram = x.T @ x + self.ridge * np.eye(len(self.names))
        self.weights = np.linalg.solve(gram, x.T @ centred)
        self._mean = mean

    def predict(self, plan) -> float:
        base = self.space.predicted.get(plan)
        if base is None:
            return math.inf
        if self.weights is None:
            return base
        row = self.space.features(plan)
        vector = np.array([row.get(n, 0.0) for n in self.names]) - self._mean
        return base * math.exp(self.bias + float(vector @ self.weights))


class Search:
    """Proposes the next plans to measure and learns from what was measured."""

    def __init__(self, space: Space, default, user_plans=(), seed: int = 0, planner_share=None,
                 trials: int | None = None, explore: float = 0.2, parents: int = 4):
        self.space, self.default = space, default
        self.rng = random.Random(seed)
        self.explore, self.parent_count = explore, parents
        self.surrogate = Surrogate(space)
        self.tried: set = set()
        self.measured: dict = {}      # plan -> median seconds
        self.failed: set = set()
        first = max(3, min(16, (trials or 48) // 3)) if planner_share is None else planner_share
        self._user = set(user_plans) - {default}
        self._queue = self._planner_order(default, user_plans, first)

    def _planner_order(self, default, user_plans, count: int) -> list:
        order = [default, *user_plans]
        ranking = self.space.plans
        diverse = []
        # the best plan of each algorithm (loop order, arithmetic ...) that the model does not
        # think hopeless: within a factor of 8 of its favourite
        limit = 8 * self.space.predicted[ranking[0]] if ranking else 0.0
        for name in self.space.field_names:
            values = {getattr(p, name) for p in ranking}
            if all(isinstance(v, str) for v in values) and len(values) > 1:
                for value in sorted(values):
                    first = next(p for p in ranking if getattr(p, name) == value)
                    if self.space.predicted[first] <= limit:
                        diverse.append(first)
        picks = []
        for top, other in zip(ranking, diverse + [None] * len(ranking)):
            picks += [top] + ([other] if other is not None else [])
        for plan in picks:
            if len(order) >= len(user_plans) + 1 + count:
                break
            if plan not in order:
                order.append(plan)
        seen, unique = set(), []
        for plan in order:
            if plan not in seen:
                seen.add(plan)
                unique.append(plan)
        return unique

    @property
    def phase(self) -> str:
        return "planner" if self._queue else "search"

    def exhausted(self) -> bool:
        return not self._queue and all(p in self.tried for p in self.space.plans)

    def propose(self, count: int) -> list[tuple[object, str]]:
        """Up to ``count`` untried plans, each with where it came from."""
        out = []
        while self._queue and len(out) < count:
            plan = self._queue.pop(0)
            if plan not in self.tried:
                source = ("default" if plan == self.default
                          else "user" if plan in self._user else "planner")
                out.append((plan, source))
                self.tried.add(plan)
        if len(out) < count:
            for plan in self._evolve(count - len(out)):
                out.append((plan, "search"))
                self.tried.add(plan)
        return out

    def observe(self, plan, seconds: float | None) -> None:
        """A measured median (None: the plan failed)."""
        self.tried.add(plan)
        if seconds is None:
            self.failed.add(plan)
        else:
            self.measured[plan] = seconds

    def _evolve(self, count: int) -> list:
        self.surrogate.fit(self.measured)
        parents = sorted(self.measured, key=self.measured.get)[:self.parent_count]
        children: set = set()
        for parent in parents:
            children.update(self.space.neighbours(parent, 1))
        if len(children - self.tried) < count * 2:
            for parent in parents:
                children.update(self.space.neighbours(parent, 2))
        fresh = [p for p in children if p not in self.tried]
        rest = [p for p in self.space.plans if p not in self.tried and p not in children]
        fresh.sort(key=self.surrogate.predict)
        picks = []
        while len(picks) < count and (fresh or rest):
            explore = self.rng.random() < self.explore or not fresh
            pool = rest if explore and rest else fresh
            if explore:   # a random plan, biased to the better half of the surrogate's view
                pool_sorted = sorted(pool, key=self.surrogate.predict)
                half = pool_sorted[:max(1, len(pool_sorted) // 2)]
                choice = self.rng.choice(half)
            else:
                choice = pool[0]
            pool.remove(choice)
            picks.append(choice)
        return picks
