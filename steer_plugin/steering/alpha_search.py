"""The alpha search: per KL budget, the alpha > 0 whose KL (a monotone, measured function) hits the budget.

A monotone search finds the alpha > 0 whose mean KL on the calibration texts lies within ``tolerance``
(relative) of the budget. KL grows roughly like a power of alpha (about alpha^2 when small), so the search works
in log-log space: a first guess, then steps along the estimated slope until the budget is bracketed (at most
x16 per step, like doubling), then a safeguarded secant between the bracket's ends. All evaluations are shared
between budgets (they are searched in increasing order, each starting from the points the smaller ones left),
so four budgets cost about 6-10 forward passes over the calibration texts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from steer_plugin.errors import SteerError

DEFAULT_TOLERANCE = 0.05  # well inside the promised +-10 %
MAX_EVALS_PER_BUDGET = 12
MAX_STEP = 16.0  # bracketing: at most x16 (or /16) per step
MAX_ALPHA_RANGE = 1e6  # never search beyond start x/÷ this


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
