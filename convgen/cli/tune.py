"""``convgen tune``: measure plans for a layer or a model's layers; the database; the fit.

    convgen tune OP --input N,C,... --weight O,I,... [layer args] [budget] [--report DIR]
    convgen tune MODEL.json [--target T] [budget] [--workers N | --scheduler ADDR]
    convgen tune db show|export|merge ...
    convgen tune fit [--db PATH] [--target cpu] [--dry-run | --clear]
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback

from .layer import add_layer_arguments, spec_of

USAGE = """usage: convgen tune OP --input N,C,... --weight O,I,... [layer args] [options]
       convgen tune MODEL.json [options]
       convgen tune db {show,export,merge} ...
       convgen tune fit [--db PATH] [--target T] [--dry-run | --clear]

Measure plans of the planner's space for one layer (the layer arguments of `convgen plan`)
or for every conv layer of a model file (a JSON list of layers as in the benchmark suite:
{"layers": [{"name", "op", "x", "w", "args"}, ...]}), record every trial in the tuning
database, and record the fastest plan -- confirmed against the default -- for
`convgen.compile(plan="auto")` to use on this machine class from then on.

options:
  --trials N         plans to measure per layer (default 64 unless --seconds is given)
  --seconds S        seconds of search per layer (with --trials: whichever ends first)
  --db PATH          the tuning database (default: CONVGEN_TUNING_DB, else under the cache)
  --workers N        tune on a local Dask cluster of N worker processes
  --scheduler ADDR   tune on the Dask cluster at ADDR (tcp://host:8786)
  --report DIR       write plots (PNG) and an index (index.md, index.html) into DIR
  --min-time S       seconds of timed calls per candidate (default 0.1)
  --plan PLAN        also measure this plan (repeatable; a plan string)
  --seed N           the search's random seed (default 0)
  --quiet            no progress display
  --debug            show tracebacks
Ctrl-C stops the search and confirms the best plan so far; a second Ctrl-C skips that.
Everything measured is already in the database.

  convgen tune db show [--db PATH] [--all]      one line per layer and machine class
  convgen tune db export [--db PATH] [-o FILE] [--this-machine] [--decisions-only]
  convgen tune db merge SOURCE... [--db PATH]   append the records DEST lacks
  convgen tune fit       fit the cost model's machine constants to the database (this
                         machine class) and report the prediction error before and after"""


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="measure plans and record the fastest (autotuning)",
                       add_help=False, usage="convgen tune OP|MODEL|db|fit ... (--help)")
    p.add_argument("-h", "--help", action=_Usage, nargs=0)
    p.add_argument("words", nargs=argparse.REMAINDER)
    p.set_defaults(run=run)


class _Usage(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        print(USAGE)
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    """Errors as ValueError: the command prints them as one line."""

    def error(self, message):
        raise ValueError(message)


def _budget_arguments(p) -> None:
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--db", default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--scheduler", default=None)
    p.add_argument("--report", default=None)
    p.add_argument("--min-time", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")


def run(args) -> int:
    words = list(args.words)
    debug = "--debug" in words
    if not words or words[0] == "help" or "-h" in words or "--help" in words:
        print(USAGE)
        return 0
    try:
        if words[0] == "db":
            return _db(words[1:])
        if words[0] == "fit":
            return _fit(words[1:])
        return _tune(words)
    except KeyboardInterrupt:
        print("convgen tune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:   # one line, as every convgen command reports
        if debug:
            traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"convgen tune: error: {message}", file=sys.stderr)
        return 2


# -- tuning --------------------------------------------------------------------------------
def _tune(words: list[str]) -> int:
    from ..core.layers import OPS
    from ..tuning import tuner
    from ..tuning.progress import Progress
    if words[0] in OPS:
        p = _Parser(prog="convgen tune", add_help=False, conflict_handler="resolve")
        add_layer_arguments(p)
        _budget_arguments(p)
        p.set_defaults(plan=None)
        p.add_argument("--plan", action="append", dest="plans", default=[])
        args = p.parse_args(words)
        trials = _trials(args)
        progress = Progress(not args.quiet)
        result = tuner.tune(spec_of(args), args.input, target=args.target, trials=trials,
                            seconds=args.seconds, db=args.db, dtype=args.dtype,
                            accuracy=args.accuracy, plans=args.plans, workers=args.workers,
                            scheduler=args.scheduler, progress=progress, report=args.report,
                            seed=args.seed, min_time=args.min_time)
        results = [result]
    else:
        from ..tuning.models import load_layers
        p = _Parser(prog="convgen tune", add_help=False)
        p.add_argument("model")
        p.add_argument("--target", default="cpu")
        p.add_argument("--accuracy", default="fast", choices=["fast", "strict"])
        _budget_arguments(p)
        args = p.parse_args(words)
        layers = load_layers(args.model)
        progress = Progress(not args.quiet)
        results = tuner.tune_many(layers, target=args.target, trials=_trials(args),
                                  seconds=args.seconds, db=args.db, accuracy=args.accuracy,
                                  workers=args.workers, scheduler=args.scheduler,
                                  progress=progress, report=args.report, seed=args.seed,
                                  min_time=args.min_time)
    for result in results:
        print(result.summary())
    print(f"database: {results[0].db}")
    if args.report:
        print(f"report: {args.report}/index.html")
    return 130 if any(r.interrupted for r in results) else 0


def _trials(args):
    if args.trials is None:
        return None if args.seconds is not None else 64
    return args.trials


# -- the database --------------------------------------------------------------------------
def _db(words: list[str]) -> int:
    from ..tuning.db import TuningDB
    p = _Parser(prog="convgen tune db", add_help=False)
    p.add_argument("action", choices=["show", "export", "merge"])
    p.add_argument("sources", nargs="*")
    p.add_argument("--db", default=None)
    p.add_argument("--all", action="store_true")
    p.add_argument("-o", "--output", default=None)
    p.add_argument("--this-machine", action="store_true")
    p.add_argument("--decisions-only", action="store_true")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(words)
    database = TuningDB(args.db)
    if args.action == "merge":
        if not args.sources:
            raise ValueError("merge: name the databases to merge into --db (or the default)")
        added = database.merge(*args.sources)
        print(f"added {added} record(s) to {database.path}")
        return 0
    if args.action == "export":
        return _export(database, args)
    return _show(database, args.all)


def _this_machine_classes(records: list[dict]) -> dict:
    """target name -> this machine's class for it (for the targets the records name)."""
    from ..backends import backend_for, get_target
    from ..tuning import records as rec
    found = {}
    for name in {r["target"] for r in records}:
        try:
            target = get_target(name)
            found[name] = rec.machine_class(target, backend_for(target))
        except Exception:
            found[name] = None
    return found


