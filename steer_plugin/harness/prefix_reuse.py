"""Prefix reuse: score every continuation of a shared context against one KV cache of that context.

lm-eval's HFLM feeds ``(context + continuation)[:-1]`` for every (context, choice) pair, so a
multiple-choice question with a 200-token prompt and 8 short choices runs the prompt 8 times. Here a
*group* is all requests with the same encoded context. Per group:

* the **prefix** ``context[:-1]`` runs once and leaves its KV cache;
* its **tails** ``[context[-1]] + continuation[:-1]`` run on that cache as a trie packed into one row
  (a few when it is long): choices that start alike ("The ...", and every tail's ``context[-1]``) run their
  shared beginning once. Each node sits at the position it has in its own sequence and attends to the
  prefix, its ancestors and itself (a prepared 4D mask); node ``j`` of a request's path predicts
  ``continuation[j]``: the logits for ``continuation[0]`` come from the last context token's position,
  which is why that token rides with the tail and not with the prefix. A model that takes no 4D mask
  (``tree_mask_blocker``) gets one causal row per tail instead.

Several groups share one forward: prefixes are left-padded (attention mask + explicit position ids), tail
rows right-padded and each gets its own group's cache row. The start all of a batch's contexts share
(a few-shot preamble) runs once, the rest of each prefix on its cache (``Scorer.share_start``). With
``positions=response`` the steered positions are exactly the tail's, so the prefix cache is the unsteered
one for every alpha and vector: ``score_groups`` runs several configurations' tails against one prefix
(``steer sweep``).

Requests whose context + continuation exceed the model's window (the harness left-truncates them) and
continuations the harness rejects (empty) are left to the plain path (``group_by_context``); so are, on a
model with sliding-window layers, those longer than the shortest window (``split_by_window``): a window
changes nothing for a sequence that fits it, so reuse is exact on the others.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from steer_plugin.data.prompts import pad_batch
from steer_plugin.model.hooks import RowPlan, SteeringPlan
from steer_plugin.model.positions import Positions
from steer_plugin.steering.generation_nll import LOGITS_BYTES
from steer_plugin.steering.kv_prefix import KVPrefix, ReuseUnsupported, fits_window, shared_start

Answer = tuple[float, bool]  # (log-probability of the continuation, is it the greedy continuation)
Request = tuple[int, Sequence[int], Sequence[int]]  # (index in the caller's list, context, continuation)
UNSTEERED = ("unsteered",)


@dataclass
class TokenCounts:
    """Tokens fed to the model, to compare the plain path with prefix reuse."""

    plain: int = 0  # real tokens of the harness path (what it feeds: ctx+cont[:-1] per distinct request)
    prefix: int = 0  # real tokens of prefix forwards (context[:-1] once per group; a batch's shared start once)
    tail: int = 0  # real tokens of tail forwards (context[-1] + continuation[:-1], per row and configuration)
    slots: int = 0  # positions run including padding, every path

    @property
    def total(self) -> int:
        return self.plain + self.prefix + self.tail

    def as_dict(self) -> dict[str, int]:
        return {"plain": self.plain, "prefix": self.prefix, "tail": self.tail, "total": self.total, "slots": self.slots}


def plain_token_count(
    requests: Sequence[tuple[Any, Sequence[int], Sequence[int]]], max_length: int, logits_cache: bool = True
) -> int:
    """Real tokens HFLM's ``_loglikelihood_tokens`` feeds for these requests (its one-forward-per
    ``context + continuation[:-1]`` grouping included when ``logits_cache``)."""
    seen: set[tuple[int, ...]] = set()
    total = 0
    for _, ctx, cont in requests:
        if logits_cache:
            key = tuple(ctx) + tuple(cont[:-1])
            if key in seen:
                continue
            seen.add(key)
        total += min(len(ctx) + len(cont), max_length + 1) - 1
    return total


# -- configurations ----------------------------------------------------------------------------------
def config_key(plan: SteeringPlan, positions: Positions) -> Hashable:
    """Identity of a steering configuration by what it computes (the deltas, not the file names)."""
    if not plan.active:
        return UNSTEERED
    parts = tuple(
        (l, str(d.dtype), hashlib.sha256(d.detach().to("cpu", torch.float64).numpy().tobytes()).hexdigest())
        for l, d in sorted(plan.deltas.items())
    )
    return (positions, parts)


@dataclass(frozen=True)
class TailConfig:
    """One configuration as prefix reuse runs it."""

    key: Hashable
    plan: SteeringPlan
    positions: Positions

    @classmethod
    def of(cls, plan: SteeringPlan, positions: Positions) -> TailConfig:
        return cls(config_key(plan, positions), plan, positions)

    @property
    def prefix_steered(self) -> bool:
        # positions=all steers the context too; response leaves context[:-1] alone
        return self.plan.active and self.positions != "response"

    @property
    def prefix_key(self) -> Hashable:
        """Configurations with the same prefix key share the prefix KV cache."""
        return self.key if self.prefix_steered else UNSTEERED


# -- grouping ----------------------------------------------------------------------------------------
@dataclass
class Tail:
    """One tail row, ``[context[-1]] + continuation[:-1]``; it scores every continuation that starts
    with ``continuation[:-1]`` (those differ only in their last token)."""

    tokens: list[int]
    members: list[tuple[int, list[int]]] = field(default_factory=list)  # (request index, continuation)


@dataclass
class ContextGroup:
    context: tuple[int, ...]
    tails: list[Tail]

    @property
    def prefix_len(self) -> int:
        return len(self.context) - 1

    @property
    def n_requests(self) -> int:
        return sum(len(t.members) for t in self.tails)


def group_by_context(requests: Sequence[Request], max_length: int) -> tuple[list[ContextGroup], list[int]]:
    """Groups by encoded context (longest prefix first) and the request indices left to the plain path:
    empty context/continuation (the harness asserts on those) and context + continuation longer than
    ``max_length + 1`` (the harness left-truncates those, so the context would differ)."""
    by_ctx: dict[tuple[int, ...], dict[tuple[int, ...], Tail]] = {}
    plain: list[int] = []
    for index, ctx, cont in requests:
        if not ctx or not cont or len(ctx) + len(cont) > max_length + 1:
            plain.append(index)
            continue
        ctx_t = tuple(ctx)
        tails = by_ctx.setdefault(ctx_t, {})
        row = tuple(cont[:-1])
        tail = tails.get(row)
        if tail is None:
            tail = tails[row] = Tail([ctx_t[-1], *row])
        tail.members.append((index, list(cont)))
    groups = [
        ContextGroup(ctx, sorted(tails.values(), key=lambda t: (-len(t.tokens), t.tokens)))
        for ctx, tails in by_ctx.items()
    ]
    groups.sort(key=lambda g: (-len(g.context), g.context))
    return groups, plain


def split_by_window(requests: Sequence[Request], window: int | None) -> tuple[list[Request], list[int]]:
    """The requests whose sequence (``context + continuation[:-1]``, what the model reads) fits a sliding
    window of ``window`` tokens, and the indices of those that do not (the plain path's)."""
    fit: list[Request] = []
    longer: list[int] = []
    for request in requests:
        index, ctx, cont = request
        if fits_window(len(ctx) + len(cont) - 1, window):
            fit.append(request)
        else:
            longer.append(index)
    return fit, longer


def batches(groups: Sequence[ContextGroup], batch_size: int) -> Iterator[list[ContextGroup]]:
    """Up to ``batch_size`` groups per prefix forward; one-token contexts (no prefix) batch apart."""
    batch: list[ContextGroup] = []
    for g in groups:
        if batch and (len(batch) >= batch_size or (batch[0].prefix_len > 0) != (g.prefix_len > 0)):
            yield batch
            batch = []
        batch.append(g)
    if batch:
        yield batch


# -- forwards ----------------------------------------------------------------------------------------
Forward = Callable[..., Any]  # forward(plan, where, **model_inputs) -> model output (no grad, autocast set)


@dataclass
class _Row:
    """One row of a tail forward: some of a group's tails, their shared beginnings once (a trie in DFS
    order), or a single tail (``_chain``). Every node is a tail token; node ``j`` sits at prefix length +
    ``depth[j]`` and sees its group's prefix, its ancestors and itself."""

    group: int  # index of the row's group in the batch
    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)  # each node's parent in the row, -1 for context[-1]
    depth: list[int] = field(default_factory=list)
    paths: list[tuple[int, list[int], list[int]]] = field(default_factory=list)  # (request, continuation, nodes)


