"""One steering configuration as a sweep plans it, ``steered_hf`` runs it and sweep.json records it.

Light (no torch): the plan, its folder names and ``steer --help`` use it before any model loads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer_plugin.model.positions import Positions


@dataclass(frozen=True)
class SteeringConfig:
    """``alpha x vector`` added to the residual stream at ``layers`` and ``positions``.

    Attributes:
        vector: the vector file; None = unsteered (so is alpha 0).
        alpha: how hard it pushes.
        layers: ``all``, ``middle`` or 0-based indices and ranges, ``0,3,5-9``.
        positions: ``all``, or ``response`` (the last context token and the continuation).
        kl_budget: the KL budget the alpha was calibrated for (``kl:0.1``), if any.
        control_of: a random control: the vector file it controls. Not part of the folder name or the
            record: the control's own file already tells them apart.
    """

    vector: str | None
    alpha: float
    layers: str = "all"
    positions: Positions = "all"
    kl_budget: float | None = None
    control_of: str | None = None

    @property
    def is_baseline(self) -> bool:
        """Unsteered: no vector, or alpha 0."""
        return self.vector is None or self.alpha == 0

    def record(self) -> dict[str, Any]:
        """The configuration as sweep.json and its results' ``config.sweep`` hold it (fields and order of
        earlier versions: a folder written by them still resumes)."""
        return {
            "vector": self.vector,
            "alpha": self.alpha,
            "layers": self.layers,
            "positions": self.positions,
            "kl_budget": self.kl_budget,
        }

    def slug(self) -> str:
        """The configuration's folder name in a sweep: ``anger_kl0.1_a0.17_Lall_response_<hash>``, or ``baseline``."""
        if self.is_baseline:
            return "baseline"
        name = Path(str(self.vector)).stem
        fields = self.record()
        if self.kl_budget is None:
            del fields["kl_budget"]  # plain alphas keep the folder names of earlier versions
        h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        budget = "" if self.kl_budget is None else f"_kl{self.kl_budget:g}"
        return f"{name}{budget}_a{self.alpha:g}_L{self.layers.replace(',', '.')}_{self.positions}_{h}"


UNSTEERED = SteeringConfig(None, 0.0)
