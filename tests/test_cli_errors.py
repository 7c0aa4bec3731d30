"""The command line as a user meets it: every error is one line on stderr with a non-zero exit
and no traceback (unless --debug or CONVGEN_DEBUG=1); every flag has an effect; bad values
are refused. The environment cases run ``convgen`` as a subprocess, as a shell would."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from convgen.backends import get_target
from convgen.cli import errors, main
from convgen.cpu.plan import native_vector

LAYER = ["conv2d", "--input", "1,8,9,7", "--weight", "4,8,3,3", "--padding", "1"]
# Forces a compile: the plan no other test asks for, so the kernel cannot be in any cache.
FRESH = ["compile", "conv1d", "--input", "1,3,10", "--weight", "5,3,3", "--dilation", "3"]


def convgen_cli(*argv, cwd=None, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convgen.cli", *argv], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, **env}, timeout=300)


def error_line(stderr: str) -> str:
    """The one error line, after checking there is exactly one and no traceback (warnings,
    one line each, may come before it)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("convgen: warning: ")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("convgen") and ": error: " in lines[0], stderr
    return lines[0]


def fake_compiler(tmp_path):
    """A compiler that knows its version and fails every compile, as a broken toolchain."""
    cc = tmp_path / "fakecc"
    cc.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "fakecc 1.0"; exit 0; }\n'
                  'echo "kernel.c:3:1: error: expected ; before }" >&2\n'
                  'echo "1 error generated." >&2\nexit 1\n')
    cc.chmod(0o755)
    return str(cc)


# -- the environment: compiler, cache directory --------------------------------------------------
def test_missing_compiler_is_one_line(tmp_path):
    done = convgen_cli(*FRESH, "-o", str(tmp_path / "k.c"), CC="/nonexistent/cc",
                       CONVGEN_CACHE_DIR=str(tmp_path / "cache"))
    assert done.returncode == errors.FAILED
    assert error_line(done.stderr) == ("convgen compile: error: C compiler '/nonexistent/cc' not "
                                       "found; set CC to a C compiler on PATH or its full path")


def test_failing_compiler_is_one_line_and_debug_shows_everything(tmp_path):
    env = dict(CC=fake_compiler(tmp_path), CONVGEN_CACHE_DIR=str(tmp_path / "cache"))
    done = convgen_cli(*FRESH, **env)
    assert done.returncode == errors.FAILED
    line = error_line(done.stderr)
    assert "failed on the generated kernel" in line and "kernel.c:3:1: error: expected" in line
    kept = line.split("source kept at ")[1].split(")")[0]
    assert os.path.isfile(kept)                           # the source it names is there
    for debug in (dict(argv=["--debug"]), dict(argv=[], CONVGEN_DEBUG="1")):
        argv = debug.pop("argv")
        done = convgen_cli(*FRESH, *argv, **env, **debug)
        assert done.returncode == errors.FAILED
        assert "Traceback" in done.stderr and "1 error generated." in done.stderr
    done = convgen_cli("--debug", *FRESH, **env)          # before the subcommand as well
    assert "Traceback" in done.stderr


@pytest.mark.parametrize("command", [FRESH, ["cache", "info"], ["cache", "clear"]])
@pytest.mark.parametrize("hostile", ["group-writable", "under-a-file", "at-a-file"])
def test_hostile_cache_directory_is_one_line(tmp_path, command, hostile):
    if hostile == "group-writable":
        root = tmp_path / "shared"
        root.mkdir()
        root.chmod(0o770)
        expected = "writable by group or others (mode 0770)"
    else:
        (tmp_path / "file").write_text("")
        root = tmp_path / "file" / "cache" if hostile == "under-a-file" else tmp_path / "file"
        expected = "which is a file" if hostile == "under-a-file" else "it is a file"
    done = convgen_cli(*command, cwd=tmp_path, CONVGEN_CACHE_DIR=str(root))
    assert done.returncode == errors.REFUSED
    line = error_line(done.stderr)
    assert str(root) in line and expected in line and "CONVGEN_CACHE_DIR" in line
    if hostile != "group-writable":
        assert "chmod" not in line            # not the advice for another problem


def test_oversubscribed_threads_warn_in_one_line(tmp_path):
    cores = len(os.sched_getaffinity(0))
    done = convgen_cli("plan", *LAYER, CONVGEN_NUM_THREADS=str(cores + 1),
                       CONVGEN_CACHE_DIR=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        (f"convgen: warning: CONVGEN_NUM_THREADS={cores + 1} exceeds the {cores} core(s) this "
         f"process may run on: the kernels will oversubscribe them and run slower; set it to "
         f"{cores} or less")]


