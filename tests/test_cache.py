"""The kernel cache: keys, reuse across processes, atomic publication, damaged entries."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import convgen
from convgen import api, cache, kernel
from convgen.plan import Plan
from convgen.render import render
from convgen.spec import ConvSpec, Workload
from convgen.target import get_target

SPEC = ConvSpec.conv(2, 3, 4, 3, padding=1)
SHAPE = (1, 3, 7, 6)


def forget_loaded_kernels():
    """Drop the in-process memo so the next request goes to the disk cache."""
    kernel._LOADED.clear()
    api._KERNELS.clear()


def counts():
    s = cache.STATS
    return s.compiles, s.disk_hits, s.memory_hits


def key_for(workload, plan, target):
    return cache.key_of(kernel.key_parts(workload, plan, target, render(workload, plan, target)))


def test_key_changes_with_everything_that_changes_the_binary(monkeypatch):
    target = get_target("cpu")
    workload = Workload(SPEC, SHAPE, "float32")
    plan = convgen.plan.plan(workload, target)
    base = key_for(workload, plan, target)
    variants = {
        "dtype": (Workload(SPEC, SHAPE, "float64"), plan, target),
        "shape": (Workload(SPEC, (2, 3, 7, 6), "float32"), plan, target),
        "spec": (Workload(dataclasses.replace(SPEC, bias=False), SHAPE, "float32"), plan, target),
        "plan": (workload, dataclasses.replace(plan, threads=plan.threads + 1), target),
        "target": (workload, plan, get_target("c")),
        "sanitizer": (workload, plan, get_target("cpu", sanitize=True)),
    }
    keys = {name: key_for(*args) for name, args in variants.items()}
    assert base not in keys.values()
    assert len(set(keys.values())) == len(keys)
    # The compiler, the templates and convgen's version are in the key too.
    monkeypatch.setattr(kernel, "compiler_identity", lambda: {"path": "/x/cc", "version": "cc 99"})
    assert key_for(workload, plan, target) != base
    monkeypatch.undo()
    monkeypatch.setattr(kernel, "templates_digest", lambda: "0" * 64)
    assert key_for(workload, plan, target) != base
    monkeypatch.undo()
    monkeypatch.setattr(kernel, "__version__", "999")
    assert key_for(workload, plan, target) != base
    monkeypatch.undo()
    assert key_for(workload, plan, target) == base   # and it is deterministic


def test_memory_then_disk_then_compile(private_cache):
    forget_loaded_kernels()
    before = counts()
    first = convgen.compile(SPEC, SHAPE)
    assert counts()[0] == before[0] + 1                      # compiled once
    assert convgen.compile(SPEC, SHAPE) is first             # then served from memory
    forget_loaded_kernels()
    again = convgen.compile(SPEC, SHAPE)
    assert counts()[0] == before[0] + 1 and counts()[1] == before[1] + 1   # from disk
    assert again.key == first.key
    entry = cache.entry_dir(first.key)
    assert sorted(p.name for p in entry.iterdir()) == ["kernel.c", "kernel.so", "meta.json"]
    assert (entry / "kernel.c").read_text() == first.source
    assert oct(private_cache.stat().st_mode & 0o777) == oct(0o700)


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import convgen, convgen.compiler, convgen.kernel
    def refuse(*args, **kwargs):
        raise AssertionError("the compiler was invoked")
    convgen.compiler.compile_shared = refuse
    convgen.kernel.compile_shared = refuse
    spec = convgen.ConvSpec.conv(2, 3, 4, 3, padding=1)
    k = convgen.compile(spec, (1, 3, 7, 6))
    rng = np.random.default_rng(0)
    y = k(rng.standard_normal((1, 3, 7, 6)).astype(np.float32),
          rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
          rng.standard_normal(4).astype(np.float32))
    s = convgen.cache.STATS
    print(json.dumps({"compiles": s.compiles, "disk_hits": s.disk_hits, "key": k.key,
                      "finite": bool(np.isfinite(y).all())}))
""")


