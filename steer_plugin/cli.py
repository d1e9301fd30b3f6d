"""The `steer` command line. Only argparse at import time: `steer --help` must start instantly."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--model",
        required=required,
        default=None if required else DEFAULT_MODEL,
        help=f"hub id or local folder (default: {DEFAULT_MODEL})",
    )
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps ... (default: where it loads)")
    p.add_argument("--device-map", default=None, help="e.g. 'auto' to spread a big model over devices")
    p.add_argument("--revision", default=None)
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--blocks", default=None, help="module path of the decoder blocks if not found automatically")


def _add_data_args(p: argparse.ArgumentParser, emotion_required: bool = True) -> None:
    p.add_argument(
        "--emotion",
        required=emotion_required,
        help="a GoEmotions label (anger, joy, ...), an Ekman group (ekman:anger) or 'all'",
    )
    p.add_argument("--baseline", default="neutral", help="baseline class (default: neutral)")
    p.add_argument("--data", default=None, help="local GoEmotions folder (train.tsv ...); default: the hub dataset")
    p.add_argument("--split", default="train", help="train, validation (= dev) or test")
    p.add_argument("--selection", default="exclusive", choices=["exclusive", "any"])
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dedupe", action="store_true", help="drop identical texts within a class")


def _add_record_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", default="raw", help="raw, chat, or a format string with {text}")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--padding-side", choices=["left", "right"], default=None)
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steer", description="Emotion steering vectors for causal LMs, evaluated with lm-evaluation-harness."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("data", help="GoEmotions selection counts (and texts)")
    _add_data_args(p)
    p.add_argument("--out", default=None, help="write the selected texts as JSONL (text, class)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("record", help="record per-class hidden-state statistics with nnsight")
    _add_model_args(p)
    _add_data_args(p)
    _add_record_args(p)
    p.add_argument("--out", required=True, help="stats file (.safetensors)")
    p.add_argument(
        "--save-activations",
        default=None,
        metavar="DIR",
        help="also write raw [N, layers, hidden] arrays per class as .npy",
    )
    p.add_argument("--activation-dtype", default="float16", choices=["float16", "float32"])
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("analyze", help="neuron/layer statistics, ranking CSV and plots from a stats file")
    p.add_argument("stats")
    p.add_argument("--emotion", default=None, help="target class (default: the stats file's)")
    p.add_argument("--baseline", default="neutral")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--top-k", type=int, default=20, help="neurons per layer in the scatter plot")
    p.add_argument("--top-n", type=int, default=None, help="rows of ranking.csv (default: all)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("build", help="build a steering vector (records first unless --stats is given)")
    _add_model_args(p)
    _add_data_args(p, emotion_required=False)
    _add_record_args(p)
    p.add_argument("--stats", default=None, help="reuse a stats file from `steer record`")
    p.add_argument("--method", default="mean", choices=["mean", "top_k"])
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--layers", default=None, help="keep only these layers, e.g. 10-20 (0-based)")
    p.add_argument("--scale", type=float, default=None, help="bake a scale into the file (normally use alpha)")
    p.add_argument(
        "--out", default=None, help="vector file (default: vectors/<model>/<emotion>-<method>[-k].safetensors)"
    )
    p.add_argument("--save-stats", default=None, help="also keep the recorded stats file")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("list", help="show the vectors under a folder")
    p.add_argument("dir", nargs="?", default="vectors")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("export", help="write a vector in another tool's format")
    p.add_argument("vector")
    p.add_argument("--format", required=True, choices=["lm-eval-steered", "gguf"])
    p.add_argument("--out", required=True)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--block-path", default=None, help="hookpoint prefix for lm-eval (default: from the vector)")
    p.add_argument("--model-hint", default="llama", help="GGUF model hint (llama.cpp architecture)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="turn a reference .npy diff matrix into a vector file")
    p.add_argument("npy")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--drop-embedding-row", action="store_true", help="the matrix came from hidden_states (row 0 = embeddings)"
    )
    p.add_argument("--emotion", default=None)
    p.add_argument("--model", default=None, help="model the matrix was recorded on")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("tasks-dir", help="print the folder of our lm-eval tasks (for --include_path)")
    p.set_defaults(func=cmd_tasks_dir)
    _add_late_commands(sub)
    return parser


def _add_late_commands(sub: Any) -> None:
    from steer_plugin import cli_eval

    cli_eval.add_commands(sub, _add_model_args)
    cli_eval.add_eval_commands(sub, _add_model_args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from steer_plugin import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from steer_plugin.errors import SteerError

    try:
        return int(args.func(args) or 0)
    except SteerError as e:
        print(f"steer {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# --- commands ------------------------------------------------------------------------------------


def _selection(args: argparse.Namespace):
    from steer_plugin.data import load_goemotions, select_texts

    examples = load_goemotions(args.split, args.data)
    return select_texts(
        examples,
        args.emotion,
        args.baseline,
        args.selection,
        args.max_per_class,
        args.seed,
        args.dedupe,
        split=args.split,
        source="local" if args.data else "hub",
    )


def cmd_data(args: argparse.Namespace) -> int:
    if args.emotion == "all":
        from steer_plugin.data import load_goemotions, select_all

        texts, members = select_all(
            load_goemotions(args.split, args.data), args.selection, args.max_per_class, args.seed, args.dedupe
        )
        counts: dict[str, int] = {}
        for m in members:
            for c in m:
                counts[c] = counts.get(c, 0) + 1
        rows = [{"text": t, "classes": list(m)} for t, m in zip(texts, members)]
        print(f"split {args.split} ({args.selection}): {len(texts)} texts")
    else:
        sel = _selection(args)
        counts = sel.counts()
        rows = [{"text": t, "class": c} for c, ts in sel.classes.items() for t in ts]
        print(f"split {args.split} ({args.selection}):")
    width = max(len(c) for c in counts)
    for c, n in counts.items():
        print(f"  {c:<{width}}  {n:>6}")
    if args.out:
        from steer_plugin.atomic import write_text_atomic

        write_text_atomic(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"wrote {len(rows)} texts to {args.out}")
    return 0


def _record_request(args: argparse.Namespace, emotion: str):
    from steer_plugin.pipeline import RecordRequest

    return RecordRequest(
        model=args.model,
        emotion=emotion,
        baseline=args.baseline,
        split=args.split,
        data_dir=args.data,
        selection=args.selection,
        max_per_class=args.max_per_class,
        seed=args.seed,
        dedupe=args.dedupe,
        template=args.template,
        batch_size=args.batch_size,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        blocks=args.blocks,
        padding_side=args.padding_side,
        progress=not args.no_progress,
        save_activations=getattr(args, "save_activations", None),
        activation_dtype=getattr(args, "activation_dtype", "float16"),
    )


def cmd_record(args: argparse.Namespace) -> int:
    from steer_plugin.pipeline import record_request

    stats = record_request(_record_request(args, args.emotion))
    if _is_main_rank():
        stats.save(args.out)
        counts = ", ".join(f"{c}={n}" for c, n in stats.counts().items())
        print(f"wrote {args.out}: {stats.shape[0]} layers x {stats.shape[1]} ({counts})")
    return 0


def _is_main_rank() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return True
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from steer_plugin.analysis import analyze, format_layer_table
    from steer_plugin.stats import HiddenStateStats

    stats = HiddenStateStats.load(args.stats)
    result = analyze(stats, args.emotion, args.baseline, args.out, top_k=args.top_k, top_n_rows=args.top_n)
    print(format_layer_table(result))
    for path in result.files:
        print(f"wrote {path}")
    return 0


def default_vector_path(model: str, emotion: str, method: str, top_k: int | None) -> Path:
    from steer_plugin.models import model_slug

    name = emotion.replace(":", "_") + f"-{method}" + (f"-{top_k}" if method == "top_k" else "")
    return Path("vectors") / model_slug(model) / f"{name}.safetensors"


def cmd_build(args: argparse.Namespace) -> int:
    from steer_plugin.build import build_vector
    from steer_plugin.errors import SteerError
    from steer_plugin.layers import parse_layers
    from steer_plugin.stats import HiddenStateStats

    if args.layers:
        parse_layers(args.layers, 1 << 30)  # syntax check before any recording; range checked below
    if args.top_k is not None and args.method != "top_k":
        raise SteerError("--top-k only applies to --method top_k")
    if args.stats:
        stats = HiddenStateStats.load(args.stats)
    else:
        if not args.emotion:
            raise SteerError("give --emotion (and --model/--data) to record, or --stats FILE to reuse statistics")
        stats = _record_for_build(args)
        if args.save_stats and _is_main_rank():
            stats.save(args.save_stats)
    if not _is_main_rank():
        return 0
    emotion = args.emotion or stats.metadata.get("target")
    layers = parse_layers(args.layers, stats.shape[0]) if args.layers else None
    vec = build_vector(
        stats, emotion, args.baseline, method=args.method, top_k=args.top_k, layers=layers, scale=args.scale
    )
    out = (
        Path(args.out)
        if args.out
        else default_vector_path(stats.metadata.get("model", "model"), vec.metadata["emotion"], args.method, args.top_k)
    )
    vec.save(out)
    norms = vec.layer_norms()
    print(
        f"wrote {out}: {vec.n_layers} layers x {vec.hidden_size}, {args.method}"
        f"{f' k={args.top_k}' if args.method == 'top_k' else ''}, counts {vec.metadata['counts']}"
    )
    print("per-layer norm: " + " ".join(f"{n:.3g}" for n in norms))
    return 0


def _record_for_build(args: argparse.Namespace):
    from steer_plugin.pipeline import record_request

    return record_request(_record_request(args, args.emotion))


def cmd_list(args: argparse.Namespace) -> int:
    from steer_plugin.errors import SteerError
    from steer_plugin.layers import format_layers
    from steer_plugin.vector import SteeringVector

    root = Path(args.dir)
    files = sorted(root.rglob("*.safetensors")) if root.is_dir() else []
    if not files:
        print(f"no vectors under {root}")
        return 0
    rows = [("file", "model", "emotion", "method", "layers", "norm", "rel/alpha")]
    for f in files:
        try:
            v = SteeringVector.load(f)
        except SteerError:
            continue  # a stats file or another safetensors file
        m = v.metadata
        method = m.get("method", "?") + (f" k={m['top_k']}" if m.get("top_k") else "")
        rows.append(
            (
                str(f.relative_to(root)),
                str(m.get("model", "?")),
                str(m.get("emotion", "?")),
                method,
                format_layers(v.nonzero_layers(), v.n_layers),
                f"{float(v.matrix.norm()):.3f}",
                _median_relative_strength(v),
            )
        )
    print(format_table(rows))
    return 0


def _median_relative_strength(v: Any) -> str:
    """Median over non-zero layers of ||row_l|| / RMS||h_l|| (relative strength per unit alpha)."""
    import statistics

    rel = v.relative_strength(1.0)
    return f"{statistics.median(rel.values()):.4g}" if rel else "-"


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from steer_plugin.interop import export_gguf_control_vector, export_lm_eval_steered
    from steer_plugin.vector import SteeringVector

    vec = SteeringVector.load(args.vector)
    if args.format == "lm-eval-steered":
        block_path = args.block_path or vec.metadata.get("block_path") or "model.layers"
        export_lm_eval_steered(vec, args.out, block_path=block_path, alpha=args.alpha)
        print(f"wrote {args.out} (blocks {block_path}.N, coefficient {args.alpha})")
    else:
        layers = export_gguf_control_vector(vec, args.out, model_hint=args.model_hint, alpha=args.alpha)
        if 0 in vec.nonzero_layers():
            print("note: llama.cpp never steers block 0; row 0 was not exported", file=sys.stderr)
        print(f"wrote {args.out} (layers {layers})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from steer_plugin.interop import load_reference_npy

    vec = load_reference_npy(args.npy, drop_embedding_row=args.drop_embedding_row)
    if args.emotion:
        vec.metadata["emotion"] = args.emotion
    if args.model:
        vec.metadata["model"] = args.model
    vec.save(args.out)
    print(f"wrote {args.out}: {vec.n_layers} layers x {vec.hidden_size}")
    return 0


def cmd_tasks_dir(args: argparse.Namespace) -> int:
    from steer_plugin.tasks_dir import tasks_dir

    print(tasks_dir())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
