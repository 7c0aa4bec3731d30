"""The native runtime: threads, and a process that exits cleanly whatever OpenMP is doing."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import convgen
from convgen.runtime.threads import default_threads

CHILD = """
import numpy as np, convgen
k = convgen.compile(convgen.ConvSpec.conv(2, 16, 16, 3, padding=1), (2, 16, 24, 24))
x, w = np.ones((2, 16, 24, 24), np.float32), np.ones((16, 16, 3, 3), np.float32)
assert k.plan.threads == 2, k.plan
for _ in range(5):
    k(x, w, np.ones(16, np.float32))
print("ok")
"""


@pytest.mark.parametrize("policy", ["ACTIVE", "PASSIVE", ""])
def test_process_exits_cleanly_with_openmp_workers_alive(policy, tmp_path):
    # Unloading libgomp at exit under spinning workers used to crash the interpreter (SIGSEGV).
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "CONVGEN_NUM_THREADS": "2",
           "CONVGEN_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_num_threads_from_the_environment(monkeypatch):
    monkeypatch.setenv("CONVGEN_NUM_THREADS", "3")
    with warnings.catch_warnings():   # 3 threads on fewer cores warns (test_public_api.py)
        warnings.simplefilter("ignore", RuntimeWarning)
        assert default_threads() == 3
    k = convgen.compile(convgen.ConvSpec.conv(2, 8, 8, 3), (4, 8, 40, 40))
    assert k.plan.threads == 3 and "num_threads(3)" in k.source
    monkeypatch.setenv("CONVGEN_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="CONVGEN_NUM_THREADS"):
        default_threads()
    monkeypatch.delenv("CONVGEN_NUM_THREADS")
    assert default_threads() == len(os.sched_getaffinity(0))


def test_tiny_work_runs_on_one_thread():
    k = convgen.compile(convgen.ConvSpec.conv(1, 2, 2, 3), (1, 2, 8))
    assert k.plan.threads == 1 and "omp parallel" not in k.source
    y = k(np.ones((1, 2, 8), np.float32), np.ones((2, 2, 3), np.float32), np.zeros(2, np.float32))
    assert (y == 6).all()


def _child(code: str, **env_changes) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(env_changes)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_convgen_keeps_openmp_workers_spinning_by_default():
    code = ("import os, convgen.runtime.openmp as o; "
            "print(o.STATUS, os.environ.get('GOMP_SPINCOUNT'))")
    assert _child(code) == "GOMP_SPINCOUNT=3000000 3000000"
    # the user's settings win
    assert _child(code, OMP_WAIT_POLICY="PASSIVE").startswith("user settings kept None")
    assert _child(code, GOMP_SPINCOUNT="7") == "user settings kept 7"
    # too late once an OpenMP runtime is loaded: say so, change nothing
    late = "import torch; " + code
    assert _child(late).startswith("an OpenMP runtime was already loaded")


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 1000), (300001,)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_aligned_empty_starts_on_a_cache_line(shape, dtype):
    from convgen.runtime.arrays import ALIGNMENT, aligned_empty
    for _ in range(4):   # numpy's own allocations land 16 bytes past a line for big arrays
        a = aligned_empty(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous
        assert a.ctypes.data % ALIGNMENT == 0
        a[...] = 1.5
        assert float(a.sum()) == 1.5 * a.size


def test_buffers_convgen_allocates_are_cache_line_aligned():
    """Packed weights and the scratch workspace start on a 64-byte line (a 64-byte vector
    load 16 bytes past one reads two lines: conv3d_128_256 ran 20% slower that way); outputs
    and a caller's arrays need not."""
    from convgen.cpu.kernel import _scratch
    from convgen.runtime.arrays import ALIGNMENT
    kernel = convgen.compile(convgen.ConvSpec.conv(2, 64, 96, 3, padding=1), (1, 64, 30, 30),
                             plan="implicit_gemm")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 64, 30, 30)).astype(np.float32)
    w = rng.standard_normal((96, 64, 3, 3)).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32)
    packed = kernel.prepack(w)
    assert packed.packed.ctypes.data % ALIGNMENT == 0 and not packed.packed.flags.writeable
    y = kernel(x, packed, b)
    assert _scratch(kernel.workspace_elements, kernel.dtype)[0].ctypes.data % ALIGNMENT == 0
    shifted = np.empty(y.size + 1, np.float32)[1:].reshape(y.shape)   # 4 bytes off a line
    np.testing.assert_array_equal(kernel(x[...], w, b, out=shifted), y)


def test_a_large_output_convgen_allocates_starts_on_a_cache_line():
    """Without out=, an output of ALIGNED_OUTPUT_BYTES or more starts on a line (a vector
    store 16 bytes past one writes two lines); a small one is numpy's own (aligning costs
    about 2 us a call), and either holds the layer's result."""
    from convgen.runtime.arrays import ALIGNED_OUTPUT_BYTES, ALIGNMENT, output_array
    rng = np.random.default_rng(6)
    for size in (8, 64):   # outputs of 16 x size x size floats: 4 KiB and 256 KiB ...
        x = rng.standard_normal((4, 8, size, size)).astype(np.float32)
        w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
        kernel = convgen.compile(convgen.ConvSpec.conv(2, 8, 16, 3, padding=1, bias=False),
                                 x.shape)
        y = kernel(x, w)
        big = y.nbytes >= ALIGNED_OUTPUT_BYTES      # ... times the batch: 16 KiB and 1 MiB
        assert big == (size == 64)
        assert not big or y.ctypes.data % ALIGNMENT == 0
        assert y.shape == (4, 16, size, size) and y.flags.c_contiguous and y.flags.writeable
        np.testing.assert_allclose(y, convgen.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)
    for _ in range(4):
        a = output_array((ALIGNED_OUTPUT_BYTES // 4 + 3,), np.dtype(np.float32))
        assert a.ctypes.data % ALIGNMENT == 0 and a.shape == (ALIGNED_OUTPUT_BYTES // 4 + 3,)


def test_packed_weights_pickle_and_copy():
    """PackedWeights hold a C pointer of their process: pickled or copied, they come back
    with a fresh one, read-only and on a cache line again."""
    import copy
    import pickle

    from convgen.runtime.arrays import ALIGNMENT
    kernel = convgen.compile(convgen.ConvSpec.conv(2, 8, 16, 3, padding=1), (1, 8, 12, 12))
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    packed = kernel.prepack(w)
    y = kernel(x, packed, b)
    for again in (pickle.loads(pickle.dumps(packed)), copy.deepcopy(packed)):
        assert again.packed.ctypes.data % ALIGNMENT == 0 and not again.packed.flags.writeable
        np.testing.assert_array_equal(kernel(x, again, b), y)