def _chain(group: int, tail: Tail) -> _Row:
    n = len(tail.tokens)
    return _Row(group, list(tail.tokens), list(range(-1, n - 1)), list(range(n)),
                [(i, c, list(range(n))) for i, c in tail.members])  # fmt: skip


def _new_nodes(child: dict[tuple[int, int], int], tokens: Sequence[int]) -> int:
    """How many nodes a tail adds to a trie: those after its longest beginning already there."""
    parent = -1
    for k, tok in enumerate(tokens):
        node = child.get((parent, tok))
        if node is None:
            return len(tokens) - k
        parent = node
    return 0


def _tries(group: int, tails: Sequence[Tail], width: int) -> list[_Row]:
    """The tails as tries in rows of at most ``width`` nodes: a new row when the next tail would not fit
    (a tail longer than ``width`` gets a row of its own). Sorted tails are inserted in DFS order."""
    rows: list[_Row] = []
    row = _Row(group)
    child: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    for tail in sorted(tails, key=lambda t: t.tokens):
        if row.tokens and len(row.tokens) + _new_nodes(child, tail.tokens) > width:
            rows.append(row)
            row, child = _Row(group), {}
        nodes, parent = [], -1
        for tok in tail.tokens:
            node = child.get((parent, tok))
            if node is None:
                node = child[parent, tok] = len(row.tokens)
                row.tokens.append(tok)
                row.parents.append(parent)
                row.depth.append(0 if parent < 0 else row.depth[parent] + 1)
            nodes.append(node)
            parent = node
        row.paths += [(i, c, nodes) for i, c in tail.members]
    rows.append(row)
    return rows


