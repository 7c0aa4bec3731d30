"""The kernel cache: keys, reuse across processes, atomic publication, damaged entries."""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import convgen
import convgen.cpu.build
from convgen.backends import get_target
from convgen.core.spec import ConvSpec, Workload
from convgen.cpu import BACKEND
from convgen.cpu import compile as compiler
from convgen.runtime import cache, loader, pipeline
from convgen.runtime import kernel as runtime_kernel
from convgen.target import host as host_module

SPEC = ConvSpec.conv(2, 3, 4, 3, padding=1)
SHAPE = (1, 3, 7, 6)


def forget_loaded_kernels():
    """Drop the in-process memo so the next request goes to the disk cache."""
    runtime_kernel.forget_loaded()


def counts():
    s = cache.STATS
    return s.compiles, s.disk_hits, s.memory_hits


def key_for(workload, plan, target):
    return cache.key_of(pipeline.generate(BACKEND, workload, plan, target)[2])


def test_key_changes_with_everything_that_changes_the_binary(monkeypatch):
    target = get_target("cpu")
    workload = Workload(SPEC, SHAPE, "float32")
    plan = convgen.api.choose_plan(workload, target)
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
    monkeypatch.setattr(compiler, "compiler_identity",
                        lambda: {"path": "/x/cc", "version": "cc 99"})
    assert key_for(workload, plan, target) != base
    monkeypatch.undo()
    monkeypatch.setattr(convgen.cpu.build, "templates_digest", lambda *dirs: "0" * 64)
    assert key_for(workload, plan, target) != base
    monkeypatch.undo()
    # what -march=native means here: the same flags on another CPU gcc tunes otherwise
    monkeypatch.setattr(compiler, "native_expansion",
                        lambda target: ("-march=znver5", "-mtune=znver5"))
    assert key_for(workload, plan, target) != base
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "__version__", "999")
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
    import convgen, convgen.cpu.compile
    from convgen.runtime import cache
    def refuse(*args, **kwargs):
        raise AssertionError("the compiler was invoked")
    convgen.cpu.compile.compile_shared = refuse
    spec = convgen.ConvSpec.conv(2, 3, 4, 3, padding=1)
    k = convgen.compile(spec, (1, 3, 7, 6))
    rng = np.random.default_rng(0)
    y = k(rng.standard_normal((1, 3, 7, 6)).astype(np.float32),
          rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
          rng.standard_normal(4).astype(np.float32))
    s = cache.STATS
    print(json.dumps({"compiles": s.compiles, "disk_hits": s.disk_hits, "key": k.key,
                      "finite": bool(np.isfinite(y).all())}))
""")


def run_child(cache_dir: Path, script: str = CHILD, extra_env: dict | None = None) -> dict:
    env = {**os.environ, "CONVGEN_CACHE_DIR": str(cache_dir), **(extra_env or {})}
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
    monkeypatch.setattr(convgen.cpu.render, "render",
                        lambda *args: (("kernel.c", "this is not C;\n"),))
    with pytest.raises(convgen.CompileError) as info:
        convgen.compile(SPEC, SHAPE)
    err = info.value
    assert "error" in str(err) and str(err.source_path) in str(err)
    assert err.source_path.read_text() == "this is not C;\n"
    assert cache.entries() == [] and list((private_cache / "tmp").iterdir()) == []
    monkeypatch.undo()
    assert np.isfinite(convgen.conv2d(np.ones((1, 3, 7, 6)), np.ones((4, 3, 3, 3)))).all()


CONCURRENT = textwrap.dedent("""
    import json, os, time, numpy as np, convgen
    from convgen.runtime import cache
    go = os.environ.get("GO_MARK")
    while go and not os.path.exists(go):   # start together: all of them miss the cache
        time.sleep(0.005)
    k = convgen.compile(convgen.ConvSpec.conv(2, 3, 4, 3, padding=1), (1, 3, 7, 6))
    y = k(np.ones((1, 3, 7, 6), np.float32), np.ones((4, 3, 3, 3), np.float32),
          np.ones(4, np.float32))
    s = cache.STATS
    print(json.dumps({"compiles": s.compiles, "disk_hits": s.disk_hits, "key": k.key,
                      "finite": bool(np.isfinite(y).all())}))
