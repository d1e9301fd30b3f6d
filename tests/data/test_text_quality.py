"""What a generation looks like: no words, repetition, distinct-2 and the degenerate rule, on hand-written cases."""

from __future__ import annotations

import math

import pytest

from steer_plugin.data.text_quality import (
    NLL_MARGIN,
    REPETITION_FLOOR,
    DegenerateRule,
    distinct,
    has_words,
    quality_metrics,
    repetition,
)


@pytest.mark.parametrize(
    "text",
    ["", "   \n\t", "!!!", "😊🌟\n\n🌈🌐", "💪.💪.", "12 34 5", "a b c", "... ?!", "I'm a.💪.💪."],
)
def test_outputs_without_words(text):
    assert not has_words(text)
    assert quality_metrics(text)["no_words"] == 1.0


@pytest.mark.parametrize("text", ["ok", "I am.💪.💪.", "Thanks! 😊", "Ça va", "日本語", "x1 no"])
def test_outputs_with_words(text):
    assert has_words(text)
    assert quality_metrics(text)["no_words"] == 0.0


def test_repetition_counts_repeated_trigrams():
    # tokens: the cat sat . the cat sat . -> 3-grams: 6, distinct: 4 ("the cat sat", "cat sat .", "sat . the", ". the cat")
    assert repetition("The cat sat. The cat sat.") == pytest.approx(1 - 4 / 6)
    assert repetition("one two three four five") == 0.0
    assert repetition("too short") == 0.0  # fewer than 3 tokens: nothing can repeat
    loop = "🌖🌐\n\n" * 20
    assert repetition(loop) > 0.9  # an emoji loop is repetition, not fluent text


def test_distinct_2_by_hand():
    # tokens: a a a a -> bigrams (a,a) x3, distinct 1
    assert distinct("a a a a") == pytest.approx(1 / 3)
    assert distinct("alpha beta gamma") == 1.0
    assert distinct("single") == 1.0
    assert distinct("") == 1.0


def test_rule_from_baseline_uses_floor_and_margin():
    rule = DegenerateRule.from_baseline([0.0, 0.1, 0.2], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert rule.repetition_limit == REPETITION_FLOOR  # the baseline repeats little: the floor holds
    # 95th percentile of 1..5 (linear interpolation): 1 + 0.95 * 4 = 4.8
    assert rule.nll_limit == pytest.approx(4.8 + NLL_MARGIN)
    assert DegenerateRule.from_baseline([0.7, 0.9, 0.8], []).repetition_limit == pytest.approx(0.89)
    assert DegenerateRule.from_baseline([], []).nll_limit == math.inf


def test_rule_flags_silence_loops_and_unlikely_text():
    rule = DegenerateRule(repetition_limit=0.5, nll_limit=6.0)
    assert rule(no_words=1.0, repetition=0.0)
    assert rule(no_words=0.0, repetition=0.8)
    assert rule(no_words=0.0, repetition=0.1, nll=7.0)
    assert not rule(no_words=0.0, repetition=0.1, nll=3.0)
    assert not rule(no_words=0.0, repetition=0.1, nll=None)  # fluency not measured: the other two decide
    assert not rule(no_words=0.0, repetition=0.5)  # at the limit is not past it


def test_rule_says_why():
    rule = DegenerateRule(repetition_limit=0.5, nll_limit=6.0)
    assert rule.reasons(no_words=0.0, repetition=0.1, nll=3.0) == []
    assert rule.reasons(no_words=1.0, repetition=0.8, nll=7.0) == [
        "no words",
        "repetition 0.80 > 0.50",
        "unlikely text: NLL 7.00 > 6.00 nats/token",
    ]
