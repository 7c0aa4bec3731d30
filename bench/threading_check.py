"""convgen alone with the default environment: back-to-back calls vs calls after idle gaps.

A sleeping OpenMP worker can take milliseconds to wake on a VM; this shows what a user
who sets nothing gets. Run by compare.py in a child process (no torch loaded, no OMP_*).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

import convgen
from convgen import ConvSpec


def main() -> None:
    spec = ConvSpec.conv(2, 32, 32, 3, padding=1)
    kernel = convgen.compile(spec, (1, 32, 56, 56))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 32, 56, 56)).astype(np.float32)
    packed = kernel.prepack(rng.standard_normal((32, 32, 3, 3)).astype(np.float32))
    b = np.zeros(32, np.float32)
    out = np.empty(kernel.output_shape, np.float32)
    print(f"threading check (default environment, convgen's OpenMP setting: "
          f"{convgen.runtime.openmp.STATUS}; {kernel.plan.threads} threads, "
          f"conv2d 32->32 3x3 on 56x56):")
    for gap_ms in (0, 1, 5, 20, 100, 1000):
        times = []
        for _ in range(30 if gap_ms < 100 else 8 if gap_ms == 100 else 3):
            if gap_ms:
                time.sleep(gap_ms / 1e3)
            t0 = time.perf_counter()
            kernel(x, packed, b, out=out)
            times.append(time.perf_counter() - t0)
        print(f"  after {gap_ms:3d} ms idle: median {statistics.median(times) * 1e3:.3f} ms, "
              f"max {max(times) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
