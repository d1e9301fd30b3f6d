"""`steer sweep`, `table`, `report` and `run`: argparse, then one library call, then print."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any, get_args

from steer_plugin.cli.args import (
    add_fluency_texts_arg,
    add_max_per_class_arg,
    add_model_args,
    alpha_specs,
    batch_size,
    model_options,
)
from steer_plugin.errors import SteerError
from steer_plugin.model.backends import Backend
from steer_plugin.study.evaluation import ENGINES, Chat, ControlMatch, Evaluation
from steer_plugin.study.run import DEFAULT_ALPHAS, RecordOptions, RunResult, run, sweep
from steer_plugin.study.tuning_file import AUTO
from steer_plugin.vectors.metadata import Method
from steer_plugin.vectors.recipe import DEFAULT_RECIPE, DEFAULT_TOP_K, Recipe

DEFAULTS = Evaluation()  # the one set of defaults of `steer sweep`, `steer run` and `steer_plugin.run`


def add_eval_args(p: argparse.ArgumentParser, layers_help: str | None = None) -> None:
    """The evaluation options `steer sweep`, `steer run` and `steer tune` share (``evaluation_from_args``)."""
    p.add_argument("--tasks", default=None, help="comma-separated harness tasks")
    p.add_argument("--limit", type=float, default=None, help="docs per task (quick look)")
    p.add_argument("--batch-size", type=batch_size, default=8, help="int or 'auto'")
    p.add_argument(
        "--classifier", default=None, help="emotion classifier for steer_emotion_* tasks: hub id, local path or 'nade'"
    )
    p.add_argument("--include-path", default=None, help="extra folder of task YAMLs")
    p.add_argument(
        "--layers",
        action="append",
        default=None,
        help=layers_help
        or "layers: all, middle (the middle third) or e.g. 10-19; repeatable for a sweep; tuned: the layers "
        f"`steer tune` chose for each vector (auto: tuned first where there is no choice) (default: {DEFAULTS.layers})",
    )
    p.add_argument(
        "--positions", default=DEFAULTS.positions, help="all, response or both: all,response (default %(default)s)"
    )
    p.add_argument("--backend", default="nnsight", choices=get_args(Backend))
    p.add_argument(
        "--engine",
        default=DEFAULTS.engine,
        choices=ENGINES,
        help="what evaluates: hf (transformers, steered_hf; the default) or vllm (steered_vllm, needs vLLM); side "
        "effects, output fluency and KL calibrations run on transformers either way",
    )
    p.add_argument(
        "--engine-args",
        default=None,
        metavar="K=V,...",
        help="more model arguments of the engine, e.g. gpu_memory_utilization=0.5,max_model_len=2048 (vllm)",
    )
    p.add_argument(
        "--log-samples",
        action="store_true",
        help="keep the full harness samples (documents, prompts, outputs); per-document scores are always kept",
    )
    p.add_argument(
        "--controls",
        type=int,
        default=DEFAULTS.controls,
        metavar="N",
        help="also evaluate N norm-matched random-direction controls (seeds 0..N-1) at every steered configuration "
        "(default %(default)s; 0 = none)",
    )
    p.add_argument(
        "--control-match",
        default="alpha",
        choices=get_args(ControlMatch),
        help="at a KL budget, run each control at its vector's alpha (same size; default) or calibrate the "
        "control to the same KL budget (same side effects; one more calibration per control)",
    )
    p.add_argument(
        "--apply-chat-template",
        action="store_true",
        help="every task's prompts through the chat template (TruthfulQA too)",
    )
    p.add_argument(
        "--chat",
        default="auto",
        choices=get_args(Chat),
        help="the emotion tasks' prompts through the chat template: auto (where the tokenizer has one; the default), "
        "on, off",
    )
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--bootstrap-iters", type=int, default=1000)
    p.add_argument(
        "--no-prefix-reuse",
        action="store_true",
        help="score multiple-choice requests with HFLM's own loop (bit-identical to `hf` at alpha 0)",
    )
    p.add_argument(
        "--no-config-batching",
        action="store_true",
        help="run one configuration at a time (default: greedy generation of all configurations in mixed batches)",
    )
    p.add_argument(
        "--config-batch-rows",
        type=int,
        default=None,
        metavar="N",
        help="most rows in one mixed batch of several configurations (default 64, never below --batch-size)",
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="discard the results already in --out (needed when they come from another sweep)",
    )
    add_fluency_texts_arg(p)
    p.add_argument(
        "--side-effect-texts",
        type=int,
        default=None,
        metavar="N",
        help="neutral texts for the kl/ppl columns (default 200; 100 with --limit)",
    )
    p.add_argument(
        "--no-side-effects",
        action="store_true",
        help="skip the KL / perplexity columns (side effects on neutral texts) of every configuration",
    )


def add_commands(sub: Any) -> None:
    """sweep, table, report, run."""
    p = sub.add_parser("sweep", help="evaluate many alphas/vectors/layers with one model load")
    add_model_args(p)
    p.add_argument("--vector", action="append", required=True, help="vector file (repeatable)")
    p.add_argument(
        "--alphas",
        type=alpha_specs,
        required=True,
        help="e.g. -4,-2,-1,0,0.5,1,2,4; kl:0.1 = the alpha whose KL to the unsteered model is 0.1 (calibrated)",
    )
    p.add_argument("--out", required=True, help="output folder (resumable)")
    add_eval_args(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("table", help="leaderboard table and plots from a folder of results JSON")
    p.add_argument("dir")
    p.add_argument("--out", default=None, help="output prefix (default: DIR/leaderboard)")
    p.add_argument("--sort", default=None, help="sort by a column, e.g. truthfulqa_mc2/acc")
    p.add_argument(
        "--resamples",
        type=int,
        default=None,
        help="paired bootstrap resamples for the intervals vs the baseline (default 2000, at least 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap (default 0)")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser(
        "report",
        help="what steering did: summary.md, leakage.csv/png, dose_response.png, report.html from a run/sweep folder",
    )
    p.add_argument("dir")
    p.add_argument(
        "--leakage-budget",
        type=float,
        default=None,
        help="the KL budget (or alpha, without kl: alphas) of leakage.csv/png (default: the middle one)",
    )
    p.add_argument("--resamples", type=int, default=None, help="paired bootstrap resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap (default 0)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("run", help="the main job: build the vector if missing, sweep alphas, print the table")
    add_model_args(p)
    p.add_argument(
        "--emotion",
        required=True,
        help="a label or Ekman group (anger, ekman:anger), several (anger,joy,sadness), "
        "'all' (the 27 emotions) or 'ekman' (the 6 groups): one recording, one sweep",
    )
    add_build_args(p)
    p.add_argument("--vector", default=None, help="use this vector file instead of building one")
    p.add_argument(
        "--alphas",
        type=alpha_specs,
        default=DEFAULT_ALPHAS,  # a string: argparse converts it only when used (keeps `--help` instant)
        help=f"alphas and KL budgets (default: {DEFAULT_ALPHAS})",
    )
    p.add_argument(
        "--truthfulqa-dir",
        default=None,
        help="local TruthfulQA JSONL folder: use the truthfulqa_local_* tasks (offline)",
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/<model>-<emotion>)")
    p.add_argument(
        "--leakage-budget",
        type=float,
        default=None,
        help="the KL budget (or alpha, without kl: alphas) of leakage.csv/png (default: the middle one)",
    )
    p.add_argument(
        "--no-prompt-control",
        action="store_true",
        help="skip the prompting reference (the emotion tasks' prompts asking for the emotion, unsteered)",
    )
    add_eval_args(p)
    p.set_defaults(func=cmd_run)


def add_build_args(p: argparse.ArgumentParser) -> None:
    """How a missing vector is built: the recording's texts and the recipe (``record_from_args``,
    ``recipe_from_args``)."""
    p.add_argument("--baseline", default="neutral")
    p.add_argument("--data", default=None, help="local GoEmotions folder (default: the hub dataset)")
    p.add_argument("--split", default="train")
    add_max_per_class_arg(p)
    p.add_argument(
        "--method",
        default=DEFAULT_RECIPE.method,
        choices=get_args(Method),
        help=f"how the vector is built (default {DEFAULT_RECIPE.method}; with the centring and projection below: "
        f"{DEFAULT_RECIPE.label()})",
    )
    p.add_argument(
        "--top-k", type=int, default=None, help=f"neurons per layer of --method top_k (default {DEFAULT_TOP_K})"
    )
    p.add_argument(
        "--centre",
        default=DEFAULT_RECIPE.centre,
        metavar="none|emotions",
        help="build vectors against the mean of the 27 emotions' means (emotions, the default: records every "
        "class) or against the baseline (none)",
    )
    p.add_argument(
        "--neutral-pcs",
        type=int,
        default=DEFAULT_RECIPE.neutral_pcs,
        metavar="K",
        help="project the top K principal components of the baseline texts out of built vectors (default %(default)s)",
    )


def evaluation_from_args(args: argparse.Namespace) -> Evaluation:
    """The options `steer sweep` and `steer run` share, as the ``Evaluation`` the library takes."""
    return Evaluation(
        tasks=args.tasks or (),
        limit=args.limit,
        batch_size=args.batch_size,
        classifier=args.classifier,
        include_path=args.include_path,
        layers=args.layers or DEFAULTS.layers,
        positions=args.positions,
        backend=args.backend,
        log_samples=args.log_samples,
        controls=args.controls,
        control_match=args.control_match,
        apply_chat_template=args.apply_chat_template,
        chat=args.chat,
        num_fewshot=args.num_fewshot,
        bootstrap_iters=args.bootstrap_iters,
        prefix_reuse=not args.no_prefix_reuse,
        config_batching=not args.no_config_batching,
        config_batch_rows=args.config_batch_rows,
        fresh=args.fresh,
        fluency_texts=args.fluency_texts,
        side_effect_texts=args.side_effect_texts,
        side_effects=not args.no_side_effects,
        engine=args.engine,
        engine_args=args.engine_args,
    )


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """`steer run`'s --method/--top-k/--centre/--neutral-pcs as the ``Recipe`` of the vectors it builds."""
    if args.top_k is not None and args.method != "top_k":
        # before the default recipe changed, --top-k alone chose a top-k vector: say so instead of ignoring it
        raise SteerError(f"--top-k is for --method top_k (this run builds --method {args.method}); add --method top_k")
    top_k = (DEFAULT_TOP_K if args.top_k is None else args.top_k) if args.method == "top_k" else None
    return Recipe(args.method, top_k, args.centre, args.neutral_pcs)


