"""Code generation shared by the backends: the Jinja2 environment, template digests and the
facts every generated file states about itself.

The environment is strict: an undefined name is an error, never an empty string in C. A
template that fails to render raises ``TemplateError`` naming the template, line and plan.
"""
from __future__ import annotations

import functools
import hashlib

import jinja2

from .._version import __version__
from .paths import templates_dir
from .spec import Workload


class TemplateError(RuntimeError):
    """A template failed to render; the message names the template and line."""


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_template(name: str, ctx: dict, plan) -> str:
    """One template with its context; a failure names the template, the line and the plan."""
    try:
        return environment().get_template(name).render(ctx)
    except jinja2.TemplateError as exc:
        where = f"{getattr(exc, 'filename', None) or name}:{getattr(exc, 'lineno', '?')}"
        raise TemplateError(f"rendering {where} for plan '{plan}' failed: {exc}") from exc


@functools.cache
def templates_digest(*subdirs: str) -> str:
    """Hash of every file under the given template subdirectories: part of the cache key of
    everything rendered from them."""
    digest = hashlib.sha256()
    root = templates_dir()
    for sub in sorted(subdirs):
        for path in sorted((root / sub).rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(root)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def header_info(workload: Workload, plan, target) -> dict:
    """What a generated file says about itself in its header comment."""
    return {"version": __version__, "spec": workload.spec.describe(), "plan": str(plan),
            "input_shape": workload.input_shape, "output_shape": workload.output_shape,
            "dtype": workload.dtype, "target": target.description}
