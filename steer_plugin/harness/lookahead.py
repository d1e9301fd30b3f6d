"""A sweep's look ahead: the configurations it will run next, and what was computed for them early.

``steer sweep`` announces its configurations (``SteeredHFLM.plan_ahead``); while one of them runs, the others'
answers are computed where that is cheaper together: loglikelihoods that share its prefix cache
(``prefix_reuse.score_groups``), and with config batching, mixed batches of greedy generations and of
``positions=all`` loglikelihoods (``config_batching.py``). They wait here until their configuration runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from steer_plugin.harness.config_batching import (
    ConfigBatcher,
    MixedGeneration,
    batch_key,
    generate_mixed,
    greedy_kwargs,
)
from steer_plugin.harness.prefix_reuse import Answer, TailConfig
from steer_plugin.model.hooks import DEFAULT_ROWS

log = logging.getLogger(__name__)


@dataclass
class Lookahead:
    """The configurations planned next (in order), their loglikelihood answers computed early, and the batcher
    of mixed batches (None: config batching off)."""

    planned: list[TailConfig] = field(default_factory=list)
    ahead: dict[Hashable, dict[tuple, Answer]] = field(default_factory=dict)  # config -> (ctx, cont) -> answer
    batcher: ConfigBatcher | None = None

    @classmethod
    def of(cls, planned: list[TailConfig], config_batching: bool, rows: int | None, batch_size: Any) -> Lookahead:
        """``rows``: the most rows in one mixed batch (default 64, never below a fixed ``batch_size``)."""
        batcher = None
        if config_batching and len(planned) > 1:
            fixed = int(batch_size) if str(batch_size).isdigit() else 1
            batcher = ConfigBatcher(list(planned), max(rows or DEFAULT_ROWS, fixed))
        return cls(planned, {}, batcher)

    def sharing_prefix(self, mine: TailConfig) -> list[TailConfig]:
        """Planned configurations whose loglikelihoods share ``mine``'s prefix cache and are not computed yet."""
        return [
            c for c in self.planned if c.prefix_key == mine.prefix_key and c.key != mine.key and c.key not in self.ahead
        ]

    def mixed_riders(self, mine: TailConfig) -> list[TailConfig]:
        """Configurations to come that steer their prefixes too (``positions=all``), scored in the same
        forwards as ``mine`` (config batching); none for one that shares the unsteered prefix."""
        if self.batcher is None or not mine.prefix_steered:
            return []
        return self.batcher.riders(mine, lambda c: not c.prefix_steered or c.key in self.ahead)

    def keep(self, config: TailConfig, answers: dict[tuple, Answer]) -> None:
        self.ahead[config.key] = answers

    def take(self, config: TailConfig) -> dict[tuple, Answer]:
        """The answers computed early for ``config`` (forgotten here)."""
        return self.ahead.pop(config.key, {})


@dataclass
class GenerationBatch:
    """One ``_model_generate`` call of the harness: its inputs as HFLM passes them."""

    context: torch.Tensor
    max_length: int
    stop: list[str]
    kwargs: dict[str, Any]


def generate_ahead(
    batcher: ConfigBatcher,
    mine: TailConfig,
    batch: GenerationBatch,
    generation_config: Any,
    make_generation: Callable[[], MixedGeneration],
) -> tuple[torch.Tensor | None, MixedGeneration | None]:
    """This batch's tokens for ``mine`` from an earlier mixed batch, or from a mixed batch of ``mine`` and the
    configurations to come (their tokens kept in ``batcher``); (None, None): generate it alone. The
    ``MixedGeneration`` returned says how many prompts outgrew the sliding window. Tokens None with a
    generation: ``mine``'s scores turned non-finite."""
    key = batch_key(batch.context, batch.max_length, batch.stop, batch.kwargs)
    ready = batcher.ready.pop((mine.key, key), None)
    if ready is not None:
        return ready, None
    kwargs = greedy_kwargs(batch.kwargs, generation_config)
    riders = batcher.riders(mine, lambda c: (c.key, key) in batcher.ready)
    if kwargs is None or not riders:
        return None, None
    gen = make_generation()
    log.info("generating a batch for %d configurations at once", 1 + len(riders))
    out = generate_mixed(gen, [mine, *riders], batch.context, batch.max_length, batch.stop, kwargs)
    for rider, tokens in zip(riders, out[1:]):
        if tokens is not None:  # non-finite: that configuration runs alone later and fails there
            batcher.ready[(rider.key, key)] = tokens
    return out[0], gen
