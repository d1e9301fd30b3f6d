"""lm-eval hooks of the steer_emotion tasks (referenced from the YAMLs with ``!function``).

* :func:`emotion_docs` is the tasks' ``custom_dataset``. lm-eval 0.4.13 calls it with the task's
  ``metadata`` (YAML ``metadata`` | TaskManager ``metadata``, i.e. ``--metadata`` and, in
  ``simple_evaluate`` without a task manager, the model_args) plus ``dataset_kwargs``. That is the
  one hook that sees the runtime metadata, so it resolves the classifier there
  (``metadata["classifier"]`` → $STEER_CLASSIFIER → SamLowe) and stores the name in every doc, and the
  prompt split (``metadata["steer_split"]``: ``test``, the template's default, or ``dev`` for choosing;
  ``steer_plugin.data.prompt_split``), which the results' task config then records.
* :class:`EmotionScoreFilter` receives all responses of a task at once, classifies them in batched
  calls and replaces each response by its score record (see ``steer_plugin.harness.classifier.ScoreRecord``).
* :func:`process_results` turns a score record into the per-sample metrics.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

try:
    import steer_plugin  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: the package sits two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lm_eval.api.filter import Filter

from steer_plugin.data.goemotions import neutral_texts, neutral_texts_location, resolve_target
from steer_plugin.data.prompt_split import DEFAULT_SPLIT, split_rows
from steer_plugin.data.text_quality import quality_metrics
from steer_plugin.errors import SteerError
from steer_plugin.harness.classifier import (
    DEFAULT_BATCH_SIZE,
    emotion_metrics,
    get_classifier,
    resolve_classifier_name,
)

HERE = Path(__file__).resolve().parent
PROMPTS_FILE = HERE / "neutral_prompts.jsonl"
CONTINUE_DOCS = 200  # fixed subset: the first 200 neutral-only GoEmotions test texts (then split dev/test)
SOURCE_PROMPTS = "prompts"
SOURCE_CONTINUE = "goemotions_neutral"
SPLIT = "test"  # of the harness task; the neutral texts also come from GoEmotions' test split


def load_prompts(path: str | os.PathLike = PROMPTS_FILE) -> list[dict[str, str]]:
    """The emotionally neutral open-ended prompts: rows {id, form, topic, prompt}."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def load_neutral_texts(limit: int = CONTINUE_DOCS, folder: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """First ``limit`` GoEmotions test texts whose only label is neutral: rows {id, text}.

    Read from ``folder`` (or $STEER_GOEMOTIONS_DIR, a GoEmotions release folder), else from the hub.
    """
    return [{"id": ex.id, "text": ex.text} for ex in neutral_texts("test", neutral_texts_location(folder))[:limit]]


def prompts_part(split: str = DEFAULT_SPLIT) -> list[dict[str, str]]:
    """The chat tasks' prompts of one part (``dev`` or ``test``), stratified by topic."""
    rows = load_prompts()
    return split_rows(rows, split, [r["id"] for r in rows], [r["topic"] for r in rows])


def neutral_texts_part(split: str = DEFAULT_SPLIT, folder: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """The continuation tasks' texts of one part (``dev`` or ``test``) of the first ``CONTINUE_DOCS``."""
    rows = load_neutral_texts(folder=folder)
    return split_rows(rows, split, [r["id"] for r in rows], [SOURCE_CONTINUE] * len(rows))


def build_docs(
    target: str,
    source: str,
    classifier: str,
    goemotions_dir: str | os.PathLike | None = None,
    split: str = DEFAULT_SPLIT,
) -> list[dict[str, str]]:
    """Docs of one task on one part of its prompts: {prompt_id, prompt, source, target, classifier}."""
    resolve_target(target)  # SteerError for an unknown target
    if source == SOURCE_PROMPTS:
        base = [(r["id"], r["prompt"]) for r in prompts_part(split)]
    elif source == SOURCE_CONTINUE:
        base = [(r["id"], r["text"]) for r in neutral_texts_part(split, goemotions_dir)]
    else:
        raise SteerError(f"unknown steer_source {source!r}; accepted: {SOURCE_PROMPTS}, {SOURCE_CONTINUE}")
    return [
        {"prompt_id": pid, "prompt": text, "source": source, "target": target, "classifier": classifier}
        for pid, text in base
    ]


def emotion_docs(
    steer_target: str,
    steer_source: str = SOURCE_PROMPTS,
    classifier: str | None = None,
    goemotions_dir: str | None = None,
    steer_split: str = DEFAULT_SPLIT,
    **_metadata: Any,
):
    """``custom_dataset`` of the steer_emotion tasks: {"test": datasets.Dataset}. ``goemotions_dir`` (task
    metadata, else $STEER_GOEMOTIONS_DIR, else the hub): where the continuation tasks' neutral texts come from.
    ``steer_split`` (task metadata): which part of the prompts, ``test`` (reporting) or ``dev`` (choosing).

    Loads the classifier (cached per process) to fail before generation when it cannot score the
    target, e.g. ``neutral`` with nade.
    """
    import datasets

    name = resolve_classifier_name(classifier)
    get_classifier(name).target_labels(steer_target)
    docs = build_docs(steer_target, steer_source, name, goemotions_dir, steer_split)
    return {SPLIT: datasets.Dataset.from_list(docs)}


class ScoreRecordDict(dict):
    """A score record whose str() is JSON: lm-eval writes filtered_resps to the samples file with
    str(), so --log_samples files then hold parseable records instead of Python reprs."""

    def __str__(self) -> str:
        return json.dumps(self, ensure_ascii=False)


def _first(resp: Any) -> str:
    # After take_first a response is a string; without it, the list of repeats (use the first).
    if isinstance(resp, (list, tuple)):
        resp = resp[0] if resp else ""
    return "" if resp is None else str(resp)


def _output_name(doc: dict, index: int) -> str:
    """What an error calls one generation: its document's prompt id and target."""
    return f"the output for prompt {doc.get('prompt_id', index)!r} (target {doc.get('target')})"


class EmotionScoreFilter(Filter):
    """Classify every generation of a task in batched calls; each response becomes its score record."""

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_size = int(batch_size)

    def apply(self, resps: Iterable[Any], docs: Iterable[dict]) -> list[dict[str, Any]]:
        texts = [_first(r) for r in resps]
        docs = list(docs)
        names = [resolve_classifier_name(d.get("classifier")) for d in docs]
        records: list[dict[str, Any]] = [{} for _ in texts]
        for name in dict.fromkeys(names):  # one classifier per task in practice
            idx = [i for i, n in enumerate(names) if n == name]
            clf = get_classifier(name)
            scored = clf.score_records(
                [texts[i] for i in idx],
                [docs[i]["target"] for i in idx],
                self.batch_size,
                [_output_name(docs[i], i) for i in idx],
            )
            for i, rec in zip(idx, scored, strict=True):
                records[i] = ScoreRecordDict(rec.to_dict())
        return records


def process_results(doc: dict, results: list[Any]) -> dict[str, float]:
    """target_rate, target_prob, neutral_rate (if the classifier has it), prob_<label>, and what the output
    looks like: no_words, repetition, distinct_2 (steer_plugin.data.text_quality)."""
    record = results[0]
    if not isinstance(record, dict) or "scores" not in record:
        raise SteerError(
            "steer_emotion tasks need the EmotionScoreFilter in their filter_list; got an unscored response"
        )
    return {**emotion_metrics(record), **quality_metrics(str(record.get("generation", "")))}
