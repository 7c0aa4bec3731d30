"""Ahead-of-time builds: a model's convolutions as standalone C (or CUDA) for deployment.

``convgen.build(model, out_dir, target=..., name=...)`` and ``convgen build MODEL -o
OUT_DIR`` write a directory with one header (``NAME.h``: a context, one function per layer,
``NAME_run`` for the whole graph where every node is supported), the sources, a Makefile
for static and shared libraries, an example program and a README. See ``build.py`` for the
stages, ``json.py`` for the JSON model schema, ``onnx.py`` for the ONNX attribute mapping.
"""
from .build import BuildResult, build, conv_layers, load_model
from .model import ModelError

__all__ = ["BuildResult", "ModelError", "build", "conv_layers", "load_model"]
