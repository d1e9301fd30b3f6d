"""Emotion classifiers that score generated text, in batches, for the steer_emotion lm-eval tasks.

Three kinds of classifier are understood:

* a GoEmotions classifier (28 labels, e.g. the default ``SamLowe/roberta-base-go_emotions``,
  a multi-label model scored with a sigmoid),
* an Ekman classifier (``anger disgust fear joy neutral sadness surprise``, e.g.
  ``j-hartmann/emotion-english-distilroberta-base``, a single-label model scored with a softmax),
* ``nade`` (PyPI package, bundled LightGBM models): Plutchik's 8 emotions, no neutral label.

Any Hugging Face sequence-classification model (hub id or local folder) works as long as its
``config.id2label`` names GoEmotions or Ekman labels; ``config.problem_type`` decides sigmoid
(``multi_label_classification``) or softmax (anything else but regression).

Targets are GoEmotions labels (``anger``) or Ekman groups (``ekman:anger``, or ``ekman_anger`` as in
task names; see :mod:`steer_plugin.data.goemotions`). A target is mapped
onto the classifier's own labels (:meth:`EmotionClassifier.target_labels`):

* a label the classifier has is used as is;
* otherwise an Ekman classifier uses the Ekman group of the label (annoyance → anger,
  neutral → neutral), and nade uses :data:`NADE_MAPPING`;
* an Ekman group is the classifier's labels for all members if it has them all (a GoEmotions
  classifier), else the classifier's label named like the group (Ekman classifier, nade).

Unmappable targets (e.g. ``neutral`` for nade) raise :class:`SteerError`.

Classifiers are loaded once per process: :func:`get_classifier` keeps a module-level cache keyed by
(name, device).
"""

from __future__ import annotations

import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steer_plugin.data.goemotions import EKMAN, LABELS, ekman_group, resolve_target
from steer_plugin.errors import SteerError, first_line
from steer_plugin.io.terminal import printable

DEFAULT_CLASSIFIER = "SamLowe/roberta-base-go_emotions"
CLASSIFIER_ENV = "STEER_CLASSIFIER"
NADE_NAME = "nade"
DEFAULT_BATCH_SIZE = 32

# The GoEmotions label set and Ekman mapping live in steer_plugin.data.goemotions (one copy).
EKMAN_LABELS: tuple[str, ...] = (*sorted(EKMAN), "neutral")
EKMAN_OF: dict[str, str] = {m: g for g, ms in EKMAN.items() for m in ms} | {"neutral": "neutral"}

NADE_LABELS: tuple[str, ...] = (
    "anger", "anticipation", "disgust", "fear", "joy", "sadness", "surprise", "trust",
)  # fmt: skip

# GoEmotions label → Plutchik label scored by nade. It follows the Ekman mapping, except for labels
# that sit on Plutchik's wheel under trust or anticipation: admiration (intense trust) and approval
# (acceptance, mild trust) → trust; optimism (anticipation + joy) and desire (wanting what is ahead)
# → anticipation. neutral has no Plutchik counterpart and is left out on purpose.
NADE_MAPPING: dict[str, str] = {
    "anger": "anger", "annoyance": "anger", "disapproval": "anger",
    "disgust": "disgust",
    "fear": "fear", "nervousness": "fear",
    "joy": "joy", "amusement": "joy", "excitement": "joy", "gratitude": "joy", "love": "joy",
    "relief": "joy", "pride": "joy", "caring": "joy",
    "admiration": "trust", "approval": "trust",
    "optimism": "anticipation", "desire": "anticipation",
    "sadness": "sadness", "disappointment": "sadness", "embarrassment": "sadness",
    "grief": "sadness", "remorse": "sadness",
    "surprise": "surprise", "realization": "surprise", "confusion": "surprise",
    "curiosity": "surprise",
}  # fmt: skip

