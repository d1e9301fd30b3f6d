"""`steer check`, `steer generate` and the evaluation commands: argparse only at import time."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from steer_plugin.cli.args import add_model_args, batch_size, floats, model_options, record_request_from_args

DEFAULT_PROMPTS = ["Tell me about yourself.", "Write a short story about a boy and his dog."]


def _alpha_specs(text: str) -> list[Any]:
    from steer_plugin.errors import SteerError
    from steer_plugin.steering.calibrate import parse_alpha_specs

    try:
        return parse_alpha_specs(text)
    except SteerError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_commands(sub: Any) -> None:
    """check, generate, calibrate, sweep, table, run."""
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

    p = sub.add_parser(
        "calibrate", help="the alpha of each KL budget (side effect on neutral texts), stored next to the vector"
    )
    add_model_args(p)
    p.add_argument("--vector", required=True)
    p.add_argument("--layers", default="all")
    p.add_argument("--positions", default="all", choices=["all", "response"])
    p.add_argument("--kl", default="0.03,0.1,0.3,1", help="KL budgets, nats per token (default: 0.03,0.1,0.3,1)")
    _add_fluency_texts_arg(p)
    p.add_argument("--n-calibration", type=int, default=128, help="calibration texts (default 128)")
    p.add_argument("--n-heldout", type=int, default=128, help="held-out texts (default 128)")
    p.add_argument("--tolerance", type=float, default=0.05, help="relative KL tolerance (default 0.05)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the text order")
    p.add_argument("--force", action="store_true", help="calibrate again even if a matching calibration is stored")
    p.add_argument("--no-save", action="store_true", help="do not write VECTOR.calibration.json")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_calibrate)
    _add_eval_commands(sub)


def _add_fluency_texts_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fluency-texts",
        default=None,
        metavar="FILE|DIR",
        help="neutral texts for KL/perplexity: a text file (one per line) or a GoEmotions folder "
        "(default: --data if given, else $STEER_GOEMOTIONS_DIR, else the hub's neutral test texts)",
    )


def cmd_check(args: argparse.Namespace) -> int:
    from steer_plugin.model.hooks import finite_alpha
    from steer_plugin.model.layers import layer_ranges
    from steer_plugin.steering.check import format_report, run_check
    from steer_plugin.vectors.vector import SteeringVector

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


def _fluency_source(args: argparse.Namespace) -> Any:
    from steer_plugin.steering.side_effects import TextSource

    return TextSource(args.fluency_texts or getattr(args, "data", None), seed=getattr(args, "seed", 0) or 0)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from steer_plugin.model.hooks import Steerer
    from steer_plugin.steering.calibrate import (
        calibrate_vector_file,
        calibration_path,
        format_calibration,
        parse_budgets,
        stored_calibrations,
    )

    budgets = parse_budgets(args.kl)
    stored_calibrations(args.vector)  # a tampered calibration file fails before the model loads
    loaded = model_options(args).load()
    calibration, reused = calibrate_vector_file(
        loaded.model,
        loaded.tokenizer,
        args.vector,
        budgets,
        layers=args.layers,
        positions=args.positions,
        source=_fluency_source(args),
        n_calibration=args.n_calibration,
        n_heldout=args.n_heldout,
        model_name=args.model,
        force=args.force,
        save=not args.no_save,
        tolerance=args.tolerance,
        batch_size=args.batch_size,
        steerer=Steerer(loaded.model, "hooks", args.blocks),
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps([asdict(r) for r in calibration.rows], indent=2))
    else:
        print(format_calibration(calibration, f"steer calibrate: {args.vector} on {args.model}"))
    if reused:
        print(f"(stored calibration from {calibration_path(args.vector)}; --force to redo)", file=sys.stderr)
    elif not args.no_save:
        print(f"wrote {calibration_path(args.vector)}", file=sys.stderr)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from steer_plugin.io.atomic import write_text_atomic
    from steer_plugin.model.hooks import Steerer
    from steer_plugin.model.layers import layer_ranges
    from steer_plugin.steering.generate import GenerationSettings, format_run, generate_side_by_side
    from steer_plugin.vectors.vector import SteeringVector

    if args.json_out:
        from steer_plugin.io.outputs import check_output_file

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

# steer run's grid: the baseline plus alphas calibrated to these KL budgets (nats per token on neutral
# texts), so the grid means the same on every model; plain numbers still work (--alphas 0,0.2,0.5).
DEFAULT_ALPHAS = "0,kl:0.03,kl:0.1,kl:0.3,kl:1"
QUICK_SIDE_EFFECT_TEXTS = 100  # with --limit (a quick look) the side effects take half the usual texts


def _add_eval_args(p: argparse.ArgumentParser) -> None:
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
        help="layers: all, middle (the middle third) or e.g. 10-19; repeatable for a sweep "
        "(default: all; steer run: middle)",
    )
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
    p.add_argument(
        "--control-match",
        default="alpha",
        choices=["alpha", "kl"],
        help="at a KL budget, run each control at its vector's alpha (same size; default) or calibrate the "
        "control to the same KL budget (same side effects; one more calibration per control)",
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
    _add_fluency_texts_arg(p)
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


def _add_eval_commands(sub: Any) -> None:
    p = sub.add_parser("sweep", help="evaluate many alphas/vectors/layers with one model load")
    add_model_args(p)
    p.add_argument("--vector", action="append", required=True, help="vector file (repeatable)")
    p.add_argument(
        "--alphas",
        type=_alpha_specs,
        required=True,
        help="e.g. -4,-2,-1,0,0.5,1,2,4; kl:0.1 = the alpha whose KL to the unsteered model is 0.1 (calibrated)",
    )
    p.add_argument("--out", required=True, help="output folder (resumable)")
    _add_eval_args(p)
    p.set_defaults(func=cmd_sweep, default_layers="all")

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
        "report", help="what steering did: summary.md, leakage.csv/png, dose_response.png from a run/sweep folder"
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
    p.add_argument("--baseline", default="neutral")
    p.add_argument("--data", default=None, help="local GoEmotions folder (default: the hub dataset)")
    p.add_argument("--split", default="train")
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--method", default="top_k", choices=["mean", "top_k"])
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--vector", default=None, help="use this vector file instead of building one")
    p.add_argument(
        "--alphas",
        type=_alpha_specs,
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
    _add_eval_args(p)
    # chosen by measurement (README, "Choosing the defaults"): at equal KL, top-k vectors on the middle third of
    # the layers at the response positions moved the target most
    p.set_defaults(func=cmd_run, positions="response", controls=1, default_layers="middle")


def _sweep_options(args: argparse.Namespace, tasks: list[str], out: str):
    from pathlib import Path

    from steer_plugin.study.plan import SweepOptions

    source = _fluency_source(args)
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
        side_effects=None if args.no_side_effects else source,
        side_effect_texts=args.side_effect_texts or (QUICK_SIDE_EFFECT_TEXTS if args.limit else 200),
        config_batching=not args.no_config_batching,
        config_batch_rows=args.config_batch_rows,
    )


def _check_sweep_args(args: argparse.Namespace, out: str) -> None:
    """Everything that can be checked without a model: layer specs, positions, output paths."""
    from pathlib import Path

    from steer_plugin.io.outputs import check_output_dir
    from steer_plugin.model.hooks import check_positions
    from steer_plugin.model.layers import layer_ranges
    from steer_plugin.study.results_files import check_table_outputs

    for spec in _layer_sets(args):
        layer_ranges(spec)
    if args.config_batch_rows is not None and args.config_batch_rows < 1:
        from steer_plugin.errors import SteerError

        raise SteerError(f"--config-batch-rows must be a positive number of rows, got {args.config_batch_rows}")
    for p in (p.strip() for p in args.positions.split(",")):
        if p:
            check_positions(p)
    check_output_dir(out)
    check_table_outputs(Path(out) / "leaderboard")


def _layer_sets(args: argparse.Namespace) -> list[str]:
    return args.layers or [args.default_layers]


def _sweep(args: argparse.Namespace, vectors: list[str], tasks: list[str], out: str) -> list:
    from pathlib import Path

    from steer_plugin.harness.model import SteeredHFLM
    from steer_plugin.study.plan import SweepPlan
    from steer_plugin.study.sweep import run_sweep
    from steer_plugin.study.sweep_folder import check_same_sweep, open_sweep_folder, sweep_settings
    from steer_plugin.vectors.controls import write_controls
    from steer_plugin.vectors.vector import SteeringVector

    _check_sweep_args(args, out)
    for v in vectors:  # a missing or corrupt vector fails now, not after the model has loaded
        SteeringVector.load(v)
    options = _sweep_options(args, tasks, out)
    if not args.fresh:  # before the controls are written into the folder
        check_same_sweep(Path(out), sweep_settings(options))
    positions = [p.strip() for p in args.positions.split(",") if p.strip()]
    controls = write_controls(vectors, args.controls, Path(out) / "controls") if args.controls else None
    lm = SteeredHFLM(**options.model_args)
    resolver = _resolver(args, lm, options.side_effects or _fluency_source(args))  # kl:X alphas need the model
    plan = SweepPlan.grid(
        vectors, args.alphas, _layer_sets(args), positions, controls=controls, resolve=resolver,
        control_match=args.control_match,
    )  # fmt: skip
    return run_sweep(lm, plan, options, folder=open_sweep_folder(plan, options))


def _resolver(args: argparse.Namespace, lm: Any, source: Any) -> Callable[..., dict[float, float]]:
    """kl:X alphas: calibrate each (vector, layers, positions) on the sweep's model, reusing stored calibrations."""
    from steer_plugin.model.hooks import Steerer
    from steer_plugin.steering.calibrate import calibrate_vector_file, calibration_path, format_calibration

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
            model_name=args.model,
            batch_size=max(int(batch), 1),
            steerer=Steerer(lm.model, "hooks", lm.steerer.block_path),
            progress=lambda m: print(
                f"calibrating {vector} (layers {layers}, {positions}):{m}", file=sys.stderr, flush=True
            ),
        )
        how = f"stored in {calibration_path(vector)}" if reused else f"calibrated, wrote {calibration_path(vector)}"
        print(format_calibration(calibration, f"KL budgets of {vector} ({how}):"), file=sys.stderr, flush=True)
        return {b: calibration.alpha_for(b) for b in budgets}

    return resolve


