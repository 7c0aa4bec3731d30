"""The libraries convgen is measured against, each called the way it runs at its best.

torch: the functional op (oneDNN), grad off; padding modes as nn.ConvNd applies them.
onnxruntime: a one-node model (a Pad node first for the non-zero padding modes), all
graph optimisations, the output bound to a preallocated buffer.
"""
from __future__ import annotations

import numpy as np

_ONNX_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def setup_torch(threads: int):
    import torch
    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    return torch


def torch_call(layer: dict, x, w, b):
    import torch
    import torch.nn.functional as F
    args = dict(layer["args"])
    xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
    mode = args.pop("padding_mode", "zeros")
    if mode != "zeros":   # as nn.ConvNd does it: an explicit pad, then the conv
        ndim = len(layer["w"]) - 2
        module = getattr(torch.nn, f"Conv{ndim}d")(
            layer["w"][1] * args.get("groups", 1), layer["w"][0], tuple(layer["w"][2:]),
            padding_mode=mode, dtype=wt.dtype, **args)
        with torch.no_grad():
            module.weight.copy_(wt)
            module.bias.copy_(bt)
        return lambda: module(xt).numpy()
    op = getattr(F, layer["op"])
    return lambda: op(xt, wt, bt, **args).numpy()


def torch_module(layer: dict, w, b):
    """The layer as a torch.nn module holding ``w`` and ``b`` (what a user's model calls)."""
    import torch
    args = dict(layer["args"])
    ndim = len(layer["w"]) - 2
    groups = args.get("groups", 1)
    if layer["op"].startswith("conv_transpose"):
        cls, channels = f"ConvTranspose{ndim}d", (layer["w"][0], layer["w"][1] * groups)
    else:
        cls, channels = f"Conv{ndim}d", (layer["w"][1] * groups, layer["w"][0])
    module = getattr(torch.nn, cls)(*channels, tuple(layer["w"][2:]),
                                    dtype=torch.from_numpy(w).dtype, **args)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w))
        module.bias.copy_(torch.from_numpy(b))
    return module.eval()


def torch_module_call(module, x):
    """``module(x)`` under no_grad, as inference calls it, output as numpy."""
    import torch
    xt = torch.from_numpy(x)

    def call():
        with torch.no_grad():
            return module(xt).numpy()
    return call


def have_onnxruntime() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def torch_version() -> str:
    from importlib.metadata import version
    return version("torch")


def onnxruntime_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def _per_axis(value, ndim: int) -> list[int]:
    return [int(value)] * ndim if isinstance(value, int) else [int(v) for v in value]


def onnx_model(layer: dict, w: np.ndarray, b: np.ndarray):
    """A one-node ONNX model of the layer (Pad + Conv for non-zero padding modes)."""
    from onnx import TensorProto, helper, numpy_helper
    args, ndim = layer["args"], len(layer["w"]) - 2
    pads = _per_axis(args.get("padding", 0), ndim)
    attrs = {"strides": _per_axis(args.get("stride", 1), ndim),
             "dilations": _per_axis(args.get("dilation", 1), ndim),
             "group": int(args.get("groups", 1)), "kernel_shape": list(layer["w"][2:])}
    nodes, conv_input = [], "x"
    mode = args.get("padding_mode", "zeros")
    if mode != "zeros":
        pad_tensor = numpy_helper.from_array(np.array([0, 0, *pads, 0, 0, *pads], np.int64), "pads")
        nodes.append(helper.make_node("Pad", ["x", "pads"], ["xp"], mode=_ONNX_PAD_MODE[mode]))
        conv_input, pads, extra = "xp", [0] * ndim, [pad_tensor]
    else:
        extra = []
    attrs["pads"] = pads + pads
    op = "Conv"
    if layer["op"].startswith("conv_transpose"):
        op = "ConvTranspose"
        attrs["output_padding"] = _per_axis(args.get("output_padding", 0), ndim)
    nodes.append(helper.make_node(op, [conv_input, "w", "b"], ["y"], **attrs))
    graph = helper.make_graph(
        nodes, layer["name"],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(layer["x"]))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"), *extra])
    # IR version 10 (onnx 1.16): new enough for opset 19, old enough for any onnxruntime >= 1.18
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)


def onnxruntime_call(layer: dict, x, w, b, threads: int, out_shape):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx_model(layer, w, b).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    if out_shape is None:   # as the model computes it
        out_shape = session.run(None, {"x": x})[0].shape
    out = np.empty(out_shape, np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y", "cpu", 0, np.float32, list(out_shape), out.ctypes.data)

    def run():
        session.run_with_iobinding(binding)
        return out
    return run