# nade has no neutral label: a text counts as neutral when all 8 scores are below this threshold
# (its top label is then reported as "neutral"). On GoEmotions test texts 55% of neutral-only texts
# and 42% of texts with an emotion label fall below 0.3, so with nade neutral_rate is a weak signal.
NADE_NEUTRAL_THRESHOLD = 0.3

NEUTRAL = "neutral"
# float rounding a sigmoid or softmax may show beyond [0, 1]; anything further is no probability
PROBABILITY_SLACK = 1e-6


def metric_label(label: str) -> str:
    """A classifier label as it appears in a metric name (prob_<label>): lowercase, [a-z0-9_]."""
    return re.sub(r"[^a-z0-9_]+", "_", label.strip().lower()).strip("_") or "label"


def chosen_classifier(name: str | None = None) -> str | None:
    """The classifier asked for: ``name`` if given, else $STEER_CLASSIFIER; None when neither is (the default)."""
    for candidate in (name, os.environ.get(CLASSIFIER_ENV)):
        if candidate is not None and str(candidate).strip():
            return str(candidate).strip()
    return None


def resolve_classifier_name(name: str | None = None) -> str:
    """The classifier to use: ``name`` if given, else $STEER_CLASSIFIER, else the SamLowe model."""
    return chosen_classifier(name) or DEFAULT_CLASSIFIER


@dataclass(frozen=True)
class ScoreRecord:
    """One generation with its classifier scores, as the filter hands it to process_results."""

    generation: str
    classifier: str
    target: str
    target_labels: tuple[str, ...]
    top_label: str
    neutral: bool | None  # None: the classifier has no notion of neutral
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "classifier": self.classifier,
            "target": self.target,
            "target_labels": list(self.target_labels),
            "top_label": self.top_label,
            "neutral": self.neutral,
            "scores": dict(self.scores),
        }


def emotion_metrics(record: Mapping[str, Any] | ScoreRecord) -> dict[str, float]:
    """Per-sample metrics of one score record (see the steer_emotion task README for meanings)."""
    rec = record.to_dict() if isinstance(record, ScoreRecord) else record
    scores: Mapping[str, float] = rec["scores"]
    targets = rec["target_labels"]
    metrics = {
        "target_rate": float(rec["top_label"] in targets),
        "target_prob": float(sum(scores[label] for label in targets)),
    }
    if rec["neutral"] is not None:
        metrics["neutral_rate"] = float(bool(rec["neutral"]))
    for label, prob in scores.items():
        metrics[f"prob_{metric_label(label)}"] = float(prob)
    return metrics


def labels_for_target(
    name: str, labels: Sequence[str], goemotions_map: Mapping[str, str], target: str
) -> tuple[str, ...]:
    """The labels of classifier ``name`` that count as hitting ``target`` (see the module docstring); a one-line
    SteerError for a target it cannot express (``neutral`` for nade)."""
    members = resolve_target(target)
    group = ekman_group(target)
    if group:
        if all(m in labels for m in members):
            return members
        if group in labels:
            return (group,)
    mapped = [goemotions_map.get(m) for m in members]
    if any(m is None for m in mapped):
        missing = [m for m, to in zip(members, mapped, strict=True) if to is None]
        raise SteerError(
            f"emotion classifier {name!r} has no label for target {target!r} "
            f"(unmapped: {', '.join(missing)}); its labels are {', '.join(labels)}"
        )
    return tuple(dict.fromkeys(m for m in mapped if m is not None))


def check_classifier(name: str | None, targets: Sequence[str]) -> None:
    """What can be known of the emotion tasks' classifier before any model loads: a local folder that is not
    there, and (for ``nade``, whose labels are known without loading it) a target it cannot score."""
    chosen = resolve_classifier_name(name)
    if chosen == NADE_NAME:
        for target in targets:
            labels_for_target(NADE_NAME, NADE_LABELS, NADE_MAPPING, target)
        return
    problem = _missing_folder(chosen)
    if problem:
        raise SteerError(problem)


