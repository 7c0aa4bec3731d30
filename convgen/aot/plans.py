"""What a build compiles for: the target, the thread count, and each layer's plan.

Targets: ``native`` (alias ``cpu``: the build machine's ISA, ``-march=native``),
``x86-64-v3`` (AVX2), ``x86-64-v4`` (AVX-512), ``generic`` (alias ``c``: portable C99) and
``cuda`` (``arch``: sm_80, sm_90, ...; default sm_90). A named target plans with its ISA
row's constants, and ``cuda`` with the architecture table's, never with what this machine
measured, so the same model gives the same sources on any build machine.

Threads: the CPU kernels take their OpenMP team size as a compile-time constant (loops
split for it, per-thread scratch sized for it). ``threads`` sets it; by default a named
target gets 1 (nothing of the build machine leaks into the code) and ``native`` gets this
machine's cores (``CONVGEN_NUM_THREADS``, else every core this process may use), which the
build report and the header state. At run time ``OMP_THREAD_LIMIT`` caps the team.

Plans: the planner's choice, or with ``tuning_db`` the database's plan for the layer on
this machine class where it has one (its thread count replaced by the build's).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..backends import backend_for, get_target
from ..core.planning import check_accuracy
from ..core.spec import Workload
from ..runtime.threads import default_threads
from ..target import Target
from ..target.cuda_arch import (
    CUDA_ARCHS,
    DEFAULT_CUDA_ARCH,
    cuda_arch_named,
    nvcc_arch_flags,
)

TARGETS = ("native", "x86-64-v3", "x86-64-v4", "generic", "cuda")
ALIASES = {"cpu": "native", "c": "generic", "cpu-avx2": "x86-64-v3"}
MAX_THREADS = 1024


@dataclass(frozen=True)
class BuildTarget:
    """The target of a build with what it needs besides the Target."""

    name: str                 # as the build names it: native, x86-64-v4, generic, cuda
    target: Target
    backend: object
    threads: int | None       # CPU: the OpenMP team size compiled in; CUDA: None
    threads_from: str         # why that many ("--threads", "named target", "this machine")

    @property
    def cuda(self) -> bool:
        return self.target.lang == "cuda"


def build_target(name: str, threads: int | None = None, arch: str | None = None) -> BuildTarget:
    """Resolve ``name`` (and ``threads``, ``arch``) into the build's target."""
    if not isinstance(name, str):
        raise TypeError(f"target must be a target name, got {name!r}")
    canonical = ALIASES.get(name, name)
    if canonical not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS} (aliases {sorted(ALIASES)}), got "
                         f"{name!r}" + ("; cuda-emu is for tests: build for 'cuda'"
                                        if name == "cuda-emu" else ""))
    if canonical == "cuda":
        if threads is not None:
            raise ValueError("threads applies to CPU targets (a CUDA build's parallelism is "
                             "its grid)")
        target = _cuda_target(arch)
        return BuildTarget(canonical, target, backend_for(target), None, "cuda")
    if arch is not None:
        raise ValueError(f"arch applies to the cuda target, not {name!r}")
    target = get_target({"native": "cpu", "generic": "c"}.get(canonical, canonical),
                        sanitize=False)
    count, why = _threads(canonical, threads)
    return BuildTarget(canonical, target, backend_for(target), count, why)


def _threads(target: str, threads) -> tuple[int, str]:
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) \
                or not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"threads must be an int from 1 to {MAX_THREADS}, got {threads!r}")
        return threads, "given"
    if target == "native":
        return default_threads(), "this machine's cores (native target)"
    return 1, "default for a named target"


def _cuda_target(arch: str | None) -> Target:
    """The cuda target for ``arch`` from the architecture table (never the GPU present, nor
    CONVGEN_CUDA_ARCH): the build does not depend on the build machine. Full float32 math
    (no TF32)."""
    facts = cuda_arch_named(arch or DEFAULT_CUDA_ARCH)
    base = get_target("cuda")
    return dataclasses.replace(base, arch_flags=nvcc_arch_flags(facts.name), isa=facts.name,
                               cuda=dataclasses.replace(CUDA_ARCHS[facts.name],
                                                        allow_tf32=False))


def plan_workload(layer_workload: Workload, build: BuildTarget) -> Workload:
    """The workload a kernel is planned and rendered for: the CUDA kernels take no epilogue
    (the build's glue applies it), the CPU kernels fuse it."""
    if build.cuda or not build.backend.fuses_epilogues:
        return dataclasses.replace(layer_workload, epilogue=())
    return layer_workload


@dataclass(frozen=True)
class Choice:
    plan: object
    source: str          # "planner" or "tuning database"
    note: str = ""


def choose(workload: Workload, build: BuildTarget, accuracy: str, database=None) -> Choice:
    """The plan of one layer: the tuning database's where it has one, else the planner's."""
    accuracy = check_accuracy(accuracy)
    backend, target = build.backend, build.target
    note = ""
    if database is not None:
        # Records are keyed by thread count: ask for the team this build compiles in.
        options = {} if build.threads is None else {"threads": build.threads}
        tuned = database.best(dataclasses.replace(workload, epilogue=()), target,
                              accuracy=accuracy, **options)
        if tuned is not None:
            if build.threads is not None and hasattr(tuned, "threads"):
                tuned = dataclasses.replace(tuned, threads=build.threads)
            try:
                return Choice(backend.resolve(tuned, workload, target, accuracy),
                              "tuning database")
            except ValueError as exc:
                note = f"tuned plan '{tuned}' refused ({exc}); the planner's used"
    if build.cuda:
        return Choice(backend.choose(workload, target), "planner", note)
    return Choice(backend.choose(workload, target, build.threads, accuracy), "planner", note)


def open_tuning_db(db):
    """The tuning database a build asks for plans: ``db`` is a path, opened with
    ``convgen.tuning.db.TuningDB`` (imported here, lazily: the tuning package is optional to
    this module), or any object with
    ``best(workload, target, accuracy=, threads=) -> plan | None``."""
    if db is None or hasattr(db, "best"):
        return db
    if not isinstance(db, (str, Path)):
        raise TypeError(f"tuning_db must be a path or a tuning database, got {db!r}")
    try:
        from ..tuning.db import TuningDB
    except ImportError as exc:
        raise ValueError(f"tuning_db={str(db)!r}: this convgen has no tuning database "
                         f"(convgen.tuning.db)") from exc
    return TuningDB(db)
