"""The numbers a comparison script shows for one configuration of a study: the robust target Δ (with its
paired interval), the degenerate rate, the generation perplexity, the side effects' KL and perplexity.

`scripts/compare_settings.py` and `scripts/compare_recipes.py` read them from one place, so their tables
say the same thing for the same row.
"""

from __future__ import annotations

from dataclasses import dataclass

from steer_plugin.study.arms import emotion_task, target_metric
from steer_plugin.study.paired import Paired
from steer_plugin.study.quality import DEGENERATE
from steer_plugin.study.rows import Row

SIDE = "side_effects"


@dataclass(frozen=True)
class ArmNumbers:
    """One row's numbers for one emotion (None: not measured)."""

    metric: str  # the headline metric's name: ``<task>/target_prob_fluent`` (``target_prob`` where not measured)
    target: float | None  # its value: the target probability on outputs fluent in both arms
    delta: Paired | None  # its paired Δ vs the unsteered baseline
    degenerate: float | None  # share of degenerate outputs on the emotion task
    gen_ppl: float | None  # perplexity of the outputs under the unsteered model
    kl: float | None  # KL to the unsteered model on the neutral side-effect texts
    ppl: float | None  # perplexity of those texts

    @classmethod
    def of(cls, row: Row, emotion: str) -> ArmNumbers:
        metric, task = target_metric(row, emotion), emotion_task(row, emotion)
        return cls(
            metric=metric,
            target=row.metrics.get(metric),
            delta=row.paired.get(metric),
            degenerate=row.metrics.get(f"{task}/{DEGENERATE}"),
            gen_ppl=row.metrics.get(f"{task}/gen_ppl"),
            kl=row.metrics.get(f"{SIDE}/kl"),
            ppl=row.metrics.get(f"{SIDE}/ppl"),
        )


def cell(x: float | None, spec: str = ".3f") -> str:
    """A number for a table cell; ``-`` where it was not measured."""
    return "-" if x is None else format(x, spec)
