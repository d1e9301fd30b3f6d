"""``steer calibrate``'s table: per KL budget the alpha, the KL reached (calibration, held-out) and what it does."""

from __future__ import annotations

from steer_plugin.io.text_table import format_table, number_cell
from steer_plugin.steering.calibration_result import Calibration


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
