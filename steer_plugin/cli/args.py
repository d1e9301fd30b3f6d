"""Argument groups shared by the `steer` commands (argparse only: `steer --help` stays instant)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from steer_plugin.model.gguf import with_gguf_file
from steer_plugin.model.loading import DEFAULT_MODEL, DTYPES, ModelOptions

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.steering.alphas import AlphaSpec
    from steer_plugin.vectors.request import RecordRequest


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"hub id, local folder or GGUF file (dir/model.gguf, loaded dequantized; default: {DEFAULT_MODEL})",
    )
    p.add_argument("--gguf-file", default=None, metavar="NAME", help="a GGUF file in the --model folder or hub repo")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: where it loads)")
    p.add_argument("--device-map", default=None, help="e.g. 'auto' to spread a big model over devices")
    p.add_argument("--revision", default=None)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--blocks", default=None, help="module path of the decoder blocks if not found automatically")


def join_gguf_file(args: argparse.Namespace) -> None:
    """``--model DIR --gguf-file NAME`` as the one model name ``DIR/NAME`` every command uses from here on."""
    if getattr(args, "gguf_file", None):
        args.model = with_gguf_file(args.model, args.gguf_file)
        args.gguf_file = None


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The model the command line names, as the one `ModelOptions` every later step uses."""
    return ModelOptions(
        name=args.model,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        blocks=args.blocks,
    )


def record_request_from_args(args: argparse.Namespace, emotion: str) -> RecordRequest:
    """What to record, from `record`/`build`/`run` options (options a command lacks keep their defaults)."""
    from steer_plugin.vectors.request import RecordRequest

    given = vars(args)
    optional = ("selection", "max_per_class", "seed", "dedupe", "template", "batch_size", "padding_side",
                "save_activations", "activation_dtype", "source", "pool", "max_new_tokens")  # fmt: skip
    return RecordRequest(
        model=model_options(args),
        emotion=emotion,
        baseline=args.baseline,
        split=args.split,
        data_dir=args.data,
        progress=not given.get("no_progress", False),
        # `run`'s --batch-size may be 'auto' (for evaluation): recording then keeps its default
        **{k: given[k] for k in optional if given.get(k) is not None and given[k] != "auto"},
    )


def add_data_args(p: argparse.ArgumentParser, emotion_required: bool = True) -> None:
    """Which GoEmotions texts (`data`, `record`, `build`)."""
    p.add_argument(
        "--emotion",
        required=emotion_required,
        help="a GoEmotions label (anger, joy, ...), an Ekman group (ekman:anger) or 'all'",
    )
    p.add_argument("--baseline", default="neutral", help="baseline class (default: neutral)")
    p.add_argument("--data", default=None, help="local GoEmotions folder (train.tsv ...); default: the hub dataset")
    p.add_argument("--split", default="train", help="train, validation (= dev) or test")
    p.add_argument("--selection", default="exclusive", choices=["exclusive", "any"])
    add_max_per_class_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dedupe", action="store_true", help="drop identical texts within a class")


def add_max_per_class_arg(p: argparse.ArgumentParser) -> None:
    """``--max-per-class N`` of every command that selects texts (`data`, `record`, `build`, `run`, `tune`); its
    value is checked by ``data.selection.check_sampling`` where the command's request is built (the API's check
    too), before the data or the model loads."""
    p.add_argument(
        "--max-per-class",
        type=int,
        default=None,
        metavar="N",
        help="a seeded sample of N texts per class (--source generated: N prompts)",
    )


def add_fluency_texts_arg(p: argparse.ArgumentParser) -> None:
    """The neutral texts of the side effects (`calibrate`, `sweep`, `run`): ``--neutral-texts``, also spelled
    ``--fluency-texts`` (the old name; ``args.fluency_texts`` either way)."""
    p.add_argument(
        "--neutral-texts",
        "--fluency-texts",
        dest="fluency_texts",
        default=None,
        metavar="FILE|DIR",
        help="neutral texts for KL/perplexity (the side effects): a text file (one per line) or a GoEmotions folder "
        "(default: --data if given, else $STEER_GOEMOTIONS_DIR, else the hub's neutral test texts); "
        "--fluency-texts is the same option",
    )


def alpha_specs(text: str) -> list[AlphaSpec]:
    """``0,0.3,kl:0.1`` → numbers and KL budgets (``kl:X``: the alpha calibrated to that KL); argparse reports a
    bad value as a usage error."""
    from steer_plugin.errors import SteerError
    from steer_plugin.steering.alphas import parse_alpha_specs

    numbers = [p for p in text.replace(";", ",").split(",") if p.strip() and not p.strip().lower().startswith("kl:")]
    if numbers or not text.strip():
        floats(",".join(numbers))  # the numbers' own messages
    try:
        return parse_alpha_specs(text)
    except SteerError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def floats(text: str) -> list[float]:
    """``0,0.3,1`` (or ``;``-separated) → numbers; argparse reports a bad value as a usage error."""
    import math

    try:
        values = [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    if not values:  # `--alphas ''` would generate nothing and succeed
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def batch_size(text: str) -> int | str:
    """An int, or ``auto`` (the harness finds the largest that fits)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value
