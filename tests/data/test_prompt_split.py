"""The dev/test split of the emotion tasks' prompts: fixed, disjoint, stratified, and apart from the generated
source's prompts."""

from __future__ import annotations

import importlib.util
import random
import re

import pytest

from steer_plugin.data.generated import load_generation_prompts
from steer_plugin.data.prompt_split import dev_ids, split_rows
from steer_plugin.errors import SteerError
from steer_plugin.harness.tasks import tasks_dir


def emotion_tasks():
    path = tasks_dir() / "steer_emotion" / "emotion_tasks.py"
    spec = importlib.util.spec_from_file_location("emotion_tasks_split", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def test_prompts_split_into_disjoint_dev_and_test_parts_covering_every_topic():
    mod = emotion_tasks()
    rows = mod.load_prompts()
    dev, test = mod.prompts_part("dev"), mod.prompts_part("test")
    assert (len(dev), len(test)) == (38, 86)  # the module docstring's counts: round(n/3) per topic
    assert not {r["id"] for r in dev} & {r["id"] for r in test}
    assert not {_words(r["prompt"]) for r in dev} & {_words(r["prompt"]) for r in test}
    assert sorted(r["id"] for r in dev + test) == sorted(r["id"] for r in rows)
    topics = {r["topic"] for r in rows}
    assert {r["topic"] for r in dev} == topics == {r["topic"] for r in test}  # stratified: both sides see all
    for topic in topics:
        n = sum(r["topic"] == topic for r in rows)
        assert sum(r["topic"] == topic for r in dev) == int(n / 3 + 0.5)
    assert [r["id"] for r in test] == [r["id"] for r in rows if r in test]  # file order kept


def test_the_rule_depends_on_the_ids_alone():
    items = [(f"id{i}", "abc"[i % 3]) for i in range(40)]
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert dev_ids(items) == dev_ids(shuffled)
    assert len(dev_ids([(f"x{i}", "one") for i in range(200)])) == 67  # the continuation texts' count
    rows = ["a", "b", "c"]
    dev, test = split_rows(rows, "dev", rows, ["s"] * 3), split_rows(rows, "test", rows, ["s"] * 3)
    assert len(dev) == 1 and sorted(dev + test) == rows
    with pytest.raises(SteerError, match="prompt split"):
        split_rows(rows, "train", rows, ["s"] * 3)


def test_dev_prompts_are_not_the_generated_sources_prompts():
    """The generated source's prompts are disjoint from every evaluation prompt, so from dev (and test) too."""
    mod = emotion_tasks()
    generated = {_words(p) for p in load_generation_prompts()}
    for part in ("dev", "test"):
        assert not generated & {_words(r["prompt"]) for r in mod.prompts_part(part)}


def test_continuation_texts_split_one_third_dev(shared):
    mod = emotion_tasks()
    folder = shared / "data" / "goemotions"
    every = mod.load_neutral_texts(folder=folder)
    dev, test = mod.neutral_texts_part("dev", folder), mod.neutral_texts_part("test", folder)
    assert (len(every), len(dev), len(test)) == (200, 67, 133)
    assert not {r["id"] for r in dev} & {r["id"] for r in test}
    assert {r["id"] for r in dev} | {r["id"] for r in test} == {r["id"] for r in every}
    generated = {_words(p) for p in load_generation_prompts()}
    assert not generated & {_words(r["text"]) for r in dev}