def _tasks(args: argparse.Namespace) -> list[str]:
    from steer_plugin.errors import SteerError

    if not args.tasks:
        raise SteerError("give --tasks, e.g. --tasks truthfulqa_mc1,truthfulqa_mc2,steer_emotion_anger")
    return [t.strip() for t in args.tasks.split(",") if t.strip()]


def cmd_sweep(args: argparse.Namespace) -> int:
    from steer_plugin.study.table import write_table

    _sweep(args, args.vector, _tasks(args), args.out)
    text, files = write_table(args.out)
    return _show_table(text, files)


def _show_table(text: str, files: list) -> int:
    print(text)
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from steer_plugin.errors import SteerError
    from steer_plugin.study.paired import DEFAULT_RESAMPLES
    from steer_plugin.study.table import write_table  # checks its output files before reading anything

    resamples = DEFAULT_RESAMPLES if args.resamples is None else args.resamples
    if resamples < 1000:
        raise SteerError(f"--resamples must be at least 1000 for a 95% interval, got {resamples}")
    text, files = write_table(args.dir, args.out, args.sort, resamples=resamples, seed=args.seed)
    return _show_table(text, files)


def cmd_report(args: argparse.Namespace) -> int:
    from steer_plugin.errors import SteerError
    from steer_plugin.study.paired import DEFAULT_RESAMPLES
    from steer_plugin.study.report import write_study

    resamples = DEFAULT_RESAMPLES if args.resamples is None else args.resamples
    if resamples < 1000:
        raise SteerError(f"--resamples must be at least 1000 for a 95% interval, got {resamples}")
    summary, files = write_study(args.dir, leakage_budget=args.leakage_budget, resamples=resamples, seed=args.seed)
    return _show_table(summary, files)


