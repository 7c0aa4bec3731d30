"""One layer's kernel called a few times on the GPU, for a profiler to watch.

    ncu --clock-control none --section SpeedOfLight -k regex:cg_ \\
        python bench/cuda_profile_one.py LAYER [--precision tf32|fp32] [--plan PLAN]
                                              [--suite PATH] [--calls N]

The layer comes from the public or the GPU suite (bench/suite_*.json); ``--plan`` takes a
plan string (``algorithm=implicit_gemm tile=...``) or ``auto`` (the planner's choice). The
kernel is compiled first (nothing of that is profiled: convgen's kernels are named
``cg_...``), then called ``--calls`` times on torch CUDA tensors on torch's stream.
bench/gpu_check.sh runs it under Nsight Compute for the layers whose speed it questions.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def find_layer(name: str, suite: Path | None) -> dict:
    import cuda_compare as cc
    suites = [suite] if suite else [ROOT / "bench" / "suite_public.json",
                                    ROOT / "bench" / "suite_gpu.json"]
    for path in suites:
        for layer in cc.load_suite(path, {name}):
            return layer
    raise SystemExit(f"no layer {name!r} in {', '.join(map(str, suites))}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layer")
    parser.add_argument("--precision", choices=["tf32", "fp32"], default="tf32")
    parser.add_argument("--plan", default="auto")
    parser.add_argument("--suite", type=Path)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args(argv)
    layer = find_layer(args.layer, args.suite)
    os.environ["CONVGEN_CUDA_TF32"] = "1" if args.precision == "tf32" else "0"
    import torch
    if not torch.cuda.is_available():
        print("bench/cuda_profile_one.py needs an NVIDIA GPU and a CUDA build of torch",
              file=sys.stderr)
        return 2
    import convgen
    import cuda_compare as cc
    from convgen.core.layers import spec_from_op

    torch.set_grad_enabled(False)
    spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])
    kernel = convgen.compile(spec, tuple(layer["x"]), "float32", target="cuda",
                             plan=args.plan)
    x, w, b = cc.operands(torch, layer, seed=0)
    out = torch.empty(kernel.output_shape, device="cuda")
    for _ in range(args.calls):
        kernel(x, w, b, out=out, stream=torch.cuda.current_stream())
    torch.cuda.synchronize()
    print(f"{layer['name']} {args.precision}: {kernel.plan} ({kernel.flops / 1e9:.3f} GFLOP), "
          f"{args.calls} calls", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
