"""The main job as one call: ``run`` builds the vectors that are missing, sweeps their alphas (calibrated to
KL budgets) over harness tasks and writes the leaderboard and a summary in sentences; ``sweep`` is its middle
part, for vector files at hand. `steer run` and `steer sweep` are thin callers of these two.

Only light modules load at import time, because the command line imports this one for its defaults
(`steer --help` stays instant): torch, lm_eval and the statistics load inside the functions.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from steer_plugin.data.goemotions import target_slug
from steer_plugin.errors import SteerError, check_choice, check_count
from steer_plugin.harness.tasks import EMOTION_TASK_PREFIX, TRUTHFULQA_DIR_ENV
from steer_plugin.io.outputs import check_output_dir, check_output_file
from steer_plugin.io.schema import is_number
from steer_plugin.model.backends import Backend
from steer_plugin.model.layers import layer_ranges, parse_layers
from steer_plugin.model.loading import DEFAULT_MODEL, Dtype, ModelOptions, model_slug
from steer_plugin.model.positions import Positions, check_positions
from steer_plugin.study.plan import Resolver, SweepOptions, SweepPlan
from steer_plugin.study.results_files import check_table_outputs
from steer_plugin.study.sweep import run_sweep, task_manager
from steer_plugin.study.sweep_folder import check_same_sweep, open_sweep_folder, sweep_settings
from steer_plugin.vectors.directions import check_neutral_pcs
from steer_plugin.vectors.metadata import CENTRES, METHODS, Centre, Method

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.steering.alphas import AlphaSpec, KLBudget
    from steer_plugin.study.rows import Row
    from steer_plugin.vectors.request import RecordRequest

ControlMatch = Literal["alpha", "kl"]
Chat = Literal[
    "auto", "on", "off"
]  # the emotion tasks' prompts through the chat template: where there is one, always, never
PathLike = str | os.PathLike
# "0,kl:0.1", or a list of numbers, "kl:X" strings and KLBudgets
Alphas = str | Sequence["float | str | KLBudget"]

# steer run's grid: the baseline plus alphas calibrated to these KL budgets (nats per token on neutral
# texts), so the grid means the same on every model; plain numbers still work ("0,0.2,0.5").
DEFAULT_ALPHAS = "0,kl:0.03,kl:0.1,kl:0.3,kl:1"
SIDE_EFFECT_TEXTS = 200
QUICK_SIDE_EFFECT_TEXTS = 100  # with a limit (a quick look) the side effects take half the usual texts


@dataclass(frozen=True)
class RunResult:
    """What a run (or sweep) left in its folder."""

    folder: Path  # the run folder: one subfolder of results per configuration, sweep.json, the reports
    rows: list[Row]  # the leaderboard rows, with their paired Δ vs the unsteered baseline
    table: str  # the leaderboard as printed
    summary: str | None  # the summary sentences (summary.md); None without a baseline to compare with
    files: list[Path]  # the reports written: leaderboard.md/.csv and plots, summary.md, leakage.csv/.png, ...
    vectors: list[Path]  # the vectors swept (built first if they were missing)
    results: list[Path]  # each configuration's results.json


@dataclass(frozen=True)
class Evaluation:
    """How a sweep evaluates: the options `steer sweep` and `steer run` share (defaults: `steer sweep`'s).
    A comma-separated string also works for ``tasks`` and ``positions``; ``layers`` is one layer spec
    (``all``, ``middle``, ``10-19``) or several, each a sweep dimension."""

    tasks: str | Sequence[str] = ()
    limit: float | None = None
    batch_size: int | Literal["auto"] = 8
    classifier: str | None = None
    include_path: str | None = None
    layers: str | Sequence[str] = "all"
    positions: Positions | Sequence[Positions] = "all"
    backend: Backend = "nnsight"
    log_samples: bool = False
    controls: int = 0
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
    truthfulqa_dir: PathLike | None = None  # the truthfulqa_local tasks' JSONL folder (else $STEER_TRUTHFULQA_DIR)
    prompted: Sequence[str] = ()  # emotions to ask for: the prompting reference, one configuration each

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

    def check(self, out: Path, model: ModelOptions | None = None) -> None:
        """What the arguments alone say, before any model (or data) loads: the numbers, layer specs (against the
        model's depth where its config tells), positions, output paths."""
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
        dimensions = model.dimensions() if model is not None else None
        for spec in self.layer_sets:
            if not str(spec).strip():  # `--layers ' '`: a mistake, not a silent "all" (nor a folder name with a space)
                raise SteerError(f"--layers {spec!r} names no layers; use all, middle or e.g. 10-19")
            layer_ranges(spec)
            if dimensions is not None:
                parse_layers(spec, dimensions[0])
        if self.config_batch_rows is not None and self.config_batch_rows < 1:
            raise SteerError(f"--config-batch-rows must be a positive number of rows, got {self.config_batch_rows}")
        for p in self.position_sets:
            check_positions(p)
        if model is not None:  # a chat template asked for, that the tokenizer lacks: from the tokenizer alone
            if self.apply_chat_template and not model.has_chat_template():
                raise SteerError(f"--apply-chat-template: the tokenizer of {model.name} has no chat template")
            if self.chat == "on":
                uses_chat(self.chat, model)  # with or without emotion tasks
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

    def sweep_options(self, model: ModelOptions, out: Path) -> SweepOptions:
        model_args = {
            **model.harness_args(),
            "batch_size": self.batch_size,
            "backend": self.backend,
            "prefix_reuse": self.prefix_reuse,
        }
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
        )

    def task_metadata(self) -> dict[str, Any]:
        """lm-eval task metadata beyond the classifier: the truthfulqa_local tasks' folder and the GoEmotions
        folder of the continuation tasks, passed to the tasks instead of through the environment."""
        metadata = {"truthfulqa_dir": str(Path(self.truthfulqa_dir).resolve())} if self.truthfulqa_dir else {}
        if self.fluency_texts and Path(self.fluency_texts).is_dir():  # a GoEmotions folder: the continuation texts
            metadata["goemotions_dir"] = str(Path(self.fluency_texts).resolve())
        return metadata


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


def sweep(
    vectors: Sequence[PathLike],
    alphas: Alphas,
    out: PathLike,
    *,
    model: ModelOptions,
    evaluation: Evaluation,
    progress: bool = True,
) -> RunResult:
    """Evaluate vector files at every alpha x layer set x positions (with their random controls) with one
    model load, resuming a folder of the same sweep, and write the leaderboard.

    Args:
        vectors: the vector files.
        alphas: alphas and KL budgets, e.g. ``"0,0.5,kl:0.1"`` or ``[0, 0.5, "kl:0.1"]``; a budget is the
            alpha whose KL to the unsteered model on neutral texts is that many nats per token, calibrated
            on the model first (and stored next to the vector).
        out: the sweep folder.
        model: the model and how to load it.
        evaluation: tasks, layers, positions, controls, side effects, batching.
        progress: print progress and calibrations to stderr.

    Returns:
        The folder, its leaderboard rows and table, the files written, the results files (no summary:
        see ``run``).
    """
    from steer_plugin.harness.model import SteeredHFLM
    from steer_plugin.study.table import write_leaderboard
    from steer_plugin.vectors.controls import write_controls
    from steer_plugin.vectors.vector import SteeringVector

    if not evaluation.task_names:
        raise SteerError("give --tasks, e.g. --tasks truthfulqa_mc1,truthfulqa_mc2,steer_emotion_anger")
    grid = alpha_grid(alphas)
    folder = Path(out)
    evaluation.check(folder, model)
    paths = [str(v) for v in vectors]
    for v in paths:  # a missing or corrupt vector fails now, not after the model has loaded
        SteeringVector.load(v)
    evaluation.check_texts(grid)
    options = evaluation.sweep_options(model, folder)
    if not evaluation.fresh:  # before the controls are written into the folder
        check_same_sweep(folder, sweep_settings(options))
    tasks = task_manager(options, evaluation.task_metadata())  # an unknown task fails before the model loads
    controls = write_controls(paths, evaluation.controls, folder / "controls") if evaluation.controls else None
    lm = SteeredHFLM(**options.model_args)
    source = options.side_effects or evaluation.text_source()
    plan = SweepPlan.grid(
        paths, grid, evaluation.layer_sets, evaluation.position_sets, controls=controls,
        resolve=_calibrated_alphas(model.name, lm, source, progress),  # kl:X alphas need the model
        control_match=evaluation.control_match, prompted=evaluation.prompted,
    )  # fmt: skip
    results = run_sweep(lm, plan, options, progress, folder=open_sweep_folder(plan, options), tasks=tasks)
    board = write_leaderboard(folder)
    return RunResult(folder, board.rows, board.text, None, board.files, [Path(v) for v in paths], results)


def run(
    *,
    emotion: str,
    model: str = DEFAULT_MODEL,
    dtype: Dtype = "float32",
    device: str | None = None,
    device_map: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    blocks: str | None = None,
    baseline: str = "neutral",
    data: PathLike | None = None,
    split: str = "train",
    max_per_class: int | None = None,
    method: Method | Sequence[Method] = "mean",
    top_k: int = 20,
    centre: Centre = "emotions",
    neutral_pcs: int = 3,
    vector: PathLike | None = None,
    alphas: Alphas = DEFAULT_ALPHAS,
    truthfulqa_dir: PathLike | None = None,
    out: PathLike | None = None,
    leakage_budget: float | None = None,
    tasks: str | Sequence[str] | None = None,
    limit: float | None = None,
    batch_size: int | Literal["auto"] = 8,
    classifier: str | None = None,
    include_path: str | None = None,
    layers: str | Sequence[str] = "middle",
    positions: Positions | Sequence[Positions] = "response",
    backend: Backend = "nnsight",
    log_samples: bool = False,
    controls: int = 1,
    control_match: ControlMatch = "alpha",
    apply_chat_template: bool = False,
    chat: Chat = "auto",
    prompt_control: bool = True,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 1000,
    prefix_reuse: bool = True,
    config_batching: bool = True,
    config_batch_rows: int | None = None,
    fresh: bool = False,
    fluency_texts: PathLike | None = None,
    side_effect_texts: int | None = None,
    side_effects: bool = True,
    progress: bool = True,
) -> RunResult:
    """`steer run`: build the vector if it is missing, calibrate the alphas to KL budgets, sweep them (with a
    norm-matched random control each) over TruthfulQA and the emotion's task, and write the leaderboard and a
    summary in sentences. Finished configurations of an earlier run into the same folder are reused.

    The defaults were chosen by measurement at equal KL (README, "Choosing the defaults"): the class mean
    against the mean of the 27 emotions' means with 3 principal components of neutral states projected out
    (``mean-emotions-npc3``: fewer broken outputs than top-k at equal KL, and ahead of it on anger on both model
    families measured), on the middle third of the layers at the response positions.

    Args:
        emotion: a GoEmotions label or Ekman group (``anger``, ``ekman:anger``), several (``anger,joy``),
            ``all`` (the 27 emotions) or ``ekman`` (the 6 groups): one recording, one sweep.
        model: hub id or local folder; ``dtype``, ``device``, ``device_map`` (e.g. ``auto``), ``revision``,
            ``trust_remote_code`` and ``blocks`` (module path of the decoder blocks) say how to load it.
        baseline: the class the vector points away from.
        data: a local GoEmotions folder (train.tsv, ...); None: the hub dataset. Also the neutral texts of
            the side effects unless ``fluency_texts`` is given.
        split: the split the vector is built from.
        max_per_class: a seeded sample of at most this many texts per class.
        method: ``top_k`` (the ``top_k`` largest differences per layer), ``mean``, ``pca`` or ``probe``
            (see ``build_vector``); several methods build one vector each (from one recording) and sweep them all.
        top_k: neurons kept per layer by ``top_k`` vectors.
        centre: ``emotions`` (against the mean of the 27 emotions' class means; the recording then covers
            them all: every train text unless ``max_per_class``) or ``none`` (vectors against ``baseline``).
        neutral_pcs: project the top K principal components of the baseline texts' states out of the
            vectors (0: none).
        vector: use this vector file instead of ``vectors/<model>/<emotion>-<recipe>.safetensors`` (built
            there if missing; ``anger-mean-emotions-npc3`` by default).
        alphas: alphas and KL budgets, e.g. ``"0,kl:0.1"`` or ``[0, 0.5, "kl:0.1"]``.
        truthfulqa_dir: a local TruthfulQA JSONL folder (default: $STEER_TRUTHFULQA_DIR): the default tasks
            become the offline truthfulqa_local_mc1/mc2.
        out: the run folder (default ``runs/<model>-<emotion>``).
        leakage_budget: the KL budget (or alpha) of leakage.csv/.png (default: the middle one).
        tasks: harness tasks (default: TruthfulQA MC1/MC2 and ``steer_emotion_<emotion>``).
        limit: documents per task (a quick look).
        batch_size: an int or ``auto``; recording uses it too when it is an int.
        classifier: the emotion classifier of the steer_emotion tasks: hub id, local folder or ``nade``.
        include_path: an extra folder of task YAMLs.
        layers: a layer spec (``middle``, ``all``, ``10-19``) or several (each a sweep dimension).
        positions: ``response`` (the last position of each forward), ``all``, or both.
        backend: ``nnsight`` or ``hooks``.
        log_samples: keep the full harness samples (per-document scores are always kept).
        controls: norm-matched random-direction controls per steered configuration (0 = none).
        control_match: at a KL budget, run a control at its vector's alpha (``alpha``) or calibrate it to
            the same budget (``kl``).
        apply_chat_template: format every task's prompts with the chat template (TruthfulQA too).
        chat: the emotion tasks' prompts through the chat template: ``auto`` where the tokenizer has one (a model
            without one gets the continuation tasks, ``steer_emotion_continue_<emotion>``), ``on``, ``off``.
        prompt_control: also evaluate *asking* for each emotion (the prompting reference, a positive control):
            the emotion tasks' prompts with ``data.prompts.emotion_instruction`` as the system message (or a
            prefix without a chat template), unsteered, with its own side effects.
        num_fewshot: few-shot examples (default: each task's own).
        bootstrap_iters: the harness's bootstrap for its standard errors.
        prefix_reuse: score multiple-choice continuations against one KV cache of their shared context.
        config_batching: generate for several configurations in mixed batches.
        config_batch_rows: most rows of one mixed batch (default 64, never below ``batch_size``).
        fresh: discard the results already in ``out`` (needed when they come from another sweep).
        fluency_texts: neutral texts of the side effects and calibrations: a text file or a GoEmotions folder.
        side_effect_texts: neutral texts for the KL/perplexity columns (default 200; 100 with ``limit``).
        side_effects: measure those columns at all.
        progress: print progress, calibrations and what was built to stderr.

    Returns:
        The run folder, its leaderboard rows and table, the summary sentences, the files written, the
        vectors swept and each configuration's results file.
    """
    from steer_plugin.study.report import check_level, parse_targets, run_folder_name, write_study
    from steer_plugin.vectors.build import check_top_k
    from steer_plugin.vectors.request import RecordRequest
    from steer_plugin.vectors.vector import default_vector_path

    emotions = parse_targets(emotion)
    grid = alpha_grid(alphas)
    check_level(leakage_budget, grid)  # before minutes of recording and evaluation
    methods = [method] if isinstance(method, str) else list(method)
    if not methods:
        raise SteerError(f"give at least one method ({', '.join(METHODS)})")
    for m in methods:
        check_choice("method", m, METHODS)
    check_choice("centre", centre, CENTRES)
    check_neutral_pcs(neutral_pcs)
    if vector is not None and len(emotions) > 1:
        raise SteerError("--vector names one vector; give one --emotion with it (or leave --vector out)")
    if vector is not None and len(methods) > 1:
        raise SteerError("--vector names one vector; give one method with it (or leave --vector out)")
    wanted = {
        (e, m): Path(vector) if vector is not None else default_vector_path(model, e, m, top_k, centre, neutral_pcs)
        for e in emotions
        for m in methods
    }
    tq_dir = truthfulqa_dir or os.environ.get(TRUTHFULQA_DIR_ENV)
    loading = ModelOptions(
        name=model, dtype=dtype, device=device, device_map=device_map, revision=revision,
        trust_remote_code=trust_remote_code, blocks=blocks,
    )  # fmt: skip
    if not tasks:
        tq = ["truthfulqa_local_mc1", "truthfulqa_local_mc2"] if tq_dir else ["truthfulqa_mc1", "truthfulqa_mc2"]
        tasks = [*tq, *(f"{emotion_task_family(chat, loading)}_{target_slug(e)}" for e in emotions)]
    asks = prompt_control and any(t.startswith(EMOTION_TASK_PREFIX) for t in _names(tasks))
    default_out = Path("runs") / f"{model_slug(model)}-{run_folder_name(emotion, emotions)}"
    folder = Path(out) if out is not None else default_out
    evaluation = Evaluation(
        tasks=tasks, limit=limit, batch_size=batch_size, classifier=classifier, include_path=include_path,
        layers=layers, positions=positions, backend=backend, log_samples=log_samples, controls=controls,
        control_match=control_match, apply_chat_template=apply_chat_template, chat=chat,
        prompted=emotions if asks else (), num_fewshot=num_fewshot,
        bootstrap_iters=bootstrap_iters, prefix_reuse=prefix_reuse, config_batching=config_batching,
        config_batch_rows=config_batch_rows, fresh=fresh, fluency_texts=fluency_texts or data,
        side_effect_texts=side_effect_texts, side_effects=side_effects, truthfulqa_dir=tq_dir,
    )  # fmt: skip
    missing = {key: path for key, path in wanted.items() if not path.exists()}
    if missing:
        # before building (minutes): the vectors' paths, the run folder and that it holds this sweep
        for path in missing.values():
            check_output_file(path, "--vector" if vector is not None else "vector path")
        evaluation.check(folder, loading)
        evaluation.check_texts(grid)
        if any(m == "top_k" for _, m in missing):  # before recording: K against the hidden size in the config
            dimensions = loading.dimensions()
            check_top_k(top_k, dimensions[1] if dimensions else None)
        if not fresh:
            check_same_sweep(folder, sweep_settings(evaluation.sweep_options(loading, folder)))
        request = RecordRequest(  # the targets are set by what is missing
            model=loading, emotion=emotions[0], baseline=baseline, split=split, data_dir=str(data) if data else None,
            max_per_class=max_per_class, progress=progress,
        )  # fmt: skip
        if isinstance(batch_size, int):  # an 'auto' batch size is the harness's: recording then keeps its default
            request = replace(request, batch_size=batch_size)
        _build_missing(missing, request, Recipe(top_k, centre, neutral_pcs), progress)
    result = sweep(list(wanted.values()), grid, folder, model=loading, evaluation=evaluation, progress=progress)
    try:
        summary, files = write_study(folder, leakage_budget=leakage_budget)
    except SteerError as e:  # e.g. alphas without 0: the table stands, there is nothing to compare against
        _say(progress, f"no summary: {e}")
        return result
    return replace(result, summary=summary, files=[*result.files, *files])


def alpha_grid(alphas: Alphas) -> list[AlphaSpec]:
    """``"0,kl:0.1"``, ``[0, 0.5, "kl:0.1"]`` or parsed specs -> ``[0.0, 0.5, KLBudget(0.1)]``."""
    from steer_plugin.steering.alphas import KLBudget, parse_alpha_specs

    specs: list[AlphaSpec] = []
    for a in [alphas] if isinstance(alphas, str) else alphas:
        specs += [a] if isinstance(a, KLBudget) else parse_alpha_specs(str(a))
    if not specs:
        raise SteerError("give at least one alpha")
    return specs


def _names(value: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``."""
    parts = (value or "").split(",") if isinstance(value, str) or value is None else value
    return [p.strip() for p in parts if p.strip()]


@dataclass(frozen=True)
class Recipe:
    """What the methods of `run`'s vectors share: top-k size, centring, neutral components projected out."""

    top_k: int
    centre: Centre = "none"
    neutral_pcs: int = 0


def _build_missing(
    missing: dict[tuple[str, Method], Path], request: RecordRequest, recipe: Recipe, progress: bool
) -> None:
    """Every missing (emotion, method) vector from one recording pass over their texts and the baseline's
    (and every emotion's, for ``centre="emotions"``)."""
    from steer_plugin.vectors.build import build_vector, needs_activations
    from steer_plugin.vectors.request import recorded, with_all_emotions

    emotions = list(dict.fromkeys(e for e, _ in missing))
    if len(emotions) == 1:
        request = replace(request, emotion=emotions[0])
    else:  # several targets against one baseline, each text recorded once
        request = replace(request, emotion=",".join(emotions), targets=tuple(emotions))
    names = ", ".join(str(p) for p in missing.values())
    _say(progress, f"building {names} (no vector yet)" if len(missing) == 1 else f"building {names} from one recording")
    if recipe.centre == "emotions":
        request = with_all_emotions(request)
    per_text = any(needs_activations(m, recipe.neutral_pcs) for _, m in missing)
    with recorded(request, per_text=per_text) as rec:
        for (emotion, method), path in missing.items():
            vec = build_vector(
                rec.stats, emotion, request.baseline, method=method,
                top_k=recipe.top_k if method == "top_k" else None, centre=recipe.centre,
                neutral_pcs=recipe.neutral_pcs, activations=rec.activations, seed=request.seed,
            )  # fmt: skip
            vec.save(path)
            _say(progress, f"wrote {path}")


def _calibrated_alphas(model_name: str, lm: Any, source: TextSource, progress: bool) -> Resolver:
    """kl:X alphas: calibrate each (vector, layers, positions) on the sweep's model, reusing stored calibrations."""
    from steer_plugin.model.hooks import Steerer
    from steer_plugin.steering.calibrate import calibrate_vector_file
    from steer_plugin.steering.calibration_file import calibration_path
    from steer_plugin.steering.calibration_table import format_calibration

    def resolve(vector: str, layers: str, positions: str, budgets: list[float]) -> dict[float, float]:
        batch = lm.batch_size if isinstance(lm.batch_size, int) else 16
        calibration, reused = calibrate_vector_file(
            lm.model,
            lm.tokenizer,
            vector,
            budgets,
            layers=layers,
            positions=positions,
            source=source,
            model_name=model_name,
            batch_size=max(int(batch), 1),
            steerer=Steerer(lm.model, "hooks", lm.steerer.block_path),
            progress=(lambda m: _say(True, f"calibrating {vector} (layers {layers}, {positions}):{m}"))
            if progress
            else None,
        )
        how = f"stored in {calibration_path(vector)}" if reused else f"calibrated, wrote {calibration_path(vector)}"
        _say(progress, format_calibration(calibration, f"KL budgets of {vector} ({how}):"))
        rows = {b: next(r for r in calibration.rows if math.isclose(r.kl_budget, b, rel_tol=1e-9)) for b in budgets}
        for b, r in rows.items():
            if not r.converged:  # its row would carry a budget whose KL it never had
                _say(progress, f"kl:{b:g} not reached for {vector} (layers {layers}, {positions}): the closest KL "
                               f"is {r.kl_calibration:.4g} at alpha {r.alpha:.5g}; not evaluated")  # fmt: skip
        return {b: r.alpha for b, r in rows.items() if r.converged}

    return resolve


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
