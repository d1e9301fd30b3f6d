"""One set of defaults: `steer sweep`, `steer run` and ``steer_plugin.run`` evaluate alike unless told otherwise."""

from __future__ import annotations

import inspect
import re
from dataclasses import fields
from pathlib import Path

import pytest

from steer_plugin.cli import build_parser
from steer_plugin.cli.study import evaluation_from_args, recipe_from_args
from steer_plugin.errors import SteerError
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


# --- the Python API checks types and choices as strictly as the command line ------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"chat": "yes"}, "unknown Evaluation.chat 'yes'; use one of auto, on, off"),
        ({"control_match": "size"}, "unknown Evaluation.control_match 'size'"),
        ({"backend": "vllm"}, "unknown Evaluation.backend 'vllm'"),
        ({"log_samples": "false"}, "Evaluation.log_samples: 'false' is not true or false"),
        ({"side_effects": 0}, "Evaluation.side_effects: 0 is not true or false"),
        ({"controls": 1.0}, "Evaluation.controls: 1.0 is not an integer"),
        ({"controls": True}, "Evaluation.controls: True is not an integer"),
        ({"bootstrap_iters": "1000"}, "Evaluation.bootstrap_iters: '1000' is not an integer"),
        ({"batch_size": "big"}, "Evaluation.batch_size: 'big' is not an integer or 'auto'"),
        ({"limit": "5"}, "Evaluation.limit: '5' is not a number or None"),
        ({"tasks": [1]}, "Evaluation.tasks: [1] is not a string or a list of strings"),
        ({"positions": "nowhere"}, "unknown positions 'nowhere'"),
        ({"fluency_texts": 3}, "Evaluation.fluency_texts: 3 is not a string or a path or None"),
    ],
)
def test_an_evaluation_of_wrong_types_or_choices_is_refused_where_it_is_built(fields, message):
    with pytest.raises(SteerError) as caught:
        Evaluation(**fields)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_evaluation_takes_what_the_command_line_gives_and_the_api_documents():
    Evaluation(tasks="a,b", limit=3, batch_size="auto", layers=["all", "middle"], positions="all,response")
    Evaluation(tasks=("a",), limit=0.5, positions=["all", "response"], fluency_texts=Path("texts.txt"))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_per_class": 2.5}, "RecordOptions.max_per_class: 2.5 is not an integer or None"),
        ({"data": 3}, "RecordOptions.data: 3 is not a string or a path or None"),
        ({"baseline": None}, "RecordOptions.baseline: None is not a string"),
    ],
)
def test_record_options_of_wrong_types_are_refused_where_they_are_built(fields, message):
    with pytest.raises(SteerError, match=re.escape(message)):
        RecordOptions(**fields)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"record": {"data": None}}, "run(record=...): {'data': None} is not a RecordOptions"),
        ({"evaluation": {"tasks": "x"}}, "run(evaluation=...): {'tasks': 'x'} is not an Evaluation"),
        ({"recipe": "mean"}, "run(recipe=...): 'mean' is not a Recipe or a list of Recipes"),
        ({"model": 3}, "run(model=...): 3 is not a string or a ModelOptions"),
        ({"prompt_control": "no"}, "run(prompt_control=...): 'no' is not true or false"),
    ],
)
def test_run_refuses_arguments_of_wrong_types_before_any_work(tmp_path, kwargs, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SteerError, match=re.escape(message)):
        run("anger", **{"model": "/nonexistent/model", **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_the_classifier_is_checked_before_any_model_loads(tmp_path):
    """A classifier folder that is not there, or nade asked to score neutral (it has no neutral label), is a one-line
    error from the arguments alone: before recording, building or loading anything (it used to come after)."""
    import pytest

    from steer_plugin.errors import SteerError

    with pytest.raises(SteerError, match="has no label for target 'neutral'"):
        Evaluation(tasks="steer_emotion_neutral", classifier="nade").check(tmp_path / "a")
    with pytest.raises(SteerError, match="does not exist"):
        Evaluation(tasks="steer_emotion_anger", classifier=str(tmp_path / "no-such-classifier")).check(tmp_path / "b")
    Evaluation(tasks="steer_emotion_ekman_anger,truthfulqa_mc2", classifier="nade").check(tmp_path / "c")  # fine
    Evaluation(tasks="truthfulqa_mc2", classifier=str(tmp_path / "unused")).check(tmp_path / "d")  # no emotion task


def test_emotion_tasks_name_their_target():
    from steer_plugin.harness.tasks import emotion_task_target

    assert emotion_task_target("steer_emotion_anger") == "anger"
    assert emotion_task_target("steer_emotion_continue_ekman_joy") == "ekman:joy"
    assert emotion_task_target("steer_emotion_continue") is None  # the group
    assert emotion_task_target("truthfulqa_mc2") is None
