"""steer_plugin.harness.classifier on tiny random classifiers (GoEmotions sigmoid, Ekman softmax) and nade."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from steer_plugin.data.goemotions import EKMAN, LABELS
from steer_plugin.errors import SteerError
from steer_plugin.harness import classifier as C
from tests.helpers.classifier import (
    ForwardCounter,
    build_ekman_classifier,
    build_goemotions_classifier,
    reference_probs,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TEXTS = [
    "I am angry",
    "the day is lovely",
    "",
    "wood table made of wood and more wood and the meeting is at ten o'clock today so thank you",
    "completely unknown tokens here",
    "she cried",
    "thank you",
    "wow",
    "I hate the table",
    "tell me about the dog",
]


@pytest.fixture(scope="module")
def goemo_dir(tmp_path_factory) -> str:
    return build_goemotions_classifier(tmp_path_factory.mktemp("goemo_clf"))


@pytest.fixture(scope="module")
def ekman_dir(tmp_path_factory) -> str:
    return build_ekman_classifier(tmp_path_factory.mktemp("ekman_clf"))


def test_goemotions_classifier_scores_in_batches_and_matches_reference(goemo_dir):
    clf = C.get_classifier(goemo_dir, device="cpu")
    assert clf.labels == LABELS
    assert isinstance(clf, C.HFEmotionClassifier) and clf.multi_label
    counter = ForwardCounter(clf.model)
    try:
        scores = clf.score(TEXTS, batch_size=4)
    finally:
        counter.remove()
    assert counter.calls == math.ceil(len(TEXTS) / 4) == 3
    assert sorted(counter.rows) == [2, 4, 4]
    for text, row in zip(TEXTS, scores, strict=True):
        ref = reference_probs(goemo_dir, text, multi_label=True)
        assert list(row) == list(LABELS)
        assert [row[label] for label in clf.labels] == pytest.approx(ref, abs=1e-5)
    # random weights with a wide init give a spread of outputs, so the checks above can fail
    assert len({max(r, key=r.get) for r in scores}) > 1


def test_classifier_cache_is_per_process_and_keyed_by_name(goemo_dir, ekman_dir):
    assert C.get_classifier(goemo_dir, device="cpu") is C.get_classifier(goemo_dir, device="cpu")
    assert C.get_classifier(ekman_dir, device="cpu") is not C.get_classifier(goemo_dir, device="cpu")


def test_ekman_classifier_softmax_and_target_mapping(ekman_dir, goemo_dir):
    clf = C.get_classifier(ekman_dir, device="cpu")
    assert clf.labels == ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
    assert not clf.multi_label
    scores = clf.score(TEXTS[:3], batch_size=2)
    for text, row in zip(TEXTS[:3], scores, strict=True):
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-6)
        assert [row[label] for label in clf.labels] == pytest.approx(reference_probs(ekman_dir, text, False), abs=1e-5)
    assert clf.target_labels("annoyance") == ("anger",)
    assert clf.target_labels("anger") == ("anger",)
    assert clf.target_labels("curiosity") == ("surprise",)
    assert clf.target_labels("neutral") == ("neutral",)
    assert clf.target_labels("ekman_joy") == ("joy",)
    goemo = C.get_classifier(goemo_dir, device="cpu")
    assert goemo.target_labels("annoyance") == ("annoyance",)
    assert goemo.target_labels("ekman_anger") == ("anger", "annoyance", "disapproval")
    assert goemo.target_labels("ekman_joy") == EKMAN["joy"]
    with pytest.raises(SteerError, match="unknown emotion 'rage'"):
        goemo.target_labels("rage")
    with pytest.raises(SteerError, match="unknown emotion"):
        goemo.target_labels("ekman_trust")


def test_score_records_and_metrics_equal_independent_computation(goemo_dir, ekman_dir):
    for folder, multi in ((goemo_dir, True), (ekman_dir, False)):
        clf = C.get_classifier(folder, device="cpu")
        targets = ["anger", "ekman_joy", "neutral", "annoyance"] * 3
        texts = TEXTS[: len(targets)] + ["x"] * (len(targets) - len(TEXTS))
        records = clf.score_records(texts, targets, batch_size=5)
        for text, target, rec in zip(texts, targets, records, strict=True):
            ref = dict(zip(clf.labels, reference_probs(folder, text, multi), strict=True))
            top = max(ref, key=ref.get)
            if multi:
                wanted = EKMAN["joy"] if target == "ekman_joy" else (target,)
            else:
                wanted = ("joy",) if target == "ekman_joy" else (C.EKMAN_OF[target],)
            metrics = C.emotion_metrics(rec)
            assert rec.generation == text and rec.target == target and rec.classifier == folder
            assert metrics["target_rate"] == float(top in wanted)
            assert metrics["target_prob"] == pytest.approx(sum(ref[w] for w in wanted), abs=1e-5)
            assert metrics["neutral_rate"] == float(top == "neutral")
            assert {k: v for k, v in metrics.items() if k.startswith("prob_")} == pytest.approx(
                {f"prob_{k}": v for k, v in ref.items()}, abs=1e-5
            )


def test_resolve_classifier_name_order(monkeypatch):
    monkeypatch.delenv(C.CLASSIFIER_ENV, raising=False)
    assert C.resolve_classifier_name(None) == C.DEFAULT_CLASSIFIER == "SamLowe/roberta-base-go_emotions"
    monkeypatch.setenv(C.CLASSIFIER_ENV, "nade")
    assert C.resolve_classifier_name(None) == "nade"
    assert C.resolve_classifier_name("") == "nade"
    assert C.resolve_classifier_name(" /some/path ") == "/some/path"


def test_bad_classifier_names_raise_steer_error(tmp_path, goemo_dir):
    with pytest.raises(SteerError, match="does not exist"):
        C.get_classifier(str(tmp_path / "missing"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SteerError, match="cannot load emotion classifier"):
        C.get_classifier(str(tmp_path / "empty"), device="cpu")
    with pytest.raises(SteerError, match="batch size"):
        C.get_classifier(goemo_dir, device="cpu").score(["x"], batch_size=0)


def test_nade_mapping_is_documented_and_complete():
    non_neutral = set(LABELS) - {"neutral"}
    assert set(C.NADE_MAPPING) == non_neutral
    assert set(C.NADE_MAPPING.values()) <= set(C.NADE_LABELS)
    exceptions = {"admiration": "trust", "approval": "trust", "optimism": "anticipation", "desire": "anticipation"}
    for label, plutchik in C.NADE_MAPPING.items():
        assert plutchik == exceptions.get(label, C.EKMAN_OF[label]), label


def test_nade_classifier_scores_mapping_and_neutral():
    pytest.importorskip("nade")
    from nade import Nade

    clf = C.get_classifier("nade")
    assert clf.labels == C.NADE_LABELS
    texts = [
        "I am so angry, I hate you,\nget out of my house!",
        "I love this, what a wonderful day!",
        "The table is made of wood.",
    ]
    counter = {"n": 0}
    original = clf.nade.predict

    def counting_predict(batch):
        counter["n"] += 1
        return original(batch)

    clf.nade.predict = counting_predict
    try:
        scores = clf.score(texts, batch_size=8)
    finally:
        clf.nade.predict = original
    assert counter["n"] == 1
    raw = Nade().predict([t.replace("\n", " ") for t in texts])
    for i, row in enumerate(scores):
        assert row == pytest.approx({k: raw[k][i].as_py() for k in C.NADE_LABELS}, abs=1e-9)
    assert C.NadeEmotionClassifier.top_label(clf, scores[1]) == "joy"
    assert clf.target_labels("annoyance") == ("anger",)
    assert clf.target_labels("admiration") == ("trust",)
    assert clf.target_labels("ekman_joy") == ("joy",)
    assert clf.target_labels("ekman_surprise") == ("surprise",)
    with pytest.raises(SteerError, match="no label for target 'neutral'"):
        clf.target_labels("neutral")
    quiet = {label: C.NADE_NEUTRAL_THRESHOLD / 2 for label in C.NADE_LABELS}
    assert clf.is_neutral(quiet) and clf.top_label(quiet) == "neutral"
    loud = quiet | {"fear": C.NADE_NEUTRAL_THRESHOLD}
    assert not clf.is_neutral(loud) and clf.top_label(loud) == "fear"
    rec = clf.score_records(texts[:1], ["anger"])[0]
    assert C.emotion_metrics(rec)["neutral_rate"] == float(max(scores[0].values()) < C.NADE_NEUTRAL_THRESHOLD)


def test_label_constants_match_goemotions_release():
    shared = os.environ.get("STEER_SHARED")
    if not shared:
        pytest.skip("STEER_SHARED is not set (path of the shared folder with data/goemotions)")
    folder = Path(shared) / "data" / "goemotions"
    assert tuple((folder / "emotions.txt").read_text(encoding="utf-8").split()) == LABELS
    ekman = json.loads((folder / "ekman_mapping.json").read_text(encoding="utf-8"))
    assert {k: tuple(v) for k, v in ekman.items()} == EKMAN


def _emotion_filter():
    """The steer_emotion tasks' EmotionScoreFilter, loaded as lm-eval loads it."""
    from lm_eval.tasks._yaml_loader import _load_module_with_cache

    from steer_plugin.harness.tasks import tasks_dir

    return _load_module_with_cache(tasks_dir() / "steer_emotion" / "emotion_tasks.py").EmotionScoreFilter()


