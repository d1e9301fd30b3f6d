"""Which vector recipe moves the target most at equal KL: text source x pooling x centring x method (issue 20).

For one model and a few emotions it builds each recipe's vector, calibrates every vector to the same KL
budgets at the same layers and positions, evaluates the emotion task (the chat-template task where the model
has a chat template, the continuation task of a base model) with one norm-matched random control per vector at
its alpha and the prompting reference (asking for the emotion), and writes

* ``comparison.md``: per recipe x emotion x budget the Δ target probability on outputs fluent in both arms
  with its 95% paired interval, the degenerate rate and generation perplexity (beside the baseline's), the
  KL the calibration reached on its calibration and held-out texts and the side effects' KL, the control's Δ;
* ``comparison.csv``: the same numbers, unrounded, with each configuration's results file;
* ``recipes.png``: robust target Δ vs measured KL, one line per recipe (95% intervals), a panel per emotion,
  the prompting reference as a star.

The sweep itself (``sweep/``: leaderboard, summary, dose-response plot) is `steer sweep`'s, through
``steer_plugin.study.run.sweep``; a rerun into the same ``--out`` reuses its vectors, calibrations and results.

The recipes (``--recipes``, default all eight). The full grid (2 sources x 2 poolings x 2 centrings x 4 methods
= 32) is pruned to one-factor changes from the shipped default (``top_k-20``: GoEmotions, last token, no
centring), each answering one question at equal KL:

* ``top_k-20`` (the default) vs ``mean``: does the top-k mask help?
* ``mean`` vs ``mean-pool-mean``: last token vs mean over the text's tokens;
* ``mean`` vs ``pca`` vs ``probe``: the direction (class means vs paired differences vs a classifier);
* ``mean`` vs ``mean-emotions-npc3``: centring on the 27 emotions' mean with 3 neutral components projected out
  (together: the recipe of Anthropic's emotion probes; apart they would double the centring rows);
* ``mean`` vs ``mean-generated``: the model's own answers instead of GoEmotions (pooled over the response, the
  generated source's default: its texts are answers, not sentences ending where a continuation starts);
* ``mean-generated`` vs ``pca-generated``: whether a paired method suits the generated source, whose two arms
  *are* paired (one prompt, two instructions) unlike GoEmotions' unrelated texts.

Not run: top-k of the other recipes (the mask is one question, asked once), centring with the generated source
(it has no texts of the other emotions: an error), probe on generated answers (as few texts as prompts).

Recording is shared: one pass (the model loaded once) per text source and pooling covers every recipe and
emotion using it (all 27 emotions when a recipe centres on them), with the per-text states pca/probe read kept
in a temporary folder (``steer record --save-activations``'s arrays); the generated source records once per
emotion (its neutral answers answer that emotion's prompts).

    python scripts/compare_recipes.py --model HuggingFaceTB/SmolLM2-135M-Instruct --data DIR --out runs/recipes \\
        [--emotions anger,joy,sadness] [--recipes top_k-20,mean,...] [--budgets 0.1,0.3,1] [--layers middle] \\
        [--positions response] [--limit N] [--max-per-class N] [--classifier nade] [-- extra steer run options]

Options after ``--`` are `steer run`'s evaluation options (``--batch-size``, ``--device``, ``--dtype``, ...).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from steer_plugin.cli import build_parser
from steer_plugin.cli.args import model_options
from steer_plugin.cli.study import evaluation_from_args
from steer_plugin.data.goemotions import target_slug
from steer_plugin.errors import SteerError
from steer_plugin.io.atomic import write_files_atomic
from steer_plugin.io.text_table import format_table
from steer_plugin.model.loading import ModelOptions
from steer_plugin.study.arm_numbers import ArmNumbers, cell
from steer_plugin.study.arms import Study, load_study
from steer_plugin.study.evaluation import emotion_task_family
from steer_plugin.study.report import write_study
from steer_plugin.study.run import sweep
from steer_plugin.study.sentences import describe
from steer_plugin.vectors.recipe import Recipe


def compared_recipes(top_k: int) -> tuple[Recipe, ...]:
    """The compared recipes, top-k vectors keeping ``top_k`` neurons per layer."""
    return (
        Recipe("top_k", top_k=top_k),
        Recipe("mean"),
        Recipe("mean", pool="mean"),
        Recipe("pca"),
        Recipe("probe"),
        Recipe("mean", centre="emotions", neutral_pcs=3),
        Recipe("mean", source="generated"),
        Recipe("pca", source="generated"),
    )


def pick_recipes(spec: str | None, top_k: int) -> dict[str, Recipe]:
    """label -> recipe, in the order given (None: all of them)."""
    known = {r.label(): r for r in compared_recipes(top_k)}
    if spec is None:
        return known
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SteerError(f"unknown recipe {', '.join(unknown) or repr(spec)}; use some of {', '.join(known)}")
    return {n: known[n] for n in dict.fromkeys(names)}


def vector_path(out: Path, emotion: str, label: str) -> Path:
    return out / "vectors" / f"{target_slug(emotion)}-{label}.safetensors"


# --- building: one recording per text source and pooling ------------------------------------------------------


def build_vectors(
    recipes: dict[str, Recipe],
    emotions: list[str],
    out: Path,
    model: ModelOptions,
    *,
    data: str | None,
    max_per_class: int | None,
    batch_size: int,
    progress: bool,
) -> dict[tuple[str, str], Path]:
    """(emotion, recipe label) -> its vector file, building the missing ones."""
    from steer_plugin.vectors.build import build_vector
    from steer_plugin.vectors.generated import texts_jsonl, texts_path
    from steer_plugin.vectors.request import RecordRequest, recorded, with_all_emotions

    paths = {(e, name): vector_path(out, e, name) for e in emotions for name in recipes}
    groups: dict[tuple[str, str, tuple[str, ...]], list[tuple[str, str]]] = {}
    for (e, name), path in paths.items():
        r = recipes[name]
        if not path.exists():  # the generated source records one emotion at a time
            targets = (e,) if r.source == "generated" else tuple(emotions)
            groups.setdefault((r.source, r.resolved_pool, targets), []).append((e, name))
    loaded = model.load() if groups else None
    for (source, pool, targets), todo in groups.items():
        request = RecordRequest(
            model=model, emotion=targets[0], targets=targets if len(targets) > 1 else (), data_dir=data,
            max_per_class=max_per_class, batch_size=batch_size, progress=progress, source=source, pool=pool,
        )  # fmt: skip
        if any(recipes[name].centre == "emotions" for _, name in todo):
            request = with_all_emotions(request)
        per_text = any(recipes[n].per_text for _, n in todo)
        _say(progress, f"recording {source} texts ({pool} pooling) for {', '.join(f'{e} {n}' for e, n in todo)}")
        with recorded(request, loaded, per_text=per_text) as rec:
            for e, name in todo:
                r = recipes[name]
                vec = build_vector(
                    rec.stats, e, request.baseline, **r.build_kwargs(), activations=rec.activations, seed=request.seed
                )
                path = paths[e, name]
                vec.save(path, {texts_path(path): texts_jsonl(list(rec.texts))} if rec.texts else None)
                _say(progress, f"wrote {path}")
    if loaded is not None:
        del loaded
        _free_memory()
    return paths


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the comparison -----------------------------------------------------------------------------------------

SWEEP = "sweep"  # the sweep's folder under --out
CSV_COLUMNS = (
    "recipe", "emotion", "kl_budget", "alpha", "kl_calibration", "kl_heldout", "kl_side_effects",
    "target_metric", "target", "delta", "ci_low", "ci_high", "n", "degenerate_rate", "baseline_degenerate_rate",
    "gen_ppl", "baseline_gen_ppl", "control_delta", "control_ci_low", "control_ci_high", "results", "control_results",
)  # fmt: skip


@dataclass(frozen=True)
class Line:
    """One row of the comparison: a recipe's vector (or the prompting reference) at one budget."""

    recipe: str  # the recipe label; the prompting reference: ``(asking for <emotion>)``
    emotion: str
    budget: float | None
    alpha: float | None
    kl_calibration: float | None
    kl_heldout: float | None
    numbers: ArmNumbers
    baseline: ArmNumbers
    control: ArmNumbers | None
    results: str
    control_results: str = ""


