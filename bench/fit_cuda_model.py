"""Fit the CUDA cost model's weights to GPU timings recorded by bench/cuda_compare.py.

    python bench/fit_cuda_model.py [RESULTS.json ...] [--write]

Every candidate cuda_compare timed (its "sweep": the planner's best plans per layer, each
timed on a flushed L2 with the host's share held out) becomes one row: the analytical
terms of convgen/cuda/cost.py for that plan (compute, memory, split-K chain, kind) and the
measured seconds. The weights of convgen/cuda/timings.py are fitted by least squares on the
log of the time (Levenberg-Marquardt, weights kept positive), and the planner's regret is
reported within what was measured: for each layer, the measured time of the candidate the
model ranks first over the best measured one, by the analytical model and by the fitted
one. ``--write`` stores the weights, the GPU and the fit's quality in
convgen/cuda/timings.json, where the planner reads them for that architecture.

Default inputs: the newest folder under bench/gpu_results/.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# the fitted parameters, in this order (the split-K weights of kinds that never split, wgmma,
# direct and depthwise, follow those of the GEMMs of the same arithmetic; the direct kernel
# is weighed as the SIMT GEMM: it was timed on grouped and depthwise layers only, and its
# own fit would carry their small sizes over to dense layers it was never timed on)
NAMES = ("gemm_fixed_s", "direct_fixed_s", "scale_wgmma", "scale_mma", "scale_fp32",
         "scale_depthwise", "memory_scale", "split_mma_s", "split_fp32_s", "split_s_per_byte",
         "overlap")
START = np.array([1e-5, 5e-6, 1, 1, 1, 1, 1, 5e-6, 5e-6, 1e-12, 0.25])
# the analytical compute assumes near-peak rates (wgmma at 75% of its peak, the other loops
# at the issue rate their SASS allows) and memory the datasheet's DRAM bandwidth (the H200
# copied at 1.4x it): a fit may not make either much cheaper than that, only dearer.
# Without the floor the fit priced wgmma's compute at nothing: its timed candidates were all
# memory-heavy, and a layer with few, deep tiles would have been planned as if free.
LOWER = np.array([0, 0, 0.75, 0.75, 0.75, 0.75, 0.7, 0, 0, 0, 0])


def rows_of(paths: list[Path]) -> list[dict]:
    """One row per timed candidate: its layer, terms and measured seconds."""
    import cuda_compare as cc
    from convgen.core.layers import spec_from_op
    from convgen.core.spec import workload_of
    from convgen.cuda.cost import terms_of
    from convgen.cuda.plan import CudaPlan
    from convgen.target.cuda_arch import CUDA_ARCHS

    layers = {layer["name"]: layer for suite in ("suite_public.json", "suite_gpu.json")
              for layer in cc.load_suite(ROOT / "bench" / suite, None)}
    rows = []
    for path in paths:
        result = json.loads(path.read_text())
        env = result["environment"]
        arch = dataclasses.replace(CUDA_ARCHS[env["convgen_arch"]], sm_count=env["sm_count"])
        for row in result["layers"]:
            layer = layers[row["name"]]
            spec = spec_from_op(layer["op"], layer["w"], True, layer["x"], **layer["args"])
            workload, _ = workload_of(spec, tuple(layer["x"]), "float32")
            for entry in row.get("sweep", []):
                if not entry.get("measured_s"):
                    continue
                plan = CudaPlan.parse(entry["plan"])
                rows.append({"group": (str(path), row["name"]), "plan": entry["plan"],
                             "terms": terms_of(plan, workload, arch),
                             "measured_s": entry["measured_s"], "gpu": env["gpu"],
                             "arch": arch})
    return rows


def model(theta: np.ndarray, x: dict) -> np.ndarray:
    fg, fd, cw, cm, cf, cd, cmem, am, af, b, overlap = theta
    scale = np.select([x["kind"] == k for k in ("wgmma", "mma", "fp32", "direct")],
                      [cw, cm, cf, cf], cd)
    fixed = np.where(np.isin(x["kind"], ("direct", "depthwise")), fd, fg)
    split_s = np.where(x["kind"] == "fp32", af, am)
    compute, memory = x["compute"] * scale, x["memory"] * cmem
    return (fixed + np.maximum(compute, memory) + overlap * np.minimum(compute, memory)
            + x["splits"] * (split_s + b * x["output"]))


def arrays(rows: list[dict]) -> dict:
    t = [r["terms"] for r in rows]
    return {"kind": np.array([v.kind for v in t]),
            "compute": np.array([v.compute_s for v in t]),
            "memory": np.array([v.memory_s for v in t]),
            "splits": np.array([v.split_k - 1 for v in t], dtype=float),
            "output": np.array([v.output_bytes for v in t])}


def fit(rows: list[dict], iterations: int = 200) -> np.ndarray:
    """Levenberg-Marquardt on log(predicted) - log(measured), each parameter as its floor
    (LOWER) plus the exponential of what is fitted."""
    x, y = arrays(rows), np.log([r["measured_s"] for r in rows])
    u, damping = np.log(np.maximum(START - LOWER, 1e-3 * START)), 1e-2

    def residual(u):
        return np.log(model(LOWER + np.exp(u), x)) - y

    r = residual(u)
    for _ in range(iterations):
        jac = np.stack([(residual(u + h) - r) / 1e-6
                        for h in np.eye(len(u)) * 1e-6], axis=1)
        gram = jac.T @ jac
        step = np.linalg.solve(gram + damping * np.diag(np.diag(gram) + 1e-12), -jac.T @ r)
        candidate = residual(u + step)
        if candidate @ candidate < r @ r:
            u, r, damping = u + step, candidate, max(damping / 3, 1e-9)
            if np.abs(step).max() < 1e-7:
                break
        else:
            damping *= 4
    return LOWER + np.exp(u)


def regrets(rows: list[dict], predicted: np.ndarray) -> dict:
    """Per layer: the measured time of the model's first choice over the best measured."""
    groups: dict = {}
    for i, row in enumerate(rows):
        groups.setdefault(row["group"], []).append(i)
    out = {}
    for group, idx in groups.items():
        best = min(rows[i]["measured_s"] for i in idx)
        pick = min(idx, key=lambda i: (predicted[i], i))
        out[group] = rows[pick]["measured_s"] / best
    return out


