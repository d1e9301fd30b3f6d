"""What steering did, from a finished `steer run` / `steer sweep` folder: summary sentences, the emotion x
label leakage table and the dose-response plot.

Every number comes from the leaderboard's rows and their paired statistics against the baseline
(``steer_plugin.study.paired``: Δ with a 95% paired bootstrap interval over the same documents), so the
sentences say no more than the intervals do: an interval that includes 0 is marked "n.s.".
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from steer_plugin.data.goemotions import EKMAN, EKMAN_PREFIX, LABELS, canonical_target, target_slug
from steer_plugin.errors import SteerError
from steer_plugin.io.atomic import write_files_atomic
from steer_plugin.io.figures import new_figure, png_bytes
from steer_plugin.io.outputs import check_output_file
from steer_plugin.io.terminal import printable
from steer_plugin.study.paired import DEFAULT_RESAMPLES, Paired
from steer_plugin.study.quality import DEGENERATE, FLUENT_SUFFIX, FLUENT_TARGET
from steer_plugin.study.rows import Row, SeriesKey, compare_rows, load_rows

SIDE = "side_effects"
OUTPUTS = ("summary.md", "leakage.csv", "leakage.png", "dose_response.png")
NEUTRAL = "neutral"


def parse_targets(spec: str) -> list[str]:
    """``anger`` / ``anger,joy,sadness`` / ``all`` (the 27 emotions) / ``ekman`` (the 6 groups) → class names."""
    key = spec.strip().lower()
    if key == "all":
        return [label for label in LABELS if label != NEUTRAL]
    if key == "ekman":
        return [EKMAN_PREFIX + g for g in EKMAN]
    names = [canonical_target(part) for part in spec.split(",") if part.strip()]
    if not names:
        raise SteerError(f"--emotion {spec!r} names no emotion; give e.g. anger, anger,joy,sadness, all or ekman")
    return list(dict.fromkeys(names))


def run_folder_name(spec: str, targets: list[str]) -> str:
    """``anger`` for one target (as before), ``all``/``ekman``, else the targets joined: ``anger-joy``."""
    key = spec.strip().lower()
    if len(targets) > 1 and key in ("all", "ekman"):
        return key
    return "-".join(target_slug(t) for t in targets)


# --- the rows of a run -------------------------------------------------------------------------------


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
    study = Study(baselines[0], arms)
    for r in rows:
        if (series := r.key.controls) is not None and (control := _arm(r)) is not None:
            study.controls.setdefault(series, []).append(control)
        if r.key.prompted is not None:
            study.prompted.setdefault(r.key.prompted, r)
    return study


# --- summary sentences -------------------------------------------------------------------------------


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


# --- leakage: steered emotion x classifier label ---------------------------------------------------------


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


def check_level(level: float | None, alphas: list) -> None:
    """A --leakage-budget that the grid (``0,kl:0.1,...`` or plain alphas) does not contain is an error."""
    if level is None:
        return
    levels = [float(getattr(a, "kl", a)) for a in alphas if getattr(a, "kl", a)]
    if not any(math.isclose(x, level, rel_tol=1e-6) for x in levels):
        have = ", ".join(f"{x:g}" for x in levels) or "none"
        raise SteerError(f"--leakage-budget {level:g} is not in --alphas; the steered budgets/alphas are {have}")


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


# --- dose-response ----------------------------------------------------------------------------------------


def dose_response_png(study: Study) -> bytes:
    """Above: the headline emotion metric vs measured KL (alpha without side effects), each vector with 95% paired
    intervals, its control dashed, the prompting reference as a star. Below: the share of degenerate outputs."""
    use_kl = all(a.kl is not None for a in study.arms)
    fig = new_figure(8, 7)
    ax, ax_bad = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    colours = [f"C{i % 10}" for i in range(len(study.emotions))]
    fluent = False
    for colour, emotion in zip(colours, study.emotions):
        arms = sorted((a for a in study.arms if a.series == emotion), key=lambda a: a.alpha)
        metric = target_metric(arms[0].row, arms[0].emotion)
        fluent = fluent or metric.endswith(FLUENT_TARGET)
        degenerate = f"{emotion_task(arms[0].row, arms[0].emotion)}/{DEGENERATE}"
        base = study.baseline.metrics.get(metric)
        series: list[tuple[str, list[Arm]]] = [(emotion, arms)]
        n_controls = max((len(study.controls_of(a)) for a in arms), default=0)
        for i in range(n_controls):
            picked = [study.controls_of(a)[i] for a in arms if len(study.controls_of(a)) > i]
            series.append((f"{emotion}: random control" + (f" {i}" if n_controls > 1 else ""), picked))
        for k, (name, points) in enumerate(series):
            xs, ys, lo, hi = ([0.0], [base], [0.0], [0.0]) if base is not None else ([], [], [], [])
            bad_x, bad_y = [0.0], [study.baseline.metrics.get(degenerate)]
            for a in points:
                x = (a.kl or 0.0) if use_kl else a.alpha
                bad_x.append(x)
                bad_y.append(a.row.metrics.get(degenerate))
                p, y = a.row.paired.get(metric), a.row.metrics.get(metric)
                if p is None or y is None:
                    continue
                xs.append(x)
                ys.append(y)
                lo.append(p.delta - p.ci_low)
                hi.append(p.ci_high - p.delta)
            control = k > 0  # the emotion vector first, then its controls (dashed)
            style = {"color": colour, "ls": "--" if control else "-", "marker": "x" if control else "o"}
            if len(xs) > 1:
                ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, label=name, **style)
            shown = [(x, y) for x, y in zip(bad_x, bad_y) if y is not None]
            if len(shown) > 1:
                ax_bad.plot([x for x, _ in shown], [y for _, y in shown], **style)
        prompted = study.prompted.get(arms[0].emotion)
        if prompted is not None:
            kl = prompted.metrics.get(f"{SIDE}/kl", 0.0) if use_kl else 0.0
            if (y := prompted.metrics.get(metric)) is not None:
                ax.plot([kl], [y], marker="*", ms=12, color=colour, ls="none", label=f"asking for {arms[0].emotion}")
            if (bad := prompted.metrics.get(degenerate)) is not None:
                ax_bad.plot([kl], [bad], marker="*", ms=12, color=colour, ls="none")
    ax_bad.set_xlabel("KL to the unsteered model (nats/token, neutral texts)" if use_kl else "alpha")
    what = "outputs fluent in both arms" if fluent else "all outputs"
    ax.set_ylabel(f"target probability\n({what})")
    ax.set_title("Dose-response: target probability with 95% paired intervals; baseline at 0")
    ax_bad.set_ylabel("degenerate outputs")
    ax_bad.set_ylim(-0.05, 1.05)
    for a in (ax, ax_bad):
        a.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return png_bytes(fig)


# --- example generations ---------------------------------------------------------------------------------

EXAMPLES = 3  # prompts shown per emotion
EXAMPLE_SHOWN = 300  # characters of a generation shown


def _generations(row: Row, task: str) -> dict[int, tuple[str, str]]:
    """doc_id -> (prompt, generation) from a row's per-document samples (kept by `steer sweep`)."""
    path = row.samples.get(task)
    out: dict[int, tuple[str, str]] = {}
    if path is None or not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("doc_id"), int) and (example := _example(doc)) is not None:
            out[doc["doc_id"]] = example
    return out


def _example(row: dict) -> tuple[str, str] | None:
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


# --- files ----------------------------------------------------------------------------------------------


def write_study(
    folder: str | Path,
    out_dir: str | Path | None = None,
    leakage_budget: float | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[str, list[Path]]:
    """summary.md, leakage.csv/png and dose_response.png beside the leaderboard; returns the summary."""
    root = Path(folder)
    out = Path(out_dir) if out_dir is not None else root
    for name in OUTPUTS:  # before the statistics: a path that cannot be written fails now
        check_output_file(out / name, name)
    study = load_study(root, resamples, seed)
    text = summary_text(study)
    outputs: dict[Path, str | bytes] = {out / "summary.md": text + examples_text(study, seed)}
    table = leakage(study, leakage_budget)
    if table.cells:
        what = f"KL {table.level:g}" if any(a.budget is not None for a in study.arms) else f"alpha {table.level:g}"
        outputs[out / "leakage.csv"] = leakage_csv(table)
        outputs[out / "leakage.png"] = leakage_png(table, what)
    outputs[out / "dose_response.png"] = dose_response_png(study)
    return text, write_files_atomic(outputs)  # rendered first, written as one set
