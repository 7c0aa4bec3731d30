"""Render: (workload, plan, target) -> C source, through the Jinja2 templates.

Python decides; the templates only loop over the data built here. The environment is
strict: an undefined name is an error, never an empty string in C.
"""
from __future__ import annotations

import functools
import hashlib
import math

import jinja2

from . import __version__
from ._paths import templates_dir
from .plan import Plan, loop_extents
from .spec import AXIS_NAMES, Workload
from .target import Target

CTYPES = {"float32": "float", "float64": "double"}
TEMPLATES = {"direct": "cpu/direct.c.j2", "transposed_gather": "cpu/transposed_gather.c.j2"}
_LOOP_VARS = {"n": "n", "oc_block": "ocb", "d": "od", "h": "oh", "w": "ow"}


class TemplateError(RuntimeError):
    """A template failed to render; the message names the template and line."""


@functools.lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


@functools.lru_cache(maxsize=None)
def templates_digest() -> str:
    """Hash of every template file: part of every cache key."""
    digest = hashlib.sha256()
    root = templates_dir()
    for path in sorted(root.rglob("*.j2")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def kernel_name(workload: Workload, plan: Plan) -> str:
    return f"convgen_{workload.spec.op}_{plan.algorithm}"


def context(workload: Workload, plan: Plan, target: Target) -> dict:
    spec = workload.spec
    axes = [
        {"name": name, "NAME": name.upper(), "in_size": workload.in_spatial[i],
         "out_size": workload.out_spatial[i], "kernel": spec.kernel_size[i],
         "stride": spec.stride[i], "dilation": spec.dilation[i], "pad": spec.pad_before[i]}
        for i, name in enumerate(AXIS_NAMES[spec.ndim])
    ]
    extents = loop_extents(plan.loop_order, workload, plan.oc_block)
    return {
        "info": {"version": __version__, "spec": spec.describe(), "plan": str(plan),
                 "input_shape": workload.input_shape, "output_shape": workload.output_shape,
                 "dtype": workload.dtype, "target": target.description},
        "kernel_name": kernel_name(workload, plan),
        "ctype": CTYPES[workload.dtype],
        "batch": workload.input_shape[0],
        "in_channels": spec.in_channels,
        "out_channels": spec.out_channels,
        "cin_per_group": spec.cin_per_group,
        "cout_per_group": spec.cout_per_group,
        "kernel_taps": math.prod(spec.kernel_size),
        "in_spatial": math.prod(workload.in_spatial),
        "out_spatial": math.prod(workload.out_spatial),
        "has_bias": spec.bias,
        "padding_mode": spec.padding_mode,
        "axes": axes,
        "loops": [{"var": _LOOP_VARS[name], "extent": extents[name]} for name in plan.loop_order],
        "oc_block": plan.oc_block,
        "parallel_loops": plan.parallel_loops,
        "threads": plan.threads,
    }


def render(workload: Workload, plan: Plan, target: Target) -> str:
    name = TEMPLATES[plan.algorithm]
    try:
        return environment().get_template(name).render(context(workload, plan, target))
    except jinja2.TemplateError as exc:
        where = f"{getattr(exc, 'filename', None) or name}:{getattr(exc, 'lineno', '?')}"
        raise TemplateError(f"rendering {where} for plan '{plan}' failed: {exc}") from exc
