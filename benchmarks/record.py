"""Benchmark 1 (and 5, with ``--model scale``): recording throughput.

Three ways to get per-class means of the last-token state at every block, on the same texts, batch
size and dtype, alternating, medians of ``--repeats``:

* ``steer record``: ``record_hidden_states`` (nnsight trace stopped after the last block,
  length-sorted batches, streaming float64 statistics); includes tokenization;
* ``plain loop``: transformers ``model(..., output_hidden_states=True)`` over the same batches
  (same length-sorted order, order computed outside the timing), last-token states summed per class;
* ``reference``: the reference recorder's approach: batches in input order (unsorted), every
  last-token hidden state kept in memory, class means at the end.

Each approach gets its own copy of the model (nnsight instruments the modules it wraps), except with
``--share-model`` (the default for ``--model scale``, which would not fit twice in memory).

    python -m benchmarks.record   # benchmark 1, bench model
    python -m benchmarks.record --model scale --texts 8 --batch-size 4 --max-tokens 24 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import sys
from typing import Any

from benchmarks import common as bc


def plain_loop(model, tokenizer, texts, classes, order, batch_size):
    """Class means [L+1, H] from ``output_hidden_states`` (embeddings row 0, final norm on the last row).

    ``model`` may be the ``LlamaForCausalLM`` or its base ``model.model`` (no LM head).
    """
    import torch

    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in idx], padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True)
        last = enc["attention_mask"].sum(1) - 1  # right padding
        rows = torch.arange(len(idx))
        states = torch.stack([h[rows, last] for h in out.hidden_states], dim=1).to(torch.float64)
        for row, i in enumerate(idx):
            for c in classes[i]:
                sums[c] = sums[c] + states[row] if c in sums else states[row].clone()
                counts[c] = counts.get(c, 0) + 1
    return {c: sums[c] / counts[c] for c in sums}


def reference_approach(model, tokenizer, texts, classes, batch_size, logits_to_keep: int | None = None):
    """Unsorted batches, all activations kept (numpy float32), means per class at the end.

    ``logits_to_keep=1`` evaluates the LM head at the last position only (the memory benchmark).
    """
    import numpy as np
    import torch

    kept = []
    extra = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True, **extra)
        last = enc["attention_mask"].sum(1) - 1
        rows = torch.arange(enc["input_ids"].shape[0])
        kept.append(torch.stack([h[rows, last] for h in out.hidden_states], dim=1).numpy())
    acts = np.concatenate(kept)  # [N, L+1, H]
    names = sorted({c for cs in classes for c in cs})
    return {c: acts[[c in cs for cs in classes]].astype(np.float64).mean(0) for c in names}


def padded_tokens(lengths: list[int], order: list[int], batch_size: int) -> int:
    total = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        total += max(batch) * len(batch)
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bench", choices=list(bc.MODEL_SPECS))
    p.add_argument("--texts", type=int, default=80, help="number of texts (default 80)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--source", default="auto", choices=["auto", "goemotions", "generated"])
    p.add_argument("--max-tokens", type=int, default=None, help="only texts of at most this many tokens")
    p.add_argument(
        "--share-model",
        action="store_true",
        default=None,
        help="one model instance for all approaches (default for --model scale)",
    )
    bc.add_common_args(p)
    args = p.parse_args(argv)
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    threads = bc.setup(args.threads)

    import torch

    from steer_plugin.data.prompts import PromptTemplate, encode
    from steer_plugin.vectors.record import record_hidden_states

    tok = bc.load_tokenizer(args.tokenizer)
    pool = bc.short_items(tok, args.texts, args.max_tokens, args.source)
    items = pool.items
    texts = [it.text for it in items]
    classes = [it.classes for it in items]
    lengths = [len(x) for x in encode(tok, texts, PromptTemplate("raw"))]
    sorted_order = sorted(range(len(items)), key=lambda i: (-lengths[i], i))  # record.py's order

    bc.say(f"building the {args.model} model ...")
    model = bc.build_model(args.model, len(tok))
    share = args.share_model if args.share_model is not None else args.model == "scale"
    plain_model = model if share else copy.deepcopy(model)
    ref_model = model if share else copy.deepcopy(model)

    variants = {
        "steer record": lambda: record_hidden_states(model, tok, items, batch_size=args.batch_size, progress=False),
        "plain loop": lambda: plain_loop(plain_model, tok, texts, classes, sorted_order, args.batch_size),
        "plain loop, no LM head": lambda: plain_loop(
            plain_model.model, tok, texts, classes, sorted_order, args.batch_size
        ),
        "reference": lambda: reference_approach(ref_model, tok, texts, classes, args.batch_size),
    }
    t = bc.alternate(variants, args.repeats, warmup=1, log=bc.say)

    # the three must agree (block outputs 0..L-2; hidden_states[-1] has the final norm applied)
    stats = t.results["steer record"]
    agreement = {}
    for name in ("plain loop", "plain loop, no LM head", "reference"):
        means = t.results[name]
        agreement[name] = max(
            float((torch.as_tensor(means[c])[1:-1] - stats.classes[c].mean[:-1]).abs().max()) for c in stats.classes
        )
    diffs = [f"{name} {d:.1e}" for name, d in agreement.items()]

    n_tok = sum(lengths)
    pad_sorted = padded_tokens(lengths, sorted_order, args.batch_size)
    pad_input = padded_tokens(lengths, list(range(len(items))), args.batch_size)
    med = {k: t.median(k) for k in variants}
    rows = []
    for k in variants:
        padded = pad_input if k == "reference" else pad_sorted
        rows.append(
            [
                f"`{k}`",
                f"{med[k]:.2f} ({t.spread(k)})",
                f"{len(items) / med[k]:.1f}",
                f"{n_tok / med[k]:.0f}",
                f"{padded}",
                f"{med['plain loop'] / med[k]:.2f}x",
                f"{med['reference'] / med[k]:.2f}x",
            ]
        )
    vs_plain = med["plain loop"] / med["steer record"]
    vs_base = med["plain loop, no LM head"] / med["steer record"]
    vs_ref = med["reference"] / med["steer record"]
    # with few texts sorting saves little padding; then the comparison is within run-to-run noise
    sort_note = (
        f" (sorting saves only {100 * (1 - pad_sorted / pad_input):.0f}% of the padded tokens here: "
        "within this run's min-max spread)"
        if pad_input < 1.5 * pad_sorted
        else ""
    )
    info = bc.machine_info()
    scale = args.model == "scale"
    key = "scale-record" if scale else "record"
    title = (
        "## 5. Scale model: recording throughput (Llama-3.2-3B architecture)" if scale else "## 1. Recording throughput"
    )
    lines = [
        title,
        "",
        *bc.header_lines(info, bc.command_line("record", raw_argv), (t.load_before, t.load_after)),
        f"- model: {bc.describe_model(model)}"
        + ("; one instance shared by all approaches" if share else "; each approach on its own copy"),
        f"- tokenizer: {bc.tokenizer_source(args.tokenizer)}",
        f"- texts: {len(items)} ({pool.source}), {n_tok} tokens, batch size {args.batch_size}, {args.repeats} repeats after 1 warm-up round",
        f"- agreement of the class means with `steer record` (max abs diff, blocks 0..L-2): {', '.join(diffs)}",
        "",
        *bc.md_table(
            [
                "approach",
                "seconds, median (min-max)",
                "texts/s",
                "tokens/s",
                "padded tokens",
                "speed vs plain loop",
                "speed vs reference",
            ],
            rows,
        ),
        "",
        *bc.md_table(
            ["target", "measured", "result"],
            [
                ["`steer record` >= 0.9x the plain loop's throughput", f"{vs_plain:.2f}x", bc.verdict(vs_plain >= 0.9)],
                [
                    "(stricter) >= 0.9x the plain loop without the LM head",
                    f"{vs_base:.2f}x",
                    bc.verdict(vs_base >= 0.9),
                ],
                [
                    "length-sorted batching faster than the reference approach"
                    + ("" if "GoEmotions" in pool.source else " (target is stated for GoEmotions)"),
                    f"{vs_ref:.2f}x",
                    bc.verdict(vs_ref > 1.0) + sort_note,
                ],
            ],
        ),
        "",
        "`plain loop` runs the whole `LlamaForCausalLM` (LM head included, as `output_hidden_states=True` "
        "users do) over the same length-sorted batches; `steer record` stops after the last block, so part "
        "of its lead is the skipped LM head. `plain loop, no LM head` runs only the base model "
        "(`model.model`): the difference to it is the cost of nnsight, tokenization and the float64 "
        "statistics. `reference` pads each input-order batch to its longest text (the `padded tokens` "
        "column) and keeps every activation.",
    ]
    bc.print_and_write(args, key, "\n".join(lines))
    bc.dump_json(
        args.json,
        {
            "seconds": t.seconds,
            "agreement": agreement,
            "tokens": n_tok,
            "texts": len(items),
            "threads": threads,
            "load": [t.load_before, t.load_after],
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
