"""Leaderboard rows: one per harness results JSON (a sweep configuration or a plain lm_eval run), with
their paired comparisons against the baseline row."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError
from steer_plugin.io.formats import is_calibration
from steer_plugin.io.reading import JSON_LIMIT, UnreadableFile, read_regular_text
from steer_plugin.io.terminal import printable
from steer_plugin.study.paired import (
    DEFAULT_RESAMPLES,
    DuplicateDocument,
    Paired,
    PairedBootstrap,
    _is_mean_of,
    match_documents,
    read_scores,
    samples_files,
)
from steer_plugin.study.plan import SIDE_EFFECTS
from steer_plugin.study.quality import (
    DEGENERATE,
    FLUENT_SUFFIX,
    FLUENT_TARGET,
    Quality,
    Scores,
    compare_quality,
    has_quality,
)
from steer_plugin.study.results_files import is_sweep_plan, results_shape_problem, samples_problem
from steer_plugin.vectors.controls import is_control
from steer_plugin.vectors.recipe import recipe_name

KEY_COLUMNS = ("model", "vector", "alpha", "layers", "positions")  # the leaderboard's columns of a row's key
UNSTEERED_CELL = "-"  # what the leaderboard shows as the vector, layers and positions of an unsteered row


@dataclass(frozen=True)
class SeriesKey:
    """One vector's line across alphas (or KL budgets): what a random control shares with its vector."""

    model: str
    vector: str  # the vector's label
    layers: str
    positions: str

    @property
    def label(self) -> str:
        """``anger (top_k-20) L=all response``: the line's name in the leaderboard's plots."""
        return f"{self.vector} L={self.layers} {self.positions}"


@dataclass(frozen=True)
class RowKey:
    """What a leaderboard row ran: the model and its steering, as its results file records them.

    Every string is printable (control characters escaped): it comes from a file.
    """

    model: str
    vector: str | None = None  # the label, ``anger (top_k-20)`` or ``a + b``; None: unsteered (or alpha 0)
    alpha: float | str = 0.0  # several vectors at different alphas: ``1;-0.5``
    layers: str = "all"
    positions: str = "all"
    emotion: str | None = None  # what one vector steers toward (a control: its vector's); None for several
    method: str | None = None  # how that vector was built (``mean``, ``top_k``, ``random`` for a control)
    kl_budget: float | None = None  # the KL budget its alpha was calibrated for, if any
    control_of: str | None = None  # a random control: the label of the vector it controls
    prompted: str | None = None  # the prompting reference: the emotion its prompts asked for (no vector)

    @property
    def unsteered(self) -> bool:
        """The baseline: no vector and no instruction."""
        return self.vector is None and self.prompted is None

    @property
    def steered(self) -> bool:
        return self.vector is not None

    @property
    def series(self) -> SeriesKey:
        return SeriesKey(self.model, str(self.vector), self.layers, self.positions)

    @property
    def controls(self) -> SeriesKey | None:
        """A random control's vector's series (same model, layers and positions); None for any other row."""
        if self.control_of is None:
            return None
        return SeriesKey(self.model, self.control_of, self.layers, self.positions)

    def __getitem__(self, column: str) -> Any:
        """The leaderboard's cell of a key column (``KEY_COLUMNS``): ``-`` as an unsteered row's vector,
        layers and positions."""
        if column not in KEY_COLUMNS:
            raise KeyError(column)
        if self.prompted is not None and column == "vector":
            return f"(asking for {self.prompted})"
        if not self.steered and column in ("vector", "layers", "positions"):
            return UNSTEERED_CELL
        return getattr(self, column)


@dataclass
class Row:
    key: RowKey
    metrics: dict[str, float] = field(default_factory=dict)  # "task/metric" -> value
    stderr: dict[str, float] = field(default_factory=dict)
    source: str = ""
    samples: dict[str, Path] = field(default_factory=dict)  # task -> per-document samples file
    doc_scores: dict[str, Scores] = field(default_factory=dict, repr=False)  # task -> its samples file's scores
    limit: Any = None
    paired: dict[str, Paired] = field(default_factory=dict)  # "task/metric" -> delta vs the baseline

    @property
    def control_of(self) -> str | None:
        """A random control: the label of the vector it controls."""
        return self.key.control_of


