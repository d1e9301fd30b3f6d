"""Alpha in units that transfer: the alpha whose side effect (KL to the unsteered model) hits a budget.

For each KL budget (nats per token, measured as in :mod:`steer_plugin.steering.side_effects`) the alpha search
(:mod:`steer_plugin.steering.alpha_search`) finds the alpha > 0 whose mean KL on the calibration texts lies within
``tolerance`` (relative) of the budget, about 6-10 forward passes over the calibration texts for four budgets,
plus one pass per budget over the held-out texts, where the achieved KL is reported too.

``calibrate_vector_file`` reuses a matching calibration stored next to the vector
(:mod:`steer_plugin.steering.calibration_file`), verifying one that travels first
(:mod:`steer_plugin.steering.verified_calibrations`), and calibrates (and stores) otherwise.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from steer_plugin.data.neutral_texts import TextSource
from steer_plugin.errors import SteerError, check_count
from steer_plugin.io.outputs import check_output_file
from steer_plugin.steering import verified_calibrations as verified
from steer_plugin.steering.alpha_search import DEFAULT_TOLERANCE, SearchResult, search_alphas
from steer_plugin.steering.calibration_file import (
    calibration_path,
    check_stored_alphas,
    matching,
    store,
    stored_calibrations,
)
from steer_plugin.steering.calibration_key import CalibrationKey
from steer_plugin.steering.calibration_result import Calibration, CalibrationRow
from steer_plugin.steering.defaults import DEFAULT_LAYERS, DEFAULT_POSITIONS
from steer_plugin.steering.side_effect_batches import scored_ids
from steer_plugin.steering.side_effects import DEFAULT_CACHE_BYTES, SideEffectProbe, SideEffects
from steer_plugin.vectors.vector import SteeringVector

log = logging.getLogger(__name__)

DEFAULT_BUDGETS = (0.03, 0.1, 0.3, 1.0)
# 128 + 128 texts: with 64 + 64 the held-out KL of SmolLM2's anger vector at budget 0.03 was 14% off
# (the KL's standard error over 64 texts is ~10% there); with 128 + 128, 4%.
DEFAULT_N_CALIBRATION = 128
DEFAULT_N_HELDOUT = 128
# first alpha when the vector knows its residual RMS: a step of this fraction of the residual norm
START_RELATIVE_STRENGTH = 0.02


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
    from steer_plugin.model.layers import format_layers

    budgets = check_settings(budgets, positions, tolerance, n_calibration, n_heldout, batch_size)
    t0 = time.monotonic()
    steerer = steerer or Steerer(model, "hooks", blocks)
    chosen = _steered_layers(vector, layers, len(steerer.blocks))
    source = source or TextSource()
    cal, held = _probes(model, tokenizer, texts or split_texts(source, n_calibration, n_heldout), steerer, batch_size)
    measured: dict[float, SideEffects] = {}

    def measure(probe: SideEffectProbe, alpha: float) -> SideEffects:
        return probe.measure(make_plan([vector], [alpha], model, steerer.block_path, chosen), positions)

    def kl_of(alpha: float) -> float:
        measured[alpha] = measure(cal, alpha)
        if progress:
            progress(f"  alpha {alpha:.5g}: KL {measured[alpha].kl:.4g}")
        return measured[alpha].kl

    found, points = search_alphas(kl_of, budgets, start_alpha(vector, chosen), tolerance)
    rows = [_row(b, found[b], measured[found[b].alpha], measure(held, found[b].alpha), vector, chosen) for b in budgets]
    layer_spec = format_layers(chosen, len(steerer.blocks))
    return Calibration(
        key=CalibrationKey.for_model(model, model_name, vector_sha256, layer_spec, positions, cal.texts, held.texts),
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


def _steered_layers(vector: SteeringVector, layers: str | None, n_layers: int) -> list[int]:
    """The layers ``layers`` names, where the vector must not be zero on all of them."""
    from steer_plugin.model.layers import format_layers, parse_layers

    chosen = parse_layers(layers, n_layers)
    if not any(float(vector.matrix[l].abs().sum()) > 0 for l in chosen):
        raise SteerError(f"the vector is zero on layers {format_layers(chosen, n_layers)}: nothing to calibrate")
    return chosen


def _probes(
    model: Any, tokenizer: Any, texts: tuple[list[str], list[str]], steerer: Any, batch_size: int
) -> tuple[SideEffectProbe, SideEffectProbe]:
    """The calibration texts' probe, its unsteered cache filled first (it is measured at every step of the search),
    and the held-out texts' probe, its cache in what is left of ``DEFAULT_CACHE_BYTES``."""
    cal = SideEffectProbe(model, tokenizer, texts[0], steerer=steerer, batch_size=batch_size)
    cal.baseline()
    room = DEFAULT_CACHE_BYTES - cal.cached_bytes
    return cal, SideEffectProbe(model, tokenizer, texts[1], steerer=steerer, batch_size=batch_size, cache_bytes=room)


