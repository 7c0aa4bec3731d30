"""Compile and call: a convolution layer as a kernel generated for its shape, on numpy arrays.

Run it from anywhere once convgen is installed: ``python examples/compile_and_call.py``.
The first run compiles two kernels (about a second); later runs load them from the cache.
"""
import numpy as np

import convgen

rng = np.random.default_rng(0)
x = rng.standard_normal((1, 16, 32, 32), dtype=np.float32)

# A module: torch.nn.Conv2d's arguments, attributes and initial weights; numpy in and out.
convgen.nn.manual_seed(0)
layer = convgen.nn.Conv2d(16, 32, kernel_size=3, padding=1)
y = layer(x)                         # compiles a kernel for this input shape on the first call
print("module:", layer, "->", y.shape, y.dtype)

# The same layer compiled explicitly: the kernel, its plan, weights packed once, output reused.
kernel = convgen.compile(layer, x.shape)
print("plan:", kernel.plan)
packed = kernel.prepack(layer.weight)
out = np.empty(kernel.output_shape, kernel.dtype)
kernel(x, packed, layer.bias, out=out)
print("same result as the module:", np.array_equal(out, y))

# float64 and exact algorithms only (no Winograd): a reference for the float32 result.
exact = convgen.compile(layer, x.shape, dtype="float64", accuracy="strict")
as64 = [a.astype(np.float64) for a in (x, layer.weight, layer.bias)]
print(f"float32 vs float64: max difference {np.abs(y - exact(*as64)).max():.1e}")

# Weights in and out with torch's key names, from numpy arrays or CPU torch tensors (a torch
# checkpoint loads as it is: layer.load_state_dict(torch_conv.state_dict())).
bias = layer.bias[:, None, None]
layer.load_state_dict({"weight": layer.weight / 2, "bias": np.zeros(32, np.float32)})
print("state_dict keys:", list(layer.state_dict()))
print("half the weights, zero bias:", np.allclose(layer(x), (y - bias) / 2, atol=1e-5))
