"""The neutral texts as the side-effect probe reads them: tokenized, split into context and continuation, batched.

Which positions are scored is defined in :mod:`steer_plugin.steering.side_effects`; this module builds them:
per batch the right-padded ``ids[:-1]``, the scored (row, column, target) of every continuation token, and for
``positions=response`` the unsteered prefix ``ids[:c-1]`` whose KV cache every steered pass reuses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from steer_plugin.data.prompts import pad_batch, pad_id
from steer_plugin.steering.kv_prefix import KVPrefix

MAX_TOKENS = 128  # longer texts (file lines) are cut to their first MAX_TOKENS tokens


@dataclass
class ScoredBatch:
    input_ids: torch.Tensor  # [B, W] (right-padded ids[:-1])
    attention_mask: torch.Tensor
    response: torch.Tensor  # bool [B, W]: positions c-1 .. n-2 of each row
    rows: torch.Tensor  # [T] row of each scored position
    cols: torch.Tensor  # [T] its column
    targets: torch.Tensor  # [T] the continuation token it predicts
    owner: torch.Tensor  # [T] index (in probe.texts) of the text it belongs to
    prefix_lengths: list[int] = field(default_factory=list)  # c - 1 per row: the never-steered part (response)


@dataclass
class PrefixTail:
    """positions=response: the unsteered KV cache of every row's ``ids[:c-1]`` (left-padded), computed once;
    steered passes then run only the tails ``ids[c-1:n-1]`` (right-padded), whose positions are all scored."""

    kv: KVPrefix
    tail_ids: torch.Tensor  # [B, W]
    tail_mask: torch.Tensor  # [B, W] long
    tail_cols: torch.Tensor  # [T] column of each scored position in the tail


def scored_ids(tokenizer: Any, texts: list[str], max_tokens: int = MAX_TOKENS) -> list[tuple[int, list[int]]]:
    """(index in ``texts``, token ids) of the texts that are scored: 2 tokens or more, cut to ``max_tokens``."""
    encoded = []
    for i, text in enumerate(texts):
        ids = list(tokenizer(text)["input_ids"])[:max_tokens]
        if len(ids) >= 2:
            encoded.append((i, ids))
    return encoded


def encode_batches(
    tokenizer: Any, token_ids: list[list[int]], batch_size: int, device: torch.device
) -> list[ScoredBatch]:
    """The batches of ``token_ids`` (text ``k`` owns the scored positions of ``token_ids[k]``), longest first."""
    encoded = sorted(enumerate(token_ids), key=lambda e: -len(e[1]))  # similar lengths together: less padding
    pad = pad_id(tokenizer)
    batches = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        ids, mask, _ = pad_batch([e[1][:-1] for e in chunk], pad, "right")
        response = torch.zeros_like(mask, dtype=torch.bool)
        rows, cols, targets, owner = [], [], [], []
        for r, (k, full) in enumerate(chunk):
            n, c = len(full), len(full) // 2
            response[r, c - 1 : n - 1] = True
            for j in range(c, n):
                rows.append(r)
                cols.append(j - 1)
                targets.append(full[j])
                owner.append(k)
        batches.append(
            ScoredBatch(
                ids.to(device),
                mask.to(device),
                response,
                torch.tensor(rows, device=device),
                torch.tensor(cols, device=device),
                torch.tensor(targets, device=device),
                torch.tensor(owner),
                [len(full) // 2 - 1 for _, full in chunk],
            )
        )
    return batches


def prefix_tail(model: Any, batch: ScoredBatch, keep_logits: bool) -> PrefixTail:
    """Run the batch's unsteered prefixes once (``ReuseUnsupported`` where the model's cache cannot be reused)."""
    device = batch.input_ids.device
    texts = [batch.input_ids[r, :n].tolist() for r, n in enumerate(batch.attention_mask.sum(1).tolist())]
    heads = [ids[:p] for ids, p in zip(texts, batch.prefix_lengths)]
    tail_ids, tail_mask, _ = pad_batch([ids[p:] for ids, p in zip(texts, batch.prefix_lengths)], 0, "right")
    with torch.no_grad():
        kv = KVPrefix.run_tokens(model, model.config, heads, device, logits_to_keep=keep_logits)
    offsets = torch.tensor(batch.prefix_lengths, device=device)[batch.rows]
    return PrefixTail(kv, tail_ids.to(device), tail_mask.to(device), batch.cols - offsets)


def pick_log_probs(logits: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """float32 log-probs at (rows, cols), on the logits' device (the last layer's, with device_map)."""
    return torch.log_softmax(logits[rows.to(logits.device), cols.to(logits.device)].float(), dim=-1)