def cmd_run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from steer_plugin.data.goemotions import target_slug
    from steer_plugin.errors import SteerError
    from steer_plugin.model.loading import model_slug
    from steer_plugin.study.report import check_level, parse_targets, run_folder_name, write_study
    from steer_plugin.study.table import write_table
    from steer_plugin.vectors.vector import default_vector_path

    emotions = parse_targets(args.emotion)
    check_level(args.leakage_budget, args.alphas)  # before minutes of recording and evaluation
    if args.vector and len(emotions) > 1:
        raise SteerError("--vector names one vector; give one --emotion with it (or leave --vector out)")
    vectors = {
        e: Path(args.vector) if args.vector else default_vector_path(args.model, e, args.method, args.top_k)
        for e in emotions
    }
    tq_dir = args.truthfulqa_dir or os.environ.get("STEER_TRUTHFULQA_DIR")
    if args.tasks:
        tasks = _tasks(args)
    else:
        tq = ["truthfulqa_local_mc1", "truthfulqa_local_mc2"] if tq_dir else ["truthfulqa_mc1", "truthfulqa_mc2"]
        tasks = [*tq, *(f"steer_emotion_{target_slug(e)}" for e in emotions)]
    if tq_dir:
        os.environ["STEER_TRUTHFULQA_DIR"] = str(Path(tq_dir).resolve())
    out = args.out or str(Path("runs") / f"{model_slug(args.model)}-{run_folder_name(args.emotion, emotions)}")
    missing = {e: v for e, v in vectors.items() if not v.exists()}
    if missing:
        # before building (minutes): the vector's path, the sweep folder and that it holds this sweep
        from steer_plugin.io.outputs import check_output_file
        from steer_plugin.study.sweep_folder import check_same_sweep, sweep_settings

        for v in missing.values():
            check_output_file(v, "--vector" if args.vector else "vector path")
        _check_sweep_args(args, out)
        if not args.fresh:
            check_same_sweep(Path(out), sweep_settings(_sweep_options(args, tasks, out)))
        if len(missing) == 1:
            [(emotion, vector)] = missing.items()
            _build_for_run(args, emotion, vector)
        else:
            _build_many_for_run(args, missing)
    _sweep(args, [str(v) for v in vectors.values()], tasks, out)
    text, files = write_table(out)
    _show_table(text, files)
    try:
        summary, study_files = write_study(out, leakage_budget=args.leakage_budget)
    except SteerError as e:  # e.g. --alphas without 0: the table stands, there is nothing to compare against
        print(f"no summary: {e}", file=sys.stderr)
        return 0
    print()
    print(summary)
    for f in study_files:
        print(f"wrote {f}", file=sys.stderr)
    return 0


def _build_many_for_run(args: argparse.Namespace, vectors: dict[str, Any]) -> None:
    """Every missing vector from one recording pass over the union of their texts and the baseline's."""
    from dataclasses import replace

    from steer_plugin.vectors.build import build_vector
    from steer_plugin.vectors.request import record_request

    names = list(vectors)
    print(f"building {len(names)} vectors from one recording ({', '.join(names)})", file=sys.stderr)
    request = record_request_from_args(args, ",".join(names))
    stats = record_request(replace(request, targets=tuple(names)))
    for emotion, out in vectors.items():
        top_k = args.top_k if args.method == "top_k" else None
        build_vector(stats, emotion, args.baseline, method=args.method, top_k=top_k).save(out)
        print(f"wrote {out}", file=sys.stderr)


def _build_for_run(args: argparse.Namespace, emotion: str, out: Any) -> None:
    from steer_plugin.vectors.build import build_vector
    from steer_plugin.vectors.request import record_request

    print(f"building {out} (no vector yet)", file=sys.stderr)
    stats = record_request(record_request_from_args(args, emotion))
    vec = build_vector(
        stats, emotion, args.baseline, method=args.method, top_k=args.top_k if args.method == "top_k" else None
    )
    vec.save(out)