def _calibration_kls(vector: Path, budget: float | None, alpha: float) -> tuple[float | None, float | None]:
    """The KL the stored calibration reached at this alpha for this budget: on its calibration and held-out texts
    (the results record the alpha to 4 significant digits); None where the vector's calibration has another alpha
    for this budget (results of an earlier calibration, still in the sweep folder)."""
    from steer_plugin.steering.calibration_file import stored_calibrations

    if budget is None:
        return None, None
    for c in stored_calibrations(vector):
        for r in c.rows:
            if math.isclose(r.kl_budget, budget, rel_tol=1e-9) and f"{r.alpha:.4g}" == f"{alpha:.4g}":
                return r.kl_calibration, r.kl_heldout
    return None, None


def comparison_lines(study: Study, paths: dict[tuple[str, str], Path], results_dir: str = "") -> list[Line]:
    """Recipe x emotion x budget, in the order of ``paths``, each emotion's prompting reference after its recipes
    (``results_dir``: the sweep folder, as the results files' paths start)."""
    lines: list[Line] = []
    for emotion in dict.fromkeys(e for e, _ in paths):
        baseline = ArmNumbers.of(study.baseline, emotion)
        for (e, name), path in paths.items():
            if e != emotion:
                continue
            label = f"{emotion} ({name})"
            for arm in sorted((a for a in study.arms if a.row.key.vector == label), key=lambda a: a.level):
                kl_cal, kl_held = _calibration_kls(path, arm.budget, arm.alpha)
                if arm.budget is not None and kl_cal is None:
                    continue  # an earlier calibration's alpha: not this comparison's configuration
                # the control at the arm's own alpha (control_match="alpha"), not an earlier calibration's
                controls = [c for c in study.controls_of(arm) if f"{c.alpha:.4g}" == f"{arm.alpha:.4g}"]
                control = ArmNumbers.of(controls[0].row, emotion) if controls else None
                numbers = ArmNumbers.of(arm.row, emotion)
                lines.append(
                    Line(
                        name,
                        emotion,
                        arm.budget,
                        arm.alpha,
                        kl_cal,
                        kl_held,
                        numbers,
                        baseline,
                        control,
                        results_dir + arm.row.source,
                        results_dir + controls[0].row.source if controls else "",
                    )
                )
        if (prompted := study.prompted.get(emotion)) is not None:
            numbers = ArmNumbers.of(prompted, emotion)
            lines.append(
                Line(
                    f"(asking for {emotion})",
                    emotion,
                    None,
                    None,
                    None,
                    None,
                    numbers,
                    baseline,
                    None,
                    results_dir + prompted.source,
                )
            )
    return lines


