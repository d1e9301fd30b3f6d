"""`steer sweep`: many steering configurations over harness tasks with one model load.

The model and the tasks are built once; each configuration only swaps the steering plan
(``harness.engine``: ``SteeringEngine.configure``). alpha = 0 (the unsteered baseline) runs once. Each
configuration writes the harness's results JSON (with the steering config in ``config.steering``) into its own
folder, so an interrupted sweep resumes by skipping configurations whose results are there and verifiably its
own (``sweep_folder``: ``sweep.json`` holds the plan).

Light at import time (`steer --help` imports it through ``study.run``): torch, numpy and the harness load
inside the functions that run a sweep.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steer_plugin.data.prompts import emotion_instruction
from steer_plugin.errors import SteerError
from steer_plugin.harness.engine import SideEffectMeter, SteeringEngine
from steer_plugin.harness.tasks import is_emotion_task
from steer_plugin.io.atomic import write_files_atomic
from steer_plugin.steering.config import UNSTEERED, SteeringConfig
from steer_plugin.study.plan import SIDE_EFFECTS, SweepOptions, SweepPlan
from steer_plugin.study.results_files import RESULTS_FILE, SAMPLES_RECORD, text_sha256
from steer_plugin.study.sweep_folder import SweepFolder, open_sweep_folder
from steer_plugin.study.task_sets import formatting_groups, load_tasks

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.steering.side_effects import SideEffects


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(1234 + seed)
    torch.manual_seed(1234 + seed)


def check_reproducible(model_args: dict[str, Any], vectors: list[str]) -> None:
    """Every model argument and vector path can be written in ``--model_args`` (no ``,``; no ``;`` in a vector
    path): checked before the model loads, so that every results file's reproduce command names its own model
    and vector."""
    from steer_plugin.harness.steering_args import check_arg_text  # imports torch: not at `steer --help`

    for k, v in model_args.items():
        if v is not None:
            check_arg_text(k, v)
    for v in vectors:
        check_arg_text("vector", v)


def model_args_string(base: dict[str, Any], config: SteeringConfig) -> str:
    """The ``--model_args`` that reproduce one configuration with the stock `lm_eval` CLI (a value that
    cannot be written there is refused: ``check_reproducible``)."""
    args = dict(base)
    if config.steers:
        args.update(
            vector=config.vector, alpha=config.alpha, layers=config.layers.replace(",", ";"), positions=config.positions
        )
    check_reproducible({k: v for k, v in args.items() if k != "vector"}, [args["vector"]] if config.steers else [])
    return ",".join(f"{k}={v}" for k, v in args.items() if v is not None)


def run_sweep(
    engine: SteeringEngine,
    plan: SweepPlan,
    options: SweepOptions,
    progress: bool = True,
    folder: SweepFolder | None = None,
    task_metadata: dict[str, Any] | None = None,
    tasks: Any = None,
) -> list[Path]:
    """Evaluate every configuration (skipping finished ones).

    Args:
        engine: the loaded model (``harness.engine``); each configuration only switches its steering.
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
    state = folder or open_sweep_folder(plan, options)
    for note in state.notes:
        _say(progress, note)
    todo = state.todo
    done_before = len(plan.configs) - len(todo)
    if done_before:
        _say(progress, f"resuming: {done_before}/{len(plan.configs)} configurations already done")
    step = ConfigurationStep(engine, options, state, load_tasks(options, task_metadata, tasks) if todo else {})
    steered = [c for c in todo if c.prompted is None]
    if steered:  # prefix reuse: configurations that share a prefix cache score together
        engine.plan_ahead(steered, config_batching=options.config_batching, rows=options.config_batch_rows)
    started = time.monotonic()
    for i, config in enumerate(todo):
        t0 = time.monotonic()
        step.run(config, todo[i:])
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
    engine.plan_ahead([], config_batching=False, rows=None)
    engine.configure(UNSTEERED)
    return [options.out_dir / c.slug() / RESULTS_FILE for c in plan.configs]


