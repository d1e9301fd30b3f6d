"""`steer sweep`: many steering configurations over harness tasks with one model load.

The model and the tasks are built once; each configuration only swaps the steering plan
(``SteeredHFLM.configure``). alpha = 0 (the unsteered baseline) runs once. Each configuration writes
the harness's results JSON (with the steering config in ``config.steering``) into its own folder, so
an interrupted sweep resumes by skipping configurations whose results are there and verifiably its own
(``sweep_folder``: ``sweep.json`` holds the plan).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError
from steer_plugin.study.plan import SIDE_EFFECTS, SweepConfig, SweepOptions, SweepPlan
from steer_plugin.study.results_files import RESULTS_FILE
from steer_plugin.study.sweep_folder import SweepFolder, open_sweep_folder


def load_tasks(options: SweepOptions) -> dict[str, Any]:
    """Build the harness tasks once (honouring the classifier metadata and our task folder)."""
    from lm_eval.tasks import TaskManager

    from steer_plugin.harness.tasks import tasks_dir

    includes = [str(tasks_dir())] + ([options.include_path] if options.include_path else [])
    metadata = {"classifier": options.classifier} if options.classifier else {}
    # our folders alone index in a second; the harness's own ~10k task files take ~20 s, so only when needed
    manager = TaskManager(include_path=includes, metadata=metadata, include_defaults=False)
    if any(t not in manager.all_tasks for t in options.tasks):
        manager = TaskManager(include_path=includes, metadata=metadata)
    unknown = [t for t in options.tasks if t not in manager.all_tasks]
    if unknown:
        raise SteerError(f"unknown task(s) {', '.join(unknown)}; see `lm_eval ls tasks` or `steer tasks-dir`")
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


def model_args_string(base: dict[str, Any], config: SweepConfig) -> str:
    """The ``--model_args`` that reproduce one configuration with the stock `lm_eval` CLI."""
    args = dict(base)
    if not config.is_baseline:
        args.update(
            vector=config.vector, alpha=config.alpha, layers=config.layers.replace(",", ";"), positions=config.positions
        )
    return ",".join(f"{k}={v}" for k, v in args.items() if v is not None)


def run_sweep(
    lm: Any, plan: SweepPlan, options: SweepOptions, progress: bool = True, folder: SweepFolder | None = None
) -> list[Path]:
    """Evaluate every configuration (skipping finished ones); returns the results files.

    ``folder``: from ``open_sweep_folder(plan, options)`` when the caller checked the output folder
    before loading the model (the CLI does); opened here otherwise."""
    from lm_eval.evaluator import evaluate
    from lm_eval.utils import handle_non_serializable

    from steer_plugin.io.atomic import write_text_atomic
    from steer_plugin.study.paired import compact_row

    state = folder or open_sweep_folder(plan, options)
    for note in state.notes:
        _say(progress, note)
    todo = state.todo
    done_before = len(plan.configs) - len(todo)
    if done_before:
        _say(progress, f"resuming: {done_before}/{len(plan.configs)} configurations already done")
    loaded = load_tasks(options) if todo else None
    files: list[Path] = []
    started = time.monotonic()
    if todo and hasattr(lm, "plan_ahead"):  # prefix reuse: configurations that share a prefix cache score together
        lm.plan_ahead(
            [
                {
                    "vector": None if c.is_baseline else c.vector,
                    "alpha": c.alpha,
                    "layers": c.layers,
                    "positions": c.positions,
                }
                for c in todo
            ],
            **_batching_args(lm, options),
        )
    probe = None
    for i, config in enumerate(todo):
        lm.configure(None if config.is_baseline else config.vector, config.alpha, config.layers, config.positions)
        _seed_everything(options.seed)
        t0 = time.monotonic()
        results = evaluate(
            lm=lm,
            task_dict=loaded,
            limit=options.limit,
            bootstrap_iters=options.bootstrap_iters,
            log_samples=options.log_samples or options.per_doc,
            apply_chat_template=options.apply_chat_template,
            fewshot_as_multiturn=False,
            verbosity="WARNING",
        )
        samples = results.pop("samples", None)
        seconds = time.monotonic() - t0
        side: dict[str, Any] = {} if config.kl_budget is None else {"kl_budget,none": config.kl_budget}
        side_info = None
        if options.side_effects is not None:
            t1 = time.monotonic()
            if probe is None:
                probe = side_effect_probe(lm, options)
            measured = probe.measure(lm.plan, lm.positions)
            side.update(measured.metrics())
            side_info = {
                "texts": options.side_effects.describe(),
                "n_texts": len(probe.texts),
                "n_tokens": measured.total_tokens,
                "seconds": round(time.monotonic() - t1, 2),
            }
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
            "batch_size": lm.batch_size,
            "limit": options.limit,
            "tasks": options.tasks,
            "classifier": options.classifier,
            "sweep": state.records[config.slug()],
            "sweep_settings": state.settings,
            "seconds": round(seconds, 2),
            "side_effects": side_info,
        }
        results["date"] = time.time()
        out = options.out_dir / config.slug()
        if samples is not None:
            for task, rows in samples.items():
                rows = rows if options.log_samples else [compact_row(r) for r in rows]
                write_text_atomic(
                    out / f"samples_{task}.jsonl",
                    "".join(json.dumps(r, default=handle_non_serializable, ensure_ascii=False) + "\n" for r in rows),
                )
        write_text_atomic(
            out / RESULTS_FILE, json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
        )
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
    if hasattr(lm, "plan_ahead"):
        lm.plan_ahead([])
    lm.configure(None, 0.0)
    return [options.out_dir / c.slug() / RESULTS_FILE for c in plan.configs]


def side_effect_probe(lm: Any, options: SweepOptions) -> Any:
    """The sweep's fluency probe on the lm's model: texts tokenized and the unsteered pass done once."""
    from steer_plugin.model.hooks import Steerer
    from steer_plugin.steering.side_effects import FluencyProbe

    texts = options.side_effects.load(options.side_effect_texts)
    batch = lm.batch_size if isinstance(lm.batch_size, int) else 16
    steerer = Steerer(lm.model, "hooks", lm.steerer.block_path)  # same blocks as lm.plan, no tracing overhead
    probe = FluencyProbe(lm.model, lm.tokenizer, texts, steerer=steerer, batch_size=max(int(batch), 1))
    probe.baseline()
    return probe


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
