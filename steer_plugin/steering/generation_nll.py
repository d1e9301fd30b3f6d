"""Fluency of generated text: its NLL per token under the *unsteered* model, given the same prompt.

A steered model that writes broken text still writes *something* the classifier scores; how surprising the
unsteered model finds that text (the prompt as context) tells fluent answers from word salad and loops without
a second language model. The sequences are run right-padded in batches of similar length, one forward each,
with nothing hooked into the model; the LM head runs only from the first continuation token of a batch on (the
context's logits are never needed), and a batch holds as many sequences as fit a logits budget (a 262k vocabulary
makes logits, not weights, the memory that counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steer_plugin.data.prompts import pad_batch, pad_id
from steer_plugin.errors import SteerError
from steer_plugin.steering.kv_prefix import accepts_logits_to_keep

LOGITS_BYTES = 256 * 2**20  # float32 logits of one forward, at most (one sequence is always allowed)


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
    logits_bytes: int = LOGITS_BYTES,
) -> list[GenerationNLL]:
    """NLL of each continuation given its context, token ids in, one result per pair in input order.

    Args:
        model: a causal LM, run as it is (the caller makes sure no steering hook is active).
        tokenizer: its tokenizer (for the pad id).
        pairs: (context ids, continuation ids); an empty continuation gives ``GenerationNLL(0, 0)``.
        batch_size: sequences per forward.
        max_length: the model's window; longer sequences lose context tokens from the left.
        logits_bytes: a batch's float32 logits stay under this (fewer sequences per forward where needed).

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
    head = model.get_output_embeddings()
    vocab = int(head.weight.shape[0]) if head is not None else int(model.config.get_text_config().vocab_size)
    trimmed = accepts_logits_to_keep(model)
    for chunk in _batches(todo, batch_size, logits_bytes // (4 * vocab), trimmed):
        ids, mask, _ = pad_batch([seq for _, seq, _ in chunk], pad, "right")
        width = ids.shape[1]
        keep = width - min(len(seq) - n - 1 for _, seq, n in chunk) if trimmed else width
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if trimmed:
            inputs["logits_to_keep"] = keep  # the last ``keep`` positions: every continuation's, right-padded
        with torch.no_grad():
            out_ = model(**inputs)
        logits = out_.logits if hasattr(out_, "logits") else out_[0]
        shift = width - keep  # column 0 of the logits is position ``shift``
        for r, (i, seq, n) in enumerate(chunk):
            end = len(seq)
            # position p predicts token p + 1: the continuation's tokens are seq[end-n:end]
            lp = torch.log_softmax(logits[r, end - n - 1 - shift : end - 1 - shift].float(), dim=-1)
            target = torch.tensor(seq[end - n :], device=lp.device)
            out[i] = GenerationNLL(float(-lp.gather(1, target[:, None]).sum()), n)
    return [o if o is not None else GenerationNLL(0.0, 0) for o in out]


def _batches(
    todo: list[tuple[int, list[int], int]], batch_size: int, positions: int, trimmed: bool
) -> list[list[tuple[int, list[int], int]]]:
    """Consecutive runs of ``todo`` (longest first) of at most ``batch_size`` sequences whose kept logits
    (rows x kept positions) stay within ``positions``."""
    out: list[list[tuple[int, list[int], int]]] = []
    chunk: list[tuple[int, list[int], int]] = []
    for item in todo:
        grown = [*chunk, item]
        width = len(grown[0][1])  # the longest comes first
        kept = width - min(len(seq) - n - 1 for _, seq, n in grown) if trimmed else width
        if chunk and (len(grown) > batch_size or len(grown) * kept > positions):
            out.append(chunk)
            grown = [item]
        chunk = grown
    if chunk:
        out.append(chunk)
    return out
