"""`steer table`: a leaderboard from a folder of harness results JSON (sweeps or plain lm_eval runs)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError

KEY_COLUMNS = ("model", "vector", "alpha", "layers", "positions")
# shown in the console/Markdown table; the CSV has every metric
HEADLINE = (
    "acc",
    "acc_norm",
    "target_rate",
    "target_prob",
    "neutral_rate",
    "bleu_acc",
    "rouge1_acc",
    "exact_match",
    "word_perplexity",
    "kl_budget",
    "kl",
    "ppl",
)
# steer sweep's side effects (see steer_plugin.fluency) come first, next to the alpha they belong to
SIDE_EFFECT_COLUMNS = ("side_effects/kl_budget", "side_effects/kl", "side_effects/ppl")


@dataclass
class Row:
    key: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)  # "task/metric" -> value
    stderr: dict[str, float] = field(default_factory=dict)
    source: str = ""


def _row_key(config: dict[str, Any]) -> dict[str, Any]:
    args = config.get("model_args") or ""
    parsed = dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv) if isinstance(args, str) else dict(args)
    model = parsed.get("pretrained") or config.get("model", "?")
    steering = config.get("steering") or {}
    vectors = steering.get("vectors") or []
    alphas = steering.get("alphas") or []
    if not vectors or not any(alphas):
        return {"model": str(model), "vector": "-", "alpha": 0.0, "layers": "-", "positions": "-"}
    names = []
    for v in vectors:
        meta = v.get("metadata") or {}
        emo = meta.get("emotion") or Path(str(v.get("path"))).stem
        method = meta.get("method")
        names.append(
            f"{emo}" + (f" ({method}{'-' + str(meta['top_k']) if meta.get('top_k') else ''})" if method else "")
        )
    alpha: Any = alphas[0] if len(set(alphas)) == 1 else ";".join(f"{a:g}" for a in alphas)
    return {
        "model": str(model),
        "vector": " + ".join(names),
        "alpha": alpha,
        "layers": steering.get("layers", "all"),
        "positions": steering.get("positions", "all"),
    }


def load_rows(folder: str | Path) -> list[Row]:
    root = Path(folder)
    if not root.exists():
        raise SteerError(f"results folder not found: {root}")
    rows: list[Row] = []
    for path in sorted(root.rglob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(doc, dict) or "results" not in doc or "config" not in doc:
            continue
        row = Row(_row_key(doc["config"]), source=str(path.relative_to(root)))
        for task, metrics in doc["results"].items():
            for name, value in metrics.items():
                if name == "alias" or not isinstance(value, (int, float)) or "," not in name:
                    continue
                metric, filt = name.split(",", 1)
                target = row.stderr if metric.endswith("_stderr") else row.metrics
                metric = metric.removesuffix("_stderr")
                label = f"{task}/{metric}" + ("" if filt == "none" else f"[{filt}]")
                target[label] = float(value)
        rows.append(row)
    if not rows:
        raise SteerError(f"no harness results JSON under {root}")
    return rows


def _sort_key(row: Row, sort: str | None) -> tuple:
    if sort:
        v = row.metrics.get(sort, float("nan"))
        return (math.isnan(v), -v if not math.isnan(v) else 0)
    k = row.key
    alpha = k["alpha"] if isinstance(k["alpha"], (int, float)) else 0
    return (k["model"], k["vector"] != "-", k["vector"], str(k["layers"]), str(k["positions"]), alpha)


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


def to_markdown(rows: list[Row], sort: str | None = None) -> str:
    cols = columns(rows, True)
    rows = sorted(rows, key=lambda r: _sort_key(r, sort))
    head = list(KEY_COLUMNS) + cols
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([str(r.key[k]) for k in KEY_COLUMNS] + [_fmt(r, c) for c in cols]) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row], sort: str | None = None) -> str:
    cols = columns(rows, False)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(list(KEY_COLUMNS) + [x for c in cols for x in (c, c + "_stderr")] + ["source"])
    for r in sorted(rows, key=lambda r: _sort_key(r, sort)):
        w.writerow(
            [r.key[k] for k in KEY_COLUMNS]
            + [x for c in cols for x in (r.metrics.get(c, ""), r.stderr.get(c, ""))]
            + [r.source]
        )
    return buf.getvalue()


def to_console(rows: list[Row], sort: str | None = None) -> str:
    cols = columns(rows, True)
    table = [list(KEY_COLUMNS) + cols]
    for r in sorted(rows, key=lambda r: _sort_key(r, sort)):
        table.append([str(r.key[k]) for k in KEY_COLUMNS] + [_fmt(r, c) for c in cols])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _series(rows: list[Row], metric: str) -> dict[str, list[tuple[float, float]]]:
    """Per (model, vector, layers, positions): sorted (alpha, value); the baseline joins every series."""
    baselines = {r.key["model"]: r.metrics.get(metric) for r in rows if r.key["vector"] == "-"}
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        k = r.key
        if k["vector"] == "-" or metric not in r.metrics or not isinstance(k["alpha"], (int, float)):
            continue
        label = f"{k['vector']} L={k['layers']} {k['positions']}"
        out.setdefault(label, []).append((float(k["alpha"]), r.metrics[metric]))
    for pts in out.values():
        base = next(iter(baselines.values()), None) if len(baselines) == 1 else None
        if base is not None and all(a != 0 for a, _ in pts):
            pts.append((0.0, base))
        pts.sort()
    return out


def plot_metric_vs_alpha(rows: list[Row], metrics: list[str]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * len(metrics), 4), constrained_layout=True)
    FigureCanvasAgg(fig)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for label, pts in _series(rows, metric).items():
            ax.plot([a for a, _ in pts], [v for _, v in pts], marker="o", label=label)
        ax.set_xlabel("alpha")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def plot_tradeoff(rows: list[Row], x_metric: str, y_metric: str) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs, ys = _series(rows, x_metric), _series(rows, y_metric)
    for label in xs:
        ya = dict(ys.get(label, []))
        pts = [(a, x, ya[a]) for a, x in xs[label] if a in ya]
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", label=label)
        for a, x, y in pts:
            ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(x_metric)
    ax.set_ylabel(y_metric)
    ax.set_title("steering trade-off (labels: alpha)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def write_table(
    folder: str | Path, prefix: str | Path | None = None, sort: str | None = None
) -> tuple[str, list[Path]]:
    """Console table plus ``PREFIX.md``, ``PREFIX.csv`` and the plots; returns (console text, files)."""
    from steer_plugin.atomic import atomic_path, write_text_atomic

    rows = load_rows(folder)
    prefix = Path(prefix) if prefix else Path(folder) / "leaderboard"
    files = [prefix.with_suffix(".md"), prefix.with_suffix(".csv")]
    write_text_atomic(files[0], to_markdown(rows, sort))
    write_text_atomic(files[1], to_csv(rows, sort))
    metrics = sorted({m for r in rows for m in r.metrics})
    key = [m for m in metrics if m.endswith(("/acc", "/target_rate", "/target_prob"))]
    if key and any(r.key["vector"] != "-" for r in rows):
        path = Path(f"{prefix}_vs_alpha.png")
        with atomic_path(path) as tmp:
            tmp.write_bytes(plot_metric_vs_alpha(rows, key))
        files.append(path)
        x = next((m for m in metrics if m.endswith("/target_rate")), None)
        y = next((m for m in metrics if "mc2" in m and m.endswith("/acc")), None)
        if x and y:
            path = Path(f"{prefix}_tradeoff.png")
            with atomic_path(path) as tmp:
                tmp.write_bytes(plot_tradeoff(rows, x, y))
            files.append(path)
    return to_console(rows, sort), files
