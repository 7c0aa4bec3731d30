"""Shared test machinery: the torch oracle, tolerances and poisoned-output calls."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import convgen

# Relative L2 error bounds against the float64 reference (issue 2).
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}
TRANSPOSED_OPS = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}


def random(rng: np.random.Generator, shape, dtype="float64") -> np.ndarray:
    """Fresh random data, never zeros."""
    return rng.standard_normal(shape).astype(dtype)


def torch_reference(op: str, x, w, b=None, **args) -> np.ndarray:
    """The PyTorch result in float64, computed the way nn.ConvNd computes it.

    ``padding_mode`` other than 'zeros' is applied as nn.ConvNd does: F.pad with the
    reversed, repeated padding (asymmetric for 'same'), then the conv with padding 0.
    """
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    wt = torch.as_tensor(np.asarray(w, dtype=np.float64))
    bt = None if b is None else torch.as_tensor(np.asarray(b, dtype=np.float64))
    args = dict(args)
    if op in TRANSPOSED_OPS:
        output_size = args.pop("output_size", None)
        ndim = wt.dim() - 2
        if output_size is not None:
            module = getattr(torch.nn, f"ConvTranspose{ndim}d")(
                wt.shape[0], wt.shape[1] * args.get("groups", 1), tuple(wt.shape[2:]),
                stride=args.get("stride", 1), padding=args.get("padding", 0),
                groups=args.get("groups", 1), bias=bt is not None,
                dilation=args.get("dilation", 1), dtype=torch.float64)
            with torch.no_grad():
                module.weight.copy_(wt)
                if bt is not None:
                    module.bias.copy_(bt)
                return module(xt, output_size=list(output_size)).numpy()
        return getattr(F, op)(xt, wt, bt, **args).numpy()
    mode = args.pop("padding_mode", "zeros")
    if mode != "zeros":
        ndim = wt.dim() - 2
        module = getattr(torch.nn, f"Conv{ndim}d")(
            wt.shape[1] * args.get("groups", 1), wt.shape[0], tuple(wt.shape[2:]),
            bias=bt is not None, padding_mode=mode, dtype=torch.float64, **args)
        with torch.no_grad():
            module.weight.copy_(wt)
            if bt is not None:
                module.bias.copy_(bt)
            return module(xt).numpy()
    return getattr(F, op)(xt, wt, bt, **args).numpy()


def rel_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = np.linalg.norm(ref)
    return float(np.linalg.norm(ours - ref) / (scale if scale > 0 else 1.0))


def assert_matches(ours: np.ndarray, ref: np.ndarray, dtype: str) -> None:
    assert ours.shape == ref.shape, f"shape {ours.shape} != torch's {ref.shape}"
    assert np.isfinite(ours).all(), \
        "an output element was not written (still poisoned) or is not finite"
    err = rel_l2(ours, ref)
    assert err <= TOLERANCE[dtype], f"relative L2 error {err:.3g} > {TOLERANCE[dtype]:g} ({dtype})"


def poisoned_call(kernel: convgen.Kernel, x, w, b=None) -> np.ndarray:
    """Call ``kernel`` into an output pre-filled with NaN, so unwritten elements show."""
    out = np.full(kernel.output_shape, np.nan, dtype=kernel.dtype)
    result = kernel(x, w, b, out=out)
    assert result is out
    return out


def gemm_tile(vectors: int, pixels: int, target) -> tuple[int, int]:
    """An implicit_gemm tile of at most ``vectors`` weight vectors by ``pixels`` pixels that
    fits the target's registers (accumulators, weights and a broadcast): the pixels cut
    first, the vectors only where not even two pixels would fit. The tiles the tests name
    fit AVX-512's 32 registers as they are; on an AVX2 host (16) they shrink, so the same
    tests run there instead of being refused."""
    regs = target.isa_row.registers
    while vectors > 1 and (regs - vectors - 1) // vectors < min(pixels, 2):
        vectors -= 1
    return vectors, min(pixels, (regs - vectors - 1) // vectors)


def direct_tile(oc_tile: int, vectors: int, target) -> tuple[int, int]:
    """A direct_simd tile of at most ``oc_tile`` channels by ``vectors`` vectors that fits
    the target's registers (cpu.plan.direct_registers): the vectors cut first, then the
    channels (to a divisor of the original, so a tile still divides the channels it did)."""
    from convgen.cpu.plan import direct_registers
    regs = target.isa_row.registers
    while vectors > 1 and direct_registers(oc_tile, vectors) > regs:
        vectors -= 1
    while oc_tile > 1 and direct_registers(oc_tile, vectors) > regs:
        oc_tile = max(d for d in range(1, oc_tile) if oc_tile % d == 0)
    return oc_tile, vectors
