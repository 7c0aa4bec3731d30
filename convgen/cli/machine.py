"""``convgen machine``: the machine model the CPU planner uses (measured on first use)."""
from __future__ import annotations

import json


def run(args) -> int:
    from ..backends import backend_for, get_target
    target = get_target(args.target)
    backend = backend_for(target)
    if not hasattr(backend, "machine"):
        raise ValueError(f"target {target.name!r} has no CPU machine model; "
                         f"use a CPU target (cpu, x86-64-v3, x86-64-v4, c)")
    info = backend.machine(target, remeasure=args.remeasure)
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return 0
    identity = info["identity"]
    print(f"machine class: {info['machine_class']}  (target {info['target']}, ISA {info['isa']})")
    print(f"cpu: {identity['cpu_model']} ({identity['cpu_id']}), {identity['cores']} usable "
          f"core(s), {identity['arch']}")
    if info["measured_at"] is not None:
        print(f"measured once, in {info['measure_seconds'] or 0:.2f} s; stored under the cache "
              f"directory (convgen machine --remeasure measures again)")
    model = info["model"]
    clock = model["clock_hz"]
    rows = [
        ("clock", f"{clock / 1e9:.2f} GHz", "clock_hz"),
        ("full-width FMAs per cycle", f"{model['fma_per_cycle']:.2f}", "fma_per_cycle"),
        ("FMA latency", f"{model['fma_latency']:.1f} cycles", "fma_latency"),
        ("adds and FMAs mixed, per cycle", f"{model['fp_ops_per_cycle']:.2f}",
         "fp_ops_per_cycle"),
        ("FMA chains: 90% of the rate from", _chains_for(model, 0.9), "fma_chain_rates"),
        ("loads per cycle (broadcasts)", f"{model['loads_per_cycle']:.2f}", "loads_per_cycle"),
        ("slots per full-width vector load", f"{model['vector_load_cost']:.2f}",
         "vector_load_cost"),
        ("L1 read, one core", f"{model['l1_bytes_per_cycle']:.1f} B/cycle", "l1_bytes_per_cycle"),
        ("L2 read, one core", f"{model['l2_bytes_per_cycle']:.1f} B/cycle", "l2_bytes_per_cycle"),
        ("L2 to a register tile, one core", f"{model['l2_tile_bytes_per_cycle']:.1f} B/cycle",
         "l2_tile_bytes_per_cycle"),
        ("L3 read, one core", f"{model['l3_bytes_per_cycle']:.1f} B/cycle", "l3_bytes_per_cycle"),
        ("DRAM read, one core", f"{model['dram_bytes_per_s'] / 1e9:.1f} GB/s", "dram_bytes_per_s"),
        ("DRAM read, every core", f"{model['dram_total_bytes_per_s'] / 1e9:.1f} GB/s",
         "dram_total_bytes_per_s"),
        ("latency: L2, L3, DRAM", " ".join(f"{model[f'{level}_latency']:.0f}" for level in
                                            ("l2", "l3", "dram")) + " cycles", "l3_latency"),
        ("misses in flight: L2, L3, DRAM", " ".join(
            f"{model[f'{level}_misses_in_flight']:.1f}" for level in ("l2", "l3", "dram")),
         "l3_misses_in_flight"),
        ("scalar gather: fwd, transposed", " ".join(
            f"{model[f'{kind}gather_macs_per_s'] / 1e9:.2f}" for kind in ("", "transposed_"))
         + " GMAC/s", "gather_macs_per_s"),
        ("parallel region, every core", f"{model['parallel_overhead_s'] * 1e6:.1f} us",
         "parallel_overhead_s"),
    ]
    lanes = max(1, info["vector_bytes"] // 4)
    peak = 2 * lanes * model["fma_per_cycle"] * clock
    print(f"caches: L1d {model['l1d_bytes'] >> 10} KiB, L2 {model['l2_bytes'] >> 10} KiB, "
          f"L3 {model['l3_bytes'] >> 20} MiB (sysfs)")
    for label, value, field in rows:
        print(f"  {label:<34} {value:>14}   ({info['origin'][field]})")
    print(f"  {'=> float32 FMA peak, one core':<34} {peak / 1e9:>8.1f} GFLOP/s")
    return 0


def _chains_for(model: dict, share: float) -> str:
    """The fewest independent FMA chains measured to issue ``share`` of the best rate."""
    rates = model["fma_chain_rates"]
    if not rates:
        return "-"
    chains = next(n for n, rate in enumerate(rates, 1) if rate >= share * max(rates))
    return f"{chains} chains"


def add_parser(sub) -> None:
    p = sub.add_parser("machine", help="show the measured machine model the CPU planner uses")
    p.add_argument("--target", default="cpu", help="a CPU target (the native one is measured; "
                   "named ones use their ISA's defaults)")
    p.add_argument("--remeasure", action="store_true", help="measure again now")
    p.add_argument("--json", action="store_true", help="print the model as JSON")
    p.set_defaults(run=run)
