"""What GPU timings taught the CUDA cost model, per architecture.

The analytical model (cost.py) derives, for a plan, the compute on the busiest SM, the bytes
through DRAM and L2, the split-K chain and the launches. How those turn into seconds on a
real GPU is measured: bench/cuda_compare.py times the planner's best candidates of every
benchmark layer and records each beside its terms; bench/fit_cuda_model.py fits the
weights below to those times (least squares on the log of the time) and writes them to
``timings.json`` beside this module, with the GPU, the date and the fit's quality. An
architecture without measurements keeps the analytical model as it is.

The fitted form, per plan of kind k (wgmma, mma = TF32 mma.sync, fp32 = SIMT GEMM, direct,
depthwise)::

    fixed[gemm or direct] + max(c, m) + overlap * min(c, m)
        + (split_k - 1) * (split_k_s[k] + split_k_s_per_byte * output bytes)
    where c = compute_s * compute_scale[k], m = memory_s * memory_scale

``fixed`` is what a call costs whatever its size (the GEMM's layout prologue, workspaces,
launches); the split-K term is the serial chain of partial sums through the output. The
direct kernel's compute is weighed as the SIMT GEMM's: the planner never ranked it among
the timed candidates of a dense layer, so nothing measured says otherwise.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

TABLE = Path(__file__).with_name("timings.json")
KINDS = ("wgmma", "mma", "fp32", "direct", "depthwise")
SINGLE_LAUNCH = ("direct", "depthwise")   # no layout prologue, no workspaces


@dataclass(frozen=True)
class Fitted:
    """Fitted weights of the model's terms for one architecture."""

    gpu: str
    gemm_fixed_s: float
    direct_fixed_s: float
    compute_scale: dict
    memory_scale: float
    split_k_s: dict
    split_k_s_per_byte: float
    overlap: float          # how much of the shorter of compute and memory is not hidden

    def seconds(self, terms) -> float:
        """Predicted seconds for a plan's ``cost.Terms``."""
        fixed = self.direct_fixed_s if terms.kind in SINGLE_LAUNCH else self.gemm_fixed_s
        compute = terms.compute_s * self.compute_scale[terms.kind]
        memory = terms.memory_s * self.memory_scale
        core = max(compute, memory) + self.overlap * min(compute, memory)
        chain = 0.0
        if terms.split_k > 1:
            chain = (terms.split_k - 1) * (self.split_k_s[terms.kind]
                                           + self.split_k_s_per_byte * terms.output_bytes)
        return fixed + core + chain

    def as_dict(self) -> dict:
        return {"gpu": self.gpu, "gemm_fixed_s": self.gemm_fixed_s,
                "direct_fixed_s": self.direct_fixed_s, "compute_scale": self.compute_scale,
                "memory_scale": self.memory_scale, "split_k_s": self.split_k_s,
                "split_k_s_per_byte": self.split_k_s_per_byte, "overlap": self.overlap}

    @classmethod
    def from_dict(cls, data: dict) -> Fitted:
        return cls(data["gpu"], float(data["gemm_fixed_s"]), float(data["direct_fixed_s"]),
                   {k: float(data["compute_scale"][k]) for k in KINDS},
                   float(data["memory_scale"]),
                   {k: float(data["split_k_s"][k]) for k in KINDS},
                   float(data["split_k_s_per_byte"]), float(data["overlap"]))


@functools.cache
def table() -> dict:
    """compute capability as a number (90) -> the stored record (``fitted`` and ``fit``)."""
    try:
        return {int(k): v for k, v in json.loads(TABLE.read_text())["archs"].items()}
    except (OSError, ValueError, KeyError):   # absent or unreadable: the analytical model
        return {}


def for_arch(arch) -> Fitted | None:
    """The fitted weights for ``arch`` (sm_90 and sm_90a share the SM), or None."""
    record = table().get(arch.number)
    return None if record is None else Fitted.from_dict(record["fitted"])
