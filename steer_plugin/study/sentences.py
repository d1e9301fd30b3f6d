"""What steering did, in sentences: one per configuration and one per prompting reference.

Each sentence says no more than its paired interval does: an interval that includes 0 is marked "n.s."."""

from __future__ import annotations

import math

from steer_plugin.study.arms import SIDE, Arm, Study, emotion_task, target_metric
from steer_plugin.study.paired import Paired
from steer_plugin.study.quality import DEGENERATE
from steer_plugin.study.rows import Row


def _num(x: float, digits: int = 3, sign: bool = True) -> str:
    x = 0.0 if round(x, digits) == 0 else x  # no "-0.000"
    return f"{x:{'+' if sign else ''}.{digits}f}".replace("-", "\N{MINUS SIGN}")


def describe(p: Paired) -> str:
    """``+0.190 [+0.150, +0.230]``, with "(n.s.)" when the 95% interval includes 0."""
    return f"{_num(p.delta)} [{_num(p.ci_low)}, {_num(p.ci_high)}]" + ("" if p.significant else " (n.s.)")


def _task_name(task: str) -> str:
    for part in ("mc1", "mc2"):
        if task.startswith("truthfulqa") and task.endswith(part):
            return f"TruthfulQA {part.upper()}"
    return task


# Where more than this share of a configuration's outputs are degenerate, no emotion gain is claimed for it.
MOSTLY_DEGENERATE = 0.5


def _quality(row: Row, task: str) -> tuple[int, int, int] | None:
    """(degenerate, without words, documents) of a row's outputs on a task, where measured."""
    paired = row.paired.get(f"{task}/{DEGENERATE}")
    rate = row.metrics.get(f"{task}/{DEGENERATE}")
    if paired is None or rate is None:
        return None
    n = paired.n
    return round(rate * n), round(row.metrics.get(f"{task}/no_words", 0.0) * n), n


def _emotion_part(study: Study, row: Row, emotion: str, name: str) -> str | None:
    """What happened to the emotion in one row's outputs, in words: the robust Δ, or why there is none."""
    task = emotion_task(row, emotion)
    metric = target_metric(row, emotion)
    counts = _quality(row, task)
    if counts is not None:
        bad, silent, n = counts
        base = _quality_of_baseline(study, task)
        versus = f" (baseline {base})" if base is not None else ""
        if bad > MOSTLY_DEGENERATE * n:
            what = (
                f"stops answering in {silent} of {n} prompts"
                if silent > bad / 2
                else f"degenerates in {bad} of {n} prompts"
            )
            return f"{name}: the model {what}{versus}, no emotion gain claimed"
        degenerate = f"degenerate outputs {bad} of {n}{versus}"
        p = row.paired.get(metric)
        if p is None:
            return f"{name}: too few outputs fluent in both arms to compare; {degenerate}"
        return f"{name} {describe(p)} on the {p.n} prompts fluent in both arms; {degenerate}"
    p = row.paired.get(metric)
    return None if p is None else f"{name} {describe(p)} (output quality not measured: silence counts as emotion)"


def _quality_of_baseline(study: Study, task: str) -> int | None:
    rate = study.baseline.metrics.get(f"{task}/{DEGENERATE}")
    for arm in study.arms:
        paired = arm.row.paired.get(f"{task}/{DEGENERATE}")
        if rate is not None and paired is not None:
            return round(rate * paired.n)
    return None


def _fluency(study: Study, row: Row, task: str) -> str | None:
    before, after = study.baseline.metrics.get(f"{task}/gen_ppl"), row.metrics.get(f"{task}/gen_ppl")
    if before is None or after is None:
        return None
    return f"output perplexity under the unsteered model {before:.1f} \N{RIGHTWARDS ARROW} {after:.1f}"


def sentence(study: Study, arm: Arm) -> str:
    """ "Toward anger at KL 0.10 (alpha 0.17): anger probability +0.02 [...] on the 50 prompts fluent in both arms;
    degenerate outputs 3 of 60 (baseline 2); random control ...; asking for anger ...; ..."."""
    where = f"at KL {arm.budget:.2f} (alpha {arm.alpha:.3g})" if arm.budget is not None else f"at alpha {arm.alpha:g}"
    if arm.budget is None and arm.kl is not None:
        where += f" (KL {arm.kl:.3g})"
    task = emotion_task(arm.row, arm.emotion)
    parts = [part for part in [_emotion_part(study, arm.row, arm.emotion, f"{arm.emotion} probability")] if part]
    controls = study.controls_of(arm)
    for i, control in enumerate(controls):
        name = "random control" if len(controls) == 1 else f"random control {i}"
        if not math.isclose(control.alpha, arm.alpha):  # calibrated to the same KL: say how hard it pushed
            name += f" (same KL, alpha {control.alpha:.3g})"
        if (part := _emotion_part(study, control.row, arm.emotion, name)) is not None:
            parts.append(part)
    for label, p in arm.row.paired.items():
        task_name, metric_name = label.split("/", 1)
        if metric_name == "acc" and not task_name.startswith("steer_emotion_"):
            parts.append(f"{_task_name(task_name)} {describe(p)}")
    if (fluency := _fluency(study, arm.row, task)) is not None:
        parts.append(fluency)
    before, after = study.baseline.metrics.get(f"{SIDE}/ppl"), arm.row.metrics.get(f"{SIDE}/ppl")
    if before is not None and after is not None:
        parts.append(f"perplexity on neutral texts {before:.1f} \N{RIGHTWARDS ARROW} {after:.1f}")
    toward = arm.emotion if arm.series == arm.emotion else f"{arm.emotion} ({arm.series})"
    return f"Toward {toward} {where}: " + ("; ".join(parts) or "no paired scores") + "."


def prompting_sentence(study: Study, emotion: str, row: Row) -> str:
    """The prompting reference (asking for the emotion, unsteered) in the same words as a steered configuration."""
    kl = row.metrics.get(f"{SIDE}/kl")
    where = f" (KL {kl:.3g})" if kl is not None else ""
    parts = [part for part in [_emotion_part(study, row, emotion, f"{emotion} probability")] if part]
    if (fluency := _fluency(study, row, emotion_task(row, emotion))) is not None:
        parts.append(fluency)
    return f"Asking for {emotion} instead{where}: " + ("; ".join(parts) or "no paired scores") + "."


def summary_text(study: Study) -> str:
    lines = [
        "What steering did (Δ vs the unsteered baseline, 95% paired bootstrap interval; n.s. = includes 0). The "
        "emotion is compared only on prompts whose outputs are fluent text in both arms; degenerate = no words, "
        "repetition or unlikely text past the baseline's own limits.",
        "",
    ]
    for series in study.emotions:
        arms = sorted((a for a in study.arms if a.series == series), key=lambda a: a.level)
        lines += [sentence(study, a) for a in arms]
        emotion = arms[0].emotion
        if emotion in study.prompted:
            lines.append(prompting_sentence(study, emotion, study.prompted[emotion]))
    return "\n".join(lines) + "\n"
