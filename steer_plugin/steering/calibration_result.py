"""What a calibration found: per KL budget the alpha and what it does, under the key it is stored with.

Each row also gives the relative strength ``||alpha v_l|| / RMS||h_l||`` (median and max over the steered
layers) when the vector's metadata holds the residual RMS recorded at build time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from steer_plugin.steering.alpha_search import DEFAULT_TOLERANCE
from steer_plugin.steering.calibration_key import CalibrationKey


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
    key: CalibrationKey  # what must match for reuse
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
        doc = {f.name: getattr(self, f.name) for f in fields(self)}  # the file's order of fields
        doc["key"] = self.key.to_json()
        doc["rows"] = [asdict(r) for r in self.rows]
        doc["points"] = [list(p) for p in self.points]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Calibration:
        data = dict(doc)
        data["key"] = CalibrationKey(doc["key"])
        data["rows"] = [CalibrationRow(**r) for r in doc.get("rows", [])]
        return cls(**data)
