"""The weights of a build: packed once, at build time, by the kernels' own packing code, and
laid out in one payload (embedded in the sources, or the external weights file).

A CPU kernel reads its weights in its own order (``<prefix>_pack``). The build compiles
each layer's kernel for the target and calls that very function, so the embedded weights
are exactly what the kernel packs at run time -- Winograd transforms and the finite-weights
flag included. Where this machine cannot run the target's code (x86-64-v4 built on a
machine without AVX-512), the same kernel is rendered for a portable twin of the target
(same plan, same vector width, no ISA flags) and its packing code used: the layout is a
function of the workload and plan alone (checked by the tests), and the report says so.
CUDA kernels read the weights as given.

The payload: for each layer its packed weights, then its bias, each starting on a 64-byte
boundary. The external file is a 64-byte header (magic, format version, CRC-32 of the
payload, payload size; little-endian) followed by the payload; the generated code checks
the size, the magic, the version and the CRC-32 it was built with.
"""
from __future__ import annotations

import dataclasses
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..target import Target, host
from .model import ConvLayer

ALIGN_FLOATS = 16           # 64 bytes
MAGIC = b"CONVGENW"
FORMAT_VERSION = 1
HEADER_BYTES = 64


@dataclass(frozen=True, eq=False)
class Packed:
    weights: np.ndarray      # float32, the kernel's order
    workspace_bytes: int
    how: str                 # how the weights were packed, for the report


@dataclass(frozen=True)
class Slot:
    """Where one layer's weights and bias lie in the payload (float offsets)."""

    weights: int
    weight_count: int
    bias: int | None
    bias_count: int


def portable_twin(target: Target) -> Target:
    """``target`` without its ISA flags or features, same vector width: code that runs on
    any machine the host compiler targets, with the kernels' layout unchanged."""
    return dataclasses.replace(target, name=f"{target.name}-portable-pack", arch_flags=(),
                               isa="generic", cpu_features=())


def pack_layer(layer: ConvLayer, workload, plan, build) -> Packed:
    """``layer``'s weights in the order its kernel reads them."""
    if build.cuda:
        return Packed(np.ascontiguousarray(layer.weight, np.float32).reshape(-1), 0,
                      "as given (the CUDA kernels read PyTorch's layout)")
    target, how = build.target, "by the target's own packing code"
    missing = target.missing_features()
    if missing:
        target = portable_twin(target)
        how = (f"by the kernel's packing code built without ISA flags (this machine lacks "
               f"{', '.join(missing)})")
    kernel = build.backend.kernel(workload, plan, target)
    packed = kernel.prepack(layer.weight).packed
    # the target kernel's scratch, which a portable twin's may not be
    workspace = build.backend.workspace_bytes(workload, plan, build.target)
    return Packed(np.array(packed, np.float32), workspace, how)


def pack_all(layers, workloads, plans, build) -> list[Packed]:
    """Every layer packed; the kernels compile in parallel (each is its own cc process)."""
    workers = max(1, min(len(layers), host.usable_cores()))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda args: pack_layer(*args, build),
                             zip(layers, workloads, plans)))


def _aligned(count: int) -> int:
    return -(-count // ALIGN_FLOATS) * ALIGN_FLOATS


def layout(layers, packed: list[Packed]) -> tuple[np.ndarray, list[Slot]]:
    """The payload (float32) and each layer's slot in it."""
    parts, slots, offset = [], [], 0
    for layer, pack in zip(layers, packed):
        count = pack.weights.size
        w_at, offset = offset, offset + _aligned(count)
        parts.append((w_at, pack.weights))
        b_at, b_count = None, 0
        if layer.bias is not None:
            b_count = layer.bias.size
            b_at, offset = offset, offset + _aligned(b_count)
            parts.append((b_at, layer.bias))
        slots.append(Slot(w_at, count, b_at, b_count))
    payload = np.zeros(max(offset, ALIGN_FLOATS), np.float32)
    for at, values in parts:
        payload[at:at + values.size] = np.asarray(values, np.float32).reshape(-1)
    return payload, slots


def payload_bytes(payload: np.ndarray) -> bytes:
    return payload.astype("<f4").tobytes()


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def weights_file(payload: np.ndarray) -> bytes:
    """The external weights file: header, then the payload."""
    data = payload_bytes(payload)
    header = struct.pack("<8sIIQ", MAGIC, FORMAT_VERSION, crc32(data), len(data))
    return header.ljust(HEADER_BYTES, b"\0") + data


def hex_words(payload: np.ndarray, per_line: int = 8) -> list[str]:
    """The payload as lines of 32-bit hexadecimal words (exact, and independent of the
    compiler's float parsing and of byte order)."""
    words = payload.astype("<f4").view("<u4")
    text = [f"0x{w:08x}u" for w in words.tolist()]
    return [", ".join(text[i:i + per_line]) for i in range(0, len(text), per_line)]
