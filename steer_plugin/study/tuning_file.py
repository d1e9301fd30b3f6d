"""The tuning file next to a vector: ``<name>.tuning.json``, what `steer tune` chose and the whole grid it chose
from, one entry per key, validated on reading, reused and verified like the calibrations beside it.

A key names the model (folder name, ``weights`` fingerprint, dtype), the vector file's sha256 and recipe, the
positions, the KL budgets and candidate layer ranges of the grid, the classifier, the task, the prompt part
(``dev``) with the split rule, the document limit and the neutral texts of the calibrations and side effects.
`steer tune` reuses an entry whose key equals its own; ``--layers tuned`` uses the newest entry of the same model,
weights, dtype, vector, positions and classifier (what a layer choice is a choice *for*). Either way an entry
counts only while the calibrations it steered with still hold: every grid cell's alpha must still be the stored
calibration's alpha for its budget (``<name>.calibration.json``), so a vector, weights or calibration that changed
since makes the choice stale, and it is said so instead of used.

Light (json and paths only): the command line and ``study.evaluation`` import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steer_plugin.errors import SteerError
from steer_plugin.io.reading import NotJSON, read_json_file
from steer_plugin.io.schema import Rule, fields_problem, is_int, is_number, shown

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.model.loading import ModelOptions

TUNED = "tuned"  # --layers tuned: the stored choice
AUTO = "auto"  # --layers auto: the stored choice, tuned first where there is none
STORED_CHOICES = (TUNED, AUTO)
TUNING_FORMAT = "steer-plugin/tuning"
TUNING_VERSION = 1
# what a layer choice is a choice for: `--layers tuned` looks an entry up by these key fields
USE_FIELDS = ("model", "weights", "dtype", "vector_sha256", "positions", "classifier")


def tuning_path(vector_path: str | Path) -> Path:
    """``anger-mean.safetensors`` -> ``anger-mean.tuning.json`` (same folder)."""
    p = Path(vector_path)
    return p.with_name(p.stem + ".tuning.json")


@dataclass(frozen=True)
class Cell:
    """One (layer range, KL budget) of the grid as the dev prompts measured it."""

    layers: str  # the layer spec swept: ``middle``, ``0-9``, ``all``
    steered: str  # the layers it names on this model (``10-19``): what the calibration is keyed by
    kl_budget: float
    alpha: float | None = None  # None: the budget was not reached on these layers (not evaluated)
    kl: float | None = None  # measured on the neutral texts
    robust_delta: float | None = None  # target probability Δ vs the baseline, on prompts fluent in both arms
    ci_low: float | None = None
    ci_high: float | None = None
    n_fluent: int | None = None  # prompts fluent in both arms
    degenerate_rate: float | None = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Cell:
        return cls(**{f.name: doc[f.name] for f in fields(cls) if f.name in doc})


@dataclass(frozen=True)
class Tuning:
    """One entry: the key, the rule, the grid, the prompting reference and the choice (None: no cell passed)."""

    key: dict[str, Any]
    rule: str
    baseline_degenerate_rate: float
    cells: list[Cell]
    choice: Cell | None
    reference: dict[str, Any] | None = None  # the prompting reference: robust_delta, degenerate_rate, kl
    folder: str = ""  # the sweep folder of the grid (its leaderboard and per-document scores)
    created_at: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("cells", "choice")},
            "cells": [asdict(c) for c in self.cells],
            "choice": None
            if self.choice is None
            else {"layers": self.choice.layers, "kl_budget": self.choice.kl_budget},
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Tuning:
        cells = [Cell.from_json(c) for c in doc["cells"]]
        picked = doc["choice"]
        choice = None
        if picked is not None:
            choice = next(
                (c for c in cells if (c.layers, c.kl_budget) == (picked["layers"], picked["kl_budget"])), None
            )
        return cls(
            dict(doc["key"]), doc["rule"], doc["baseline_degenerate_rate"], cells, choice,
            doc.get("reference"), doc.get("folder", ""), doc.get("created_at", ""),
        )  # fmt: skip

    def matches(self, key: Mapping[str, Any], names: Sequence[str] | None = None) -> bool:
        """The same key (``names``: on those fields only)."""
        if names is None:
            return self.key == dict(key)
        return all(self.key.get(n) == key.get(n) for n in names)


_OPTIONAL_NUMBER: Rule = (lambda x: x is None or is_number(x), "is not a number or null")
_CELL_RULES: dict[str, Rule] = {
    "layers": (lambda x: isinstance(x, str) and bool(x), "is not a layer spec"),
    "steered": (lambda x: isinstance(x, str) and bool(x), "is not a layer spec"),
    "kl_budget": (lambda x: is_number(x) and x > 0, "is not a positive number"),
    **{name: _OPTIONAL_NUMBER for name in ("alpha", "kl", "robust_delta", "ci_low", "ci_high", "degenerate_rate")},
    "n_fluent": (lambda x: x is None or (is_int(x) and x >= 0), "is not a count or null"),
}
_ENTRY_RULES: dict[str, Rule] = {
    "key": (lambda x: isinstance(x, dict), "is not an object"),
    "rule": (lambda x: isinstance(x, str), "is not a text"),
    "baseline_degenerate_rate": (is_number, "is not a number"),
    "cells": (lambda x: isinstance(x, list) and bool(x), "is not a list of cells"),
    "choice": (
        lambda x: x is None or (isinstance(x, dict) and set(x) == {"layers", "kl_budget"}),
        "is not null or {layers, kl_budget}",
    ),
    "reference": (lambda x: x is None or isinstance(x, dict), "is not an object or null"),
    "folder": (lambda x: isinstance(x, str), "is not a text"),
    "created_at": (lambda x: isinstance(x, str), "is not a text"),
}


def tuning_file_problem(doc: Any) -> str | None:
    """Why ``doc`` is not a tuning file this version can use, as ``field: why`` (None: it is one)."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if doc.get("format") != TUNING_FORMAT:
        return f"format: {shown(doc.get('format'))}, not {TUNING_FORMAT!r}"
    if doc.get("format_version") != TUNING_VERSION:
        return f"format_version: {shown(doc.get('format_version'))} is not a version this steer-plugin reads"
    entries = doc.get("tunings")
    if not isinstance(entries, list):
        return f"tunings: {shown(entries)} is not a list"
    required = ["key", "rule", "baseline_degenerate_rate", "cells", "choice"]
    for i, entry in enumerate(entries):
        problem = fields_problem(entry, _ENTRY_RULES, f"tunings[{i}]", required=required, only_known=True)
        for j, cell in enumerate([] if problem else entry["cells"]):
            problem = problem or fields_problem(
                cell, _CELL_RULES, f"tunings[{i}].cells[{j}]", required=["layers", "steered", "kl_budget"],
                only_known=True,
            )  # fmt: skip
        picked = None if problem else entry["choice"]
        if picked is not None and not any(
            (c["layers"], c["kl_budget"]) == (picked["layers"], picked["kl_budget"]) for c in entry["cells"]
        ):
            problem = f"tunings[{i}].choice: {shown(picked)} is not a cell of its grid"
        if problem:
            return problem
    return None


