"""The calibration file next to a vector: ``<name>.calibration.json``, one entry per key, validated on reading.

Calibrations are stored next to the vector (``<name>.calibration.json``), one entry per
(model, weights, dtype, layers, positions, texts) so several coexist (:mod:`steer_plugin.steering.calibration_key`);
``steer sweep --alphas kl:0.1`` reuses a matching entry and calibrates (and stores) otherwise. A file that is not
one this version wrote is refused with the field that is wrong, never guessed at.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError
from steer_plugin.io.formats import CALIBRATION_FORMAT
from steer_plugin.io.reading import NotJSON, read_json_file
from steer_plugin.io.schema import Rule, fields_problem, is_finite, is_int, is_number, shown
from steer_plugin.steering.calibration_key import CalibrationKey, Reuse
from steer_plugin.steering.calibration_result import Calibration, CalibrationRow
from steer_plugin.vectors.vector import SteeringVector

CALIBRATION_VERSION = 1


def calibration_path(vector_path: str | Path) -> Path:
    """``anger-mean.safetensors`` -> ``anger-mean.calibration.json`` (same folder)."""
    p = Path(vector_path)
    return p.with_name(p.stem + ".calibration.json")


_NUMBER: Rule = (is_number, "is not a number")
_POSITIVE: Rule = (lambda x: is_finite(x) and x > 0, "is not a positive finite number")
_OPTIONAL_NUMBER: Rule = (lambda x: x is None or is_number(x), "is not a number or null")
_TEXT: Rule = (lambda x: isinstance(x, str), "is not a text")
# what each field of a stored calibration must be (measured values may be nan/inf: they are shown, not used)
_ROW_RULES: dict[str, Rule] = {
    "kl_budget": _POSITIVE,
    "alpha": _POSITIVE,  # the search only returns alphas > 0
    "kl_calibration": _NUMBER,
    "kl_heldout": _NUMBER,
    "ppl_calibration": _NUMBER,
    "ppl_heldout": _NUMBER,
    "relative_strength": _OPTIONAL_NUMBER,
    "relative_strength_max": _OPTIONAL_NUMBER,
    "converged": (lambda x: isinstance(x, bool), "is not true or false"),
    "kl_calibration_stderr": _NUMBER,
    "kl_heldout_stderr": _NUMBER,
}
_ENTRY_RULES: dict[str, Rule] = {
    "key": (
        lambda x: (
            isinstance(x, dict) and all(v is None or isinstance(v, (str, bool)) or is_number(v) for v in x.values())
        ),
        "is not an object of texts and numbers",
    ),
    "rows": (lambda x: isinstance(x, list), "is not a list"),
    "texts": _TEXT,
    "tolerance": (lambda x: is_number(x) and 0 < x < 1, "is not a number between 0 and 1"),
    "baseline_ppl_calibration": _NUMBER,
    "baseline_ppl_heldout": _NUMBER,
    "evaluations": (lambda x: is_int(x) and x >= 0, "is not a count"),
    "seconds": _NUMBER,
    "points": (
        lambda x: (
            isinstance(x, list) and all(isinstance(p, list) and len(p) == 2 and all(map(is_number, p)) for p in x)
        ),
        "is not a list of [alpha, KL] pairs",
    ),
    "created_at": _TEXT,
}


def _required(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]


def calibration_file_problem(doc: Any) -> str | None:
    """Why ``doc`` is not a calibration file this version can use, as ``field: why`` (None: it is one)."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if doc.get("format") != CALIBRATION_FORMAT:
        return f"format: {shown(doc.get('format'))}, not {CALIBRATION_FORMAT!r}"
    version = doc.get("format_version")
    if not (is_int(version) and 1 <= version <= CALIBRATION_VERSION):
        return f"format_version: {shown(version)} is not a version this steer-plugin reads ({CALIBRATION_VERSION})"
    entries = doc.get("calibrations")
    if not isinstance(entries, list):
        return f"calibrations: {shown(entries)} is not a list"
    for i, entry in enumerate(entries):
        where = f"calibrations[{i}]"
        problem = fields_problem(entry, _ENTRY_RULES, where, required=_required(Calibration), only_known=True)
        for j, row in enumerate([] if problem else entry["rows"]):
            problem = problem or fields_problem(
                row, _ROW_RULES, f"{where}.rows[{j}]", required=_required(CalibrationRow), only_known=True
            )
        if problem:
            return problem
    return None


def _refused(path: Path, problem: str) -> SteerError:
    return SteerError(f"{path}: {problem}; delete the file (or fix it) to calibrate again")


def read_calibration_file(path: Path) -> dict[str, Any] | None:
    """The validated contents of a calibration file (None: there is none); SteerError naming the field otherwise."""
    try:
        doc = read_json_file(path, "calibration file")
    except FileNotFoundError:
        return None
    except NotJSON as e:
        raise _refused(path, str(e)) from None
    problem = calibration_file_problem(doc)
    if problem:
        raise _refused(path, problem)
    return doc


def stored_calibrations(vector_path: str | Path) -> list[Calibration]:
    """The calibrations stored beside a vector, validated (a tampered file is an error, not a guess)."""
    doc = read_calibration_file(calibration_path(vector_path))
    return [Calibration.from_json(entry) for entry in (doc or {}).get("calibrations", [])]


def matching(stored: list[Calibration], key: CalibrationKey, budgets: list[float]) -> tuple[Calibration | None, bool]:
    """The stored entry for ``key`` with these budgets, and whether it must be verified on this model first
    (``CalibrationKey.reuse_of``): an entry of the same weights is preferred to one to verify."""
    reuses = [(c, key.reuse_of(c.key)) for c in stored if c.has_budgets(budgets)]
    same = next((c for c, reuse in reuses if reuse is Reuse.AS_STORED), None)
    if same is not None:
        return same, False
    unknown = next((c for c, reuse in reuses if reuse is Reuse.VERIFY), None)
    return unknown, unknown is not None


def find_stored(vector_path: str | Path, key: CalibrationKey, budgets: Iterable[float]) -> Calibration | None:
    """The stored entry ``calibrate_vector_file`` would reuse for ``key`` (one without a weights fingerprint is
    verified there first)."""
    return matching(stored_calibrations(vector_path), key, list(budgets))[0]


def check_stored_alphas(
    stored: list[Calibration], c: Calibration, vector: SteeringVector, layers: list[int], path: Path
) -> None:
    """A stored alpha is used as is: alpha x vector must be finite (an alpha of 1e300 passes the schema)."""
    i = stored.index(c)
    for j, r in enumerate(c.rows):
        if not bool((r.alpha * vector.matrix[layers]).isfinite().all()):
            raise _refused(path, f"calibrations[{i}].rows[{j}].alpha: {r.alpha:g} x the vector is not finite")


def store(vector_path: str | Path, calibration: Calibration) -> Path:
    """Add (or replace) this calibration's entry; entries for another version of the vector are dropped."""
    from steer_plugin.io.sidecar import write_sidecar

    sha = calibration.key.vector_sha256
    kept = [c for c in stored_calibrations(vector_path) if c.key.vector_sha256 == sha and c.key != calibration.key]
    return write_sidecar(
        calibration_path(vector_path), fmt=CALIBRATION_FORMAT, version=CALIBRATION_VERSION, vector_path=vector_path,
        sha=sha, field="calibrations", entries=[c.to_json() for c in [*kept, calibration]],
    )  # fmt: skip