# -- flags: refused when bad ---------------------------------------------------------------------
BAD = [
    (["plan", *LAYER, "--plan", "winograd9"], "plan must be 'auto', an algorithm name"),
    (["plan", *LAYER, "--plan", "winograd2", "--accuracy", "strict"], "is not exact"),
    (["plan", *LAYER, "--plan", "depthwise"], "does not apply"),
    (["plan", *LAYER, "--plan", "algorithm=direct_simd oc_tile=3"], "plan"),
    (["compile", *LAYER, "--plan", "winograd9"], "plan must be 'auto'"),
    (["plan", *LAYER, "--top", "-1"], "argument --top: expected a positive integer, got '-1'"),
    (["plan", *LAYER, "--top", "0"], "argument --top"),
    (["plan", *LAYER, "--top", "many"], "argument --top"),
    (["plan", *LAYER, "--target", "avx9"], "argument --target: invalid choice: 'avx9'"),
    (["plan", *LAYER, "--dtype", "float16"], "argument --dtype: invalid choice"),
    (["plan", *LAYER, "--accuracy", "exact"], "argument --accuracy: invalid choice"),
    (["plan", *LAYER, "--padding-mode", "mirror"], "argument --padding-mode"),
    (["plan", *LAYER, "--stride", "1,x"], "argument --stride: expected comma-separated"),
    (["plan", *LAYER, "--padding", "full"], "argument --padding"),
    (["plan", *LAYER, "--groups", "0"], "groups must be a positive integer"),
    (["plan", *LAYER, "--stride", "0"], "stride must be positive"),
    (["plan", *LAYER, "--dilation", "-1"], "dilation must be positive"),
    (["plan", *LAYER, "--padding", "-1"], "padding must be non-negative"),
    (["plan", *LAYER, "--output-padding", "1"], "does not take"),
    (["plan", "conv_transpose1d", "--input", "1,3,5", "--weight", "3,2,3", "--padding-mode",
      "reflect"], "does not take"),
    (["plan", "conv2d", "--input", "1,2,5", "--weight", "4,3,3,3"], "input"),
    (["plan", "conv3d", "--input", "1,3,5,5,5"], "required: --weight"),
    (["plan", "conv4d", "--input", "1", "--weight", "1"], "argument op: invalid choice"),
    (["bench", *LAYER, "--min-time", "-1"], "argument --min-time: expected a number of seconds"),
    (["bench", *LAYER, "--min-time", "nan"], "argument --min-time"),
    (["bench", *LAYER, "--min-time", "inf"], "argument --min-time"),
    (["cache", "purge"], "argument action: invalid choice: 'purge'"),
    (["cache"], "required: action"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "required: COMMAND"),
    (["plan", *LAYER, "--unknown-flag"], "unrecognized arguments: --unknown-flag"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[-2:]) for a, _ in BAD])
def test_bad_flags_are_refused_in_one_line(argv, message, capsys):
    assert main(argv) == errors.REFUSED
    captured = capsys.readouterr()
    assert message in error_line(captured.err)
    assert captured.out == ""


def test_bad_flags_from_a_shell(tmp_path):
    done = convgen_cli("plan", *LAYER, "--plan", "winograd9", cwd=tmp_path)
    assert done.returncode == errors.REFUSED and done.stdout == ""
    assert "plan must be 'auto'" in error_line(done.stderr)
    done = convgen_cli("plan", *LAYER, "--top", "-1", cwd=tmp_path)
    assert done.returncode == errors.REFUSED
    assert error_line(done.stderr) == ("convgen plan: error: argument --top: expected a positive "
                                       "integer, got '-1' (see 'convgen plan --help')")


