"""Whole networks built ahead of time, against torch and onnxruntime on the same model.

    python bench/network.py [--threads N] [--nets NAME,...] [--target T] [--seconds S]
                            [--rounds R] [--keep DIR]

Each network is a torch module of convolutions, BatchNorm, activations and residual adds
(what ``convgen.build`` fuses), exported to ONNX once: ResNet-18's four stages, MobileNet v1
(ReLU6), a HiFi-GAN v2 generator (transposed and dilated 1-D convs, LeakyReLU, tanh) and a
YOLOv8-style backbone (SiLU). convgen builds that file ahead of time (target native, or
--target; a team of --threads), ``make`` compiles the standalone C library, and its
``NAME_run`` is called through ctypes in a process that loads nothing else: no torch,
no other OpenMP runtime. onnxruntime runs the same ONNX file (every graph optimisation,
inputs and outputs bound to preallocated buffers), torch the module itself (eval,
inference mode). Each library runs in a process of its own, in rounds (convgen, torch,
onnxruntime, then again) so the machine's drift hits all three alike; a cell is the median
over the rounds of each process's median call.

Two more columns, from the first round's convgen process:
- ``rel err``: convgen's output against torch's (float32, relative L2);
- ``layers ms``: the sum of the layers' times, each called on its own, back to back, so its
  weights and input are in cache. The network's time over that sum is what a layer pays for
  finding its weights cold and its input where the previous layer left it, plus the
  elementwise nodes and copies of ``NAME_run``: the warm call that the planner prices is
  not the call a network makes.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
LIBRARIES = ("convgen", "torch", "onnxruntime")
MAX_REL_ERR = 1e-4   # float32 against torch's float32 through twenty layers: 1e-6 seen


# ---------------------------------------------------------------- the networks (torch)

def _networks():
    """name -> (module factory, input shape). torch is imported here, never in the
    convgen process."""
    import torch.nn as nn

    def conv_bn(cin, cout, k, stride=1, groups=1):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout)]

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True),
                                      *conv_bn(cout, cout, 3))
            self.skip = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                         if stride != 1 or cin != cout else nn.Identity())
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.body(x) + self.skip(x))

    def resnet18_body():
        """ResNet-18's four stages (from the stem's 64 x 56 x 56 output to 512 x 7 x 7)."""
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        return nn.Sequential(*blocks)

    def mobilenet_v1():
        """MobileNet v1's convolutions at 224 x 224 (ReLU6: Clip in ONNX)."""
        layers = [*conv_bn(3, 32, 3, 2), nn.ReLU6(inplace=True)]
        cin = 32
        for cout, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2),
                             (1024, 1)):
            layers += [*conv_bn(cin, cin, 3, stride, groups=cin), nn.ReLU6(inplace=True),
                       *conv_bn(cin, cout, 1), nn.ReLU6(inplace=True)]
            cin = cout
        return nn.Sequential(*layers)

    class ResBlock1d(nn.Module):
        """HiFi-GAN's resblock: LeakyReLU, dilated conv, LeakyReLU, conv, residual add."""
        def __init__(self, channels, dilations=(1, 3, 5)):
            super().__init__()
            self.pairs = nn.ModuleList(
                nn.Sequential(nn.LeakyReLU(0.1), nn.Conv1d(channels, channels, 3, 1, d, d),
                              nn.LeakyReLU(0.1), nn.Conv1d(channels, channels, 3, 1, 1))
                for d in dilations)

        def forward(self, x):
            for pair in self.pairs:
                x = pair(x) + x
            return x

    def hifigan_v2():
        """A HiFi-GAN v2 generator with one resblock per stage: 80 mel bins x 64 frames
        upsampled 8 x 8 x 2 x 2 into 16384 samples."""
        layers, channels = [nn.Conv1d(80, 128, 7, 1, 3)], 128
        for rate, kernel in ((8, 16), (8, 16), (2, 4), (2, 4)):
            layers += [nn.LeakyReLU(0.1),
                       nn.ConvTranspose1d(channels, channels // 2, kernel, rate,
                                          (kernel - rate) // 2),
                       ResBlock1d(channels // 2)]
            channels //= 2
        layers += [nn.LeakyReLU(0.1), nn.Conv1d(channels, 1, 7, 1, 3), nn.Tanh()]
        return nn.Sequential(*layers)

    def conv_bn_silu(cin, cout, k, stride=1):
        return nn.Sequential(*conv_bn(cin, cout, k, stride), nn.SiLU(inplace=True))

    class Bottleneck(nn.Module):
        """YOLOv8's bottleneck: two 3x3 conv-BN-SiLU and the shortcut."""
        def __init__(self, channels):
            super().__init__()
            self.body = nn.Sequential(conv_bn_silu(channels, channels, 3),
                                      conv_bn_silu(channels, channels, 3))

        def forward(self, x):
            return x + self.body(x)

    def yolo_silu():
        """A YOLOv8-style backbone without its splits and concats (which convgen.build
        does not fuse): stride-2 conv-BN-SiLU stages and bottlenecks, 320 x 320."""
        layers, cin = [conv_bn_silu(3, 16, 3, 2)], 16
        for cout, blocks in ((32, 1), (64, 2), (128, 2), (256, 1)):
            layers.append(conv_bn_silu(cin, cout, 3, 2))
            layers += [Bottleneck(cout) for _ in range(blocks)]
            cin = cout
        return nn.Sequential(*layers)

    def tiny_resnet():
        """Two residual blocks on 16 x 16 (the script's own test)."""
        return nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 16, 2))

    return {"resnet18_body": (resnet18_body, (1, 64, 56, 56)),
            "mobilenet_v1": (mobilenet_v1, (1, 3, 224, 224)),
            "hifigan_v2": (hifigan_v2, (1, 80, 64)),
            "yolo_silu": (yolo_silu, (1, 3, 320, 320)),
            "tiny_resnet": (tiny_resnet, (1, 8, 16, 16))}


def _fan_in(module) -> float:
    """Terms summed into one output: what keeps activations at unit scale (no denormals
    after twenty layers, for any library)."""
    import torch.nn as nn
    taps = math.prod(module.kernel_size)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return module.in_channels / module.groups * taps / math.prod(module.stride)
    return module.in_channels / module.groups * taps


def make_network(name: str):
    """The module (eval, seeded weights and BatchNorm statistics) and its input."""
    import torch
    import torch.nn as nn
    factory, shape = _networks()[name]
    torch.manual_seed(0)
    module = factory().eval()
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / _fan_in(m)))
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.0)
            m.bias.data.uniform_(-0.1, 0.1)
    return module, torch.randn(shape, generator=torch.Generator().manual_seed(1))


