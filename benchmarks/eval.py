"""Benchmark 3 (and 5, with ``--model scale``): steered evaluation overhead.

The same evaluation with four harness models, alternating, medians of ``--repeats``:

* ``hf``: lm-eval's HFLM (no steering);
* ``steered``: lm-eval's built-in ``steered`` model (forward hooks), our vector exported with
  ``steer export --format lm-eval-steered``;
* ``steered_hf hooks`` / ``steered_hf nnsight``: our model with each backend.

All steer every block (``positions=all``, the only mode lm-eval's ``steered`` has) with the same
vector and alpha. Workloads (``--workload``):

* ``harness`` (default): ``lm_eval.evaluator.evaluate`` on tasks built once: ``truthfulqa_local_mc2``
  (loglikelihood, ``--ll-limit`` docs, local TruthfulQA from ``$STEER_TRUTHFULQA_DIR`` or the shared
  data folder) and ``steer_emotion_anger`` (generation, ``--gen-limit`` prompts, ``--gen-tokens``
  new tokens, scored by the offline ``nade`` classifier);
* ``requests`` (for the scale model): the same LM calls the harness makes (``loglikelihood`` /
  ``generate_until``) on short requests: TruthfulQA questions as ``Q: ...\\nA:`` + each mc2 choice
  (no 6-shot preamble), and prompts of the emotion task.

Every LM gets its own copy of the model (nnsight instruments the modules it wraps), except with
``--share-model`` (the default for ``--model scale``). ``--profile`` runs cProfile over one extra
run of one variant and writes what dominates into the profile section.

    python -m benchmarks.eval
    python -m benchmarks.eval --model scale --workload requests --batch-size 4 --ll-limit 8 \\
        --gen-limit 4 --gen-tokens 8 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common as bc

LL_TASK = "truthfulqa_local_mc2"
GEN_TASK = "steer_emotion_anger"
VARIANTS = ("hf", "steered", "steered_hf hooks", "steered_hf nnsight")
TARGETS = {
    ("steered_hf hooks", "ll"): 1.05,
    ("steered_hf hooks", "gen"): 1.05,
    ("steered_hf nnsight", "ll"): 1.15,
    ("steered_hf nnsight", "gen"): 1.3,
}


def truthfulqa_dir() -> Path:
    env = os.environ.get("STEER_TRUTHFULQA_DIR")
    shared = bc.shared_dir()
    folder = Path(env) if env else (shared / "data" / "truthfulqa" if shared else None)
    if not folder or not (folder / "truthfulqa_mc.validation.jsonl").exists():
        raise SystemExit("local TruthfulQA not found: set STEER_TRUTHFULQA_DIR (or STEER_SHARED)")
    os.environ["STEER_TRUTHFULQA_DIR"] = str(folder.resolve())
    return folder


def make_lms(model, tok, vec, alpha: float, batch_size: int, share: bool, workdir: Path) -> dict[str, Any]:
    from lm_eval.models.hf_steered import SteeredModel
    from lm_eval.models.huggingface import HFLM

    from steer_plugin.harness.model import SteeredHFLM
    from steer_plugin.vectors.interop import export_lm_eval_steered

    vec_path = workdir / "vector.safetensors"
    vec.save(vec_path)
    pt_path = workdir / "vector.pt"
    export_lm_eval_steered(vec, pt_path, block_path="model.layers", alpha=alpha)
    extra = {}
    # keep scoring like-for-like with hf: prefix reuse off unless asked for
    if "prefix_reuse" in inspect.signature(SteeredHFLM.__init__).parameters:
        extra["prefix_reuse"] = False
    copies = [model] * 4 if share else [model] + [copy.deepcopy(model) for _ in range(3)]
    common = dict(tokenizer=tok, batch_size=batch_size)
    return {
        "hf": HFLM(pretrained=copies[0], **common),
        "steered": SteeredModel(pretrained=copies[1], steer_path=str(pt_path), **common),
        "steered_hf hooks": SteeredHFLM(
            pretrained=copies[2], vector=str(vec_path), alpha=alpha, backend="hooks", **common, **extra
        ),
        "steered_hf nnsight": SteeredHFLM(
            pretrained=copies[3], vector=str(vec_path), alpha=alpha, backend="nnsight", **common, **extra
        ),
    }, extra


# --- workloads -------------------------------------------------------------------------------------


def harness_workloads(args) -> dict[str, Any]:
    """{'ll': run(lm) -> (metric, outputs), 'gen': ...} over tasks built once."""
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    from steer_plugin.harness.tasks import tasks_dir

    truthfulqa_dir()
    manager = TaskManager(
        include_path=str(tasks_dir()), include_defaults=False, metadata={"classifier": args.classifier}
    )
    ll_tasks = manager.load([LL_TASK])
    gen_tasks = manager.load([GEN_TASK])
    for task in gen_tasks["tasks"].values():
        task.set_config(key="generation_kwargs", value={"max_gen_toks": args.gen_tokens}, update=True)

    def run(lm, tasks, limit, task_name, metric):
        res = evaluate(lm=lm, task_dict=tasks, limit=limit, log_samples=True, bootstrap_iters=0, verbosity="ERROR")
        samples = res["samples"][task_name]
        outs = [s["resps"] for s in samples]
        return res["results"][task_name][metric], outs

    return {
        "ll": lambda lm: run(lm, ll_tasks, args.ll_limit, LL_TASK, "acc,none"),
        "gen": lambda lm: run(lm, gen_tasks, args.gen_limit, GEN_TASK, "target_prob,none"),
    }


def request_workloads(args) -> dict[str, Any]:
    from lm_eval.api.instance import Instance

    from steer_plugin.harness.tasks import tasks_dir

    ll_pairs: list[tuple[str, str]] = []
    with open(truthfulqa_dir() / "truthfulqa_mc.validation.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            ll_pairs += [(f"Q: {row['question']}\nA:", f" {c}") for c in row["mc2_targets"]["choices"]]
            if len(ll_pairs) >= args.ll_limit:
                break
    ll_pairs = ll_pairs[: args.ll_limit]
    prompts = []
    with open(tasks_dir() / "steer_emotion" / "neutral_prompts.jsonl", encoding="utf-8") as f:
        prompts = [json.loads(line)["prompt"] for line in f][: args.gen_limit]

    def ll(lm):
        reqs = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(ll_pairs)]
        out = lm.loglikelihood(reqs, disable_tqdm=True)
        return sum(x for x, _ in out), out

    def gen(lm):
        reqs = [
            Instance("generate_until", {}, (p, {"until": [], "max_gen_toks": args.gen_tokens, "do_sample": False}), i)
            for i, p in enumerate(prompts)
        ]
        out = lm.generate_until(reqs, disable_tqdm=True)
        return float("nan"), out

    return {"ll": ll, "gen": gen}


def _leaves(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [y for item in x for y in _leaves(item)]
    return [x]


def agreement(outs: dict[str, tuple[float, Any]]) -> tuple[dict[str, float], dict[str, bool], str]:
    """How closely steered_hf (both backends) reproduces lm-eval's ``steered`` on this workload:
    max |logprob difference| and whether everything else (greedy flags, generated texts) is equal."""
    ref = _leaves(outs["steered"][1])

    def split(xs: list[Any]) -> tuple[list[float], list[Any]]:
        num = [x for x in xs if isinstance(x, float)]
        return num, [x for x in xs if not isinstance(x, float)]

    ref_num, ref_other = split(ref)
    diffs, same, parts = {}, {}, []
    for name in ("steered_hf hooks", "steered_hf nnsight"):
        num, other = split(_leaves(outs[name][1]))
        diffs[name] = max((abs(a - b) for a, b in zip(num, ref_num)), default=0.0)
        same[name] = other == ref_other and len(num) == len(ref_num)
        parts.append(
            f"`{name}` "
            + (f"max abs logprob diff {diffs[name]:.1e}, " if num else "")
            + ("same greedy flags/texts" if same[name] else "OUTPUTS DIFFER")
        )

    def metric(n: str) -> str:
        return f"{outs[n][0]:.4g}"

    text = (
        f"vs lm-eval `steered`: {'; '.join(parts)} (metric: hf {metric('hf')}, steered {metric('steered')}, "
        f"steered_hf {metric('steered_hf hooks')} / {metric('steered_hf nnsight')})"
    )
    return diffs, same, text


# --- profile ---------------------------------------------------------------------------------------


def _bucket(filename: str, funcname: str) -> str:
    if filename == "~":  # built-ins: C functions and methods
        if "torch" in funcname or "Tensor" in funcname:
            return "torch kernels (C++ ops)"
        if "greenlet" in funcname or "switch" in funcname:
            return "nnsight (greenlet switches)"
        return "other built-ins"
    for key, label in (
        ("/nnsight/", "nnsight (Python)"),
        ("/transformers/", "transformers (Python)"),
        ("/lm_eval/", "lm-eval (Python)"),
        ("/torch/", "torch (Python)"),
        ("steer_plugin", "steer_plugin"),
        ("/nade/", "nade classifier"),
        ("/lightgbm/", "nade classifier"),
        ("/pyarrow/", "nade classifier"),
        ("/python3.", "Python stdlib"),
    ):
        if key in filename:
            return label
    return "other Python"


def profile_run(fn, lm, top: int = 15) -> tuple[list[list[str]], list[list[str]], float]:
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    fn(lm)
    prof.disable()
    st = pstats.Stats(prof)
    total = st.total_tt  # type: ignore[attr-defined]
    buckets: dict[str, float] = {}
    for (filename, _line, funcname), (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        b = _bucket(filename, funcname)
        buckets[b] = buckets.get(b, 0.0) + tt
    by_bucket = [[b, f"{s:.2f}", f"{100 * s / total:.0f}%"] for b, s in sorted(buckets.items(), key=lambda x: -x[1])]
    rows = []
    ordered = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]  # type: ignore[attr-defined]
    for (filename, line, funcname), (_cc, nc, tt, ct, _callers) in ordered:
        where = funcname if filename == "~" else f"{Path(filename).parent.name}/{Path(filename).name}:{line} {funcname}"
        rows.append([f"`{where}`", str(nc), f"{tt:.2f}", f"{ct:.2f}"])
    return by_bucket, rows, total


# --- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bench", choices=list(bc.MODEL_SPECS))
    p.add_argument("--workload", default="harness", choices=["harness", "requests"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ll-limit", type=int, default=1, help="harness: docs of truthfulqa_local_mc2; requests: requests")
    p.add_argument("--gen-limit", type=int, default=8, help="prompts of the generation task")
    p.add_argument("--gen-tokens", type=int, default=32, help="max_gen_toks of the generation task")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--vector-norm", type=float, default=0.5, help="L2 norm of each layer's row of the random vector")
    p.add_argument("--classifier", default="nade", help="classifier of the generation task (default: nade, offline)")
    p.add_argument("--workloads", default="ll,gen")
    p.add_argument("--share-model", action="store_true", default=None)
    p.add_argument("--profile", default=None, choices=list(VARIANTS), help="profile one extra run of this variant")
    p.add_argument("--profile-workload", default="gen", choices=["ll", "gen"])
    bc.add_common_args(p)
    args = p.parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    threads = bc.setup(args.threads)

    tok = bc.load_tokenizer(args.tokenizer)
    bc.say(f"building the {args.model} model ...")
    model = bc.build_model(args.model, len(tok))
    vec = bc.random_vector(model.config.num_hidden_layers, model.config.hidden_size, norm=args.vector_norm)
    share = args.share_model if args.share_model is not None else args.model == "scale"
    workloads = (harness_workloads if args.workload == "harness" else request_workloads)(args)
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        lms, extra = make_lms(model, tok, vec, args.alpha, args.batch_size, share, Path(tmp))
        timings = {}
        for w in chosen:
            bc.say(f"workload {w} ...")
            timings[w] = bc.alternate(
                {name: (lambda lm=lm, w=w: workloads[w](lm)) for name, lm in lms.items()},
                args.repeats,
                warmup=1,
                log=bc.say,
            )
        prof = None
        if args.profile:
            bc.say(f"profiling {args.profile} on {args.profile_workload} ...")
            prof = profile_run(workloads[args.profile_workload], lms[args.profile])

    info = bc.machine_info()
    scale = args.model == "scale"
    names = {
        "ll": f"loglikelihood ({LL_TASK}, limit {args.ll_limit})"
        if args.workload == "harness"
        else f"loglikelihood ({args.ll_limit} TruthfulQA `Q: ...\\nA:` + mc2 choice requests)",
        "gen": f"generation ({GEN_TASK}, limit {args.gen_limit}, max_gen_toks {args.gen_tokens}, nade)"
        if args.workload == "harness"
        else f"generation ({args.gen_limit} prompts, {args.gen_tokens} new tokens)",
    }
    rows, target_rows, checks = [], [], []
    agree: dict[str, Any] = {}
    for w in chosen:
        t = timings[w]
        base = t.median("hf")
        for name in VARIANTS:
            m = t.median(name)
            rows.append([names[w], f"`{name}`", f"{m:.2f} ({t.spread(name)})", f"{m / base:.3f}x"])
            if (name, w) in TARGETS:
                goal = TARGETS[(name, w)]
                target_rows.append(
                    [
                        f"`{name}` <= {goal}x `hf` ({'loglikelihood' if w == 'll' else 'generation'})",
                        f"{m / base:.3f}x",
                        bc.verdict(m / base <= goal),
                    ]
                )
        diffs, same, text = agreement({name: t.results[name] for name in VARIANTS})
        agree[w], agree[f"{w}_same"] = diffs, same
        checks.append(f"{w}: {text}")
    key = "scale-eval" if scale else "eval"
    title = (
        "## 5. Scale model: steered evaluation overhead (Llama-3.2-3B architecture)"
        if scale
        else "## 3. Steered evaluation overhead"
    )
    lines = [
        title,
        "",
        *bc.header_lines(info, bc.command_line("eval", raw_argv)),
        *[f"- load average ({w}) before: {timings[w].load_before}, after: {timings[w].load_after}" for w in chosen],
        f"- model: {bc.describe_model(model)}"
        + ("; one instance shared by all four LMs" if share else "; each LM on its own copy"),
        f"- tokenizer: {bc.tokenizer_source(args.tokenizer)}; batch size {args.batch_size}; "
        f"{args.repeats} repeats after 1 warm-up round; in-process "
        + (
            "`lm_eval.evaluator.evaluate` on tasks built once"
            if args.workload == "harness"
            else "`lm.loglikelihood` / `lm.generate_until` calls"
        ),
        f"- steering: random vector (row norm {args.vector_norm}) on all {model.config.num_hidden_layers} "
        f"blocks, alpha {args.alpha}, positions=all" + (f"; steered_hf extra args {extra}" if extra else ""),
        *[f"- {c}" for c in checks],
        "",
        *bc.md_table(["workload", "model", "seconds, median (min-max)", "vs hf"], rows),
        "",
        *bc.md_table(["target", "measured", "result"], target_rows),
    ]
    bc.print_and_write(args, key, "\n".join(lines))
    if prof:
        by_bucket, top_rows, total = prof
        plines = [
            "## 6. Profile of the slowest case",
            "",
            f"- command: `{bc.command_line('eval', raw_argv)}` (cProfile of one extra "
            f"`{args.profile}` run, workload {names[args.profile_workload]}; {total:.1f} s under the profiler)",
            "",
            "Own time by component:",
            "",
            *bc.md_table(["component", "seconds", "share"], by_bucket),
            "",
            "Top functions by own time:",
            "",
            *bc.md_table(["function", "calls", "own s", "cumulative s"], top_rows),
        ]
        bc.print_and_write(args, "profile", "\n".join(plines))
    bc.dump_json(args.json, {w: timings[w].seconds for w in chosen} | {"threads": threads, "agreement": agree})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