# -- flags: each one has an effect -----------------------------------------------------------------
def plan_text(capsys, *argv) -> str:
    assert main(["plan", *argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


@pytest.mark.parametrize("flags, shown", [
    (["--stride", "2"], "stride=(2, 2)"),
    (["--stride", "2,1"], "stride=(2, 1)"),
    (["--padding", "2,0"], "pad=(2, 0)/(2, 0)"),
    (["--padding", "same", "--weight", "4,8,2,2"], "pad=(0, 0)/(1, 1)"),
    (["--padding", "valid"], "output (1, 4, 7, 5)"),
    (["--dilation", "2"], "dilation=(2, 2)"),
    (["--groups", "2", "--weight", "4,4,3,3"], "groups=2"),
    (["--padding-mode", "reflect"], "padding_mode=reflect"),
    (["--no-bias"], "bias=False"),
    (["--dtype", "float64"], "float64, target"),
    (["--target", "c"], "target c (generic"),
    (["--target", "generic"], "target c (generic"),
    (["--target", "cuda-emu"], "target cuda-emu"),
    (["--accuracy", "strict"], "accuracy strict"),
    (["--input", "8,9,7"], "input (1, 8, 9, 7)"),     # unbatched, as torch
])
def test_each_layer_flag_shows_in_the_plan(flags, shown, capsys):
    argv = list(LAYER)
    for i in range(0, len(flags), 2):     # a flag given twice: argparse keeps the last
        argv += flags[i:i + 2]
    assert shown in plan_text(capsys, *argv)


def test_transposed_flags_show_in_the_plan(capsys):
    base = ["conv_transpose2d", "--input", "1,4,5,5", "--weight", "4,2,3,3", "--stride", "2"]
    assert "output_padding=(1, 1)" in plan_text(capsys, *base, "--output-padding", "1")
    text = plan_text(capsys, *base, "--output-size", "11,12")
    assert "output_padding=(0, 1)" in text and "output (1, 2, 11, 12)" in text


def test_top_shows_that_many(capsys):
    for top in (1, 3):
        text = plan_text(capsys, *LAYER, "--top", str(top))
        assert f"the best {top}:" in text and text.count(" ms  algorithm=") == top


def test_strict_accuracy_keeps_winograd_out_of_the_ranking(capsys):
    layer = ["conv2d", "--input", "1,32,16,16", "--weight", "32,32,3,3", "--padding", "1",
             "--top", "400"]
    assert "winograd" in plan_text(capsys, *layer)
    assert "winograd" not in plan_text(capsys, *layer, "--accuracy", "strict")


def test_plan_marks_the_plan_named_by_plan(capsys):
    auto = plan_text(capsys, *LAYER, "--top", "2")
    assert auto.splitlines()[3].startswith("  *")                    # the planner's first
    text = plan_text(capsys, *LAYER, "--top", "2", "--plan", "direct")
    marked = [line for line in text.splitlines() if line.startswith("  *")]
    assert len(marked) == 1 and "algorithm=direct " in marked[0] and "the chosen plan" in marked[0]
    # A valid plan the planner does not enumerate (3 threads) is still shown as the one used.
    lanes = native_vector(get_target("cpu"), "float32")        # 16 on AVX-512, 8 on AVX2
    custom = (f"algorithm=direct_simd oc_tile=1 pixel_tile={lanes} vector={lanes} "
              "loop_order=oc_outer threads=3")
    text = plan_text(capsys, *LAYER, "--plan", custom)
    marked = [line for line in text.splitlines() if line.startswith("  *")]
    assert len(marked) == 1 and marked[0].endswith(custom) and "not one the planner" in marked[0]


def test_compile_honours_plan_target_and_writes_every_file(tmp_path, capsys):
    assert main(["compile", *LAYER, "--plan", "direct", "--target", "c", "-o",
                 str(tmp_path / "k.c")]) == 0
    source = (tmp_path / "k.c").read_text()
    assert "algorithm=direct " in source and "target: c" in source.lower()
    # A Winograd kernel is two files (its exact fallback): both are written, into a directory.
    assert main(["compile", "conv2d", "--input", "1,16,12,12", "--weight", "16,16,3,3",
                 "--padding", "1", "--plan", "winograd2", "-o", str(tmp_path)]) == 0
    written = sorted(p.name for p in tmp_path.glob("conv2d_*"))
    assert len(written) == 2 and written[1].endswith(".exact.c")


def test_bench_min_time_and_target(capsys):
    assert main(["bench", *LAYER, "--min-time", "0", "--target", "c", "--plan", "direct"]) == 0
    out = capsys.readouterr().out
    assert "median of 5 calls" in out and "target c" in out and "algorithm=direct " in out
    assert main(["bench", "conv1d", "--input", "1,2,6", "--weight", "2,2,3", "--min-time", "0",
                 "--target", "cuda-emu"]) == 0     # CUDA kernels take their weights unpacked
    assert "target cuda-emu" in capsys.readouterr().out


# -- what main does with what a subcommand raises --------------------------------------------------
@pytest.mark.parametrize("exc, status, shown", [
    (AttributeError("'NoneType' object has no attribute 'x'"), errors.FAILED,
     "internal error: AttributeError: 'NoneType' object has no attribute 'x' (a bug in convgen"),
    (KeyboardInterrupt(), errors.INTERRUPTED, "interrupted"),
    (OSError(28, "No space left on device"), errors.REFUSED, "No space left on device"),
    (ValueError("first line\nsecond line"), errors.REFUSED, "first line; second line"),
])
def test_main_reports_anything_a_subcommand_raises(monkeypatch, capsys, exc, status, shown):
    from convgen.cli import cache

    def failing(args):
        raise exc
    monkeypatch.setattr(cache, "run", failing)
    assert main(["cache", "info"]) == status
    assert shown in error_line(capsys.readouterr().err)
    assert main(["cache", "info", "--debug"]) == status
    assert "Traceback" in capsys.readouterr().err


def test_version_and_help_exit_zero(capsys):
    assert main(["--version"]) == 0 and "convgen " in capsys.readouterr().out
    assert main(["plan", "--help"]) == 0 and "--debug" in capsys.readouterr().out
