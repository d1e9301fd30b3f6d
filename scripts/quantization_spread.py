"""How far can vectors built on a quantized copy of a model be from the ones its original weights give?

    python scripts/quantization_spread.py --model DIR --vectors vectors/<model-slug> --data path/to/goemotions
        [--emotions anger,joy,sadness] [--copies 2] [--max-per-class 300] [--out spread.md]

The original weights of a model that only exists here as a dequantized GGUF are unknown, but they are one of
the weight sets that round to the same file: every weight of a Q4_1 / Q8_0 block lies within half a step of
its dequantized value (the block's min/max, which fix the step, stay where they are). This script draws such
weight sets ("copies": each weight uniform within its step) and, per copy, measures

* how far the copy's next-token distributions are from the dequantized model's on the neutral texts
  (mean per-token KL, the unit of the calibration budgets);
* the cosine, per layer, between vectors recorded on the copy and on the dequantized model from the same
  texts (mean and top-k; for top-k also the share of selected neurons in common), beside the cosine
  between two seeded samples of texts on the dequantized model (how much the choice of texts alone moves
  a vector of this many texts);
* the KL that the shipped vectors reach on the copy at their stored calibrated alphas (the held-out texts
  of each calibration), beside the budget and the held-out KL on the dequantized model.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from steer_plugin.data.goemotions import load_goemotions
from steer_plugin.data.neutral_texts import TextSource
from steer_plugin.data.selection import select_texts
from steer_plugin.io.atomic import write_text_atomic
from steer_plugin.model.hooks import Steerer, make_plan
from steer_plugin.model.layers import format_layers, parse_layers
from steer_plugin.model.loading import LoadedModel, ModelOptions
from steer_plugin.steering.calibrate import DEFAULT_N_CALIBRATION, DEFAULT_N_HELDOUT, scored_texts, split_texts
from steer_plugin.steering.calibration_file import find_stored
from steer_plugin.steering.calibration_key import CalibrationKey
from steer_plugin.steering.calibration_result import Calibration
from steer_plugin.steering.side_effects import SideEffectProbe
from steer_plugin.vectors.build import build_vector
from steer_plugin.vectors.request import RecordRequest, record_request
from steer_plugin.vectors.similarity import agreement
from steer_plugin.vectors.vector import SteeringVector, file_sha256

BLOCK = 32  # weights per Q4_1 / Q8_0 block (ggml's QK4_1 and QK8_0)


# --------------------------------------------------------------------------- the quantization grid


@dataclass
class Grid:
    """Where each weight of a dequantized tensor may have come from: ``[low, high]`` per weight."""

    kind: str  # "q4_1" or "q8_0"
    low: torch.Tensor
    high: torch.Tensor
    fixed: torch.Tensor  # the block's extreme weights, which fix its step: they stay


def _on_grid(q: torch.Tensor, tol: float = 1e-3) -> bool:
    return bool(((q - q.round()).abs() < tol).all())


def quantization_grid(weight: torch.Tensor) -> Grid | None:
    """The Q4_1 or Q8_0 grid a dequantized 2-D weight lies on (blocks of 32 along a row), or None."""
    if weight.ndim != 2 or weight.shape[1] % BLOCK:
        return None
    blocks = weight.detach().float().reshape(-1, BLOCK)
    lo = blocks.min(1, keepdim=True).values
    hi = blocks.max(1, keepdim=True).values
    live = (hi > lo)[:, 0]
    step = torch.where(hi > lo, (hi - lo) / 15, torch.ones_like(hi))
    extremes = torch.zeros_like(blocks, dtype=torch.bool)
    if _on_grid(((blocks - lo) / step)[live]):  # Q4_1: x = min + d*q, q in 0..15, d = (max - min) / 15
        extremes.scatter_(1, blocks.argmin(1, keepdim=True), True)
        extremes.scatter_(1, blocks.argmax(1, keepdim=True), True)
        kind, bound_lo, bound_hi = "q4_1", lo, hi
    else:  # Q8_0: x = d*q, q in -127..127, d = max|x| / 127
        amax = blocks.abs().max(1, keepdim=True).values
        step = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
        if not _on_grid(blocks / step):
            return None
        extremes.scatter_(1, blocks.abs().argmax(1, keepdim=True), True)
        kind, bound_lo, bound_hi = "q8_0", -amax, amax
    low = torch.maximum(blocks - step / 2, bound_lo)
    high = torch.minimum(blocks + step / 2, bound_hi)
    shape = weight.shape
    return Grid(kind, low.reshape(shape), high.reshape(shape), extremes.reshape(shape))


def draw_copy(weight: torch.Tensor, grid: Grid, generator: torch.Generator) -> torch.Tensor:
    """A weight tensor that rounds to the same dequantized values: uniform within each weight's step."""
    u = torch.rand(weight.shape, generator=generator)
    drawn = grid.low + (grid.high - grid.low) * u
    return torch.where(grid.fixed, weight.detach().float(), drawn).to(weight.dtype)


