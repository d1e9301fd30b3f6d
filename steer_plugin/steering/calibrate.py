"""Alpha in units that transfer: the alpha whose side effect (KL to the unsteered model) hits a budget.

For each KL budget (nats per token, measured as in :mod:`steer_plugin.steering.side_effects`) a monotone search
finds the alpha > 0 whose mean KL on the calibration texts lies within ``tolerance`` (relative) of
the budget. KL grows roughly like a power of alpha (about alpha^2 when small), so the search works in
log-log space: a first guess, then steps along the estimated slope until the budget is bracketed
(at most x16 per step, like doubling), then a safeguarded secant between the bracket's ends. All
evaluations are shared between budgets (they are searched in increasing order, each starting from
the points the smaller ones left), so four budgets cost about 6-10 forward passes over the
calibration texts, plus one pass per budget over the held-out texts, where the achieved KL is reported too.

Each row also gives the relative strength ``||alpha v_l|| / RMS||h_l||`` (median and max over the
steered layers) when the vector's metadata holds the residual RMS recorded at build time.

Calibrations are stored next to the vector (``<name>.calibration.json``), one entry per
(model, weights, dtype, layers, positions, texts) so several coexist; ``steer sweep --alphas kl:0.1`` reuses a
matching entry and calibrates (and stores) otherwise. The key's ``weights`` is ``model.loading.weights_fingerprint``
of the files the model came from: another model with the same folder name and config is not a match. An entry
without one (made before it was recorded, or on a model not loaded from files: the shipped calibrations, made on an
offline copy of the hub model, are such) is meant to travel, so it is verified instead: one KL evaluation per
budget at its stored alpha on this model's calibration texts; within its tolerance it is reused, else the vector
is calibrated again (the progress output says which). A verification that held is remembered per weights
fingerprint in the user's cache (``$STEER_CACHE_DIR``, else ``$XDG_CACHE_HOME/steer-plugin``, else
``~/.cache/steer-plugin``): the same evaluations on the same weights give the same KLs, so later runs skip them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError, check_count
from steer_plugin.io.formats import CALIBRATION_FORMAT
from steer_plugin.io.outputs import check_output_file
from steer_plugin.io.schema import Rule, fields_problem, is_finite, is_int, is_number, shown
from steer_plugin.io.text_table import format_table, number_cell
from steer_plugin.steering.defaults import DEFAULT_LAYERS, DEFAULT_POSITIONS
from steer_plugin.steering.side_effects import DEFAULT_CACHE_BYTES, FluencyProbe, SideEffects, TextSource, texts_sha256
from steer_plugin.vectors.vector import SteeringVector

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (0.03, 0.1, 0.3, 1.0)
# 128 + 128 texts: with 64 + 64 the held-out KL of SmolLM2's anger vector at budget 0.03 was 14% off
# (the KL's standard error over 64 texts is ~10% there); with 128 + 128, 4%.
DEFAULT_N_CALIBRATION = 128
DEFAULT_N_HELDOUT = 128
DEFAULT_TOLERANCE = 0.05  # well inside the promised +-10 %
MAX_EVALS_PER_BUDGET = 12
MAX_STEP = 16.0  # bracketing: at most x16 (or /16) per step
MAX_ALPHA_RANGE = 1e6  # never search beyond start x/÷ this
CALIBRATION_VERSION = 1
# first alpha when the vector knows its residual RMS: a step of this fraction of the residual norm
START_RELATIVE_STRENGTH = 0.02


# --------------------------------------------------------------------------- the search


@dataclass
class SearchResult:
    alpha: float
    kl: float
    converged: bool


def _closest(points: list[tuple[float, float]], budget: float) -> tuple[float, float] | None:
    pos = [p for p in points if 0 < p[1] < math.inf]
    return min(pos, key=lambda p: abs(math.log(p[1] / budget))) if pos else None


def _slope(pts: list[tuple[float, float]]) -> float:
    """d log KL / d log alpha from two points, clamped to a sane range (2 = the small-alpha law)."""
    if len(pts) < 2 or pts[0][0] == pts[1][0] or pts[0][1] == pts[1][1] or math.inf in (pts[0][1], pts[1][1]):
        return 2.0
    (a1, k1), (a2, k2) = pts
    s = (math.log(k2) - math.log(k1)) / (math.log(a2) - math.log(a1))
    return min(max(s, 0.5), 4.0)


def next_alpha(points: list[tuple[float, float]], budget: float, start: float) -> float:
    """Where to evaluate next, given the (alpha, KL) points so far."""
    pos = sorted(p for p in points if p[0] > 0 and p[1] > 0)
    if not pos:
        below_zero = [p for p in points if p[0] > 0]  # KL exactly 0: far too small
        return max(p[0] for p in below_zero) * MAX_STEP if below_zero else start
    above = [p for p in pos if p[1] >= budget]
    hi = min(above) if above else None
    below = [p for p in pos if p[1] < budget and (hi is None or p[0] < hi[0])]
    lo = max(below) if below else None
    if lo and hi:  # bracketed: secant in log-log, kept away from the ends
        lk_lo, lk_hi = math.log(lo[1]), math.log(hi[1])
        t = 0.5 if lk_hi in (lk_lo, math.inf) else (math.log(budget) - lk_lo) / (lk_hi - lk_lo)
        t = min(max(t, 0.1), 0.9)
        return math.exp(math.log(lo[0]) + t * (math.log(hi[0]) - math.log(lo[0])))
    if lo:  # everything below the budget: step up along the slope
        factor = (budget / lo[1]) ** (1 / _slope(pos[-2:]))
        return lo[0] * min(max(factor, 1.25), MAX_STEP)
    assert hi is not None  # everything above: step down
    factor = (budget / hi[1]) ** (1 / _slope(pos[:2]))
    return hi[0] * min(max(factor, 1 / MAX_STEP), 1 / 1.25)


def search_alphas(
    kl_of: Callable[[float], float],
    budgets: Iterable[float],
    start: float = 1.0,
    tolerance: float = DEFAULT_TOLERANCE,
    max_evals_per_budget: int = MAX_EVALS_PER_BUDGET,
) -> tuple[dict[float, SearchResult], list[tuple[float, float]]]:
    """Per budget the evaluated alpha whose KL is closest to it (in log ratio); all (alpha, KL) points.

    A non-finite KL counts as above every budget. The search gives up on a budget (flagged not
    converged) after ``max_evals_per_budget`` evaluations or beyond ``MAX_ALPHA_RANGE`` x the start,
    and does not try larger budgets once a smaller one stayed out of reach from below.
    """
    points: list[tuple[float, float]] = []
    found: dict[float, SearchResult] = {}
    unreachable = False
    for budget in sorted(set(budgets)):
        for _ in range(0 if unreachable else max_evals_per_budget):
            best = _closest(points, budget)
            if best and abs(best[1] / budget - 1) <= tolerance:
                break
            a = next_alpha(points, budget, start)
            if any(math.isclose(a, p[0], rel_tol=1e-9) for p in points) or not (
                start / MAX_ALPHA_RANGE <= a <= start * MAX_ALPHA_RANGE
            ):
                break  # no progress possible (KL flat, or not monotone here)
            kl = float(kl_of(a))
            points.append((a, kl if math.isfinite(kl) else math.inf))
        best = _closest(points, budget)
        if best is None:
            raise SteerError(
                f"KL stays 0 up to alpha {max(p[0] for p in points):g}: the vector does not change the model"
            )
        converged = abs(best[1] / budget - 1) <= tolerance
        unreachable = unreachable or (not converged and all(k < budget for _, k in points))
        found[budget] = SearchResult(best[0], best[1], converged)
    return found, points


# --------------------------------------------------------------------------- calibration


@dataclass
class CalibrationRow:
    kl_budget: float
    alpha: float
    kl_calibration: float
    kl_heldout: float
    ppl_calibration: float
    ppl_heldout: float
    relative_strength: float | None  # median over steered layers of ||alpha v_l|| / RMS||h_l||
    relative_strength_max: float | None
    converged: bool  # kl_calibration within the tolerance of the budget
    kl_calibration_stderr: float = float("nan")  # over texts: how much the text sample alone moves the KL
    kl_heldout_stderr: float = float("nan")


@dataclass
class Calibration:
    key: dict[str, Any]  # what must match for reuse
    rows: list[CalibrationRow]
    texts: str = ""  # where the texts came from (not part of the key: the texts' hash is)
    tolerance: float = DEFAULT_TOLERANCE
    baseline_ppl_calibration: float = float("nan")
    baseline_ppl_heldout: float = float("nan")
    evaluations: int = 0  # steered passes over the calibration texts
    seconds: float = 0.0
    points: list[list[float]] = field(default_factory=list)  # every (alpha, KL) evaluated
    created_at: str = ""

    def alpha_for(self, budget: float) -> float:
        for r in self.rows:
            if math.isclose(r.kl_budget, budget, rel_tol=1e-9):
                return r.alpha
        raise KeyError(budget)

    def has_budgets(self, budgets: Iterable[float]) -> bool:
        have = [r.kl_budget for r in self.rows]
        return all(any(math.isclose(b, h, rel_tol=1e-9) for h in have) for b in budgets)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Calibration:
        data = dict(doc)
        data["rows"] = [CalibrationRow(**r) for r in doc.get("rows", [])]
        return cls(**data)


def check_settings(
    budgets: Iterable[float],
    positions: str = DEFAULT_POSITIONS,
    tolerance: float = DEFAULT_TOLERANCE,
    n_calibration: int = DEFAULT_N_CALIBRATION,
    n_heldout: int = DEFAULT_N_HELDOUT,
    batch_size: int = 16,
) -> list[float]:
    """The budgets, sorted and unique, once every setting is checked: callers check before loading the model."""
    from steer_plugin.model.positions import check_positions

    budgets = sorted(set(float(b) for b in budgets))
    if not budgets or any(not (b > 0 and math.isfinite(b)) for b in budgets):
        raise SteerError(f"KL budgets must be positive numbers, got {budgets}")
    check_positions(positions)
    if not 0 < tolerance < 1:
        raise SteerError(f"tolerance must be between 0 and 1, got {tolerance}")
    check_count("--n-calibration", n_calibration)
    check_count("--n-heldout", n_heldout)
    check_count("--batch-size", batch_size)
    return budgets


def split_texts(source: TextSource, n_calibration: int, n_heldout: int) -> tuple[list[str], list[str]]:
    """The first ``n_calibration`` texts of the source's seeded order calibrate, the next ``n_heldout``
    are held out; a source with fewer texts is split in half."""
    if n_calibration < 1 or n_heldout < 1:
        raise SteerError("calibration needs at least one calibration and one held-out text")
    texts = source.load(n_calibration + n_heldout)
    if len(texts) < 2:
        raise SteerError(f"calibration needs at least 2 neutral texts; {source.describe()} has {len(texts)}")
    if len(texts) < n_calibration + n_heldout:
        half = (len(texts) + 1) // 2
        return texts[:half], texts[half:]
    return texts[:n_calibration], texts[n_calibration:]


def calibration_key(
    model: Any,
    model_name: str,
    vector_sha256: str,
    layers: str,
    positions: str,
    calibration_texts: list[str],
    heldout_texts: list[str],
) -> dict[str, Any]:
    from steer_plugin.model.loading import config_hash, weights_fingerprint

    param = next(model.parameters(), None)
    source = str(getattr(model, "name_or_path", "") or model_name)  # where the weights were read from
    return {
        "model": Path(str(model_name)).name,
        "weights": weights_fingerprint(source, getattr(model.config, "_commit_hash", None)),
        "config_hash": config_hash(model.config),
        "dtype": str(param.dtype).removeprefix("torch.") if param is not None else "?",
        "vector_sha256": vector_sha256,
        "layers": layers,
        "positions": positions,
        "texts_sha256": texts_sha256([*calibration_texts, "\x00", *heldout_texts]),
        "n_calibration": len(calibration_texts),
        "n_heldout": len(heldout_texts),
    }


def start_alpha(vector: SteeringVector, layers: list[int]) -> float:
    """First alpha to try: a step of START_RELATIVE_STRENGTH of the residual norm if known, else 1."""
    rel = vector.relative_strength(1.0, layers)
    if rel:
        return START_RELATIVE_STRENGTH / statistics.median(rel.values())
    return 1.0


def calibrate(
    model: Any,
    tokenizer: Any,
    vector: SteeringVector,
    budgets: Iterable[float] = DEFAULT_BUDGETS,
    *,
    layers: str | None = DEFAULT_LAYERS,
    positions: str = DEFAULT_POSITIONS,
    source: TextSource | None = None,
    texts: tuple[list[str], list[str]] | None = None,
    n_calibration: int = DEFAULT_N_CALIBRATION,
    n_heldout: int = DEFAULT_N_HELDOUT,
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 16,
    steerer: Any = None,
    blocks: str | None = None,
    model_name: str = "",
    vector_sha256: str = "",
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Find the alpha of every KL budget on the calibration texts and measure it on the held-out texts.

    Args:
        model: a transformers causal LM.
        tokenizer: its tokenizer.
        vector: the steering vector.
        budgets: KL budgets, nats per token (mean KL of the steered to the unsteered next-token distribution).
        layers: the layers steered (``all``, ``middle``, ``10-19``).
        positions: ``all`` or ``response`` (the last position of each forward).
        source: where the neutral texts come from (default: GoEmotions' neutral test texts).
        texts: the (calibration, held-out) texts themselves, instead of ``source``'s.
        n_calibration: calibration texts taken from ``source``.
        n_heldout: held-out texts taken from ``source``.
        tolerance: relative tolerance of the KL reached on the calibration texts.
        batch_size: texts per forward pass.
        steerer: the hooks that steer (default: forward hooks on the decoder blocks, ``blocks``).
        blocks: module path of the decoder blocks, if they are not found automatically.
        model_name: the model's name in the calibration's key.
        vector_sha256: the vector file's sha256 in the key.
        progress: called with a line per evaluated alpha.

    Returns:
        A ``Calibration``: per budget the alpha, the KL on calibration and held-out texts (with standard
        errors), perplexities and relative strength; ``alpha_for(budget)`` reads one alpha.
    """
    from steer_plugin.model.hooks import Steerer, make_plan
    from steer_plugin.model.layers import format_layers, parse_layers

    budgets = check_settings(budgets, positions, tolerance, n_calibration, n_heldout, batch_size)
    t0 = time.monotonic()
    steerer = steerer or Steerer(model, "hooks", blocks)
    chosen = parse_layers(layers, len(steerer.blocks))
    if not any(float(vector.matrix[l].abs().sum()) > 0 for l in chosen):
        raise SteerError(
            f"the vector is zero on layers {format_layers(chosen, len(steerer.blocks))}: nothing to calibrate"
        )
    source = source or TextSource()
    cal_texts, held_texts = texts or split_texts(source, n_calibration, n_heldout)
    cal = FluencyProbe(model, tokenizer, cal_texts, steerer=steerer, batch_size=batch_size)
    cal.baseline()  # its cache first (measured at every step of the search), the held-out texts' in what is left
    room = DEFAULT_CACHE_BYTES - cal.cached_bytes
    held = FluencyProbe(model, tokenizer, held_texts, steerer=steerer, batch_size=batch_size, cache_bytes=room)
    measured: dict[float, SideEffects] = {}

    def plan(alpha: float):
        return make_plan([vector], [alpha], model, steerer.block_path, chosen)

    def kl_of(alpha: float) -> float:
        measured[alpha] = cal.measure(plan(alpha), positions)
        if progress:
            progress(f"  alpha {alpha:.5g}: KL {measured[alpha].kl:.4g}")
        return measured[alpha].kl

    found, points = search_alphas(kl_of, budgets, start_alpha(vector, chosen), tolerance)
    rows = []
    for b in budgets:
        r = found[b]
        h = held.measure(plan(r.alpha), positions)
        rel = vector.relative_strength(r.alpha, chosen)
        rows.append(
            CalibrationRow(
                kl_budget=b,
                alpha=r.alpha,
                kl_calibration=r.kl,
                kl_heldout=h.kl,
                kl_calibration_stderr=measured[r.alpha].kl_stderr,
                kl_heldout_stderr=h.kl_stderr,
                ppl_calibration=measured[r.alpha].ppl,
                ppl_heldout=h.ppl,
                relative_strength=statistics.median(rel.values()) if rel else None,
                relative_strength_max=max(rel.values()) if rel else None,
                converged=r.converged,
            )
        )
        if not r.converged:
            log.warning("KL budget %g: closest KL reached is %.4g (alpha %g)", b, r.kl, r.alpha)
    key = calibration_key(
        model,
        model_name,
        vector_sha256,
        format_layers(chosen, len(steerer.blocks)),
        positions,
        cal.texts,
        held.texts,
    )
    return Calibration(
        key=key,
        rows=rows,
        texts=source.describe(),
        tolerance=tolerance,
        baseline_ppl_calibration=cal.baseline().ppl,
        baseline_ppl_heldout=held.baseline().ppl,
        evaluations=len(points),
        seconds=round(time.monotonic() - t0, 2),
        points=[[a, k] for a, k in points],
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


# --------------------------------------------------------------------------- the file next to the vector


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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise SteerError(f"{path}: cannot read the calibration file ({e})") from None
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise _refused(path, f"not valid JSON ({type(e).__name__}: {str(e)[:80]})") from None
    problem = calibration_file_problem(doc)
    if problem:
        raise _refused(path, problem)
    return doc


def stored_calibrations(vector_path: str | Path) -> list[Calibration]:
    """The calibrations stored beside a vector, validated (a tampered file is an error, not a guess)."""
    doc = read_calibration_file(calibration_path(vector_path))
    return [Calibration.from_json(entry) for entry in (doc or {}).get("calibrations", [])]


def _matching(stored: list[Calibration], key: dict[str, Any], budgets: list[float]) -> tuple[Calibration | None, bool]:
    """The stored entry for ``key`` with these budgets, and whether it must be verified on this model first: an
    entry of the same weights is used as it is; one whose weights are unknown (to it or to us) is verified; one
    of other weights is another model's."""

    def rest(k: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in k.items() if name != "weights"}

    candidates = [c for c in stored if rest(c.key) == rest(key) and c.has_budgets(budgets)]
    weights = key.get("weights")
    same = next((c for c in candidates if weights is not None and c.key.get("weights") == weights), None)
    if same is not None:
        return same, False
    unknown = next((c for c in candidates if weights is None or c.key.get("weights") is None), None)
    return unknown, unknown is not None


def find_stored(vector_path: str | Path, key: dict[str, Any], budgets: Iterable[float]) -> Calibration | None:
    """The stored entry ``calibrate_vector_file`` would reuse for ``key`` (one without a weights fingerprint is
    verified there first)."""
    return _matching(stored_calibrations(vector_path), key, list(budgets))[0]


def _verified(c: Calibration, kl_of: Callable[[float], float]) -> tuple[bool, str]:
    """Whether ``c`` holds on this model: per row, the KL at its stored alpha (one evaluation) within ``c``'s
    tolerance of its budget (of the KL it recorded, for a budget it never reached); and the numbers, in words."""
    ok, said = True, []
    for r in c.rows:
        kl, target = kl_of(r.alpha), r.kl_budget if r.converged else r.kl_calibration
        ok = ok and kl > 0 and abs(kl / target - 1) <= c.tolerance
        said.append(f"KL {kl:.4g} at alpha {r.alpha:.5g} for {'budget' if r.converged else 'stored KL'} {target:.4g}")
        if not ok:
            break  # one miss is enough: the vector is calibrated again
    return ok, f"{', '.join(said)}; tolerance {c.tolerance:.0%}"


def verified_file() -> Path:
    """Where verifications that held are remembered (see the module's docstring)."""
    if os.environ.get("STEER_CACHE_DIR"):
        return Path(os.environ["STEER_CACHE_DIR"]) / "verified-calibrations.json"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "steer-plugin" / "verified-calibrations.json"


def _verification_id(key: dict[str, Any], c: Calibration) -> str | None:
    """This verification's identity: this model's key (weights included) and the stored entry's content; None
    without a weights fingerprint (nothing to tell these weights from others by)."""
    if not key.get("weights"):
        return None
    blob = json.dumps({"key": key, "calibration": c.to_json()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _remembered() -> dict[str, Any]:
    try:
        doc = json.loads(verified_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, unreadable or damaged: verify again (it is only a shortcut)
    return doc if isinstance(doc, dict) else {}


def _remember(memo: str, said: str) -> None:
    from steer_plugin.io.atomic import write_text_atomic

    doc = {**_remembered(), memo: {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(), "result": said}}
    try:
        verified_file().parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(verified_file(), json.dumps(doc, indent=1) + "\n")
    except (OSError, SteerError) as e:  # a read-only home: verify again next time
        log.debug("could not remember the verification: %s", e)


def _check_stored_alphas(
    stored: list[Calibration], c: Calibration, vector: SteeringVector, layers: list[int], path: Path
) -> None:
    """A stored alpha is used as is: alpha x vector must be finite (an alpha of 1e300 passes the schema)."""
    i = stored.index(c)
    for j, r in enumerate(c.rows):
        if not bool((r.alpha * vector.matrix[layers]).isfinite().all()):
            raise _refused(path, f"calibrations[{i}].rows[{j}].alpha: {r.alpha:g} x the vector is not finite")


def store(vector_path: str | Path, calibration: Calibration) -> Path:
    """Add (or replace) this calibration's entry; entries for another version of the vector are dropped."""
    from steer_plugin.io.atomic import write_text_atomic

    path = calibration_path(vector_path)
    sha = calibration.key.get("vector_sha256")
    kept = [
        c for c in stored_calibrations(vector_path) if c.key.get("vector_sha256") == sha and c.key != calibration.key
    ]
    doc = {
        "format": CALIBRATION_FORMAT,
        "format_version": CALIBRATION_VERSION,
        "vector": Path(vector_path).name,
        "vector_sha256": sha,
        "calibrations": [c.to_json() for c in [*kept, calibration]],
    }
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    return path


def calibrate_vector_file(
    model: Any,
    tokenizer: Any,
    vector_path: str | Path,
    budgets: Iterable[float],
    *,
    layers: str | None = DEFAULT_LAYERS,
    positions: str = DEFAULT_POSITIONS,
    source: TextSource | None = None,
    n_calibration: int = DEFAULT_N_CALIBRATION,
    n_heldout: int = DEFAULT_N_HELDOUT,
    model_name: str = "",
    force: bool = False,
    save: bool = True,
    **kwargs: Any,
) -> tuple[Calibration, bool]:
    """Calibrate a vector file, reusing a stored matching calibration; returns (calibration, reused)."""
    from steer_plugin.model.hooks import Steerer, make_plan
    from steer_plugin.model.layers import format_layers, parse_layers
    from steer_plugin.vectors.vector import file_sha256

    budgets = check_settings(
        budgets, positions, kwargs.get("tolerance", DEFAULT_TOLERANCE), n_calibration, n_heldout,
        kwargs.get("batch_size", 16),
    )  # fmt: skip
    progress: Callable[[str], None] = kwargs.get("progress") or (lambda _: None)
    vector = SteeringVector.load(vector_path)
    entries = stored_calibrations(vector_path)  # a tampered file fails now, before any forward pass (--force too)
    source = source or TextSource()
    texts = split_texts(source, n_calibration, n_heldout)
    steerer = kwargs.pop("steerer", None) or Steerer(model, "hooks", kwargs.pop("blocks", None))
    n_layers = len(steerer.blocks)
    sha = file_sha256(vector_path)
    probe_texts = scored_texts(tokenizer, texts)
    chosen = parse_layers(layers, n_layers)
    key = calibration_key(model, model_name, sha, format_layers(chosen, n_layers), positions, *probe_texts)
    if not force:
        stored, verify = _matching(entries, key, budgets)
        if stored is not None:
            _check_stored_alphas(entries, stored, vector, chosen, calibration_path(vector_path))
            stored.rows = [r for r in stored.rows if any(math.isclose(r.kl_budget, b, rel_tol=1e-9) for b in budgets)]
            if not verify:
                return stored, True
            memo = _verification_id(key, stored)
            if memo is not None and memo in _remembered():
                progress("  reused the stored calibration, verified on these weights before (no KL evaluated)")
                return stored, True
            probe = FluencyProbe(model, tokenizer, texts[0], steerer=steerer, batch_size=kwargs.get("batch_size", 16))
            holds, said = _verified(
                stored,
                lambda a: probe.measure(make_plan([vector], [a], model, steerer.block_path, chosen), positions).kl,
            )
            if holds:
                progress(f"  verified the stored calibration on this model (no weights fingerprint to match): {said}")
                if memo is not None:
                    _remember(memo, said)
                return stored, True
            progress(f"  the stored calibration does not hold on this model (no weights fingerprint to match): {said}; "
                     "calibrating again")  # fmt: skip
    if save:  # before minutes of calibrating: the file beside the vector must be writable
        check_output_file(calibration_path(vector_path), "calibration file")
    result = calibrate(
        model,
        tokenizer,
        vector,
        budgets,
        layers=layers,
        positions=positions,
        source=source,
        texts=texts,
        steerer=steerer,
        model_name=model_name,
        vector_sha256=sha,
        **kwargs,
    )
    if save:
        store(vector_path, result)  # a full disk is an error (WriteError), never a "wrote" that did not happen
    return result, False


def scored_texts(tokenizer: Any, texts: tuple[list[str], list[str]]) -> tuple[list[str], list[str]]:
    """The texts a probe keeps (2 tokens or more), so a stored key can be checked before any forward."""
    from steer_plugin.steering.side_effects import MAX_TOKENS

    keep = lambda ts: [t for t in ts if len(tokenizer(t)["input_ids"][:MAX_TOKENS]) >= 2]  # noqa: E731
    return keep(texts[0]), keep(texts[1])


# --------------------------------------------------------------------------- output


def format_calibration(c: Calibration, title: str = "") -> str:
    head = ("kl budget", "alpha", "kl calibration", "kl held-out ± se", "ppl held-out", "rel. strength (median / max)")
    rows = [
        (
            number_cell(r.kl_budget, "g"),
            number_cell(r.alpha, ".5g"),
            number_cell(r.kl_calibration) + ("" if r.converged else " (!)"),
            f"{number_cell(r.kl_heldout)} ± {number_cell(r.kl_heldout_stderr, '.2g')}",
            number_cell(r.ppl_heldout, ".3f"),
            f"{number_cell(r.relative_strength, '.3f')} / {number_cell(r.relative_strength_max, '.3f')}",
        )
        for r in c.rows
    ]
    lines = [title] if title else []
    k = c.key
    lines.append(
        f"layers {k.get('layers')}, positions {k.get('positions')}; texts: {c.texts}, "
        f"{k.get('n_calibration')} calibration + {k.get('n_heldout')} held-out"
    )
    lines.append(format_table(head, rows, right=[True] * len(head)))
    lines.append(
        f"unsteered perplexity {number_cell(c.baseline_ppl_calibration, '.3f')} (calibration) / "
        f"{number_cell(c.baseline_ppl_heldout, '.3f')} (held-out); {c.evaluations} evaluations, {c.seconds:.1f} s"
    )
    if any(not r.converged for r in c.rows):
        lines.append(f"(!) not within {c.tolerance:.0%} of the budget: KL does not grow smoothly with alpha there")
    return "\n".join(lines)
