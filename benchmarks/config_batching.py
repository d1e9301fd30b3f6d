"""Benchmark: a sweep's generation with config batching (all configurations in mixed batches) vs one
configuration at a time, side by side in one process.

Workload like ``steer_emotion_anger`` in ``steer run``: the first ``--prompts`` neutral prompts of the task,
greedy, 60 new tokens, stop at EOS, batch size 8, ``positions=response``, backend nnsight, run through
``SteeredHFLM.generate_until`` (what each configuration of ``steer sweep`` calls; the classifier that scores
the texts afterwards is the same work either way and is left out). Configurations, in sweep order: the
baseline, then for each alpha the vector and its random control (``steer run``'s default grid plus 1.5);
K = the first 2, 6, 12 of them.

* one at a time: ``lm.plan_ahead(configs, config_batching=False)``, then configure + generate per configuration
  (``steer sweep --no-config-batching``);
* batched: ``lm.plan_ahead(configs)`` (the default): the first configuration generates every batch for all K.

Identity: each configuration's generations of both variants are compared; for a generation that differs, the
logit gap at the first differing token (the configuration's own steered forward on the common prefix: the
two candidate tokens' logits) shows whether it is a near-tie.

With ``--side-effects N`` each configuration's side effects (KL and perplexity on N neutral texts) are measured
too, as ``steer sweep`` does after each configuration's evaluation: one at a time per configuration, batched all K
in one ``SideEffectProbe.measure_many`` at the first (section 7d).

    python -m benchmarks.config_batching   # real SmolLM2-135M-Instruct ($STEER_SMOLLM2)
    python -m benchmarks.config_batching --ks 6 --side-effects 100   # with side effects
    python -m benchmarks.config_batching --model 1b --ks 2,6 --max-gen-toks 20   # random 1.2B Llama
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common as bc

DEFAULT_ALPHAS = [0.2, 0.3, 0.4, 0.5, 1.0, 1.5]
SPEC_1B = dict(  # Llama-3.2-1B's shape
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    vocab_size=128256,
)


def neutral_prompts(n: int) -> list[str]:
    from steer_plugin.harness.tasks import tasks_dir

    path = tasks_dir() / "steer_emotion" / "neutral_prompts.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["prompt"] for r in rows[:n]]


def load_lm(args: argparse.Namespace) -> tuple[Any, str]:
    import torch

    from steer_plugin.harness.model import SteeredHFLM

    common = dict(batch_size=args.batch_size, device="cpu", backend=args.backend)
    if args.model == "1b":
        bc.MODEL_SPECS.setdefault("1b", SPEC_1B)
        tok = bc.load_tokenizer(args.tokenizer)
        model = bc.build_model("1b", len(tok))
        return SteeredHFLM(pretrained=model, tokenizer=tok, **common), bc.describe_model(model)
    folder = args.model or os.environ.get("STEER_SMOLLM2")
    if not folder:
        raise SystemExit("give --model FOLDER (a local SmolLM2-135M-Instruct) or set STEER_SMOLLM2")
    lm = SteeredHFLM(pretrained=folder, dtype="float32", **common)
    n = sum(p.numel() for p in lm.model.parameters())
    torch.manual_seed(0)
    return lm, f"SmolLM2-135M-Instruct (real weights, local folder), {n / 1e6:.1f}M params, float32"


def configurations(lm: Any, args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    from steer_plugin.vectors.controls import random_like
    from steer_plugin.vectors.vector import SteeringVector

    config = lm.model.config
    if args.vector:
        vector = SteeringVector.load(args.vector)
        what = f"vector {Path(args.vector).name}"
    else:
        vector = bc.random_vector(config.num_hidden_layers, config.hidden_size, seed=1, norm=args.vector_norm)
        what = f"a random vector (every layer's row of norm {args.vector_norm:g})"
    control = random_like(vector, 0)
    configs: list[dict[str, Any]] = [{"vector": None, "alpha": 0.0, "positions": args.positions}]
    for a in DEFAULT_ALPHAS:
        for v in (vector, control):
            configs.append({"vector": [v], "alpha": a, "positions": args.positions})
    return configs, what + " and its random control (seed 0)"


def requests(prompts: list[str], max_gen_toks: int) -> list[Any]:
    from lm_eval.api.instance import Instance

    kwargs = {"until": [], "max_gen_toks": max_gen_toks, "do_sample": False}
    return [Instance("generate_until", {}, (p, dict(kwargs)), i) for i, p in enumerate(prompts)]


class Recorder:
    """The token tensors (and attention masks) ``_model_generate`` hands to the harness, per call."""

    def __init__(self, lm: Any) -> None:
        self.calls: list[tuple[Any, Any, Any]] = []
        inner = lm._model_generate

        def recording(context, max_length, stop, **kwargs):
            tokens = inner(context, max_length, stop, **kwargs)
            self.calls.append((context.shape[1], kwargs.get("attention_mask"), tokens.clone()))
            return tokens

        lm._model_generate = recording


def side_effect_options(n_texts: int, folder: Path) -> Any:
    """What ``steer sweep`` measures side effects with: GoEmotions' neutral test texts from the shared folder, else
    generated texts (a file in ``folder``)."""
    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.study.plan import SweepOptions

    goemotions = bc.shared_dir() / "data" / "goemotions" if bc.shared_dir() else None
    if goemotions is not None and (goemotions / "test.tsv").exists():
        source = TextSource(str(goemotions))
    else:
        (folder / "neutral.txt").write_text("\n".join(bc.generated_texts(n_texts)) + "\n", encoding="utf-8")
        source = TextSource(str(folder / "neutral.txt"))
    return SweepOptions(tasks=[], out_dir=folder, side_effects=source, side_effect_texts=n_texts)


def side_texts(options: Any) -> str:
    """Which neutral texts, without the machine's paths."""
    where = Path(options.side_effects.path)
    return "GoEmotions test neutral texts, the shared data folder" if where.is_dir() else "generated texts"


