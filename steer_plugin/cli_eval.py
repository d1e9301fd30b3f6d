"""`steer check`, `steer generate` and the evaluation commands: argparse only at import time."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from steer_plugin.cli_args import add_model_args, batch_size, floats, model_options, record_request_from_args

DEFAULT_PROMPTS = ["Tell me about yourself.", "Write a short story about a boy and his dog."]


def add_commands(sub: Any) -> None:
    """check, generate, sweep, table, run."""
    p = sub.add_parser("check", help="verify that steering lands in the residual stream (per layer)")
    add_model_args(p)
    p.add_argument("--vector", required=True)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--layers", default=None, help="layers to check (default: all)")
    p.add_argument("--prompt", action="append", default=None, help="probe prompt (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("generate", help="baseline vs steered generations side by side")
    add_model_args(p)
    p.add_argument("prompts", nargs="*", help=f"prompts (default: {DEFAULT_PROMPTS})")
    p.add_argument("--vector", required=True)
    p.add_argument("--alphas", type=floats, default=[0.0, 1.0], help="e.g. 0,0.3,0.8 (0 = baseline)")
    p.add_argument("--layers", default="all")
    p.add_argument("--positions", default="response", choices=["response", "all"])
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    chat = p.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None, help="use the chat template")
    chat.add_argument("--no-chat", dest="chat", action="store_false")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", default="hooks", choices=["hooks", "nnsight"])
    p.add_argument("--json-out", default=None, help="write every setting and generation as JSON")
    p.set_defaults(func=cmd_generate)
    _add_eval_commands(sub)


def cmd_check(args: argparse.Namespace) -> int:
    from steer_plugin.check import format_report, run_check
    from steer_plugin.layers import layer_ranges
    from steer_plugin.steering import finite_alpha
    from steer_plugin.vector import SteeringVector

    finite_alpha(args.alpha, "--alpha")
    layer_ranges(args.layers)  # syntax, before the model loads
    vec = SteeringVector.load(args.vector)
    loaded = model_options(args).load()
    report = run_check(
        loaded.model,
        loaded.tokenizer,
        vec,
        args.prompt or DEFAULT_PROMPTS,
        args.alpha,
        args.layers,
        args.blocks,
        args.model,
    )
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def cmd_generate(args: argparse.Namespace) -> int:
    from steer_plugin.atomic import write_text_atomic
    from steer_plugin.generate import GenerationSettings, format_run, generate_side_by_side
    from steer_plugin.layers import layer_ranges
    from steer_plugin.steering import Steerer
    from steer_plugin.vector import SteeringVector

    if args.json_out:
        from steer_plugin.outputs import check_output_file

        check_output_file(args.json_out, "--json-out")
    layer_ranges(args.layers)  # syntax, before the model loads
    vec = SteeringVector.load(args.vector)
    loaded = model_options(args).load()
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        chat=args.chat,
        positions=args.positions,
        layers=args.layers,
        batch_size=args.batch_size,
    )
    steerer = Steerer(loaded.model, args.backend, args.blocks)
    run = generate_side_by_side(
        loaded.model, loaded.tokenizer, vec, args.prompts or DEFAULT_PROMPTS, args.alphas, settings, steerer
    )
    print(format_run(run))
    if args.json_out:
        doc = {"model": args.model, "vector": args.vector, "backend": args.backend, **run.to_json()}
        write_text_atomic(args.json_out, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0


# --- evaluation: sweep, table, run ----------------------------------------------------------------

# Chosen on the real SmolLM2-135M-Instruct with a top_k=20 anger vector on all layers (see README):
# from no visible effect to text falling apart.
DEFAULT_ALPHAS = [0.0, 0.2, 0.3, 0.4, 0.5, 1.0]


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=None, help="comma-separated harness tasks")
    p.add_argument("--limit", type=float, default=None, help="docs per task (quick look)")
    p.add_argument("--batch-size", type=batch_size, default=8, help="int or 'auto'")
    p.add_argument(
        "--classifier", default=None, help="emotion classifier for steer_emotion_* tasks: hub id, local path or 'nade'"
    )
    p.add_argument("--include-path", default=None, help="extra folder of task YAMLs")
    p.add_argument("--layers", action="append", default=None, help="layer subset (repeatable for a sweep)")
    p.add_argument("--positions", default="all", help="all, response or both: all,response")
    p.add_argument("--backend", default="nnsight", choices=["nnsight", "hooks"])
    p.add_argument(
        "--log-samples",
        action="store_true",
        help="keep the full harness samples (documents, prompts, outputs); per-document scores are always kept",
    )
    p.add_argument(
        "--controls",
        type=int,
        default=0,
        metavar="N",
        help="also evaluate N norm-matched random-direction controls (seeds 0..N-1) at every steered configuration "
        "(default %(default)s; 0 = none)",
    )
    p.add_argument("--apply-chat-template", action="store_true")
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


def _add_eval_commands(sub: Any) -> None:
    p = sub.add_parser("sweep", help="evaluate many alphas/vectors/layers with one model load")
    add_model_args(p)
    p.add_argument("--vector", action="append", required=True, help="vector file (repeatable)")
    p.add_argument("--alphas", type=floats, required=True, help="e.g. -4,-2,-1,0,0.5,1,2,4")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    _add_eval_args(p)
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

    p = sub.add_parser("run", help="the main job: build the vector if missing, sweep alphas, print the table")
    add_model_args(p)
    p.add_argument("--emotion", required=True)
    p.add_argument("--baseline", default="neutral")
    p.add_argument("--data", default=None, help="local GoEmotions folder (default: the hub dataset)")
    p.add_argument("--split", default="train")
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--method", default="top_k", choices=["mean", "top_k"])
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--vector", default=None, help="use this vector file instead of building one")
    p.add_argument("--alphas", type=floats, default=DEFAULT_ALPHAS)
    p.add_argument(
        "--truthfulqa-dir",
        default=None,
        help="local TruthfulQA JSONL folder: use the truthfulqa_local_* tasks (offline)",
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/<model>-<emotion>)")
    _add_eval_args(p)
    p.set_defaults(func=cmd_run, positions="response", controls=1)


def _sweep_options(args: argparse.Namespace, tasks: list[str], out: str):
    from pathlib import Path

    from steer_plugin.sweep import SweepOptions

    model_args = {
        **model_options(args).harness_args(),
        "batch_size": args.batch_size,
        "backend": args.backend,
        "prefix_reuse": not args.no_prefix_reuse,
    }
    return SweepOptions(
        tasks=tasks,
        out_dir=Path(out),
        limit=args.limit,
        classifier=args.classifier,
        include_path=args.include_path,
        log_samples=args.log_samples,
        apply_chat_template=args.apply_chat_template,
        num_fewshot=args.num_fewshot,
        bootstrap_iters=args.bootstrap_iters,
        model_args=model_args,
        fresh=args.fresh,
        config_batching=not args.no_config_batching,
        config_batch_rows=args.config_batch_rows,
    )


def _check_sweep_args(args: argparse.Namespace, out: str) -> None:
    """Everything that can be checked without a model: layer specs, positions, output paths."""
    from pathlib import Path

    from steer_plugin.layers import layer_ranges
    from steer_plugin.outputs import check_output_dir
    from steer_plugin.results_files import check_table_outputs
    from steer_plugin.steering import check_positions

    for spec in args.layers or ["all"]:
        layer_ranges(spec)
    if args.config_batch_rows is not None and args.config_batch_rows < 1:
        from steer_plugin.errors import SteerError

        raise SteerError(f"--config-batch-rows must be a positive number of rows, got {args.config_batch_rows}")
    for p in (p.strip() for p in args.positions.split(",")):
        if p:
            check_positions(p)
    check_output_dir(out)
    check_table_outputs(Path(out) / "leaderboard")


def _sweep(args: argparse.Namespace, vectors: list[str], tasks: list[str], out: str) -> list:
    from pathlib import Path

    from steer_plugin.controls import write_controls
    from steer_plugin.lm_model import SteeredHFLM
    from steer_plugin.sweep import SweepPlan, run_sweep
    from steer_plugin.sweep_folder import check_same_sweep, open_sweep_folder, sweep_settings

    _check_sweep_args(args, out)
    options = _sweep_options(args, tasks, out)
    if not args.fresh:  # before the controls are written into the folder
        check_same_sweep(Path(out), sweep_settings(options))
    positions = [p.strip() for p in args.positions.split(",") if p.strip()]
    controls = write_controls(vectors, args.controls, Path(out) / "controls") if args.controls else None
    plan = SweepPlan.grid(vectors, args.alphas, args.layers or ["all"], positions, controls=controls)
    folder = open_sweep_folder(plan, options)  # refuses another sweep's folder before the model loads
    return run_sweep(SteeredHFLM(**options.model_args), plan, options, folder=folder)


def _tasks(args: argparse.Namespace) -> list[str]:
    from steer_plugin.errors import SteerError

    if not args.tasks:
        raise SteerError("give --tasks, e.g. --tasks truthfulqa_mc1,truthfulqa_mc2,steer_emotion_anger")
    return [t.strip() for t in args.tasks.split(",") if t.strip()]


def cmd_sweep(args: argparse.Namespace) -> int:
    from steer_plugin.table import write_table

    _sweep(args, args.vector, _tasks(args), args.out)
    text, files = write_table(args.out)
    print(text)
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from steer_plugin.errors import SteerError
    from steer_plugin.paired import DEFAULT_RESAMPLES
    from steer_plugin.table import write_table  # checks its output files before reading anything

    resamples = DEFAULT_RESAMPLES if args.resamples is None else args.resamples
    if resamples < 1000:
        raise SteerError(f"--resamples must be at least 1000 for a 95% interval, got {resamples}")
    text, files = write_table(args.dir, args.out, args.sort, resamples=resamples, seed=args.seed)
    print(text)
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from steer_plugin.data import canonical_target, target_slug
    from steer_plugin.models import model_slug
    from steer_plugin.table import write_table
    from steer_plugin.vector import default_vector_path

    emotion = canonical_target(args.emotion)
    vector = Path(args.vector) if args.vector else default_vector_path(args.model, emotion, args.method, args.top_k)
    tq_dir = args.truthfulqa_dir or os.environ.get("STEER_TRUTHFULQA_DIR")
    if args.tasks:
        tasks = _tasks(args)
    else:
        tq = ["truthfulqa_local_mc1", "truthfulqa_local_mc2"] if tq_dir else ["truthfulqa_mc1", "truthfulqa_mc2"]
        tasks = [*tq, f"steer_emotion_{target_slug(emotion)}"]
    if tq_dir:
        os.environ["STEER_TRUTHFULQA_DIR"] = str(Path(tq_dir).resolve())
    out = args.out or str(Path("runs") / f"{model_slug(args.model)}-{target_slug(emotion)}")
    if not vector.exists():
        # before building (minutes): the vector's path, the sweep folder and that it holds this sweep
        from steer_plugin.outputs import check_output_file
        from steer_plugin.sweep_folder import check_same_sweep, sweep_settings

        check_output_file(vector, "--vector" if args.vector else "vector path")
        _check_sweep_args(args, out)
        if not args.fresh:
            check_same_sweep(Path(out), sweep_settings(_sweep_options(args, tasks, out)))
        _build_for_run(args, emotion, vector)
    _sweep(args, [str(vector)], tasks, out)
    text, files = write_table(out)
    print(text)
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return 0


def _build_for_run(args: argparse.Namespace, emotion: str, out: Any) -> None:
    from steer_plugin.build import build_vector
    from steer_plugin.pipeline import record_request

    print(f"building {out} (no vector yet)", file=sys.stderr)
    stats = record_request(record_request_from_args(args, emotion))
    vec = build_vector(
        stats, emotion, args.baseline, method=args.method, top_k=args.top_k if args.method == "top_k" else None
    )
    vec.save(out)
