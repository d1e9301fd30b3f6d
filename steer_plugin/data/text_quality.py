"""What a generation looks like, before anyone asks which emotion it carries.

A classifier scores whatever it is given: an empty string, a row of emoji or one phrase repeated to the token
limit all get emotion probabilities (nade scores "" as anger 0.15, ordinary text about 0.05). These measures
let the tasks and tables tell emotion from silence and broken text:

* ``no_words``: the text has no run of two or more letters (empty, whitespace, punctuation, emoji, digits);
* ``repetition``: the share of its token 3-grams that repeat an earlier 3-gram (0 = none repeats; a loop
  of one phrase approaches 1);
* ``distinct_2``: distinct token bigrams over all bigrams (the usual diversity measure; 1 = no bigram twice).

Tokens are words (``\\w+``) and single non-space symbols, lowercased, so emoji and punctuation loops count
as repetition too. The fluency of a generation (its NLL under the unsteered model) needs the model and is
measured by the sweep; :class:`DegenerateRule` combines the three into one flag per output.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[^\W\d_]{2,}")  # two or more letters in a row, any script
_TOKEN = re.compile(r"\w+|[^\w\s]")

# A text repeating at least half of its 3-grams is degenerate whatever the unsteered model does.
REPETITION_FLOOR = 0.5
# Fluency: an output is degenerate when its NLL per token exceeds the unsteered outputs' 95th percentile by
# log(4) nats, i.e. the unsteered model finds it four times less likely per token than nearly all of its own.
NLL_MARGIN = math.log(4.0)
QUANTILE = 0.95


def has_words(text: str) -> bool:
    return _WORD.search(text) is not None


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _ngrams(toks: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]


def repetition(text: str, n: int = 3) -> float:
    """Share of the text's token ``n``-grams that occurred earlier in it; 0 for texts shorter than ``n`` tokens."""
    grams = _ngrams(tokens(text), n)
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def distinct(text: str, n: int = 2) -> float:
    """Distinct token ``n``-grams over all ``n``-grams; 1 for texts shorter than ``n`` tokens (nothing repeats)."""
    grams = _ngrams(tokens(text), n)
    return 1.0 if not grams else len(set(grams)) / len(grams)


def quality_metrics(text: str) -> dict[str, float]:
    """Per-output measures as the emotion tasks report them."""
    return {
        "no_words": float(not has_words(text)),
        "repetition": repetition(text),
        "distinct_2": distinct(text),
    }


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.inf
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class DegenerateRule:
    """One documented rule: an output is degenerate when it has no words, or repeats more than
    ``repetition_limit`` of its 3-grams, or its NLL per token under the unsteered model exceeds ``nll_limit``.

    The limits come from the unsteered outputs of the same prompts (:meth:`from_baseline`), so a model that is
    repetitive or odd by nature is not flagged for being itself."""

    repetition_limit: float = REPETITION_FLOOR
    nll_limit: float = math.inf

    @classmethod
    def from_baseline(cls, repetitions: Sequence[float], nlls: Sequence[float]) -> DegenerateRule:
        """Args:
            repetitions: ``repetition`` of each unsteered output.
            nlls: NLL per token of each unsteered output that has tokens (empty: no fluency limit).

        Returns:
            The rule with ``repetition_limit = max(REPETITION_FLOOR, 95th percentile)`` and
            ``nll_limit = 95th percentile + NLL_MARGIN``."""
        finite = [x for x in nlls if math.isfinite(x)]
        return cls(
            repetition_limit=max(REPETITION_FLOOR, _quantile(list(repetitions), QUANTILE) if repetitions else 0.0),
            nll_limit=_quantile(finite, QUANTILE) + NLL_MARGIN if finite else math.inf,
        )

    def __call__(self, no_words: float, repetition: float, nll: float | None = None) -> bool:
        return bool(self.reasons(no_words, repetition, nll))

    def reasons(self, no_words: float, repetition: float, nll: float | None = None) -> list[str]:
        """Why an output is degenerate, one phrase per broken limit (empty: it is not)."""
        out = []
        if no_words:
            out.append("no words")
        if repetition > self.repetition_limit:
            out.append(f"repetition {repetition:.2f} > {self.repetition_limit:.2f}")
        if nll is not None and math.isfinite(nll) and nll > self.nll_limit:
            out.append(f"unlikely text: NLL {nll:.2f} > {self.nll_limit:.2f} nats/token")
        return out
