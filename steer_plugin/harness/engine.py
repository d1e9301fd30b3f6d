"""What the sweep and the main job need from "a model we can steer", and nothing more: an engine handle.

A sweep switches steering configurations (``SteeringConfig``), evaluates harness tasks under each, measures each
configuration's side effects on neutral texts, scores the fluency of the generated outputs under the unsteered
model, and calibrates alphas to KL budgets. ``SteeringEngine`` is that interface; ``HFEngine`` implements it on
``steered_hf`` (transformers). The study stage talks to an engine only, never to the model's parts, so a second
engine (vLLM) is one more class here.

Light at import time (`steer --help` imports the study stage): the harness and torch load inside the methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from steer_plugin.data.prompts import INSTRUCTION_DELIMITER, emotion_instruction
from steer_plugin.errors import SteerError
from steer_plugin.steering.config import SteeringConfig

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.harness.model import SteeredHFLM
    from steer_plugin.harness.vllm_model import SteeredVLLM
    from steer_plugin.steering.calibration_result import Calibration
    from steer_plugin.steering.side_effects import SideEffects

GENERATION_NLL_ROWS = 32  # sequences per forward of the outputs' fluency (gen_nll)
FALLBACK_BATCH = 16  # the side effects' and calibrations' batch where the harness's is "auto"

TaskDict = dict[str, Any]  # lm-eval's loaded task dict: {"tasks": ..., "groups": ..., "group_map": ...}


class SideEffectMeter(Protocol):
    """Neutral texts, tokenized once with their unsteered pass done: each configuration's KL and perplexity."""

    @property
    def texts(self) -> list[str]:
        """The texts that are scored."""
        ...

    @property
    def window(self) -> int | None:
        """The model's sliding window, if any."""
        ...

    @property
    def longer_than_window(self) -> int:
        """Texts run whole (without the reused unsteered prefix) for the window's sake."""
        ...

    def measure(self, configs: Sequence[SteeringConfig]) -> list[SideEffects]:
        """Each configuration's side effects; several at once in mixed batches where the engine can."""
        ...

    def measure_prompted(self, target: str) -> SideEffects:
        """The side effects of asking for ``target`` instead of steering (the prompting reference)."""
        ...