def run_configs(
    lm: Any, rec: Recorder, configs: list[dict[str, Any]], reqs: list[Any], batching: bool, side: Any = None
) -> list:
    """Per configuration: (texts, recorded token tensors, side effects or None, seconds of side effects).

    ``side``: the sweep options of side effects, measured as ``steer sweep`` does after each configuration's
    generation (a fresh probe per run: the unsteered pass and prefix caches are part of the cost); batched, all
    configurations' at the first one."""
    from steer_plugin.harness.engine import HFEngine
    from steer_plugin.harness.steering_args import SteeringArgs

    steering = [SteeringArgs.parse(c["vector"], c["alpha"], "all", c["positions"]) for c in configs]
    lm.plan_ahead(steering, config_batching=batching)
    out = []
    probe, ahead = None, []
    try:
        for i, c in enumerate(configs):
            lm.configure(c["vector"], c["alpha"], "all", c["positions"])
            rec.calls = []
            texts = lm.generate_until(reqs, disable_tqdm=True)
            measured, t0 = None, time.perf_counter()
            if side is not None:
                # the sweep's probe (its texts, rows and unsteered pass); measured here on plans, not configurations
                texts = side.side_effects.load(side.side_effect_texts)
                probe = probe or HFEngine(lm).side_effect_meter(texts, side.config_batch_rows).probe
                if batching and i == 0:
                    resolved = [lm.resolve(x) for x in steering]
                    ahead = probe.measure_many([r.plan for r in resolved], [r.positions for r in resolved])
                measured = ahead[i] if batching else probe.measure(lm.plan, lm.positions)
            out.append((texts, list(rec.calls), measured, time.perf_counter() - t0))
    finally:
        lm.plan_ahead([])
        lm.configure(None, 0.0)
    return out


def first_difference_gap(lm: Any, config: dict[str, Any], width: int, mask: Any, alone: Any, mixed: Any) -> dict:
    """The configuration's logits at the first generated position where the two rows differ."""
    import torch

    diff = (alone[width:] != mixed[width:]).nonzero()
    t = width + int(diff[0])
    lm.configure(config["vector"], config["alpha"], "all", config["positions"])
    try:
        ids = alone[:t][None]
        att = torch.cat([mask.long(), torch.ones(t - width, dtype=torch.long)])[None]
        pos = (att.cumsum(-1) - 1).masked_fill(att == 0, 0)
        where = None
        if config["positions"] == "response":
            where = torch.zeros_like(att, dtype=torch.bool)
            where[:, width - 1 :] = True
        logits = lm._steered_forward(lm.plan, where, input_ids=ids, attention_mask=att, position_ids=pos).logits[0, -1]
    finally:
        lm.configure(None, 0.0)
    top2 = torch.topk(logits.float(), 2).values
    return {
        "new_token_index": t - width,
        "alone_token": int(alone[t]),
        "batched_token": int(mixed[t]),
        "logit_gap": float(logits[alone[t]] - logits[mixed[t]]),
        "top1_top2_gap": float(top2[0] - top2[1]),
    }


