"""Fluency of generated text: its NLL per token under the *unsteered* model, given the same prompt.

A steered model that writes broken text still writes *something* the classifier scores; how surprising the
unsteered model finds that text (the prompt as context) tells fluent answers from word salad and loops without
a second language model. The sequences are run right-padded in batches of similar length, one forward each,
with nothing hooked into the model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steer_plugin.data.prompts import pad_batch, pad_id
from steer_plugin.errors import SteerError


@dataclass(frozen=True)
class GenerationNLL:
    """Summed NLL (nats) of a continuation's tokens and how many there are; ``per_token`` is NaN for none."""

    total: float
    n_tokens: int

    @property
    def per_token(self) -> float:
        return self.total / self.n_tokens if self.n_tokens else math.nan


def continuation_nll(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[GenerationNLL]:
    """NLL of each continuation given its context, token ids in, one result per pair in input order.

    Args:
        model: a causal LM, run as it is (the caller makes sure no steering hook is active).
        tokenizer: its tokenizer (for the pad id).
        pairs: (context ids, continuation ids); an empty continuation gives ``GenerationNLL(0, 0)``.
        batch_size: sequences per forward.
        max_length: the model's window; longer sequences lose context tokens from the left.

    Returns:
        ``GenerationNLL`` per pair."""
    if batch_size < 1:
        raise SteerError(f"batch size must be >= 1, got {batch_size}")
    out: list[GenerationNLL | None] = [None] * len(pairs)
    todo = []
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            out[i] = GenerationNLL(0.0, 0)
            continue
        if not ctx:
            raise SteerError("a continuation needs a context of at least one token (the prompt)")
        seq = [*ctx, *cont]
        if max_length is not None and len(seq) > max_length:
            seq = seq[len(seq) - max_length :]
        todo.append((i, seq, min(len(cont), len(seq) - 1)))
    todo.sort(key=lambda t: -len(t[1]))  # similar lengths together: less padding
    device = model.get_input_embeddings().weight.device
    pad = pad_id(tokenizer)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        ids, mask, _ = pad_batch([seq for _, seq, _ in chunk], pad, "right")
        with torch.no_grad():
            out_ = model(input_ids=ids.to(device), attention_mask=mask.to(device))
        logits = out_.logits if hasattr(out_, "logits") else out_[0]
        for r, (i, seq, n) in enumerate(chunk):
            end = len(seq)
            # position p predicts token p + 1: the continuation's tokens are seq[end-n:end]
            lp = torch.log_softmax(logits[r, end - n - 1 : end - 1].float(), dim=-1)
            target = torch.tensor(seq[end - n :], device=lp.device)
            out[i] = GenerationNLL(float(-lp.gather(1, target[:, None]).sum()), n)
    return [o if o is not None else GenerationNLL(0.0, 0) for o in out]
