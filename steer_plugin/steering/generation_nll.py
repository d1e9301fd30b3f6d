"""Fluency of generated text: its NLL per token under the *unsteered* model, given the same prompt.

A steered model that writes broken text still writes *something* the classifier scores; how surprising the
unsteered model finds that text (the prompt as context) tells fluent answers from word salad and loops without
a second language model. The sequences are run right-padded in batches of similar length, one forward each,
with nothing hooked into the model; the LM head runs only from the first continuation token of a batch on (the
context's logits are never needed), and a batch holds as many sequences as fit a logits budget (a 262k vocabulary
makes logits, not weights, the memory that counts).

A sweep scores every configuration's outputs after the same prompts: with a ``PromptCache`` each prompt's
``[:-1]`` runs once for all of them (its unsteered KV cache kept, within a memory budget) and a configuration's
outputs run as tails on it (``[prompt[-1]] + output[:-1]``), as prefix reuse scores answer choices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steer_plugin.data.prompts import pad_batch, pad_id
from steer_plugin.errors import SteerError
from steer_plugin.steering.kv_prefix import (
    KVPrefix,
    ReuseUnsupported,
    accepts_logits_to_keep,
    fits_window,
    reuse_blocker,
    reuse_window,
)

LOGITS_BYTES = 256 * 2**20  # float32 logits of one forward, at most (one sequence is always allowed)
PROMPT_CACHE_BYTES = 512 * 2**20  # keys/values of cached prompts, at most (SmolLM2: 46 KiB a token)

Todo = tuple[int, list[int], int]  # (index in the caller's pairs, the sequence the model reads, tokens scored)


@dataclass(frozen=True)
class GenerationNLL:
    """Summed NLL (nats) of a continuation's tokens and how many there are; ``per_token`` is NaN for none."""

    total: float
    n_tokens: int

    @property
    def per_token(self) -> float:
        return self.total / self.n_tokens if self.n_tokens else math.nan


@dataclass
class PromptCache:
    """Unsteered KV caches of prompts, kept across ``continuation_nll`` calls: each prompt's ``[:-1]`` runs once.

    Prompts are cached in blocks (one left-padded forward each) while their keys/values fit ``max_bytes``; a
    prompt that does not fit, a model whose cache cannot be reused (``reuse_blocker``), or a sequence longer
    than the model's shortest sliding window is scored the plain way (``plain`` counts those sequences)."""

    model: Any
    max_bytes: int = PROMPT_CACHE_BYTES
    blocks: list[KVPrefix] = field(default_factory=list)
    where: dict[tuple[int, ...], tuple[int, int]] = field(default_factory=dict)  # prompt -> (block, row)
    blocked: str | None = None  # why the model's cache is not reused
    window: int | None = None
    used_bytes: int = 0
    plain: int = 0
    full: bool = False  # a block did not fit: later prompts are not run for the cache (they would not fit either)

    def __post_init__(self) -> None:
        self.blocked = reuse_blocker(self.model)
        self.window = None if self.blocked else reuse_window(self.model)

    def usable(self, ctx: Sequence[int], n_read: int, cut: bool) -> bool:
        """Whether a continuation after ``ctx`` (the model reading ``n_read`` tokens; ``cut``: context lost from
        the left to the model's window) can run as a tail on the context's cache: reuse possible, two context
        tokens or more, nothing cut, and within the sliding window."""
        return self.blocked is None and len(ctx) >= 2 and not cut and fits_window(n_read, self.window)

    def add(self, contexts: list[tuple[int, ...]], batch_size: int) -> None:
        """Cache the contexts not cached yet, ``batch_size`` per forward, while the budget lasts."""
        if self.full:
            return
        device = self.model.get_input_embeddings().weight.device
        new = sorted({c for c in contexts if c not in self.where}, key=len, reverse=True)
        keep = accepts_logits_to_keep(self.model)
        for start in range(0, len(new), batch_size):
            chunk = new[start : start + batch_size]
            try:
                with torch.no_grad():
                    block = KVPrefix.run_tokens(self.model, self.model.config, [c[:-1] for c in chunk], device,
                                                logits_to_keep=keep)  # fmt: skip
            except ReuseUnsupported as e:
                self.blocked = str(e)
                return
            size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in block.layers)
            if self.used_bytes + size > self.max_bytes:
                self.full = True  # the rest is scored the plain way
                return
            self.used_bytes += size
            for row, c in enumerate(chunk):
                self.where[c] = (len(self.blocks), row)
            self.blocks.append(block)


