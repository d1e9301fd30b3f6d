"""Build the full set of emotion vectors for one model in one recording pass.

    python scripts/build_vectors.py --model HuggingFaceTB/SmolLM2-135M-Instruct [--data path/to/goemotions]
        [--methods mean,top_k --top-k 20] [--centre none|emotions] [--neutral-pcs K] [--max-per-class 2000]
        [--out vectors/] [--keep-stats stats.safetensors] [--activations DIR]

Records every text of the split once (`steer record --emotion all`: statistics per label and per Ekman group),
then writes vectors/<model-slug>/<emotion>-<recipe>.safetensors for all 27 emotions and 6 Ekman groups, the
recipe named as `steer build` names it (`top_k-20`, `mean-emotions-npc3`, ...). `--centre emotions` measures
each emotion from the mean of the 27 emotions' means instead of from neutral; `--neutral-pcs K` projects the
top K principal components of the neutral texts' states out of every vector; `pca`/`probe` and
`--neutral-pcs` need the per-text states, kept in `--activations DIR` (texts x layers x hidden x 4 bytes:
2.7 GB for SmolLM2's 39k texts) or a temporary folder. `--stats FILE` rebuilds from statistics recorded
before (with `--activations DIR` of the same recording where per-text states are needed); `--model-id`
names the model in the metadata when `--model` is a local copy of a hub model (`--note` says how the copy
differs).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path

from steer_plugin.data.goemotions import valid_targets
from steer_plugin.errors import SteerError
from steer_plugin.model.loading import ModelOptions
from steer_plugin.vectors.activations import Activations
from steer_plugin.vectors.build import build_vector
from steer_plugin.vectors.recipe import Recipe
from steer_plugin.vectors.request import Recording, RecordRequest, recorded
from steer_plugin.vectors.stats import HiddenStateStats
from steer_plugin.vectors.vector import default_vector_path


@contextlib.contextmanager
def recording(args: argparse.Namespace, per_text: bool) -> Iterator[Recording]:
    """The statistics (recorded now, or ``--stats``) and, where ``per_text``, the per-text states."""
    if args.stats:
        stats = HiddenStateStats.load(args.stats)
        if per_text and not args.activations:
            raise SteerError("--stats with pca/probe or --neutral-pcs needs --activations DIR of that recording")
        yield Recording(stats, Activations(args.activations, stats) if per_text else None)
        return
    req = RecordRequest(
        model=ModelOptions(args.model, dtype=args.dtype, device=args.device),
        emotion="all",
        split=args.split,
        data_dir=args.data,
        max_per_class=args.max_per_class,
        batch_size=args.batch_size,
        save_activations=args.activations if per_text else None,
        activation_dtype="float32",
    )
    with recorded(req, per_text=per_text) as rec:
        if args.keep_stats:
            rec.stats.save(args.keep_stats)
        yield rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--model-id", default=None, help="model name for metadata and the folder (default: --model)")
    p.add_argument("--note", default=None, help="free text stored in every vector's metadata")
    p.add_argument("--data", default=None)
    p.add_argument("--split", default="train")
    p.add_argument("--methods", default="top_k", help="comma list of mean, top_k, pca, probe")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--centre", default="none", choices=["none", "emotions"])
    p.add_argument("--neutral-pcs", type=int, default=0)
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="vectors")
    p.add_argument("--stats", default=None, help="reuse this all-emotion stats file instead of recording")
    p.add_argument("--keep-stats", default=None, help="also write the all-emotion stats file here")
    p.add_argument("--activations", default=None, help="keep (or, with --stats, read) the per-text states here")
    args = p.parse_args()

    model_id = args.model_id or args.model
    try:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        top_k = {m: args.top_k if m == "top_k" else None for m in methods}
        recipes = [Recipe(m, top_k[m], args.centre, args.neutral_pcs).check() for m in methods]  # type: ignore[arg-type]
        per_text = any(r.per_text for r in recipes)
        with recording(args, per_text) as rec:
            for recipe in recipes:
                for emotion in valid_targets():
                    cs = rec.stats.classes.get(emotion)
                    if emotion == "neutral" or cs is None or cs.count == 0:
                        continue
                    vec = build_vector(
                        rec.stats, emotion, "neutral", **recipe.build_kwargs(), activations=rec.activations
                    )
                    vec.metadata["model"] = model_id
                    if args.note:
                        vec.metadata["note"] = args.note
                    rel = default_vector_path(model_id, emotion, recipe)
                    path = Path(args.out) / rel.relative_to("vectors")
                    vec.save(path)
                    print(f"{path}  n={vec.metadata['counts'][emotion]}  norm={float(vec.matrix.norm()):.3f}")
    except SteerError as e:
        raise SystemExit(f"build_vectors: {e}") from None


if __name__ == "__main__":
    main()
