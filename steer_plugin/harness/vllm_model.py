"""``steered_vllm``: lm-eval's VLLM with ``alpha x vector`` added to the residual stream, each request with its own.

The steering arguments are ``steered_hf``'s, with the same meaning (``vector``, ``alpha``, ``layers``,
``positions``, ``blocks``; see ``steering_args.py``); everything else goes to lm-eval's ``VLLM`` and on to vLLM
(``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ...).

How: ``SteeringWorker`` (``vllm_worker.py``) is vLLM's worker extension; each configuration's per-layer deltas go
to the workers once (by fingerprint), and every request carries its configuration and first steered position in
``SamplingParams.extra_args``, so one vLLM batch may mix configurations (``generate_mixed``). ``positions=response``
steers, as in ``steered_hf``, the last context token and the continuation (loglikelihood), or the last prompt token
and every generated token (generation). The forward hooks need eager mode (``enforce_eager=True``, forced) and the
V1 model runner.

No cache serves the wrong steering: vLLM's prefix cache keys KV blocks by their tokens, so a steered request gets
a cache salt made of its plan's fingerprint and its first steered position (``cache_salt``): it shares KV only with
requests steered alike from the same position; unsteered requests keep sharing with one another, as in ``vllm``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.vllm_causallms import VLLM
from vllm import SamplingParams, TokensPrompt

from steer_plugin.errors import SteerError
from steer_plugin.harness.results_info import ResolvedSteering, steering_record
from steer_plugin.harness.steering_args import (
    AlphaArg,
    LayersArg,
    SteeringArgs,
    VectorArg,
    parse_bool,
    repair_layer_args,
)
from steer_plugin.harness.vllm_worker import STEER_KEY, pack_deltas
from steer_plugin.model.hooks import SteeringPlan, layer_deltas
from steer_plugin.model.layers import parse_layers
from steer_plugin.model.positions import Positions
from steer_plugin.steering.config import SteeringConfig

WORKER = "steer_plugin.harness.vllm_worker.SteeringWorker"
TokenRequest = tuple[Any, list[int], list[int]]  # (cache key, context tokens, continuation tokens), as lm-eval has them


def plan_fingerprint(deltas: dict[int, torch.Tensor]) -> str:
    """Names a plan by its content: equal deltas on equal layers, equal name (what the workers key plans by)."""
    digest = hashlib.sha256()
    for layer in sorted(deltas):
        digest.update(str(layer).encode())
        digest.update(deltas[layer].to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def cache_salt(fingerprint: str, start: int) -> str | None:
    """The prefix-cache salt of a request steered by ``fingerprint`` from position ``start`` on: KV blocks are shared
    only between requests whose every position was steered alike."""
    return f"steer_plugin:{fingerprint}:{start}"


@dataclass(frozen=True)
class VLLMSteering:
    """One configuration as the workers know it: its plan's fingerprint (None: unsteered) and where it steers."""

    fingerprint: str | None
    positions: Positions

    def start(self, tokens: Sequence[int], generate: bool, response_start: int | None = None) -> int:
        """The first steered position of a request: 0 (``all``), the last prompt token (generation), or the last
        context token (``response_start``, loglikelihood)."""
        if self.positions == "all":
            return 0
        if generate:
            return len(tokens) - 1
        if response_start is None:
            raise RuntimeError("steered_vllm: a positions=response scoring request without its context length")
        return response_start

    def request(self, tokens: list[int], params: SamplingParams, start: int) -> tuple[TokensPrompt, SamplingParams]:
        """vLLM's prompt and sampling parameters of one request under this configuration."""
        if self.fingerprint is None:
            return TokensPrompt(prompt_token_ids=tokens), params
        prompt = TokensPrompt(prompt_token_ids=tokens)
        salt = cache_salt(self.fingerprint, start)
        if salt is not None:
            prompt["cache_salt"] = salt
        steered = params.clone()
        steered.extra_args = {**(params.extra_args or {}), STEER_KEY: {"plan": self.fingerprint, "start": start}}
        return prompt, steered


def response_starts(requests: Sequence[TokenRequest], max_length: int) -> list[tuple[list[int], dict[tuple, int]]]:
    """lm-eval's VLLM scores ``(context + continuation)[-max_length:]`` with ``ctxlen`` context tokens left; the first
    steered position is the last context token, ``ctxlen - 1``. Requests by index in as few parts as keep one row's
    tokens to one start (the same tokens split otherwise between context and continuation go to another part)."""
    parts: list[tuple[list[int], dict[tuple, int]]] = []
    for i, (_, ctx, cont) in enumerate(requests):
        tokens = tuple((ctx + cont)[-max_length:])
        ctxlen = len(ctx) - max(0, len(ctx) + len(cont) - max_length)
        start = max(ctxlen - 1, 0)
        part = next((p for p in parts if p[1].get(tokens, start) == start), None)
        if part is None:
            part = ([], {})
            parts.append(part)
        part[0].append(i)
        part[1][tokens] = start
    return parts


