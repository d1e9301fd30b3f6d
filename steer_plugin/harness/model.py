"""``steered_hf``: lm-eval's HFLM with ``alpha x vector`` added to the residual stream.

Everything HFLM accepts still works; on top: ``vector`` (file, or several joined by ``;``), ``alpha``
(one, or one per vector joined by ``;``), ``layers`` (``all`` or 0-based ``0;3;5-9`` - inside
``--model_args`` commas separate arguments, so use ``;`` there), ``positions`` (``all``|``response``),
``backend`` (``nnsight``|``hooks``), ``blocks`` (module path of the decoder blocks, if needed) and
``prefix_reuse`` (``true``|``false``, default true: score all continuations of a shared context against
one KV cache of it, see ``prefix_reuse.py``; ``false`` is HFLM's own loop, bit for bit). ``pretrained`` may
be a GGUF file (``dir/m.gguf``), the same as HFLM's ``pretrained=dir,gguf_file=m.gguf`` (loaded dequantized).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat, stop_sequences_criteria
from transformers import PreTrainedModel

from steer_plugin.errors import SteerError, check_choice
from steer_plugin.harness.config_batching import (
    ConfigBatcher,
    MixedGeneration,
    batch_key,
    generate_mixed,
    greedy_kwargs,
    hflm_generation_kwargs,
    score_groups_mixed,
)
from steer_plugin.harness.prefix_reuse import (
    Scorer,
    TailConfig,
    TokenCounts,
    group_by_context,
    plain_token_count,
    score_groups,
    split_by_window,
)
from steer_plugin.io.terminal import printable
from steer_plugin.model.backends import BACKENDS
from steer_plugin.model.hooks import (
    DEFAULT_ROWS,
    NON_FINITE,
    Steerer,
    SteeringPlan,
    Where,
    alphas_per_vector,
    finite_alpha,
    make_plan,
)
from steer_plugin.model.layers import format_layers, layer_ranges, parse_layers
from steer_plugin.model.loading import (
    check_block_path,
    is_gguf,
    model_fingerprint,
    named_after_file,
    split_gguf,
    with_gguf_file,
)
from steer_plugin.model.positions import Positions, check_positions
from steer_plugin.steering.config import SteeringConfig
from steer_plugin.steering.kv_prefix import (
    ReuseUnsupported,
    accepts_logits_to_keep,
    reuse_blocker,
    reuse_window,
    tree_mask_blocker,
)
from steer_plugin.vectors.vector import SteeringVector, file_sha256

log = logging.getLogger(__name__)
_LAYER_PIECE = re.compile(r"^\d+(-\d+)?$")

# what `vector=` / `alpha=` accept: from --model_args a string (several joined by ';'), from Python also objects
VectorArg = str | SteeringVector | Sequence[str | SteeringVector] | None
# what configure / plan_ahead take: a sweep's configuration, or configure's --model_args keywords
# (several vectors, SteeringVector objects) as a dict
Steering = SteeringConfig | Mapping[str, Any]
AlphaArg = float | str | list[float]
LayersArg = str | list[int] | None  # "all", "0;3;5-9" (also with commas), or indices
TokenRequest = tuple[Any, list[int], list[int]]  # (cache key, context tokens, continuation tokens), as HFLM has them
Answer = tuple[float, bool]  # (log-likelihood, is greedy)


class ResolvedSteering(NamedTuple):
    """One configuration placed on the model: its vectors loaded, its deltas on the chosen layers."""

    vectors: list[SteeringVector]
    alphas: list[float]  # one per vector
    layers: list[int]  # the chosen layers (0-based)
    positions: Positions
    plan: SteeringPlan


def _split(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [p.strip() for p in str(value).split(";") if p.strip()]


def _keywords(vector: VectorArg, alpha: AlphaArg, layers: LayersArg, positions: str) -> dict[str, Any]:
    """``configure``'s arguments as the dict ``plan_ahead`` also takes."""
    return {"vector": vector, "alpha": alpha, "layers": layers, "positions": positions}


def _parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise SteerError(f"{name} must be true or false, got {value!r}")