@dataclass
class _Chunk:
    """One forward's tail rows: right-padded tokens, what each node sees, and their groups' prefix rows."""

    rows: Sequence[_Row]
    ids: torch.Tensor
    real: torch.Tensor  # [rows, width] bool, False on right padding
    group: torch.Tensor  # [rows] index of each row's group in the batch
    prefix: KVPrefix  # each row's group's prefix, gathered once for every configuration
    depth: torch.Tensor  # [rows, width] long
    visible: torch.Tensor | None  # [rows, width, width] bool: ancestors and self (None: chains, a causal mask)

    @classmethod
    def of(cls, prefix: KVPrefix, rows: Sequence[_Row], device: torch.device, tree: bool) -> _Chunk:
        ids, real, _ = pad_batch([r.tokens for r in rows], 0, "right")
        depth, _, _ = pad_batch([r.depth for r in rows], 0, "right")
        visible = None
        if tree:  # node j sees itself and its parent's ancestors (DFS order: the parent's come first)
            seen: list[tuple[int, int, int]] = []
            for r, row in enumerate(rows):
                ancestors: list[list[int]] = []
                for j, parent in enumerate(row.parents):
                    ancestors.append([*(ancestors[parent] if parent >= 0 else []), j])
                    seen += [(r, j, a) for a in ancestors[j]]
            width = ids.shape[1]
            visible = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)  # padding sees itself
            r_, j_, a_ = torch.tensor(seen).unbind(1)
            visible[r_, j_, a_] = True
            visible = visible.to(device)
        group = torch.tensor([r.group for r in rows], device=device)
        return cls(rows, ids.to(device), real.to(device, torch.bool), group, prefix.rows(group), depth, visible)

    def inputs(self, mask_dtype: torch.dtype) -> dict[str, Any]:
        if self.visible is None:
            return {"input_ids": self.ids, **self.prefix.tail_inputs(self.real)}
        return {"input_ids": self.ids, **self.prefix.tree_inputs(self.depth, self.visible, mask_dtype)}