""")


SLOW_CC = """#!/bin/sh
# A C compiler that logs each compile and stalls before it: every process waiting for
# the lock arrives while the first one compiles, and a test can kill it mid-compile.
# (Neither its version, its expansion of -march=native (-###) nor gcc's precompiled header,
# built outside the lock, is a kernel.)
case "$*" in *--version*|*-###*|*c-header*) exec cc "$@";; esac
echo compile >> "$CC_LOG"; touch "$STALL_MARK"; sleep "$STALL_SECONDS"; exec cc "$@"
"""


@pytest.fixture
def slow_cc(tmp_path):
    """Environment for children compiling with SLOW_CC (one CC path: one cache key)."""
    path = tmp_path / "slowcc"
    path.write_text(SLOW_CC)
    path.chmod(0o755)
    return {"CC": str(path), "CC_LOG": str(tmp_path / "cc.log"),
            "STALL_MARK": str(tmp_path / "compiling"), "STALL_SECONDS": "30"}


def compile_log(env) -> int:
    log = Path(env["CC_LOG"])
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_process_killed_mid_compile_breaks_nothing(private_cache, slow_cc):
    env = {**os.environ, "CONVGEN_CACHE_DIR": str(private_cache), **slow_cc}
    child = subprocess.Popen([sys.executable, "-c", CONCURRENT], env=env,
                             start_new_session=True, stdout=subprocess.DEVNULL)
    mark = Path(slow_cc["STALL_MARK"])
    deadline = time.time() + 60
    while not mark.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert mark.exists(), "the child never reached the compiler"
    (lock,) = [p for p in (private_cache / "locks").glob("*.lock") if len(p.stem) == 64]
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert cache.entries(private_cache) == []          # nothing half-published
    # The next process builds the same key with the same compiler, so it needs the lock
    # the killed one held: the kernel released it, and nobody waits LOCK_TIMEOUT_S.
    started = time.monotonic()
    child = run_child(private_cache, CONCURRENT, {**slow_cc, "STALL_SECONDS": "0"})
    assert child["compiles"] == 1 and child["finite"]
    assert time.monotonic() - started < 60 < cache.LOCK_TIMEOUT_S
    assert lock.exists() and len(cache.entries(private_cache)) == 1
    assert compile_log(slow_cc) == 2


def test_eight_processes_compile_one_kernel_once(private_cache, slow_cc, tmp_path):
    go = tmp_path / "go"
    env = {**os.environ, "CONVGEN_CACHE_DIR": str(private_cache), **slow_cc,
           "STALL_SECONDS": "2", "GO_MARK": str(go)}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(8)]
    time.sleep(0.5)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len({r["key"] for r in results}) == 1 and all(r["finite"] for r in results)
    # One compiled (under the lock, for 2 s); the seven others waited and loaded its entry.
    assert sorted(r["compiles"] for r in results) == [0] * 7 + [1]
    assert sum(r["disk_hits"] for r in results) == 7
    assert compile_log(slow_cc) == 1
    assert len(cache.entries(private_cache)) == 1
    assert list((private_cache / "tmp").iterdir()) == []
    assert cache.info()["misses"] == 1 and cache.info()["hits"] == 7


def test_threads_compiling_same_and_different_kernels(private_cache):
    forget_loaded_kernels()
    shapes = [(1, 3, 7, 6), (1, 3, 8, 6), (2, 3, 7, 6)]
    barrier = threading.Barrier(8)
    compiles = counts()[0]

    def work(i):
        barrier.wait()
        return convgen.compile(SPEC, shapes[i % 3])

    with ThreadPoolExecutor(8) as pool:
        kernels = list(pool.map(work, range(8)))
    assert len({k.key for k in kernels}) == 3
    assert counts()[0] == compiles + 3                  # each kernel compiled once
    rng = np.random.default_rng(1)
    for k in kernels:
        x = rng.standard_normal(k.input_shape).astype(np.float32)
        w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        assert np.isfinite(k(x, w, np.zeros(4, np.float32))).all()


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


# -- a cache only its user can write --------------------------------------------------------
def no_compiling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the compiler was invoked")
    monkeypatch.setattr(compiler, "compile_shared", refuse)


def test_new_cache_and_its_subdirectories_are_private(private_cache):
    forget_loaded_kernels()
    convgen.compile(SPEC, SHAPE)
    for path in (private_cache, *(private_cache / sub for sub in cache.PRIVATE_SUBDIRS)):
        assert path.stat().st_mode & 0o777 == 0o700, path


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o720, 0o702])
def test_cache_writable_by_others_is_refused(private_cache, monkeypatch, mode):
    forget_loaded_kernels()
    convgen.compile(SPEC, SHAPE)             # a good entry is there ...
    forget_loaded_kernels()
    private_cache.chmod(mode)
    no_compiling(monkeypatch)
    with pytest.raises(cache.CacheError, match="writable by group or others") as info:
        convgen.compile(SPEC, SHAPE)        # ... and is not loaded from a shared directory
    assert str(private_cache) in str(info.value) and f"{mode & 0o7777:04o}" in str(info.value)
    assert isinstance(info.value, PermissionError)
    assert private_cache.stat().st_mode & 0o7777 == mode   # refused, not silently chmod-ed
    for call in (cache.info, cache.clear, lambda: cache.fetch("0" * 64)):
        with pytest.raises(cache.CacheError):
            call()
    assert len(cache.entries(private_cache)) == 1          # clear() removed nothing


@pytest.mark.parametrize("sub", cache.PRIVATE_SUBDIRS)
def test_shared_subdirectory_is_refused(private_cache, sub):
    cache.checked_root()
    (private_cache / sub).chmod(0o777)
    forget_loaded_kernels()
    with pytest.raises(cache.CacheError, match=f"{private_cache / sub}.*writable"):
        convgen.compile(SPEC, SHAPE)


def test_subdirectory_replaced_by_a_symlink_is_refused(private_cache, tmp_path):
    cache.checked_root()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (private_cache / "kernels").rmdir()
    (private_cache / "kernels").symlink_to(elsewhere)
    forget_loaded_kernels()
    with pytest.raises(cache.CacheError, match="not a directory"):
        convgen.compile(SPEC, SHAPE)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
@pytest.mark.parametrize("where", ["root", "kernels"])
def test_cache_owned_by_another_user_is_refused(private_cache, monkeypatch, where):
    forget_loaded_kernels()
    convgen.compile(SPEC, SHAPE)
    forget_loaded_kernels()
    path = private_cache if where == "root" else private_cache / "kernels"
    os.chown(path, 65534, 65534)             # nobody
    no_compiling(monkeypatch)
    with pytest.raises(cache.CacheError, match="owned by uid 65534") as info:
        convgen.compile(SPEC, SHAPE)
    assert str(path) in str(info.value)


@pytest.mark.filterwarnings("ignore:convgen. ignoring the fitted machine model")
@pytest.mark.parametrize("under", ["", "sub", "sub/deeper"])
def test_root_at_or_under_a_file_is_refused_with_the_fix(tmp_path, monkeypatch, under):
    (tmp_path / "file").write_text("")
    root = tmp_path / "file" / under if under else tmp_path / "file"
    monkeypatch.setenv("CONVGEN_CACHE_DIR", str(root))
    forget_loaded_kernels()
    where = "is a file" if not under else f"lies under {tmp_path / 'file'}, which is a file"
    with pytest.raises(cache.CacheError) as info:
        convgen.compile(SPEC, SHAPE)
    message = str(info.value)
    assert f"cache directory {root}: it {where}" in message
    assert "set CONVGEN_CACHE_DIR to a directory" in message and "chmod" not in message


def test_relative_cache_dir_is_made_absolute_once(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setenv("CONVGEN_CACHE_DIR", "rel-cache-for-test")
    assert cache.cache_root() == tmp_path / "a" / "rel-cache-for-test"
    monkeypatch.chdir(tmp_path / "b")        # the cache does not follow the working directory
    assert cache.checked_root() == tmp_path / "a" / "rel-cache-for-test"
    assert not (tmp_path / "b" / "rel-cache-for-test").exists()


def test_cli_reports_an_unsafe_cache(private_cache, capsys):
    from convgen.cli import main
    cache.checked_root()
    private_cache.chmod(0o777)
    assert main(["cache", "info"]) == 2
    assert "writable by group or others" in capsys.readouterr().err


# -- another machine's kernels ------------------------------------------------------------------
def test_another_cpus_entry_is_never_loaded(private_cache, monkeypatch):
    """A cache shared by two machines (an NFS home): the same layer, target 'cpu', and
    '-march=native' flags on both, but CPU features differ, so the keys differ and each
    machine compiles its own kernel instead of loading the other's."""
    forget_loaded_kernels()
    ours = convgen.compile(SPEC, SHAPE)
    real = host_module.cpu_features
    features = real()
    other = tuple(f for f in features if not f.startswith("avx512")) \
        if "avx512f" in features else features + ("avx512f",)
    monkeypatch.setattr(host_module, "cpu_features", lambda: other)
    forget_loaded_kernels()
    compiles, disk_hits = counts()[:2]
    theirs = convgen.compile(SPEC, SHAPE)
    assert theirs.target.cpu_features == other and theirs.target.arch_flags == ("-march=native",)
    assert theirs.key != ours.key
    assert counts()[:2] == (compiles + 1, disk_hits)       # compiled, not loaded
    meta = json.loads((cache.entry_dir(theirs.key) / cache.META_NAME).read_text())
    assert meta["parts"]["target"]["cpu_features"] == list(other)
    # and an entry of the other machine copied under our key is not trusted either
    ours_dir, theirs_dir = cache.entry_dir(ours.key), cache.entry_dir(theirs.key)
    shutil.rmtree(ours_dir)
    shutil.copytree(theirs_dir, ours_dir)
    # back to this machine (not monkeypatch.undo(), which would drop the private cache too)
    monkeypatch.setattr(host_module, "cpu_features", real)
    forget_loaded_kernels()
    with pytest.warns(RuntimeWarning, match="recorded key differs"):
        assert convgen.compile(SPEC, SHAPE).key == ours.key