def _vs(x: float | None, base: float | None, spec: str) -> str:
    return f"{cell(x, spec)} (baseline {cell(base, spec)})"


def comparison_markdown(lines: list[Line]) -> str:
    header = ["recipe", "emotion", "KL budget", "alpha", "KL calibration / held-out", "KL (neutral texts)",
              "Δ target prob, fluent outputs [95% CI]", "prompts", "degenerate outputs", "gen ppl",
              "control Δ [95% CI]"]  # fmt: skip
    rows = []
    for ln in lines:
        n, p, c = ln.numbers, ln.numbers.delta, ln.control.delta if ln.control else None
        rows.append([
            ln.recipe, ln.emotion, cell(ln.budget, "g"), cell(ln.alpha, ".4g"),
            "-" if ln.kl_calibration is None else f"{cell(ln.kl_calibration)} / {cell(ln.kl_heldout)}",
            cell(n.kl), "-" if p is None else describe(p), "-" if p is None else str(p.n),
            _vs(n.degenerate, ln.baseline.degenerate, ".0%"), _vs(n.gen_ppl, ln.baseline.gen_ppl, ".1f"),
            "-" if c is None else describe(c),
        ])  # fmt: skip
    return format_table(header, rows, markdown=True)


def comparison_csv(lines: list[Line]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)

    def num(x: Any) -> str:
        return "" if x is None else repr(float(x)) if isinstance(x, float) else str(x)

    for ln in lines:
        n, p, c = ln.numbers, ln.numbers.delta, ln.control.delta if ln.control else None
        w.writerow([
            ln.recipe, ln.emotion, num(ln.budget), num(ln.alpha), num(ln.kl_calibration), num(ln.kl_heldout),
            num(n.kl), n.metric, num(n.target), *(num(getattr(p, f, None)) for f in ("delta", "ci_low", "ci_high", "n")),
            num(n.degenerate), num(ln.baseline.degenerate), num(n.gen_ppl), num(ln.baseline.gen_ppl),
            *(num(getattr(c, f, None)) for f in ("delta", "ci_low", "ci_high")), ln.results, ln.control_results,
        ])  # fmt: skip
    return buf.getvalue()


