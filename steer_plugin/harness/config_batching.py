"""Many steering configurations in one batch: what makes a sweep's cost grow slower than its size.

A sweep evaluates the same requests under K configurations. Decoding a batch of a small model is bound by
reading the weights, so K configurations decoded side by side cost far less than K runs one after another.
Here each batch row carries its own configuration (``RowPlan``: row ``i`` gets its configuration's
``alpha x vector``), exactly: a row computes what its configuration computes alone.

* **Generation** (``generate_mixed``). The harness's ``generate_until`` makes batches of prompts; the first
  configuration of a sweep that reaches a batch generates it under every configuration still to come (the
  same prompts, the same left padding), and each later configuration's ``generate_until`` gets its tokens
  from memory. Per configuration, rows stop when that configuration's batch would stop alone (its stop
  sequences, EOS, ``max_length``), and its tokens are cut there: the harness then decodes and post-processes
  exactly the tokens the one-at-a-time path returns. With ``positions=response`` the prompt is unsteered except
  its last token, so ``prompt[:-1]`` runs once and its KV cache is shared by every configuration's rows
  (on a model with sliding-window layers, when prompt + new tokens fit the shortest window).
  Only greedy decoding batches (sampled tokens would depend on the batch's random draws).
* **Loglikelihood, ``positions=all``** (``score_groups_mixed``): prefix reuse's prefixes and tails of
  several configurations in one forward. (``positions=response`` already shares one unsteered prefix
  across configurations, ``prefix_reuse.score_groups``.)

A mixed batch holds at most ``rows`` rows (``--config-batch-rows``, default 64, never below the batch size):
G configurations x one harness batch of prompts.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from steer_plugin.harness.prefix_reuse import (
    Answer,
    ContextGroup,
    Scorer,
    Tail,
    TailConfig,
    batches,
)
from steer_plugin.model.hooks import DEFAULT_ROWS, RowPlan, Steerer, SteeringPlan
from steer_plugin.steering.kv_prefix import KVPrefix, ReuseUnsupported, accepts_logits_to_keep, fits_window

log = logging.getLogger(__name__)


# -- which configurations, and their answers -----------------------------------------------------------
@dataclass
class ConfigBatcher:
    """The configurations a sweep runs next (in order) and the generations computed for them early."""

    planned: list[TailConfig]
    rows: int = DEFAULT_ROWS  # most rows in one mixed batch
    ready: dict[tuple[Hashable, Hashable], torch.Tensor] = field(default_factory=dict)  # (config, batch) -> tokens

    def riders(self, mine: TailConfig, taken: Callable[[TailConfig], bool] = lambda c: False) -> list[TailConfig]:
        """Configurations planned after ``mine`` (one per distinct computation) that ``taken`` does not exclude;
        none when ``mine`` is not planned (a plain evaluation)."""
        keys = [c.key for c in self.planned]
        if mine.key not in keys:
            return []
        seen = {mine.key}
        out = []
        for c in self.planned[keys.index(mine.key) + 1 :]:
            if c.key not in seen and not taken(c):
                seen.add(c.key)
                out.append(c)
        return out


def batch_key(context: torch.Tensor, max_length: int, stop: Sequence[str], kwargs: dict[str, Any]) -> Hashable:
    """Identity of one ``_model_generate`` call by all of its inputs."""
    h = hashlib.sha256(context.detach().cpu().numpy().tobytes())
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        h.update(mask.detach().cpu().numpy().tobytes())
    rest = repr(sorted((k, repr(v)) for k, v in kwargs.items() if k != "attention_mask"))
    return (tuple(context.shape), h.hexdigest(), int(max_length), tuple(stop), rest)


def hflm_generation_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """HFLM._model_generate's normalisation of the generation settings: temperature 0 (the default) -> greedy."""
    kwargs = dict(kwargs)
    kwargs["temperature"] = kwargs.get("temperature", 0.0)
    if kwargs["temperature"] == 0.0 and kwargs.get("do_sample") is None:
        kwargs["do_sample"] = False
    if kwargs.get("do_sample") is False and kwargs["temperature"] == 0.0:
        kwargs.pop("temperature")
    return kwargs


def greedy_kwargs(kwargs: dict[str, Any], generation_config: Any) -> dict[str, Any] | None:
    """``hflm_generation_kwargs``, or None unless the decoding is greedy with one sequence per prompt
    (sampling draws and beams depend on the batch)."""
    kwargs = hflm_generation_kwargs(kwargs)
    if kwargs.get("do_sample") is not False:
        return None
    for name in ("num_beams", "num_return_sequences"):
        if (kwargs.get(name) or getattr(generation_config, name, 1) or 1) != 1:
            return None
    return kwargs


