"""`steer sweep`: many steering configurations over harness tasks with one model load.

The model and the tasks are built once; each configuration only swaps the steering plan
(``SteeredHFLM.configure``). alpha = 0 (the unsteered baseline) runs once. Each configuration writes
the harness's results JSON (with the steering config in ``config.steering``) into its own folder, so
an interrupted sweep resumes by skipping configurations whose results are there and verifiably its own
(``sweep_folder``: ``sweep.json`` holds the plan).

Light at import time (`steer --help` imports it through ``study.run``): torch, numpy and the harness load
inside the functions that run a sweep.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from steer_plugin.data.prompts import INSTRUCTION_DELIMITER, emotion_instruction
from steer_plugin.errors import SteerError
from steer_plugin.harness.tasks import is_emotion_task, tasks_dir
from steer_plugin.io.atomic import write_files_atomic
from steer_plugin.steering.config import UNSTEERED, SteeringConfig
from steer_plugin.study.plan import SIDE_EFFECTS, SweepOptions, SweepPlan
from steer_plugin.study.results_files import RESULTS_FILE, SAMPLES_RECORD, text_sha256
from steer_plugin.study.sweep_folder import SweepFolder, open_sweep_folder

GENERATION_NLL_ROWS = 32  # sequences per forward of the outputs' fluency (gen_nll)


def task_manager(options: SweepOptions, metadata: dict[str, Any] | None = None) -> Any:
    """The harness's task index for these tasks (honouring the classifier metadata and our task folder); an
    unknown task is an error here, before any model loads.

    ``metadata``: more task metadata (lm-eval's ``--metadata``), e.g. ``truthfulqa_dir`` of the
    truthfulqa_local tasks."""
    from lm_eval.tasks import TaskManager

    includes = [str(tasks_dir())] + ([options.include_path] if options.include_path else [])
    metadata = {**({"classifier": options.classifier} if options.classifier else {}), **(metadata or {})}
    # our folders alone index in a second; the harness's own ~10k task files take ~20 s, so only when needed
    manager = TaskManager(include_path=includes, metadata=metadata, include_defaults=False)
    if any(t not in manager.all_tasks for t in options.tasks):
        manager = TaskManager(include_path=includes, metadata=metadata)
    unknown = [t for t in options.tasks if t not in manager.all_tasks]
    if unknown:
        raise SteerError(f"unknown task(s) {', '.join(unknown)}; see `lm_eval ls tasks` or `steer tasks-dir`")
    return manager


def load_tasks(options: SweepOptions, metadata: dict[str, Any] | None = None, manager: Any = None) -> dict[str, Any]:
    """Build the harness tasks once, from ``manager`` (``task_manager(options, metadata)`` when None)."""
    manager = manager or task_manager(options, metadata)
    loaded = manager.load(options.tasks)
    for task in loaded["tasks"].values():
        if options.gen_kwargs and task.get_config("output_type") == "generate_until":
            task.set_config(key="generation_kwargs", value=options.gen_kwargs, update=True)
        if options.num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=options.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=1234)
    return loaded


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(1234 + seed)
    torch.manual_seed(1234 + seed)


def model_args_string(base: dict[str, Any], config: SteeringConfig) -> str:
    """The ``--model_args`` that reproduce one configuration with the stock `lm_eval` CLI."""
    args = dict(base)
    if config.steers:
        args.update(
            vector=config.vector, alpha=config.alpha, layers=config.layers.replace(",", ";"), positions=config.positions
        )
    return ",".join(f"{k}={v}" for k, v in args.items() if v is not None)


def run_sweep(
    lm: Any,
    plan: SweepPlan,
    options: SweepOptions,
    progress: bool = True,
    folder: SweepFolder | None = None,
    task_metadata: dict[str, Any] | None = None,
    tasks: Any = None,
) -> list[Path]:
    """Evaluate every configuration (skipping finished ones).

    Args:
        lm: the loaded ``steered_hf`` model; each configuration only switches its steering.
        plan: the configurations, in order.
        options: tasks, output folder and evaluation settings.
        progress: one line per configuration on stderr.
        folder: from ``open_sweep_folder(plan, options)`` when the caller checked the output folder
            before loading the model (``steer_plugin.run`` does); opened here otherwise.
        task_metadata: see ``load_tasks``.
        tasks: the ``task_manager`` the caller already built (and checked the task names with).

    Returns:
        The results file of every configuration of the plan, in plan order.
    """
    from lm_eval.evaluator import evaluate
    from lm_eval.utils import handle_non_serializable

    from steer_plugin.study.paired import compact_row

    state = folder or open_sweep_folder(plan, options)
    for note in state.notes:
        _say(progress, note)
    todo = state.todo
    done_before = len(plan.configs) - len(todo)
    if done_before:
        _say(progress, f"resuming: {done_before}/{len(plan.configs)} configurations already done")
    loaded = load_tasks(options, task_metadata, tasks) if todo else {}
    files: list[Path] = []
    started = time.monotonic()
    planning = hasattr(lm, "plan_ahead")
    steered = [c for c in todo if c.prompted is None]
    if steered and planning:  # prefix reuse: configurations that share a prefix cache score together
        lm.plan_ahead(steered, **_batching_args(lm, options))
    probe = None
    prompt_cache = None  # the emotion tasks' prompts, run once for every configuration's gen_nll
    ahead: dict[str, tuple[Any, float, int]] = {}  # config batching: side effects measured early, see measure_ahead
    for i, config in enumerate(todo):
        if config.prompted is not None and planning:
            # the prompting reference runs last, on prompts no other configuration has: nothing to batch it with
            lm.plan_ahead([])
        lm.configure(config)
        _seed_everything(options.seed)
        t0 = time.monotonic()
        groups = formatting_groups(loaded, options, config)
        spent = dict(getattr(lm, "seconds", {}))  # per request type, before this configuration
        alone = _alone_batch_size(lm, options) if config.prompted is not None else None
        with _batch_size(lm, alone):
            parts = [
                evaluate(
                    lm=lm,
                    task_dict=tasks,
                    limit=options.limit,
                    bootstrap_iters=options.bootstrap_iters,
                    log_samples=True,  # the generations are needed for their fluency
                    system_instruction=instruction,
                    apply_chat_template=chat,
                    fewshot_as_multiturn=False,
                    verbosity="WARNING",
                )
                for tasks, chat, instruction in groups
            ]
        results = _merged(parts)
        samples = results.pop("samples", None)
        t_fluency = time.monotonic()
        if samples is not None:
            if prompt_cache is None:
                prompt_cache = _prompt_cache(lm)
            add_generation_fluency(lm, results, samples, prompt_cache)
            if not (options.log_samples or options.per_doc):
                samples = None
        fluency_seconds = time.monotonic() - t_fluency
        seconds = time.monotonic() - t0
        side: dict[str, Any] = {} if config.kl_budget is None else {"kl_budget,none": config.kl_budget}
        side_info = None
        if options.side_effects is not None:
            t1 = time.monotonic()
            if probe is None:
                probe = side_effect_probe(lm, options)
            together, adjust = None, 0.0  # batched: each configuration counts an equal share of the call's time
            if config.prompted:
                measured = probe.measure_prompted(instruction_ids(lm, config.prompted))
            elif planning and options.config_batching:
                if config.slug() not in ahead:
                    t2 = time.monotonic()
                    ahead = measure_ahead(lm, probe, [c for c in todo[i:] if c.prompted is None])
                    adjust -= time.monotonic() - t2
                measured, share, together = ahead.pop(config.slug())
                adjust += share
            else:
                measured = probe.measure(lm.plan, lm.positions)
            side.update(measured.metrics())
            side_info = {
                "texts": options.side_effects.describe(),
                "n_texts": len(probe.texts),
                "n_tokens": measured.total_tokens,
                "seconds": round(time.monotonic() - t1 + adjust, 2),
            }
            if together is not None:  # measured in one call with others: `seconds` is an equal share of its time
                side_info["measured_together"] = together
            if probe.window is not None:  # texts whose unsteered prefix was not reused, for the model's window
                side_info["longer_than_window"] = probe.longer_than_window
            if samples is not None:
                samples[SIDE_EFFECTS] = measured.samples(probe.texts)
        if side:
            results["results"][SIDE_EFFECTS] = {"alias": SIDE_EFFECTS, **side}
        results["config"] = {
            "model": "steered_hf",
            "model_args": model_args_string(options.model_args, config),
            **lm.get_model_info(),
            "batch_size": alone or lm.batch_size,
            "limit": options.limit,
            "tasks": options.tasks,
            "classifier": options.classifier,
            "sweep": state.records[config.slug()],
            "sweep_settings": state.settings,
            "seconds": round(seconds, 2),
            "generation_fluency_seconds": round(fluency_seconds, 2),  # of ``seconds``: gen_nll of the outputs
            # of ``seconds``: the model's time per request type (the first configuration's includes the batched
            # work of those after it: TruthfulQA tails, mixed generation)
            "request_seconds": {k: round(v - spent.get(k, 0.0), 2) for k, v in getattr(lm, "seconds", {}).items()},
            "side_effects": side_info,
            "reproduce": reproduce_commands(options, config, groups, alone),
        }
        if config.prompted is not None:  # the prompting reference: what it asked for, and how
            results["config"]["prompting"] = {
                "emotion": config.prompted,
                "instruction": emotion_instruction(config.prompted),
                "tasks": [n for n in loaded["tasks"] if is_emotion_task(n)],
            }
        results["date"] = time.time()
        out = options.out_dir / config.slug()
        outputs: dict[Path, str] = {}  # one set: a full disk leaves no samples without their results
        if samples is not None:
            for task, rows in samples.items():
                rows = rows if options.log_samples else [compact_row(r) for r in rows]
                outputs[out / f"samples_{task}.jsonl"] = "".join(
                    json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n" for r in rows
                )
        # what the Δ columns read: a resume reruns this configuration if one of them goes missing or changes
        results["config"][SAMPLES_RECORD] = {path.name: text_sha256(text) for path, text in outputs.items()}
        outputs[out / RESULTS_FILE] = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
        write_files_atomic(outputs)
        files.append(out / RESULTS_FILE)
        if i == 0:
            # the first configuration also ran the batched work of the others (TruthfulQA tails, mixed generation):
            # it says nothing about how long the rest take
            started = time.monotonic()
            eta = ""
        else:
            eta = f", ETA {(time.monotonic() - started) / i * (len(todo) - i - 1):.0f}s"
        _say(
            progress, f"[{done_before + i + 1}/{len(plan.configs)}] {config.slug()} ({time.monotonic() - t0:.1f}s{eta})"
        )
    if planning:
        lm.plan_ahead([])
    lm.configure(UNSTEERED)
    return [options.out_dir / c.slug() / RESULTS_FILE for c in plan.configs]


def chat_tasks(loaded: dict[str, Any], spec: bool | list[str]) -> set[str]:
    """The leaf tasks whose prompts go through the chat template: all (True), none (False), or those named
    (a group names all of its tasks)."""
    if spec is True or spec is False:
        return set(loaded["tasks"]) if spec else set()
    named = set(spec)
    chosen = {n for n in loaded["tasks"] if n in named}
    for name, group in loaded.get("groups", {}).items():
        if name in named:
            chosen |= {t.task_name for t in group.get_all_tasks()}
    return chosen


def _subset(loaded: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The task dict of some of the loaded tasks, with the groups all of whose tasks are among them."""
    keep = set(names)
    groups = {
        g: grp for g, grp in loaded.get("groups", {}).items() if {t.task_name for t in grp.get_all_tasks()} <= keep
    }
    return {
        "tasks": {n: t for n, t in loaded["tasks"].items() if n in keep},
        "groups": groups,
        "group_map": {g: c for g, c in loaded.get("group_map", {}).items() if g in groups},
    }


def formatting_groups(
    loaded: dict[str, Any], options: SweepOptions, config: SteeringConfig
) -> list[tuple[dict[str, Any], bool, str | None]]:
    """One configuration's tasks by how their prompts are formatted: (task dict, chat template, system instruction).

    The harness formats all tasks of one evaluation alike, so tasks with and without the chat template
    (``steer run``: the emotion tasks with it, TruthfulQA as the harness formats it) are evaluated apart. A
    prompted configuration (the prompting reference) runs only the emotion tasks, its instruction as the system
    message (or, without a chat template, before the prompt)."""
    names = [n for n in loaded["tasks"] if config.prompted is None or is_emotion_task(n)]
    if not names:
        raise SteerError("the prompting reference needs an emotion task (steer_emotion_*) among the tasks")
    chat = chat_tasks(loaded, options.apply_chat_template)
    instruction = emotion_instruction(config.prompted) if config.prompted else None
    out = []
    for templated in (True, False):
        part = [n for n in names if (n in chat) == templated]
        if part:
            out.append((_subset(loaded, part), templated, instruction))
    return out


def reproduce_commands(
    options: SweepOptions,
    config: SteeringConfig,
    groups: list[tuple[dict[str, Any], bool, str | None]],
    batch_size: int | None = None,
) -> list[str]:
    """The stock ``lm_eval`` command lines that evaluate this configuration as the sweep did: one per formatting
    group (tasks with and without the chat template are separate harness runs); ``batch_size``: the one it ran
    with where that was not the sweep's."""
    import shlex

    metadata = json.dumps({"classifier": options.classifier}) if options.classifier else None
    lines = []
    for tasks, chat, instruction in groups:
        base = {**options.model_args, **({"batch_size": batch_size} if batch_size else {})}
        words = ["lm_eval", "--model", "steered_hf", "--model_args", model_args_string(base, config)]
        words += ["--tasks", ",".join(tasks["tasks"])]
        if options.limit is not None:
            words += ["--limit", f"{options.limit:g}"]
        if chat:
            words.append("--apply_chat_template")
        if instruction:
            words += ["--system_instruction", instruction]
        if metadata:
            words += ["--metadata", metadata]
        lines.append(shlex.join(words))
    return lines


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from evaluations of disjoint task sets (their per-task tables side by side)."""
    out = parts[0]
    for extra in parts[1:]:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out.setdefault(key, value)
    return out


def _alone_batch_size(lm: Any, options: SweepOptions) -> int | None:
    """The prompting reference shares its batches with no configuration (its prompts are its own), so with config
    batching on it generates in batches as large as a mixed batch instead: decoding a small model costs nearly
    the same for 8 rows as for 50 (SmolLM2 on 2 CPU cores: 47 s at 8 rows, 22 s at 25, 50 prompts). Its results
    and the command that reproduces it say that batch size. None: the harness's batch size."""
    if not options.config_batching or not hasattr(lm, "batch_size_per_gpu") or not str(lm.batch_size).isdigit():
        return None
    from steer_plugin.harness.config_batching import DEFAULT_ROWS

    return max(options.config_batch_rows or DEFAULT_ROWS, int(lm.batch_size))


@contextmanager
def _batch_size(lm: Any, size: int | None) -> Iterator[None]:
    """The harness's batch size set to ``size`` (None: as it is) while the block runs."""
    if size is None:
        yield
        return
    before = lm.batch_size_per_gpu
    lm.batch_size_per_gpu = size
    try:
        yield
    finally:
        lm.batch_size_per_gpu = before


def instruction_ids(lm: Any, target: str) -> list[int]:
    """The prompting reference's instruction as the side-effect probe prepends it to a neutral text."""
    return list(lm.tokenizer(emotion_instruction(target) + INSTRUCTION_DELIMITER)["input_ids"])


def _generation(row: dict[str, Any]) -> str:
    """A samples row's (first) generation."""
    resp = row["resps"][0]
    return str(resp[0] if isinstance(resp, list) else resp)


def _prompt_cache(lm: Any) -> Any:
    from steer_plugin.steering.generation_nll import PromptCache

    return PromptCache(lm.model)


def add_generation_fluency(
    lm: Any, results: dict[str, Any], samples: dict[str, list[dict[str, Any]]], prompts: Any = None
) -> None:
    """``gen_nll`` of every emotion-task generation: its NLL per token under the unsteered model given its prompt
    (an empty generation: the NLL of stopping at once, the end-of-text token), per document in ``samples`` and
    as the task's mean in ``results`` (``gen_ppl`` = exp of that mean). The emotion tasks share their prompts and
    generations: each distinct (prompt, generation) is scored once. ``prompts``: a ``PromptCache`` kept across
    configurations (their prompts are the same)."""
    from steer_plugin.steering.generation_nll import continuation_nll

    eos = getattr(lm.tokenizer, "eos_token_id", None)
    tasks = {task: rows for task, rows in samples.items() if is_emotion_task(task) and rows}
    texts = {id(row): (str(row["arguments"][0][0]), _generation(row)) for rows in tasks.values() for row in rows}
    distinct = list(dict.fromkeys(texts.values()))
    pairs = []
    for context, text in distinct:
        cont = lm.tok_encode(text, add_special_tokens=False) if text else []
        pairs.append((lm.tok_encode(context), cont or ([eos] if eos is not None else [])))
    # one unhooked forward per batch, compute-bound: more rows than the harness's batch (the logits stay bounded)
    scored = continuation_nll(
        lm.model, lm.tokenizer, pairs, batch_size=GENERATION_NLL_ROWS, max_length=lm.max_length, prompts=prompts
    )
    nll_of = dict(zip(distinct, scored))
    for task, rows in tasks.items():
        nlls = [nll_of[texts[id(row)]].per_token for row in rows]
        for row, nll in zip(rows, nlls):
            row["gen_nll"] = nll
            row["metrics"] = [*row.get("metrics", []), "gen_nll"]
        mean = math.fsum(nlls) / len(nlls)
        results["results"][task].update({"gen_nll,none": mean, "gen_ppl,none": math.exp(mean)})
        results.setdefault("higher_is_better", {}).setdefault(task, {}).update(gen_nll=False, gen_ppl=False)


def side_effect_probe(lm: Any, options: SweepOptions) -> Any:
    """The sweep's fluency probe on the lm's model: texts tokenized and the unsteered pass done once."""
    from steer_plugin.model.hooks import DEFAULT_ROWS, Steerer
    from steer_plugin.steering.side_effects import SideEffectProbe

    texts = options.side_effects.load(options.side_effect_texts)
    batch = lm.batch_size if isinstance(lm.batch_size, int) else 16
    steerer = Steerer(lm.model, "hooks", lm.steerer.block_path)  # same blocks as lm.plan, no tracing overhead
    rows = options.config_batch_rows or DEFAULT_ROWS  # as many rows per forward as a mixed generation batch
    probe = SideEffectProbe(
        lm.model, lm.tokenizer, texts, steerer=steerer, batch_size=max(int(batch), 1), config_rows=rows
    )
    probe.baseline()
    return probe


def measure_ahead(lm: Any, probe: Any, configs: list[SteeringConfig]) -> dict[str, tuple[Any, float, int]]:
    """The side effects of ``configs`` in one ``measure_many`` call (config batching: each batch of neutral texts
    runs under several configurations per forward), per slug: (side effects, an equal share of the call's
    seconds, how many configurations it measured). The shares add up to the time spent, as the per-configuration
    times of the one-at-a-time path do."""
    t0 = time.monotonic()
    resolved = [lm.resolve(c) for c in configs]
    measured = probe.measure_many([r.plan for r in resolved], [r.positions for r in resolved])
    share = (time.monotonic() - t0) / max(1, len(configs))
    return {c.slug(): (m, share, len(configs)) for c, m in zip(configs, measured)}


def _batching_args(lm: Any, options: SweepOptions) -> dict[str, Any]:
    """plan_ahead's config-batching arguments, for a model that takes them."""
    import inspect

    if "config_batching" not in inspect.signature(lm.plan_ahead).parameters:
        return {}
    return {"config_batching": options.config_batching, "rows": options.config_batch_rows}


def _say(enabled: bool, message: str) -> None:
    if enabled:
        import sys

        print(message, file=sys.stderr, flush=True)