def _show(database, show_all: bool) -> int:
    records = database.records()
    print(f"{database.path}: {len(records)} record(s)")
    if not records:
        return 0
    mine = _this_machine_classes(records)
    groups: dict = {}
    for r in records:
        key = (r["workload"]["key"], r["target"], r["machine_class"], r["threads"])
        groups.setdefault(key, []).append(r)
    for (_, target, klass, threads), found in sorted(groups.items(), key=lambda kv: (
            kv[1][0].get("name") or "", kv[0][1])):
        here = klass == mine.get(target)
        if not here and not show_all:
            continue
        trials = [r for r in found if r["kind"] == "trial"]
        ok = sum(r["status"] == "ok" for r in trials)
        decisions = sorted((r for r in found if r["kind"] == "decision"),
                           key=lambda r: r["time"]["median_s"])
        workload = found[0]["workload"]
        shape = "x".join(map(str, workload["input_shape"]))
        head = (f"{found[0].get('name') or workload['op']}  {workload['layer']}  input {shape} "
                f"{workload['dtype']}  target {target}  threads {threads}  "
                f"{'this machine' if here else 'machine ' + klass}")
        print(head)
        print(f"  {len(trials)} trial(s), {ok} measured, {len(trials) - ok} failed")
        if decisions:
            d = decisions[0]
            print(f"  best: {d['plan']}  {d['time']['median_s'] * 1e3:.4f} ms, "
                  f"{d.get('speedup', 1.0):.2f}x the default ({d.get('when', '')})")
        else:
            print("  best: none confirmed (the planner decides)")
    hidden = sum(1 for k in groups if k[2] != mine.get(k[1]))
    if hidden and not show_all:
        print(f"({hidden} layer(s) measured on other machine classes; --all lists them)")
    return 0


def _export(database, args) -> int:
    records = database.records()
    if args.this_machine:
        mine = _this_machine_classes(records)
        records = [r for r in records if r["machine_class"] == mine.get(r["target"])]
    if args.decisions_only:
        records = [r for r in records if r["kind"] == "decision"]
    text = "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in records)
    if args.output:
        from ..tuning.db import TuningDB
        TuningDB(args.output).append(*records)
        print(f"exported {len(records)} record(s) to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


# -- the fit -------------------------------------------------------------------------------
def _fit(words: list[str]) -> int:
    from ..tuning import fit
    p = _Parser(prog="convgen tune fit", add_help=False)
    p.add_argument("--db", default=None)
    p.add_argument("--target", default="cpu")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--clear", action="store_true")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(words)
    if args.clear:
        fit.clear(args.target)
        print(f"removed the fitted machine model for target {args.target}; the planner uses "
              f"the defaults")
        return 0
    print(fit.fit(args.db, args.target, save=not args.dry_run))
    return 0
