"""Fused epilogues: what a kernel does to each output after the convolution and the bias.

Deployed models follow a convolution with an activation and often a residual addition;
fusing them into the kernel's stores saves a pass over the output. An epilogue is a tuple
of steps applied in order to ``conv + bias``; the ``add`` step adds the residual, which
the caller passes in the output buffer (the kernel reads each output before writing it).

The steps are ONNX's: Relu, Clip (ReLU6 is Clip(0, 6)), LeakyRelu, Sigmoid, Tanh, SiLU
(``x * Sigmoid(x)``, as ONNX graphs spell it) and Add. NaN propagates through every one
as in torch and onnxruntime.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

OPS = {"relu": 0, "clip": 2, "leaky_relu": 1, "sigmoid": 0, "tanh": 0, "silu": 0, "add": 0}


@dataclass(frozen=True)
class Step:
    op: str
    args: tuple[float | None, ...] = ()   # clip: (min or None, max or None); leaky_relu: (alpha,)

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"epilogue step must be one of {sorted(OPS)}, got {self.op!r}")
        if len(self.args) != OPS[self.op]:
            raise ValueError(f"epilogue step {self.op!r} takes {OPS[self.op]} argument(s), "
                             f"got {self.args!r}")
        values = [a for a in self.args if a is not None]
        if not all(isinstance(a, (int, float)) and math.isfinite(a) for a in values):
            raise ValueError(f"epilogue step {self.op!r}: arguments must be finite numbers "
                             f"(None for an unbounded clip side), got {self.args!r}")
        if self.op == "clip" and None not in self.args and self.args[0] > self.args[1]:
            raise ValueError(f"epilogue step 'clip': min {self.args[0]} exceeds max "
                             f"{self.args[1]}")
        object.__setattr__(self, "args", tuple(None if a is None else float(a)
                                               for a in self.args))


def check(steps) -> tuple[Step, ...]:
    """A validated epilogue: a tuple of Steps, at most one ``add``."""
    steps = tuple(steps)
    if not all(isinstance(s, Step) for s in steps):
        raise TypeError(f"an epilogue is a sequence of convgen.core.epilogue.Step, got {steps!r}")
    if sum(s.op == "add" for s in steps) > 1:
        raise ValueError("an epilogue adds at most one residual")
    return steps


def has_residual(steps: tuple[Step, ...]) -> bool:
    return any(s.op == "add" for s in steps)


def uses_math(steps: tuple[Step, ...]) -> bool:
    """Whether a step needs e^x or tanh (libm's, or the vector kernels' own)."""
    return any(s.op in ("sigmoid", "tanh", "silu") for s in steps)


def describe(steps: tuple[Step, ...]) -> str:
    return " -> ".join(s.op + (f"({', '.join(map(str, s.args))})" if s.args else "")
                       for s in steps)


def reference(y, steps: tuple[Step, ...], residual=None):
    """The epilogue applied to a numpy array (float64): the tests' and the demo's oracle."""
    import numpy as np

    y = np.array(y, dtype=np.float64)
    for s in steps:
        if s.op == "relu":
            y = np.where(y < 0, 0.0, y)
        elif s.op == "clip":
            lo, hi = s.args
            if lo is not None:
                y = np.where(y < lo, lo, y)
            if hi is not None:
                y = np.where(y > hi, hi, y)
        elif s.op == "leaky_relu":
            y = np.where(y < 0, y * s.args[0], y)
        elif s.op == "sigmoid":
            y = 1.0 / (1.0 + np.exp(-y))
        elif s.op == "tanh":
            y = np.tanh(y)
        elif s.op == "silu":
            y = y * (1.0 / (1.0 + np.exp(-y)))
        elif s.op == "add":
            y = y + np.asarray(residual, dtype=np.float64)
    return y
