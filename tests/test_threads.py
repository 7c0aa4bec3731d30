"""Kernels called from several Python threads at once: right answers, and the GIL released."""
from __future__ import annotations

import dataclasses
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import convgen
from convgen.backends import get_target
from convgen.core.spec import ConvSpec, workload_of
from convgen.cpu.planner import choose
from helpers import assert_matches, random, torch_reference

SPEC = ConvSpec.conv(2, 8, 8, 3, padding=1, groups=2)
SHAPE = (2, 8, 20, 20)


def _case(seed: int, dtype="float64"):
    rng = np.random.default_rng(seed)
    x, w, b = random(rng, SHAPE, dtype), random(rng, SPEC.weight_shape, dtype), \
        random(rng, (8,), dtype)
    return x, w, b, torch_reference("conv2d", x, w, b, padding=1, groups=2)


def test_one_kernel_from_eight_threads_at_once():
    k = convgen.compile(SPEC, SHAPE, dtype="float64")
    cases = [_case(seed) for seed in range(8)]
    start = threading.Barrier(8)

    def work(i):
        x, w, b, _ = cases[i]
        out = np.full(k.output_shape, np.nan)
        start.wait()
        results = []
        for _ in range(20):    # overlapping calls, each into its own output
            results.append(k(x, w, b).copy())
            k(x, w, b, out=out)
            results.append(out.copy())
        return results

    with ThreadPoolExecutor(8) as pool:
        every = list(pool.map(work, range(8)))
    for (_, _, _, ref), results in zip(cases, every):
        for result in results:
            assert_matches(result, ref, "float64")


def _plan_with_threads(workload, threads: int):
    return dataclasses.replace(choose(workload, get_target("cpu")), threads=threads)


def test_kernels_with_different_thread_counts_called_concurrently():
    workload, _ = workload_of(SPEC, SHAPE, "float64")
    single = convgen.compile(SPEC, SHAPE, dtype="float64", plan=_plan_with_threads(workload, 1))
    team = convgen.compile(SPEC, SHAPE, dtype="float64", plan=_plan_with_threads(workload, 3))
    assert single.plan.threads == 1 and "omp parallel" not in single.source
    assert team.plan.threads == 3 and "num_threads(3)" in team.source
    cases = [_case(seed) for seed in range(6)]
    start = threading.Barrier(6)

    def work(i):
        kernel = (single, team)[i % 2]
        x, w, b, _ = cases[i]
        start.wait()
        return [kernel(x, w, b) for _ in range(25)]

    with ThreadPoolExecutor(6) as pool:
        every = list(pool.map(work, range(6)))
    for (_, _, _, ref), results in zip(cases, every):
        for result in results:
            assert_matches(result, ref, "float64")


def _long_call(seconds: float):
    """A one-thread kernel and operands for a call of at least ``seconds`` (if it can)."""
    spec = ConvSpec.conv(2, 32, 32, 5, padding=2)
    rng = np.random.default_rng(0)
    w, b = random(rng, spec.weight_shape, "float32"), np.zeros(32, np.float32)
    for batch in (2, 8, 32):    # later kernels may be faster: grow the work until it is long
        shape = (batch, 32, 64, 64)
        workload, _ = workload_of(spec, shape, "float32")
        k = convgen.compile(spec, shape, plan=_plan_with_threads(workload, 1))
        x = random(rng, shape, "float32")
        began = time.perf_counter()
        k(x, w, b)
        if time.perf_counter() - began >= seconds:
            break
    return k, x, w, b


def test_the_gil_is_released_during_a_kernel_call():
    """While one thread is inside a long kernel call, another keeps running Python.

    With the GIL held through the call, the counting thread could not take a single step
    between the call's start and its end."""
    k, x, w, b = _long_call(seconds=0.08)
    calls, stop = [], threading.Event()

    def call_kernel():
        for _ in range(3):
            began = time.perf_counter()
            k(x, w, b)
            calls.append((began, time.perf_counter()))
        stop.set()

    ticks = []

    def count():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    counter = threading.Thread(target=count)
    counter.start()
    caller = threading.Thread(target=call_kernel)
    caller.start()
    caller.join()
    counter.join()
    ticks = np.array(ticks)
    # Look at the middle of each call only: around its ends, the counter may still hold the
    # GIL for one switch interval (5 ms) while the caller waits to enter or leave C.
    margin = 3 * sys.getswitchinterval()
    for began, ended in calls:
        assert ended - began > 3 * margin, "the kernel call is too short to tell"
        inside = np.count_nonzero((ticks > began + margin) & (ticks < ended - margin))
        assert inside > 100, f"only {inside} Python steps ran during a {ended - began:.3f} s call"
