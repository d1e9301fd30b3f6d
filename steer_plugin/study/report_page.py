"""report.html: one self-contained page of a finished `steer run` / `steer sweep` folder, to open from disk.

The header (provenance from the configurations' results files), the summary sentences, the leaderboard and the
TruthfulQA answers that changed are HTML, readable without JavaScript; the figures are inline PNGs; the sample
browser is drawn by the page's script from inline JSON. Every text from a file is escaped: ``html.escape`` in the
HTML, and ``<``, ``>``, ``&`` as JSON escapes in the inline JSON (so no output can close its ``<script>``); the
script writes texts with ``textContent`` only.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

from steer_plugin._version import __version__
from steer_plugin.errors import SteerError
from steer_plugin.io.reading import read_json_file
from steer_plugin.io.terminal import printable
from steer_plugin.study.arms import Study
from steer_plugin.study.report_samples import AnswerChanges, changed_answers, emotion_samples, row_names
from steer_plugin.study.rows import Row
from steer_plugin.study.table import columns
from steer_plugin.vectors.recipe import recipe_name

OUTPUT = "report.html"
TEMPLATE = "report_page.html"  # package data beside this module: the page's HTML, CSS and script
# the leaderboard's columns on the page (the CSV has every metric): the robust emotion metric, the share of
# degenerate outputs, accuracy, and the side effects on neutral texts
PAGE_METRICS = ("target_prob_fluent", "degenerate_rate", "acc", "kl", "ppl")
FIGURES = {
    "dose_response.png": "Dose-response: the target probability against how hard each vector pushed, with 95% paired "
    "intervals, and the share of degenerate outputs beneath.",
    "leakage.png": "Leakage: Δ probability of every classifier label vs the baseline, per steered emotion.",
}


def _e(value: object) -> str:
    """A text from a file as HTML: control characters shown as escapes, then HTML-escaped."""
    return html.escape(printable(value, allow_newlines=True))


def inline_json(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``</script>``, ``<!--`` or entity can form."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _configs(study: Study, folder: Path) -> dict[int, dict[str, Any]]:
    """id(row) -> its results file's ``config``."""
    out = {}
    for row in study.rows:
        try:
            doc = read_json_file(folder / row.source, "results file")
        except (OSError, SteerError, ValueError):
            continue
        config = doc.get("config") if isinstance(doc, dict) else None
        if isinstance(config, dict):  # a plain lm_eval run keeps its version beside the config
            out[id(row)] = {"lm_eval_version": doc.get("lm_eval_version"), **config}
    return out


