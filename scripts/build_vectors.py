"""Build the full set of emotion vectors for one model in one recording pass.

    python scripts/build_vectors.py --model HuggingFaceTB/SmolLM2-135M-Instruct [--data path/to/goemotions]
        [--methods mean,top_k --top-k 20] [--max-per-class 2000] [--out vectors/] [--keep-stats stats.safetensors]

Records every text of the split once (`steer record --emotion all`: statistics per label and per Ekman group),
then writes vectors/<model-slug>/<emotion>-<method>[-k].safetensors for all 27 emotions and 6 Ekman groups.
`--stats FILE` rebuilds from statistics recorded before; `--model-id` names the model in the metadata when
`--model` is a local copy of a hub model (`--note` says how the copy differs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from steer_plugin.data.goemotions import valid_targets
from steer_plugin.model.loading import ModelOptions
from steer_plugin.vectors.build import build_vector
from steer_plugin.vectors.request import RecordRequest, record_request
from steer_plugin.vectors.stats import HiddenStateStats
from steer_plugin.vectors.vector import default_vector_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--model-id", default=None, help="model name for metadata and the folder (default: --model)")
    p.add_argument("--note", default=None, help="free text stored in every vector's metadata")
    p.add_argument("--data", default=None)
    p.add_argument("--split", default="train")
    p.add_argument("--methods", default="top_k", help="comma list of mean, top_k")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="vectors")
    p.add_argument("--stats", default=None, help="reuse this all-emotion stats file instead of recording")
    p.add_argument("--keep-stats", default=None, help="also write the all-emotion stats file here")
    args = p.parse_args()

    if args.stats:
        stats = HiddenStateStats.load(args.stats)
    else:
        stats = record_request(
            RecordRequest(
                model=ModelOptions(args.model, dtype=args.dtype, device=args.device),
                emotion="all",
                split=args.split,
                data_dir=args.data,
                max_per_class=args.max_per_class,
                batch_size=args.batch_size,
            )
        )
        if args.keep_stats:
            stats.save(args.keep_stats)
    model_id = args.model_id or args.model
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        top_k = args.top_k if method == "top_k" else None
        for emotion in valid_targets():
            if emotion == "neutral" or stats.classes.get(emotion) is None or stats.classes[emotion].count == 0:
                continue
            vec = build_vector(stats, emotion, "neutral", method=method, top_k=top_k)
            vec.metadata["model"] = model_id
            if args.note:
                vec.metadata["note"] = args.note
            path = Path(args.out) / default_vector_path(model_id, emotion, method, top_k).relative_to("vectors")
            vec.save(path)
            print(f"{path}  n={vec.metadata['counts']}  norm={float(vec.matrix.norm()):.3f}")


if __name__ == "__main__":
    main()