@dataclass(frozen=True)
class _Vector:
    """One vector of a results file, described from its metadata (printable strings)."""

    label: str  # ``anger (top_k-20)``; a random control: ``anger (top_k-20) [random control 0]``
    emotion: str  # the metadata's emotion (a control: its vector's), else the file's stem
    method: str | None
    control_of: str | None  # a random control: its vector's label


def _describe(m: dict[str, Any], fallback: str) -> tuple[str, str]:
    """(label, emotion) of a vector's metadata; ``fallback`` (the file stem) names one without an emotion."""
    emotion = printable(m.get("emotion") or fallback)
    recipe = recipe_name(m)
    extra = f" ({recipe})" if recipe else ""
    return f"{emotion}{printable(extra)}", emotion


def _vector(v: dict[str, Any]) -> _Vector:
    meta = v.get("metadata") or {}
    method = None if meta.get("method") is None else printable(meta["method"])
    if is_control(meta):
        source = meta.get("control_of") or {}
        parent, emotion = _describe(source, Path(str(source.get("file") or "random")).stem)
        return _Vector(f"{parent} [random control {printable(meta.get('seed', '?'))}]", emotion, method, parent)
    label, emotion = _describe(meta, Path(str(v.get("path"))).stem)
    return _Vector(label, emotion, method, None)


def _row_key(config: dict[str, Any], kl_budget: float | None) -> RowKey:
    args = config.get("model_args") or ""
    parsed = dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv) if isinstance(args, str) else dict(args)
    model = printable(parsed.get("pretrained") or config.get("model", "?"))
    steering = config.get("steering") or _steering_of_model_args(parsed)
    alphas = steering.get("alphas") or []
    prompting = config.get("prompting")
    if isinstance(prompting, dict) and prompting.get("emotion"):
        emotion = printable(prompting["emotion"])
        return RowKey(model, emotion=emotion, prompted=emotion)
    if not steering.get("vectors") or not any(alphas):
        return RowKey(model)
    vectors = [_vector(v) for v in steering["vectors"]]
    alpha: Any = alphas[0] if len(set(alphas)) == 1 else ";".join(f"{a:g}" for a in alphas)
    one = vectors[0] if len(vectors) == 1 else None  # emotion, method and control: of one vector only
    key = RowKey(
        model,
        " + ".join(v.label for v in vectors),
        printable(alpha) if isinstance(alpha, str) else alpha,
        printable(steering.get("layers", "all")),
        printable(steering.get("positions", "all")),
        kl_budget=kl_budget,
    )
    return key if one is None else replace(key, emotion=one.emotion, method=one.method, control_of=one.control_of)


def _steering_of_model_args(args: dict[str, Any]) -> dict[str, Any]:
    """What ``steered_hf``'s ``--model_args`` say it steered, for a results file that has no ``config.steering``
    (it would otherwise be a second unsteered row): the vector files (labelled by name), alphas (1 when not
    given), layers and positions."""
    vectors = [p.strip() for p in str(args.get("vector") or "").split(";") if p.strip()]
    if not vectors:
        return {}
    try:
        alphas = [float(a) for a in str(args.get("alpha", 1.0)).split(";") if a.strip()] or [1.0]
    except ValueError:
        return {}  # not a run steered_hf would have started
    return {
        "vectors": [{"path": v} for v in vectors],
        "alphas": alphas * len(vectors) if len(alphas) == 1 else alphas,
        "layers": str(args.get("layers", "all")),
        "positions": str(args.get("positions", "all")),
    }


def _skip(path: Path, reason: str) -> None:
    """Files the table leaves out are named on stderr: a row must never vanish silently."""
    print(f"steer table: skipped {printable(path)}: {reason}", file=sys.stderr)


def _read_results(path: Path) -> tuple[Any, str | None]:
    """A results file's JSON document, or why it cannot be read (a FIFO, a link to a device: refused by what it
    is, without blocking or reading it)."""
    try:
        return json.loads(read_regular_text(path, JSON_LIMIT)), None
    except UnreadableFile as e:
        return None, str(e).removeprefix(f"{printable(path)} ")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        return None, f"not readable JSON ({type(e).__name__})"


def _read_samples(files: dict[str, Path]) -> tuple[dict[str, Path], dict[str, Scores]]:
    """The samples files whose per-document scores can be paired, and their scores; any other is named on
    stderr and left out (the row stays, without its Δ): unreadable, or scoring a document twice."""
    usable, scores = {}, {}
    for task, path in files.items():
        try:
            scores[task] = read_scores(path)
        except (OSError, DuplicateDocument) as e:
            reason = str(e) if isinstance(e, SteerError) else f"{printable(path)} is unreadable ({type(e).__name__})"
            print(f"steer table: {reason}; it is left out of the paired comparisons (Δ columns)", file=sys.stderr)
            continue
        usable[task] = path
    return usable, scores


