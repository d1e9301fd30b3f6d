"""Which loglikelihood requests of one harness call prefix reuse scores, and with which configurations.

Answers computed earlier for this configuration (a sweep's look ahead) are taken as they are; requests longer
than the sliding window, too long for the model (the harness left-truncates them) or rejected by
``group_by_context`` go to the plain path; the rest are grouped by context and scored on prefix caches
(``prefix_reuse.py``), together with the planned configurations that share this one's prefix cache, or with
config batching those that steer their own prefixes (``config_batching.score_groups_mixed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from steer_plugin.harness.config_batching import score_groups_mixed
from steer_plugin.harness.lookahead import Lookahead
from steer_plugin.harness.prefix_reuse import (
    Answer,
    Scorer,
    TailConfig,
    group_by_context,
    score_groups,
    split_by_window,
)

TokenRequest = tuple[Any, list[int], list[int]]  # (cache key, context tokens, continuation tokens), as HFLM has them


@dataclass
class ReuseCall:
    """One loglikelihood call with prefix reuse under the configuration ``mine``."""

    mine: TailConfig
    lookahead: Lookahead
    max_length: int
    window: int | None  # the model's shortest sliding window, None: none
    make_scorer: Callable[[list[TokenRequest]], Scorer]  # for the requests it will score
    score_plain: Callable[[list[TokenRequest]], list[Answer]]
    progress: Callable[[int, str], Any]  # (total, description) -> a tqdm-like bar

    def run(self, requests: Sequence[TokenRequest]) -> tuple[list[Answer], list[int], int]:
        """Every request's answer, the indices scored on the plain path, and how many of them for the window."""
        answers: list[Any] = [None] * len(requests)
        ahead = self.lookahead.take(self.mine)
        if ahead:  # computed while an earlier configuration of this sweep held the same prefix cache
            for i, (_, ctx, cont) in enumerate(requests):
                answers[i] = ahead.get((tuple(ctx), tuple(cont)))
        todo, longer = split_by_window(
            [(i, ctx, cont) for i, (_, ctx, cont) in enumerate(requests) if answers[i] is None], self.window
        )
        groups, plain = group_by_context(todo, self.max_length)
        plain += longer
        if plain:  # too long for the window (the harness left-truncates), for a sliding window, or rejected
            for i, a in zip(plain, self.score_plain([requests[i] for i in plain])):
                answers[i] = a
        if groups:
            scorer = self.make_scorer([requests[i] for i, _, _ in todo])
            self._score(scorer, groups, requests, answers)
        return answers, plain, len(longer)

    def _score(self, scorer: Scorer, groups: list, requests: Sequence[TokenRequest], answers: list[Any]) -> None:
        riders = self.lookahead.sharing_prefix(self.mine)
        mixed = self.lookahead.mixed_riders(self.mine)
        desc = "Running loglikelihood requests (prefix reuse" + (
            f", +{len(riders)} configurations sharing the prefix)"
            if riders
            else f", +{len(mixed)} configurations in the same batches)"
            if mixed
            else ")"
        )
        with self.progress(sum(g.n_requests for g in groups), desc) as pbar:
            if mixed and self.lookahead.batcher is not None:
                riders = mixed
                results = score_groups_mixed(
                    scorer, groups, [self.mine, *mixed], self.lookahead.batcher.rows, pbar.update
                )
            else:
                results = score_groups(scorer, groups, [self.mine, *riders], pbar.update)
        for i, a in results[0].items():
            answers[i] = a
        for rider, out in zip(riders, results[1:]):
            self.lookahead.keep(rider, {(tuple(requests[i][1]), tuple(requests[i][2])): a for i, a in out.items()})