def quantized_parameters(model: torch.nn.Module) -> dict[str, Grid]:
    """Every parameter on a Q4_1 / Q8_0 grid (tied weights once)."""
    grids: dict[str, Grid] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        grid = quantization_grid(p)
        if grid is not None:
            grids[name] = grid
    return grids


# --------------------------------------------------------------------------- measurements


def next_token_kl(reference: torch.nn.Module, other: torch.nn.Module, tokenizer, texts: list[str]) -> float:
    """Mean per-token KL(reference || other) over the texts' next-token distributions (all positions)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :128]
            p = torch.log_softmax(reference(ids).logits[0].double(), -1)
            q = torch.log_softmax(other(ids).logits[0].double(), -1)
            total += float((p.exp() * (p - q)).sum())
            n += ids.shape[1]
    return total / n


def vectors_of(stats, emotions: list[str], top_k: int) -> dict[tuple[str, str], SteeringVector]:
    out = {}
    for e in emotions:
        out[(e, "mean")] = build_vector(stats, e, "neutral", method="mean")
        out[(e, "top_k")] = build_vector(stats, e, "neutral", method="top_k", top_k=top_k)
    return out


def texts_in_common(examples: list, emotion: str, n: int) -> dict[str, int]:
    """How many texts the seed-0 and seed-1 samples of ``n`` per class share, per class."""
    a, b = (select_texts(examples, emotion, max_per_class=n, seed=s).classes for s in (0, 1))
    return {name: len(set(a[name]) & set(b[name])) for name in a}


def shipped_calibration(
    loaded: LoadedModel, vector_path: Path, layers: str, positions: str, source: TextSource
) -> tuple[Calibration, list[str]] | None:
    """The vector's stored calibration for this model, layers, positions and the default texts of ``source``
    (what ``steer run`` would reuse), with its held-out texts."""
    texts = scored_texts(loaded.tokenizer, split_texts(source, DEFAULT_N_CALIBRATION, DEFAULT_N_HELDOUT))
    key = CalibrationKey.for_model(loaded.model, loaded.name, file_sha256(vector_path), layers, positions, *texts)
    found = find_stored(vector_path, key, [])
    return None if found is None else (found, texts[1])


# --------------------------------------------------------------------------- the report


def _cells(a: dict, b: dict, emotion: str, layers: list[int]) -> str:
    """mean: cosine | top-k: cosine | top-k: shared neurons, of ``a``'s and ``b``'s vectors of ``emotion``."""
    mean = agreement(a[(emotion, "mean")], b[(emotion, "mean")], layers)
    top_k = agreement(a[(emotion, "top_k")], b[(emotion, "top_k")], layers)
    return (
        f"{mean.median_cosine:.4f} (min {mean.min_cosine:.4f}) | {top_k.median_cosine:.4f} "
        f"(min {top_k.min_cosine:.4f}) | {top_k.shared_neurons:.3f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the dequantized model (local folder or hub id)")
    p.add_argument("--vectors", required=True, help="folder of the shipped vectors and their calibrations")
    p.add_argument("--data", required=True, help="GoEmotions folder (its train split is recorded)")
    p.add_argument(
        "--fluency-texts", default=None, help="the neutral texts the vectors were calibrated on (default: --data)"
    )
    p.add_argument("--emotions", default="anger,joy,sadness")
    p.add_argument("--copies", type=int, default=2)
    p.add_argument("--max-per-class", type=int, default=300)
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--layers", default="middle", help="layers the vectors are compared on and steer (default)")
    p.add_argument("--positions", default="response")
    p.add_argument("--kl-texts", type=int, default=64, help="neutral texts for the copy-vs-model KL")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = p.parse_args()
    emotions = [e.strip() for e in args.emotions.split(",") if e.strip()]

    loaded = ModelOptions(args.model).load()
    model, tok = loaded.model, loaded.tokenizer
    steerer = Steerer(model, "hooks")
    n_layers = len(steerer.blocks)
    layers = parse_layers(args.layers, n_layers)
    layer_spec = format_layers(layers, n_layers)
    grids = quantized_parameters(model)
    if not grids:
        raise SystemExit(
            f"{args.model}: no weight lies on a Q4_1 / Q8_0 grid; this script is for dequantized GGUF models"
        )
    params = dict(model.named_parameters())
    original = {name: params[name].detach().clone() for name in grids}
    kinds = {k: sum(1 for g in grids.values() if g.kind == k) for k in ("q4_1", "q8_0")}
    n_weights = sum(params[n].numel() for n in grids)
    n_all = sum(p.numel() for p in model.parameters())
    lines = [
        f"# Quantization spread: {args.model}",
        "",
        f"{len(grids)} weight tensors on a quantization grid ({kinds['q4_1']} Q4_1, {kinds['q8_0']} Q8_0; "
        f"{n_weights / n_all:.1%} of the {n_all:,} parameters); copies drawn within the steps: {args.copies}.",
        f"Vectors from {args.max_per_class} train texts per class; cosines over layers {layer_spec} as median (min).",
        "",
    ]

    def record(seed: int):
        req = RecordRequest(
            model=ModelOptions(args.model),
            emotion=emotions[0],
            targets=tuple(emotions),
            data_dir=args.data,
            max_per_class=args.max_per_class,
            seed=seed,
            batch_size=args.batch_size,
        )
        return vectors_of(record_request(req, LoadedModel(model, tok, args.model)), emotions, args.top_k)

    base = record(0)
    resampled = record(1)
    source = TextSource(args.fluency_texts or args.data)
    kl_texts = source.load(args.kl_texts)
    reference = copy.deepcopy(model)  # the dequantized model, for the copy-vs-model KL
    shipped = {}
    for e in emotions:
        path = Path(args.vectors) / f"{e}-top_k-{args.top_k}.safetensors"
        found = shipped_calibration(loaded, path, layer_spec, args.positions, source)
        if found is None:
            print(f"{path}: no stored calibration for this model at layers {layer_spec}, {args.positions}; skipped")
            continue
        shipped[e] = (SteeringVector.load(path), *found)

    sample_rows = []
    examples = load_goemotions("train", args.data)
    for e in emotions:
        common = texts_in_common(examples, e, args.max_per_class)
        shared = ", ".join(f"{v} {name}" for name, v in common.items())
        sample_rows.append(
            f"| {e} | texts: seed 0 vs seed 1 ({shared} in common) | {_cells(base, resampled, e, layers)} |"
        )
    copy_rows, kl_rows, model_kl = [], [], []
    for c in range(1, args.copies + 1):
        gen = torch.Generator().manual_seed(c)
        with torch.no_grad():
            for name, grid in grids.items():
                params[name].copy_(draw_copy(original[name], grid, gen))
        model_kl.append(next_token_kl(reference, model, tok, kl_texts))
        vecs = record(0)
        for e in emotions:
            copy_rows.append(f"| {e} | copy {c} vs dequantized | {_cells(base, vecs, e, layers)} |")
            if e in shipped:
                vector, cal, held = shipped[e]
                probe = SideEffectProbe(model, tok, held, steerer=steerer)
                for row in cal.rows:
                    plan = make_plan([vector], [row.alpha], model, steerer.block_path, layers)
                    kl = probe.measure(plan, args.positions).kl
                    kl_rows.append(
                        f"| {e} | {row.kl_budget:g} | {row.alpha:.4g} | {row.kl_heldout:.4f} | {c} | {kl:.4f} | "
                        f"{kl / row.kl_heldout - 1:+.1%} |"
                    )
    with torch.no_grad():
        for name in grids:
            params[name].copy_(original[name])

    lines += [
        f"Next-token KL(dequantized || copy) on {len(kl_texts)} neutral texts, all positions: "
        + ", ".join(f"copy {i + 1} {v:.4f}" for i, v in enumerate(model_kl)),
        "",
        "| emotion | comparison | mean: cosine | top-k: cosine | top-k: shared neurons |",
        "|---|---|---|---|---|",
        *sample_rows,
        *copy_rows,
        "",
        f"Shipped top-k vectors at their calibrated alphas (layers {layer_spec}, positions {args.positions}; "
        "held-out texts):",
        "",
        "| emotion | KL budget | alpha | KL, dequantized | copy | KL, copy | copy vs dequantized |",
        "|---|---|---|---|---|---|---|",
        *kl_rows,
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        write_text_atomic(args.out, report)


if __name__ == "__main__":
    main()