@dataclass
class Scorer:
    forward: Forward
    model_config: Any
    device: torch.device
    batch_size: int  # rows per forward, as the harness's batch size
    softmax_dtype: torch.dtype | None = None
    logits_to_keep: bool = True
    counts: TokenCounts | None = None  # counting is for benchmarks
    # a group's tails share their beginnings in tree-packed rows, under a 4D mask of this dtype (the model's);
    # None: one row per tail under a 2D mask, for a model that takes no 4D mask (``tree_mask_blocker``)
    mask_dtype: torch.dtype | None = torch.float32
    logits_bytes: int = LOGITS_BYTES  # a forward's float32 logits, at most (one row is always allowed)
    # forwards on one chunk's inputs share the blocks below each plan's first steered layer
    # (``Steerer.sharing_lower_blocks``); None: every configuration runs every block
    sharing_lower_blocks: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
    # run the start a batch's contexts share once: for a ``forward`` that treats rows alike but for their
    # plan (a RowPlan's prefix keeps one row per group); ``window``: the model's shortest sliding window
    share_start: bool = False
    window: int | None = None

    def run_prefix(self, batch: Sequence[ContextGroup], config: TailConfig) -> KVPrefix:
        """The KV cache of the batch's ``context[:-1]``, steered only where the configuration steers it."""
        plan = config.plan if config.prefix_steered else SteeringPlan()
        prefixes = [g.context[:-1] for g in batch]
        start = self._start(prefixes, batch, plan)
        prefix = KVPrefix.run_tokens(
            lambda **inputs: self.forward(plan, None, **inputs),
            self.model_config,
            prefixes,
            self.device,
            logits_to_keep=self.logits_to_keep,
            start=start,
        )
        if self.counts is not None:  # the shared start ran as one row
            rows, width = prefix.mask.shape
            self.counts.prefix += int(prefix.lengths.sum()) - (rows - 1) * start
            self.counts.slots += start + rows * (width - start)
        return prefix

    def _start(self, prefixes: Sequence[Sequence[int]], batch: Sequence[ContextGroup], plan: Any) -> int:
        """The shared start to run once (0: none). A RowPlan steers rows differently; with a sliding window
        the padding between start and rest counts as distance, so the whole width read (start, widest rest,
        longest tail) must fit the window."""
        if not self.share_start or isinstance(plan, RowPlan):
            return 0
        start = shared_start(prefixes)
        if start and self.window is not None:
            read = max(len(p) for p in prefixes) + max(len(t.tokens) for g in batch for t in g.tails)
            if not fits_window(read, self.window):
                return 0
        return start

    def score(
        self, prefix: KVPrefix, batch: Sequence[ContextGroup], configs: Sequence[TailConfig]
    ) -> list[dict[int, Answer]]:
        """Answers for every request of the batch under each of ``configs``, tails in forwards of at most
        ``batch_size`` rows and ``logits_bytes`` of logits; a chunk's rows of the prefix cache are gathered
        once for all configurations."""
        positions = max(1, self.logits_bytes // (4 * self.model_config.get_text_config().vocab_size))
        tree = self.mask_dtype is not None
        if tree:
            rows = [r for gi, g in enumerate(batch) for r in _tries(gi, g.tails, positions)]
        else:
            rows = [_chain(gi, t) for gi, g in enumerate(batch) for t in g.tails]
        rows.sort(key=lambda r: -len(r.tokens))  # less right padding per chunk
        answers: list[dict[int, Answer]] = [{} for _ in configs]
        start = 0
        while start < len(rows):
            n = max(1, min(self.batch_size, positions // len(rows[start].tokens)))
            chunk = _Chunk.of(prefix, rows[start : start + n], self.device, tree)
            start += n
            share = self.sharing_lower_blocks is not None and len(configs) > 1
            with self.sharing_lower_blocks() if share else contextlib.nullcontext():  # type: ignore[misc]
                for config, out in zip(configs, answers):
                    out.update(self._score_chunk(chunk, config))
        return answers

    def _score_chunk(self, chunk: _Chunk, config: TailConfig) -> dict[int, Answer]:
        ids, real, group = chunk.ids, chunk.real, chunk.group
        inputs = chunk.inputs(self.mask_dtype or torch.float32)
        if config.plan.active:
            where = real if config.positions == "response" else None
            # a RowPlan (configurations mixed, config_batching) has one row per prefix row: pick the tails'
            plan = config.plan.take(group) if isinstance(config.plan, RowPlan) else config.plan
            out = self.forward(plan, where, **inputs)
        else:
            out = self.forward(SteeringPlan(), None, **inputs)
        logits = out.logits
        if self.counts is not None:
            self.counts.tail += int(real.sum())
            self.counts.slots += ids.numel()
        if logits.shape[:2] != ids.shape:
            raise ReuseUnsupported(f"the model returned logits {tuple(logits.shape[:2])} for inputs {tuple(ids.shape)}")
        logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        greedy = logp.argmax(dim=-1)
        # every request's path of nodes at once: node j's logits predict continuation[j]
        members = [(r, index, cont, nodes) for r, row in enumerate(chunk.rows) for index, cont, nodes in row.paths]
        at = torch.tensor([[r, n, t] for r, _, cont, nodes in members for n, t in zip(nodes, cont)], device=logp.device)
        picked = logp[at[:, 0], at[:, 1], at[:, 2]]
        hit = greedy[at[:, 0], at[:, 1]] == at[:, 2]
        lengths = [len(cont) for _, _, cont, _ in members]
        # same reduction as HFLM: the gathered log-probs of a continuation, summed
        sums = torch.stack([p.sum() for p in picked.split(lengths)]).tolist()
        alls = torch.stack([h.all() for h in hit.split(lengths)]).tolist()
        return {index: (float(s), bool(a)) for (_, index, _, _), s, a in zip(members, sums, alls)}


def score_groups(
    scorer: Scorer,
    groups: Sequence[ContextGroup],
    configs: Sequence[TailConfig],
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[int, Answer]]:
    """Answers per configuration; all ``configs`` must share one prefix key (one prefix per batch)."""
    if len({c.prefix_key for c in configs}) > 1:
        raise ValueError("configurations with different prefixes cannot share a prefix cache")
    results: list[dict[int, Answer]] = [{} for _ in configs]
    for batch in batches(groups, scorer.batch_size):
        prefix = scorer.run_prefix(batch, configs[0])
        for out, answers in zip(results, scorer.score(prefix, batch, configs)):
            out.update(answers)
        del prefix  # one batch of caches alive at a time
        if on_batch is not None:
            on_batch(sum(g.n_requests for g in batch))
    return results
