"""Autotuning: measure plans of the planner's space, keep the fastest, use it from then on.

    result = convgen.tune(layer, (1, 64, 56, 56), target="cpu", trials=64)
    result.best, result.trials      # the plan recorded; every plan tried, timed or failed

The parts, each a module: ``search`` (the planner's ranking first, then an evolutionary
search guided by a cost model refitted to the measurements), ``build`` (compile jobs for
worker processes, and the reference data), ``measure`` and ``child`` (checking and timing
in a child process, one measurement at a time), ``tuner`` (the loop, budgets, Ctrl-C, the
confirmation of the winner), ``db`` and ``records`` (the JSON-lines database and what a
record must match to be trusted), ``lookup`` (the tuned plan on ``compile``'s hot path),
``distributed`` (the same over Dask), ``progress``, ``report`` (plots), ``fit`` (the cost
model's constants fitted to a database) and ``models`` (layer lists from model files).

Importing this package is cheap: the heavy parts load when tuning starts.
"""
from __future__ import annotations

from .db import TuningDB, default_path
from .results import TimeStats, Trial, TuneResult

__all__ = ["TimeStats", "Trial", "TuneResult", "TuningDB", "default_path", "tune", "tune_many"]


def tune(layer, input_shape, target="cpu", trials=64, seconds=None, db=None, *, dtype=None,
         accuracy="fast", plans=(), workers=None, scheduler=None, progress=None, report=None,
         name=None, seed=0, min_time=0.1) -> TuneResult:
    """Measure plans for ``layer`` on inputs of ``input_shape`` and record the best.

    ``trials`` and ``seconds`` bound the search (either or both; None: no bound); Ctrl-C
    stops it early and keeps what was measured. ``db`` is the database path (default: the
    one ``compile`` reads, ``TuningDB().path``). ``plans`` are extra plans to measure first
    (plan objects or strings). ``workers`` compile processes (default: the cores), or a
    Dask cluster: ``scheduler`` its address, or ``workers=N`` with ``scheduler="local"``
    for a local one. ``progress``: True, False, or None for a bar on a terminal only.
    ``report``: a directory for plots and an index (needs matplotlib). ``min_time``:
    seconds of timed calls per candidate.
    """
    from .tuner import tune as run
    return run(layer, input_shape, target=target, trials=trials, seconds=seconds, db=db,
               dtype=dtype, accuracy=accuracy, plans=plans, workers=workers,
               scheduler=scheduler, progress=progress, report=report, name=name, seed=seed,
               min_time=min_time)


def tune_many(layers, target="cpu", trials=64, seconds=None, db=None, *, accuracy="fast",
              workers=None, scheduler=None, progress=None, report=None, seed=0,
              min_time=0.1) -> list[TuneResult]:
    """Tune several layers: ``layers`` is a list of ``(name, layer, input_shape, dtype)``
    (``models.load_layers`` reads them from a model file). The budget is per layer. With
    ``scheduler`` (a Dask address, or "local" with ``workers`` processes) the layers are
    tuned at once over the cluster."""
    from .tuner import tune_many as run
    return run(layers, target=target, trials=trials, seconds=seconds, db=db, accuracy=accuracy,
               workers=workers, scheduler=scheduler, progress=progress, report=report,
               seed=seed, min_time=min_time)