def continuation_nll(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 16,
    max_length: int | None = None,
    logits_bytes: int = LOGITS_BYTES,
    prompts: PromptCache | None = None,
) -> list[GenerationNLL]:
    """NLL of each continuation given its context, token ids in, one result per pair in input order.

    Args:
        model: a causal LM, run as it is (the caller makes sure no steering hook is active).
        tokenizer: its tokenizer (for the pad id).
        pairs: (context ids, continuation ids); an empty continuation gives ``GenerationNLL(0, 0)``.
        batch_size: sequences per forward.
        max_length: the model's window; longer sequences lose context tokens from the left.
        logits_bytes: a batch's float32 logits stay under this (fewer sequences per forward where needed).
        prompts: the contexts' KV caches, filled and reused across calls (None: every sequence whole).

    Returns:
        ``GenerationNLL`` per pair."""
    if batch_size < 1:
        raise SteerError(f"batch size must be >= 1, got {batch_size}")
    out: list[GenerationNLL | None] = [None] * len(pairs)
    todo: list[Todo] = []
    tails: list[tuple[Todo, tuple[int, ...]]] = []
    for i, (ctx, cont) in enumerate(pairs):
        if not cont:
            out[i] = GenerationNLL(0.0, 0)
            continue
        if not ctx:
            raise SteerError("a continuation needs a context of at least one token (the prompt)")
        seq = [*ctx, *cont]
        cut = max_length is not None and len(seq) > max_length
        if max_length is not None and cut:
            seq = seq[len(seq) - max_length :]
        item = (i, seq, min(len(cont), len(seq) - 1))
        if prompts is not None and prompts.usable(ctx, len(seq) - 1, cut):
            tails.append((item, tuple(ctx)))
        else:
            todo.append(item)
            if prompts is not None:
                prompts.plain += 1
    vocab = vocab_size(model)
    if prompts is not None and tails:
        prompts.add([c for _, c in tails], batch_size)
        todo += [item for item, c in tails if c not in prompts.where]
        prompts.plain += sum(c not in prompts.where for _, c in tails)
        _score_tails(model, [(item, prompts.where[c]) for item, c in tails if c in prompts.where], prompts,
                     batch_size, logits_bytes // (4 * vocab), out)  # fmt: skip
    _score_whole(model, tokenizer, todo, batch_size, logits_bytes // (4 * vocab), out)
    return [o if o is not None else GenerationNLL(0.0, 0) for o in out]


def vocab_size(model: Any) -> int:
    """Rows of the model's LM head: the width of its logits."""
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.get_text_config().vocab_size)


def _nll(logits_row: torch.Tensor, targets: Sequence[int]) -> float:
    lp = torch.log_softmax(logits_row.float(), dim=-1)
    return float(-lp.gather(1, torch.tensor(list(targets), device=lp.device)[:, None]).sum())


def _score_whole(
    model: Any, tokenizer: Any, todo: list[Todo], batch_size: int, positions: int, out: list[GenerationNLL | None]
) -> None:
    """Whole sequences, right-padded; the LM head from the batch's first scored position on."""
    todo = sorted(todo, key=lambda t: -len(t[1]))  # similar lengths together: less padding
    device = model.get_input_embeddings().weight.device
    pad = pad_id(tokenizer)
    trimmed = accepts_logits_to_keep(model)
    first = lambda t: len(t[1]) - t[2] - 1  # noqa: E731  (the position that predicts the first scored token)
    for chunk in _batches(todo, batch_size, positions, lambda c: len(c[0][1]) - (min(map(first, c)) if trimmed else 0)):
        ids, mask, _ = pad_batch([seq for _, seq, _ in chunk], pad, "right")
        width = ids.shape[1]
        keep = width - min(map(first, chunk)) if trimmed else width
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if trimmed:
            inputs["logits_to_keep"] = keep  # the last ``keep`` positions: every continuation's, right-padded
        with torch.no_grad():
            result = model(**inputs)
        logits = result.logits if hasattr(result, "logits") else result[0]
        shift = width - keep  # column 0 of the logits is position ``shift``
        for r, (i, seq, n) in enumerate(chunk):
            end = len(seq)
            # position p predicts token p + 1: the continuation's tokens are seq[end-n:end]
            out[i] = GenerationNLL(_nll(logits[r, end - n - 1 - shift : end - 1 - shift], seq[end - n :]), n)


def _score_tails(
    model: Any,
    items: list[tuple[Todo, tuple[int, int]]],
    prompts: PromptCache,
    batch_size: int,
    positions: int,
    out: list[GenerationNLL | None],
) -> None:
    """Continuations as tails ``[context[-1]] + continuation[:-1]`` on their cached context, per cache block."""
    device = model.get_input_embeddings().weight.device
    by_block: dict[int, list[tuple[Todo, int]]] = {}
    for item, (block, row) in items:
        by_block.setdefault(block, []).append((item, row))
    for block, members in by_block.items():
        members.sort(key=lambda m: -m[0][2])
        for chunk in _batches(members, batch_size, positions, lambda c: c[0][0][2]):
            tails = [seq[len(seq) - n - 1 : -1] for (_, seq, n), _ in chunk]
            ids, mask, _ = pad_batch(tails, 0, "right")
            prefix = prompts.blocks[block].rows(torch.tensor([row for _, row in chunk], device=device))
            with torch.no_grad():
                result = model(input_ids=ids.to(device), **prefix.tail_inputs(mask.to(device)))
            logits = result.logits if hasattr(result, "logits") else result[0]
            for r, ((i, seq, n), _) in enumerate(chunk):
                out[i] = GenerationNLL(_nll(logits[r, :n], seq[len(seq) - n :]), n)


def _batches(todo: list[Any], batch_size: int, positions: int, kept: Any) -> list[list[Any]]:
    """Consecutive runs of ``todo`` (longest first) of at most ``batch_size`` items whose logits (rows x
    ``kept(run)`` positions) stay within ``positions``; one item always makes a batch."""
    out: list[list[Any]] = []
    chunk: list[Any] = []
    for item in todo:
        grown = [*chunk, item]
        if chunk and (len(grown) > batch_size or len(grown) * kept(grown) > positions):
            out.append(chunk)
            grown = [item]
        chunk = grown
    if chunk:
        out.append(chunk)
    return out
