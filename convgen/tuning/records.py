"""What a tuning record says, and what it must match to be trusted.

A record belongs to one workload (spec, input shape, dtype: ``workload_key``), one target,
one *machine class* and one *plan space*:

- the machine class (``machine_class``) is a digest of what makes a measurement hold for
  a machine: the CPU model, its vendor/family/model numbers, its ISA features, the cores
  this process may use, the architecture (``target.host.identity``), the compiler the
  backend calls for the target (path and ``--version``), what that compiler makes of
  ``-march=native`` and, for CUDA, the GPU architecture. A record measured on another
  class says nothing reliable here (records of convgen before 0.4.18, whose classes lacked
  the numbers, are not trusted by later versions: tune again);
- the plan space (``plan_space``) is a digest of the module that defines the backend's
  plans: a convgen whose plans mean something else (new fields, other rules) writes a
  different digest, and its records are not trusted.

Plain data and digests only: no numpy, no backend imports, cheap to load on the hot path
of ``convgen.compile``.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys

from ..core.spec import ConvSpec, Workload
from ..target import Target, host

SCHEMA = 1                       # the record format; a newer one is not read
STATUSES = ("ok", "compile_error", "crash", "wrong", "timeout", "error")
FAILURES = STATUSES[1:]


def _digest(value, length: int = 16) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# -- workloads -------------------------------------------------------------------------------
def workload_key(workload: Workload) -> str:
    """A stable name for (spec, input shape, dtype): what records are grouped by."""
    return _workload_key(workload)


@functools.lru_cache(maxsize=4096)
def _workload_key(workload: Workload) -> str:
    return _digest({"spec": dataclasses.asdict(workload.spec),
                    "input_shape": list(workload.input_shape), "dtype": workload.dtype}, 20)


def workload_record(workload: Workload) -> dict:
    """The workload as a record stores it: its key, a line for people, and enough to
    rebuild it (``workload_from_record``)."""
    return {"key": workload_key(workload), "op": workload.spec.op,
            "layer": workload.spec.describe(), "spec": dataclasses.asdict(workload.spec),
            "input_shape": list(workload.input_shape), "dtype": workload.dtype}


def workload_from_record(stored: dict) -> Workload:
    """Rebuild a Workload from ``workload_record``'s output (ValueError if it does not
    describe one, or no longer matches its key)."""
    try:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in stored["spec"].items()}
        workload = Workload(ConvSpec(**fields), tuple(stored["input_shape"]), stored["dtype"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a workload: {exc}") from exc
    if stored.get("key") not in (None, workload_key(workload)):
        raise ValueError("the workload's key does not match its fields")
    return workload


# -- the machine a measurement holds for -------------------------------------------------------
def machine_identity(target: Target, backend) -> dict:
    """This machine as measurements on ``target`` depend on it: host identity, compiler,
    and the GPU architecture for CUDA targets."""
    return dict(_machine_identity(target, backend, os.environ.get("CC"),
                                  os.environ.get("NVCC"), os.environ.get("CXX")))


@functools.lru_cache(maxsize=64)
def _machine_identity(target: Target, backend, *compiler_env) -> tuple:
    identity = dict(host.identity())
    if target.name == "cpu":
        # Under CONVGEN_MAX_CPU_ISA the native target is this host without the wider ISAs:
        # its measurements are those of such a machine (uncapped, the features are equal).
        identity["features"] = list(target.cpu_features)
    parts = backend.toolchain_parts(target)
    identity["compiler"] = parts.get("compiler")
    if parts.get("native"):
        identity["native"] = parts["native"]   # what -march=native picked: gcc's CPU
    if target.cuda is not None:
        identity["gpu"] = dataclasses.asdict(target.cuda)
    return tuple(sorted(identity.items(), key=lambda kv: kv[0]))


def machine_class(target: Target, backend) -> str:
    """The short name of ``machine_identity``: records are trusted only on their class."""
    identity = machine_identity(target, backend)
    return class_of(identity)


def class_of(identity: dict) -> str:
    return f"{identity.get('arch', 'unknown')}-{_digest(identity)}"


def measure_lock_name() -> str:
    """One name per physical machine (not per class): measurements on it take turns."""
    return f"measure-{_digest(host.identity(), 12)}"


# -- the plan space --------------------------------------------------------------------------
def plan_space(backend) -> str:
    """A digest of the module that defines ``backend``'s plans (its fields and rules)."""
    return _plan_space(backend.plan_type)


@functools.cache
def _plan_space(plan_type) -> str:
    module = sys.modules[plan_type.__module__]
    try:
        with open(module.__file__, "rb") as f:
            text = f.read()
    except (OSError, TypeError):   # no source on disk: fall back to the convgen version
        from .._version import __version__
        text = __version__.encode()
    return f"{plan_type.__name__}-{hashlib.sha256(text).hexdigest()[:12]}"
