"""Example generations for the summary: a seeded few prompts per emotion, the baseline's output beside each
configuration's, read from the rows' per-document samples."""

from __future__ import annotations

import json
import random
from pathlib import Path

from steer_plugin.io.reading import read_regular_text
from steer_plugin.io.terminal import printable
from steer_plugin.study.arms import Study, emotion_task
from steer_plugin.study.rows import Row

EXAMPLES = 3  # prompts shown per emotion
EXAMPLE_SHOWN = 300  # characters of a generation shown


def sample_rows(path: Path | None) -> dict[int, dict]:
    """doc_id -> its row (compact or full) of a per-document samples file; unreadable lines left out."""
    out: dict[int, dict] = {}
    if path is None or not path.is_file():
        return out
    for line in read_regular_text(path).splitlines():
        try:
            doc = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(doc, dict) and isinstance(doc.get("doc_id"), int):
            out[doc["doc_id"]] = doc
    return out


def _generations(row: Row, task: str) -> dict[int, tuple[str, str]]:
    """doc_id -> (prompt, generation) from a row's per-document samples (kept by `steer sweep`)."""
    return {
        doc_id: example
        for doc_id, doc in sample_rows(row.samples.get(task)).items()
        if (example := prompt_and_generation(doc)) is not None
    }


def prompt_and_generation(row: dict) -> tuple[str, str] | None:
    """(prompt, generation) of a compact row (``paired.compact_row``) or of a full harness row (``--log-samples``)."""
    if "generation" in row:
        return str(row.get("prompt", "")), str(row["generation"])
    record = (row.get("filtered_resps") or [None])[0]
    doc = row.get("doc")
    if isinstance(record, dict) and "generation" in record:
        return str(doc.get("prompt", "") if isinstance(doc, dict) else ""), str(record["generation"])
    return None


def _shown(text: str | None) -> str:
    if text is None:
        return "(not run)"
    if not text.strip():
        return "(empty)"
    cut = text if len(text) <= EXAMPLE_SHOWN else text[:EXAMPLE_SHOWN] + "…"
    return "«" + printable(cut).replace("`", "'") + "»"


def examples_text(study: Study, seed: int = 0) -> str:
    """A seeded few prompts per emotion with the baseline's output beside each configuration's, so a reader sees
    what the numbers describe (control characters escaped; empty outputs said so)."""
    lines: list[str] = []
    for series in study.emotions:
        arms = sorted((a for a in study.arms if a.series == series), key=lambda a: a.level)
        emotion = arms[0].emotion
        task = emotion_task(arms[0].row, emotion)
        base = _generations(study.baseline, task)
        if not base:
            continue
        lines += ["", f"### {printable(series)}: example generations ({task})", ""]
        columns = [(a.row, f"KL {a.budget:g}" if a.budget is not None else f"alpha {a.alpha:g}") for a in arms]
        if emotion in study.prompted:
            columns.append((study.prompted[emotion], f"asking for {emotion}"))
        steered = [(name, _generations(row, task)) for row, name in columns]
        for doc in sorted(random.Random(seed).sample(sorted(base), min(EXAMPLES, len(base)))):
            prompt, generation = base[doc]
            lines += [f"Prompt {doc}: {_shown(prompt)}", "", f"- baseline: {_shown(generation)}"]
            for name, gens in steered:
                lines.append(f"- {name}: {_shown(gens[doc][1] if doc in gens else None)}")
            lines.append("")
    if not lines:
        return ""
    return "\n## What the outputs look like\n\nA seeded choice of prompts, the unsteered output first." + "\n".join(
        lines
    )