@register_model("steered_vllm")
class SteeredVLLM(VLLM):
    """lm-eval's VLLM whose requests (loglikelihood, rolling loglikelihood, generation) are steered."""

    def __init__(
        self,
        pretrained: str,
        vector: VectorArg = None,
        alpha: AlphaArg | None = None,  # None: 1.0 with a vector
        layers: LayersArg = "all",
        positions: str = "all",
        blocks: str | None = None,
        **kwargs: Any,
    ) -> None:
        # every steering argument is checked before the engine starts (minutes for a big model)
        layers = repair_layer_args(layers, kwargs)
        args = SteeringArgs.from_model_args(vector, alpha, layers, positions, blocks=blocks)
        if int(kwargs.get("data_parallel_size", 1)) > 1:
            raise SteerError(
                "steered_vllm does not take data_parallel_size > 1: lm-eval runs each replica as a bare vLLM engine "
                "in a Ray actor, which the steering worker and its vectors never reach; use tensor_parallel_size"
            )
        if not parse_bool(kwargs.get("enforce_eager", True), "enforce_eager"):
            raise SteerError("steered_vllm needs enforce_eager=True: its forward hooks do not run in captured graphs")
        if kwargs.get("worker_extension_cls", WORKER) != WORKER:
            raise SteerError(f"steered_vllm sets worker_extension_cls={WORKER}; it cannot take another")
        kwargs.update(enforce_eager=True, worker_extension_cls=WORKER)
        # the steering worker reads the V1 model runner's batch layout (vLLM picks V2 by default on GPUs)
        os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
        super().__init__(pretrained=pretrained, **kwargs)
        installed = self.model.collective_rpc("steer_install", args=(args.blocks,))[0]
        self.block_path: str = installed["block_path"]
        self.n_layers: int = installed["n_layers"]
        self.dtype: torch.dtype = getattr(torch, installed["dtype"].removeprefix("torch."))
        self._sent: set[str] = set()  # plans the workers have
        self._rolling = False  # inside loglikelihood_rolling: no context in its windows, response == all
        self._response_starts: dict[tuple, int] | None = None  # positions=response scoring: tokens -> first steered
        self.configure(args)

    # -- configurations ------------------------------------------------------------------------------
    def prepare(self, steering: SteeringConfig | SteeringArgs) -> tuple[VLLMSteering, ResolvedSteering]:
        """Check a configuration against the model and send its plan to the workers (once per plan)."""
        args = SteeringArgs.of(steering) if isinstance(steering, SteeringConfig) else steering
        chosen = parse_layers(args.layers, self.n_layers)
        vectors, alphas = list(args.vectors), list(args.alphas)
        hidden = int(self._config.get_text_config().hidden_size)
        deltas = layer_deltas(vectors, alphas, self.n_layers, hidden, chosen, lambda _: self.dtype) if vectors else {}
        fingerprint = plan_fingerprint(deltas) if deltas else None
        if fingerprint is not None and fingerprint not in self._sent:
            self.model.collective_rpc("steer_add", args=(fingerprint, pack_deltas(deltas)))
            self._sent.add(fingerprint)
        resolved = ResolvedSteering(vectors, alphas, chosen, args.positions, SteeringPlan(deltas))
        return VLLMSteering(fingerprint, args.positions), resolved

    def configure(self, steering: SteeringConfig | SteeringArgs) -> None:
        """Steer every following request with this configuration (no engine restart)."""
        self.steering, resolved = self.prepare(steering)
        self.steering_config = steering_record(resolved, "vllm", self.block_path, self.n_layers)

    def get_model_info(self) -> dict:
        cache = self.model.llm_engine.vllm_config.cache_config
        return {
            "engine": "vllm",
            "steering": self.steering_config,
            "prefix_cache": {
                "enabled": bool(cache.enable_prefix_caching),
                "steered_requests": "cache_salt (plan fingerprint and first steered position)",
            },
        }

    # -- requests ------------------------------------------------------------------------------------
    def generate_mixed(
        self, requests: Sequence[tuple[list[int], SamplingParams, VLLMSteering, int]], use_tqdm: bool = False
    ) -> list[Any]:
        """One vLLM call for requests of any configurations: (tokens, params, configuration, first steered position)."""
        built = [steering.request(tokens, params, start) for tokens, params, steering, start in requests]
        return self.model.generate(
            [prompt for prompt, _ in built],
            sampling_params=[params for _, params in built],
            use_tqdm=use_tqdm,
            lora_request=self.lora_request,
        )

    def _model_generate(
        self,
        requests: list[list[int]],
        generate: bool = False,
        sampling_params: list[SamplingParams] | SamplingParams | None = None,
    ) -> Any:
        if self.steering.fingerprint is None:
            return super()._model_generate(requests, generate, sampling_params)
        if not generate or sampling_params is None:  # lm-eval's scoring request
            sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(requests)
        steering, starts = self.steering, self._response_starts
        steering = VLLMSteering(steering.fingerprint, "all") if self._rolling else steering
        rows = [
            (tokens, p, steering, steering.start(tokens, generate, None if starts is None else starts[tuple(tokens)]))
            for tokens, p in zip(requests, params)
        ]
        return self.generate_mixed(rows, use_tqdm=self.batch_size == "auto")

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        self._rolling = True  # no context in rolling windows: response == all
        try:
            return super().loglikelihood_rolling(requests, disable_tqdm)
        finally:
            self._rolling = False

    def _loglikelihood_tokens(self, requests: list[TokenRequest], disable_tqdm: bool = False) -> list[Any]:
        if self.steering.fingerprint is None or self.steering.positions == "all" or self._rolling:
            return super()._loglikelihood_tokens(requests, disable_tqdm)
        answers: list[Any] = [None] * len(requests)
        for indices, starts in response_starts(requests, self.max_length - 1):  # lm-eval's max_cxt_len
            self._response_starts = starts
            try:
                part = super()._loglikelihood_tokens([requests[i] for i in indices], disable_tqdm)
            finally:
                self._response_starts = None
            for i, answer in zip(indices, part):
                answers[i] = answer
        return answers