def test_the_key_holds_what_the_compiler_makes_of_native():
    """Two VMs reporting "AMD EPYC" with equal AVX-512 flags were a Zen 4 and a Zen 5:
    gcc picks another -march/-mtune and other instructions for each, so the key holds its
    expansion of -march=native, and named targets (the AOT build's) stay host-free."""
    native = pipeline.key_parts(BACKEND, Workload(SPEC, SHAPE, "float32"),
                                convgen.api.choose_plan(Workload(SPEC, SHAPE, "float32"),
                                                        get_target("cpu")), get_target("cpu"))
    assert any(flag.startswith("-march=") and flag != "-march=native"
               for flag in native["native"]), native["native"]
    assert any(flag.startswith("-mtune=") for flag in native["native"])
    named = get_target("x86-64-v3")
    assert "native" not in BACKEND.toolchain_parts(named)


def test_the_drivers_cc1_line_is_read_for_machine_options():
    from convgen.core import toolchain
    line = (' /usr/lib/gcc/x86_64-linux-gnu/12/cc1 -quiet -imultiarch x86_64-linux-gnu '
            '/dev/null "-march=znver3" -mmmx -mno-avx512vp2intersect --param '
            '"l1-cache-size=32" --param "l2-cache-size=1024" "-mtune=znver3" '
            '-auxbase-strip /dev/null -o /tmp/ccX.s')
    assert toolchain._machine_options(shlex.split(line)[1:]) == (
        "-march=znver3", "-mmmx", "-mno-avx512vp2intersect", "--param=l1-cache-size=32",
        "--param=l2-cache-size=1024", "-mtune=znver3")
    clang = ('"/usr/bin/clang-15" "-cc1" "-triple" "x86_64-pc-linux-gnu" "-target-cpu" '
             '"znver4" "-target-feature" "+avx512f" "-tune-cpu" "generic" "-O3"')
    assert toolchain._machine_options(shlex.split(clang)[1:]) == (
        "-target-cpu=znver4", "-target-feature=+avx512f", "-tune-cpu=generic")
    assert toolchain.native_expansion("/nonexistent/cc", ("-march=native",)) == ()
    assert toolchain.native_expansion("/nonexistent/cc", ("-march=x86-64-v3",)) == ()


