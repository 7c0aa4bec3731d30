"""The ``convgen`` command line."""
from __future__ import annotations

import subprocess
import sys

import pytest

from convgen.cli import main

LAYER = ["conv2d", "--input", "1,8,9,7", "--weight", "4,8,3,3", "--padding", "1"]


def test_help_lists_the_subcommands():
    done = subprocess.run([sys.executable, "-m", "convgen.cli", "--help"], capture_output=True,
                          text=True, check=True)
    for command in ("compile", "plan", "cache"):
        assert command in done.stdout


def test_plan_explains_the_ranking(capsys):
    assert main(["plan", *LAYER, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "candidate plans" in out and out.count("algorithm=") == 3 and "*" in out
    assert "input (1, 8, 9, 7) -> output (1, 4, 9, 7)" in out


def test_compile_writes_the_source(tmp_path, capsys):
    target = tmp_path / "k.c"
    assert main(["compile", *LAYER, "--padding-mode", "circular", "--dtype", "float64",
                 "-o", str(target)]) == 0
    source = target.read_text()
    assert "do not edit" in source and "typedef double real;" in source
    assert "padding_mode=circular" in source and "plan:" in source


def test_compile_defaults_to_generated_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "conv_transpose1d", "--input", "2,4,9", "--weight", "4,3,4",
                 "--stride", "3", "--output-size", "29", "--no-bias"]) == 0
    (written,) = (tmp_path / "generated").glob("conv_transpose1d_*.c")
    assert "output_padding=(1,)" in written.read_text()


@pytest.mark.parametrize("argv, message", [
    (["plan", "conv2d", "--input", "1,3,5,5", "--weight", "4,3,3,3", "--stride", "2",
      "--padding", "same"], "padding='same' is not supported for strided"),
    (["plan", "conv2d", "--input", "1,2,5,5", "--weight", "4,3,3,3"], "channels"),
    (["compile", "conv1d", "--input", "1,3,5", "--weight", "4,3,3", "--output-size", "5"],
     "does not take"),
])
def test_bad_layers_exit_2_with_the_rule(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