def load_rows(folder: str | Path) -> list[Row]:
    """The leaderboard's rows: one per harness results JSON under ``folder`` (sweep plans, calibrations
    and unreadable files left out, the last two named on stderr).

    Args:
        folder: a `steer sweep` / `steer run` folder, or any folder of lm_eval results.

    Returns:
        The rows in path order, keyed by what they ran (``RowKey``), without paired statistics yet
        (``compare_rows``).
    """
    root = Path(folder)
    if not root.exists():
        raise SteerError(f"results folder not found: {root}")
    rows: list[Row] = []
    skipped = 0
    for path in sorted(root.rglob("*.json")):
        if path.is_dir():
            continue
        doc, unreadable = _read_results(path)
        if unreadable:
            _skip(path, unreadable)
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
        missing = samples_problem(path, config)
        if missing:  # the row stays, but its Δ columns cannot be computed: said, not dropped silently
            print(f"steer table: {printable(path)}: {missing}: its Δ columns may be missing", file=sys.stderr)
        # every string shown later comes from the file: control characters escaped once, as it is read
        metrics: dict[str, float] = {}
        stderr: dict[str, float] = {}
        for task, values in doc["results"].items():
            for name, value in values.items():
                if name == "alias" or not isinstance(value, (int, float)) or "," not in name:
                    continue
                metric, filt = name.split(",", 1)
                target = stderr if metric.endswith("_stderr") else metrics
                metric = metric.removesuffix("_stderr")
                label = printable(f"{task}/{metric}" + ("" if filt == "none" else f"[{filt}]"))
                target[label] = float(value)
        samples, scores = _read_samples(samples_files(path, doc["results"]))
        row = Row(
            _row_key(config, metrics.get(f"{SIDE_EFFECTS}/kl_budget")),
            metrics,
            stderr,
            source=printable(path.relative_to(root)),
            samples=samples,
            limit=config.get("limit"),
            doc_scores=scores,
        )
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
    baselines = [r for r in rows if r.key.unsteered and r.samples]
    for row in rows:
        if row.key.unsteered or not row.samples:
            continue
        candidates = [b for b in baselines if b is not row and b.key.model == row.key.model]
        candidates.sort(key=lambda b: (b.limit != row.limit, b.source))
        same_prompt = row.key.prompted is None  # the prompting reference asks differently on purpose
        for task, mine in row.doc_scores.items():
            for metric, per_doc in mine.items():
                label = f"{task}/{metric}"
                if not _is_mean_of(per_doc.values(), row.metrics.get(label)):
                    continue
                for base in candidates:
                    if task not in base.doc_scores:
                        continue
                    theirs = base.doc_scores[task].get(metric)
                    if not theirs or not _is_mean_of(theirs.values(), base.metrics.get(label)):
                        continue
                    c, b = match_documents(per_doc, theirs, same_prompt)
                    if len(c) == len(per_doc) and len(c) >= 2:
                        row.paired[label] = stats.compare(c, b)
                        break
            if has_quality(mine):
                ref = next((b for b in candidates if has_quality(b.doc_scores.get(task, {}))), None)
                if ref is not None:
                    _add_quality(row, ref, task, compare_quality(mine, ref.doc_scores[task], stats, same_prompt))


def _add_quality(row: Row, base: Row, task: str, q: Quality) -> None:
    """The robust emotion metric and the degenerate rate as leaderboard columns (``study.quality``)."""
    row.metrics[f"{task}/{DEGENERATE}"] = q.degenerate_rate
    base.metrics[f"{task}/{DEGENERATE}"] = q.baseline_degenerate_rate
    for target, value in ((row, q.fluent_target), (base, q.baseline_fluent_target)):
        if value is not None:
            target.metrics[f"{task}/{FLUENT_TARGET}"] = value
    if q.degenerate is not None:
        row.paired[f"{task}/{DEGENERATE}"] = q.degenerate
    for metric, paired in q.fluent.items():  # prob_<label>_fluent: for the leakage table, not a column
        row.paired[f"{task}/{metric}{FLUENT_SUFFIX}"] = paired