# -- generation ----------------------------------------------------------------------------------------
class ConfigStop:
    """Stopping criterion of a mixed batch: configuration ``g`` owns rows ``g*n .. (g+1)*n-1`` and stops where
    its batch would stop alone: the harness's stop-sequence criteria on its rows (a fresh set per
    configuration; they stop a batch once all its rows saw one stop sequence), or every row at EOS. Its rows
    are then finished (HF pads them) and ``stopped_at[g]`` is its number of new tokens."""

    def __init__(self, make_criteria: Callable[[], Any], n_configs: int, rows: int, eos: torch.Tensor | None):
        self.rows = rows
        self.criteria = [make_criteria() for _ in range(n_configs)]
        self.eos = eos
        self.stopped_at: list[int | None] = [None] * n_configs
        self.prompt_len: int | None = None
        self.finished: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if self.finished is None:
            self.finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.eos is not None:
            self.finished |= torch.isin(input_ids[:, -1], self.eos.to(input_ids.device))
        for g, criteria in enumerate(self.criteria):
            rows = slice(g * self.rows, (g + 1) * self.rows)
            if self.stopped_at[g] is not None:
                continue
            # as HF does alone: a row is finished once a criterion says so for it (the harness's say so
            # for the whole batch at once) or it made EOS; the batch stops when all its rows are finished
            self.finished[rows] |= criteria(input_ids[rows], scores).to(self.finished.device)
            if bool(self.finished[rows].all()):
                self.stopped_at[g] = input_ids.shape[1] - int(self.prompt_len or 0)
                self.finished[rows] = True
        return self.finished.clone()


class RowFinite:
    """Logits processor that notes which rows' next-token scores turned nan/+inf (an overflowed steered
    residual stream). A configuration alone stops with an error there; mixed, only its own rows are affected
    (rows never mix), so it is recorded and that configuration runs alone later, where the error is raised."""

    def __init__(self, rows: int) -> None:
        self.bad = torch.zeros(rows, dtype=torch.bool)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.bad |= (torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1)).cpu()
        return scores


@dataclass
class MixedGeneration:
    """What ``generate_mixed`` needs from the model wrapper."""

    steerer: Steerer
    tokenizer: Any
    make_criteria: Callable[[int, int], Any]  # (prompt length, rows) -> the harness's stop criteria for a batch
    pad_token_id: int | None
    share_prefix: bool  # positions=response: run prompt[:-1] once (needs an expandable KV cache)
    rows: int = DEFAULT_ROWS
    window: int | None = None  # the model's shortest sliding window: longer generations do not share the prefix
    longer_than_window: int = 0  # prompts generated so far without it for that reason


def _eos_tensor(model: Any, kwargs: dict[str, Any]) -> torch.Tensor | None:
    eos = kwargs.get("eos_token_id", getattr(model.generation_config, "eos_token_id", None))
    if eos is None:
        return None
    return torch.tensor(eos if isinstance(eos, (list, tuple)) else [eos], dtype=torch.long)


def _prefix_cache(model: Any, context: torch.Tensor, mask: torch.Tensor | None) -> KVPrefix:
    """KV cache of ``context[:, :-1]`` (left-padded), unsteered: generation continues from it with the last
    prompt token, steered (``positions=response``)."""
    ids = context[:, :-1]
    real = mask[:, :-1] if mask is not None else torch.ones_like(ids)
    return KVPrefix.run(model, model.config, ids, real, logits_to_keep=accepts_logits_to_keep(model))


def _groups(configs: Sequence[TailConfig]) -> list[tuple[str, list[int]]]:
    """Configuration indices by how their prompt is steered: ``response`` (prefill steered at the last token)
    and ``all``; unsteered ones join the response group when there is one (any group computes them exactly)."""
    response = [i for i, c in enumerate(configs) if c.plan.active and c.positions == "response"]
    full = [i for i, c in enumerate(configs) if c.plan.active and c.positions != "response"]
    idle = [i for i, c in enumerate(configs) if not c.plan.active]
    if response or not full:
        response += idle
    else:
        full += idle
    return [(name, sorted(g)) for name, g in (("response", response), ("all", full)) if g]


