"""Leakage: the Δ of every classifier label's probability on each steered emotion's own task, at one KL budget
(or alpha): does steering toward anger also raise annoyance, or joy? (leakage.csv / leakage.png)"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import numpy as np

from steer_plugin.errors import SteerError
from steer_plugin.io.figures import new_figure, png_bytes
from steer_plugin.study.arms import Study, emotion_task
from steer_plugin.study.paired import Paired
from steer_plugin.study.quality import FLUENT_SUFFIX


@dataclass(frozen=True)
class Leakage:
    level: float
    emotions: list[str]
    labels: list[str]
    cells: dict[tuple[str, str], Paired]  # (steered emotion, classifier label) -> Δ prob_<label>


def pick_level(study: Study, level: float | None) -> float:
    levels = study.levels
    if not levels:
        raise SteerError("no steered configurations to report on")
    if level is None:
        return levels[(len(levels) - 1) // 2]
    for candidate in levels:
        if math.isclose(candidate, level, rel_tol=1e-6):
            return candidate
    raise SteerError(f"--leakage-budget {level:g} is not in this run; it has {', '.join(f'{x:g}' for x in levels)}")


def leakage(study: Study, level: float | None = None) -> Leakage:
    """Δ of every ``prob_<label>`` of each emotion's own ``steer_emotion_<emotion>`` task at one budget/alpha."""
    chosen = pick_level(study, level)
    cells: dict[tuple[str, str], Paired] = {}
    labels: dict[str, None] = {}
    emotions: list[str] = []
    for arm in study.arms:
        if not math.isclose(arm.level, chosen, rel_tol=1e-6) or arm.series in emotions:
            continue
        prefix = f"{emotion_task(arm.row, arm.emotion)}/prob_"
        mine = {k[len(prefix) :]: p for k, p in arm.row.paired.items() if k.startswith(prefix)}
        # on outputs fluent in both arms where the quality was measured: silence must not look like leakage
        fluent = {k.removesuffix(FLUENT_SUFFIX): p for k, p in mine.items() if k.endswith(FLUENT_SUFFIX)}
        found = fluent or mine
        if found:
            emotions.append(arm.series)
            for label, p in found.items():
                labels.setdefault(label)
                cells[(arm.series, label)] = p
    return Leakage(chosen, emotions, list(labels), cells)


def leakage_csv(table: Leakage) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["steered", "label", "level", "delta", "ci_low", "ci_high", "p", "n"])
    for (emotion, label), p in table.cells.items():
        w.writerow([emotion, label, table.level, p.delta, p.ci_low, p.ci_high, p.p, p.n])
    return buf.getvalue()


def leakage_png(table: Leakage, what: str) -> bytes:
    grid = np.array([[table.cells[(e, lab)].delta if (e, lab) in table.cells else np.nan for lab in table.labels]
                     for e in table.emotions])  # fmt: skip
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0
    lim = lim if lim > 0 else 1.0
    fig = new_figure(max(5.0, 2.0 + 0.42 * len(table.labels)), max(3.0, 2.0 + 0.4 * len(table.emotions)))
    ax = fig.add_subplot()
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(table.labels)), table.labels, rotation=60, ha="right")
    ax.set_yticks(range(len(table.emotions)), table.emotions)
    for i, e in enumerate(table.emotions):
        for j, lab in enumerate(table.labels):
            p = table.cells.get((e, lab))
            if p is not None:
                ax.text(j, i, f"{p.delta:+.2f}" + ("*" if p.significant else ""), ha="center", va="center", fontsize=7)
    ax.set_xlabel("classifier label")
    ax.set_ylabel("steered toward")
    ax.set_title(f"Δ probability vs the baseline at {what}\n(* = 95% paired interval excludes 0)", fontsize=10)
    fig.colorbar(im, ax=ax).set_label("Δ probability")
    return png_bytes(fig)
