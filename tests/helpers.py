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