def _missing_folder(name: str) -> str | None:
    """Why ``name`` (a classifier named like a local path) cannot be loaded; None: a folder, or a hub id."""
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.is_dir():
        return (
            f"emotion classifier folder {name!r} does not exist; accepted: a local folder saved "
            "with save_pretrained, a Hugging Face hub id, or 'nade'"
        )
    return None


@dataclass
class EmotionClassifier(ABC):
    """A text → {label: probability} scorer with a fixed label set."""

    name: str
    labels: tuple[str, ...]
    # GoEmotions label → this classifier's label, for the GoEmotions labels it can express.
    goemotions_map: dict[str, str] = field(default_factory=dict)

    @abstractmethod
    def _score_batch(self, texts: list[str]) -> list[list[float]]:
        """Scores of one batch, one row per text, columns in ``self.labels`` order."""

    def score(
        self, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE, names: Sequence[str] | None = None
    ) -> list[dict[str, float]]:
        """Score all texts, ``batch_size`` at a time; rows come back in input order. A score that is no
        probability (NaN, inf, outside [0, 1]) is a SteerError naming the text (``names``: what each text is,
        e.g. its document; else its position): it would pass silently into every mean."""
        if batch_size < 1:
            raise SteerError(f"classifier batch size must be a positive integer, got {batch_size}")
        texts = [str(t) for t in texts]
        # Similar lengths in one batch waste less padding; the order is restored below.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[dict[str, float]] = [{} for _ in texts]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = self._score_batch([texts[i] for i in idx])
            for i, row in zip(idx, rows, strict=True):
                out[i] = {label: float(p) for label, p in zip(self.labels, row, strict=True)}
                self._check_probabilities(out[i], names[i] if names is not None else f"text {i}", texts[i])
        return out

    def _check_probabilities(self, scores: Mapping[str, float], name: str, text: str) -> None:
        for label, p in scores.items():
            if not (-PROBABILITY_SLACK <= p <= 1 + PROBABILITY_SLACK):  # False for NaN too
                shown = printable(text[:60] + ("..." if len(text) > 60 else ""))
                raise SteerError(
                    f"emotion classifier {self.name!r} gave {p} as the probability of {label!r} for {name} "
                    f"({shown!r}); a score must be a number in [0, 1] (NaN weights, or a float16 overflow?)"
                )

    def target_labels(self, target: str) -> tuple[str, ...]:
        """The classifier labels that count as hitting ``target`` (see module docstring)."""
        return labels_for_target(self.name, self.labels, self.goemotions_map, target)

    def top_label(self, scores: Mapping[str, float]) -> str:
        return max(self.labels, key=lambda label: scores[label])

    def is_neutral(self, scores: Mapping[str, float]) -> bool | None:
        """Whether the text reads as neutral; None when the classifier cannot tell."""
        if NEUTRAL in self.labels:
            return self.top_label(scores) == NEUTRAL
        return None

    def score_records(
        self,
        texts: Sequence[str],
        targets: Sequence[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        names: Sequence[str] | None = None,
    ) -> list[ScoreRecord]:
        """Score generations against their targets in batched classifier calls (``names``: see ``score``)."""
        if len(texts) != len(targets):
            raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
        wanted = {t: self.target_labels(t) for t in dict.fromkeys(targets)}  # fail before scoring
        records = []
        for text, target, scores in zip(texts, targets, self.score(texts, batch_size, names), strict=True):
            records.append(
                ScoreRecord(
                    generation=str(text),
                    classifier=self.name,
                    target=target,
                    target_labels=wanted[target],
                    top_label=self.top_label(scores),
                    neutral=self.is_neutral(scores),
                    scores=scores,
                )
            )
        return records


class HFEmotionClassifier(EmotionClassifier):
    """A transformers sequence-classification model (hub id or local folder)."""

    def __init__(self, name: str, model: Any, tokenizer: Any, device: str) -> None:
        id2label = getattr(model.config, "id2label", None) or {}
        labels = tuple(str(id2label[i]).strip().lower() for i in sorted(id2label, key=int))
        if len(set(labels)) != len(labels) or not labels:
            raise SteerError(f"emotion classifier {name!r} has no usable config.id2label (got {id2label})")
        problem_type = getattr(model.config, "problem_type", None)
        if problem_type == "regression":
            raise SteerError(
                f"emotion classifier {name!r} is a regression model; accepted: "
                "multi_label_classification (sigmoid) or single_label_classification (softmax)"
            )
        goemotions_map = {}
        for label in LABELS:
            if label in labels:
                goemotions_map[label] = label
            elif EKMAN_OF[label] in labels:  # an Ekman classifier
                goemotions_map[label] = EKMAN_OF[label]
        super().__init__(name=name, labels=labels, goemotions_map=goemotions_map)
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.multi_label = problem_type == "multi_label_classification"
        limit = getattr(tokenizer, "model_max_length", None) or 512
        self.max_length = int(min(limit, 512))
        if tokenizer.pad_token is None:  # e.g. GPT-2 style tokenizers
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    def _score_batch(self, texts: list[str]) -> list[list[float]]:
        import torch

        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(
            self.device
        )
        with torch.inference_mode():
            logits = self.model(**enc).logits.float()
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        return probs.cpu().tolist()


class NadeEmotionClassifier(EmotionClassifier):
    """nade (PyPI): Plutchik's 8 emotions in [0, 1]; neutral = all below NADE_NEUTRAL_THRESHOLD."""

    def __init__(self) -> None:
        import warnings

        try:
            from nade import Nade
        except ImportError as err:
            raise SteerError("classifier 'nade' needs the nade package: pip install 'steer-plugin[nade]'") from err
        with warnings.catch_warnings():  # nade warns while it unpacks its bundled models
            warnings.simplefilter("ignore")
            self.nade = Nade()
        super().__init__(name=NADE_NAME, labels=NADE_LABELS, goemotions_map=dict(NADE_MAPPING))

    def _score_batch(self, texts: list[str]) -> list[list[float]]:
        # nade's fastText front end reads one line per text.
        flat = [" ".join(t.splitlines()) for t in texts]
        raw = self.nade.predict(flat)
        cols = {label: [_as_float(v) for v in raw[label]] for label in self.labels}
        return [[cols[label][i] for label in self.labels] for i in range(len(flat))]

    def top_label(self, scores: Mapping[str, float]) -> str:
        if self.is_neutral(scores):
            return NEUTRAL
        return super().top_label(scores)

    def is_neutral(self, scores: Mapping[str, float]) -> bool | None:
        return max(scores[label] for label in self.labels) < NADE_NEUTRAL_THRESHOLD


def _as_float(value: Any) -> float:
    value = value.as_py() if hasattr(value, "as_py") else value
    return float("nan") if value is None else float(value)


_CACHE: dict[tuple[str, str], EmotionClassifier] = {}
_LOCK = threading.Lock()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def get_classifier(name: str | None = None, device: str | None = None) -> EmotionClassifier:
    """The classifier called ``name`` (hub id, local folder or ``nade``), loaded once per process."""
    name = resolve_classifier_name(name)
    key_device = "cpu" if name == NADE_NAME else (device or default_device())
    key = (name, key_device)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(name, key_device)
        return _CACHE[key]


def _load(name: str, device: str) -> EmotionClassifier:
    if name == NADE_NAME:
        return NadeEmotionClassifier()
    problem = _missing_folder(name)
    if problem:
        raise SteerError(problem)
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = str(path) if looks_local else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForSequenceClassification.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise SteerError(
            f"cannot load emotion classifier {name!r} ({first_line(err)}); accepted: a local folder "
            "saved with save_pretrained, a Hugging Face hub id, or 'nade'"
        ) from err
    model.eval().to(device)
    return HFEmotionClassifier(name, model, tokenizer, device)
