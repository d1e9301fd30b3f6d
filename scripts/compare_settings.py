"""Which steering settings move the target most at equal KL: method x layers x positions.

Runs one `steer sweep` of an emotion's mean and top-k vectors over all vs middle layers and
``positions=all`` vs ``response``, each calibrated to the same KL budgets, on the emotion's own
``steer_emotion_*`` task, then prints (and writes ``comparison.md``) the Δ of the target probability
vs the unsteered baseline with its 95% paired bootstrap interval, per setting and budget, beside the KL
and perplexity measured on neutral texts. ``steer report`` on the same folder draws the dose-response
plot (target probability vs KL with intervals, one line per setting).

    python scripts/compare_settings.py --model HuggingFaceTB/SmolLM2-135M-Instruct --emotion anger \\
        --out runs/settings-anger [--middle 8-20] [--budgets 0.1,0.3,1] [--limit N] [-- extra steer run options]

It is one ``steer_plugin.run(...)`` call: missing vectors are built first (both methods from one recording
pass); options after ``--`` (``--batch-size``, ``--device``, ...) are `steer run`'s.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import steer_plugin
from steer_plugin.cli import build_parser
from steer_plugin.cli.args import model_options
from steer_plugin.cli.study import evaluation_from_args, recipe_from_args
from steer_plugin.io.text_table import format_table
from steer_plugin.study.arm_numbers import ArmNumbers, cell
from steer_plugin.study.arms import load_study
from steer_plugin.study.sentences import describe


def comparison(folder: Path, emotion: str) -> str:
    study = load_study(folder)
    header = ["setting", "KL budget", "alpha", "KL (neutral texts)", "perplexity", "Δ target prob, fluent outputs [95% CI]",
              "prompts compared", "degenerate outputs"]  # fmt: skip

    def cells(row, series: str, level: str, alpha: str) -> list[str]:
        n = ArmNumbers.of(row, emotion)
        p = n.delta
        return [
            series, level, alpha, cell(n.kl), cell(n.ppl, ".1f"),
            "-" if p is None else describe(p), "-" if p is None else str(p.n), cell(n.degenerate, ".0%"),
        ]  # fmt: skip

    rows = []
    for series in study.emotions:
        for arm in sorted((a for a in study.arms if a.series == series), key=lambda a: a.level):
            rows.append(cells(arm.row, series, f"{arm.level:g}", f"{arm.alpha:.4g}"))
    if emotion in study.prompted:  # the prompting reference: asking for the emotion instead
        rows.append(cells(study.prompted[emotion], f"(asking for {emotion})", "-", "-"))
    baseline = ArmNumbers.of(study.baseline, emotion)
    base, bad = baseline.target, baseline.degenerate
    title = emotion
    if base is not None:
        title += f": baseline target probability on its fluent outputs {base:.3f}"
        title += "" if bad is None else f", degenerate outputs {bad:.0%}"
    return f"{title}\n\n" + format_table(header, rows, markdown=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--emotion", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--middle", default="middle", help="the middle layers (default: the middle third)")
    ap.add_argument("--budgets", default="0.1,0.3,1")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--limit", type=float, default=None)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--data", default=None, help="local GoEmotions folder (vectors and neutral texts)")
    args = ap.parse_args(argv)

    # `steer run`'s defaults and the extra options, then the settings this comparison is about
    ns = build_parser().parse_args(["run", "--model", args.model, "--emotion", args.emotion, *extra])
    recipe = recipe_from_args(ns)  # `steer run`'s centring and projection, for both methods
    evaluation = replace(
        evaluation_from_args(ns),
        layers=["all", args.middle],
        positions=["all", "response"],
        controls=0,
        tasks=[f"steer_emotion_{args.emotion}"],
        limit=args.limit,
        classifier=args.classifier,
    )
    try:
        steer_plugin.run(
            args.emotion,
            model_options(ns),
            recipe=[replace(recipe, method="mean", top_k=None), replace(recipe, method="top_k", top_k=args.top_k)],
            record=steer_plugin.RecordOptions(data=args.data),  # also the neutral texts of the side effects
            evaluation=evaluation,
            alphas=[0, *(f"kl:{b}" for b in args.budgets.split(","))],
            out=args.out,
        )
    except steer_plugin.SteerError as e:
        print(f"compare_settings: error: {e}", file=sys.stderr)
        return 2
    text = comparison(Path(args.out), args.emotion)
    (Path(args.out) / "comparison.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