def conv_flops(module, x) -> float:
    """Multiply-adds of every conv, twice (GFLOP as the layer tables count them)."""
    import torch
    import torch.nn as nn
    total = []

    def hook(m, inputs, output):
        taps = math.prod(m.kernel_size)
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            total.append(2 * inputs[0].numel() * m.out_channels // m.groups * taps)
        else:
            total.append(2 * output.numel() * m.in_channels // m.groups * taps)
    handles = [m.register_forward_hook(hook) for m in module.modules()
               if isinstance(m, nn.modules.conv._ConvNd)]
    with torch.inference_mode():
        module(x)
    for handle in handles:
        handle.remove()
    return sum(total) / 1e9


# ---------------------------------------------------------------- timing, in a child

def median_ms(call, seconds: float, min_reps: int = 10) -> float:
    """Median of back-to-back calls after a warm-up (threads awake, caches as the calls
    leave them)."""
    warm_until = time.perf_counter() + min(0.5, seconds / 4)
    while time.perf_counter() < warm_until:
        call()
    times, end = [], time.perf_counter() + seconds
    while len(times) < min_reps or time.perf_counter() < end:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _convgen_library(work: Path, name: str):
    """The built library's run and layer table, through ctypes."""
    import ctypes as C

    class LayerInfo(C.Structure):
        _fields_ = [("name", C.c_char_p), ("in_rank", C.c_int), ("in_shape", C.c_size_t * 5),
                    ("in_elems", C.c_size_t), ("out_rank", C.c_int),
                    ("out_shape", C.c_size_t * 5), ("out_elems", C.c_size_t),
                    ("residual", C.c_int),
                    ("fn", C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_void_p, C.c_void_p))]

    lib = C.CDLL(str(work / "build" / f"lib{name}.so"))
    create, run, layer = (getattr(lib, f"{name}_{what}") for what in ("create", "run", "layer"))
    create.argtypes = [C.POINTER(C.c_void_p), C.c_void_p]
    run.argtypes = [C.c_void_p, C.POINTER(C.c_void_p), C.POINTER(C.c_void_p)]
    layer.restype = C.POINTER(LayerInfo)
    layer.argtypes = [C.c_size_t]
    ctx = C.c_void_p()
    status = create(C.byref(ctx), None)
    if status != 0:
        raise RuntimeError(f"{name}_create failed with status {status}")
    layers = []
    while info := layer(len(layers)):
        layers.append(info.contents)
    return run, ctx, layers


def time_convgen(work: Path, name: str, seconds: float, detail: bool) -> dict:
    import ctypes as C
    run_graph, ctx, layers = _convgen_library(work, name)
    x = np.load(work / "x.npy")
    expected = np.load(work / "y.npy")
    y = np.empty_like(expected)
    inputs = (C.c_void_p * 1)(x.ctypes.data)
    outputs = (C.c_void_p * 1)(y.ctypes.data)

    def run():
        status = run_graph(ctx, inputs, outputs)
        if status != 0:
            raise RuntimeError(f"{name}_run failed with status {status}")
    y.fill(np.nan)   # poisoned: every output element must be written
    run()
    row = {"rel_err": float(np.linalg.norm(y.astype(np.float64) - expected)
                            / np.linalg.norm(expected.astype(np.float64)))}
    row["ms"] = median_ms(run, seconds)
    if detail:
        row["layers_ms"] = sum(_layer_ms(layer, ctx, seconds / len(layers)) for layer in layers)
    return row


def _layer_ms(layer, ctx, seconds: float) -> float:
    """One layer alone, back to back, on random data (a residual layer adds into its
    output again and again: the values grow, the time does not)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(layer.in_elems, np.float32)
    y = rng.standard_normal(layer.out_elems, np.float32)
    return median_ms(lambda: layer.fn(ctx, x.ctypes.data, y.ctypes.data), max(seconds, 0.2))


def time_torch(name: str, threads: int, seconds: float) -> dict:
    import torch
    torch.set_num_threads(threads)
    module, x = make_network(name)
    with torch.inference_mode():
        return {"ms": median_ms(lambda: module(x), seconds)}


def time_onnxruntime(work: Path, threads: int, seconds: float) -> dict:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(work / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    x = np.load(work / "x.npy")
    y = np.empty_like(np.load(work / "y.npy"))
    binding = session.io_binding()
    binding.bind_cpu_input(session.get_inputs()[0].name, x)
    binding.bind_output(session.get_outputs()[0].name, "cpu", 0, np.float32, list(y.shape),
                        y.ctypes.data)
    return {"ms": median_ms(lambda: session.run_with_iobinding(binding), seconds)}


def child(args) -> None:
    work = Path(args.work)
    if args.child == "convgen":
        row = time_convgen(work, args.nets, args.seconds, args.detail)
    elif args.child == "torch":
        row = time_torch(args.nets, args.threads, args.seconds)
    else:
        row = time_onnxruntime(work, args.threads, args.seconds)
    print(json.dumps(row))


# ---------------------------------------------------------------- the parent

def prepare(name: str, work: Path, threads: int, target: str = "native") -> dict:
    """Export, build and make one network; its reference output for the check."""
    import torch

    import convgen
    module, x = make_network(name)
    with torch.inference_mode():
        y = module(x)
    np.save(work / "x.npy", x.numpy())
    np.save(work / "y.npy", y.numpy())
    with warnings.catch_warnings():   # the TorchScript exporter: fast, and folds BatchNorm
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(work / "model.onnx"), dynamo=False,
                          input_names=["x"], output_names=["y"])
    start = time.perf_counter()
    result = convgen.build(work / "model.onnx", work / "build", target=target, name=name,
                           threads=threads)
    subprocess.run(["make", "-C", str(work / "build"), "-j", str(threads), f"lib{name}.so"],
                   check=True, capture_output=True)
    return {"gflop": conv_flops(module, x), "layers": len(result.functions),
            "build_s": time.perf_counter() - start}


def run_child(library: str, name: str, work: Path, args, detail: bool) -> dict:
    command = [sys.executable, str(HERE), "--child", library, "--nets", name, "--work",
               str(work), "--threads", str(args.threads), "--seconds", str(args.seconds)]
    if detail:
        command.append("--detail")
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(name: str, work: Path, args, libraries) -> dict:
    rounds = {library: [] for library in libraries}
    row = {}
    for round_index in range(args.rounds):
        for library in libraries:
            result = run_child(library, name, work, args, detail=round_index == 0)
            rounds[library].append(result["ms"])
            row.update({k: v for k, v in result.items() if k != "ms"})
    row.update({library: statistics.median(times) for library, times in rounds.items()})
    return row


def print_table(rows: dict, threads: int, target: str) -> None:
    from convgen.target.host import cpu_name
    print(f"CPU: {cpu_name()}; {threads} thread(s); convgen built for {target}; medians over "
          f"rounds of one process each")
    print(f"{'network':<15}{'layers':>7}{'GFLOP':>7}{'convgen ms':>11}{'GFLOP/s':>8}"
          f"{'torch ms':>10}{'ort ms':>9}{'torch/cg':>9}{'ort/cg':>8}{'layers ms':>10}"
          f"{'net/layers':>11}{'rel err':>9}{'build s':>8}")
    for name, row in rows.items():
        ort = row.get("onnxruntime", math.nan)
        print(f"{name:<15}{row['layers']:>7}{row['gflop']:>7.2f}{row['convgen']:>11.3f}"
              f"{row['gflop'] / row['convgen'] * 1e3:>8.0f}{row['torch']:>10.3f}{ort:>9.3f}"
              f"{row['torch'] / row['convgen']:>9.2f}{ort / row['convgen']:>8.2f}"
              f"{row['layers_ms']:>10.3f}{row['convgen'] / row['layers_ms']:>11.2f}"
              f"{row['rel_err']:>9.1e}{row['build_s']:>8.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nets", default=",".join(("resnet18_body", "mobilenet_v1",
                                                    "hifigan_v2", "yolo_silu")))
    parser.add_argument("--seconds", type=float, default=3.0, help="per timed process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", default="native",
                        help="convgen.build's CPU target: native, x86-64-v4, x86-64-v3, generic")
    parser.add_argument("--keep", help="build here (kept) instead of a temporary directory")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--child", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--detail", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    names = args.nets.split(",")
    unknown = sorted(set(names) - set(_networks()))
    if unknown:
        parser.error(f"--nets: unknown network(s) {', '.join(unknown)}; "
                     f"known: {', '.join(_networks())}")
    try:
        import onnxruntime  # noqa: F401
        libraries = LIBRARIES
    except ImportError:
        libraries = LIBRARIES[:2]
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        for name in names:
            work = root / name
            work.mkdir(parents=True, exist_ok=True)
            rows[name] = prepare(name, work, args.threads, args.target)
            rows[name].update(measure(name, work, args, libraries))
    print_table(rows, args.threads, args.target)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    wrong = [name for name, row in rows.items() if not row["rel_err"] <= MAX_REL_ERR]
    if wrong:
        print(f"network.py: convgen's output differs from torch's (relative L2 above "
              f"{MAX_REL_ERR:g}) on {', '.join(wrong)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
