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
        prompted: the prompting reference: no steering, the emotion tasks' prompts *ask* for this emotion
            (``data.prompts.emotion_instruction``); None for every other configuration.
    """

    vector: str | None
    alpha: float
    layers: str = "all"
    positions: Positions = "all"
    kl_budget: float | None = None
    control_of: str | None = None
    prompted: str | None = None

    @property
    def steers(self) -> bool:
        """Adds something to the residual stream: a vector at a non-zero alpha."""
        return self.vector is not None and self.alpha != 0

    @property
    def is_baseline(self) -> bool:
        """The unsteered, unprompted model: no vector (or alpha 0) and no instruction."""
        return not self.steers and self.prompted is None

    def record(self) -> dict[str, Any]:
        """The configuration as sweep.json and its results' ``config.sweep`` hold it (fields and order of
        earlier versions: a folder written by them still resumes)."""
        record: dict[str, Any] = {
            "vector": self.vector,
            "alpha": self.alpha,
            "layers": self.layers,
            "positions": self.positions,
            "kl_budget": self.kl_budget,
        }
        if self.prompted is not None:  # only where there is one: other records stay as earlier versions wrote them
            record["prompted"] = self.prompted
        return record

    def slug(self) -> str:
        """The configuration's folder name in a sweep: ``anger_kl0.1_a0.17_Lall_response_<hash>``, or ``baseline``."""
        if self.is_baseline:
            return "baseline"
        if self.prompted is not None:
            return f"prompted_{self.prompted.replace(':', '_')}"
        name = Path(str(self.vector)).stem
        fields = self.record()
        if self.kl_budget is None:
            del fields["kl_budget"]  # plain alphas keep the folder names of earlier versions
        h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        budget = "" if self.kl_budget is None else f"_kl{self.kl_budget:g}"
        return f"{name}{budget}_a{self.alpha:g}_L{self.layers.replace(',', '.')}_{self.positions}_{h}"


UNSTEERED = SteeringConfig(None, 0.0)
