"""Benchmark 2: peak memory (RSS) of recording 1k, 4k and 16k texts.

One fresh subprocess per (approach, size) reports its ``ru_maxrss`` after building the model and
loading the texts, and again after recording:

* ``steer record``: ``record_hidden_states`` (streaming float64 statistics: O(classes x layers x hidden));
* ``reference``: unsorted batches, every last-token hidden state kept (float32), class means at the end
  (``benchmarks.record.reference_approach``).

Texts: the first N GoEmotions train rows, each in the classes of its labels (28 classes, like
``steer record --emotion all --selection any``). To keep 16k texts within minutes on 2 cores the
default model is ``memory``: the bench model's activation shape (30 blocks x 576, vocab 49152) with
one attention head and a 64-wide MLP, so every recorded text weighs exactly what it weighs on the
bench model. The reference evaluates the LM head at the last position only (``logits_to_keep=1``):
that lowers its transient peak, not its growth.

Only texts of at most ``--max-tokens`` (48) tokens are used: the peak of either approach is set by
its widest batch, and the first 4k GoEmotions rows hold one 649-token text (the first 1k: at most
50 tokens). Without the cap that single batch (+~200 MiB of transient activations in both
approaches) would be measured as "growth with N".

    python -m benchmarks.memory   # sizes 1000,4000,16000, 2 children at a time
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from benchmarks import common as bc
from benchmarks.record import reference_approach


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux >= 4.0), so the model build's transient is not counted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> int:
    bc.setup(args.threads)
    from steer_plugin.vectors.record import record_hidden_states

    tok = bc.load_tokenizer(args.tokenizer)
    texts = bc.short_items(tok, args.n, args.max_tokens, args.source)
    items = texts.items
    model = bc.build_model(args.model, len(tok))
    import gc

    gc.collect()
    process_peak = _maxrss_mb()
    reset = _reset_peak()
    start = _status_mb("VmRSS")
    t0 = time.perf_counter()
    if args.approach == "steer":
        record_hidden_states(model, tok, items, batch_size=args.batch_size, progress=False)
    else:
        reference_approach(
            model, tok, [it.text for it in items], [it.classes for it in items], args.batch_size, logits_to_keep=1
        )
    seconds = time.perf_counter() - t0
    peak = _maxrss_mb()
    print(
        json.dumps(
            {
                "approach": args.approach,
                "n": args.n,
                "source": texts.source,
                "rss_start_mb": round(start, 1),
                "peak_mb": round(peak, 1),
                "process_peak_mb": round(max(process_peak, peak), 1),
                "peak_reset": reset,
                "seconds": round(seconds, 2),
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="memory", choices=list(bc.MODEL_SPECS))
    p.add_argument("--sizes", default="1000,4000,16000", help="comma-separated numbers of texts")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--source", default="auto", choices=["auto", "goemotions", "generated"])
    p.add_argument("--approaches", default="steer,reference")
    p.add_argument(
        "--max-tokens",
        type=int,
        default=48,
        help="only texts of at most this many tokens (default 48; 0 = all), see the docstring",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=2,
        help="children at once (default 2: they are Python-bound with 1 thread each; peak RSS is per process)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--approach", default="steer", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    bc.add_common_args(p)
    p.set_defaults(threads=1)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    bc.setup(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    approaches = [a.strip() for a in args.approaches.split(",") if a.strip()]
    load_before = bc.loadavg()
    jobs = [(a, n) for n in sizes for a in approaches]

    def run_child(job: tuple[str, int]) -> dict:
        a, n = job
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.memory",
            "--child",
            "--approach",
            a,
            "--n",
            str(n),
            "--model",
            args.model,
            "--batch-size",
            str(args.batch_size),
            "--source",
            args.source,
            "--threads",
            str(args.threads),
            "--max-tokens",
            str(args.max_tokens),
        ] + (["--tokenizer", args.tokenizer] if args.tokenizer else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=bc.child_env(args.threads))
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-5000:])
            raise SystemExit(f"child {a} n={n} failed with exit code {proc.returncode}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        bc.say(f"  {result}")
        return result

    # peak RSS is per process, so children may overlap (--parallel); their seconds then mean less
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        results: dict[tuple[str, int], dict] = dict(zip(jobs, pool.map(run_child, jobs)))
    load_after = bc.loadavg()

    tok = bc.load_tokenizer(args.tokenizer)
    cfg = bc.model_config(args.model, len(tok))
    per_text_kb = (cfg.num_hidden_layers + 1) * cfg.hidden_size * 4 / 1024
    source = results[(approaches[0], sizes[-1])]["source"]
    rows = []
    for n in sizes:
        row = [str(n)]
        for a in approaches:
            r = results[(a, n)]
            row += [
                f"{r['rss_start_mb']:.0f}",
                f"**{r['peak_mb']:.0f}**",
                f"{r['process_peak_mb']:.0f}",
                f"{r['seconds']:.1f}",
            ]
        rows.append(row)
    header = ["texts"]
    for a in approaches:
        label = "steer record" if a == "steer" else a
        header += [
            f"{label}: RSS at start MiB",
            f"{label}: peak RSS while recording MiB",
            f"{label}: process peak MiB",
            f"{label}: seconds",
        ]
    growth = {a: results[(a, sizes[-1])]["peak_mb"] / results[(a, sizes[0])]["peak_mb"] - 1 for a in approaches}
    reset_ok = all(r["peak_reset"] for r in results.values())
    info = bc.machine_info()
    lines = [
        "## 2. Recording memory",
        "",
        *bc.header_lines(info, bc.command_line("memory", raw_argv), (load_before, load_after)),
        f"- model `{args.model}`: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} head(s) of {cfg.head_dim}, intermediate {cfg.intermediate_size}, vocab "
        f"{cfg.vocab_size}, float32, random init"
        + (
            " (the bench model's activation shape, smaller attention/MLP so 16k texts take minutes, not an hour)"
            if args.model == "memory"
            else ""
        ),
        f"- texts: {source} (for N = {sizes[-1]}; cycled past the end), classes = their labels; batch size "
        f"{args.batch_size}; one fresh process per cell"
        + (f", {args.parallel} at a time" if args.parallel > 1 else ""),
        "- RSS at start: `VmRSS` once model and texts are loaded; peak while recording: `ru_maxrss` after "
        + (
            "the peak counter was reset at that point (`/proc/self/clear_refs`), so the random-weight model "
            "build's transient does not hide the recording's own peak"
            if reset_ok
            else "recording (the peak counter could not be reset here: it includes the model build)"
        )
        + "; process peak: `ru_maxrss` over the whole process",
        f"- one kept activation row is {per_text_kb:.0f} KiB (float32, {cfg.num_hidden_layers + 1} x "
        f"{cfg.hidden_size}); the reference evaluates the LM head at the last position only",
        "",
        *bc.md_table(header, rows),
        "",
        *bc.md_table(
            ["target", "measured", "result"],
            [
                [
                    f"`steer record` peak RSS while recording grows <= 10% from {sizes[0]} to {sizes[-1]} texts",
                    f"{growth.get('steer', float('nan')) * 100:+.1f}%",
                    bc.verdict(growth.get("steer", 1) <= 0.10),
                ],
                [
                    "reference approach grows linearly (for comparison)",
                    f"{growth.get('reference', float('nan')) * 100:+.1f}%",
                    "shown",
                ],
            ],
        ),
    ]
    bc.print_and_write(args, "memory", "\n".join(lines))
    bc.dump_json(args.json, {f"{a}:{n}": r for (a, n), r in results.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