def generate_mixed(
    gen: MixedGeneration,
    configs: Sequence[TailConfig],
    context: torch.Tensor,
    max_length: int,
    stop: list[str],
    kwargs: dict[str, Any],
) -> list[torch.Tensor | None]:
    """Greedy generation of one harness batch under every configuration: per configuration the token tensor
    its own ``_model_generate`` returns (None where its scores turned non-finite). ``kwargs``: normalised by
    ``greedy_kwargs``, with the batch's ``attention_mask``."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    model = gen.steerer.model
    n, width = context.shape
    mask = kwargs.pop("attention_mask", None)
    eos = _eos_tensor(model, kwargs)
    most = max(1, gen.rows // n)
    out: list[torch.Tensor | None] = [None] * len(configs)
    for positions, members in _groups(configs):
        per_batch = -(-len(members) // -(-len(members) // most))  # as even as the budget allows: 11 -> 6 + 5
        shared = None
        if positions == "response" and gen.share_prefix and width > 1:
            if not fits_window(max_length, gen.window):  # prompt + new tokens may outgrow it: prefill the prompt
                gen.longer_than_window += n
            else:
                try:
                    with torch.no_grad():
                        shared = _prefix_cache(model, context, mask)
                except ReuseUnsupported as e:  # never generate from a broken cache: prefill the whole prompt
                    log.warning("prompt prefix not shared (%s)", e)
        for start in range(0, len(members), per_batch):
            part = members[start : start + per_batch]
            g = len(part)
            stopper = ConfigStop(lambda: gen.make_criteria(width, n), g, n, eos)
            stopper.prompt_len = width
            finite = RowFinite(g * n)
            extra: dict[str, Any] = {}
            if mask is not None:
                extra["attention_mask"] = mask.repeat(g, 1)
            if shared is not None:
                extra["cache"] = shared.repeated(g).fresh_cache()  # row j*n+i: prompt i of configuration j
            plan = RowPlan.stack([configs[i].plan for i in part], repeat=n)
            tokens = gen.steerer.generate(
                plan,
                "last" if positions == "response" else None,
                check_finite=False,
                input_ids=context.repeat(g, 1),
                max_length=max_length,
                stopping_criteria=StoppingCriteriaList([stopper]),
                logits_processor=LogitsProcessorList([finite]),
                pad_token_id=gen.pad_token_id,
                use_cache=True,
                **extra,
                **kwargs,
            )
            for j, i in enumerate(part):
                rows = slice(j * n, (j + 1) * n)
                if configs[i].plan.active and bool(finite.bad[rows].any()):
                    continue
                stopped = stopper.stopped_at[j]
                new = stopped if stopped is not None else tokens.shape[1] - width
                out[i] = tokens[rows, : width + new]
    return out


# -- loglikelihood, positions=all ----------------------------------------------------------------------
def _offset(group: ContextGroup, by: int) -> ContextGroup:
    return ContextGroup(group.context, [Tail(t.tokens, [(i + by, c) for i, c in t.members]) for t in group.tails])


def score_groups_mixed(
    scorer: Scorer,
    groups: Sequence[ContextGroup],
    configs: Sequence[TailConfig],
    rows: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict[int, Answer]]:
    """``prefix_reuse.score_groups`` for configurations that steer their prefixes (``positions=all``), several
    configurations per forward: each batch of groups is repeated once per configuration, prefix rows and
    tail rows carrying their configuration's deltas; at most ``rows`` rows per forward."""
    results: list[dict[int, Answer]] = [{} for _ in configs]
    if not groups:
        return results
    span = 1 + max(i for g in groups for t in g.tails for i, _ in t.members)
    mixed = replace(scorer, batch_size=max(rows, scorer.batch_size))
    per_pass = max(1, min(len(configs), rows))
    for first in range(0, len(configs), per_pass):
        part = list(range(first, min(first + per_pass, len(configs))))
        for batch in batches(groups, max(1, rows // len(part))):
            repeated = [_offset(g, j * span) for j in range(len(part)) for g in batch]
            plan = RowPlan.stack([configs[i].plan if configs[i].plan.active else SteeringPlan() for i in part],
                                 repeat=len(batch))  # fmt: skip
            config = TailConfig(("mixed",), plan, "all")  # type: ignore[arg-type]
            prefix = mixed.run_prefix(repeated, config)
            [answers] = mixed.score(prefix, repeated, [config])
            del prefix
            for index, answer in answers.items():
                j, i = divmod(index, span)
                results[part[j]][i] = answer
            if on_batch is not None and first == 0:
                on_batch(sum(g.n_requests for g in batch))
    return results