class SteeringEngine(Protocol):
    """A loaded model the study can steer: the only thing ``study.sweep`` and ``study.run`` talk to."""

    name: str  # the lm-eval model name that reproduces a configuration (``--model``)

    @property
    def batch_size(self) -> int | str: ...

    def configure(self, config: SteeringConfig) -> None:
        """Steer every following request with ``config`` (no model reload)."""
        ...

    def plan_ahead(self, configs: Sequence[SteeringConfig], *, config_batching: bool, rows: int | None) -> None:
        """Announce the configurations to come (work they share is done once); ``[]`` forgets them."""
        ...

    def evaluate(
        self, tasks: TaskDict, *, chat: bool, instruction: str | None, limit: float | None, bootstrap_iters: int
    ) -> dict[str, Any]:
        """The harness's results dict (with ``samples``) of ``tasks`` under the current configuration."""
        ...

    def alone_batch_size(self, rows: int | None) -> int | None:
        """The batch size a configuration that shares its batches with no other runs at (None: the usual one)."""
        ...

    def batch_size_as(self, size: int | None) -> AbstractContextManager[None]:
        """A context in which the harness batches ``size`` requests at a time (None: unchanged)."""
        ...

    def model_info(self) -> dict[str, Any]:
        """The results' ``config`` entries that describe the model and its current steering."""
        ...

    def request_seconds(self) -> dict[str, float]:
        """Seconds spent per request type since loading."""
        ...

    def side_effect_meter(self, texts: list[str], rows: int | None) -> SideEffectMeter: ...

    def generation_nll(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Per-token NLL of each (prompt, generated text) under the unsteered model (an empty text: the NLL of
        stopping at once, the end-of-text token)."""
        ...

    def calibrate(
        self,
        vector: str,
        budgets: list[float],
        *,
        layers: str,
        positions: str,
        source: TextSource,
        model_name: str,
        progress: Callable[[str], None] | None,
    ) -> tuple[Calibration, bool]:
        """The alphas of ``vector`` for the KL budgets, stored beside it; (calibration, reused a stored one)."""
        ...


def load_engine(model_args: dict[str, Any], engine: str = "hf") -> HFEngine | VLLMEngine:
    """The engine (``hf``: ``steered_hf``, ``vllm``: ``steered_vllm``) of these model arguments, the model loaded."""
    if engine == "vllm":
        try:
            from steer_plugin.harness.vllm_model import SteeredVLLM
        except ImportError as e:
            raise SteerError(f"--engine vllm needs vLLM ({e.name or e}): pip install 'steer-plugin[vllm]'") from None
        return VLLMEngine(SteeredVLLM(**model_args), transformers_args(model_args))
    from steer_plugin.harness.model import SteeredHFLM

    return HFEngine(SteeredHFLM(**model_args))


def transformers_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """``steered_hf``'s arguments for the model of a ``steered_vllm`` engine: its transformers side."""
    import torch

    keep = ("pretrained", "dtype", "revision", "trust_remote_code", "blocks")
    args = {k: v for k, v in model_args.items() if k in keep}
    batch = model_args.get("batch_size")
    return {**args, "device": "cuda" if torch.cuda.is_available() else "cpu", "batch_size": batch or FALLBACK_BATCH}


@dataclass
class HFEngine:
    """``SteeringEngine`` on ``steered_hf``: the harness's HFLM with steering, prefix reuse and config batching."""

    lm: SteeredHFLM
    name: str = "steered_hf"
    _prompts: Any = field(default=None, init=False, repr=False)  # the emotion prompts' KV caches, for gen_nll

    @property
    def batch_size(self) -> int | str:
        return self.lm.batch_size

    def _rows(self) -> int:
        """The harness's batch as a number of rows for our own passes (side effects, calibration)."""
        batch = self.lm.batch_size
        return max(int(batch), 1) if isinstance(batch, int) else FALLBACK_BATCH

    def configure(self, config: SteeringConfig) -> None:
        self.lm.configure(config)

    def plan_ahead(self, configs: Sequence[SteeringConfig], *, config_batching: bool, rows: int | None) -> None:
        self.lm.plan_ahead(list(configs), config_batching=config_batching, rows=rows)

    def evaluate(
        self, tasks: TaskDict, *, chat: bool, instruction: str | None, limit: float | None, bootstrap_iters: int
    ) -> dict[str, Any]:
        return _evaluate(self.lm, tasks, chat, instruction, limit, bootstrap_iters)

    def alone_batch_size(self, rows: int | None) -> int | None:
        """Decoding a small model costs nearly the same for 8 rows as for 50 (SmolLM2 on 2 CPU cores: 47 s at 8
        rows, 22 s at 25, 50 prompts): a configuration alone generates in batches as large as a mixed batch.
        None where the harness sizes its batches itself (``auto``)."""
        if not str(self.lm.batch_size).isdigit():
            return None
        from steer_plugin.model.hooks import DEFAULT_ROWS

        return max(rows or DEFAULT_ROWS, int(self.lm.batch_size))

    def batch_size_as(self, size: int | None) -> AbstractContextManager[None]:
        return self.lm.batch_size_as(size)

    def model_info(self) -> dict[str, Any]:
        return dict(self.lm.get_model_info())

    def request_seconds(self) -> dict[str, float]:
        return dict(self.lm.seconds)

    def side_effect_meter(self, texts: list[str], rows: int | None) -> HFSideEffectMeter:
        from steer_plugin.model.hooks import DEFAULT_ROWS, Steerer
        from steer_plugin.steering.side_effects import SideEffectProbe

        steerer = Steerer(self.lm.model, "hooks", self.lm.steerer.block_path)  # same blocks, no tracing overhead
        probe = SideEffectProbe(
            self.lm.model, self.lm.tokenizer, texts, steerer=steerer, batch_size=self._rows(),
            config_rows=rows or DEFAULT_ROWS,  # as many rows per forward as a mixed generation batch
        )  # fmt: skip
        probe.baseline()
        return HFSideEffectMeter(self.lm, probe)

    def generation_nll(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        from steer_plugin.steering.generation_nll import PromptCache, continuation_nll

        lm = self.lm
        if self._prompts is None:  # the prompts repeat across configurations: their caches are kept
            self._prompts = PromptCache(lm.model)
        eos = getattr(lm.tokenizer, "eos_token_id", None)
        ids = []
        for context, text in pairs:
            cont = lm.tok_encode(text, add_special_tokens=False) if text else []
            ids.append((lm.tok_encode(context), cont or ([eos] if eos is not None else [])))
        # one unhooked forward per batch, compute-bound: more rows than the harness's batch (the logits stay bounded)
        scored = continuation_nll(
            lm.model, lm.tokenizer, ids, batch_size=GENERATION_NLL_ROWS, max_length=lm.max_length,
            prompts=self._prompts,
        )  # fmt: skip
        return [s.per_token for s in scored]

    def calibrate(
        self,
        vector: str,
        budgets: list[float],
        *,
        layers: str,
        positions: str,
        source: TextSource,
        model_name: str,
        progress: Callable[[str], None] | None,
    ) -> tuple[Calibration, bool]:
        from steer_plugin.model.hooks import Steerer
        from steer_plugin.steering.calibrate import calibrate_vector_file

        return calibrate_vector_file(
            self.lm.model, self.lm.tokenizer, vector, budgets, layers=layers, positions=positions, source=source,
            model_name=model_name, batch_size=self._rows(),
            steerer=Steerer(self.lm.model, "hooks", self.lm.steerer.block_path), progress=progress,
        )  # fmt: skip


@dataclass
class VLLMEngine:
    """``SteeringEngine`` on ``steered_vllm``: the harness tasks run on vLLM (each request with its configuration's
    steering); the side effects, the outputs' fluency and KL calibrations need logits of neutral texts and run on
    transformers (``steered_hf`` of the same model, loaded the first time one of them is asked for)."""

    lm: SteeredVLLM
    transformers: dict[str, Any]  # steered_hf's arguments for the same model
    side: HFEngine | None = None  # the transformers side, once loaded
    name: str = "steered_vllm"

    @property
    def batch_size(self) -> int | str:
        return self.lm.batch_size

    def _side(self) -> HFEngine:
        if self.side is None:
            from steer_plugin.harness.model import SteeredHFLM

            self.side = HFEngine(SteeredHFLM(**self.transformers))
        return self.side

    def configure(self, config: SteeringConfig) -> None:
        self.lm.configure(config)

    def plan_ahead(self, configs: Sequence[SteeringConfig], *, config_batching: bool, rows: int | None) -> None:
        """Each configuration's deltas go to vLLM's workers now, once (requests then name them by fingerprint)."""
        for config in configs:
            self.lm.prepare(config)

    def evaluate(
        self, tasks: TaskDict, *, chat: bool, instruction: str | None, limit: float | None, bootstrap_iters: int
    ) -> dict[str, Any]:
        return _evaluate(self.lm, tasks, chat, instruction, limit, bootstrap_iters)

    def alone_batch_size(self, rows: int | None) -> int | None:
        return None  # vLLM schedules its own batches

    def batch_size_as(self, size: int | None) -> AbstractContextManager[None]:
        return nullcontext()

    def model_info(self) -> dict[str, Any]:
        return dict(self.lm.get_model_info())

    def request_seconds(self) -> dict[str, float]:
        return {}

    def side_effect_meter(self, texts: list[str], rows: int | None) -> SideEffectMeter:
        return self._side().side_effect_meter(texts, rows)

    def generation_nll(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return self._side().generation_nll(pairs)

    def calibrate(
        self,
        vector: str,
        budgets: list[float],
        *,
        layers: str,
        positions: str,
        source: TextSource,
        model_name: str,
        progress: Callable[[str], None] | None,
    ) -> tuple[Calibration, bool]:
        return self._side().calibrate(
            vector, budgets, layers=layers, positions=positions, source=source, model_name=model_name,
            progress=progress,
        )  # fmt: skip


def _evaluate(
    lm: Any, tasks: TaskDict, chat: bool, instruction: str | None, limit: float | None, bootstrap_iters: int
) -> dict[str, Any]:
    """The harness's evaluation of ``tasks`` on ``lm`` as a sweep runs it (samples logged: their fluency is read)."""
    from lm_eval.evaluator import evaluate

    return evaluate(
        lm=lm,
        task_dict=tasks,
        limit=limit,
        bootstrap_iters=bootstrap_iters,
        log_samples=True,  # the generations are needed for their fluency
        system_instruction=instruction,
        apply_chat_template=chat,
        fewshot_as_multiturn=False,
        verbosity="WARNING",
    )


@dataclass
class HFSideEffectMeter:
    """``SideEffectMeter`` on ``steered_hf``: each configuration placed on the model as its plan and positions."""

    lm: SteeredHFLM
    probe: Any  # steering.side_effects.SideEffectProbe

    @property
    def texts(self) -> list[str]:
        return list(self.probe.texts)

    @property
    def window(self) -> int | None:
        return self.probe.window

    @property
    def longer_than_window(self) -> int:
        return int(self.probe.longer_than_window)

    def measure(self, configs: Sequence[SteeringConfig]) -> list[SideEffects]:
        resolved = [self.lm.resolve(c) for c in configs]
        return list(self.probe.measure_many([r.plan for r in resolved], [r.positions for r in resolved]))

    def measure_prompted(self, target: str) -> SideEffects:
        # the instruction as the probe prepends it to a neutral text
        ids = list(self.lm.tokenizer(emotion_instruction(target) + INSTRUCTION_DELIMITER)["input_ids"])
        return self.probe.measure_prompted(ids)
