"""`steer tune`: argparse, then ``study.tune.tune``, then print the choices."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from steer_plugin.cli.args import add_model_args, floats, model_options
from steer_plugin.cli.study import (
    add_build_args,
    add_eval_args,
    evaluation_from_args,
    recipe_from_args,
    record_from_args,
)
from steer_plugin.errors import SteerError

DEFAULT_BUDGETS = "0.03,0.1,0.3,1"  # study.tune.DEFAULT_BUDGETS, as the command line spells them


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="choose each emotion vector's layers (x KL budget) on the dev prompts; `steer run --layers tuned` uses it",
    )
    add_model_args(p)
    p.add_argument("--emotion", required=True, help="a label or Ekman group, or several (anger,joy,sadness)")
    add_build_args(p)
    p.add_argument("--vector", default=None, help="tune this vector file instead of the built one (one --emotion)")
    p.add_argument(
        "--budgets",
        type=floats,
        default=DEFAULT_BUDGETS,
        help=f"the KL budgets of the grid, nats per token (default {DEFAULT_BUDGETS})",
    )
    p.add_argument("--out", default=None, help="the sweep folder of the grid (default: runs/<model>-tune-<emotions>)")
    add_eval_args(
        p,
        layers_help="a candidate layer range (repeatable; default: the thirds and quarters of the depth, and all)",
    )
    p.set_defaults(func=cmd_tune, controls=0)


def cmd_tune(args: argparse.Namespace) -> int:
    from steer_plugin.study.tune import describe_choice, tune

    if args.tasks:
        raise SteerError("steer tune evaluates each emotion's task on its dev prompts; leave --tasks out")
    if args.controls:
        raise SteerError("steer tune evaluates no random controls (they do not enter the choice); leave --controls out")
    evaluation = evaluation_from_args(args)
    result = tune(
        args.emotion,
        model_options(args),
        recipe=recipe_from_args(args),
        record=record_from_args(args),
        evaluation=evaluation,
        budgets=args.budgets,
        layers=args.layers,
        vector=args.vector,
        out=args.out,
    )
    for path, tuning in result.tunings.items():
        print(describe_choice(path, tuning))
    for f in result.files:
        print(f"wrote {f}", file=sys.stderr)
    return 0
