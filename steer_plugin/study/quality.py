"""The robust emotion metric: what steering did to the emotion of outputs that are still text.

A classifier turns silence and loops into emotion (nade scores "" as anger 0.15, ordinary text about 0.05), so a
configuration that only makes the model stop talking would "raise anger". Per emotion task and row, from the
per-document samples of the row and of its baseline:

* every output is flagged **degenerate** by one rule (``data.text_quality.DegenerateRule``: no words, or
  repetition or fluency past limits taken from the baseline's own outputs);
* ``degenerate_rate``: the share of degenerate outputs, paired with the baseline's;
* ``target_prob_fluent``: the target probability compared **only on documents whose outputs are
  non-degenerate in both arms** (their number is the paired ``n``). An output without words cannot raise it:
  it takes its document out of the comparison instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from steer_plugin.data.text_quality import DegenerateRule
from steer_plugin.study.paired import DocKey, Paired, PairedBootstrap, match_pairs

DEGENERATE = "degenerate_rate"
FLUENT_SUFFIX = "_fluent"  # a probability compared on outputs non-degenerate in both arms
FLUENT_TARGET = "target_prob" + FLUENT_SUFFIX
NEEDED = ("no_words", "repetition", "target_prob")  # per-document metrics an emotion task must have
FLUENCY = "gen_nll"  # optional: measured by `steer sweep`, not by a plain lm_eval run

Scores = dict[str, dict[DocKey, float]]  # metric -> document -> value, as ``paired.read_scores`` reads them


@dataclass(frozen=True)
class Quality:
    """One row's quality metrics on one task against its baseline."""

    degenerate_rate: float
    baseline_degenerate_rate: float
    fluent_target: float | None  # mean target probability over the row's own non-degenerate outputs
    baseline_fluent_target: float | None
    degenerate: Paired | None  # flags vs the baseline's, per matched document
    fluent: dict[str, Paired]  # every probability (target_prob, prob_<label>) on documents non-degenerate in both

    @property
    def target(self) -> Paired | None:
        """The target probability on documents whose outputs are non-degenerate in both arms."""
        return self.fluent.get("target_prob")


def has_quality(scores: Scores) -> bool:
    return all(m in scores for m in NEEDED)


def rule_of(baseline: Scores) -> DegenerateRule:
    """The degenerate rule with its limits from the baseline's outputs."""
    return DegenerateRule.from_baseline(list(baseline["repetition"].values()), list(baseline.get(FLUENCY, {}).values()))


def flags(scores: Scores, rule: DegenerateRule) -> dict[DocKey, float]:
    """1.0 per degenerate output, 0.0 per other output."""
    nll = scores.get(FLUENCY, {})
    return {
        doc: float(rule(no_words, scores["repetition"].get(doc, 0.0), nll.get(doc)))
        for doc, no_words in scores["no_words"].items()
    }


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def compare_quality(mine: Scores, baseline: Scores, stats: PairedBootstrap, same_prompt: bool = True) -> Quality:
    """Args:
        mine: a row's per-document scores on one emotion task (``has_quality``).
        baseline: its baseline's on the same task.
        stats: the paired bootstrap the other columns use.
        same_prompt: pair documents only when their prompts agree too (False for the prompting reference).

    Returns:
        The rates, the fluent-only target probabilities and their paired comparisons (None with fewer than 2
        matched documents)."""
    rule = rule_of(baseline)
    my_flags, base_flags = flags(mine, rule), flags(baseline, rule)

    def fluent_mean(scores: Scores, flagged: dict[DocKey, float]) -> float | None:
        return _mean([v for doc, v in scores["target_prob"].items() if not flagged.get(doc, 1.0)])

    pairs = match_pairs(
        {d: (f, d) for d, f in my_flags.items()}, {d: (f, d) for d, f in base_flags.items()}, same_prompt
    )
    degenerate = stats.compare([c[0] for c, _ in pairs], [b[0] for _, b in pairs]) if len(pairs) >= 2 else None
    both = [(c[1], b[1]) for c, b in pairs if not c[0] and not b[0]]  # (my doc, its baseline doc), fluent in both
    fluent = {}
    for metric in (m for m in mine if m == "target_prob" or m.startswith("prob_")):
        if metric not in baseline:
            continue
        values = [(mine[metric].get(c), baseline[metric].get(b)) for c, b in both]
        kept = [(x, y) for x, y in values if x is not None and y is not None]
        if len(kept) >= 2:
            fluent[metric] = stats.compare([x for x, _ in kept], [y for _, y in kept])
    return Quality(
        degenerate_rate=_mean(list(my_flags.values())) or 0.0,
        baseline_degenerate_rate=_mean(list(base_flags.values())) or 0.0,
        fluent_target=fluent_mean(mine, my_flags),
        baseline_fluent_target=fluent_mean(baseline, base_flags),
        degenerate=degenerate,
        fluent=fluent,
    )