def _refused(path: Path, problem: str) -> SteerError:
    return SteerError(f"{path}: {problem}; delete the file (or fix it) and run `steer tune` again")


def stored_tunings(vector_path: str | Path) -> list[Tuning]:
    """The tunings stored beside a vector, validated (a tampered file is an error, not a guess)."""
    path = tuning_path(vector_path)
    try:
        doc = read_json_file(path, "tuning file")
    except FileNotFoundError:
        return []
    except NotJSON as e:
        raise _refused(path, str(e)) from None
    problem = tuning_file_problem(doc)
    if problem:
        raise _refused(path, problem)
    return [Tuning.from_json(entry) for entry in doc["tunings"]]


def store(vector_path: str | Path, tuning: Tuning) -> Path:
    """Add (or replace) this tuning's entry; entries for another version of the vector are dropped."""
    from steer_plugin.io.sidecar import write_sidecar

    sha = tuning.key.get("vector_sha256")
    kept = [t for t in stored_tunings(vector_path) if t.key.get("vector_sha256") == sha and not t.matches(tuning.key)]
    return write_sidecar(
        tuning_path(vector_path), fmt=TUNING_FORMAT, version=TUNING_VERSION, vector_path=vector_path, sha=sha,
        field="tunings", entries=[t.to_json() for t in [*kept, tuning]],
    )  # fmt: skip


