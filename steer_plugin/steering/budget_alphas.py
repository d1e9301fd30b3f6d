"""KL budgets (``kl:0.3``) as the alphas `steer generate` and `steer check` steer with: the alpha calibrated for the
same vector, model, layers and positions, as `steer calibrate` stored it beside the vector (calibrated and stored
first when it is missing, as `steer sweep` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer_plugin.data.neutral_texts import TextSource
from steer_plugin.errors import SteerError
from steer_plugin.model.positions import Positions
from steer_plugin.steering.alphas import AlphaSpec, KLBudget, as_alpha_specs
from steer_plugin.vectors.vector import SteeringVector

PathLike = str | Path


@dataclass(frozen=True)
class ResolvedAlpha:
    """An alpha as it was given (a number or a budget) and the number steered with."""

    spec: AlphaSpec
    alpha: float
    how: str = ""  # for a budget: which calibration gave the alpha

    @property
    def kl_budget(self) -> float | None:
        return self.spec.kl if isinstance(self.spec, KLBudget) else None

    def describe(self) -> str:
        """``kl:0.3 = alpha 0.17234 (layers 10-19, positions response; stored in v.calibration.json)``."""
        return f"{self.spec} = alpha {self.alpha:.5g} ({self.how})" if self.how else f"alpha {self.alpha:g}"


def vector_and_file(vector: SteeringVector | PathLike | None) -> tuple[PathLike | None, SteeringVector | None]:
    """A vector given as its file (which budgets need: the calibrations are stored beside it) or as itself."""
    if isinstance(vector, (str, Path)):
        return vector, SteeringVector.load(vector)
    return None, vector


def resolve_alphas(
    model: Any,
    tokenizer: Any,
    vector_path: PathLike | None,
    alphas: str | Sequence[float | str | KLBudget],
    *,
    layers: str,
    positions: Positions,
    texts: TextSource | None = None,
    model_name: str = "",
    steerer: Any = None,
    progress: Callable[[str], None] | None = None,
) -> list[ResolvedAlpha]:
    """Every alpha as a number, in the order given, each budget's told to ``progress`` (``kl:0.3 = alpha 0.172
    (...)``); a budget that the calibration did not reach within its tolerance is an error (steering there would
    not have the side effect the budget names).

    Args:
        vector_path: the vector's file (its calibrations are stored beside it); needed only for budgets.
        texts: the neutral texts of a calibration that is missing (default: GoEmotions' neutral test texts).
        steerer: a Steerer of the model, for its blocks (calibration steers with hooks; default: found).
        progress: called with the calibration's progress lines and the alpha of each budget.
    """
    from steer_plugin.model.hooks import Steerer
    from steer_plugin.steering.calibrate import calibrate_vector_file
    from steer_plugin.steering.calibration_file import calibration_path

    specs = as_alpha_specs(alphas)
    budgets = sorted({s.kl for s in specs if isinstance(s, KLBudget)})
    if not budgets:
        return [ResolvedAlpha(s, float(s)) for s in specs if not isinstance(s, KLBudget)]
    if vector_path is None:
        raise SteerError("a kl: alpha needs the vector's file: its calibrations are stored beside it")
    if steerer is not None and steerer.backend != "hooks":
        steerer = Steerer(model, "hooks", steerer.block_path)
    calibration, reused = calibrate_vector_file(
        model,
        tokenizer,
        vector_path,
        budgets,
        layers=layers,
        positions=positions,
        source=texts,
        model_name=model_name,
        steerer=steerer,
        progress=progress,
    )
    steered = str(calibration.key.get("layers"))
    where = f"layers {layers}{'' if steered == layers else f' = {steered}'}, positions {positions}"
    how = (
        f"stored in {calibration_path(vector_path)}" if reused else f"calibrated, wrote {calibration_path(vector_path)}"
    )
    rows = {b: next(r for r in calibration.rows if math.isclose(r.kl_budget, b, rel_tol=1e-9)) for b in budgets}
    for b, r in rows.items():
        if not r.converged:
            raise SteerError(
                f"kl:{b:g} not reached for {vector_path} ({where}): the closest KL is {r.kl_calibration:.4g} at "
                f"alpha {r.alpha:.5g}; give an alpha instead"
            )
    resolved = [
        ResolvedAlpha(s, rows[s.kl].alpha, f"{vector_path}, {where}; {how}")
        if isinstance(s, KLBudget)
        else ResolvedAlpha(s, s)
        for s in specs
    ]
    for said in dict.fromkeys(a.describe() for a in resolved if a.kl_budget is not None):
        (progress or (lambda _: None))(said)
    return resolved