def summary(values) -> dict:
    values = np.array(list(values))
    return {"geomean": float(np.exp(np.log(values).mean())),
            "over_1.1": int((values > 1.1).sum()), "layers": len(values),
            "max": float(values.max())}


def fitted_record(theta: np.ndarray, gpu: str) -> dict:
    fg, fd, cw, cm, cf, cd, cmem, am, af, b, overlap = (float(v) for v in theta)
    return {"gpu": gpu, "gemm_fixed_s": fg, "direct_fixed_s": fd,
            "compute_scale": {"wgmma": cw, "mma": cm, "fp32": cf, "direct": cf,
                              "depthwise": cd},
            "memory_scale": cmem, "split_k_s": {"wgmma": am, "mma": am, "fp32": af,
                                                "direct": af, "depthwise": af},
            "split_k_s_per_byte": b, "overlap": overlap}


def source_name(path: Path) -> str:
    """A results file as the table records it: relative to the checkout where it lies in
    it (a run's results kept in bench/gpu_results/), else by its own path."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", type=Path)
    parser.add_argument("--write", action="store_true",
                        help="store the weights in convgen/cuda/timings.json")
    args = parser.parse_args(argv)
    from convgen.cuda import timings
    from convgen.cuda.cost import analytical_seconds

    paths = args.results or sorted(sorted((ROOT / "bench" / "gpu_results").iterdir())[-1]
                                   .glob("compare_*.json"))
    rows = rows_of(paths)
    if not rows:
        print("no timed candidates in " + ", ".join(map(str, paths)), file=sys.stderr)
        return 2
    theta = fit(rows)
    measured = np.array([r["measured_s"] for r in rows])
    fitted = model(theta, arrays(rows))
    analytic = np.array([analytical_seconds(r["terms"]) for r in rows])
    relative = np.abs(fitted - measured) / measured
    before, after = regrets(rows, analytic), regrets(rows, fitted)
    gpu, arch = rows[0]["gpu"], rows[0]["arch"]
    print(f"{len(rows)} timed candidates of {len(before)} layer runs on {gpu} ({arch.name})")
    for name, value in zip(NAMES, theta):
        print(f"  {name:<18}{value:.4g}")
    print(f"fitted time: median relative error {np.median(relative):.2f}, 90th percentile "
          f"{np.percentile(relative, 90):.2f}")
    for label, values in (("analytical", before), ("fitted", after)):
        s = summary(values.values())
        print(f"regret within the measured candidates, {label}: geomean {s['geomean']:.3f}, "
              f"{s['over_1.1']} of {s['layers']} above 1.10, worst {s['max']:.2f}")
    if args.write:
        table = json.loads(timings.TABLE.read_text()) if timings.TABLE.exists() \
            else {"about": timings.__doc__.split("\n\n")[0], "archs": {}}
        table["archs"][str(arch.number)] = {
            "fitted": fitted_record(theta, gpu),
            "fit": {"sources": [source_name(p) for p in paths], "rows": len(rows),
                    "median_relative_error": float(np.median(relative)),
                    "regret_analytical": summary(before.values()),
                    "regret_fitted": summary(after.values())}}
        timings.TABLE.write_text(json.dumps(table, indent=1) + "\n")
        print(f"written: {source_name(timings.TABLE)} (architecture {arch.number})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
