"""The files a sweep writes and `steer table` reads: their names, and what makes a results document usable."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from steer_plugin.io.outputs import check_output_file
from steer_plugin.io.reading import read_regular_bytes
from steer_plugin.io.terminal import printable
from steer_plugin.vectors.metadata import metadata_problem

SWEEP_FILE = "sweep.json"  # a sweep's plan, written once
SWEEP_FORMAT = "steer-plugin/sweep"
SWEEP_VERSION = 1
RESULTS_FILE = "results.json"  # one per configuration: the harness's results JSON
# in a sweep's results ``config``: each samples file written beside it (its per-document scores) -> its sha256
SAMPLES_RECORD = "samples_sha256"


def text_sha256(text: str) -> str:
    """The sha256 of a file's text as it is written (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def results_shape_problem(doc: Any) -> str | None:
    """Why ``doc`` is not a harness results document we can tabulate (None: it is one)."""
    if not isinstance(doc, dict) or "results" not in doc or "config" not in doc:
        return "not harness results (no 'results' and 'config')"
    results, config = doc["results"], doc["config"]
    if not isinstance(results, dict) or not all(isinstance(m, dict) for m in results.values()):
        return "'results' is not an object of task -> metrics objects"
    if not isinstance(config, dict):
        return "'config' is not an object"
    legacy = _legacy_metric(results)
    if legacy:
        return (
            f"an lm-eval 0.3-style results file (metric {legacy!r} has no ',filter' suffix, as in 'acc,none'), "
            "which is not supported; accepted: results written by lm-eval 0.4 or later"
        )
    if not isinstance(config.get("model_args"), (str, dict, type(None))):
        return "'config.model_args' is neither a string nor an object"
    steering = config.get("steering")
    if steering is None:
        return None
    if not isinstance(steering, dict):
        return "'config.steering' is not an object"
    vectors, alphas = steering.get("vectors") or [], steering.get("alphas") or []
    if not isinstance(vectors, list) or not all(
        isinstance(v, dict) and isinstance(v.get("metadata") or {}, dict) for v in vectors
    ):
        return "'config.steering.vectors' is not a list of objects"
    for i, v in enumerate(vectors):
        problem = metadata_problem(v.get("metadata") or {})
        if problem:
            return f"'config.steering.vectors[{i}].metadata': {problem}"
    if not isinstance(alphas, list) or not all(_number(a) for a in alphas):
        return "'config.steering.alphas' is not a list of numbers"
    return None


# the numbers lm-eval 0.4 keeps beside a task's "metric,filter" values
_NOT_METRICS = frozenset({"sample_len"})


def _legacy_metric(results: dict[str, dict[str, Any]]) -> str | None:
    """``task/metric`` of a task whose numbers are all named without a filter (lm-eval 0.3: ``acc``,
    ``acc_stderr``), where lm-eval 0.4 writes ``acc,none``: read as 0.4 results its metrics would vanish."""
    for task, values in results.items():
        bare = [k for k, v in values.items() if _number(v) and "," not in k and k not in _NOT_METRICS]
        if bare and not any("," in k for k in values):
            return printable(f"{task}/{bare[0]}")
    return None


def samples_problem(results_file: Path, config: dict[str, Any]) -> str | None:
    """Why the samples files a results file records (``SAMPLES_RECORD``) are not as they were written: missing,
    or changed since (truncated, edited); None when they are, or when it records none (the Δ columns come
    from these files: without them a row loses its Δ)."""
    recorded = config.get(SAMPLES_RECORD)
    if recorded is None:
        return None
    if not isinstance(recorded, dict):
        return f"'config.{SAMPLES_RECORD}' is not an object"
    for name, sha in recorded.items():
        shown = printable(name)  # a name from a file
        if Path(str(name)).name != name or not str(name).startswith("samples_"):
            return f"'config.{SAMPLES_RECORD}' names {shown!r}, not a samples file beside it"
        path = results_file.parent / name
        try:
            data = read_regular_bytes(path)
        except FileNotFoundError:
            return f"{shown} is missing"
        except OSError as e:
            return f"{shown} is unreadable ({type(e).__name__})"
        if hashlib.sha256(data).hexdigest() != sha:
            return f"{shown} changed since it was written"
    return None


def is_sweep_plan(path: Path, doc: Any) -> bool:
    return path.name == SWEEP_FILE and isinstance(doc, dict) and doc.get("format") == SWEEP_FORMAT


def table_outputs(prefix: str | Path) -> list[Path]:
    """Every file ``write_table`` may write for ``prefix``."""
    prefix = Path(prefix)
    return [
        prefix.with_suffix(".md"),
        prefix.with_suffix(".csv"),
        Path(f"{prefix}_vs_alpha.png"),
        Path(f"{prefix}_tradeoff.png"),
    ]


def check_table_outputs(prefix: str | Path) -> None:
    """Before any work (a sweep runs for hours before its table): the table's files must be writable."""
    for path in table_outputs(prefix):
        check_output_file(path)
