"""Benchmark 4: a K-alpha sweep with ``steer sweep`` vs K separate ``lm_eval`` invocations.

Both sides are fresh subprocesses timed end to end (interpreter start, imports, task indexing,
model load, evaluation, writing results), alternating, medians of ``--repeats``:

* ``steer sweep --alphas a1,...,aK``: one model load, tasks built once, the plan swapped per alpha;
* K x ``lm_eval run --model steered_hf --model_args pretrained=...,vector=...,alpha=a_i`` with
  ``--include_path $(steer tasks-dir)``. If the stock CLI cannot find ``steered_hf`` in this
  environment (steer-plugin's autoload hook not installed), each invocation is
  ``python -c "import steer_plugin.harness.model; <lm_eval's CLI main>" run ...`` instead (the report
  says which).

The model is saved to a temporary folder first (``--model small`` by default: a random Llama with
the SmolLM2 tokenizer; ``--model bench`` for the bench model). Results of both sides are compared.

    python -m benchmarks.sweep
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common as bc
from benchmarks.eval import truthfulqa_dir

WRAPPER = (
    "import sys, steer_plugin.harness.model; from lm_eval.__main__ import cli_evaluate; "
    "sys.argv[0] = 'lm_eval'; cli_evaluate()"
)
PROBE = "from lm_eval.api.registry import get_model; get_model('steered_hf')"


def stock_cli_finds_steered_hf(env: dict[str, str]) -> bool:
    """Whether a plain ``lm_eval`` process (no import of ours) resolves ``--model steered_hf``."""
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # as an installed user would run it
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    return proc.returncode == 0


def run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return seconds


def metrics_from_sweep(out: Path, task: str, metric: str) -> dict[float, float]:
    got = {}
    for f in out.glob("*/results.json"):
        doc = json.loads(f.read_text())
        got[float(doc["config"]["sweep"]["alpha"])] = doc["results"][task][metric]
    return got


def metric_from_lm_eval(out: Path, task: str, metric: str) -> float:
    files = sorted(out.rglob("results_*.json"))
    if not files:
        raise SystemExit(f"no results_*.json under {out}")
    return json.loads(files[-1].read_text())["results"][task][metric]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="small", choices=list(bc.MODEL_SPECS))
    p.add_argument("--alphas", default="0,1,2,4,8", help="K alphas (0 = the unsteered baseline)")
    p.add_argument("--tasks", default="truthfulqa_local_mc2")
    p.add_argument("--metric", default="acc,none", help="metric compared between both sides")
    p.add_argument("--limit", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", default="nnsight", choices=["nnsight", "hooks"])
    p.add_argument("--classifier", default="nade")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", default=None, help="keep the model and outputs here (default: a temp folder)")
    bc.add_common_args(p)
    args = p.parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    bc.setup(args.threads)
    alphas = [a.strip() for a in args.alphas.split(",") if a.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]

    from steer_plugin.harness.tasks import tasks_dir

    truthfulqa_dir()  # sets STEER_TRUTHFULQA_DIR for the children
    env = bc.child_env(args.threads)
    env["STEER_CLASSIFIER"] = args.classifier
    stock = stock_cli_finds_steered_hf(env)
    lm_eval_prefix = [sys.executable, "-m", "lm_eval"] if stock else [sys.executable, "-c", WRAPPER]

    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp_default:
        work = Path(args.workdir or tmp_default)
        work.mkdir(parents=True, exist_ok=True)
        tok = bc.load_tokenizer(args.tokenizer)
        model = bc.build_model(args.model, len(tok))
        model_dir = bc.save_model_dir(model, tok, work / "model")
        describe = bc.describe_model(model)
        vec_path = work / "vector.safetensors"
        bc.random_vector(model.config.num_hidden_layers, model.config.hidden_size, norm=0.5).save(vec_path)
        del model

        def sweep_cmd(out: Path) -> list[str]:
            return [
                sys.executable,
                "-m",
                "steer_plugin",
                "sweep",
                "--model",
                model_dir,
                "--vector",
                str(vec_path),
                "--alphas",
                ",".join(alphas),
                "--tasks",
                ",".join(tasks),
                "--limit",
                str(args.limit),
                "--batch-size",
                str(args.batch_size),
                "--backend",
                args.backend,
                "--dtype",
                "float32",
                "--device",
                "cpu",
                "--classifier",
                args.classifier,
                "--no-side-effects",  # like the lm_eval runs: no KL / perplexity columns on neutral texts
                "--layers",  # and steered where steered_hf steers by default
                "all",
                "--positions",
                "all",
                "--controls",  # the separate runs evaluate the vector alone
                "0",
                "--out",
                str(out),
            ]

        def lm_eval_cmd(alpha: str, out: Path) -> list[str]:
            margs = f"pretrained={model_dir},vector={vec_path},alpha={alpha},backend={args.backend},dtype=float32"
            return [
                *lm_eval_prefix,
                "run",
                "--model",
                "steered_hf",
                "--model_args",
                margs,
                "--tasks",
                *tasks,
                "--include_path",
                str(tasks_dir()),
                "--limit",
                str(args.limit),
                "--batch_size",
                str(args.batch_size),
                "--device",
                "cpu",
                "--output_path",
                str(out),
            ]

        counter = iter(range(10**6))
        last: dict[str, Path] = {}

        def do_sweep() -> float:
            out = work / f"sweep_{next(counter)}"
            last["sweep"] = out
            return run(sweep_cmd(out), env)

        def do_separate() -> float:
            base = work / f"separate_{next(counter)}"
            last["separate"] = base
            return sum(run(lm_eval_cmd(a, base / f"a{a}"), env) for a in alphas)

        load_before = bc.loadavg()
        seconds: dict[str, list[float]] = {"steer sweep": [], "separate lm_eval": []}
        for r in range(args.repeats):  # no warm-up: every run is a cold process anyway
            order = [("steer sweep", do_sweep), ("separate lm_eval", do_separate)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                seconds[name].append(fn())
                bc.say(f"  round {r + 1}/{args.repeats} {name}: {seconds[name][-1]:.1f}s (load {bc.loadavg()[0]})")
        load_after = bc.loadavg()

        task0 = tasks[0]
        sweep_metrics = metrics_from_sweep(last["sweep"], task0, args.metric)
        separate_metrics = {
            float(a): metric_from_lm_eval(last["separate"] / f"a{a}", task0, args.metric) for a in alphas
        }
        same = sweep_metrics == separate_metrics

    import inspect
    import statistics

    from steer_plugin.harness.model import SteeredHFLM

    reuse = "prefix_reuse" in inspect.signature(SteeredHFLM.__init__).parameters
    med = {k: statistics.median(v) for k, v in seconds.items()}
    speedup = med["separate lm_eval"] / med["steer sweep"]
    info = bc.machine_info()
    how = (
        "the stock CLI (`python -m lm_eval run --model steered_hf ...`; steer-plugin's autoload hook "
        "registers the model)"
        if stock
        else '`python -c "import steer_plugin.harness.model; from lm_eval.__main__ import cli_evaluate; ..." run ...` '
        "(the stock CLI does not find `steered_hf` in this environment: the autoload hook is not installed)"
    )
    rows = [
        [f"`{k}`", f"{med[k]:.1f} ({min(v):.1f}-{max(v):.1f})", f"{med[k] / len(alphas):.1f}"]
        for k, v in seconds.items()
    ]
    lines = [
        "## 4. Sweeps",
        "",
        *bc.header_lines(info, bc.command_line("sweep", raw_argv), (load_before, load_after)),
        f"- model `{args.model}` (saved to a temp folder and loaded by each process): {describe}",
        f"- K = {len(alphas)} alphas ({', '.join(alphas)}; 0 = unsteered), tasks {', '.join(tasks)}, "
        f"--limit {args.limit}, batch size {args.batch_size}, backend {args.backend}, random vector "
        f"(row norm 0.5) on all blocks",
        f"- separate invocations: {how}, with `--include_path $(steer tasks-dir)`",
        f"- both sides are cold subprocesses timed end to end; {args.repeats} alternating rounds",
        "- `steer sweep --no-side-effects`: the separate runs compute no KL / perplexity columns either",
        *(
            [
                "- both sides run `steered_hf` with its defaults, so prefix reuse is on for both; "
                "`steer sweep` can also share the prefix cache across alphas"
            ]
            if reuse
            else []
        ),
        f"- `{args.metric}` per alpha identical on both sides: {same} ({sweep_metrics})",
        "",
        *bc.md_table(["approach", "seconds, median (min-max)", "seconds per alpha"], rows),
        "",
        *bc.md_table(
            ["target", "measured", "result"],
            [
                [
                    f"`steer sweep` >= 2.5x faster than {len(alphas)} separate `lm_eval` runs",
                    f"{speedup:.2f}x",
                    bc.verdict(speedup >= 2.5),
                ]
            ],
        ),
    ]
    bc.print_and_write(args, "sweep", "\n".join(lines))
    bc.dump_json(
        args.json, {"seconds": seconds, "stock_cli": stock, "sweep": sweep_metrics, "separate": separate_metrics}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
