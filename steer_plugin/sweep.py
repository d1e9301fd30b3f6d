"""`steer sweep`: many steering configurations over harness tasks with one model load.

The model and the tasks are built once; each configuration only swaps the steering plan
(``SteeredHFLM.configure``). alpha = 0 (the unsteered baseline) runs once. Each configuration writes
the harness's results JSON (with the steering config in ``config.steering``) into its own folder, so
an interrupted sweep resumes by skipping configurations whose results are there and verifiably its own
(``sweep_folder``: ``sweep.json`` holds the plan).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError
from steer_plugin.results_files import RESULTS_FILE
from steer_plugin.sweep_folder import SweepFolder, open_sweep_folder

SIDE_EFFECTS = "side_effects"  # the results entry with kl / ppl (and kl_budget) of a configuration
CONTROL_MATCHES = ("alpha", "kl")  # a random control at its vector's alpha, or at its own alpha for the same KL


@dataclass(frozen=True)
class SweepConfig:
    vector: str | None  # None = the unsteered baseline
    alpha: float
    layers: str = "all"
    positions: str = "all"
    kl_budget: float | None = None  # the KL budget the alpha was calibrated for (``kl:0.1``), if any

    @property
    def is_baseline(self) -> bool:
        return self.vector is None or self.alpha == 0

    def slug(self) -> str:
        if self.is_baseline:
            return "baseline"
        name = Path(str(self.vector)).stem
        fields = asdict(self)
        if self.kl_budget is None:
            del fields["kl_budget"]  # plain alphas keep the folder names of earlier versions
        h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
        budget = "" if self.kl_budget is None else f"_kl{self.kl_budget:g}"
        return f"{name}{budget}_a{self.alpha:g}_L{self.layers.replace(',', '.')}_{self.positions}_{h}"


@dataclass
class SweepPlan:
    configs: list[SweepConfig]

    @classmethod
    def grid(
        cls,
        vectors: list[str],
        alphas: list[Any],
        layer_sets: list[str],
        positions: list[str],
        baseline: bool = True,
        controls: dict[str, list[str]] | None = None,
        resolve: Resolver | None = None,
        control_match: str = "alpha",
    ) -> SweepPlan:
        """Every vector x layer set x positions x alpha. An alpha may be a KL budget
        (``calibrate.KLBudget``); ``resolve(vector, layers, positions, budgets)`` turns the budgets of
        one (vector, layers, positions) into alphas ``{budget: alpha}``. ``controls`` maps a vector to its
        random controls, each evaluated right after it at every level of that vector: at the same alpha
        (``control_match="alpha"``), or, for a KL budget, at the control's own alpha for that budget
        (``"kl"``: the same side effects instead of the same size)."""
        from steer_plugin.calibrate import KLBudget

        if control_match not in CONTROL_MATCHES:
            raise SteerError(f"control match must be one of {', '.join(CONTROL_MATCHES)}, got {control_match!r}")
        if not vectors:
            raise SteerError("give at least one --vector")
        if not alphas:
            raise SteerError("give at least one alpha")
        budgets = [a.kl for a in alphas if isinstance(a, KLBudget)]
        if budgets and resolve is None:
            raise SteerError("KL budgets (kl:X) need a model to calibrate on")
        configs: list[SweepConfig] = []
        if baseline or 0 in alphas:
            configs.append(SweepConfig(None, 0.0))
        for v in vectors:
            for layers in layer_sets:
                for pos in positions:
                    found = {}
                    for vec in [v, *(controls or {}).get(v, [])]:
                        own = vec == v or control_match == "kl"
                        found[vec] = resolve(vec, layers, pos, budgets) if own and budgets and resolve else {}
                    for a in alphas:
                        if a == 0 and not isinstance(a, KLBudget):
                            continue
                        for vec in found:
                            if isinstance(a, KLBudget):  # 4 significant digits: readable tables, KL unchanged
                                alpha = (found[vec] or found[v])[a.kl]
                                configs.append(SweepConfig(vec, float(f"{alpha:.4g}"), layers, pos, a.kl))
                            else:
                                configs.append(SweepConfig(vec, float(a), layers, pos))
        return cls(configs)


Resolver = Callable[[str, str, str, list[float]], dict[float, float]]


@dataclass
class SweepOptions:
    tasks: list[str]
    out_dir: Path
    limit: float | None = None
    classifier: str | None = None
    include_path: str | None = None
    log_samples: bool = False  # full harness samples rows (documents, prompts, responses)
    per_doc: bool = True  # compact per-document scores (for paired intervals in `steer table`)
    apply_chat_template: bool = False
    num_fewshot: int | None = None
    gen_kwargs: dict[str, Any] | None = None
    bootstrap_iters: int = 1000
    seed: int = 0
    model_args: dict[str, Any] = field(default_factory=dict)
    fresh: bool = False  # discard the results already in out_dir (they may belong to another sweep)
    # side effects (KL, perplexity on neutral texts) of every configuration; None = not measured
    side_effects: Any = None  # steer_plugin.fluency.TextSource
    side_effect_texts: int = 200
    config_batching: bool = True  # several configurations per batch (config_batching.py); results are the same
    config_batch_rows: int | None = None  # most rows in one mixed batch (None: config_batching.DEFAULT_ROWS)


def load_tasks(options: SweepOptions) -> dict[str, Any]:
    """Build the harness tasks once (honouring the classifier metadata and our task folder)."""
    from lm_eval.tasks import TaskManager

    from steer_plugin.tasks_dir import tasks_dir

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

    from steer_plugin.atomic import write_text_atomic
    from steer_plugin.paired import compact_row

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
    from steer_plugin.fluency import FluencyProbe
    from steer_plugin.steering import Steerer

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
