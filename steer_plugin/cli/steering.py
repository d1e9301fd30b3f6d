"""`steer check`, `steer calibrate` and `steer generate`: a vector on a model, without the harness."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from steer_plugin.cli.args import add_fluency_texts_arg, add_model_args, alpha_specs, model_options
from steer_plugin.model.positions import POSITIONS
from steer_plugin.steering.defaults import DEFAULT_LAYERS, DEFAULT_POSITIONS

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.data.neutral_texts import TextSource

DEFAULT_PROMPTS = ["Tell me about yourself.", "Write a short story about a boy and his dog."]
KL_ALPHAS = "kl:X = the alpha whose KL on neutral texts is X nats/token at these layers and positions (stored by "
KL_ALPHAS += "`steer calibrate`; calibrated and stored first if missing)"


def add_where_args(p: argparse.ArgumentParser) -> None:
    """--layers and --positions: the same defaults in every command (a calibrated alpha means the same in each)."""
    p.add_argument(
        "--layers",
        default=DEFAULT_LAYERS,
        help=f"all, middle (the middle third) or e.g. 10-19 (default: {DEFAULT_LAYERS})",
    )
    p.add_argument(
        "--positions",
        default=DEFAULT_POSITIONS,
        choices=POSITIONS,
        help=f"every position, or the response: the last prompt token and what follows (default: {DEFAULT_POSITIONS})",
    )


def add_commands(sub: Any) -> None:
    """check, generate, calibrate."""
    p = sub.add_parser("check", help="verify that steering lands in the residual stream (per layer)")
    add_model_args(p)
    p.add_argument("--vector", required=True)
    p.add_argument("--alpha", default="1", help=f"a number (default 1), or {KL_ALPHAS}")
    add_where_args(p)
    p.add_argument("--prompt", action="append", default=None, help="probe prompt (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_fluency_texts_arg(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("generate", help="baseline vs steered generations side by side")
    add_model_args(p)
    p.add_argument("prompts", nargs="*", help=f"prompts (default: {DEFAULT_PROMPTS})")
    p.add_argument("--vector", required=True)
    p.add_argument(
        "--alphas",
        type=alpha_specs,
        default=[0.0, 1.0],
        help=f"e.g. 0,0.3,kl:0.1 (0 = baseline; default 0,1); {KL_ALPHAS}",
    )
    add_where_args(p)
    p.add_argument("--max-new-tokens", type=int, default=60)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    chat = p.add_mutually_exclusive_group()
    chat.add_argument(
        "--chat",
        nargs="?",
        const="on",
        default="auto",
        choices=("auto", "on", "off"),
        help="the prompts through the chat template: auto (where the tokenizer has one; the default), on, off "
        "(a bare --chat means on)",
    )
    chat.add_argument("--no-chat", dest="chat", action="store_const", const="off", help="the same as --chat off")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", default="hooks", choices=["hooks", "nnsight"])
    p.add_argument("--json-out", default=None, help="write every setting and generation as JSON")
    add_fluency_texts_arg(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "calibrate", help="the alpha of each KL budget (side effect on neutral texts), stored next to the vector"
    )
    add_model_args(p)
    p.add_argument("--vector", required=True)
    add_where_args(p)
    p.add_argument("--kl", default="0.03,0.1,0.3,1", help="KL budgets, nats per token (default: 0.03,0.1,0.3,1)")
    add_fluency_texts_arg(p)
    p.add_argument("--n-calibration", type=int, default=128, help="calibration texts (default 128)")
    p.add_argument("--n-heldout", type=int, default=128, help="held-out texts (default 128)")
    p.add_argument("--tolerance", type=float, default=0.05, help="relative KL tolerance (default 0.05)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the text order")
    p.add_argument("--force", action="store_true", help="calibrate again even if a matching calibration is stored")
    p.add_argument("--no-save", action="store_true", help="do not write VECTOR.calibration.json")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_calibrate)


def cmd_check(args: argparse.Namespace) -> int:
    from steer_plugin.data.prompts import check_prompts
    from steer_plugin.errors import SteerError
    from steer_plugin.model.hooks import finite_alpha
    from steer_plugin.steering.alphas import parse_alpha_specs
    from steer_plugin.steering.check import format_report, run_check
    from steer_plugin.vectors.vector import SteeringVector

    budget = str(args.alpha).strip().lower().startswith("kl:")
    specs = parse_alpha_specs(args.alpha) if budget else [finite_alpha(args.alpha, "--alpha")]
    if len(specs) != 1:
        raise SteerError(f"--alpha takes one number or one kl:X budget, got {args.alpha!r}")
    alpha = specs[0]
    model_options(args).check_layers(args.layers)  # syntax and range, before the model loads
    prompts = check_prompts(args.prompt or DEFAULT_PROMPTS)
    SteeringVector.load(args.vector)
    texts = _budget_texts(args, [alpha])
    loaded = model_options(args).load()
    report = run_check(
        loaded.model, loaded.tokenizer, args.vector, prompts, alpha, args.layers, args.blocks, args.model,
        positions=args.positions, texts=texts, progress=_progress,
    )  # fmt: skip
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def _budget_texts(args: argparse.Namespace, alphas: list[Any]) -> TextSource | None:
    """The neutral texts a kl: alpha calibrates on when its calibration is missing (read now: a bad
    --fluency-texts fails before the model loads); None without budgets."""
    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.steering.alphas import KLBudget
    from steer_plugin.steering.calibrate import DEFAULT_N_CALIBRATION, DEFAULT_N_HELDOUT, split_texts
    from steer_plugin.steering.calibration_file import stored_calibrations

    if not any(isinstance(a, KLBudget) for a in alphas):
        return None
    stored_calibrations(args.vector)  # a tampered calibration file fails before the model loads
    source = TextSource(args.fluency_texts)
    split_texts(source, DEFAULT_N_CALIBRATION, DEFAULT_N_HELDOUT)
    return source


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.io.outputs import check_output_file
    from steer_plugin.model.hooks import Steerer
    from steer_plugin.steering.alphas import parse_budgets
    from steer_plugin.steering.calibrate import calibrate_vector_file, check_settings, split_texts
    from steer_plugin.steering.calibration_file import calibration_path, stored_calibrations
    from steer_plugin.steering.calibration_table import format_calibration
    from steer_plugin.vectors.vector import SteeringVector

    # everything the arguments and files say, before the model loads
    budgets = check_settings(
        parse_budgets(args.kl), args.positions, args.tolerance, args.n_calibration, args.n_heldout, args.batch_size
    )
    model_options(args).check_layers(args.layers)
    SteeringVector.load(args.vector)
    stored_calibrations(args.vector)  # a tampered calibration file fails before the model loads
    source = TextSource(args.fluency_texts, seed=args.seed)
    split_texts(source, args.n_calibration, args.n_heldout)  # a missing, unreadable or empty --neutral-texts
    options = model_options(args)
    if not args.no_save:
        inputs = [args.vector, *source.files(), *options.local_files()]
        check_output_file(calibration_path(args.vector), "the calibration file", inputs)
    loaded = options.load()
    calibration, reused = calibrate_vector_file(
        loaded.model,
        loaded.tokenizer,
        args.vector,
        budgets,
        layers=args.layers,
        positions=args.positions,
        source=source,
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
    from steer_plugin.data.prompts import check_prompts
    from steer_plugin.errors import SteerError
    from steer_plugin.io.atomic import write_text_atomic
    from steer_plugin.model.hooks import Steerer
    from steer_plugin.steering.generate import GenerationSettings, format_run, generate_side_by_side
    from steer_plugin.vectors.vector import SteeringVector

    if args.json_out:
        from steer_plugin.data.neutral_texts import TextSource
        from steer_plugin.io.outputs import check_output_file
        from steer_plugin.steering.calibration_file import calibration_path

        inputs = [args.vector, calibration_path(args.vector), *TextSource(args.fluency_texts).files()]
        check_output_file(args.json_out, "--json-out", [*inputs, *model_options(args).local_files()])
    settings = GenerationSettings(  # checks every setting, before the model loads
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        chat={"auto": None, "on": True, "off": False}[args.chat],
        positions=args.positions,
        layers=args.layers,
        batch_size=args.batch_size,
    )
    prompts = check_prompts(args.prompts or DEFAULT_PROMPTS)
    SteeringVector.load(args.vector)
    texts = _budget_texts(args, args.alphas)
    options = model_options(args)
    options.check_layers(args.layers)  # the range against the config's depth, before the weights load
    if settings.chat and not options.has_chat_template():  # the tokenizer alone tells, not the weights
        raise SteerError(f"--chat on: the tokenizer of {args.model} has no chat template; use --chat auto or off")
    loaded = options.load()
    steerer = Steerer(loaded.model, args.backend, args.blocks)
    run = generate_side_by_side(
        loaded.model, loaded.tokenizer, args.vector, prompts, args.alphas, settings, steerer, texts=texts,
        model_name=args.model, progress=_progress,
    )  # fmt: skip
    print(format_run(run))
    if args.json_out:
        doc = {"model": args.model, "vector": args.vector, "backend": args.backend, **run.to_json()}
        write_text_atomic(args.json_out, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0
