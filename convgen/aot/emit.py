"""Render a build through templates/aot/ and write OUT_DIR atomically.

Python decides (names, offsets, sizes, the operations of NAME_run); the templates lay it
out. Text from the model reaches the generated files only through ``c_comment`` (a
printable subset that cannot end a comment, splice a line or form a trigraph); everything
else is a C identifier from ``core.names`` or a number.

OUT_DIR is written as a whole: the files go into a fresh directory beside it, which is
renamed into place in one step (a previous build there is replaced the same way). A build
that fails leaves nothing behind, and no file is written outside that directory: every
path is checked to be a plain relative path of safe components.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import jinja2

from ..core.paths import templates_dir

REPORT = "build_report.json"
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_COMMENT_UNSAFE = re.compile(r"[^ -~]|[*?\\]")
COMMENT_LENGTH = 240


def c_comment(value) -> str:
    """``value`` as text safe inside a C block comment (and a Makefile or Markdown line):
    printable ASCII without '*', '?' or backslash, at most COMMENT_LENGTH characters."""
    text = _COMMENT_UNSAFE.sub("_", str(value))
    if len(text) > COMMENT_LENGTH:
        text = f"{text[:COMMENT_LENGTH - 30]}... ({len(text)} characters)"
    return text


@functools.cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters["c_comment"] = c_comment
    return env


def render(template: str, context: dict) -> str:
    try:
        return environment().get_template(template).render(context)
    except jinja2.TemplateError as exc:
        where = f"{getattr(exc, 'filename', None) or template}:{getattr(exc, 'lineno', '?')}"
        raise RuntimeError(f"rendering {where} failed: {exc}") from exc


def stream(template: str, context: dict) -> Iterable[str]:
    """A template rendered piece by piece (the embedded weights can be large)."""
    return environment().get_template(template).generate(context)


# -- the files of a build -------------------------------------------------------------------------
def files(context: dict, kernels: list[tuple[str, str]], report: dict,
          weights_file: bytes | None, rows) -> dict[str, object]:
    """Every file of OUT_DIR: relative path -> text, bytes, or an iterable of text pieces."""
    name, cuda = context["name"], context["target"]["cuda"]
    out: dict[str, object] = {
        f"{name}.h": render("aot/header.h.j2", context),
        f"{name}.cu" if cuda else f"{name}.c":
            render("aot/context.cu.j2" if cuda else "aot/context.c.j2", context),
        "Makefile": render("aot/Makefile.cuda.j2" if cuda else "aot/Makefile.j2", context),
        "example.c": render("aot/example.c.j2", context),
        "README.md": render("aot/README.md.j2", context),
        REPORT: json.dumps(report, indent=2, sort_keys=True) + "\n",
    }
    if weights_file is not None:
        out[f"{name}.weights"] = weights_file
    else:
        out[f"{name}_weights.c"] = stream("aot/weights.c.j2", {**context, "rows": rows})
    if context["target"]["features"]:
        out[f"{name}_cpu.c"] = render("aot/cpu.c.j2", context)
    out.update(kernels)
    return out


# -- writing OUT_DIR ------------------------------------------------------------------------------
def _checked(relative: str) -> Path:
    """A path inside OUT_DIR: relative, of safe components only (no '..', no separators
    other than '/', nothing hidden)."""
    parts = relative.split("/")
    if not all(_SAFE_COMPONENT.fullmatch(p) and p not in (".", "..") for p in parts):
        raise ValueError(f"refusing to write {relative!r}: not a plain path inside OUT_DIR")
    return Path(*parts)


def _prepare(out_dir: Path) -> Path:
    """The absolute OUT_DIR, after checking that replacing it is safe."""
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir.is_symlink():
        raise ValueError(f"out_dir {str(out_dir)!r} is a symbolic link; give the directory "
                         f"itself")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"out_dir {str(out_dir)!r} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / REPORT).is_file():
            raise ValueError(f"out_dir {str(out_dir)!r} is not empty and holds no convgen build "
                             f"({REPORT}); refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir


def write_atomically(out_dir, contents: dict[str, object]) -> Path:
    """Write ``contents`` as OUT_DIR in one step (see the module's docstring)."""
    out_dir = _prepare(Path(out_dir))
    paths = {relative: _checked(relative) for relative in contents}
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.convgen-", dir=out_dir.parent))
    try:
        for relative, content in contents.items():
            path = staging / paths[relative]
            path.parent.mkdir(parents=True, exist_ok=True)
            _write(path, content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        _replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _write(path: Path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
        return
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        if isinstance(content, str):
            file.write(content)
        else:
            for piece in content:
                file.write(piece)


def _replace(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.convgen-old-", dir=out_dir.parent))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(old, out_dir)   # put the previous build back
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(old)
