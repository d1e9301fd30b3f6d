"""lm-eval hooks of the steer_fluency task (referenced from the YAML with ``!function``).

The docs are the neutral texts of ``steer_plugin.data.neutral_texts.TextSource`` (what ``steer sweep`` measures
its ``kl``/``ppl`` side effects on), scored with loglikelihood_rolling like wikitext: word and byte
perplexity and bits per byte of the whole text.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

try:
    import steer_plugin  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: the package sits two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from steer_plugin.data.neutral_texts import DEFAULT_N_TEXTS, TextSource

SPLIT = "test"


def fluency_docs(fluency_texts: str | None = None, fluency_n: int = DEFAULT_N_TEXTS, **_metadata: Any):
    """``custom_dataset``: {"test": Dataset of {doc_id, text}}. ``fluency_texts`` (a text file or a
    GoEmotions folder, from ``--metadata``) overrides $STEER_GOEMOTIONS_DIR / the hub."""
    import datasets

    texts = TextSource(fluency_texts).load(int(fluency_n))
    return {SPLIT: datasets.Dataset.from_list([{"doc_id": i, "text": t} for i, t in enumerate(texts)])}


def process_results(doc: dict, results: list[Any]) -> dict[str, tuple[float, int]]:
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["text"]))
    n_bytes = len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }
