"""Ahead-of-time build: a model in, a standalone C library out.

A two-layer model described in JSON (weights in an .npz) is built with ``convgen.build`` for
the portable C target, compiled with ``make``, and run by the generated ``example`` program
-- no Python in that process. Its output is checked against ``convgen``'s own functional ops.

    python examples/aot_build.py [OUT_DIR]      (default: a temporary directory)
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import convgen


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    weights = {"enc.weight": rng.standard_normal((8, 4, 3)), "enc.bias": rng.standard_normal(8),
               "dec.weight": rng.standard_normal((8, 2, 4)), "dec.bias": rng.standard_normal(2)}
    np.savez(out / "tiny.npz", **{k: v.astype(np.float32) for k, v in weights.items()})
    (out / "tiny.json").write_text(json.dumps({
        "convgen_model": 1, "name": "tiny", "weights": "tiny.npz",
        "inputs": {"x": [1, 4, 32]},
        "layers": [
            {"name": "enc", "op": "conv1d", "input": "x", "args": {"padding": 1},
             "epilogue": ["relu"]},
            {"name": "dec", "op": "conv_transpose1d", "input": "enc",
             "args": {"stride": 2, "padding": 1}, "epilogue": ["tanh"]},
        ]}))

    result = convgen.build(out / "tiny.json", out / "build", target="generic")
    print(result)
    subprocess.run(["make", "-C", str(out / "build")], check=True, capture_output=True)

    x = rng.standard_normal((1, 4, 32)).astype(np.float32)
    (out / "in").mkdir(exist_ok=True)
    (out / "res").mkdir(exist_ok=True)
    x.tofile(out / "in" / "graph.x.in.bin")
    subprocess.run([str(out / "build" / "example"), "--graph", str(out / "in"),
                    str(out / "res")], check=True)
    y = np.fromfile(out / "res" / "graph.dec.out.bin", np.float32).reshape(1, 2, 64)

    w = {k: v.astype(np.float32) for k, v in weights.items()}
    enc = np.maximum(convgen.conv1d(x, w["enc.weight"], w["enc.bias"], padding=1), 0)
    expected = np.tanh(convgen.conv_transpose1d(enc, w["dec.weight"], w["dec.bias"], stride=2,
                                                padding=1))
    error = float(np.abs(y - expected).max())
    print(f"C example program vs convgen.conv1d/conv_transpose1d: max difference {error:.1e}")
    assert error < 1e-5


if __name__ == "__main__":
    if len(sys.argv) > 1:
        target = Path(sys.argv[1])
        target.mkdir(parents=True, exist_ok=True)
        main(target)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
