"""One set of defaults: `steer sweep`, `steer run` and ``steer_plugin.run`` evaluate alike unless told otherwise."""

from __future__ import annotations

import inspect
from dataclasses import fields

from steer_plugin.cli import build_parser
from steer_plugin.cli.study import evaluation_from_args, recipe_from_args
from steer_plugin.study.evaluation import Evaluation
from steer_plugin.study.run import RecordOptions, run
from steer_plugin.vectors.recipe import DEFAULT_RECIPE


def test_both_commands_build_the_library_s_default_evaluation():
    parser = build_parser()
    sweep = parser.parse_args(["sweep", "--vector", "v", "--alphas", "0,1", "--out", "o"])
    main_job = parser.parse_args(["run", "--emotion", "anger"])
    default = Evaluation()
    for args in (sweep, main_job):
        built = evaluation_from_args(args)
        differing = [f.name for f in fields(Evaluation) if getattr(built, f.name) != getattr(default, f.name)]
        assert differing == [], differing
    assert (default.layers, default.positions, default.controls) == ("middle", "response", 1)


def test_steer_run_builds_the_library_s_default_recipe_and_recording():
    args = build_parser().parse_args(["run", "--emotion", "anger"])
    assert recipe_from_args(args) == DEFAULT_RECIPE
    assert RecordOptions(args.baseline, args.data, args.split, args.max_per_class) == RecordOptions()
    signature = inspect.signature(run).parameters
    assert signature["recipe"].default == DEFAULT_RECIPE and signature["evaluation"].default == Evaluation()
    assert signature["record"].default == RecordOptions()
    # the library's run takes objects, not a wall of keywords
    assert len(signature) <= 12
