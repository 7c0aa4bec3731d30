"""``convgen tune --report DIR``: PNG plots and an index (Markdown and HTML) of a tuning run.

- ``<layer>-trials.png``: every trial's median time over the search (quartiles as error
  bars, failures marked along the top), the best-so-far step line, the default plan's time;
- ``best-so-far.png``: every layer's best time so far against its default, over the trials;
- ``model.png``: the cost model's predicted time against the measured one, per layer, with
  the Spearman rank correlation (how well the model ranks the plans it is asked about);
- ``roofline.png``: the chosen (and default) kernels placed against this machine's measured
  FMA peak (``cpu.peak``) and memory bandwidth (a timed copy), CPU targets only.

Needs matplotlib (``pip install 'convgen[plots]'``); the Agg backend, no display.
"""
from __future__ import annotations

import html
import math
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

from ..target import host
from .fit import spearman

COLOURS = {"default": "tab:red", "user": "tab:purple", "planner": "tab:blue",
           "search": "tab:green"}


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("--report needs matplotlib: pip install 'convgen[plots]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "layer"


def write_report(results: list, directory) -> Path:
    """Write the plots and ``index.md``/``index.html`` into ``directory``; its path."""
    plt = _pyplot()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for result in results:
        images.append(_trials_plot(plt, result, out / f"{_safe(result.name)}-trials.png"))
    images.append(_best_so_far_plot(plt, results, out / "best-so-far.png"))
    images.append(_model_plot(plt, results, out / "model.png"))
    roof = _roofline_plot(plt, results, out / "roofline.png")
    if roof is not None:
        images.append(roof)
    _index(results, out, [p for p in images if p is not None])
    return out


# -- plots -------------------------------------------------------------------------------------
def _trials_plot(plt, result, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ok = [t for t in result.trials if t.ok]
    for source, colour in COLOURS.items():
        mine = [t for t in ok if t.source == source]
        if mine:
            x = [t.index for t in mine]
            y = np.array([t.time.median_s * 1e3 for t in mine])
            low = y - np.array([t.time.q25_s * 1e3 for t in mine])
            high = np.array([t.time.q75_s * 1e3 for t in mine]) - y
            ax.errorbar(x, y, yerr=[low, high], fmt="o", color=colour, ms=4, capsize=2,
                        label=f"{source} ({len(mine)})")
    best, steps = math.inf, []
    for t in result.trials:
        if t.ok:
            best = min(best, t.time.median_s * 1e3)
        steps.append(best)
    if ok:
        ax.step(range(len(steps)), steps, where="post", color="black", lw=1.2,
                label="best so far")
        ax.set_yscale("log")
    default = [t for t in ok if t.plan == result.default]
    if default:
        ax.axhline(default[0].time.median_s * 1e3, color="tab:red", ls="--", lw=1,
                   label="default plan")
    failed = [t for t in result.trials if not t.ok]
    if failed:
        top = ax.get_ylim()[1] if ok else 1.0
        ax.scatter([t.index for t in failed], [top] * len(failed), marker="x", color="crimson",
                   clip_on=False, label=f"failed ({len(failed)})", zorder=5)
    ax.set_xlabel("trial")
    ax.set_ylabel("median time per call (ms)")
    ax.set_title(f"{result.name}: each trial over the search", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    return _save(plt, fig, path)


def _best_so_far_plot(plt, results, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for result in results:
        default = [t for t in result.trials if t.ok and t.plan == result.default]
        if not default:
            continue
        base, best, curve = default[0].time.median_s, math.inf, []
        for t in result.trials:
            if t.ok:
                best = min(best, t.time.median_s)
            curve.append(base / best if best < math.inf else 1.0)
        ax.plot(range(1, len(curve) + 1), curve, label=result.name, lw=1.2)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("trials")
    ax.set_ylabel("default time / best time so far")
    ax.set_title("best so far, against each layer's default plan (search measurements)",
                 fontsize=10)
    if len(results) <= 12:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def _model_plot(plt, results, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 6))
    low, high = math.inf, 0.0
    for result in results:
        pairs = [(t.predicted_s * 1e3, t.time.median_s * 1e3) for t in result.trials
                 if t.ok and t.predicted_s]
        if not pairs:
            continue
        rho = spearman([p for p, _ in pairs], [m for _, m in pairs])
        ax.scatter(*zip(*pairs), s=12, alpha=0.7, label=f"{result.name} (rho {rho:+.2f})")
        low = min(low, *(min(p) for p in pairs))
        high = max(high, *(max(p) for p in pairs))
    if high > 0:
        ax.plot([low / 2, high * 2], [low / 2, high * 2], color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("cost model's prediction (ms)")
    ax.set_ylabel("measured median (ms)")
    ax.set_title("the cost model against measurements\n(rho: Spearman rank correlation)",
                 fontsize=10)
    if len(results) <= 12:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _save(plt, fig, path)


def _roofline_plot(plt, results, path: Path) -> Path | None:
    cpu = [r for r in results if r.target.lang == "c" and r.best_time is not None]
    if not cpu:
        return None
    threads = max(getattr(r.best, "threads", 1) for r in cpu)
    peak = measured_peak_gflops(threads) if cpu[0].target.name == "cpu" else None
    bandwidth = measured_bandwidth_gbs(threads)
    fig, ax = plt.subplots(figsize=(8, 5))
    intensities = []
    for result in cpu:
        flops = result.workload.flops
        intensity = flops / _min_bytes(result.workload)
        intensities.append(intensity)
        ax.scatter(intensity, flops / result.best_time.median_s / 1e9, marker="o", s=30,
                   label=f"{result.name} (tuned)")
        if result.default_time is not None:
            ax.scatter(intensity, flops / result.default_time.median_s / 1e9, marker="x",
                       color="grey", s=25)
    ridge = [peak / bandwidth] if peak else []
    x = np.logspace(math.log10(min(intensities + ridge) / 4),
                    math.log10(max(intensities + ridge) * 4), 200)
    ax.plot(x, bandwidth * x, color="tab:orange", lw=1,
            label=f"memory {bandwidth:.1f} GB/s (copy, {threads} threads)")
    if peak is not None:
        ax.plot(x, np.minimum(peak, bandwidth * x), color="black", lw=1.5,
                label=f"FMA peak {peak:.0f} GFLOP/s ({threads} threads)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte of input + weights + output)")
    ax.set_ylabel("GFLOP/s (direct-convolution FLOPs)")
    ax.set_title("roofline: tuned kernels (dots), defaults (x)", fontsize=10)
    if len(cpu) <= 12:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _save(plt, fig, path)


def _min_bytes(workload) -> int:
    size = np.dtype(workload.dtype).itemsize
    return size * (math.prod(workload.input_shape) + math.prod(workload.output_shape)
                   + math.prod(workload.spec.weight_shape))


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the machine's roofs ---------------------------------------------------------------------
def measured_peak_gflops(threads: int) -> float:
    """float32 FMA peak from convgen's micro-benchmark (same compiler, flags, threads)."""
    from ..backends import backend_for, get_target
    return backend_for(get_target("cpu")).peak_gflops(threads)


def measured_bandwidth_gbs(threads: int, megabytes: int = 256) -> float:
    """Bytes read + written per second by ``threads`` threads copying their own arrays,
    the best of three."""
    size = megabytes * (1 << 20) // 8 // max(threads, 1)
    sources = [np.ones(size) for _ in range(threads)]
    targets = [np.empty(size) for _ in range(threads)]
    best = 0.0
    for _ in range(3):
        workers = [threading.Thread(target=np.copyto, args=(t, s))
                   for s, t in zip(sources, targets)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, 2 * size * 8 * threads / (time.perf_counter() - start) / 1e9)
    return best


# -- the index --------------------------------------------------------------------------------
def _rows(results) -> list[list[str]]:
    rows = []
    for r in results:
        ok = sum(t.ok for t in r.trials)
        shape = "x".join(map(str, r.workload.input_shape))
        rows.append([r.name, r.workload.spec.describe(), shape,
                     f"{r.default_time.median_s * 1e3:.4f}" if r.default_time else "-",
                     f"{r.best_time.median_s * 1e3:.4f}" if r.best_time else "-",
                     f"{r.speedup:.2f}x" if r.confirmed else "-",
                     f"{ok}/{len(r.trials)}", f"{r.elapsed_s:.0f}", str(r.best)])
    return rows


HEADER = ["layer", "spec", "input", "default ms", "best ms", "speedup", "measured/trials",
          "tuning s", "best plan"]


def _index(results, out: Path, images: list[Path]) -> None:
    target = results[0].target if results else None
    where = results[0].db if results else "-"
    about = (f"CPU: {host.cpu_name()}, {host.usable_cores()} usable cores; target "
             f"{target.description if target else '-'}; database {where}")
    md = ["# convgen tuning report", "", about, "",
          "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in _rows(results)]
    notes = [f"- {r.name}: {r.note}" for r in results if r.note]
    md += ([""] + notes if notes else []) + [""]
    md += [f"![{p.stem}]({os.path.basename(p)})" for p in images]
    (out / "index.md").write_text("\n".join(md) + "\n")
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                    for row in _rows(results))
    body = (f"<h1>convgen tuning report</h1><p>{html.escape(about)}</p><table border=1 "
            f"cellpadding=4><tr>{''.join(f'<th>{h}</th>' for h in HEADER)}</tr>{cells}</table>"
            + "".join(f"<p>{html.escape(n)}</p>" for n in notes)
            + "".join(f'<p><img src="{os.path.basename(p)}" alt="{p.stem}"></p>' for p in images))
    (out / "index.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>"
                                    f"convgen tuning report</title></head><body>{body}</body>"
                                    f"</html>\n")
