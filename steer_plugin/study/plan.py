"""A sweep's plan: which steering configurations, over which tasks, with which options."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError

SIDE_EFFECTS = "side_effects"  # the results entry with kl / ppl (and kl_budget) of a configuration
CONTROL_MATCHES = ("alpha", "kl")  # a random control at its vector's alpha, or at its own alpha for the same KL


@dataclass(frozen=True)
class SweepConfig:
    vector: str | None  # None = the unsteered baseline
    alpha: float
    layers: str = "all"
    positions: str = "all"
    kl_budget: float | None = None  # the KL budget the alpha was calibrated for (``kl:0.1``), if any

    @property
    def is_baseline(self) -> bool:
        return self.vector is None or self.alpha == 0

    def slug(self) -> str:
        if self.is_baseline:
            return "baseline"
        name = Path(str(self.vector)).stem
        fields = asdict(self)
        if self.kl_budget is None:
            del fields["kl_budget"]  # plain alphas keep the folder names of earlier versions
        h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        budget = "" if self.kl_budget is None else f"_kl{self.kl_budget:g}"
        return f"{name}{budget}_a{self.alpha:g}_L{self.layers.replace(',', '.')}_{self.positions}_{h}"


@dataclass
class SweepPlan:
    configs: list[SweepConfig]

    @classmethod
    def grid(
        cls,
        vectors: list[str],
        alphas: list[Any],
        layer_sets: list[str],
        positions: list[str],
        baseline: bool = True,
        controls: dict[str, list[str]] | None = None,
        resolve: Resolver | None = None,
        control_match: str = "alpha",
    ) -> SweepPlan:
        """Every vector x layer set x positions x alpha. An alpha may be a KL budget
        (``calibrate.KLBudget``); ``resolve(vector, layers, positions, budgets)`` turns the budgets of
        one (vector, layers, positions) into alphas ``{budget: alpha}``. ``controls`` maps a vector to its
        random controls, each evaluated right after it at every level of that vector: at the same alpha
        (``control_match="alpha"``), or, for a KL budget, at the control's own alpha for that budget
        (``"kl"``: the same side effects instead of the same size)."""
        from steer_plugin.steering.calibrate import KLBudget

        if control_match not in CONTROL_MATCHES:
            raise SteerError(f"control match must be one of {', '.join(CONTROL_MATCHES)}, got {control_match!r}")
        if not vectors:
            raise SteerError("give at least one --vector")
        if not alphas:
            raise SteerError("give at least one alpha")
        budgets = [a.kl for a in alphas if isinstance(a, KLBudget)]
        if budgets and resolve is None:
            raise SteerError("KL budgets (kl:X) need a model to calibrate on")
        configs: list[SweepConfig] = []
        if baseline or 0 in alphas:
            configs.append(SweepConfig(None, 0.0))
        for v in vectors:
            for layers in layer_sets:
                for pos in positions:
                    found = {}
                    for vec in [v, *(controls or {}).get(v, [])]:
                        own = vec == v or control_match == "kl"
                        found[vec] = resolve(vec, layers, pos, budgets) if own and budgets and resolve else {}
                    for a in alphas:
                        if a == 0 and not isinstance(a, KLBudget):
                            continue
                        for vec in found:
                            if isinstance(a, KLBudget):  # 4 significant digits: readable tables, KL unchanged
                                alpha = (found[vec] or found[v])[a.kl]
                                configs.append(SweepConfig(vec, float(f"{alpha:.4g}"), layers, pos, a.kl))
                            else:
                                configs.append(SweepConfig(vec, float(a), layers, pos))
        return cls(configs)


Resolver = Callable[[str, str, str, list[float]], dict[float, float]]


@dataclass
class SweepOptions:
    tasks: list[str]
    out_dir: Path
    limit: float | None = None
    classifier: str | None = None
    include_path: str | None = None
    log_samples: bool = False  # full harness samples rows (documents, prompts, responses)
    per_doc: bool = True  # compact per-document scores (for paired intervals in `steer table`)
    apply_chat_template: bool = False
    num_fewshot: int | None = None
    gen_kwargs: dict[str, Any] | None = None
    bootstrap_iters: int = 1000
    seed: int = 0
    model_args: dict[str, Any] = field(default_factory=dict)
    fresh: bool = False  # discard the results already in out_dir (they may belong to another sweep)
    # side effects (KL, perplexity on neutral texts) of every configuration; None = not measured
    side_effects: Any = None  # steer_plugin.steering.side_effects.TextSource
    side_effect_texts: int = 200
    config_batching: bool = True  # several configurations per batch (config_batching.py); results are the same
    config_batch_rows: int | None = None  # most rows in one mixed batch (None: config_batching.DEFAULT_ROWS)