def run_child(cache_dir: Path, script: str = CHILD) -> dict:
    env = {**os.environ, "CONVGEN_CACHE_DIR": str(cache_dir)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_loads_without_compiling(private_cache):
    forget_loaded_kernels()
    key = convgen.compile(SPEC, SHAPE).key
    child = run_child(private_cache)
    assert child == {"compiles": 0, "disk_hits": 1, "key": key, "finite": True}


def _damage(private_cache, how):
    forget_loaded_kernels()
    k = convgen.compile(SPEC, SHAPE)
    library = cache.entry_dir(k.key) / cache.LIBRARY_NAME
    data = bytearray(library.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "bit-flipped":
        data[len(data) // 2] ^= 0x10
    elif how == "replaced":
        other = convgen.compile(ConvSpec.conv(1, 2, 2, 3), (1, 2, 9))
        data = (cache.entry_dir(other.key) / cache.LIBRARY_NAME).read_bytes()
    library.write_bytes(bytes(data))
    forget_loaded_kernels()
    return k.key


@pytest.mark.parametrize("how", ["truncated", "bit-flipped", "replaced"])
def test_damaged_entry_is_discarded_and_rebuilt(private_cache, how):
    key = _damage(private_cache, how)
    compiles = counts()[0]
    with pytest.warns(RuntimeWarning, match="discarding damaged cache entry"):
        k = convgen.compile(SPEC, SHAPE)
    assert k.key == key and counts()[0] == compiles + 1
    meta = json.loads((cache.entry_dir(key) / cache.META_NAME).read_text())
    assert meta["library_sha256"] == cache.file_sha256(cache.entry_dir(key) / cache.LIBRARY_NAME)


def test_meta_with_another_key_is_not_trusted(private_cache):
    forget_loaded_kernels()
    key = convgen.compile(SPEC, SHAPE).key
    meta_path = cache.entry_dir(key) / cache.META_NAME
    meta = json.loads(meta_path.read_text())
    meta["key"] = "f" * 64
    meta_path.write_text(json.dumps(meta))
    forget_loaded_kernels()
    with pytest.warns(RuntimeWarning, match="recorded key differs"):
        convgen.compile(SPEC, SHAPE)


def test_failed_build_leaves_no_entry_and_keeps_the_source(private_cache, monkeypatch):
    forget_loaded_kernels()
    monkeypatch.setattr(kernel, "render", lambda *args: "this is not C;\n")
    with pytest.raises(convgen.CompileError) as info:
        convgen.compile(SPEC, SHAPE)
    err = info.value
    assert "error" in str(err) and str(err.source_path) in str(err)
    assert err.source_path.read_text() == "this is not C;\n"
    assert cache.entries() == [] and list((private_cache / "tmp").iterdir()) == []
    monkeypatch.undo()
    assert np.isfinite(convgen.conv2d(np.ones((1, 3, 7, 6)), np.ones((4, 3, 3, 3)))).all()


CONCURRENT = textwrap.dedent("""
    import json, numpy as np, convgen
    k = convgen.compile(convgen.ConvSpec.conv(2, 3, 4, 3, padding=1), (1, 3, 7, 6))
    y = k(np.ones((1, 3, 7, 6), np.float32), np.ones((4, 3, 3, 3), np.float32),
          np.ones(4, np.float32))
    s = convgen.cache.STATS
    print(json.dumps({"compiles": s.compiles, "disk_hits": s.disk_hits, "key": k.key,
                      "finite": bool(np.isfinite(y).all())}))
""")


SLOW_CC = """#!/bin/sh
# A C compiler that stalls before compiling, so a test can kill the process mid-compile.
case "$*" in *--version*) exec cc "$@";; esac
touch "$STALL_MARK"; sleep 30; exec cc "$@"
"""


def test_process_killed_mid_compile_breaks_nothing(private_cache, tmp_path):
    slow_cc = tmp_path / "slowcc"
    slow_cc.write_text(SLOW_CC)
    slow_cc.chmod(0o755)
    mark = tmp_path / "compiling"
    env = {**os.environ, "CONVGEN_CACHE_DIR": str(private_cache), "CC": str(slow_cc),
           "STALL_MARK": str(mark)}
    child = subprocess.Popen([sys.executable, "-c", CHILD.split("def refuse")[0] +
                              "convgen.compile(convgen.ConvSpec.conv(2, 3, 4, 3, padding=1), "
                              "(1, 3, 7, 6))"], env=env, start_new_session=True)
    deadline = time.time() + 60
    while not mark.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert mark.exists(), "the child never reached the compiler"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert cache.entries(private_cache) == []          # nothing half-published
    child = run_child(private_cache, CONCURRENT)        # the next process just builds it
    assert child["compiles"] == 1 and child["finite"]
    assert len(cache.entries(private_cache)) == 1


def test_concurrent_processes_compiling_the_same_kernel(private_cache):
    env = {**os.environ, "CONVGEN_CACHE_DIR": str(private_cache)}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len({r["key"] for r in results}) == 1 and all(r["finite"] for r in results)
    assert len(cache.entries(private_cache)) == 1
    assert list((private_cache / "tmp").iterdir()) == []


def test_cache_info_and_clear(private_cache, capsys):
    from convgen.cli import main
    forget_loaded_kernels()
    convgen.compile(SPEC, SHAPE)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(private_cache) in out and "entries: 1" in out
    assert main(["cache", "clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert cache.entries() == []
