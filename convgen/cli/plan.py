"""``convgen plan``: the planner's ranked candidates for a layer."""
from __future__ import annotations

from .layer import add_layer_arguments, positive_int, spec_of


def run(args) -> int:
    from ..api import explain
    print(explain(spec_of(args), args.input, args.dtype, args.target, top=args.top,
                  accuracy=args.accuracy, plan=args.plan))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="explain the planner's choice for a layer",
                       description="The planner's ranked candidate plans for a layer, with "
                       "their predicted time; '*' marks the plan a compile would use (the "
                       "planner's choice, or the one --plan names).")
    add_layer_arguments(p)
    p.add_argument("--top", type=positive_int, default=5, help="how many candidates to show")
    p.set_defaults(run=run)
