"""Side effects of a steering configuration: KL to the unsteered model and perplexity on neutral texts.

The texts: :class:`steer_plugin.data.neutral_texts.TextSource` (GoEmotions' neutral test texts by default).
This is what "side effects" means here; the *fluency* of generated outputs (their ``gen_nll``) is another
measurement (:mod:`steer_plugin.steering.generation_nll`).

Each text is tokenized as its tokenizer does by default (special tokens included, e.g. a BOS), cut to
``MAX_TOKENS`` tokens and split at ``c = n // 2``: context ``ids[:c]``, continuation ``ids[c:]``
(texts under 2 tokens are skipped). The model reads ``ids[:-1]``; continuation token ``ids[j]`` is
predicted at position ``j - 1`` (positions ``c-1 .. n-2``). Over all continuation tokens of all texts:

* ``kl``  = sum of KL(p_unsteered || q_steered) of those next-token distributions / number of tokens
  (nats, token-weighted mean);
* ``ppl`` = exp(sum of -log q_steered(token) / number of tokens) (the steered model's perplexity).

Steering as the configuration steers: ``positions=all`` adds the delta at every position (context
included); ``positions=response`` at positions ``c-1 .. n-2``, the last context token and the
continuation - what ``steered_hf`` steers when it scores ``loglikelihood(context, continuation)``.

The unsteered distributions are computed once per probe and kept on the CPU, float32, for the
continuation positions only (~200 texts x ~8 tokens x vocab; 300 MB for a 49k vocabulary), so every
configuration costs one steered forward per batch and the KL is exact. Batches beyond ``cache_bytes``
(1 GiB: a 262k vocabulary takes 1 MiB a token, Gemma-3's 200 texts about 1.6 GiB) are recomputed when
compared instead (exact, twice the forwards for those batches only).
With ``positions=response`` the context minus its last token is never steered: its KV cache is
computed once too and steered passes run only the rest (about half the tokens; models whose cache
cannot be reused, see ``kv_prefix.reuse_blocker``, run the whole text, and so does a batch holding a text
longer than the model's sliding window). The LM head runs only at
scored positions where the model takes ``logits_to_keep``.

A sweep measures all its configurations at once (``measure_many``): each batch of texts runs under several
configurations side by side (``RowPlan``: each row its configuration's delta, as config batching generates),
up to ``config_rows`` rows per forward, and the KL is reduced per configuration as soon as its rows are out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steer_plugin.errors import SteerError
from steer_plugin.model.hooks import DEFAULT_ROWS, RowPlan, Steerer, SteeringPlan
from steer_plugin.model.positions import POSITIONS, check_positions
from steer_plugin.steering.generation_nll import LOGITS_BYTES, vocab_size
from steer_plugin.steering.kv_prefix import (
    ReuseUnsupported,
    accepts_logits_to_keep,
    fits_window,
    reuse_blocker,
    reuse_window,
)
from steer_plugin.steering.side_effect_batches import (
    MAX_TOKENS,
    PrefixTail,
    ScoredBatch,
    encode_batches,
    pick_log_probs,
    prefix_tail,
    scored_ids,
)

DEFAULT_CACHE_BYTES = 1 << 30


# --------------------------------------------------------------------------- results


@dataclass
class SideEffects:
    """KL and perplexity of one configuration, with the per-text sums they come from."""

    kl_sums: list[float]  # per text: sum over its continuation tokens of KL(p || q)
    nll_sums: list[float]  # per text: sum of -log q(token)
    n_tokens: list[int]
    baseline_ppl: float = float("nan")

    @property
    def total_tokens(self) -> int:
        return sum(self.n_tokens)

    @property
    def kl(self) -> float:
        return sum(self.kl_sums) / self.total_tokens

    @property
    def ppl(self) -> float:
        return math.exp(sum(self.nll_sums) / self.total_tokens)

    @property
    def kl_stderr(self) -> float:
        return _ratio_stderr(self.kl_sums, self.n_tokens)

    @property
    def ppl_stderr(self) -> float:
        return self.ppl * _ratio_stderr(self.nll_sums, self.n_tokens)  # delta method on log ppl

    def metrics(self) -> dict[str, float]:
        """Harness-style metric keys (``name,filter``) for a results JSON entry."""
        out = {"kl,none": self.kl, "kl_stderr,none": self.kl_stderr, "ppl,none": self.ppl}
        out["ppl_stderr,none"] = self.ppl_stderr
        return {k: v for k, v in out.items() if not math.isnan(v)}  # no stderr from a single text

    def samples(self, texts: list[str]) -> list[dict[str, Any]]:
        """One row per text (like a harness samples file): per-token KL and NLL of that text."""
        return [
            {
                "doc_id": i,
                "doc": {"text": t},
                "filter": "none",
                "metrics": ["kl", "nll"],
                "n_tokens": n,
                "kl": k / n,
                "nll": s / n,
            }
            for i, (t, k, s, n) in enumerate(zip(texts, self.kl_sums, self.nll_sums, self.n_tokens))
        ]


def _ratio_stderr(sums: list[float], counts: list[int]) -> float:
    """Standard error of sum(sums)/sum(counts) over texts (ratio estimator, linearised)."""
    m = len(sums)
    if m < 2:
        return float("nan")
    total = sum(counts)
    r = sum(sums) / total
    mean_n = total / m
    var = sum((s - r * n) ** 2 for s, n in zip(sums, counts)) / (m - 1)
    return math.sqrt(var / m) / mean_n


# --------------------------------------------------------------------------- the probe


@dataclass
class SideEffectProbe:
    """Tokenized neutral texts and their unsteered next-token distributions, reused per configuration."""

    model: Any
    tokenizer: Any
    texts: list[str]
    steerer: Steerer | None = None
    batch_size: int = 16
    max_tokens: int = MAX_TOKENS
    cache_bytes: int = DEFAULT_CACHE_BYTES
    blocks: str | None = None
    config_rows: int = DEFAULT_ROWS  # measure_many: most rows (texts x configurations) in one forward
    logits_bytes: int = LOGITS_BYTES  # measure_many: a forward's float32 logits, at most (one configuration always)
    _batches: list[ScoredBatch] = field(default_factory=list, init=False, repr=False)
    _cache: list[torch.Tensor] | None = field(default=None, init=False, repr=False)
    _baseline: SideEffects | None = field(default=None, init=False, repr=False)
    _prefixes: dict[int, PrefixTail | None] = field(default_factory=dict, init=False, repr=False)
    _reuse_blocked: str | None = field(default=None, init=False, repr=False)
    _keep_logits: bool = field(default=False, init=False, repr=False)
    window: int | None = field(default=None, init=False)  # the model's shortest sliding window, if any
    longer_than_window: int = field(default=0, init=False)  # texts run whole for a text of their batch over it

    def __post_init__(self) -> None:
        if self.steerer is None:
            self.steerer = Steerer(self.model, "hooks", self.blocks)
        if self.batch_size < 1:
            raise SteerError(f"batch size must be >= 1, got {self.batch_size}")
        encoded = scored_ids(self.tokenizer, self.texts, self.max_tokens)
        if not encoded:
            raise SteerError("no neutral text has 2 or more tokens (a context and a continuation)")
        self.texts = [self.texts[i] for i, _ in encoded]  # only the texts that are scored
        device = self.model.get_input_embeddings().weight.device
        self._batches = encode_batches(self.tokenizer, [ids for _, ids in encoded], self.batch_size, device)
        self._keep_logits = accepts_logits_to_keep(self.model)
        self._reuse_blocked = reuse_blocker(self.model)
        self.window = None if self._reuse_blocked else reuse_window(self.model)

    @property
    def _vocab(self) -> int:
        return vocab_size(self.model)

    @property
    def n_tokens(self) -> int:
        return sum(int(b.targets.numel()) for b in self._batches)

    def _log_probs(
        self, batch: ScoredBatch, plans: Sequence[SteeringPlan], positions: str, i: int | None = None
    ) -> Iterator[torch.Tensor]:
        """Per plan, float32 log-probs [T, V] at the scored positions of one batch, all plans in one forward
        (configuration ``j`` owns rows ``j*B .. (j+1)*B-1``, ``RowPlan``; ``i``: the batch's index, for the prefix
        cache of positions=response). Yielded one plan at a time: only the forward's logits and one plan's
        float32 log-probs are held at once (a 262k vocabulary makes those large)."""
        assert self.steerer is not None
        n, g = batch.input_ids.shape[0], len(plans)
        plan = RowPlan.stack(plans, repeat=n)  # an inactive plan has no deltas: a plain forward
        prefix = self._prefix(i, batch) if positions == "response" and plan.active and i is not None else None
        with torch.no_grad():
            if prefix is not None:
                tail_mask = prefix.tail_mask.repeat(g, 1)
                tail = prefix.kv.repeated(g).tail_inputs(tail_mask)
                out = self.steerer.forward(plan, tail_mask.bool(), input_ids=prefix.tail_ids.repeat(g, 1), **tail)
                cols = prefix.tail_cols
            else:
                where = None if positions == "all" else batch.response.repeat(g, 1)
                inputs: dict[str, Any] = {
                    "input_ids": batch.input_ids.repeat(g, 1),
                    "attention_mask": batch.attention_mask.repeat(g, 1),
                }
                cols = batch.cols
                if self._keep_logits:  # the LM head only where something is scored
                    keep, cols = torch.unique(batch.cols, return_inverse=True)
                    inputs["logits_to_keep"] = keep
                out = self.steerer.forward(plan, where, **inputs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        for j in range(g):
            yield pick_log_probs(logits, batch.rows + j * n, cols)

    def _prefix(self, i: int, batch: ScoredBatch) -> PrefixTail | None:
        """The batch's unsteered prefix cache (built on first use); None where it cannot be used: the
        model's cache cannot be reused, a row has no prefix (a 2- or 3-token text), or a row is longer
        than the sliding window."""
        if i in self._prefixes:
            return self._prefixes[i]
        self._prefixes[i] = None
        if self._reuse_blocked or min(batch.prefix_lengths) == 0:
            return None
        if not fits_window(int(batch.attention_mask.sum(1).max()), self.window):
            self.longer_than_window += len(batch.prefix_lengths)
            return None
        try:
            self._prefixes[i] = prefix_tail(self.model, batch, self._keep_logits)
        except ReuseUnsupported as e:
            self._reuse_blocked = str(e)
        return self._prefixes[i]

    def _baseline_log_probs(self, i: int, batch: ScoredBatch) -> torch.Tensor:
        if self._cache is not None and i < len(self._cache):
            return self._cache[i]
        return next(self._log_probs(batch, [SteeringPlan()], "all"))

    @property
    def cached_bytes(self) -> int:
        """What the cached unsteered log-probs take (0 before ``baseline``)."""
        return self._bytes(self._cache or [])

    @staticmethod
    def _bytes(tensors: list[torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in tensors)

    def baseline(self) -> SideEffects:
        """The unsteered model on these texts (KL 0); fills the cache on the first call."""
        if self._baseline is None:
            nll = [0.0] * len(self.texts)
            counts = [0] * len(self.texts)
            cache: list[torch.Tensor] = []  # the first batches, as many as fit in cache_bytes
            for i, batch in enumerate(self._batches):
                lp = next(self._log_probs(batch, [SteeringPlan()], "all"))
                if len(cache) == i and self._bytes(cache) + lp.numel() * lp.element_size() <= self.cache_bytes:
                    cache.append(lp.cpu())
                self._add(nll, counts, batch, -lp.gather(1, batch.targets[:, None].to(lp.device))[:, 0])
            self._cache = cache or None
            self._baseline = SideEffects([0.0] * len(self.texts), nll, counts)
            self._baseline.baseline_ppl = self._baseline.ppl
        return self._baseline

    @staticmethod
    def _add(sums: list[float], counts: list[int] | None, batch: ScoredBatch, values: torch.Tensor) -> None:
        for k, v in zip(batch.owner.tolist(), values.double().cpu().tolist()):
            sums[k] += v
            if counts is not None:
                counts[k] += 1

    def measure(self, plan: SteeringPlan, positions: str = "all") -> SideEffects:
        """KL to the unsteered model and steered perplexity under ``plan`` at ``positions``."""
        return self.measure_many([plan], [positions])[0]

    def measure_many(self, plans: Sequence[SteeringPlan], positions: Sequence[str]) -> list[SideEffects]:
        """``measure`` of configuration ``k`` = ``plans[k]`` at ``positions[k]``, for all of them at once: every batch
        of texts runs under several configurations per forward (at most ``config_rows`` rows, never fewer than one
        configuration's batch), each row steered by its own configuration's delta, so the batch's unsteered
        log-probs and (positions=response) its unsteered prefix cache serve all of them. The numbers are each
        configuration's alone (a row computes what it computes in a batch of its own)."""
        if len(plans) != len(positions):
            raise SteerError(f"{len(plans)} steering plans but {len(positions)} positions")
        for where in positions:
            check_positions(where)
        base = self.baseline()
        kl = [[0.0] * len(self.texts) for _ in plans]
        nll = [[0.0] * len(self.texts) for _ in plans]
        # one group per `where` (the prefix cache and the steered positions differ); unsteered ones are the baseline
        groups = {where: [k for k, p in enumerate(plans) if p.active and positions[k] == where] for where in POSITIONS}
        for i, batch in enumerate(self._batches):
            rows, width = batch.input_ids.shape
            # the forward's logits [rows x width x vocab] float32 stay within the budget: a 262k vocabulary counts
            fit = self.logits_bytes // (4 * rows * width * self._vocab)
            per_forward = max(1, min(self.config_rows // rows, fit))
            p: torch.Tensor | None = None  # the batch's unsteered log-probs, for every configuration
            for where, members in groups.items():
                for start in range(0, len(members), per_forward):
                    part = members[start : start + per_forward]
                    for k, q in zip(part, self._log_probs(batch, [plans[k] for k in part], where, i)):
                        p = self._baseline_log_probs(i, batch).to(q.device) if p is None else p
                        self._compare(kl[k], nll[k], batch, p, q)
        return [
            SideEffects(kl[k], nll[k], list(base.n_tokens), base.ppl) if plan.active else base
            for k, plan in enumerate(plans)
        ]

    def measure_prompted(self, instruction: Sequence[int]) -> SideEffects:
        """The side effects of *asking* instead of steering: every text read after ``instruction`` (token ids of
        the instruction and a blank line, as the tokenizer encodes a text), unsteered, against the texts read alone,
        at the same scored positions. This puts a prompting reference on the same KL scale as a steering vector."""
        base = self.baseline()
        if not instruction:
            return base
        assert self.steerer is not None
        kl = [0.0] * len(self.texts)
        nll = [0.0] * len(self.texts)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        for i, batch in enumerate(self._batches):
            rows = batch.input_ids.shape[0]
            head = torch.tensor(list(instruction), dtype=torch.long, device=batch.input_ids.device)
            # a tokenizer that starts every text with BOS started the instruction with it too: one BOS, in front
            skip = int(bos is not None and int(head[0]) == bos and bool((batch.input_ids[:, 0] == bos).all()))
            ids = torch.cat([head.expand(rows, -1), batch.input_ids[:, skip:]], dim=1)  # right padding stays last
            mask = torch.cat([torch.ones_like(ids[:, : len(head)]), batch.attention_mask[:, skip:]], dim=1)
            with torch.no_grad():
                out = self.steerer.forward(SteeringPlan(), None, input_ids=ids, attention_mask=mask)
            logits = out.logits if hasattr(out, "logits") else out[0]
            q = pick_log_probs(logits, batch.rows, batch.cols + len(head) - skip)
            self._compare(kl, nll, batch, self._baseline_log_probs(i, batch).to(q.device), q)
        return SideEffects(kl, nll, list(base.n_tokens), base.ppl)

    def _compare(self, kl: list[float], nll: list[float], batch: ScoredBatch, p: torch.Tensor, q: torch.Tensor) -> None:
        """Add one batch's KL(p || q) (p: the unsteered log-probs) and NLL under q to the per-text sums."""
        self._add(kl, None, batch, (p.exp() * (p - q)).sum(-1))
        self._add(nll, None, batch, -q.gather(1, batch.targets[:, None].to(q.device))[:, 0])