def test_a_classifier_that_scores_nan_is_an_error_naming_it_and_the_document(tmp_path):
    """A NaN in a classifier's weights (a broken checkpoint, a float16 overflow) used to reach every mean; the
    emotion tasks' scoring refuses it, naming the classifier and the output's prompt."""
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = build_goemotions_classifier(tmp_path / "nan_clf")
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.bias[LABELS.index("joy")] = float("nan")
    model.save_pretrained(folder)
    docs = [{"prompt_id": f"p{i}", "target": "anger", "classifier": folder} for i in range(3)]
    with pytest.raises(SteerError) as caught:
        _emotion_filter().apply(["I am angry", "", "the day is lovely"], docs)
    message = str(caught.value)
    assert "\n" not in message and f"emotion classifier {folder!r} gave nan as the probability of 'joy'" in message
    assert "for the output for prompt 'p1' (target anger) (''); a score must be a number in [0, 1]" in message


def test_nade_scores_that_are_missing_or_outside_0_1_are_an_error():
    pytest.importorskip("nade")
    clf = C.get_classifier("nade")
    original = clf.nade.predict
    for bad in (None, 1.5, float("inf")):
        clf.nade.predict = lambda batch, bad=bad: {
            label: [bad if label == "fear" and i == 1 else 0.5 for i in range(len(batch))] for label in C.NADE_LABELS
        }
        try:
            with pytest.raises(
                SteerError,
                match=rf"'nade' gave {bad if bad is not None else 'nan'} as the probability "
                r"of 'fear' for text 1 \('b'\)",
            ):
                clf.score(["a", "b", "c"])
        finally:
            clf.nade.predict = original