@dataclass
class ConfigurationStep:
    """One configuration of a sweep: evaluate its tasks, score its outputs' fluency, measure its side effects,
    write its folder. Holds what the configurations share: the loaded tasks and the side-effect probe."""

    engine: SteeringEngine
    options: SweepOptions
    state: SweepFolder
    loaded: dict[str, Any]
    probe: SideEffectMeter | None = None
    # config batching: side effects measured early, per slug: (side effects, seconds' share, configurations measured)
    ahead: dict[str, tuple[SideEffects, float, int]] = field(default_factory=dict)

    def run(self, config: SteeringConfig, rest: list[SteeringConfig]) -> Path:
        """Evaluate ``config`` (``rest``: it and the configurations after it) and write its results."""
        engine, options = self.engine, self.options
        if config.prompted is not None:
            # the prompting reference runs last, on prompts no other configuration has: nothing to batch it with
            engine.plan_ahead([], config_batching=False, rows=None)
        engine.configure(config)
        _seed_everything(options.seed)
        t0 = time.monotonic()
        groups = formatting_groups(self.loaded, options, config)
        spent = engine.request_seconds()  # per request type, before this configuration
        alone = None
        if config.prompted is not None and options.config_batching:  # it shares its batches with no configuration
            alone = engine.alone_batch_size(options.config_batch_rows)
        limit, iters = options.limit, options.bootstrap_iters
        with engine.batch_size_as(alone):
            parts = [
                engine.evaluate(tasks, chat=chat, instruction=text, limit=limit, bootstrap_iters=iters)
                for tasks, chat, text in groups
            ]
        results = _merged(parts)
        samples = results.pop("samples", None)
        t_fluency = time.monotonic()
        if samples is not None:
            add_generation_fluency(engine, results, samples)
            if not (options.log_samples or options.per_doc):
                samples = None
        fluency_seconds = time.monotonic() - t_fluency
        seconds = time.monotonic() - t0
        side: dict[str, Any] = {} if config.kl_budget is None else {"kl_budget,none": config.kl_budget}
        side_info = None
        if options.side_effects is not None:
            measured, side_info = self.side_effects(config, [c for c in rest if c.prompted is None])
            side.update(measured.metrics())
            if samples is not None:
                samples[SIDE_EFFECTS] = measured.samples(self.probe.texts if self.probe else [])
        if side:
            results["results"][SIDE_EFFECTS] = {"alias": SIDE_EFFECTS, **side}
        results["config"] = {
            "model": engine.name,
            "model_args": model_args_string(options.model_args, config),
            **engine.model_info(),
            "batch_size": alone or engine.batch_size,
            "limit": options.limit,
            "tasks": options.tasks,
            "classifier": options.classifier,
            "sweep": self.state.records[config.slug()],
            "sweep_settings": self.state.settings,
            "lm_eval_version": importlib.metadata.version("lm_eval"),  # for the report's provenance
            "seconds": round(seconds, 2),
            "generation_fluency_seconds": round(fluency_seconds, 2),  # of ``seconds``: gen_nll of the outputs
            # of ``seconds``: the model's time per request type (the first configuration's includes the batched
            # work of those after it: TruthfulQA tails, mixed generation)
            "request_seconds": {k: round(v - spent.get(k, 0.0), 2) for k, v in engine.request_seconds().items()},
            "side_effects": side_info,
            "reproduce": reproduce_commands(options, config, groups, alone, engine.name),
        }
        if config.prompted is not None:  # the prompting reference: what it asked for, and how
            results["config"]["prompting"] = {
                "emotion": config.prompted,
                "instruction": emotion_instruction(config.prompted),
                "tasks": [n for n in self.loaded["tasks"] if is_emotion_task(n)],
            }
        results["date"] = time.time()
        check_vector_unchanged(config, results["config"])
        return write_configuration(options, config, results, samples)

    def side_effects(
        self, config: SteeringConfig, steered_rest: list[SteeringConfig]
    ) -> tuple[SideEffects, dict[str, Any]]:
        """``config``'s side effects and how they were measured. With config batching, those of every steered
        configuration still to come are measured in one call (each batch of neutral texts runs under several
        configurations per forward) and each counts an equal share of its time; without, one at a time."""
        options = self.options
        assert options.side_effects is not None
        t1 = time.monotonic()
        if self.probe is None:
            texts = options.side_effects.load(options.side_effect_texts)
            self.probe = self.engine.side_effect_meter(texts, options.config_batch_rows)
        together, adjust = None, 0.0
        if config.prompted:
            measured = self.probe.measure_prompted(config.prompted)
        else:
            if config.slug() not in self.ahead:
                t2 = time.monotonic()
                batch = steered_rest if options.config_batching else [config]
                self.ahead = self._measure(batch)
                adjust -= time.monotonic() - t2
            measured, share, count = self.ahead.pop(config.slug())
            adjust += share
            together = count if options.config_batching else None
        info: dict[str, Any] = {
            "texts": options.side_effects.describe(),
            "n_texts": len(self.probe.texts),
            "n_tokens": measured.total_tokens,
            "seconds": round(time.monotonic() - t1 + adjust, 2),
        }
        if together is not None:  # measured in one call with others: `seconds` is an equal share of its time
            info["measured_together"] = together
        if self.probe.window is not None:  # texts whose unsteered prefix was not reused, for the model's window
            info["longer_than_window"] = self.probe.longer_than_window
        return measured, info

    def _measure(self, configs: list[SteeringConfig]) -> dict[str, tuple[SideEffects, float, int]]:
        """The side effects of ``configs`` in one call, per slug: (side effects, an equal share of the call's
        seconds, how many configurations it measured). The shares add up to the time spent."""
        assert self.probe is not None
        t0 = time.monotonic()
        measured = self.probe.measure(configs)
        share = (time.monotonic() - t0) / max(1, len(configs))
        return {c.slug(): (m, share, len(configs)) for c, m in zip(configs, measured)}


