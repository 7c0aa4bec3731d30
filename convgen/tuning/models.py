"""The conv layers of a model file, for ``convgen tune MODEL``.

Read here: a JSON list of layers in the format of the benchmark suite
(``bench/suite_public.json``)::

    {"layers": [{"name": "conv1", "op": "conv2d", "x": [1, 3, 224, 224],
                 "w": [64, 3, 7, 7], "args": {"stride": 2, "padding": 3},
                 "bias": true, "dtype": "float32"}, ...]}

(``bias`` and ``dtype`` are optional; a bare list of layers works too). A model that
``convgen build`` takes, an ONNX file or a JSON model with weights (``"convgen_model": 1``,
docs/aot.md), is read by the build's own loader (``convgen.aot.conv_layers``): BatchNorm
folded, as the build compiles it, so that ``convgen build --tuning-db`` finds the plans.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..core.layers import spec_from_op


def load_layers(path) -> list[tuple]:
    """``(name, spec, input_shape, dtype)`` for every conv layer of the model file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"model file {str(path)!r} does not exist")
    if path.suffix.lower() == ".onnx":
        return _model_layers(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"model file {path}: not a JSON layer list ({exc})") from exc
    if isinstance(document, dict) and "convgen_model" in document:
        return _model_layers(path)    # a model for `convgen build` (docs/aot.md)
    entries = document.get("layers") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise ValueError(f"model file {path}: expected a list of layers, or an object with a "
                         f"'layers' list")
    return [_layer(entry, i, path) for i, entry in enumerate(entries)]


def _layer(entry, index: int, path: Path) -> tuple:
    where = f"model file {path}, layer {index}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with op, x, w (and args), got {entry!r:.80}")
    missing = {"op", "x", "w"} - set(entry)
    if missing:
        raise ValueError(f"{where}: missing {sorted(missing)}")
    name = str(entry.get("name") or f"layer{index}")
    args = entry.get("args") or {}
    if not isinstance(args, dict):
        raise ValueError(f"{where} ({name}): args must be an object of keyword arguments")
    try:
        spec = spec_from_op(entry["op"], tuple(entry["w"]), bool(entry.get("bias", True)),
                            tuple(entry["x"]), **args)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where} ({name}): {exc}") from exc
    return name, spec, tuple(entry["x"]), entry.get("dtype", "float32")


def _model_layers(path: Path) -> list[tuple]:
    """The convolutions an ahead-of-time build of the model (ONNX, or JSON with weights)
    compiles, under the workloads ``convgen build --tuning-db`` looks up."""
    from ..aot import conv_layers  # lazily: the ONNX loader imports onnx
    return [tuple(layer) for layer in conv_layers(path)]
