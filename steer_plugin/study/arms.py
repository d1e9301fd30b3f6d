"""A finished `steer run` / `steer sweep` folder as a study: the unsteered baseline, each emotion vector's
configurations (arms) with their random controls and prompting references, and which task and metric of a row
are the emotion's own."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from steer_plugin.data.goemotions import target_slug
from steer_plugin.errors import SteerError
from steer_plugin.study.paired import DEFAULT_RESAMPLES
from steer_plugin.study.quality import FLUENT_TARGET
from steer_plugin.study.rows import Row, SeriesKey, compare_rows, load_rows

SIDE = "side_effects"


@dataclass
class Arm:
    """One steered configuration: a vector (or its random control) at one alpha."""

    row: Row
    emotion: str  # the class the vector steers toward (a control: its parent's)
    alpha: float
    budget: float | None  # the KL budget the alpha was calibrated for, if any
    series: str = ""  # what the summary/plots call it: the emotion, or the vector and settings if that is ambiguous

    @property
    def level(self) -> float:
        """What the run's grid was given: the KL budget, else the alpha."""
        return self.alpha if self.budget is None else self.budget

    @property
    def kl(self) -> float | None:
        return self.row.metrics.get(f"{SIDE}/kl")


@dataclass
class Study:
    baseline: Row
    arms: list[Arm]  # emotion vectors, in row order
    controls: dict[SeriesKey, list[Arm]] = field(default_factory=dict)  # a vector's series -> its controls
    prompted: dict[str, Row] = field(default_factory=dict)  # emotion -> the prompting reference (asking for it)
    rows: list[Row] = field(default_factory=list)  # every leaderboard row, with its paired statistics

    @property
    def emotions(self) -> list[str]:
        """The steered series: emotions, or ``anger (mean), layers 3-5, all`` when one emotion has several."""
        return list(dict.fromkeys(a.series for a in self.arms))

    @property
    def levels(self) -> list[float]:
        return sorted({a.level for a in self.arms})

    def controls_of(self, arm: Arm) -> list[Arm]:
        """The random controls of the arm's vector at the arm's level."""
        return [c for c in self.controls.get(arm.row.key.series, []) if _same_level(arm, c)]


def _arm(row: Row) -> Arm | None:
    """The row as one emotion's arm; None for the baseline, several vectors, or several alphas."""
    key = row.key
    if not key.steered or key.emotion is None:
        return None
    try:
        alpha = float(key.alpha)
    except (TypeError, ValueError):
        return None  # several vectors at different alphas: not one emotion's arm
    return Arm(row, key.emotion, alpha, key.kl_budget)


def _name_series(arms: list[Arm]) -> None:
    """One series per (vector, layers, positions); named by its emotion unless that names several."""
    groups = {(a.row.key.vector, a.row.key.layers, a.row.key.positions): a.emotion for a in arms}
    ambiguous = len(groups) > len(set(groups.values()))
    for a in arms:
        key = a.row.key
        a.series = f"{key.vector}, layers {key.layers}, {key.positions}" if ambiguous else a.emotion


def _same_level(arm: Arm, control: Arm) -> bool:
    """A control belongs to the arm at the same KL budget (at the arm's alpha or its own), else the same alpha."""
    if arm.budget is not None and control.budget is not None:
        return math.isclose(arm.budget, control.budget)
    return arm.budget is None and control.budget is None and math.isclose(arm.alpha, control.alpha)


def load_study(folder: str | Path, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Study:
    """The baseline, each emotion vector's configurations and their controls, with paired statistics.

    Args:
        folder: a `steer run` / `steer sweep` folder (an unsteered baseline among its results).
        resamples: paired bootstrap draws per comparison.
        seed: the bootstrap's seed.

    Returns:
        The study: arms know their emotion from their vector's metadata, controls are found by their
        vector's series (``SeriesKey``) and level.
    """
    rows = load_rows(folder)
    compare_rows(rows, resamples, seed)
    baselines = [r for r in rows if r.key.unsteered]
    if not baselines:
        raise SteerError(f"no baseline (alpha 0) results under {folder}: the summary compares against it")
    arms = [a for r in rows if r.key.controls is None and (a := _arm(r))]
    _name_series(arms)
    study = Study(baselines[0], arms, rows=rows)
    for r in rows:
        if (series := r.key.controls) is not None and (control := _arm(r)) is not None:
            study.controls.setdefault(series, []).append(control)
        if r.key.prompted is not None:
            study.prompted.setdefault(r.key.prompted, r)
    return study


def emotion_task(row: Row, emotion: str) -> str:
    """The emotion's own task in a row: ``steer_emotion_<e>``, or the continuation task of a base model."""
    slug = target_slug(emotion)
    for task in (f"steer_emotion_{slug}", f"steer_emotion_continue_{slug}"):
        if any(m.startswith(task + "/") for m in row.metrics):
            return task
    return f"steer_emotion_{slug}"


def target_metric(row: Row, emotion: str) -> str:
    """The headline: the target probability on outputs non-degenerate in both arms (``study.quality``); the raw
    target probability only where the outputs' quality was not measured (a plain lm_eval run of old tasks)."""
    task = emotion_task(row, emotion)
    fluent = f"{task}/{FLUENT_TARGET}"
    return fluent if fluent in row.paired or fluent in row.metrics else f"{task}/target_prob"
