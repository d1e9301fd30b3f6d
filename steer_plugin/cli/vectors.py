"""`steer record`, `analyze`, `build`, `list`, `export` and `import`: statistics and vector files."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steer_plugin.cli.args import add_data_args, add_model_args, model_options, record_request_from_args

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.vectors.recipe import Recipe
    from steer_plugin.vectors.request import RecordRequest
    from steer_plugin.vectors.vector import SteeringVector


def _add_record_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", default="raw", help="raw, chat, or a format string with {text}")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--padding-side", choices=["left", "right"], default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--pool",
        default=None,
        help="a text's state: last (its last real token; the default for GoEmotions) or mean (the mean over its "
        "tokens after a leading BOS; over the response tokens with --source generated, its default)",
    )


def add_commands(sub: Any) -> None:
    p = sub.add_parser("record", help="record per-class hidden-state statistics with nnsight")
    add_model_args(p)
    add_data_args(p)
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
    add_model_args(p)
    add_data_args(p, emotion_required=False)
    _add_record_args(p)
    p.add_argument("--stats", default=None, help="reuse a stats file from `steer record`")
    p.add_argument(
        "--method",
        default="mean",
        choices=["mean", "top_k", "pca", "probe", "random"],
        help="mean difference, its top_k entries per layer, pca (first principal component of paired "
        "differences, seeded by --seed) or probe (logistic-regression direction), the last two at the mean "
        "difference's norm; random: a random-direction control with --like V's shape, per-layer norms and "
        "sparsity (--seed)",
    )
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument(
        "--centre",
        default="none",
        metavar="none|emotions",
        help="compare the emotion with the baseline class (none) or with the mean of the 27 emotions' means "
        "(emotions: records them all, or needs --stats recorded with --emotion all)",
    )
    p.add_argument(
        "--neutral-pcs",
        type=int,
        default=0,
        metavar="K",
        help="project the top K principal components of the baseline texts' states out of the vector "
        "(default 0: none; 3 is a usual choice)",
    )
    p.add_argument(
        "--activations",
        default=None,
        metavar="DIR",
        help="with --stats: the per-text states of that recording (`steer record --save-activations DIR`), "
        "for --method pca/probe and --neutral-pcs",
    )
    p.add_argument("--like", default=None, metavar="VECTOR", help="the vector a --method random control copies")
    p.add_argument("--layers", default=None, help="keep only these layers, e.g. 10-20 (0-based)")
    p.add_argument("--scale", type=float, default=None, help="bake a scale into the file (normally use alpha)")
    p.add_argument(
        "--out",
        default=None,
        help="vector file (default: vectors/<model>/<emotion>-<method>[-k][-emotions][-npcK][-generated][-pool-P]"
        ".safetensors)",
    )
    p.add_argument("--save-stats", default=None, help="also keep the recorded stats file")
    p.add_argument(
        "--source",
        default=None,
        help="goemotions (default: labelled texts) or generated (the model's own answers to neutral prompts, "
        "asked for the emotion vs asked to stay neutral; --max-per-class N: N prompts; the answers are kept "
        "beside the vector as <vector>.texts.jsonl)",
    )
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="length of each generated answer (--source generated; 48)"
    )
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


def cmd_record(args: argparse.Namespace) -> int:
    from steer_plugin.data.goemotions import goemotions_files
    from steer_plugin.io.outputs import check_output_dir, check_output_file
    from steer_plugin.vectors.request import record_request

    check_output_file(args.out, inputs=[*goemotions_files(args.data), *model_options(args).local_files()])
    if args.save_activations:
        check_output_dir(args.save_activations, "--save-activations")
    stats = record_request(record_request_from_args(args, args.emotion))
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
    from steer_plugin.io.outputs import check_output_dir
    from steer_plugin.vectors.analysis import analyze, format_layer_table
    from steer_plugin.vectors.stats import HiddenStateStats

    check_output_dir(args.out)
    stats = HiddenStateStats.load(args.stats)
    result = analyze(stats, args.emotion, args.baseline, args.out, top_k=args.top_k, top_n_rows=args.top_n)
    print(format_layer_table(result))
    for path in result.files:
        print(f"wrote {path}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from steer_plugin.errors import SteerError
    from steer_plugin.model.layers import layer_ranges, parse_layers
    from steer_plugin.vectors.activations import Activations
    from steer_plugin.vectors.build import build_vector
    from steer_plugin.vectors.generated import texts_jsonl, texts_path
    from steer_plugin.vectors.stats import HiddenStateStats

    if args.layers is not None:
        layer_ranges(args.layers)  # syntax check before any recording; range checked below
    if args.method == "random" or args.like:
        return _build_random(args)
    recipe = _recipe(args)
    if args.scale is not None:
        from steer_plugin.vectors.vector import check_scale

        check_scale(args.scale)
    if args.stats and (args.source or args.pool or args.max_new_tokens is not None):
        raise SteerError("--source, --pool and --max-new-tokens describe a recording; a --stats file has its own")
    if args.max_new_tokens is not None and args.source != "generated":
        raise SteerError("--max-new-tokens only applies to --source generated")
    request = None
    if not args.stats:
        if not args.emotion:
            raise SteerError("give --emotion (and --model/--data) to record, or --stats FILE to reuse statistics")
        request = record_request_from_args(args, args.emotion)  # names checked (and `Anger` is `anger`) first
        args.emotion, args.baseline = request.emotion, request.baseline
        _check_model_fits(args, recipe, request.model.dimensions())  # layers and --top-k, from the config alone
    _check_build_outputs(args, recipe, request)
    texts: tuple = ()
    with contextlib.ExitStack() as stack:
        if request is None:
            stats = HiddenStateStats.load(args.stats)
            activations = Activations(args.activations, stats) if args.activations else None
        else:
            from steer_plugin.vectors.request import recorded, with_all_emotions

            if recipe.centre == "emotions":
                request = with_all_emotions(request)
            rec = stack.enter_context(recorded(request, per_text=recipe.per_text))
            stats, activations, texts = rec.stats, rec.activations, rec.texts
            if args.save_stats and _is_main_rank():
                stats.save(args.save_stats)
        if not _is_main_rank():
            return 0
        emotion = args.emotion or stats.metadata.get("target")
        layers = parse_layers(args.layers, stats.shape[0]) if args.layers is not None else None
        vec = build_vector(
            stats, emotion, args.baseline, **recipe.build_kwargs(), layers=layers, scale=args.scale,
            activations=activations, seed=args.seed,
        )  # fmt: skip
    model = stats.metadata.get("model", "model")
    out = Path(args.out) if args.out else _default_path(model, vec.metadata["emotion"], recipe, stats.metadata)
    beside = {texts_path(out): texts_jsonl(list(texts))} if texts else None
    vec.save(out, beside)
    norms = vec.layer_norms()
    how = "".join(
        [
            f" k={recipe.top_k}" if recipe.method == "top_k" else "",
            f", centre {recipe.centre}" if recipe.centre != "none" else "",
            f", {recipe.neutral_pcs} neutral PCs projected out" if recipe.neutral_pcs else "",
        ]
    )
    print(f"wrote {out}: {vec.n_layers} layers x {vec.hidden_size}, {recipe.method}{how}, counts {_counts(vec)}")
    if beside:
        dropped = vec.metadata["generation"]["dropped_prompts"]
        print(f"wrote {texts_path(out)}: {len(texts)} answers ({dropped} prompts dropped: no words in an answer)")
    print("per-layer norm: " + " ".join(f"{n:.3g}" for n in norms))
    return 0


def _counts(vec: SteeringVector) -> str:
    counts = vec.metadata["counts"]
    if len(counts) <= 4:
        return str(counts)
    return f"{vec.metadata['emotion']}={counts[vec.metadata['emotion']]}, {len(counts) - 1} other classes"


def _default_path(model: str, emotion: str, recipe: Recipe, recording: dict[str, Any]) -> Path:
    """The default vector path of the recipe: the flags' method/centre/PCs, the recording's text source and
    pooling (``recording``: its statistics' metadata, or what the request will write)."""
    from steer_plugin.vectors.recipe import recording_recipe
    from steer_plugin.vectors.vector import default_vector_path

    return default_vector_path(model, emotion, recording_recipe(recipe, recording))


def _recipe(args: argparse.Namespace) -> Recipe:
    """--method and its companions (--top-k, --centre, --neutral-pcs, --activations), before any recording."""
    from steer_plugin.errors import SteerError
    from steer_plugin.vectors.recipe import Recipe

    recipe = Recipe(args.method, args.top_k, args.centre, args.neutral_pcs).check()
    if args.activations and not args.stats:
        raise SteerError("--activations goes with --stats (the recording it belongs to); without --stats build records")
    if args.stats and not args.activations and recipe.per_text:
        what = f"--method {args.method}" if args.method in ("pca", "probe") else f"--neutral-pcs {args.neutral_pcs}"
        raise SteerError(
            f"{what} needs per-text states: give --activations DIR (from `steer record --save-activations DIR`) "
            "with --stats, or leave --stats out to record"
        )
    return recipe


def _check_model_fits(args: argparse.Namespace, recipe: Recipe, dimensions: tuple[int, int] | None) -> None:
    """--layers and --top-k against the model's (blocks, hidden size) before recording, where its config tells."""
    from steer_plugin.model.layers import parse_layers

    if dimensions is None:
        return  # checked against the recorded statistics instead
    n_layers, hidden = dimensions
    if args.layers is not None:
        parse_layers(args.layers, n_layers)
    recipe.check(hidden)


def _check_build_outputs(args: argparse.Namespace, recipe: Recipe, request: RecordRequest | None = None) -> None:
    """Before recording: the vector (given or default path), its texts file and --save-stats must be writable."""
    from steer_plugin.data.goemotions import goemotions_files
    from steer_plugin.io.outputs import check_output_file
    from steer_plugin.vectors.generated import texts_path

    inputs = [args.stats, args.activations, *goemotions_files(args.data)]
    if request is not None:
        inputs += request.model.local_files()
    out = args.out
    if out:
        check_output_file(out, inputs=inputs)
    elif args.emotion and request is not None:  # with --stats the default path depends on the file's metadata
        recording = {"text_source": request.source, "pool": request.resolved_pool}
        out = _default_path(args.model, args.emotion, recipe, recording)
        check_output_file(out, "--out (default)", inputs)
    if out and request is not None and request.source == "generated":
        check_output_file(texts_path(out), "the texts file beside --out", inputs)
    if args.save_stats:
        check_output_file(args.save_stats, "--save-stats", inputs)


def _build_random(args: argparse.Namespace) -> int:
    """`steer build --method random --like V --seed S`: a control, no recording."""
    from steer_plugin.errors import SteerError
    from steer_plugin.io.outputs import check_output_file
    from steer_plugin.model.layers import parse_layers
    from steer_plugin.vectors.controls import control_path, random_like_file

    if args.method != "random":
        raise SteerError(f"--like only applies to --method random (got --method {args.method})")
    if not args.like:
        raise SteerError("--method random needs --like VECTOR: the vector whose shape and per-layer norms it copies")
    given = [
        flag
        for flag, value in (
            ("--stats", args.stats),
            ("--emotion", args.emotion),
            ("--top-k", args.top_k),
            ("--activations", args.activations),
            ("--centre", None if args.centre == "none" else args.centre),
            ("--neutral-pcs", args.neutral_pcs or None),
        )
        if value is not None
    ]
    if args.save_stats:
        given.append("--save-stats")
    if given:
        raise SteerError(
            "--method random records nothing and takes its emotion, method and sparsity from --like; "
            f"drop {', '.join(given)}"
        )
    out = Path(args.out) if args.out else control_path(Path(args.like).parent, args.like, args.seed)
    check_output_file(out, "--out" if args.out else "--out (default)", [args.like])
    vec = random_like_file(args.like, args.seed)
    if args.layers is not None:
        vec = vec.restrict(parse_layers(args.layers, vec.n_layers))
    if args.scale is not None:
        vec = type(vec)(vec.matrix * args.scale, {**vec.metadata, "scale": args.scale}, vec.mask)
    vec.save(out)
    print(f"wrote {out}: random control of {args.like} (seed {args.seed}), {vec.n_layers} layers x {vec.hidden_size}")
    print("per-layer norm: " + " ".join(f"{n:.3g}" for n in vec.layer_norms()))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from steer_plugin.errors import SteerError
    from steer_plugin.io.safetensors import OtherFormat
    from steer_plugin.io.terminal import printable
    from steer_plugin.io.text_table import format_table
    from steer_plugin.model.layers import format_layers
    from steer_plugin.vectors.vector import SteeringVector

    root = Path(args.dir)
    if not root.is_dir():  # a mistyped folder is not an empty one
        raise SteerError(f"{printable(root)} is not a folder" + (" (it does not exist)" if not root.exists() else ""))
    files = sorted(root.rglob("*.safetensors"))
    if not files:
        print(f"no vectors under {root}")
        return 0
    rows = []
    for f in files:
        try:
            v = SteeringVector.load(f)
        except OtherFormat:
            continue  # a stats file or another safetensors file
        except SteerError as e:  # a vector file we cannot use: said, not dropped silently
            print(f"steer list: skipped {printable(e)}", file=sys.stderr)
            continue
        m = v.metadata
        method = f"{m.get('method', '?')}" + (f" k={m['top_k']}" if m.get("top_k") else "")
        method += f" centre={m['centre']}" if m.get("centre") not in (None, "none") else ""
        method += f" npc={m['neutral_pcs']}" if m.get("neutral_pcs") else ""
        cells = (f.relative_to(root), m.get("model", "?"), m.get("emotion", "?"), method)
        # file names and metadata come from elsewhere: escape control characters (ESC, NUL, newlines)
        rows.append(
            (
                *(printable(c) for c in cells),
                format_layers(v.nonzero_layers(), v.n_layers),
                f"{float(v.matrix.norm()):.3f}",
                _median_relative_strength(v),
            )
        )
    print(format_table(("file", "model", "emotion", "method", "layers", "norm", "rel/alpha"), rows))
    return 0


def _median_relative_strength(v: SteeringVector) -> str:
    """Median over non-zero layers of ||row_l|| / RMS||h_l|| (relative strength per unit alpha)."""
    import statistics

    rel = v.relative_strength(1.0)
    return f"{statistics.median(rel.values()):.4g}" if rel else "-"


def cmd_export(args: argparse.Namespace) -> int:
    from steer_plugin.errors import SteerError
    from steer_plugin.io.outputs import check_output_file
    from steer_plugin.io.terminal import printable
    from steer_plugin.model.hooks import finite_alpha
    from steer_plugin.vectors.interop import export_gguf_control_vector, export_lm_eval_steered
    from steer_plugin.vectors.vector import SteeringVector

    check_output_file(args.out, inputs=[args.vector])
    if finite_alpha(args.alpha, "--alpha") == 0:  # a file that steers nothing is a mistake, not an export
        raise SteerError("--alpha 0 exports a vector that steers nothing; give a non-zero coefficient (default 1)")
    vec = SteeringVector.load(args.vector)
    if args.format == "lm-eval-steered":
        block_path = args.block_path or vec.metadata.get("block_path") or "model.layers"
        export_lm_eval_steered(vec, args.out, block_path=block_path, alpha=args.alpha)
        print(f"wrote {args.out} (blocks {printable(block_path)}.N, coefficient {args.alpha})")
    else:
        layers = export_gguf_control_vector(vec, args.out, model_hint=args.model_hint, alpha=args.alpha)
        if 0 in vec.nonzero_layers():
            print("note: llama.cpp never steers block 0; row 0 was not exported", file=sys.stderr)
        print(f"wrote {args.out} (layers {layers})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from steer_plugin.io.outputs import check_output_file
    from steer_plugin.vectors.vector import SteeringVector

    check_output_file(args.out, inputs=[args.npy])
    vec = SteeringVector.from_npy(args.npy, drop_embedding_row=args.drop_embedding_row)
    if args.emotion:
        vec.metadata["emotion"] = args.emotion
    if args.model:
        vec.metadata["model"] = args.model
    vec.save(args.out)
    print(f"wrote {args.out}: {vec.n_layers} layers x {vec.hidden_size}")
    return 0