def _parse_alphas(alpha: Any) -> list[float]:
    """``alpha`` (one number, or one per vector joined by ``;``) as finite floats, or an error naming it."""
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return [finite_alpha(alpha)]
    alphas = [finite_alpha(a) for a in _split(alpha)]
    if not alphas:  # `alpha=;` is a mistake, not the default 1.0
        raise SteerError(f"alpha={printable(alpha)} names no number; give e.g. alpha=1 or alpha=1;-0.5")
    return alphas


def _vector_names(vector: Any) -> list[Any]:
    """The vectors of ``vector=`` (files joined by ``;``, or objects); a text naming none is an error, never
    an unsteered run (``vector=`` or ``vector=;;`` with an alpha would look steered in a results file)."""
    names = list(vector) if isinstance(vector, (list, tuple)) else _split(vector)
    if isinstance(vector, str) and not names:
        raise SteerError(f"vector={printable(vector)} names no vector file; give vector=FILE (or leave it out)")
    return names


def _repair_layer_args(layers: Any, kwargs: dict[str, Any]) -> Any:
    """``layers=0,3,5-9`` in --model_args arrives as layers=0 plus stray keys '3', '5-9'."""
    stray = [k for k, v in kwargs.items() if _LAYER_PIECE.match(str(k)) and v in ("", None)]
    if not stray:
        return layers
    for k in stray:
        del kwargs[k]
    return ",".join([str(layers), *stray])


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
        layers = _repair_layer_args(layers, kwargs)
        self.prefix_reuse = _parse_bool(prefix_reuse, "prefix_reuse")
        check_positions(positions)
        check_choice("backend", backend, BACKENDS)  # ours (nnsight|hooks); HFLM's own (causal|seq2seq) is not settable
        # every steering argument is checked before the model loads (minutes for a big one)
        alphas = _parse_alphas(1.0 if alpha is None else alpha)
        layer_ranges(None if layers is None else str(layers))  # syntax; the range needs the model
        check_block_path(blocks)
        vectors = [self._load_vector(p) for p in _vector_names(vector)]
        if alpha is not None and not vectors:
            raise SteerError("alpha= without vector= steers nothing; give vector=FILE (or leave alpha out)")
        if vectors:
            alphas_per_vector(alphas, len(vectors))
        gguf_name = None
        if isinstance(pretrained, str) and (is_gguf(pretrained) or kwargs.get("gguf_file")):
            gguf_name = with_gguf_file(pretrained, kwargs.pop("gguf_file", None))
            pretrained, kwargs["gguf_file"] = split_gguf(gguf_name)  # a missing or broken file: one line, now
        super().__init__(pretrained=pretrained, **kwargs)
        if gguf_name:
            named_after_file(self.model, gguf_name)
        self.gguf_file: str | None = kwargs.get("gguf_file")
        self._blocks = blocks
        self._rolling = False
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
        self._planned: list[TailConfig] = []  # configurations coming next (steer sweep), see plan_ahead
        self._ahead: dict[Hashable, dict[tuple, Answer]] = {}  # their answers, computed early
        self._batcher: ConfigBatcher | None = None  # several configurations per batch (steer sweep), see plan_ahead
        self.configure(vectors, alphas, layers, positions, backend)

    # -- configuration (also used by sweeps: no model reload) ----------------------------------------
    @staticmethod
    def _load_vector(path: str | SteeringVector) -> SteeringVector:
        if isinstance(path, SteeringVector):
            return path
        vec = SteeringVector.load(path)
        vec.metadata["source_path"] = str(path)
        vec.metadata["source_sha256"] = file_sha256(path)
        return vec

    def configure(
        self,
        vector: SteeringConfig | VectorArg = None,
        alpha: AlphaArg = 1.0,
        layers: LayersArg = "all",
        positions: str = "all",
        steer_backend: str | None = None,
    ) -> None:
        """Switch steering without reloading the model.

        Args:
            vector: a ``SteeringConfig`` (a sweep's configuration: then ``alpha``, ``layers`` and
                ``positions`` are its own and the ones given here are not used), or as in ``--model_args``:
                a vector file or ``SteeringVector``, several joined by ``;`` or in a list; None: unsteered.
            alpha: one, or one per vector (joined by ``;``, or a list).
            layers: ``all``, ``middle`` or 0-based ``0;3;5-9`` (also with commas), or indices.
            positions: ``all`` or ``response``.
            steer_backend: ``nnsight`` or ``hooks``; None keeps the current one.
        """
        self.longer_than_window = {"loglikelihood": 0, "generate_until": 0}  # this configuration's, see get_model_info
        # seconds spent per request type since loading (a sweep records each configuration's share)
        self.seconds = {"loglikelihood": 0.0, "generate_until": 0.0}
        if steer_backend is not None or not hasattr(self, "steerer"):
            self.steerer = Steerer(self.model, steer_backend or "nnsight", self._blocks)
        steering = vector if isinstance(vector, SteeringConfig) else _keywords(vector, alpha, layers, positions)
        resolved = self.resolve(steering)
        n_layers = len(self.steerer.blocks)
        self.plan: SteeringPlan = resolved.plan
        self.positions: Positions = resolved.positions
        self._warn_other_model(resolved.vectors)
        self.steering_config = {
            "vectors": [
                {
                    "path": v.metadata.get("source_path"),
                    "sha256": v.metadata.get("source_sha256"),
                    "metadata": {k: x for k, x in v.metadata.items() if not k.startswith("source_")},
                }
                for v in resolved.vectors
            ],
            "alphas": resolved.alphas if resolved.vectors else [],
            "layers": format_layers(resolved.layers, n_layers),
            "positions": resolved.positions,
            "backend": self.steerer.backend,
            "block_path": self.steerer.block_path,
            "steered_layers": sorted(self.plan.deltas),
        }

    def resolve(self, steering: Steering) -> ResolvedSteering:
        """Check one configuration and place its deltas on the model (its plan and positions, without switching to
        it: a sweep measures the side effects of the configurations to come with them)."""
        if isinstance(steering, SteeringConfig):
            steering = _keywords(
                steering.vector if steering.steers else None, steering.alpha, steering.layers, steering.positions
            )
        vector, alpha, layers = steering.get("vector"), steering.get("alpha", 1.0), steering.get("layers", "all")
        checked = check_positions(steering.get("positions", "all"))
        vectors = [self._load_vector(v) for v in _vector_names(vector)]
        alphas = alphas_per_vector(_parse_alphas(alpha), len(vectors)) if vectors else _parse_alphas(alpha)
        chosen = parse_layers(None if layers is None else str(layers), len(self.steerer.blocks))
        plan = make_plan(vectors, alphas, self.model, self.steerer.block_path, chosen) if vectors else SteeringPlan()
        return ResolvedSteering(vectors, alphas, chosen, checked, plan)

    def plan_ahead(self, configs: Sequence[Steering], config_batching: bool = True, rows: int | None = None) -> None:
        """Announce the configurations a sweep will ``configure`` next.

        With prefix reuse, the loglikelihood call of one of them also scores the others that share its
        prefix cache (alpha 0 and every ``positions=response`` configuration share the unsteered one), so
        that cache is computed once for the sweep; their answers wait in memory (two numbers per request)
        until they are configured. With config batching, greedy generation (and ``positions=all``
        loglikelihood with prefix reuse) of the configurations still to come runs in mixed batches, see
        ``config_batching.py``.

        Args:
            configs: each a ``SteeringConfig``, or ``configure``'s ``vector``/``alpha``/``layers``/``positions``
                as a dict (several vectors, ``SteeringVector`` objects); ``[]`` forgets all.
            config_batching: mix the configurations still to come into the same batches.
            rows: the most rows in one mixed batch (default 64, never below the batch size).
        """
        self._planned, self._ahead, self._batcher = [], {}, None
        for c in configs:
            resolved = self.resolve(c)
            self._planned.append(TailConfig.of(resolved.plan, resolved.positions))
        if config_batching and len(self._planned) > 1:
            fixed = int(self.batch_size) if str(self.batch_size).isdigit() else 1
            self._batcher = ConfigBatcher(list(self._planned), max(rows or DEFAULT_ROWS, fixed))

    def _warn_other_model(self, vectors: list[SteeringVector]) -> None:
        pretrained = getattr(self, "pretrained", "")
        here = model_fingerprint(self.model, self.model.name_or_path if self.gguf_file else str(pretrained))
        for v in vectors:
            built_on = v.metadata.get("model")
            if built_on and Path(str(built_on)).name != Path(here["model"]).name:
                same = v.metadata.get("config_hash") == here["config_hash"]
                log.warning(
                    "steering vector %s was built on %s, but the model is %s%s",
                    printable(v.metadata.get("source_path")),
                    printable(built_on),
                    printable(here["model"]),
                    " (same architecture config)" if same else " (different config)",
                )

    def get_model_info(self) -> dict:
        info = super().get_model_info()
        info["steering"] = self.steering_config
        info["prefix_reuse"] = {"enabled": self.prefix_reuse, "blocked_by": self.reuse_blocker}
        if self.reuse_window is not None:  # requests / prompts that took the plain path for the window's sake
            info["prefix_reuse"].update(sliding_window=self.reuse_window, longer_than_window=self.longer_than_window)
        return info

    @property
    def batch_size(self) -> Any:
        """HFLM's batch size, or the one ``batch_size_as`` sets for a while."""
        return getattr(self, "_batch_size_override", None) or super().batch_size

    @contextmanager
    def batch_size_as(self, size: int) -> Iterator[None]:
        """Batch ``size`` requests at a time while the block runs (HFLM's own setting untouched)."""
        self._batch_size_override = size
        try:
            yield
        finally:
            self._batch_size_override = None

    @property
    def reuse_active(self) -> bool:
        return self.prefix_reuse and self.reuse_blocker is None and self.backend == "causal"

    # -- forward passes ------------------------------------------------------------------------------
    def _model_call(
        self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.token_counts is not None:
            self.token_counts.slots += inps.numel()
        if not self.plan.active or attn_mask is not None or labels is not None:
            return super()._model_call(inps, attn_mask, labels)
        return self._steered_forward(self.plan, None, input_ids=inps).logits

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
            return self._loglikelihood_answers(requests, disable_tqdm, override_bs)
        finally:
            self.seconds["loglikelihood"] += time.monotonic() - started

    def _loglikelihood_answers(
        self, requests: list[TokenRequest], disable_tqdm: bool, override_bs: int | None
    ) -> list[Answer]:
        if self.reuse_active and not self._rolling and override_bs is None:
            try:
                return self._finite(self._loglikelihood_reuse(requests, disable_tqdm))
            except ReuseUnsupported as e:  # found out while running: never return answers from a broken cache
                log.warning("prefix reuse switched off for this model (%s); scoring on the plain path", e)
                self.reuse_blocker, self._ahead = str(e), {}
        return self._finite(self._loglikelihood_plain(requests, disable_tqdm, override_bs))

    def _finite(self, answers: list) -> list:
        """A steered score that is nan/inf comes from an overflowed residual stream: fail, never score it.
        (log_softmax of finite logits is finite, so this checks the logits the answers came from.)"""
        if self.plan.active and not all(math.isfinite(a[0]) for a in answers):
            raise SteerError(NON_FINITE)
        return answers

    def _loglikelihood_plain(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[Answer]:
        harness = not self.plan.active or self.positions == "all" or self._rolling or self.backend != "causal"
        if self.backend == "causal" and self.token_counts is not None:
            self.token_counts.plain += plain_token_count(requests, self.max_length, harness and self.logits_cache)
        if harness:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        return self._loglikelihood_response(requests, disable_tqdm, override_bs)

    # -- prefix reuse --------------------------------------------------------------------------------
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

    def _reuse_batch_size(self, requests: list) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        longest = max(range(len(requests)), key=lambda i: len(requests[i][1]) + len(requests[i][2]))
        return max(1, int(self._detect_batch_size(requests, longest)))

    def _loglikelihood_reuse(self, requests: list, disable_tqdm: bool) -> list:
        """Group by encoded context, run each context once, score its continuations on its KV cache."""
        from tqdm import tqdm

        mine = TailConfig.of(self.plan, self.positions)
        answers: list[Any] = [None] * len(requests)
        ahead = self._ahead.pop(mine.key, {})
        if ahead:  # computed while an earlier configuration of this sweep held the same prefix cache
            for i, (_, ctx, cont) in enumerate(requests):
                answers[i] = ahead.get((tuple(ctx), tuple(cont)))
        todo = [(i, ctx, cont) for i, (_, ctx, cont) in enumerate(requests) if answers[i] is None]
        todo, longer = split_by_window(todo, self.reuse_window)
        self.longer_than_window["loglikelihood"] += len(longer)
        groups, plain = group_by_context(todo, self.max_length)
        plain += longer
        if plain:  # too long for the window (the harness left-truncates), for a sliding window, or rejected
            for i, a in zip(plain, self._loglikelihood_plain([requests[i] for i in plain], disable_tqdm)):
                answers[i] = a
        if groups:
            riders = [
                c
                for c in self._planned
                if c.prefix_key == mine.prefix_key and c.key != mine.key and c.key not in self._ahead
            ]
            scorer = Scorer(
                self._steered_forward,
                self.model.config,
                self.device,
                self._reuse_batch_size([requests[i] for i, _, _ in todo]),
                self.softmax_dtype,
                accepts_logits_to_keep(self.model),
                self.token_counts,
                mask_dtype=None if self.tree_blocker else self.model.dtype,
                sharing_lower_blocks=self.steerer.sharing_lower_blocks,
                share_start=True,  # the steerer adds a plan's deltas at every row alike (RowPlans are refused)
                window=self.reuse_window,
            )
            mixed = self._mixed_riders(mine)
            n = sum(g.n_requests for g in groups)
            desc = "Running loglikelihood requests (prefix reuse" + (
                f", +{len(riders)} configurations sharing the prefix)"
                if riders
                else f", +{len(mixed)} configurations in the same batches)"
                if mixed
                else ")"
            )
            with tqdm(total=n, disable=(disable_tqdm or self.rank != 0), desc=desc) as pbar:
                if mixed and self._batcher is not None:
                    riders = mixed
                    results = score_groups_mixed(scorer, groups, [mine, *mixed], self._batcher.rows, pbar.update)
                else:
                    results = score_groups(scorer, groups, [mine, *riders], pbar.update)
            for i, a in results[0].items():
                answers[i] = a
            for rider, out in zip(riders, results[1:]):
                self._ahead[rider.key] = {(tuple(requests[i][1]), tuple(requests[i][2])): a for i, a in out.items()}
        plain_set = set(plain)
        for i, (request_str, _, _) in enumerate(requests):
            if request_str is not None and i not in plain_set:
                self.cache_hook.add_partial("loglikelihood", request_str, answers[i])
        return answers

    def _mixed_riders(self, mine: TailConfig) -> list[TailConfig]:
        """Configurations to come that steer their prefixes too (``positions=all``), scored in the same
        forwards as ``mine`` (config batching); none for one that shares the unsteered prefix."""
        if self._batcher is None or not mine.prefix_steered:
            return []
        return self._batcher.riders(mine, lambda c: not c.prefix_steered or c.key in self._ahead)

    def _loglikelihood_response(
        self, requests: list[TokenRequest], disable_tqdm: bool, override_bs: int | None
    ) -> list[Answer]:
        """HFLM's causal scoring loop, steering only the last context token and the continuation."""
        from tqdm import tqdm

        re_ord = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        batch_size = self.batch_size if self.batch_size != "auto" else (override_bs or 0)
        batch_fn = self._batch_scheduler if self.batch_size == "auto" and len(re_ord) > 0 and not override_bs else None
        if batch_fn is not None:
            self.batch_sizes: dict[int, int] = {}
        res = []
        pbar = tqdm(
            total=len(requests),
            disable=(disable_tqdm or self.rank != 0),
            desc="Running loglikelihood requests (steered)",
        )
        for chunk in re_ord.get_batched(n=batch_size, batch_fn=batch_fn):
            inps, spans = [], []
            for _, ctx, cont in chunk:
                inp = (ctx + cont)[-(self.max_length + 1) :][:-1]
                inps.append(torch.tensor(inp, dtype=torch.long, device=self.device))
                spans.append((max(len(inp) - len(cont), 0), len(inp)))
            width = max(len(i) for i in inps)
            where = torch.zeros(len(inps), width, dtype=torch.bool)
            for row, (a, b) in enumerate(spans):
                where[row, a:b] = True
            batch = pad_and_concat(width, inps, padding_side="right")
            if self.token_counts is not None:
                self.token_counts.slots += batch.numel()
            logits = self._steered_forward(self.plan, where, input_ids=batch).logits
            multi = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
            for (request_str, _, cont), lp, (_, inplen) in zip(chunk, multi, spans):
                lp = self._select_cont_toks(lp, contlen=len(cont), inplen=inplen).unsqueeze(0)
                cont_t = torch.tensor(cont, dtype=torch.long, device=self.device).unsqueeze(0)
                greedy = bool((lp.argmax(-1) == cont_t).all())
                answer = (float(torch.gather(lp, 2, cont_t.unsqueeze(-1)).sum()), greedy)
                res.append(answer)
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
                pbar.update(1)
        pbar.close()
        return re_ord.get_original(res)

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Identical greedy requests are generated once: the steer_emotion_* tasks share their prompts and
        settings, so a sweep over several emotions generates each prompt once per configuration, not once
        per emotion task. Sampled requests are all generated."""
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

    def _model_generate(
        self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs: Any
    ) -> torch.Tensor:
        if self._batcher is not None:
            tokens = self._generate_batched(context, max_length, stop, generation_kwargs)
            if tokens is not None:
                return tokens
        if not self.plan.active:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        generation_kwargs = hflm_generation_kwargs(generation_kwargs)  # the same settings as HFLM._model_generate
        criteria = stop_sequences_criteria(self.tokenizer, stop, context.shape[1], context.shape[0])
        where = "last" if self.positions == "response" else None
        with torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        ):
            return self.steerer.generate(
                self.plan,
                where,
                input_ids=context,
                max_length=max_length,
                stopping_criteria=criteria,
                pad_token_id=self.tokenizer.pad_token_id,
                use_cache=True,
                **generation_kwargs,
            )

    def _generate_batched(
        self, context: torch.Tensor, max_length: int, stop: list[str], generation_kwargs: dict[str, Any]
    ) -> torch.Tensor | None:
        """This batch's tokens from an earlier mixed batch, or a mixed batch of this configuration and the
        ones to come (config batching); None: generate it alone."""
        assert self._batcher is not None
        mine = TailConfig.of(self.plan, self.positions)
        key = batch_key(context, max_length, stop, generation_kwargs)
        ready = self._batcher.ready.pop((mine.key, key), None)
        if ready is not None:
            return ready
        kwargs = greedy_kwargs(generation_kwargs, self.model.generation_config)
        riders = self._batcher.riders(mine, lambda c: (c.key, key) in self._batcher.ready)  # type: ignore[union-attr]
        if kwargs is None or not riders:
            return None
        gen = MixedGeneration(
            self.steerer,
            self.tokenizer,
            lambda width, rows: stop_sequences_criteria(self.tokenizer, stop, width, rows),
            self.tokenizer.pad_token_id,
            share_prefix=self.reuse_active,
            rows=self._batcher.rows,
            window=self.reuse_window,
        )
        log.info("generating a batch for %d configurations at once", 1 + len(riders))
        with torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        ):
            out = generate_mixed(gen, [mine, *riders], context, max_length, stop, kwargs)
        self.longer_than_window["generate_until"] += gen.longer_than_window
        for rider, tokens in zip(riders, out[1:]):
            if tokens is not None:  # non-finite: that configuration runs alone later and fails there
                self._batcher.ready[(rider.key, key)] = tokens
        if out[0] is None:
            raise SteerError(NON_FINITE)
        return out[0]
