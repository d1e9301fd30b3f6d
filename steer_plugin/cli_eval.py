"""`steer check`, `steer generate` and the evaluation commands: argparse only at import time."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

DEFAULT_PROMPTS = ["Tell me about yourself.", "Write a short story about a boy and his dog."]


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def add_commands(sub: Any, add_model_args: Callable[..., None]) -> None:
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
    p.add_argument("--alphas", type=_floats, default=[0.0, 1.0], help="e.g. 0,0.3,0.8 (0 = baseline)")
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


def _load(args: argparse.Namespace):
    from steer_plugin.models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                      revision=args.revision, trust_remote_code=args.trust_remote_code)


def cmd_check(args: argparse.Namespace) -> int:
    from steer_plugin.check import format_report, run_check
    from steer_plugin.vector import SteeringVector

    vec = SteeringVector.load(args.vector)
    loaded = _load(args)
    report = run_check(loaded.model, loaded.tokenizer, vec, args.prompt or DEFAULT_PROMPTS, args.alpha,
                       args.layers, args.blocks, args.model)
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    return 0 if report.ok else 1


def cmd_generate(args: argparse.Namespace) -> int:
    from steer_plugin.atomic import write_text_atomic
    from steer_plugin.generate import GenerationSettings, format_run, generate_side_by_side
    from steer_plugin.steering import Steerer
    from steer_plugin.vector import SteeringVector

    vec = SteeringVector.load(args.vector)
    loaded = _load(args)
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_p=args.top_p, seed=args.seed, chat=args.chat, positions=args.positions, layers=args.layers,
        batch_size=args.batch_size)
    steerer = Steerer(loaded.model, args.backend, args.blocks)
    run = generate_side_by_side(loaded.model, loaded.tokenizer, vec, args.prompts or DEFAULT_PROMPTS,
                                args.alphas, settings, steerer)
    print(format_run(run))
    if args.json_out:
        doc = {"model": args.model, "vector": args.vector, "backend": args.backend, **run.to_json()}
        write_text_atomic(args.json_out, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0