def compare(lm: Any, configs: list[dict[str, Any]], one: list, batched: list) -> tuple[int, int, list[dict]]:
    same = total = 0
    gaps = []
    for ci, ((texts_a, calls_a, *_), (texts_b, calls_b, *_)) in enumerate(zip(one, batched)):
        total += len(texts_a)
        same += sum(a == b for a, b in zip(texts_a, texts_b))
        for (width, mask, ta), (_, _, tb) in zip(calls_a, calls_b):
            for row in range(ta.shape[0]):
                n = min(ta.shape[1], tb.shape[1])
                if not bool((ta[row, :n] == tb[row, :n]).all()):
                    m = mask[row] if mask is not None else None
                    gap = first_difference_gap(lm, configs[ci], width, m, ta[row, :n], tb[row, :n])
                    gaps.append({"config": ci, "row": row, **gap})
    return same, total, gaps


def side_effect_gap(one: list, batched: list) -> float | None:
    """The largest difference of a text's KL or NLL per token between both variants (None: not measured)."""
    pairs = [(a, b) for (*_, a, _), (*_, b, _) in zip(one, batched) if a is not None]
    if not pairs:
        return None
    return max(
        abs(x - y) / n
        for a, b in pairs
        for sums_a, sums_b in ((a.kl_sums, b.kl_sums), (a.nll_sums, b.nll_sums))
        for x, y, n in zip(sums_a, sums_b, a.n_tokens)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="local model folder (default $STEER_SMOLLM2), or '1b'")
    p.add_argument("--prompts", type=int, default=8, help="neutral prompts (default 8: one batch)")
    p.add_argument("--ks", default="2,6,12", help="numbers of configurations (default 2,6,12)")
    p.add_argument("--max-gen-toks", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backend", default="nnsight", choices=["nnsight", "hooks"])
    p.add_argument("--positions", default="response", choices=["response", "all"])
    p.add_argument("--vector", default=None, help="steering vector file (default: a random vector)")
    p.add_argument("--vector-norm", type=float, default=8.0, help="row norm of the random vector (default 8)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--side-effects", type=int, default=0, metavar="N",
        help="also measure each configuration's side effects on N neutral texts, as steer sweep does (default 0: off)",
    )  # fmt: skip
    bc.add_common_args(p)
    args = p.parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    bc.setup(args.threads)
    import logging
    import tempfile

    logging.disable(logging.WARNING)
    ks = [int(k) for k in args.ks.split(",") if k.strip()]

    lm, described = load_lm(args)
    all_configs, what = configurations(lm, args)
    if max(ks) > len(all_configs):
        raise SystemExit(f"at most {len(all_configs)} configurations")
    prompts = neutral_prompts(args.prompts)
    reqs = requests(prompts, args.max_gen_toks)
    rec = Recorder(lm)
    scratch = tempfile.TemporaryDirectory()
    side = side_effect_options(args.side_effects, Path(scratch.name)) if args.side_effects else None
    warm_side = side_effect_options(2, Path(scratch.name)) if side else None
    run_configs(lm, rec, all_configs[:2], requests(prompts[:2], 2), True, warm_side)  # warm-up: imports, first calls

    load_before = bc.loadavg()
    rows, raw = [], {}
    for k in ks:
        configs = all_configs[:k]
        seconds: dict[str, list[float]] = {"one at a time": [], "batched": []}
        side_seconds: dict[str, list[float]] = {"one at a time": [], "batched": []}
        results: dict[str, list] = {}
        for r in range(args.repeats):
            order = [("one at a time", False), ("batched", True)]
            for name, batching in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                results[name] = run_configs(lm, rec, configs, reqs, batching, side)
                seconds[name].append(time.perf_counter() - t0)
                side_seconds[name].append(sum(x[3] for x in results[name]))
                bc.say(
                    f"  K={k} round {r + 1}/{args.repeats} {name}: {seconds[name][-1]:.1f}s "
                    f"(side effects {side_seconds[name][-1]:.1f}s, load {bc.loadavg()[0]})"
                )
        same, total, gaps = compare(lm, configs, results["one at a time"], results["batched"])
        side_gap = side_effect_gap(results["one at a time"], results["batched"])
        med = {n: statistics.median(s) for n, s in seconds.items()}
        side_med = {n: statistics.median(s) for n, s in side_seconds.items()}
        ratio = med["one at a time"] / med["batched"]
        worst = max((abs(g["logit_gap"]) for g in gaps), default=None)
        row = [k, f"{med['one at a time']:.1f}", f"{med['batched']:.1f}", f"**{ratio:.2f}x**"]
        if side is not None:
            row += [f"{side_med['one at a time']:.1f}", f"{side_med['batched']:.1f}"]
        row += [f"{same}/{total}", "-" if worst is None else f"{worst:.2g}"]
        if side is not None:
            row.append(f"{side_gap:.1g}")
        rows.append(row)
        raw[k] = {"seconds": seconds, "identical": [same, total], "differences": gaps, "ratio": ratio}
        if side is not None:
            raw[k].update(side_effect_seconds=side_seconds, side_effect_max_difference=side_gap)
    load_after = bc.loadavg()
    scratch.cleanup()

    info = bc.machine_info()
    ratio6 = raw[6]["ratio"] if 6 in raw else None
    if side is not None:
        title = "## 7d. Config batching with side effects: a sweep's generation and KL/perplexity on neutral texts"
    else:
        title = ("## 7b. " if args.model == "1b" else "## 7. ") + (
            "Config batching: a sweep's generation, all configurations in mixed batches"
        )
    lines = [
        title + (" (random 1.2B Llama)" if args.model == "1b" else ""),
        "",
        *bc.header_lines(info, bc.command_line("config_batching", raw_argv), (load_before, load_after)),
        f"- model: {described}",
        f"- workload like `steer_emotion_anger` in `steer run`: the first {len(prompts)} neutral prompts, greedy, "
        f"{args.max_gen_toks} new tokens (stop at EOS), batch size {args.batch_size}, positions={args.positions}, "
        f"backend {args.backend}, through `SteeredHFLM.generate_until` (the classifier that scores the texts "
        "afterwards is the same work either way and is left out)",
    ]
    if side is not None:
        lines.append(
            f"- side effects as `steer sweep` measures them after each configuration: KL and perplexity on "
            f"{args.side_effects} neutral texts ({side_texts(side)}), the unsteered pass once per run; "
            "one at a time: `SideEffectProbe.measure` per configuration; batched: one `measure_many` of all K "
            "(texts x configurations per forward, at most 64 rows, the unsteered prefix shared)"
        )
    lines += [
        f"- configurations in sweep order: the baseline, then per alpha ({', '.join(f'{a:g}' for a in DEFAULT_ALPHAS)}) "
        f"{what}; K = the first K",
        "- one at a time = `steer sweep --no-config-batching`; batched = the default (each batch of prompts "
        "generated once for all K configurations; with positions=response the unsteered prompt prefix is shared); "
        f"{args.repeats} round(s), alternating order",
        "- identical: generations (text as the harness returns it) equal between both variants; "
        "max logit gap: for generations that differ, |logit(token alone) - logit(token batched)| at the first "
        "differing token, the configuration's own steered forward on the common prefix",
    ]
    header = ["K", "one at a time (s)", "batched (s)", "speed-up"]
    if side is not None:
        lines.append("- side effects (s): of the times before them; max diff: the largest |difference| of a text's KL "
                     "or NLL per token between both variants")  # fmt: skip
        header += ["side effects, one at a time (s)", "side effects, batched (s)"]
    header += ["identical generations", "max logit gap"] + (["side effects max diff"] if side is not None else [])
    lines += ["", *bc.md_table(header, rows), ""]
    target = 2.4 if side is not None else 2.5
    if ratio6 is not None:
        lines += bc.md_table(
            ["target", "measured", "result"],
            [[f"K = 6 batched >= {target}x faster than one at a time", f"{ratio6:.2f}x", bc.verdict(ratio6 >= target)]],
        )
    key = "config-batching-side-effects" if side is not None else "config-batching"
    bc.print_and_write(args, key + ("-1b" if args.model == "1b" else ""), "\n".join(lines))
    bc.dump_json(args.json, raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
