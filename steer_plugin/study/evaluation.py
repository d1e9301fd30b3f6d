"""How a sweep evaluates: tasks, layers, positions, controls, side effects, batching. `steer sweep`, `steer run`
and ``steer_plugin.run`` build the same ``Evaluation``, with one set of defaults (chosen by measurement: the
middle third of the layers, the response positions, one random control per steered configuration).

Light (no torch, no harness): the command line imports it for its defaults.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from steer_plugin.data.prompt_split import DEFAULT_SPLIT, METADATA_KEY, PromptSplit, check_split
from steer_plugin.errors import SteerError, check_choice, check_count
from steer_plugin.harness.classifier import check_classifier
from steer_plugin.harness.tasks import EMOTION_TASK_PREFIX, check_include_path, emotion_task_target
from steer_plugin.io.outputs import check_output_dir
from steer_plugin.io.schema import check_fields, is_number
from steer_plugin.model.backends import Backend
from steer_plugin.model.gguf import split_gguf
from steer_plugin.model.layers import layer_ranges, parse_layers
from steer_plugin.model.loading import ModelOptions
from steer_plugin.model.positions import Positions, check_positions
from steer_plugin.steering.defaults import DEFAULT_LAYERS, DEFAULT_POSITIONS
from steer_plugin.study.plan import SweepOptions
from steer_plugin.study.results_files import check_table_outputs
from steer_plugin.study.tuning_file import STORED_CHOICES

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.steering.alphas import AlphaSpec

ControlMatch = Literal["alpha", "kl"]
# what runs the evaluation: transformers (`steered_hf`) or vLLM (`steered_vllm`); side effects, the outputs'
# fluency and KL calibrations run on transformers either way (they read logits of neutral texts: cheap)
Engine = Literal["hf", "vllm"]
ENGINES: tuple[Engine, ...] = get_args(Engine)
Chat = Literal[
    "auto", "on", "off"
]  # the emotion tasks' prompts through the chat template: where there is one, always, never
PathLike = str | os.PathLike

SIDE_EFFECT_TEXTS = 200
QUICK_SIDE_EFFECT_TEXTS = 100  # with a limit (a quick look) the side effects take half the usual texts


@dataclass(frozen=True)
class Evaluation:
    """How a sweep evaluates: the options `steer sweep`, `steer run` and ``steer_plugin.run`` share, with their
    one set of defaults. A comma-separated string also works for ``tasks`` and ``positions``; ``layers`` is one
    layer spec (``all``, ``middle``, ``10-19``) or several, each a sweep dimension.

    Attributes:
        tasks: harness tasks (``steer_plugin.run``: default TruthfulQA MC1/MC2 and the emotions' tasks).
        limit: documents per task (a quick look).
        batch_size: an int or ``auto``; recording uses it too when it is an int.
        classifier: the emotion classifier of the steer_emotion tasks: hub id, local folder or ``nade``.
        include_path: an extra folder of task YAMLs.
        layers: a layer spec (``middle``, ``all``, ``10-19``) or several (each a sweep dimension); ``tuned``:
            each vector's layers as `steer tune` chose them on the dev prompts (stored beside the vector);
            ``auto`` (`steer run --layers auto`): the same, tuning first where there is no stored choice.
        positions: ``response`` (the last position of each forward), ``all``, or both.
        backend: ``nnsight`` or ``hooks``.
        log_samples: keep the full harness samples (per-document scores are always kept).
        controls: norm-matched random-direction controls per steered configuration (0 = none).
        control_match: at a KL budget, run a control at its vector's alpha (``alpha``) or calibrate it to
            the same budget (``kl``).
        apply_chat_template: format every task's prompts with the chat template (TruthfulQA too).
        chat: the emotion tasks' prompts through the chat template: ``auto`` where the tokenizer has one (a model
            without one gets the continuation tasks, ``steer_emotion_continue_<emotion>``), ``on``, ``off``.
        num_fewshot: few-shot examples (default: each task's own).
        bootstrap_iters: the harness's bootstrap for its standard errors.
        prefix_reuse: score multiple-choice continuations against one KV cache of their shared context.
        config_batching: generate for several configurations in mixed batches.
        config_batch_rows: most rows of one mixed batch (default 64, never below ``batch_size``).
        fresh: discard the results already in the output folder (needed when they come from another sweep).
        fluency_texts: neutral texts of the side effects and calibrations: a text file or a GoEmotions folder
            (``steer_plugin.run``: default its recording's GoEmotions folder).
        side_effect_texts: neutral texts for the KL/perplexity columns (default 200; 100 with ``limit``).
        side_effects: measure those columns at all.
        truthfulqa_dir: a local TruthfulQA JSONL folder (default: $STEER_TRUTHFULQA_DIR): the default tasks of
            ``steer_plugin.run`` become the offline truthfulqa_local_mc1/mc2.
        prompted: emotions to *ask* for (the prompting reference), one configuration each.
        engine: ``hf`` (``steered_hf``) or ``vllm`` (``steered_vllm``, needs vLLM installed).
        engine_args: more model arguments of the engine, ``key=value`` joined by commas, as in ``--model_args``
            (e.g. ``gpu_memory_utilization=0.5,max_model_len=2048`` for vLLM).
        prompt_split: which part of the emotion tasks' prompts: ``test`` (every report) or ``dev`` (what
            `steer tune` chooses on); ``data.prompt_split``.
    """

    tasks: str | Sequence[str] = ()
    limit: float | None = None
    batch_size: int | Literal["auto"] = 8
    classifier: str | None = None
    include_path: str | None = None
    layers: str | Sequence[str] = DEFAULT_LAYERS
    positions: str | Sequence[Positions] = DEFAULT_POSITIONS  # a string may name several: "all,response"
    backend: Backend = "nnsight"
    log_samples: bool = False
    controls: int = 1
    control_match: ControlMatch = "alpha"
    apply_chat_template: bool = False  # every task's prompts through the chat template (TruthfulQA too)
    chat: Chat = "auto"  # the emotion tasks' prompts (steer_emotion*) through it
    num_fewshot: int | None = None
    bootstrap_iters: int = 1000
    prefix_reuse: bool = True
    config_batching: bool = True
    config_batch_rows: int | None = None
    fresh: bool = False
    fluency_texts: PathLike | None = None
    side_effect_texts: int | None = None
    side_effects: bool = True
    truthfulqa_dir: PathLike | None = None
    prompted: Sequence[str] = ()
    prompt_split: PromptSplit = DEFAULT_SPLIT
    engine: Engine = "hf"
    engine_args: str | None = None

    def __post_init__(self) -> None:
        # types and choices where it is built, as the command line checks them: `chat="yes"` is no choice
        check_fields(self)
        self._check_values()

    @property
    def task_names(self) -> list[str]:
        return _names(self.tasks)

    @property
    def layer_sets(self) -> list[str]:
        return [self.layers] if isinstance(self.layers, str) else list(self.layers)

    @property
    def position_sets(self) -> list[str]:
        return _names(self.positions)

    def text_source(self) -> TextSource:
        """The neutral texts of the side effects and of the KL calibrations."""
        from steer_plugin.data.neutral_texts import TextSource

        return TextSource(str(self.fluency_texts) if self.fluency_texts else None)

    def _check_values(self) -> None:
        """What the fields alone say, where it is built (the command line's and the API's one check): the
        numbers, the layer specs' syntax, the positions, the prompt split."""
        if self.limit is not None and not (is_number(self.limit) and 0 < self.limit < math.inf):
            raise SteerError(
                f"--limit must be a positive number (of documents, or a fraction below 1), got {self.limit}"
            )
        if self.batch_size != "auto":
            check_count("--batch-size", self.batch_size)
        for flag, value, least in (("--side-effect-texts", self.side_effect_texts, 1),
                                   ("--num-fewshot", self.num_fewshot, 0)):  # fmt: skip
            if value is not None:
                check_count(flag, value, least)
        check_count("--controls", self.controls, 0)
        check_count("--bootstrap-iters", self.bootstrap_iters, 0)
        if not self.layer_sets or not self.position_sets:
            raise SteerError(f"--layers {self.layers!r} / --positions {self.positions!r}: give at least one of each")
        check_split(self.prompt_split)
        for spec in self.layer_sets:
            if spec in STORED_CHOICES:
                continue
            if not str(spec).strip():  # `--layers ' '`: a mistake, not a silent "all" (nor a folder name with a space)
                raise SteerError(f"--layers {spec!r} names no layers; use all, middle or e.g. 10-19")
            layer_ranges(spec)
        if self.config_batch_rows is not None and self.config_batch_rows < 1:
            raise SteerError(f"--config-batch-rows must be a positive number of rows, got {self.config_batch_rows}")
        for p in self.position_sets:
            check_positions(p)
        parse_engine_args(self.engine_args)

    def check(self, out: Path, model: ModelOptions | None = None) -> None:
        """What the fields say together with the model's config and the file system, before any model (or data)
        loads: the layer specs against the model's depth, the chat template, the classifier, the folders, the
        output paths (the fields alone were checked when it was built)."""
        dimensions = model.dimensions() if model is not None else None
        if dimensions is not None:  # the layer specs against the model's depth, where its config tells
            for spec in self.layer_sets:
                if spec not in STORED_CHOICES:  # resolved per vector once the vectors are there (study.tuning_file)
                    parse_layers(spec, dimensions[0])
        check_include_path(self.include_path)
        if self.truthfulqa_dir is not None and not Path(self.truthfulqa_dir).expanduser().is_dir():
            raise SteerError(
                f"--truthfulqa-dir {str(self.truthfulqa_dir)!r} is not a folder (of TruthfulQA JSONL files)"
            )
        if model is not None:  # a chat template asked for, that the tokenizer lacks: from the tokenizer alone
            if self.apply_chat_template and not model.has_chat_template():
                raise SteerError(f"--apply-chat-template: the tokenizer of {model.name} has no chat template")
            if self.chat == "on":
                uses_chat(self.chat, model)  # with or without emotion tasks
        targets = [t for t in map(emotion_task_target, self.task_names) if t]
        if model is not None:  # the emotion tasks generate (other generating tasks: steered_hf's own check)
            emotion = EMOTION_TASK_PREFIX.rstrip("_")
            model.check_generation([t for t in self.task_names if emotion_task_target(t) or t == emotion])
        if targets:  # a classifier folder that is not there, nade asked for neutral: now, not after minutes of work
            check_classifier(self.classifier, targets)
        check_output_dir(out)
        check_table_outputs(out / "leaderboard")

    def check_texts(self, alphas: Sequence[AlphaSpec]) -> None:
        """The neutral texts, where the side effects or KL budgets need them: a missing, unreadable or empty
        ``--fluency-texts`` fails before the model loads, not after the baseline's evaluation."""
        from steer_plugin.steering.alphas import KLBudget

        if self.side_effects or any(isinstance(a, KLBudget) for a in alphas):
            self.text_source().load()

    def chat_tasks(self, model: ModelOptions) -> bool | list[str]:
        """``SweepOptions.apply_chat_template``: every task, the emotion tasks (per ``chat``), or none."""
        if self.apply_chat_template:
            return True
        emotion = [t for t in self.task_names if t.startswith(EMOTION_TASK_PREFIX.rstrip("_"))]
        return emotion if emotion and uses_chat(self.chat, model) else False

    def model_args(self, model: ModelOptions) -> dict[str, Any]:
        """The engine's model arguments for ``model`` (what ``--model_args`` reproduces)."""
        check_choice("--engine", self.engine, ENGINES)
        extra = parse_engine_args(self.engine_args)
        if self.engine == "vllm":
            if split_gguf(model.name)[1]:
                raise SteerError("--engine vllm takes a hub id or a model folder, not a GGUF file; use --engine hf")
            args: dict[str, Any] = {"pretrained": model.name, "dtype": model.dtype, "batch_size": self.batch_size}
            args.update({k: v for k, v in model.harness_args().items() if k in ("revision", "trust_remote_code")})
            return {**args, **({"blocks": model.blocks} if model.blocks else {}), **extra}
        return {
            **model.harness_args(),
            "batch_size": self.batch_size,
            "backend": self.backend,
            "prefix_reuse": self.prefix_reuse,
            **extra,
        }

    def sweep_options(self, model: ModelOptions, out: Path) -> SweepOptions:
        model_args = self.model_args(model)
        return SweepOptions(
            tasks=self.task_names,
            out_dir=out,
            limit=None if self.limit is None else float(self.limit),  # as `--limit` gives it: the same sweep.json
            classifier=self.classifier,
            include_path=self.include_path,
            log_samples=self.log_samples,
            apply_chat_template=self.chat_tasks(model),
            num_fewshot=self.num_fewshot,
            bootstrap_iters=self.bootstrap_iters,
            model_args=model_args,
            fresh=self.fresh,
            side_effects=self.text_source() if self.side_effects else None,
            side_effect_texts=self.side_effect_texts or (QUICK_SIDE_EFFECT_TEXTS if self.limit else SIDE_EFFECT_TEXTS),
            config_batching=self.config_batching,
            config_batch_rows=self.config_batch_rows,
            task_metadata=self.task_metadata(),
            engine=self.engine,
            prompt_split=self.prompt_split,
        )

    def task_metadata(self) -> dict[str, Any]:
        """lm-eval task metadata beyond the classifier: the truthfulqa_local tasks' folder, the GoEmotions
        folder of the continuation tasks and the emotion tasks' prompt split, passed to the tasks instead of through
        the environment."""
        metadata: dict[str, Any] = {}
        if self.truthfulqa_dir:
            metadata["truthfulqa_dir"] = str(Path(self.truthfulqa_dir).resolve())
        if any(t.startswith(EMOTION_TASK_PREFIX.rstrip("_")) for t in self.task_names):
            metadata[METADATA_KEY] = self.prompt_split  # recorded in the results' task configs
        if self.fluency_texts and Path(self.fluency_texts).is_dir():  # a GoEmotions folder: the continuation texts
            metadata["goemotions_dir"] = str(Path(self.fluency_texts).resolve())
        return metadata


def parse_engine_args(text: str | None) -> dict[str, Any]:
    """``key=value,key=value`` (values as lm-eval's ``--model_args`` reads them) -> a dict; None or '' -> {}."""
    if not text:
        return {}
    out: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise SteerError(f"--engine-args {text!r}: give key=value pairs joined by commas, e.g. max_model_len=2048")
        out[key.strip()] = _arg_value(value.strip())
    return out


def _arg_value(text: str) -> Any:
    """A ``--model_args`` value as lm-eval reads it: true/false, an int, a float, or the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def uses_chat(chat: Chat, model: ModelOptions) -> bool:
    """``auto``: where the tokenizer has a chat template; ``on`` refuses a tokenizer without one."""
    check_choice("chat", chat, get_args(Chat))
    if chat == "off":
        return False
    if model.has_chat_template():
        return True
    if chat == "on":
        raise SteerError(f"--chat on: the tokenizer of {model.name} has no chat template; use --chat auto or off")
    return False


def emotion_task_family(chat: Chat, model: ModelOptions) -> str:
    """``steer_emotion`` (prompts to answer), or ``steer_emotion_continue`` (text to continue) for a model
    without a chat template under ``chat="auto"``: a base model was never taught to answer a bare question."""
    templated = uses_chat(chat, model)  # first: ``on`` without a template is an error
    return "steer_emotion_continue" if chat == "auto" and not templated else "steer_emotion"


def _names(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``."""
    parts = (value or "").split(",") if isinstance(value, str) or value is None else value
    return [p.strip() for p in parts if p.strip()]
