"""Compare two folders of vectors for one model, file by file: per-layer cosine and top-k neurons in common.

    python scripts/compare_vectors.py OLD_DIR NEW_DIR [--layers middle] [--out comparison.md]

E.g. vectors built from a sample of texts against vectors built from all of them, or on two copies of a
model's weights. Rows: each file name present in both folders; cosines over the chosen layers as median (min).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from steer_plugin.io.atomic import write_text_atomic
from steer_plugin.model.layers import format_layers, parse_layers
from steer_plugin.vectors.similarity import agreement
from steer_plugin.vectors.vector import SteeringVector


def comparison(old: Path, new: Path, layer_spec: str) -> str:
    names = sorted(p.name for p in old.glob("*.safetensors") if (new / p.name).is_file())
    if not names:
        raise SystemExit(f"no vector file is in both {old} and {new}")
    rows, by_method = [], {}
    layers: list[int] = []
    n_layers = 0
    for name in names:
        a, b = SteeringVector.load(old / name), SteeringVector.load(new / name)
        n_layers = a.n_layers
        layers = parse_layers(layer_spec, n_layers)
        g = agreement(a, b, layers)
        shared = "" if g.shared_neurons is None else f"{g.shared_neurons:.2f}"
        counts = lambda v: ", ".join(f"{n} {k}" for k, n in (v.metadata.get("counts") or {}).items())  # noqa: E731
        rows.append(
            f"| {name.removesuffix('.safetensors')} | {counts(a)} | {counts(b)} | {g.median_cosine:.3f} "
            f"(min {g.min_cosine:.3f}) | {shared} |"
        )
        by_method.setdefault(str(a.metadata.get("method", "?")), []).append(g)
    summary = [
        f"- {method}: median cosine {statistics.median(g.median_cosine for g in gs):.3f} over {len(gs)} vectors "
        f"(lowest {min(g.median_cosine for g in gs):.3f})"
        + (
            f", neurons in common {statistics.median(g.shared_neurons for g in gs if g.shared_neurons is not None):.2f}"
            if any(g.shared_neurons is not None for g in gs)
            else ""
        )
        for method, gs in by_method.items()
    ]
    head = [
        f"Vectors of {old} vs {new}, layers {format_layers(layers, n_layers)}:",
        "",
        *summary,
        "",
        "| vector | texts (first) | texts (second) | cosine | top-k neurons in common |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--layers", default="middle", help="all, middle or e.g. 10-19 (default: middle)")
    p.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = p.parse_args()
    text = comparison(args.old, args.new, args.layers)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
