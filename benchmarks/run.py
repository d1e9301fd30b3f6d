"""Benchmark: `steer run`'s main job end to end, timed from outside, with its phases from the results it writes.

Runs the command a user runs (a child process: interpreter start, imports and model load included), then reads
where the time went from the run folder: each configuration's ``request_seconds`` (the model's time on
loglikelihood = TruthfulQA and generate_until = the emotion task), ``generation_fluency_seconds`` (gen_nll) and
side-effect seconds; the rest of a configuration's time is the harness's bookkeeping and the classifier; what is
left of the wall time is start-up, calibration (or its verification), tables, summary and plots.

    python -m benchmarks.run --model path/to/SmolLM2-135M-Instruct --data GOEMOTIONS --truthfulqa-dir TRUTHFULQA

The first configuration's request times include the batched work of all the others (prefix reuse scores every
configuration's TruthfulQA tails with it, config batching generates every configuration's outputs with it).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common as bc

TARGET_SECONDS = 300.0  # the main job at --limit 50 on SmolLM2, 2 CPU cores


def phases(run: Path, wall: float) -> list[tuple[str, float]]:
    """(phase, seconds) of a finished run folder, summed over its configurations; the last row is the rest."""
    totals = {"loglikelihood": 0.0, "generate_until": 0.0, "fluency": 0.0, "side": 0.0, "evaluate": 0.0}
    for path in sorted(run.glob("*/results.json")):
        config = json.loads(path.read_text(encoding="utf-8"))["config"]
        spent = config.get("request_seconds") or {}
        totals["loglikelihood"] += spent.get("loglikelihood", 0.0)
        totals["generate_until"] += spent.get("generate_until", 0.0)
        totals["fluency"] += config.get("generation_fluency_seconds") or 0.0
        totals["side"] += (config.get("side_effects") or {}).get("seconds", 0.0)
        totals["evaluate"] += config.get("seconds") or 0.0
    other = totals["evaluate"] - totals["loglikelihood"] - totals["generate_until"] - totals["fluency"]
    swept = totals["evaluate"] + totals["side"]
    return [
        ("TruthfulQA MC1 + MC2, all configurations (loglikelihood, prefix reuse)", totals["loglikelihood"]),
        ("emotion task generation, all configurations (config batching; the prompting reference alone)",
         totals["generate_until"]),
        ("fluency of the outputs (gen_nll, prompts cached across configurations)", totals["fluency"]),
        ("side effects: KL and perplexity on neutral texts", totals["side"]),
        ("harness bookkeeping and the emotion classifier", other),
        ("start-up, model load, calibration check, tables, summary, plots", wall - swept),
    ]  # fmt: skip


def calibration_note(stderr: str) -> str:
    """What the run did about the stored calibration, from its progress output."""
    if "verified on these weights before" in stderr:
        return "the stored calibration, verified on these weights by an earlier run (no KL evaluated)"
    m = re.search(r"verified the stored calibration on this model", stderr)
    if m:
        return "the stored calibration, verified on this model (one KL evaluation per budget)"
    if "calibrating" in stderr:
        return "calibrated in this run"
    return "not reported"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a local SmolLM2-135M-Instruct folder (named like the hub id)")
    p.add_argument("--data", required=True, help="GoEmotions folder")
    p.add_argument("--truthfulqa-dir", required=True, help="TruthfulQA JSONL folder")
    p.add_argument("--emotion", default="anger")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--classifier", default="nade")
    p.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    bc.add_common_args(p)
    args = p.parse_args(argv)
    env = bc.child_env(args.threads)
    # A user's first run: an empty cache, so the stored calibration is verified on these weights (one KL
    # evaluation per budget) as it would be for them, whatever earlier runs on this machine remembered.
    env["STEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-run-cache-")
    info = bc.machine_info()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-run-")) / f"{args.emotion}-{args.limit}"
    command = [sys.executable, "-m", "steer_plugin", "run", "--model", args.model, "--emotion", args.emotion,
               "--data", args.data, "--truthfulqa-dir", args.truthfulqa_dir, "--classifier", args.classifier,
               "--limit", str(args.limit), "--fresh", "--out", str(out)]  # fmt: skip
    before = bc.loadavg()
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    after = bc.loadavg()
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        return done.returncode
    rows = [(name, f"{seconds:.0f}") for name, seconds in phases(out, wall)]
    configs = sorted(p.parent.name for p in out.glob("*/results.json"))
    body = [
        "## 7c. `steer run`'s main job end to end (SmolLM2-135M-Instruct, CPU)",
        "",
        *bc.header_lines(info, bc.command_line("run", argv if argv is not None else sys.argv[1:]), (before, after)),
        f"- the job: `steer run --emotion {args.emotion} --limit {args.limit} --classifier {args.classifier}` with "
        "the GoEmotions and TruthfulQA release files (a child process, timed from outside); "
        f"{len(configs)} configurations (baseline, KL budgets 0.03/0.1/0.3/1 with a random control each, the "
        "prompting reference); the chat template for the emotion task; TruthfulQA MC1 + MC2; side effects on "
        f"neutral texts; output quality (no_words, repetition, gen_nll); calibration: {calibration_note(done.stderr)}",
        "",
        *bc.md_table(["phase", "seconds"], [*rows, ("**total (wall)**", f"**{wall:.0f} ({wall / 60:.1f} min)**")]),
        "",
        *bc.md_table(
            ["target", "measured", "result"],
            [
                (
                    f"the main job at `--limit {args.limit}` <= {TARGET_SECONDS / 60:.0f} min",
                    f"{wall / 60:.1f} min",
                    bc.verdict(wall <= TARGET_SECONDS),
                )
            ],
        ),
    ]
    bc.print_and_write(args, "run-end-to-end", "\n".join(body))
    bc.dump_json(args.json, {"wall": wall, "phases": dict(phases(out, wall)), "load": [before, after]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