def check_vector_unchanged(config: SteeringConfig, recorded: dict[str, Any]) -> None:
    """One sha256 per configuration: the vector file as planned (``sweep``), as steered (``steering``) and as it
    is now must be the same file, else nothing is written (a vector rewritten during the sweep: the next resume
    reruns the configurations of the new file, "the vector file changed since")."""
    from steer_plugin.vectors.vector import file_sha256

    planned = recorded["sweep"].get("vector_sha256")
    if planned is None or config.vector is None:
        return
    used = {v.get("sha256") for v in (recorded.get("steering") or {}).get("vectors", [])}
    try:
        now = file_sha256(config.vector)
    except OSError as e:
        now = f"unreadable ({type(e).__name__})"
    if now != planned or used - {planned}:
        raise SteerError(
            f"{config.vector} changed during the sweep (sha256 {planned[:12]} when planned, {now[:12]} now): "
            f"{config.slug()} was not written; run the sweep again to evaluate the new file"
        )


def write_configuration(
    options: SweepOptions,
    config: SteeringConfig,
    results: dict[str, Any],
    samples: dict[str, list[dict[str, Any]]] | None,
) -> Path:
    """A configuration's folder: its results JSON and its samples, written as one set (a full disk leaves no
    samples without their results); returns the results file."""
    from lm_eval.utils import handle_non_serializable

    from steer_plugin.study.paired import compact_row

    out = options.out_dir / config.slug()
    outputs: dict[Path, str] = {}
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
    return out / RESULTS_FILE


def reproduce_commands(
    options: SweepOptions,
    config: SteeringConfig,
    groups: list[tuple[dict[str, Any], bool, str | None]],
    batch_size: int | None = None,
    model: str = "steered_hf",
) -> list[str]:
    """The stock ``lm_eval`` command lines that evaluate this configuration as the sweep did: one per formatting
    group (tasks with and without the chat template are separate harness runs); ``batch_size``: the one it ran
    with where that was not the sweep's."""
    import shlex

    extra = {"steer_split": options.prompt_split} if options.prompt_split != "test" else {}
    chosen = {**({"classifier": options.classifier} if options.classifier else {}), **extra}
    metadata = json.dumps(chosen) if chosen else None
    lines = []
    for tasks, chat, instruction in groups:
        base = {**options.model_args, **({"batch_size": batch_size} if batch_size else {})}
        words = ["lm_eval", "--model", model, "--model_args", model_args_string(base, config)]
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


def _generation(row: dict[str, Any]) -> str:
    """A samples row's (first) generation."""
    resp = row["resps"][0]
    return str(resp[0] if isinstance(resp, list) else resp)


def add_generation_fluency(
    engine: SteeringEngine, results: dict[str, Any], samples: dict[str, list[dict[str, Any]]]
) -> None:
    """``gen_nll`` of every emotion-task generation: its NLL per token under the unsteered model given its prompt
    (an empty generation: the NLL of stopping at once, the end-of-text token), per document in ``samples`` and
    as the task's mean in ``results`` (``gen_ppl`` = exp of that mean). The emotion tasks share their prompts and
    generations: each distinct (prompt, generation) is scored once."""
    tasks = {task: rows for task, rows in samples.items() if is_emotion_task(task) and rows}
    texts = {id(row): (str(row["arguments"][0][0]), _generation(row)) for rows in tasks.values() for row in rows}
    distinct = list(dict.fromkeys(texts.values()))
    nll_of = dict(zip(distinct, engine.generation_nll(distinct)))
    for task, rows in tasks.items():
        nlls = [nll_of[texts[id(row)]] for row in rows]
        for row, nll in zip(rows, nlls):
            row["gen_nll"] = nll
            row["metrics"] = [*row.get("metrics", []), "gen_nll"]
        mean = math.fsum(nlls) / len(nlls)
        results["results"][task].update({"gen_nll,none": mean, "gen_ppl,none": math.exp(mean)})
        results.setdefault("higher_is_better", {}).setdefault(task, {}).update(gen_nll=False, gen_ppl=False)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        import sys

        print(message, file=sys.stderr, flush=True)
