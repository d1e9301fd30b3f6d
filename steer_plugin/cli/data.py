"""`steer data`: the GoEmotions selection counts (and texts)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from steer_plugin.cli.args import add_data_args


def add_commands(sub: Any) -> None:
    p = sub.add_parser("data", help="GoEmotions selection counts (and texts)")
    add_data_args(p)
    p.add_argument("--out", default=None, help="write the selected texts as JSONL (text, class)")
    p.set_defaults(func=cmd_data)


def _selection(args: argparse.Namespace):
    from steer_plugin.data.goemotions import load_goemotions
    from steer_plugin.data.selection import select_texts

    examples = load_goemotions(args.split, args.data)
    return select_texts(
        examples,
        args.emotion,
        args.baseline,
        args.selection,
        args.max_per_class,
        args.seed,
        args.dedupe,
        split=args.split,
        source="local" if args.data else "hub",
    )


def cmd_data(args: argparse.Namespace) -> int:
    from steer_plugin.data.selection import check_sampling
    from steer_plugin.io.terminal import printable

    check_sampling(args.max_per_class, args.seed)  # before the data loads (from the hub: a download)
    if args.out:
        from steer_plugin.data.goemotions import goemotions_files
        from steer_plugin.io.outputs import check_output_file

        check_output_file(args.out, inputs=goemotions_files(args.data))
    if args.emotion == "all":
        from steer_plugin.data.goemotions import load_goemotions
        from steer_plugin.data.selection import select_all

        texts, members = select_all(
            load_goemotions(args.split, args.data), args.selection, args.max_per_class, args.seed, args.dedupe
        )
        counts: dict[str, int] = {}
        for m in members:
            for c in m:
                counts[c] = counts.get(c, 0) + 1
        rows = [{"text": t, "classes": list(m)} for t, m in zip(texts, members)]
        print(f"split {args.split} ({args.selection}): {len(texts)} texts")
    else:
        sel = _selection(args)
        counts = sel.counts()
        rows = [{"text": t, "class": c} for c, ts in sel.classes.items() for t in ts]
        print(f"split {args.split} ({args.selection}):")
    width = max(len(c) for c in counts)
    for c, n in counts.items():
        print(f"  {printable(c):<{width}}  {n:>6}")  # class names come from the data folder's emotions.txt
    if args.out:
        from steer_plugin.io.atomic import write_text_atomic

        write_text_atomic(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(f"wrote {len(rows)} texts to {args.out}")
    return 0