def recipes_png(lines: list[Line]) -> bytes:
    """Robust target Δ vs the side effects' KL, one line per recipe with 95% intervals, a panel per emotion; the
    prompting reference as a star, the baseline at (0, 0)."""
    from steer_plugin.io.figures import new_figure, png_bytes

    emotions = list(dict.fromkeys(ln.emotion for ln in lines))
    fig = new_figure(6 * len(emotions), 4.5)
    axes = fig.subplots(1, len(emotions), squeeze=False)[0]
    recipes = list(dict.fromkeys(ln.recipe for ln in lines if ln.budget is not None or ln.alpha is not None))
    colours = {r: f"C{i % 10}" for i, r in enumerate(recipes)}
    for ax, emotion in zip(axes, emotions):
        for recipe in recipes:
            pts = [ln for ln in lines if ln.emotion == emotion and ln.recipe == recipe and ln.numbers.delta is not None]
            if not pts:
                continue
            xs = [0.0] + [ln.numbers.kl or 0.0 for ln in pts]
            ds = [ln.numbers.delta for ln in pts]
            ys = [0.0] + [d.delta for d in ds if d is not None]
            lo = [0.0] + [d.delta - d.ci_low for d in ds if d is not None]
            hi = [0.0] + [d.ci_high - d.delta for d in ds if d is not None]
            ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, marker="o", color=colours[recipe], label=recipe)
        for ln in lines:
            if ln.emotion == emotion and ln.alpha is None and ln.numbers.delta is not None:
                ax.plot([ln.numbers.kl or 0.0], [ln.numbers.delta.delta], marker="*", ms=14, color="k", ls="none",
                        label=f"asking for {emotion}")  # fmt: skip
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(emotion)
        ax.set_xlabel("KL to the unsteered model (nats/token, neutral texts)")
        ax.set_ylabel("Δ target probability (fluent outputs)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return png_bytes(fig)


def write_comparison(out: Path, paths: dict[tuple[str, str], Path]) -> tuple[str, list[Path]]:
    """comparison.md/.csv and recipes.png in ``out``, from the sweep in ``out/sweep`` (results paths relative to ``out``)."""
    lines = comparison_lines(load_study(out / SWEEP), paths, f"{SWEEP}/")
    text = comparison_markdown(lines)
    files = write_files_atomic({
        out / "comparison.md": text + "\n", out / "comparison.csv": comparison_csv(lines),
        out / "recipes.png": recipes_png(lines),
    })  # fmt: skip
    return text, files


# --- the command line ---------------------------------------------------------------------------------------


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--emotions", default="anger,joy,sadness")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--recipes", default=None, help=f"some of {', '.join(r.label() for r in compared_recipes(20))} (default all)"
    )
    ap.add_argument("--budgets", default="0.1,0.3,1")
    ap.add_argument("--layers", default="middle")
    ap.add_argument("--positions", default="response")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--limit", type=float, default=None, help="prompts per emotion task")
    ap.add_argument("--max-per-class", type=int, default=None, help="texts per class (prompts, for generated)")
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--data", default=None, help="local GoEmotions folder (vectors and neutral texts)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        emotions = [e.strip() for e in args.emotions.split(",") if e.strip()]
        recipes = pick_recipes(args.recipes, args.top_k)
        # `steer run`'s loading and evaluation options (defaults and those after --), then what this comparison fixes
        ns = build_parser().parse_args(["run", "--model", args.model, "--emotion", emotions[0], *extra])
        model = model_options(ns)
        options = evaluation_from_args(ns)
        evaluation = replace(
            options, tasks=[f"{emotion_task_family(options.chat, model)}_{target_slug(e)}" for e in emotions],
            limit=args.limit, classifier=args.classifier, layers=args.layers, positions=args.positions, controls=1,
            control_match="alpha", prompted=emotions, fluency_texts=options.fluency_texts or args.data,
        )  # fmt: skip
        evaluation.check(out / SWEEP, model)  # before minutes of recording
        batch = evaluation.batch_size if isinstance(evaluation.batch_size, int) else 8
        paths = build_vectors(
            recipes, emotions, out, model, data=args.data, max_per_class=args.max_per_class, batch_size=batch,
            progress=True,
        )  # fmt: skip
        alphas = ",".join(["0", *(f"kl:{b}" for b in args.budgets.split(","))])
        sweep(list(paths.values()), alphas, out / SWEEP, model=model, evaluation=evaluation)
        write_study(out / SWEEP)
        text, files = write_comparison(out, paths)
    except SteerError as e:
        print(f"compare_recipes: error: {e}", file=sys.stderr)
        return 2
    print(text)
    for f in files:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