# -- the compile-once lock ----------------------------------------------------------------------
def test_lock_is_not_held_while_loading(private_cache, monkeypatch):
    forget_loaded_kernels()
    real_load, seen = loader.load, []

    def load_and_probe(library, names):
        for lock in (private_cache / "locks").glob("*.lock"):
            with cache._try_lock(lock) as free:
                seen.append(free)
        return real_load(library, names)

    monkeypatch.setattr(loader, "load", load_and_probe)
    convgen.compile(SPEC, SHAPE)
    assert seen and all(seen)


# -- the size cap -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("", cache.DEFAULT_MAX_BYTES), ("1000", 1000), ("2G", 2 * 1024 ** 3), ("64MiB", 64 << 20),
    ("512k", 512 << 10), ("0", None), ("none", None), ("None", None)])
def test_max_bytes_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv("CONVGEN_CACHE_MAX_BYTES", text)
    assert cache.max_bytes() == expected


@pytest.mark.parametrize("text", ["-1", "lots", "1.5G", "2X"])
def test_malformed_max_bytes_is_refused_before_compiling(private_cache, monkeypatch, text):
    monkeypatch.setenv("CONVGEN_CACHE_MAX_BYTES", text)
    no_compiling(monkeypatch)
    forget_loaded_kernels()
    with pytest.raises(ValueError, match="CONVGEN_CACHE_MAX_BYTES"):
        convgen.compile(SPEC, SHAPE)


