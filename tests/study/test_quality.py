"""The robust emotion metric (study.quality): silence and loops cannot raise it, and the degenerate rate says
what happened instead. Generations are scored with the real offline classifier (nade) and the tasks' own
per-document metrics, then read back as a leaderboard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steer_plugin.data.text_quality import quality_metrics
from steer_plugin.harness.classifier import emotion_metrics, get_classifier
from steer_plugin.study.paired import PairedBootstrap
from steer_plugin.study.quality import compare_quality
from steer_plugin.study.rows import compare_rows, load_rows

TASK = "steer_emotion_anger"
TEXTS = [
    "The kitchen has a wooden table and four chairs.",
    "Paris is the capital of France, on the Seine.",
    "I usually read a book before going to sleep.",
    "A list: bread, milk, eggs and some apples.",
    "The train leaves at nine and arrives at noon.",
    "Water boils at one hundred degrees Celsius.",
    "My day was ordinary: work, lunch, a short walk.",
    "The museum opens on weekdays from ten to six.",
    "Cats sleep for a large part of the day.",
    "This recipe needs flour, butter and sugar.",
    "The meeting moved to the second floor room.",
    "Rain is expected in the afternoon tomorrow.",
]


def _per_doc(texts: list[str]) -> list[dict[str, float]]:
    nade = get_classifier("nade")
    records = nade.score_records(texts, ["anger"] * len(texts))
    return [{**emotion_metrics(r.to_dict()), **quality_metrics(t)} for r, t in zip(records, texts)]


def _write(folder: Path, name: str, texts: list[str], vector: dict | None) -> None:
    d = folder / name
    d.mkdir(parents=True)
    rows = _per_doc(texts)
    with open(d / f"samples_{TASK}.jsonl", "w") as f:
        for i, m in enumerate(rows):
            f.write(json.dumps({"doc_id": i, "doc_hash": f"h{i}", "prompt_hash": f"p{i}", "filter": "none",
                                **m, "metrics": list(m)}) + "\n")  # fmt: skip
    means = {f"{k},none": sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    steering = {"vectors": [vector] if vector else [], "alphas": [0.5 if vector else 0.0], "layers": "all",
                "positions": "all"}  # fmt: skip
    config = {"model": "steered_hf", "model_args": "pretrained=tiny", "limit": len(texts), "steering": steering}
    (d / "results.json").write_text(json.dumps({"results": {TASK: {"alias": TASK, **means}}, "config": config}))


def _rows(tmp_path, steered_texts):
    vector = {"path": "anger.safetensors", "metadata": {"emotion": "anger", "method": "mean"}}
    _write(tmp_path, "baseline", TEXTS, None)
    _write(tmp_path, "steered", steered_texts, vector)
    rows = load_rows(tmp_path)
    compare_rows(rows, resamples=500)
    return {("base" if r.key.unsteered else "steered"): r for r in rows}


def test_a_configuration_that_only_silences_the_model_gains_no_emotion(tmp_path):
    silenced = ["" if i % 2 else t for i, t in enumerate(TEXTS)]  # half the outputs empty, the rest unchanged
    rows = _rows(tmp_path, silenced)
    steered = rows["steered"]
    # the artefact this guards against: the classifier calls silence angrier than plain text
    assert steered.paired[f"{TASK}/target_prob"].delta > 0.02
    assert steered.paired[f"{TASK}/no_words"].delta == pytest.approx(0.5)
    fluent = steered.paired[f"{TASK}/target_prob_fluent"]
    assert fluent.n == len(TEXTS) // 2 and fluent.delta == pytest.approx(0.0, abs=1e-12)  # the same texts
    degenerate = steered.paired[f"{TASK}/degenerate_rate"]
    assert degenerate.delta == pytest.approx(0.5) and degenerate.significant
    assert steered.metrics[f"{TASK}/degenerate_rate"] == 0.5 and rows["base"].metrics[f"{TASK}/degenerate_rate"] == 0


def test_loops_are_degenerate_and_real_anger_counts(tmp_path):
    angry = "I am furious, I hate this, get out of my house!"
    loop = "🌖🌐 " * 20
    steered_texts = [angry if i < 4 else loop if i < 8 else t for i, t in enumerate(TEXTS)]
    steered = _rows(tmp_path, steered_texts)["steered"]
    assert steered.metrics[f"{TASK}/degenerate_rate"] == pytest.approx(4 / 12)
    fluent = steered.paired[f"{TASK}/target_prob_fluent"]
    assert fluent.n == 8 and fluent.delta > 0.05  # the four angry answers, among texts fluent in both arms


def test_compare_quality_by_hand():
    """Two documents, one of them silent in the steered arm: only the other one is compared."""
    base = {"no_words": {(0, "a", "x"): 0.0, (1, "b", "y"): 0.0}, "repetition": {(0, "a", "x"): 0.0, (1, "b", "y"): 0.1},
            "target_prob": {(0, "a", "x"): 0.05, (1, "b", "y"): 0.07}}  # fmt: skip
    mine = {"no_words": {(0, "a", "x"): 1.0, (1, "b", "y"): 0.0}, "repetition": {(0, "a", "x"): 0.0, (1, "b", "y"): 0.0},
            "target_prob": {(0, "a", "x"): 0.15, (1, "b", "y"): 0.09}}  # fmt: skip
    q = compare_quality(mine, base, PairedBootstrap(100))
    assert q.degenerate_rate == 0.5 and q.baseline_degenerate_rate == 0.0
    assert q.fluent_target == pytest.approx(0.09) and q.baseline_fluent_target == pytest.approx(0.06)
    assert q.target is None  # one document left: no interval
    assert q.degenerate is not None and q.degenerate.delta == pytest.approx(0.5)
    # the prompting reference pairs by document even though its prompts differ
    prompted = {m: {(d, h, "other"): v for (d, h, _), v in vals.items()} for m, vals in mine.items()}
    assert compare_quality(prompted, base, PairedBootstrap(100)).degenerate is None
    assert compare_quality(prompted, base, PairedBootstrap(100), same_prompt=False).degenerate is not None
