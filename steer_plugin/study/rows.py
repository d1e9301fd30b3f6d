"""Leaderboard rows: one per harness results JSON (a sweep configuration or a plain lm_eval run), with
their paired comparisons against the baseline row."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError
from steer_plugin.io.formats import is_calibration
from steer_plugin.io.terminal import printable
from steer_plugin.study.paired import (
    DEFAULT_RESAMPLES,
    DocKey,
    Paired,
    PairedBootstrap,
    _is_mean_of,
    match_documents,
    read_scores,
    samples_files,
)
from steer_plugin.study.results_files import is_sweep_plan, results_shape_problem
from steer_plugin.vectors.controls import is_control


@dataclass
class Row:
    key: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)  # "task/metric" -> value
    stderr: dict[str, float] = field(default_factory=dict)
    source: str = ""
    samples: dict[str, Path] = field(default_factory=dict)  # task -> per-document samples file
    limit: Any = None
    control_of: str | None = None  # a random control: the vector label it controls
    paired: dict[str, Paired] = field(default_factory=dict)  # "task/metric" -> delta vs the baseline


def _vector_label(v: dict[str, Any]) -> tuple[str, str | None]:
    """``anger (top_k-20)``; a random control: ``anger (top_k-20) [random control 0]`` and its parent."""
    meta = v.get("metadata") or {}

    def describe(m: dict[str, Any], fallback: str) -> str:
        method = m.get("method")
        extra = f" ({method}{'-' + str(m['top_k']) if m.get('top_k') else ''})" if method else ""
        return f"{m.get('emotion') or fallback}{extra}"

    if is_control(meta):
        source = meta.get("control_of") or {}
        parent = describe(source, Path(str(source.get("file") or "random")).stem)
        return f"{parent} [random control {meta.get('seed', '?')}]", parent
    return describe(meta, Path(str(v.get("path"))).stem), None


def _row_key(config: dict[str, Any]) -> dict[str, Any]:
    args = config.get("model_args") or ""
    parsed = dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv) if isinstance(args, str) else dict(args)
    model = parsed.get("pretrained") or config.get("model", "?")
    steering = config.get("steering") or {}
    vectors = steering.get("vectors") or []
    alphas = steering.get("alphas") or []
    if not vectors or not any(alphas):
        return {"model": str(model), "vector": "-", "alpha": 0.0, "layers": "-", "positions": "-"}
    names = [_vector_label(v)[0] for v in vectors]
    alpha: Any = alphas[0] if len(set(alphas)) == 1 else ";".join(f"{a:g}" for a in alphas)
    return {
        "model": str(model),
        "vector": " + ".join(names),
        "alpha": alpha,
        "layers": steering.get("layers", "all"),
        "positions": steering.get("positions", "all"),
    }


def _skip(path: Path, reason: str) -> None:
    """Files the table leaves out are named on stderr: a row must never vanish silently."""
    import sys

    print(f"steer table: skipped {printable(path)}: {reason}", file=sys.stderr)


def load_rows(folder: str | Path) -> list[Row]:
    root = Path(folder)
    if not root.exists():
        raise SteerError(f"results folder not found: {root}")
    rows: list[Row] = []
    skipped = 0
    for path in sorted(root.rglob("*.json")):
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            _skip(path, f"not readable JSON ({type(e).__name__})")
            skipped += 1
            continue
        if is_sweep_plan(path, doc) or is_calibration(doc):  # the sweep's own plan / controls' alphas, not results
            continue
        problem = results_shape_problem(doc)
        if problem:
            _skip(path, problem)
            skipped += 1
            continue
        config = doc["config"]
        # every string shown later comes from the file: control characters escaped once, here
        key = {k: printable(v) if isinstance(v, str) else v for k, v in _row_key(config).items()}
        row = Row(key, source=printable(path.relative_to(root)), limit=config.get("limit"))
        vectors = (config.get("steering") or {}).get("vectors") or []
        if len(vectors) == 1 and row.key["vector"] != "-":
            parent = _vector_label(vectors[0])[1]
            row.control_of = None if parent is None else printable(parent)
        row.samples = samples_files(path, doc["results"])
        for task, metrics in doc["results"].items():
            for name, value in metrics.items():
                if name == "alias" or not isinstance(value, (int, float)) or "," not in name:
                    continue
                metric, filt = name.split(",", 1)
                target = row.stderr if metric.endswith("_stderr") else row.metrics
                metric = metric.removesuffix("_stderr")
                label = printable(f"{task}/{metric}" + ("" if filt == "none" else f"[{filt}]"))
                target[label] = float(value)
        rows.append(row)
    if not rows:
        extra = f" ({skipped} JSON file(s) skipped, see above)" if skipped else ""
        raise SteerError(f"no harness results JSON under {root}{extra}")
    return rows


def compare_rows(rows: list[Row], resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> None:
    """Fill ``row.paired`` (``"task/metric" -> Paired``) for every steered row that has per-document
    scores and a baseline row of the same model (unsteered or alpha 0) that scored the same documents;
    a baseline with the same ``limit`` is preferred. Rows without samples are left alone."""
    stats = PairedBootstrap(resamples, seed)
    cache: dict[Path, dict[str, dict[DocKey, float]]] = {}

    def scores(path: Path) -> dict[str, dict[DocKey, float]]:
        if path not in cache:
            cache[path] = read_scores(path)
        return cache[path]

    baselines = [r for r in rows if r.key["vector"] == "-" and r.samples]
    for row in rows:
        if row.key["vector"] == "-" or not row.samples:
            continue
        candidates = [b for b in baselines if b is not row and b.key["model"] == row.key["model"]]
        candidates.sort(key=lambda b: (b.limit != row.limit, b.source))
        for task, path in row.samples.items():
            mine = scores(path)
            for metric, per_doc in mine.items():
                label = f"{task}/{metric}"
                if not _is_mean_of(per_doc.values(), row.metrics.get(label)):
                    continue
                for base in candidates:
                    if task not in base.samples:
                        continue
                    theirs = scores(base.samples[task]).get(metric)
                    if not theirs or not _is_mean_of(theirs.values(), base.metrics.get(label)):
                        continue
                    c, b = match_documents(per_doc, theirs)
                    if len(c) == len(per_doc) and len(c) >= 2:
                        row.paired[label] = stats.compare(c, b)
                        break