def test_least_recently_used_entries_are_evicted(private_cache, monkeypatch):
    monkeypatch.setenv("CONVGEN_CACHE_MAX_BYTES", "none")
    forget_loaded_kernels()
    a, b, c = (convgen.compile(SPEC, shape) for shape in [(1, 3, 7, 6), (1, 3, 8, 6),
                                                          (1, 3, 9, 6)])
    sizes = {k.key: cache._entry_bytes(cache.entry_dir(k.key)) for k in (a, b, c)}
    cache.remove(cache.entry_dir(c.key))
    now = time.time()
    for k, age in ((a, 100), (b, 50)):                 # a used long ago, b more recently ...
        os.utime(cache.entry_dir(k.key) / cache.META_NAME, (now - age, now - age))
    forget_loaded_kernels()
    convgen.compile(SPEC, a.input_shape)               # ... and now a again (a disk hit)
    monkeypatch.setenv("CONVGEN_CACHE_MAX_BYTES", str(sum(sizes.values()) - 1))
    evicted = cache.info()["evicted"]
    forget_loaded_kernels()
    convgen.compile(SPEC, c.input_shape)               # publishing c overflows: b goes
    assert {e.name for e in cache.entries()} == {a.key, c.key}
    assert cache.info()["evicted"] == evicted + 1


def test_the_entry_just_published_is_never_evicted(private_cache, monkeypatch):
    forget_loaded_kernels()
    convgen.compile(SPEC, (1, 3, 7, 6))
    monkeypatch.setenv("CONVGEN_CACHE_MAX_BYTES", "1")     # smaller than any entry
    forget_loaded_kernels()
    k = convgen.compile(SPEC, (1, 3, 8, 6))
    assert [e.name for e in cache.entries()] == [k.key]
    y = k(np.ones((1, 3, 8, 6), np.float32), np.ones((4, 3, 3, 3), np.float32),
          np.zeros(4, np.float32))
    assert y.shape == (1, 4, 8, 6) and np.isfinite(y).all()


def test_stale_temp_builds_are_swept(private_cache):
    cache.checked_root()
    stale, fresh = private_cache / "tmp" / "stale-build", private_cache / "tmp" / "fresh-build"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - cache.STALE_TMP_S - 10
    os.utime(stale, (old, old))
    forget_loaded_kernels()
    convgen.compile(SPEC, SHAPE)
    assert not stale.exists() and fresh.exists()


# -- counts -------------------------------------------------------------------------------------
def test_hit_and_miss_counts_persist_across_processes(private_cache, capsys):
    from convgen.cli import main
    forget_loaded_kernels()
    convgen.compile(SPEC, SHAPE)                        # a miss, here
    run_child(private_cache)                            # a hit, in another process
    info = cache.info()
    assert (info["hits"], info["misses"], info["entries"]) == (1, 1, 1)
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "hits: 1  misses: 1" in out and "limit 2147.48 MB" in out
    main(["cache", "clear"])
    assert (cache.info()["hits"], cache.info()["misses"]) == (0, 0)


def test_memory_hits_do_not_touch_the_disk(private_cache, monkeypatch):
    forget_loaded_kernels()
    convgen.compile(SPEC, SHAPE)
    runtime_kernel._KERNELS.clear()      # go through the pipeline's in-memory table

    def no_disk(*args, **kwargs):
        raise AssertionError("the disk cache was touched for a kernel already loaded")

    for name in ("checked_root", "get_or_build", "_fetch", "_record"):
        monkeypatch.setattr(cache, name, no_disk)
    memory_hits = counts()[2]
    convgen.compile(SPEC, SHAPE)
    assert counts()[2] == memory_hits + 1
