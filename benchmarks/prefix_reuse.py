#!/usr/bin/env python
"""Benchmark prefix reuse: lm-eval's `hf` vs `steered_hf` on truthfulqa_local_mc2, CPU float32.

Runs, alternating A/B with the order rotated every repeat (the machine is shared, so medians of repeats):
  hf                      lm-eval's HFLM (no reuse)
  steered_hf alpha=0      prefix reuse on (the default)
  steered_hf alpha!=0     prefix reuse on, positions=all (the context is steered too) and =response
and once a `steer sweep` (run_sweep) over N alphas with positions=response, compared with N hf runs.
Prints per-request agreement with `hf`, tokens fed, wall times and ratios; --json writes all of it.

    STEER_TRUTHFULQA_DIR=path/to/truthfulqa python -m benchmarks.prefix_reuse \
        --model path/to/SmolLM2-135M-Instruct --limit 100 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TASK = "truthfulqa_local_mc2"
# With more runnable threads than cores (a shared 2-core machine), OpenMP's default spin-waiting makes every
# small op wait for a descheduled sibling thread: 10-20x slower runs that measure the scheduler, not the code.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--model", default=os.environ.get("STEER_SMOLLM2", str(Path.home() / ".cache/steering/smollm2-135m-instruct"))
    )
    p.add_argument("--truthfulqa-dir", default=os.environ.get("STEER_TRUTHFULQA_DIR"))
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--sweep-alphas", default="0,2,4,6,8", help="comma-separated; 0 is the baseline configuration")
    p.add_argument("--backend", default="nnsight", choices=("nnsight", "hooks"))
    p.add_argument("--vector", help="steering vector file (default: a random unit vector per layer, seed 0)")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument(
        "--check-limit",
        type=int,
        default=20,
        help="questions for the steered reuse-vs-plain agreement check (plain runs are slow); 0 skips",
    )
    p.add_argument("--json", type=Path, help="write the measurements here")
    p.add_argument("--report", type=Path, help="only print the markdown table of an earlier --json file")
    return p.parse_args(argv)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def random_vector(model: Any, folder: Path) -> str:
    import torch

    from steer_plugin.vectors.vector import SteeringVector

    cfg = model.config
    torch.manual_seed(0)
    m = torch.randn(cfg.num_hidden_layers, cfg.hidden_size)
    path = folder / "random_unit.safetensors"
    SteeringVector(m / m.norm(dim=1, keepdim=True), {"model": str(getattr(model, "name_or_path", ""))}).save(path)
    return str(path)


def per_request(samples: list[dict]) -> list[tuple[float, bool]]:
    return [(float(r[0][0]), bool(r[0][1])) for s in sorted(samples, key=lambda s: s["doc_id"]) for r in s["resps"]]


def compare(a: list, b: list) -> dict[str, Any]:
    return {
        "requests": len(a),
        "max_abs_diff": max(abs(x[0] - y[0]) for x, y in zip(a, b, strict=True)),
        "greedy_mismatches": sum(x[1] != y[1] for x, y in zip(a, b, strict=True)),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return 0
    if not args.truthfulqa_dir:
        raise SystemExit("give --truthfulqa-dir (or set STEER_TRUTHFULQA_DIR): a local TruthfulQA JSONL folder")
    os.environ["STEER_TRUTHFULQA_DIR"] = args.truthfulqa_dir
    import torch
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from steer_plugin.harness.engine import HFEngine
    from steer_plugin.harness.model import SteeredHFLM
    from steer_plugin.harness.prefix_reuse import TokenCounts, plain_token_count
    from steer_plugin.harness.tasks import tasks_dir
    from steer_plugin.study.plan import SweepOptions, SweepPlan
    from steer_plugin.study.sweep import run_sweep

    torch.set_num_threads(args.threads)
    common = {"pretrained": args.model, "dtype": "float32", "device": "cpu", "batch_size": args.batch_size}
    hf = HFLM(**common)
    steered = SteeredHFLM(**common, backend=args.backend)
    work = Path(tempfile.mkdtemp(prefix="bench_prefix_reuse_"))
    vector = args.vector or random_vector(steered.model, work)

    hf_tokens: list[int] = []
    original = hf._loglikelihood_tokens

    def counting(requests, *a, **kw):  # tokens lm-eval's own loop feeds (its one-token logits cache included)
        hf_tokens.append(plain_token_count(requests, hf.max_length, hf.logits_cache))
        return original(requests, *a, **kw)

    hf._loglikelihood_tokens = counting
    task_dict = TaskManager(include_path=str(tasks_dir())).load([TASK])  # built once, as steer sweep does

    runs = {
        "hf": (hf, None),
        "reuse_alpha0": (steered, (vector, 0.0, "all")),
        "reuse_all": (steered, (vector, args.alpha, "all")),
        "reuse_response": (steered, (vector, args.alpha, "response")),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    tokens: dict[str, dict[str, int]] = {}
    answers: dict[str, list] = {}
    reuse_info: dict[str, Any] = {}  # per steered run: config.prefix_reuse (blocked_by, sliding window fallbacks)
    loads: list[str] = []
    names = list(runs)
    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            lm, config = runs[name]
            if config:
                lm.configure(config[0], config[1], positions=config[2])
                lm.token_counts = TokenCounts()
            hf_tokens.clear()
            loads.append(load())
            t0 = time.perf_counter()
            out = evaluate(
                lm=lm, task_dict=task_dict, limit=args.limit, bootstrap_iters=0, log_samples=True, verbosity="WARNING"
            )
            times[name].append(time.perf_counter() - t0)
            answers[name] = per_request(out["samples"][TASK])
            tokens[name] = lm.token_counts.as_dict() if config else {"plain": sum(hf_tokens)}
            if config:
                reuse_info[name] = lm.get_model_info()["prefix_reuse"]
            print(
                f"[{rep + 1}/{args.repeats}] {name:15s} {times[name][-1]:7.1f}s  load {loads[-1]}  "
                f"acc={out['results'][TASK]['acc,none']:.4f}  tokens={tokens[name]}",
                flush=True,
            )

    # exactness of the steered runs against the plain (harness) path, once each
    plain = {}
    for name in ("reuse_all", "reuse_response") if args.check_limit else ():
        vec, alpha, positions = runs[name][1]
        steered.configure(vec, alpha, positions=positions)
        got = {}
        for reuse in (True, False):
            steered.prefix_reuse = reuse
            out = evaluate(
                lm=steered,
                task_dict=task_dict,
                limit=args.check_limit,
                bootstrap_iters=0,
                log_samples=True,
                verbosity="WARNING",
            )
            got[reuse] = per_request(out["samples"][TASK])
        steered.prefix_reuse = True
        plain[name] = {"limit": args.check_limit, **compare(got[True], got[False])}
        print(f"{name}: reuse vs plain on {args.check_limit} questions: {plain[name]}", flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    report: dict[str, Any] = {
        "model": args.model,
        "task": TASK,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "backend": args.backend,
        "alpha": args.alpha,
        "repeats": args.repeats,
        "times_s": times,
        "median_s": med,
        "speedup_vs_hf": {k: med["hf"] / v for k, v in med.items()},
        # each run against the hf run of the same repeat (neighbours in time, so under similar load)
        "paired_speedups_vs_hf": {k: [h / t for h, t in zip(times["hf"], v)] for k, v in times.items()},
        "tokens": tokens,
        "prefix_reuse": reuse_info,
        "load_1m_5m_at_starts": loads,
        "agreement_with_hf": compare(answers["reuse_alpha0"], answers["hf"]),
        "agreement_with_plain_steered": plain,
    }

    if not args.skip_sweep:
        alphas = [float(a) for a in args.sweep_alphas.split(",")]
        plan = SweepPlan.grid([vector], alphas, ["all"], ["response"], baseline=0 in alphas)
        options = SweepOptions(tasks=[TASK], out_dir=work / "sweep", limit=args.limit, bootstrap_iters=0)
        steered.token_counts = TokenCounts()
        loads.append(load())
        t0 = time.perf_counter()
        run_sweep(HFEngine(steered), plan, options, progress=False)
        sweep_s = time.perf_counter() - t0
        n = len(plan.configs)
        report["sweep"] = {
            "configs": n,
            "alphas": alphas,
            "seconds": sweep_s,
            "load_at_start": loads[-1],
            "tokens": steered.token_counts.as_dict(),
            "hf_runs_equivalent_s": n * med["hf"],
            "hf_runs_tokens": n * tokens["hf"]["plain"],
            "speedup": n * med["hf"] / sweep_s,
        }
        print(f"sweep of {n} configurations: {sweep_s:.1f}s  load {loads[-1]}  tokens={steered.token_counts.as_dict()}")

    print(json.dumps(report, indent=2))
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def markdown(r: dict[str, Any]) -> str:
    hf_tok = r["tokens"]["hf"]["plain"]
    lines = [
        "| run | median wall (s) | runs (s) | tokens fed | vs hf: time (medians) | vs hf: time (per repeat) "
        "| vs hf: tokens |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    labels = {
        "hf": "`hf`",
        "reuse_alpha0": "`steered_hf` alpha 0 (reuse)",
        "reuse_all": f"`steered_hf` alpha {r['alpha']:g}, positions=all (reuse)",
        "reuse_response": f"`steered_hf` alpha {r['alpha']:g}, positions=response (reuse)",
    }
    for k, label in labels.items():
        tok = r["tokens"][k]
        total = tok.get("total", tok.get("plain"))
        detail = f"{total:,}" + (f" ({tok['prefix']:,} prefix + {tok['tail']:,} tail)" if "prefix" in tok else "")
        paired = r.get("paired_speedups_vs_hf") or {k: [h / t for h, t in zip(r["times_s"]["hf"], r["times_s"][k])]}
        lines.append(
            f"| {label} | {r['median_s'][k]:.1f} | {', '.join(f'{t:.1f}' for t in r['times_s'][k])} | "
            f"{detail} | {r['speedup_vs_hf'][k]:.2f}x | {', '.join(f'{x:.2f}' for x in paired[k])} | "
            f"{hf_tok / total:.2f}x |"
        )
    if "sweep" in r:
        s = r["sweep"]
        tok = s["tokens"]
        lines.append(
            f"| `steer sweep` {s['configs']} configs (alphas {', '.join(f'{a:g}' for a in s['alphas'])}; "
            f"positions=response) vs {s['configs']} x `hf` ({s['hf_runs_equivalent_s']:.0f} s, "
            f"{s['hf_runs_tokens']:,} tokens) | {s['seconds']:.1f} | 1 run | {tok['total']:,} "
            f"({tok['prefix']:,} prefix + {tok['tail']:,} tail) | {s['speedup']:.2f}x | - | "
            f"{s['hf_runs_tokens'] / tok['total']:.2f}x |"
        )
    for k, info in r.get("prefix_reuse", {}).items():
        lines.append(f"\n`{k}` config.prefix_reuse: `{json.dumps(info)}`")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
