"""A sweep's plan: which steering configurations, over which tasks, with which options."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steer_plugin.data.goemotions import canonical_target
from steer_plugin.errors import SteerError
from steer_plugin.model.positions import check_positions
from steer_plugin.steering.config import UNSTEERED, SteeringConfig

SIDE_EFFECTS = "side_effects"  # the results entry with kl / ppl (and kl_budget) of a configuration
CONTROL_MATCHES = ("alpha", "kl")  # a random control at its vector's alpha, or at its own alpha for the same KL


SweepConfig = SteeringConfig  # a configuration of the plan: the one steering description, by the sweep's name


@dataclass
class SweepPlan:
    configs: list[SteeringConfig]

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
        prompted: Sequence[str] = (),
    ) -> SweepPlan:
        """Every vector x layer set x positions x alpha, the unsteered baseline first.

        Args:
            vectors: vector files.
            alphas: numbers, or KL budgets (``alphas.KLBudget``); 0 is the baseline.
            layer_sets: layer specs (``all``, ``middle``, ``0,3,5-9``).
            positions: ``all`` / ``response``.
            baseline: plan the unsteered baseline even without a 0 among ``alphas``.
            controls: a vector's random control files, each evaluated right after it at every level of that
                vector (their configurations carry ``control_of``).
            resolve: ``resolve(vector, layers, positions, budgets) -> {budget: alpha}``, the alphas of one
                (vector, layers, positions) for the KL budgets it reached (a budget left out is not planned:
                no row carries a budget its KL did not reach); needed when there are budgets.
            control_match: a control at its vector's alpha (``"alpha"``), or, for a KL budget, at its own
                alpha for that budget (``"kl"``: the same side effects instead of the same size).
            prompted: emotions to *ask* for (the prompting reference): one unsteered configuration each, last,
                whose emotion-task prompts carry ``data.prompts.emotion_instruction``.

        Returns:
            The plan, configurations in evaluation order.
        """
        from steer_plugin.steering.alphas import KLBudget

        if control_match not in CONTROL_MATCHES:
            raise SteerError(f"control match must be one of {', '.join(CONTROL_MATCHES)}, got {control_match!r}")
        if not vectors:
            raise SteerError("give at least one --vector")
        if not alphas:
            raise SteerError("give at least one alpha")
        budgets = [a.kl for a in alphas if isinstance(a, KLBudget)]
        if budgets and resolve is None:
            raise SteerError("KL budgets (kl:X) need a model to calibrate on")
        configs: list[SteeringConfig] = []
        if baseline or 0 in alphas:
            configs.append(UNSTEERED)
        for v in vectors:
            for layers in layer_sets:
                for pos in map(check_positions, positions):
                    found: dict[str, dict[float, float] | None] = {}  # None: at its vector's alphas
                    for vec in [v, *(controls or {}).get(v, [])]:
                        own = vec == v or control_match == "kl"
                        found[vec] = resolve(vec, layers, pos, budgets) if own and budgets and resolve else None
                    for a in alphas:
                        if a == 0 and not isinstance(a, KLBudget):
                            continue
                        for vec, own_alphas in found.items():
                            control_of = None if vec == v else v
                            if isinstance(a, KLBudget):
                                level = (found[v] if own_alphas is None else own_alphas) or {}
                                if a.kl not in level or a.kl not in (found[v] or {}):
                                    continue  # a budget not reached (the resolver said so) has no row to label
                                # 4 significant digits: readable tables, KL unchanged
                                alpha = float(f"{level[a.kl]:.4g}")
                                configs.append(SteeringConfig(vec, alpha, layers, pos, a.kl, control_of))
                            else:
                                configs.append(SteeringConfig(vec, float(a), layers, pos, control_of=control_of))
        configs += [SteeringConfig(None, 0.0, prompted=canonical_target(t)) for t in dict.fromkeys(prompted)]
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
    apply_chat_template: bool | list[str] = False  # True: every task's prompts; a list: those tasks' (or groups')
    num_fewshot: int | None = None
    gen_kwargs: dict[str, Any] | None = None
    bootstrap_iters: int = 1000
    seed: int = 0
    model_args: dict[str, Any] = field(default_factory=dict)
    fresh: bool = False  # discard the results already in out_dir (they may belong to another sweep)
    # side effects (KL, perplexity on neutral texts) of every configuration; None = not measured
    side_effects: Any = None  # steer_plugin.data.neutral_texts.TextSource
    side_effect_texts: int = 200
    config_batching: bool = True  # several configurations per batch (config_batching.py); results are the same
    config_batch_rows: int | None = None  # most rows in one mixed batch (None: hooks.DEFAULT_ROWS)
    # task metadata beyond the classifier (truthfulqa_dir, goemotions_dir): where the tasks read their data
    task_metadata: dict[str, str] = field(default_factory=dict)
    engine: str = "hf"  # `hf` (steered_hf) or `vllm` (steered_vllm): see harness.engine
    prompt_split: str = "test"  # the emotion tasks' prompts: test (reports) or dev (choices), data.prompt_split