def stale_calibration(vector_path: str | Path, tuning: Tuning) -> str | None:
    """Why the calibrations ``tuning`` steered with no longer hold (None: they do): each evaluated cell's alpha
    must still be a stored calibration's alpha for its budget, on its layers and positions, for these weights."""
    import math

    from steer_plugin.steering.calibration_file import stored_calibrations

    stored = stored_calibrations(vector_path)
    key = tuning.key
    for cell in tuning.cells:
        if cell.alpha is None:
            continue
        held = any(
            c.key.vector_sha256 == key["vector_sha256"]
            and c.key.get("layers") == cell.steered
            and c.key.get("positions") == key["positions"]
            and c.key.weights in (None, key["weights"])
            and any(
                r.converged
                and math.isclose(r.kl_budget, cell.kl_budget, rel_tol=1e-9)
                and math.isclose(float(f"{r.alpha:.4g}"), cell.alpha, rel_tol=1e-9)
                for r in c.rows
            )
            for c in stored
        )
        if not held:
            return (
                f"layers {cell.layers} at kl:{cell.kl_budget:g} steered with alpha {cell.alpha:g}, which no stored "
                "calibration gives any more"
            )
    return None


def find_valid(vector_path: str | Path, key: Mapping[str, Any], names: Sequence[str] | None = None) -> Tuning | None:
    """The newest stored tuning of ``key`` (on ``names`` only) whose calibrations still hold; None: none."""
    for tuning in reversed(stored_tunings(vector_path)):  # store() appends: the newest last
        if tuning.matches(key, names) and stale_calibration(vector_path, tuning) is None:
            return tuning
    return None


def use_key(model: ModelOptions, vector: str | os.PathLike, positions: str, classifier: str | None) -> dict[str, Any]:
    """What a layer choice is a choice for (``tuning_file.USE_FIELDS``): model, weights, dtype, vector, positions,
    classifier."""
    from steer_plugin.harness.classifier import resolve_classifier_name
    from steer_plugin.vectors.vector import file_sha256

    key = {
        "model": Path(model.name).name,
        "weights": model.weights_fingerprint(),
        "dtype": model.dtype,
        "vector_sha256": file_sha256(vector),
        "positions": positions,
        "classifier": resolve_classifier_name(classifier),
    }
    assert tuple(key) == USE_FIELDS
    return key


def tune_command(model: ModelOptions, emotion: str) -> str:
    """The `steer tune` command line that makes a missing choice (for error messages)."""
    return f"steer tune --model {model.name} --emotion {emotion}"


def tuned_choice(vector_path: str | Path, key: Mapping[str, Any], command: str) -> Cell:
    """The layers `steer tune` chose for this vector and setting (``USE_FIELDS`` of ``key``), or a one-line error
    naming ``command`` (the `steer tune` that makes the choice) that says why there is none."""
    again = f"run `{command}` first"
    candidates = [t for t in stored_tunings(vector_path) if t.matches(key, USE_FIELDS)]
    if not candidates:
        other = next(iter(stored_tunings(vector_path)), None)
        differs = next((n for n in USE_FIELDS if other is not None and other.key.get(n) != key.get(n)), None)
        said = (
            f" (its stored tuning has another {differs}: {shown(other.key.get(differs))})" if other and differs else ""
        )
        raise SteerError(f"--layers {TUNED}: no tuned layers for {vector_path}{said}; {again}")
    tuning = candidates[-1]
    stale = stale_calibration(vector_path, tuning)
    if stale is not None:
        raise SteerError(f"--layers {TUNED}: the tuning of {vector_path} is stale ({stale}); {again}")
    if tuning.choice is None:
        raise SteerError(
            f"--layers {TUNED}: `steer tune` found no layer range for {vector_path} within its degenerate limit "
            f"({tuning.rule}); give --layers yourself"
        )
    return tuning.choice