def _setting(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "not recorded"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "all tasks" if value else "none"
    return str(value)


def _provenance(study: Study, configs: dict[int, dict[str, Any]]) -> str:
    base = configs.get(id(study.baseline)) or next(iter(configs.values()), {})
    settings = base.get("sweep_settings") or {}
    steered = [c for c in configs.values() if isinstance(c.get("steering"), dict) and c["steering"].get("vectors")]
    layers = sorted({
        f"{(c.get('sweep') or c['steering']).get('layers')} → blocks {_setting(c['steering'].get('steered_layers'))}"
        for c in steered
    })  # fmt: skip
    positions = sorted({str(c["steering"].get("positions")) for c in steered})
    model = settings.get("model") or base.get("model_args", "")
    items = [
        ("model", model),
        ("weights fingerprint", settings.get("weights")),
        ("dtype / device", f"{_setting(settings.get('dtype'))} / {_setting(settings.get('device'))}"),
        ("engine", f"{_setting(base.get('model'))} ({_setting(settings.get('backend'))} backend)"),
        ("tasks", settings.get("tasks") or base.get("tasks")),
        ("limit", settings.get("limit", base.get("limit"))),
        ("layers", layers),
        ("positions", positions),
        ("chat template on", settings.get("apply_chat_template")),
        ("classifier", settings.get("classifier") or base.get("classifier")),
        ("side-effect texts", (settings.get("side_effects") or {}).get("texts")),
        ("steer-plugin", f"{_setting(settings.get('package_version'))} (this page: {__version__})"),
        ("lm-eval", base.get("lm_eval_version")),
    ]
    rows = "".join(f"<tr><th scope=row>{_e(k)}</th><td>{_e(_setting(v))}</td></tr>" for k, v in items)
    return f"<table class=provenance>{rows}</table>" + _vectors(configs) + _reproduce(study, configs)


def _vectors(configs: dict[int, dict[str, Any]]) -> str:
    seen: dict[tuple[str, str], str] = {}
    for config in configs.values():
        for v in (config.get("steering") or {}).get("vectors") or []:
            meta = v.get("metadata") or {}
            recipe = f"random control, seed {meta.get('seed')}" if meta.get("method") == "random" else recipe_name(meta)
            seen.setdefault((str(v.get("path")), str(v.get("sha256"))), _setting(recipe))
    if not seen:
        return ""
    body = "".join(
        f"<tr><td>{_e(p)}</td><td>{_e(r)}</td><td class=hash>{_e(h)}</td></tr>" for (p, h), r in seen.items()
    )
    return f"<table class=vectors><tr><th>vector file</th><th>recipe</th><th>sha256</th></tr>{body}</table>"


def _reproduce(study: Study, configs: dict[int, dict[str, Any]]) -> str:
    """The baseline's `lm_eval` commands, and every configuration's in a closed section."""
    names = row_names(study.rows)

    def commands(row: Row) -> str:
        lines = (configs.get(id(row)) or {}).get("reproduce") or []
        return "".join(f"<pre class=command>{_e(c)}</pre>" for c in lines) or "<p>not recorded</p>"

    others = "".join(f"<h4>{_e(names[id(r)])}</h4>{commands(r)}" for r in study.rows if r is not study.baseline)
    return (
        f"<h3>Reproduce the baseline with lm_eval</h3>{commands(study.baseline)}"
        f"<details><summary>Reproduce each configuration</summary>{others}</details>"
    )


def _summary(text: str) -> str:
    paragraphs = [line for line in text.splitlines() if line.strip()]
    if not paragraphs:
        return "<p>No summary.</p>"
    first, rest = paragraphs[0], paragraphs[1:]
    return f"<p class=note>{_e(first)}</p><ul class=sentences>" + "".join(f"<li>{_e(p)}</li>" for p in rest) + "</ul>"


def _num(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 100 else f"{x:.3f}"


def _v(x: float | None) -> str:
    """A cell's sort value (empty: missing, sorted last)."""
    return "" if x is None or not math.isfinite(x) else repr(float(x))


def _ordered(study: Study) -> list[Row]:
    """The baseline first, then each vector's configurations by level with their controls, the prompting
    references, and the rest in path order."""
    order: list[Row] = [study.baseline]
    for arm in sorted(study.arms, key=lambda a: (study.emotions.index(a.series), a.level)):
        order += [arm.row, *(c.row for c in study.controls_of(arm))]
    order += list(study.prompted.values())
    return order + [r for r in study.rows if all(r is not o for o in order)]


def _leaderboard(study: Study) -> str:
    rows = _ordered(study)
    names = row_names(study.rows)
    shown = [c for c in columns(rows, True) if c.split("/", 1)[1] in PAGE_METRICS]
    shown = [c for c in shown if not c.endswith("/target_prob_fluent") or any(c in r.paired for r in rows)]
    # the emotions first, then the other tasks, the side effects last
    shown.sort(key=lambda c: (not c.startswith("steer_emotion"), c.startswith("side_effects/")))
    head = ["<th scope=col><button type=button>configuration</button></th>"]
    for c in shown:
        task, metric = (_e(part) for part in c.split("/", 1))
        head.append(f"<th scope=col title='{_e(c)}'><button type=button>{task}<br>{metric}</button></th>")
        if any(c in r.paired for r in rows):
            head.append(
                f"<th scope=col title='{_e(c)} Δ'><button type=button>{task}<br>{metric} Δ [95% CI]</button></th>"
            )
    body = []
    for r in rows:
        kind = "baseline" if r.key.unsteered else "control" if r.control_of else "prompted" if r.key.prompted else ""
        cells = [f"<th scope=row data-v='{_e(names[id(r)])}'>{_e(names[id(r)])}</th>"]
        for c in shown:
            value = r.metrics.get(c)
            cells.append(f"<td data-v='{_v(value)}'>{'' if value is None else _num(value)}</td>")
            if any(c in x.paired for x in rows):
                p = r.paired.get(c)
                text = "" if p is None else f"{p.delta:+.3f} [{p.ci_low:+.3f}, {p.ci_high:+.3f}]"
                sig = " class=sig" if p is not None and p.significant else ""
                cells.append(f"<td{sig} data-v='{_v(None if p is None else p.delta)}'>{text}</td>")
        body.append(f"<tr class='{kind}'>{''.join(cells)}</tr>")
    return (
        f"<table id=leaderboard class=sortable><thead><tr>{''.join(head)}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _figures(figures: dict[str, bytes]) -> str:
    out = []
    for name, caption in FIGURES.items():
        if name in figures:
            data = base64.b64encode(figures[name]).decode("ascii")
            out.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{_e(caption)}'>"
                f"<figcaption>{_e(name)}: {_e(caption)}</figcaption></figure>"
            )
    return "".join(out) or "<p>No figures.</p>"


def _answers(changes: list[AnswerChanges], unrecorded: list[str]) -> str:
    """The multiple-choice questions whose chosen answer changed, per configuration (filtered by the script)."""
    parts = [f"<p>The samples of {_e(', '.join(unrecorded))} do not record the chosen answers (a run before "
             "they were kept): rerun the configurations to list them.</p>"] if unrecorded else []  # fmt: skip
    if not changes:
        return "".join(parts) or "<p>No multiple-choice task with one correct answer in this run.</p>"
    counts = "".join(
        f"<tr data-config='{_e(c.config)}'><td>{_e(c.task)}</td><td>{_e(c.config)}</td><td>{len(c.changed)} of "
        f"{c.questions}</td><td>{c.gained}</td><td>{c.lost}</td></tr>"
        for c in changes
    )
    parts.append(
        "<table class=answer-counts><thead><tr><th>task</th><th>configuration</th><th>answers changed</th>"
        f"<th>now right</th><th>now wrong</th></tr></thead><tbody>{counts}</tbody></table>"
    )
    rows = []
    for c in changes:
        for q in c.changed:
            effect = "now right" if q["right_after"] else "now wrong" if q["right_before"] else "still wrong"
            rows.append(
                f"<tr data-config='{_e(c.config)}' class='{effect.replace(' ', '-')}'><td>{_e(c.task)}</td>"
                f"<td>{_e(c.config)}</td><td>{_e(q['question'])}</td><td>{_e(q['before'])}</td>"
                f"<td>{_e(q['after'])}</td><td>{_e(q['correct'])}</td><td>{effect}</td></tr>"
            )
    if rows:
        parts.append(
            "<table id=answers><thead><tr><th>task</th><th>configuration</th><th>question</th><th>baseline's answer"
            "</th><th>steered answer</th><th>correct answer</th><th>effect</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    return "".join(parts)


def report_html(study: Study, folder: str | Path, summary: str, figures: dict[str, bytes]) -> str:
    """The page of a study (``arms.load_study``) of ``folder``, with its summary sentences and figures (PNG bytes
    by file name: ``dose_response.png``, ``leakage.png``)."""
    configs = _configs(study, Path(folder))
    names = row_names(study.rows)
    changes, unrecorded = changed_answers(study, _ordered(study), names)
    targets = ", ".join(dict.fromkeys(a.emotion for a in study.arms)) or "no emotion"
    slots = {
        "title": _e(f"steer report: {study.baseline.key.model} → {targets}"),
        "provenance": _provenance(study, configs),
        "summary": _summary(summary),
        "leaderboard": _leaderboard(study),
        "figures": _figures(figures),
        "answers": _answers(changes, unrecorded),
        "configs": "".join(f"<option>{_e(names[id(r)])}</option>" for r in _ordered(study) if r is not study.baseline),
        "data": inline_json({"emotions": emotion_samples(study, names)}),
        "version": _e(__version__),
    }
    template = resources.files("steer_plugin.study").joinpath(TEMPLATE).read_text(encoding="utf-8")
    # one pass: a slot's content is never searched for further slots
    return re.sub(r"<!--\{(\w+)\}-->", lambda m: slots[m.group(1)], template)
