"""What the report page's sample browser shows, read from each configuration's per-document samples files:

* per emotion task, every prompt with the baseline's output and each configuration's beside it, the classifier's
  target probability, and whether the output is degenerate and why (the rule ``study.quality`` applies, with its
  limits from the baseline's outputs);
* per multiple-choice task with one correct answer (TruthfulQA MC1), the questions whose chosen answer (the most
  likely choice) changed under steering: the question, both answers and the correct one.

Texts are returned as they are; the page escapes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer_plugin.data.text_quality import DegenerateRule
from steer_plugin.study.arms import Study, emotion_task
from steer_plugin.study.example_outputs import prompt_and_generation, sample_rows
from steer_plugin.study.paired import CHOICE_KEYS, chosen_answer
from steer_plugin.study.quality import has_quality, rule_of
from steer_plugin.study.rows import Row

# MC2 scores the probability mass on several true answers: neither "the chosen answer" nor "the correct one" is
# single there, so only tasks with one correct answer list their changed answers.
SEVERAL_CORRECT = ("mc2",)


def row_names(rows: list[Row]) -> dict[int, str]:
    """id(row) -> what the page calls the configuration: ``baseline``, ``asking for anger``, ``anger (mean) at KL
    0.1 (alpha 0.17)``; layers and positions are named where the rows have several."""
    steered = [r.key for r in rows if r.key.steered]
    where = len({(k.layers, k.positions) for k in steered}) > 1
    names: dict[int, str] = {}
    for row in rows:
        key = row.key
        if key.unsteered:
            name = "baseline"
        elif key.prompted is not None:
            name = f"asking for {key.prompted}"
        elif key.steered:
            alpha = f"{key.alpha:.3g}" if isinstance(key.alpha, (int, float)) else str(key.alpha)
            level = f"KL {key.kl_budget:g} (alpha {alpha})" if key.kl_budget is not None else f"alpha {alpha}"
            name = f"{key.vector} at {level}" + (f", layers {key.layers}, {key.positions}" if where else "")
        else:
            name = row.source
        names[id(row)] = name if name not in names.values() else f"{name} ({row.source})"
    return names


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _output(row: dict | None, rule: DegenerateRule | None) -> dict[str, Any] | None:
    """One output as the browser shows it; ``bad``: why it is degenerate ([] = it is not, None = not measured)."""
    if row is None:
        return None
    example = prompt_and_generation(row)
    bad = None
    if rule is not None and "no_words" in row and "repetition" in row:
        bad = rule.reasons(
            _number(row["no_words"]) or 0.0, _number(row["repetition"]) or 0.0, _number(row.get("gen_nll"))
        )
    return {"text": example[1] if example else None, "score": _number(row.get("target_prob")), "bad": bad}


def _columns(study: Study, series: str) -> tuple[str, list[Row]]:
    """An emotion series' task and its rows beside the baseline: each configuration (by level) followed by its
    random controls, then the prompting reference."""
    arms = sorted((a for a in study.arms if a.series == series), key=lambda a: a.level)
    rows: list[Row] = []
    for arm in arms:
        rows += [arm.row, *(c.row for c in study.controls_of(arm))]
    if arms[0].emotion in study.prompted:
        rows.append(study.prompted[arms[0].emotion])
    return emotion_task(arms[0].row, arms[0].emotion), rows


def emotion_samples(study: Study, names: dict[int, str]) -> list[dict[str, Any]]:
    """Per emotion series: its task, its configurations and every prompt with each output."""
    out = []
    for series in study.emotions:
        task, rows = _columns(study, series)
        base_path = study.baseline.samples.get(task)
        base = sample_rows(base_path)
        if not base or base_path is None:
            continue
        scores = study.baseline.doc_scores.get(task, {})
        rule = rule_of(scores) if has_quality(scores) else None
        outputs = [sample_rows(r.samples.get(task)) for r in rows]
        docs = []
        for doc_id, row in sorted(base.items()):
            example = prompt_and_generation(row)
            docs.append({
                "id": doc_id,
                "prompt": example[0] if example else "",
                "base": _output(row, rule),
                "outs": [_output(o.get(doc_id), rule) for o in outputs],
            })  # fmt: skip
        out.append({"task": task, "series": series, "configs": [names[id(r)] for r in rows], "docs": docs})
    return out


@dataclass(frozen=True)
class AnswerChanges:
    """One configuration's changed answers on one multiple-choice task."""

    task: str
    config: str
    questions: int  # documents answered by both
    changed: list[dict[str, Any]]  # question, before, after, correct, right_before, right_after

    @property
    def gained(self) -> int:
        return sum(c["right_after"] and not c["right_before"] for c in self.changed)

    @property
    def lost(self) -> int:
        return sum(c["right_before"] and not c["right_after"] for c in self.changed)


def _answers(path: Path | None) -> dict[int, dict[str, Any]]:
    """doc_id -> its chosen answer, from compact rows (``paired.compact_row``) or full harness rows."""
    out = {}
    for doc_id, row in sample_rows(path).items():
        answer = {k: row[k] for k in CHOICE_KEYS if k in row} if "chosen" in row else chosen_answer(row)
        if answer:
            out[doc_id] = answer
    return out


def changed_answers(study: Study, rows: list[Row], names: dict[int, str]) -> tuple[list[AnswerChanges], list[str]]:
    """Per multiple-choice task and configuration (of ``rows``, in their order), the questions whose chosen answer
    changed; and the tasks whose samples do not record the chosen answers (runs before they were kept)."""
    out: list[AnswerChanges] = []
    unrecorded = []
    for task, path in study.baseline.samples.items():
        if task.startswith("steer_emotion") or task.endswith(SEVERAL_CORRECT) or task == "side_effects":
            continue
        base = _answers(path)
        if not base:
            unrecorded += [task] if study.baseline.doc_scores.get(task, {}).get("acc") else []
            continue
        for row in rows:
            if row is study.baseline or task not in row.samples:
                continue
            mine = _answers(row.samples[task])
            both = [d for d in base if d in mine]
            changed = []
            for doc in both:
                before, after = base[doc], mine[doc]
                if before["chosen"] == after["chosen"]:
                    continue
                correct = before.get("correct")
                changed.append({
                    "question": str(before.get("question", f"document {doc}")), "before": str(before["choice"]),
                    "after": str(after["choice"]), "correct": "" if correct is None else str(correct),
                    "right_before": correct is not None and before["choice"] == correct,
                    "right_after": correct is not None and after["choice"] == correct,
                })  # fmt: skip
            out.append(AnswerChanges(task, names[id(row)], len(both), changed))
    return out, unrecorded
