"""``positions=response`` on lm-eval's own scoring loop: which positions of each row HFLM feeds to steer.

HFLM's ``_loglikelihood_tokens`` feeds each request as the row ``(context + continuation)[-(max_length + 1):][:-1]``,
right-padded with zeros to the batch's width. ``positions=response`` steers the last context token and
``continuation[:-1]``: positions ``max(n - len(continuation), 0) .. n - 1`` of a row of ``n`` tokens (the logits
at those positions predict the continuation). The model's ``_model_call`` sees only the rows, so ``ResponseSpans``,
made from the requests, maps a row's tokens (trailing zeros dropped, since padding is zeros) to its length and
first steered position. A row that is not one of the requests raises instead of steering the wrong positions.

Two requests can make rows that look alike but need other positions: the same tokens split otherwise between
context and continuation (HFLM's one-token cache would also score them in one row), or one row equal to another
plus trailing zero tokens. ``partition`` puts those in separate calls of the loop, so within one call a row's
tokens decide its positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

TokenRequest = tuple[Any, list[int], list[int]]  # (cache key, context tokens, continuation tokens), as HFLM has them


def _row(ctx: Sequence[int], cont: Sequence[int], max_length: int) -> list[int]:
    return (list(ctx) + list(cont))[-(max_length + 1) :][:-1]


def _unpadded(tokens: Sequence[int]) -> tuple[int, ...]:
    n = len(tokens)
    while n and tokens[n - 1] == 0:
        n -= 1
    return tuple(tokens[:n])


@dataclass
class ResponseSpans:
    """Row tokens without trailing zeros -> (row length, first steered position), for one call of the loop."""

    spans: dict[tuple[int, ...], tuple[int, int]] = field(default_factory=dict)

    def fits(self, key: tuple[int, ...], span: tuple[int, int]) -> bool:
        return self.spans.get(key, span) == span

    @staticmethod
    def partition(requests: Sequence[TokenRequest], max_length: int) -> list[tuple[list[int], ResponseSpans]]:
        """The requests (by index) in as few calls as their rows allow, each with its lookup."""
        parts: list[tuple[list[int], ResponseSpans]] = []
        for i, (_, ctx, cont) in enumerate(requests):
            row = _row(ctx, cont, max_length)
            key, span = _unpadded(row), (len(row), max(len(row) - len(cont), 0))
            part = next((p for p in parts if p[1].fits(key, span)), None)
            if part is None:
                part = ([], ResponseSpans())
                parts.append(part)
            part[0].append(i)
            part[1].spans[key] = span
        return parts

    def where(self, inps: torch.Tensor) -> torch.Tensor | None:
        """The positions to steer in this batch of rows, ``[rows, width]``. None: the batch is HFLM's batch-size
        probe (rows of ones, no request; ``_detect_batch_size`` with ``batch_size=auto``), steered everywhere:
        its logits are thrown away, only its memory counts."""
        where = torch.zeros(inps.shape, dtype=torch.bool)
        rows = inps.tolist()
        for r, tokens in enumerate(rows):
            span = self.spans.get(_unpadded(tokens))
            if span is None:
                if all(t == 1 for row in rows for t in row):
                    return None
                raise RuntimeError(f"steered_hf: row {r} of a scoring batch is none of the requests")
            n, start = span
            if n > len(tokens):
                raise RuntimeError(f"steered_hf: row {r} of a scoring batch is shorter than its request")
            where[r, start:n] = True
        return where
