"""``steered_hf``: lm-eval's HFLM with ``alpha x vector`` added to the residual stream.

Everything HFLM accepts still works; on top: ``vector`` (file, or several joined by ``;``), ``alpha``
(one, or one per vector joined by ``;``), ``layers`` (``all`` or 0-based ``0;3;5-9`` - inside
``--model_args`` commas separate arguments, so use ``;`` there), ``positions`` (``all``|``response``),
``backend`` (``nnsight``|``hooks``), ``blocks`` (module path of the decoder blocks, if needed) and
``prefix_reuse`` (``true``|``false``, default true: score all continuations of a shared context against
one KV cache of it, see ``prefix_reuse.py``; ``false`` is HFLM's own loop, bit for bit). ``pretrained`` may
be a GGUF file (``dir/m.gguf``), the same as HFLM's ``pretrained=dir,gguf_file=m.gguf`` (loaded dequantized).

Steering enters where lm-eval designs for it: ``_model_call`` (scoring: HFLM's own loop, steered forwards) and
``_model_generate`` (HFLM's own generate inside the steering hooks or trace). On top, and around HFLM's methods:
prefix reuse and a sweep's look ahead (``_loglikelihood_tokens``), identical greedy requests generated once
(``generate_until``), timers, and the steering in the results (``get_model_info``).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils_hf import stop_sequences_criteria
from transformers import PreTrainedModel

from steer_plugin.errors import SteerError
from steer_plugin.harness.config_batching import MixedGeneration
from steer_plugin.harness.lookahead import GenerationBatch, Lookahead, generate_ahead
from steer_plugin.harness.prefix_reuse import Answer, Scorer, TailConfig, TokenCounts, plain_token_count
from steer_plugin.harness.response_rows import ResponseSpans
from steer_plugin.harness.results_info import (
    ResolvedSteering,
    ReuseRecord,
    steering_record,
    warn_other_model,
)
from steer_plugin.harness.reuse_dispatch import ReuseCall, TokenRequest
from steer_plugin.harness.steering_args import (
    AlphaArg,
    LayersArg,
    SteeringArgs,
    VectorArg,
    check_unknown_args,
    repair_layer_args,
)
from steer_plugin.model.gguf import is_gguf, split_gguf, with_gguf_file
from steer_plugin.model.hooks import NON_FINITE, Steerer, SteeringPlan, Where, make_plan
from steer_plugin.model.layers import parse_layers
from steer_plugin.model.loading import ModelOptions, check_loaded_weights, named_after_file, no_eos_token
from steer_plugin.model.positions import Positions
from steer_plugin.steering.config import SteeringConfig
from steer_plugin.steering.kv_prefix import (
    ReuseUnsupported,
    accepts_logits_to_keep,
    reuse_blocker,
    reuse_window,
    tree_mask_blocker,
)

log = logging.getLogger(__name__)
# HFLM's own arguments: never taken for misspelt steering ones (check_unknown_args)
_HFLM_ARGS = frozenset(inspect.signature(HFLM.__init__).parameters) - {"self", "kwargs"}
Steering = SteeringConfig | SteeringArgs  # a sweep's configuration, or --model_args' steering checked


def _greedy_key(req: Instance) -> tuple[str, str] | None:
    """(context, settings) of a greedy generate_until request; None for a sampled one (HFLM's rule:
    greedy when do_sample is False, or unset with temperature 0 or unset)."""
    context, kwargs = req.args[0], req.args[1] if len(req.args) > 1 else {}
    if not isinstance(context, str) or not isinstance(kwargs, dict):
        return None
    do_sample, temperature = kwargs.get("do_sample"), kwargs.get("temperature")
    if do_sample or (do_sample is None and temperature not in (None, 0, 0.0)):
        return None
    return context, json.dumps(kwargs, sort_keys=True, default=str)


@register_model("steered_hf")
class SteeredHFLM(HFLM):
    """HFLM whose forward passes (loglikelihood, rolling loglikelihood, generation) are steered."""

    def __init__(
        self,
        pretrained: str | PreTrainedModel | None = None,
        vector: VectorArg = None,
        alpha: AlphaArg | None = None,  # None: 1.0 with a vector
        layers: LayersArg = "all",
        positions: str = "all",
        backend: str = "nnsight",
        blocks: str | None = None,
        prefix_reuse: bool | str = True,
        **kwargs: Any,
    ) -> None:
        # every steering argument is checked before the model loads (minutes for a big one)
        layers = repair_layer_args(layers, kwargs)
        check_unknown_args(kwargs, _HFLM_ARGS)
        args = SteeringArgs.from_model_args(vector, alpha, layers, positions, backend, blocks, prefix_reuse)
        gguf_name = None
        if isinstance(pretrained, str) and (is_gguf(pretrained) or kwargs.get("gguf_file")):
            gguf_name = with_gguf_file(pretrained, kwargs.pop("gguf_file", None))
            pretrained, kwargs["gguf_file"] = split_gguf(gguf_name)  # a missing or broken file: one line, now
        self._batch_size_as: int | str | None = None  # see batch_size_as
        self._blocks = args.blocks  # _create_model checks the weights of these blocks
        super().__init__(pretrained=pretrained, **kwargs)
        if gguf_name:
            named_after_file(self.model, gguf_name)
        self.gguf_file: str | None = kwargs.get("gguf_file")
        self.prefix_reuse = args.prefix_reuse
        self._rolling = False  # inside loglikelihood_rolling: no context in its windows, response == all
        self._spans: ResponseSpans | None = None  # positions=response on HFLM's loop: the rows' steered spans
        self.token_counts: TokenCounts | None = None  # set one to count the tokens fed (benchmarks)
        self.reuse_blocker: str | None = reuse_blocker(self.model) if self.backend == "causal" else "seq2seq model"
        if self.prefix_reuse and self.reuse_blocker:
            log.info("prefix reuse off for this model: %s", self.reuse_blocker)
        # sliding-window layers: sequences longer than the window take the plain path (counted per configuration)
        self.reuse_window: int | None = None if self.reuse_blocker else reuse_window(self.model)
        # a group's tails share their beginnings in one row under a 4D mask, or take a row each without one
        self.tree_blocker: str | None = None if self.reuse_blocker else tree_mask_blocker(self.model)
        if self.prefix_reuse and self.tree_blocker:
            log.info("prefix reuse scores one row per continuation for this model: %s", self.tree_blocker)
        self.lookahead = Lookahead()  # a sweep's configurations to come, see plan_ahead
        self.steerer = Steerer(self.model, args.backend, self._blocks)
        self.configure(args)

    def _create_model(self, pretrained: str, **kwargs: Any) -> None:
        """HFLM's loading, refusing (one line) weights that do not cover the model, as ``ModelOptions.load``
        does: the config's layers against the safetensors headers first, then transformers' loading report
        (HFLM's adapters, quantized loaders and GGUF files load as HFLM loads them)."""
        other = ("peft", "delta", "autogptq", "gptqmodel", "gguf_file", "subfolder")
        if any(kwargs.get(k) for k in other):
            super()._create_model(pretrained, **kwargs)
            return
        revision = kwargs.get("revision")
        trust = bool(kwargs.get("trust_remote_code"))
        ModelOptions(pretrained, revision=revision, trust_remote_code=trust, blocks=self._blocks).check_checkpoint()
        super()._create_model(pretrained, **kwargs, output_loading_info=True, ignore_mismatched_sizes=True)
        loaded: Any = self.__dict__["_model"]  # (model, loading report): output_loading_info
        self._model, info = loaded
        check_loaded_weights(pretrained, self._model, info, self._blocks)

    # -- configuration (also used by sweeps: no model reload) ----------------------------------------
    def configure(
        self,
        vector: Steering | VectorArg = None,
        alpha: AlphaArg = 1.0,
        layers: LayersArg = "all",
        positions: str = "all",
        steer_backend: str | None = None,
    ) -> None:
        """Switch steering without reloading the model.

        Args:
            vector: a ``SteeringConfig`` (a sweep's configuration) or ``SteeringArgs`` (then ``alpha``, ``layers``
                and ``positions`` are its own and the ones given here are not used), or as in ``--model_args``:
                a vector file or ``SteeringVector``, several joined by ``;`` or in a list; None: unsteered.
            alpha: one, or one per vector (joined by ``;``, or a list).
            layers: ``all``, ``middle`` or 0-based ``0;3;5-9`` (also with commas), or indices.
            positions: ``all`` or ``response``.
            steer_backend: ``nnsight`` or ``hooks``; None keeps the current one.
        """
        self.longer_than_window = {"loglikelihood": 0, "generate_until": 0}  # this configuration's, see get_model_info
        # seconds spent per request type since loading (a sweep records each configuration's share)
        self.seconds = {"loglikelihood": 0.0, "generate_until": 0.0}
        if steer_backend is not None:
            self.steerer = Steerer(self.model, steer_backend, self._blocks)
        if not isinstance(vector, (SteeringConfig, SteeringArgs)):
            vector = SteeringArgs.parse(vector, alpha, layers, positions)
        resolved = self.resolve(vector)
        self.plan: SteeringPlan = resolved.plan
        self.positions: Positions = resolved.positions
        pretrained = getattr(self, "pretrained", "")
        warn_other_model(resolved.vectors, self.model, self.model.name_or_path if self.gguf_file else str(pretrained))
        self.steering_config = steering_record(
            resolved, self.steerer.backend, self.steerer.block_path, len(self.steerer.blocks)
        )

    def resolve(self, steering: Steering) -> ResolvedSteering:
        """Check one configuration and place its deltas on the model (its plan and positions, without switching to
        it: a sweep measures the side effects of the configurations to come with them)."""
        args = SteeringArgs.of(steering) if isinstance(steering, SteeringConfig) else steering
        chosen = parse_layers(args.layers, len(self.steerer.blocks))
        vectors, alphas = list(args.vectors), list(args.alphas)
        plan = make_plan(vectors, alphas, self.model, self.steerer.block_path, chosen) if vectors else SteeringPlan()
        return ResolvedSteering(vectors, alphas, chosen, args.positions, plan)

    def plan_ahead(self, configs: Sequence[Steering], config_batching: bool = True, rows: int | None = None) -> None:
        """Announce the configurations a sweep will ``configure`` next.

        With prefix reuse, the loglikelihood call of one of them also scores the others that share its
        prefix cache (alpha 0 and every ``positions=response`` configuration share the unsteered one), so
        that cache is computed once for the sweep; their answers wait in memory (two numbers per request)
        until they are configured. With config batching, greedy generation (and ``positions=all``
        loglikelihood with prefix reuse) of the configurations still to come runs in mixed batches, see
        ``config_batching.py``.

        Args:
            configs: each a ``SteeringConfig`` or ``SteeringArgs``; ``[]`` forgets all.
            config_batching: mix the configurations still to come into the same batches.
            rows: the most rows in one mixed batch (default 64, never below the batch size).
        """
        self.lookahead = Lookahead()
        planned = [TailConfig.of(r.plan, r.positions) for r in map(self.resolve, configs)]
        self.lookahead = Lookahead.of(planned, config_batching, rows, self.batch_size)

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["steering"] = self.steering_config
        record = ReuseRecord(self.prefix_reuse, self.reuse_blocker, self.reuse_window)
        info["prefix_reuse"] = record.as_dict(self.longer_than_window)
        return info

    @property
    def reuse_active(self) -> bool:
        return self.prefix_reuse and self.reuse_blocker is None and self.backend == "causal"

    # -- batch size ----------------------------------------------------------------------------------
    @property
    def batch_size(self) -> Any:
        return super().batch_size if self._batch_size_as is None else self._batch_size_as

    @contextlib.contextmanager
    def batch_size_as(self, size: int | None) -> Iterator[None]:
        """The harness's batch size is ``size`` (None: as it is) while the block runs; HFLM's own setting stays."""
        before, self._batch_size_as = self._batch_size_as, size if size is not None else self._batch_size_as
        try:
            yield
        finally:
            self._batch_size_as = before

    # -- forward passes ------------------------------------------------------------------------------
    def _steered_forward(self, plan: SteeringPlan, where: Where, **inputs: Any) -> Any:
        with (
            torch.no_grad(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.mixed_precision_dtype,
                enabled=self.mixed_precision_dtype is not None,
            ),
        ):
            return self.steerer.forward(plan, where, **inputs)

    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.token_counts is not None:
            self.token_counts.slots += inps.numel()
        if not self.plan.active or attn_mask is not None or labels is not None:
            return super()._model_call(inps, attn_mask, labels)
        where = None if self._spans is None else self._spans.where(inps)
        return self._steered_forward(self.plan, where, input_ids=inps).logits

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any
    ) -> torch.Tensor:
        if self.lookahead.batcher is not None:
            tokens = self._generate_ahead(GenerationBatch(context, max_length, stop, generation_kwargs))
            if tokens is not None:
                return tokens
        if not self.plan.active:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        hflm_generate = super()._model_generate

        def generate(input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return hflm_generate(input_ids, max_length, stop, **kwargs)

        # positions=response: the last prompt token in the prefill, then every generated token
        where = "last" if self.positions == "response" else None
        return self.steerer.generate(self.plan, where, generate_fn=generate, input_ids=context, **generation_kwargs)

    def _generate_ahead(self, batch: GenerationBatch) -> torch.Tensor | None:
        """This batch's tokens from a mixed batch of this configuration and the ones to come (config batching);
        None: generate it alone."""
        assert self.lookahead.batcher is not None

        def mixed() -> MixedGeneration:
            return MixedGeneration(
                self.steerer,
                self.tokenizer,
                lambda width, rows: stop_sequences_criteria(self.tokenizer, batch.stop, width, rows),
                self.tokenizer.pad_token_id,
                share_prefix=self.reuse_active,
                rows=self.lookahead.batcher.rows,  # type: ignore[union-attr]
                window=self.reuse_window,
            )

        mine = TailConfig.of(self.plan, self.positions)
        with torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        ):
            tokens, gen = generate_ahead(self.lookahead.batcher, mine, batch, self.model.generation_config, mixed)
        if gen is None:
            return tokens
        self.longer_than_window["generate_until"] += gen.longer_than_window
        if tokens is None:
            raise SteerError(NON_FINITE)
        return tokens

    # -- requests ------------------------------------------------------------------------------------
    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        self._rolling = True  # no context in rolling windows: response == all
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm)
        finally:
            self._rolling = False

    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[Answer]:
        started = time.monotonic()
        try:
            return self._finite(self._loglikelihood_answers(requests, disable_tqdm, override_bs))
        finally:
            self.seconds["loglikelihood"] += time.monotonic() - started

    def _finite(self, answers: list[Answer]) -> list[Answer]:
        """A steered score that is nan/inf comes from an overflowed residual stream: fail, never score it.
        (log_softmax of finite logits is finite, so this checks the logits the answers came from.)"""
        if self.plan.active and not all(math.isfinite(a[0]) for a in answers):
            raise SteerError(NON_FINITE)
        return answers

    def _loglikelihood_answers(
        self, requests: list[TokenRequest], disable_tqdm: bool, override_bs: int | None
    ) -> list[Answer]:
        if self.reuse_active and not self._rolling and override_bs is None:
            try:
                return self._loglikelihood_reuse(requests, disable_tqdm)
            except ReuseUnsupported as e:  # found out while running: never return answers from a broken cache
                log.warning("prefix reuse switched off for this model (%s); scoring on the plain path", e)
                self.reuse_blocker, self.lookahead.ahead = str(e), {}
        return self._loglikelihood_plain(requests, disable_tqdm, override_bs)

    def _loglikelihood_plain(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[Answer]:
        """HFLM's own loop; with ``positions=response`` each call of it gets the rows' steered spans."""
        response = self.plan.active and self.positions == "response" and not self._rolling
        if self.backend != "causal" or not response:
            if self.backend == "causal" and self.token_counts is not None:
                self.token_counts.plain += plain_token_count(requests, self.max_length, self.logits_cache)
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        answers: list[Any] = [None] * len(requests)
        for indices, spans in ResponseSpans.partition(requests, self.max_length):
            part = [requests[i] for i in indices]
            if self.token_counts is not None:
                self.token_counts.plain += plain_token_count(part, self.max_length, self.logits_cache)
            self._spans = spans
            try:
                for i, a in zip(indices, super()._loglikelihood_tokens(part, disable_tqdm, override_bs)):
                    answers[i] = a
            finally:
                self._spans = None
        return answers

    # -- prefix reuse --------------------------------------------------------------------------------
    def _reuse_scorer(self, requests: list[TokenRequest]) -> Scorer:
        batch_size = self.batch_size
        if batch_size == "auto":
            longest = max(range(len(requests)), key=lambda i: len(requests[i][1]) + len(requests[i][2]))
            batch_size = max(1, int(self._detect_batch_size(requests, longest)))
        return Scorer(
            self._steered_forward,
            self.model.config,
            self.device,
            int(batch_size),
            self.softmax_dtype,
            accepts_logits_to_keep(self.model),
            self.token_counts,
            mask_dtype=None if self.tree_blocker else self.model.dtype,
            sharing_lower_blocks=self.steerer.sharing_lower_blocks,
            share_start=True,  # the steerer adds a plan's deltas at every row alike (RowPlans are refused)
            window=self.reuse_window,
        )

    def _loglikelihood_reuse(self, requests: list[TokenRequest], disable_tqdm: bool) -> list[Answer]:
        """Group by encoded context, run each context once, score its continuations on its KV cache."""
        from tqdm import tqdm

        call = ReuseCall(
            TailConfig.of(self.plan, self.positions),
            self.lookahead,
            self.max_length,
            self.reuse_window,
            self._reuse_scorer,
            lambda reqs: self._loglikelihood_plain(reqs, disable_tqdm),
            lambda total, desc: tqdm(total=total, disable=(disable_tqdm or self.rank != 0), desc=desc),
        )
        answers, plain, longer = call.run(requests)
        self.longer_than_window["loglikelihood"] += longer
        plain_set = set(plain)
        for i, (request_str, _, _) in enumerate(requests):
            if request_str is not None and i not in plain_set:
                self.cache_hook.add_partial("loglikelihood", request_str, answers[i])
        return answers

    # -- generation ----------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Identical greedy requests are generated once: the steer_emotion_* tasks share their prompts and
        settings, so a sweep over several emotions generates each prompt once per configuration, not once
        per emotion task. Sampled requests are all generated."""
        if requests and self.eot_token_id is None:  # HFLM would stop at its decoded None: a TypeError
            raise no_eos_token(self.model.name_or_path, sorted({r.task_name or "generate_until" for r in requests}))
        started = time.monotonic()
        try:
            return self._generate_distinct(requests, disable_tqdm)
        finally:
            self.seconds["generate_until"] += time.monotonic() - started

    def _generate_distinct(self, requests: list[Instance], disable_tqdm: bool) -> list[str]:
        first: dict[tuple[str, str], int] = {}
        unique: list[Instance] = []
        slot: list[int] = []
        for req in requests:
            key = _greedy_key(req)
            if key is not None and key in first:
                slot.append(first[key])
                continue
            if key is not None:
                first[key] = len(unique)
            slot.append(len(unique))
            unique.append(req)
        if len(unique) == len(requests):
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        out = super().generate_until(unique, disable_tqdm=disable_tqdm)
        return [out[i] for i in slot]
