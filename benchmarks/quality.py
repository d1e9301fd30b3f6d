"""Benchmark: what the output-quality metrics cost in a finished `steer run` / `steer sweep`.

The quality metrics are the text measures of every generation (``no_words``, ``repetition``, ``distinct_2``,
computed by the emotion tasks) and its fluency (``gen_nll``: one forward of prompt + generation under the
unsteered model, computed by the sweep). This recomputes both for every configuration of a run folder written
with ``--log-samples`` (the prompts and generations are needed), in this process, and sets their time against the
run's own evaluation time (the sum of its configurations' ``seconds`` and side-effect seconds, from its results).
The recomputed NLL must equal the stored ``gen_nll`` (a check that the timed work is the work the sweep does).

    python -m benchmarks.quality --model path/to/SmolLM2-135M-Instruct --run runs/smollm2-anger
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common as bc

TARGET_SHARE = 0.15  # the quality metrics may cost at most this share of a run


def _configs(run: Path) -> list[tuple[Path, dict[str, Any], dict[str, list[dict[str, Any]]]]]:
    """(folder, results, {emotion task: samples rows}) of every configuration with full samples."""
    from steer_plugin.harness.tasks import is_emotion_task

    out = []
    for results_file in sorted(run.glob("*/results.json")):
        results = json.loads(results_file.read_text(encoding="utf-8"))
        samples = {}
        for path in sorted(results_file.parent.glob("samples_*.jsonl")):
            task = path.stem.removeprefix("samples_")
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if is_emotion_task(task) and rows and "arguments" in rows[0]:
                samples[task] = rows
        out.append((results_file.parent, results, samples))
    return out


def measure(model_dir: str, run: Path, batch_size: int) -> dict[str, Any]:
    """Recompute the quality metrics of every configuration; time them; compare with the run's time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steer_plugin.data.text_quality import quality_metrics
    from steer_plugin.steering.generation_nll import continuation_nll

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    configs = _configs(run)
    if not any(samples for _, _, samples in configs):
        raise SystemExit(f"{run}: no emotion-task samples with prompts and generations (run it with --log-samples)")
    fluency_s = text_s = run_s = 0.0
    n_outputs = 0
    worst = 0.0
    for _, results, samples in configs:
        config = results.get("config") or {}
        run_s += float(config.get("seconds") or 0.0) + float((config.get("side_effects") or {}).get("seconds") or 0.0)
        rows = [r for task_rows in samples.values() for r in task_rows]
        texts = [str(r["resps"][0][0]) for r in rows]
        t0 = time.perf_counter()
        for text in texts:  # each task scores its own outputs' text measures
            quality_metrics(text)
        text_s += time.perf_counter() - t0
        # as the sweep does: the emotion tasks share prompts and generations, each distinct pair is scored once
        distinct = list(dict.fromkeys((str(r["arguments"][0][0]), t) for r, t in zip(rows, texts)))
        pairs = [
            (tok(c)["input_ids"], tok(t, add_special_tokens=False)["input_ids"] or [tok.eos_token_id])
            for c, t in distinct
        ]
        t0 = time.perf_counter()
        nlls = dict(
            zip(distinct, continuation_nll(model, tok, pairs, batch_size=batch_size, max_length=tok.model_max_length))
        )
        fluency_s += time.perf_counter() - t0
        n_outputs += len(rows)
        for r, t in zip(rows, texts):
            nll = nlls[(str(r["arguments"][0][0]), t)].per_token
            if "gen_nll" in r and math.isfinite(nll):
                worst = max(worst, abs(nll - float(r["gen_nll"])))
    return {
        "configurations": len(configs),
        "outputs": n_outputs,
        "fluency_s": fluency_s,
        "text_s": text_s,
        "run_s": run_s,
        "share": (fluency_s + text_s) / run_s if run_s else math.nan,
        "max_abs_diff_gen_nll": worst,
    }


def report(m: dict[str, Any], command: str, load: tuple[Any, Any]) -> str:
    lines = ["## Output-quality metrics: their share of a run", ""]
    lines += bc.header_lines(bc.machine_info(), command, load)
    lines += [
        f"- run: {m['configurations']} configurations, {m['outputs']} emotion-task outputs; the run's evaluation "
        f"time (configurations + side effects, from its results): {m['run_s']:.0f} s",
        f"- recomputed `gen_nll` equals the stored one to {m['max_abs_diff_gen_nll']:.1e}",
        "",
    ]
    lines += bc.md_table(
        ["target", "measured", "result"],
        [
            [
                f"quality metrics ≤ {TARGET_SHARE:.0%} of a run",
                f"{m['fluency_s'] + m['text_s']:.1f} s ({m['fluency_s']:.1f} s fluency + {m['text_s']:.2f} s text "
                f"measures) = {m['share']:.1%}",
                bc.verdict(m["share"] <= TARGET_SHARE),
            ]
        ],
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the run's model folder")
    p.add_argument("--run", required=True, help="a finished run/sweep folder written with --log-samples")
    p.add_argument("--batch-size", type=int, default=16)
    bc.add_common_args(p)
    args = p.parse_args(argv)
    bc.setup(args.threads)
    before = bc.loadavg()
    m = measure(args.model, Path(args.run), args.batch_size)
    quoted = sys.argv[1:] if argv is None else argv
    body = report(m, bc.command_line("quality", quoted), (before, bc.loadavg()))
    bc.print_and_write(args, "quality", body)
    bc.dump_json(args.json, m)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
