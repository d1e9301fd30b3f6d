"""`steer table`: a leaderboard from a folder of harness results JSON (sweeps or plain lm_eval runs)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError
from steer_plugin.io.atomic import write_files_atomic
from steer_plugin.io.figures import new_figure, png_bytes
from steer_plugin.io.text_table import format_table
from steer_plugin.study.paired import DEFAULT_RESAMPLES
from steer_plugin.study.results_files import check_table_outputs
from steer_plugin.study.rows import KEY_COLUMNS, Row, RowKey, compare_rows, load_rows

# shown in the console/Markdown table; the CSV has every metric
HEADLINE = (
    "acc",
    "acc_norm",
    "target_rate",
    "target_prob",
    "target_prob_fluent",  # the robust emotion metric (study.quality)
    "degenerate_rate",
    "no_words",
    "repetition",
    "gen_ppl",  # its paired interval is on gen_nll (per document), in the CSV
    "neutral_rate",
    "bleu_acc",
    "rouge1_acc",
    "exact_match",
    "word_perplexity",
    "kl_budget",
    "kl",
    "ppl",
)
# steer sweep's side effects (see steer_plugin.steering.side_effects) come first, next to the alpha they belong to
SIDE_EFFECT_COLUMNS = ("side_effects/kl_budget", "side_effects/kl", "side_effects/ppl")


def _sort_key(row: Row, sort: str | None) -> tuple:
    if sort:
        v = row.metrics.get(sort, float("nan"))
        return (math.isnan(v), -v if not math.isnan(v) else 0)
    k = row.key
    alpha = k.alpha if isinstance(k.alpha, (int, float)) else 0
    return (k.model, not k.unsteered, k["vector"], str(k["layers"]), str(k["positions"]), alpha)


def columns(rows: list[Row], headline_only: bool) -> list[str]:
    cols = sorted({m for r in rows for m in r.metrics})
    if headline_only:
        cols = [c for c in cols if c.split("/", 1)[1].split("[")[0] in HEADLINE]
    first = [c for c in SIDE_EFFECT_COLUMNS if c in cols]
    return first + [c for c in cols if c not in first]


def _fmt(row: Row, col: str) -> str:
    if col not in row.metrics:
        return ""
    v, e = row.metrics[col], row.stderr.get(col)
    return f"{v:.4f}" + (f" ± {e:.4f}" if e is not None and not math.isnan(e) else "")


DELTA_SUFFIX = " Δ"
DELTA_NOTE = (
    "Δ: difference to the unsteered baseline of the same model, with a 95% paired bootstrap interval over "
    "documents; * = the interval excludes 0."
)
NO_BASELINE_NOTE = (
    "No Δ columns: per-document samples exist, but no baseline row (unsteered or alpha 0, same model) has "
    "samples of the same documents."
)
PAIRED_CSV = ("_delta", "_ci_low", "_ci_high", "_p")


def _paired_note(rows: list[Row]) -> str | None:
    if any(r.paired for r in rows):
        return DELTA_NOTE
    if any(r.samples and not r.key.unsteered for r in rows):
        return NO_BASELINE_NOTE
    return None


def _shown(rows: list[Row]) -> list[str]:
    """Headline columns, each followed by its Δ column where some row has one."""
    out = []
    for c in columns(rows, True):
        out.append(c)
        if any(c in r.paired for r in rows):
            out.append(c + DELTA_SUFFIX)
    return out


def _cell(row: Row, col: str) -> str:
    if col.endswith(DELTA_SUFFIX):
        p = row.paired.get(col.removesuffix(DELTA_SUFFIX))
        return p.format() if p else ""
    return _fmt(row, col)


def _headline(rows: list[Row], sort: str | None, markdown: bool) -> str:
    cols = _shown(rows)
    body = [
        [str(r.key[k]) for k in KEY_COLUMNS] + [_cell(r, c) for c in cols]
        for r in sorted(rows, key=lambda r: _sort_key(r, sort))
    ]
    text = format_table([*KEY_COLUMNS, *cols], body, markdown=markdown)
    note = _paired_note(rows)
    return text + (f"\n\n{note}" if note else "")


def to_markdown(rows: list[Row], sort: str | None = None) -> str:
    return _headline(rows, sort, markdown=True) + "\n"


def to_csv(rows: list[Row], sort: str | None = None) -> str:
    cols = columns(rows, False)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        list(KEY_COLUMNS) + [x for c in cols for x in (c, c + "_stderr", *(c + s for s in PAIRED_CSV))] + ["source"]
    )
    for r in sorted(rows, key=lambda r: _sort_key(r, sort)):
        w.writerow(
            [r.key[k] for k in KEY_COLUMNS]
            + [x for c in cols for x in (r.metrics.get(c, ""), r.stderr.get(c, ""), *_paired_cells(r, c))]
            + [r.source]
        )
    return buf.getvalue()


def _paired_cells(row: Row, col: str) -> tuple[Any, ...]:
    p = row.paired.get(col)
    return ("", "", "", "") if p is None else (p.delta, p.ci_low, p.ci_high, p.p)


def to_console(rows: list[Row], sort: str | None = None) -> str:
    return _headline(rows, sort, markdown=False)


def _series(rows: list[Row], metric: str) -> dict[str, list[tuple[float, float]]]:
    """Per (model, vector, layers, positions): sorted (alpha, value); the baseline joins every series."""
    baselines = {r.key.model: r.metrics.get(metric) for r in rows if r.key.unsteered}
    out: dict[str, list[tuple[float, float]]] = {}
    for r in sorted(rows, key=lambda r: _sort_key(r, None)):  # legend order: a vector, then its controls
        k = r.key
        if not k.steered or metric not in r.metrics or not isinstance(k.alpha, (int, float)):
            continue
        out.setdefault(_series_label(k), []).append((float(k.alpha), r.metrics[metric]))
    for pts in out.values():
        base = next(iter(baselines.values()), None) if len(baselines) == 1 else None
        if base is not None and all(a != 0 for a, _ in pts):
            pts.append((0.0, base))
        pts.sort()
    return out


def _series_label(key: RowKey) -> str:
    return key.series.label


def _styles(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """Line style per series: a random control is dashed, in the colour of the vector it controls."""
    parents: dict[str, str] = {}
    for r in sorted(rows, key=lambda r: _sort_key(r, None)):
        if r.key.steered:
            label = _series_label(r.key)
            parents[label] = r.key.controls.label if r.key.controls else label
    colours: dict[str, str] = {}
    for parent in parents.values():
        colours.setdefault(parent, f"C{len(colours) % 10}")
    styles = {}
    for label, parent in parents.items():
        control = label != parent
        styles[label] = {
            "color": colours[parent],
            "linestyle": "--" if control else "-",
            "marker": "x" if control else "o",
        }
    return styles


def plot_metric_vs_alpha(rows: list[Row], metrics: list[str]) -> bytes:
    fig = new_figure(5 * len(metrics), 4)
    styles = _styles(rows)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for label, pts in _series(rows, metric).items():
            ax.plot([a for a, _ in pts], [v for _, v in pts], label=label, **styles.get(label, {"marker": "o"}))
        ax.set_xlabel("alpha")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    return png_bytes(fig)


def plot_tradeoff(rows: list[Row], x_metric: str, y_metric: str) -> bytes:
    fig = new_figure(6, 5)
    ax = fig.add_subplot(1, 1, 1)
    xs, ys = _series(rows, x_metric), _series(rows, y_metric)
    styles = _styles(rows)
    for label in xs:
        ya = dict(ys.get(label, []))
        pts = [(a, x, ya[a]) for a, x in xs[label] if a in ya]
        ax.plot([p[1] for p in pts], [p[2] for p in pts], label=label, **styles.get(label, {"marker": "o"}))
        for a, x, y in pts:
            ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(x_metric)
    ax.set_ylabel(y_metric)
    ax.set_title("steering trade-off (labels: alpha)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return png_bytes(fig)


@dataclass(frozen=True)
class Leaderboard:
    rows: list[Row]  # with their paired Δ vs the baseline
    text: str  # the console table
    files: list[Path]  # PREFIX.md, PREFIX.csv and the plots


def write_leaderboard(
    folder: str | Path,
    prefix: str | Path | None = None,
    sort: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Leaderboard:
    """The rows of a folder of results, written as ``PREFIX.md``, ``PREFIX.csv`` and the plots.
    Rows with per-document samples get Δ vs the baseline (``resamples`` paired bootstrap draws, ``seed``)."""
    prefix = Path(prefix) if prefix else Path(folder) / "leaderboard"
    check_table_outputs(prefix)
    rows = load_rows(folder)
    compare_rows(rows, resamples, seed)
    if sort is not None and not any(sort in r.metrics for r in rows):  # else every row would sort as "missing"
        shown = columns(rows, True) or columns(rows, False)
        raise SteerError(f"--sort {sort!r} is not a column of these results; columns are like {', '.join(shown[:8])}")
    # rendered first, written as one set: a full disk never leaves a new table beside an old plot
    outputs: dict[Path, str | bytes] = {
        prefix.with_suffix(".md"): to_markdown(rows, sort),
        prefix.with_suffix(".csv"): to_csv(rows, sort),
    }
    metrics = sorted({m for r in rows for m in r.metrics})
    key = [m for m in metrics if m.endswith(("/acc", "/target_rate", "/target_prob"))]
    if key and any(r.key.steered for r in rows):
        outputs[Path(f"{prefix}_vs_alpha.png")] = plot_metric_vs_alpha(rows, key)
        x = next((m for m in metrics if m.endswith("/target_rate")), None)
        y = next((m for m in metrics if "mc2" in m and m.endswith("/acc")), None)
        if x and y:
            outputs[Path(f"{prefix}_tradeoff.png")] = plot_tradeoff(rows, x, y)
    files = write_files_atomic(outputs)
    return Leaderboard(rows, to_console(rows, sort), files)


def write_table(
    folder: str | Path,
    prefix: str | Path | None = None,
    sort: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[str, list[Path]]:
    """``write_leaderboard``'s console text and files (for callers that do not need the rows)."""
    board = write_leaderboard(folder, prefix, sort, resamples, seed)
    return board.text, board.files