def record_from_args(args: argparse.Namespace) -> RecordOptions:
    return RecordOptions(baseline=args.baseline, data=args.data, split=args.split, max_per_class=args.max_per_class)


def cmd_sweep(args: argparse.Namespace) -> int:
    evaluation = evaluation_from_args(args)
    return _show(sweep(args.vector, args.alphas, args.out, model=model_options(args), evaluation=evaluation))


def cmd_run(args: argparse.Namespace) -> int:
    model, recipe, record = model_options(args), recipe_from_args(args), record_from_args(args)
    evaluation = replace(evaluation_from_args(args), truthfulqa_dir=args.truthfulqa_dir)
    if AUTO in evaluation.layer_sets:  # tune the vectors without a stored choice first, then steer their choices
        from steer_plugin.study.tune import tune_missing

        evaluation = tune_missing(
            args.emotion, model, recipes=[recipe], record=record, evaluation=evaluation, alphas=args.alphas,
            vector=args.vector,
        )  # fmt: skip
    result = run(
        args.emotion,
        model,
        recipe=recipe,
        record=record,
        evaluation=evaluation,
        alphas=args.alphas,
        vector=args.vector,
        out=args.out,
        leakage_budget=args.leakage_budget,
        prompt_control=not args.no_prompt_control,
    )
    return _show(result)


def _show(result: RunResult) -> int:
    print(result.table)
    if result.summary is not None:
        print()
        print(result.summary)
    _wrote(result.files)
    return 0


def _wrote(files: list) -> None:
    for f in files:
        print(f"wrote {f}", file=sys.stderr)


def _resamples(args: argparse.Namespace) -> int:
    from steer_plugin.errors import SteerError
    from steer_plugin.study.paired import DEFAULT_RESAMPLES, check_resampling

    resamples = DEFAULT_RESAMPLES if args.resamples is None else args.resamples
    if resamples < 1000:
        raise SteerError(f"--resamples must be at least 1000 for a 95% interval, got {resamples}")
    check_resampling(resamples, args.seed)  # before any file is read
    return resamples


def cmd_table(args: argparse.Namespace) -> int:
    from steer_plugin.study.table import write_table  # checks its output files before reading anything

    text, files = write_table(args.dir, args.out, args.sort, resamples=_resamples(args), seed=args.seed)
    print(text)
    _wrote(files)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from steer_plugin.study.report import write_study

    resamples = _resamples(args)
    summary, files = write_study(args.dir, leakage_budget=args.leakage_budget, resamples=resamples, seed=args.seed)
    print(summary)
    _wrote(files)
    return 0