def _row(
    budget: float, r: SearchResult, cal: SideEffects, held: SideEffects, vector: SteeringVector, layers: list[int]
) -> CalibrationRow:
    """A budget's row: the alpha found, what it does on the calibration (``cal``) and held-out (``held``) texts."""
    rel = vector.relative_strength(r.alpha, layers)
    if not r.converged:
        log.warning("KL budget %g: closest KL reached is %.4g (alpha %g)", budget, r.kl, r.alpha)
    return CalibrationRow(
        kl_budget=budget,
        alpha=r.alpha,
        kl_calibration=r.kl,
        kl_heldout=held.kl,
        kl_calibration_stderr=cal.kl_stderr,
        kl_heldout_stderr=held.kl_stderr,
        ppl_calibration=cal.ppl,
        ppl_heldout=held.ppl,
        relative_strength=statistics.median(rel.values()) if rel else None,
        relative_strength_max=max(rel.values()) if rel else None,
        converged=r.converged,
    )


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
    tolerance: float = DEFAULT_TOLERANCE,
    batch_size: int = 16,
    steerer: Any = None,
    blocks: str | None = None,
    model_name: str = "",
    force: bool = False,
    save: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[Calibration, bool]:
    """Calibrate a vector file, reusing a stored matching calibration; returns (calibration, reused).

    The settings are ``calibrate``'s; ``force`` calibrates even where a stored calibration matches, ``save``
    stores the result beside the vector (``calibration_path``)."""
    from steer_plugin.model.hooks import Steerer, make_plan
    from steer_plugin.model.layers import format_layers, parse_layers
    from steer_plugin.vectors.vector import file_sha256

    budgets = check_settings(budgets, positions, tolerance, n_calibration, n_heldout, batch_size)
    vector = SteeringVector.load(vector_path)
    entries = stored_calibrations(vector_path)  # a tampered file fails now, before any forward pass (--force too)
    source = source or TextSource()
    texts = split_texts(source, n_calibration, n_heldout)
    steerer = steerer or Steerer(model, "hooks", blocks)
    n_layers = len(steerer.blocks)
    sha = file_sha256(vector_path)
    chosen = parse_layers(layers, n_layers)
    key = CalibrationKey.for_model(
        model, model_name, sha, format_layers(chosen, n_layers), positions, *scored_texts(tokenizer, texts)
    )
    if not force:
        stored, verify = matching(entries, key, budgets)
        if stored is not None:
            check_stored_alphas(entries, stored, vector, chosen, calibration_path(vector_path))
            stored.rows = [r for r in stored.rows if any(math.isclose(r.kl_budget, b, rel_tol=1e-9) for b in budgets)]
            # built on the first evaluation: a verification remembered for these weights needs none
            probe = functools.cache(
                lambda: SideEffectProbe(model, tokenizer, texts[0], steerer=steerer, batch_size=batch_size)
            )

            def kl_of(alpha: float) -> float:
                return probe().measure(make_plan([vector], [alpha], model, steerer.block_path, chosen), positions).kl

            if not verify or _holds(stored, key, kl_of, progress or (lambda _: None)):
                return stored, True
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
        n_calibration=n_calibration,
        n_heldout=n_heldout,
        tolerance=tolerance,
        batch_size=batch_size,
        steerer=steerer,
        model_name=model_name,
        vector_sha256=sha,
        progress=progress,
    )
    if save:
        store(vector_path, result)  # a full disk is an error (WriteError), never a "wrote" that did not happen
    return result, False


def _holds(
    stored: Calibration, key: CalibrationKey, kl_of: Callable[[float], float], progress: Callable[[str], None]
) -> bool:
    """Whether a stored calibration without a weights fingerprint holds on this model: remembered for these
    weights, or verified now (``kl_of``: this model's KL on the calibration texts) and remembered if it held."""
    memo = verified.verification_id(key, stored)
    if memo is not None and memo in verified.remembered():
        progress("  reused the stored calibration, verified on these weights before (no KL evaluated)")
        return True
    holds, said = verified.verify(stored, kl_of)
    if holds:
        progress(f"  verified the stored calibration on this model (no weights fingerprint to match): {said}")
        if memo is not None:
            verified.remember(memo, said)
        return True
    progress(f"  the stored calibration does not hold on this model (no weights fingerprint to match): {said}; "
             "calibrating again")  # fmt: skip
    return False


def scored_texts(tokenizer: Any, texts: tuple[list[str], list[str]]) -> tuple[list[str], list[str]]:
    """The texts a probe keeps (2 tokens or more), so a stored key can be checked before any forward."""
    keep = lambda ts: [ts[i] for i, _ in scored_ids(tokenizer, ts)]  # noqa: E731
    return keep(texts[0]), keep(texts[1])
