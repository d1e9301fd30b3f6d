"""From recorded statistics to a steering vector: mean difference, optionally top-k per layer."""

from __future__ import annotations

from typing import Any

import torch

from steer_plugin.errors import SteerError, check_choice
from steer_plugin.vectors.metadata import METHODS, Method, pool_of
from steer_plugin.vectors.stats import ClassStats, HiddenStateStats
from steer_plugin.vectors.vector import SteeringVector

RMS_SOURCE = "last-token block outputs of the target and baseline texts, pooled"
RMS_SOURCE_MEAN = "mean-pooled block outputs of the target and baseline texts, pooled"


def residual_rms(*classes: ClassStats) -> list[float]:
    """Per layer sqrt(E||h||^2) over the pooled texts of ``classes``, from count/mean/M2 alone:
    sum_c (n_c ||mean_c||^2 + trace(M2_c)) / sum_c n_c (E||h||^2 = ||mean||^2 + trace(cov), ddof 0)."""
    n = sum(c.count for c in classes)
    total = torch.stack([c.count * (c.mean**2).sum(1) + c.m2.sum(1) for c in classes]).sum(0)
    return [float(f"{x:.6g}") for x in (total / n).sqrt().tolist()]


def check_top_k(top_k: int | None, hidden: int | None = None) -> int:
    """The ``top_k`` of a top-k vector: at least 1, at most the hidden size (where it is known)."""
    if not top_k or top_k < 1:
        raise SteerError("method top_k needs --top-k K with K >= 1")
    if hidden is not None and top_k > hidden:
        raise SteerError(f"--top-k {top_k} is larger than the hidden size {hidden}")
    return top_k


def build_vector(
    stats: HiddenStateStats,
    target: str | None = None,
    baseline: str | None = None,
    *,
    method: Method = "mean",
    top_k: int | None = None,
    layers: list[int] | None = None,
    scale: float | None = None,
) -> SteeringVector:
    """The steering vector ``mean(target) - mean(baseline)`` per layer, from recorded statistics.

    Args:
        stats: the recorded statistics (``record_hidden_states``, or ``HiddenStateStats.load``).
        target: the emotion class; None: the one the statistics were recorded for.
        baseline: the class it points away from; None: the recorded baseline (else ``neutral``).
        method: ``mean`` (the whole difference) or ``top_k`` (its ``top_k`` largest ``|entries|`` per layer).
        top_k: neurons kept per layer by ``method="top_k"``.
        layers: keep only these layers (0-based; the others are zero); None: all.
        scale: multiply the difference by this (recorded in the metadata).

    Returns:
        The vector, ``[n_layers, hidden]``, with the statistics' provenance, the counts and the residual
        stream's RMS per layer in its metadata.
    """
    target = target or stats.metadata.get("target")
    baseline = baseline or stats.metadata.get("baseline") or "neutral"
    if not target or target == "all":
        raise SteerError(f"name the emotion to build; this stats file has: {', '.join(stats.classes)}")
    check_choice("method", method, METHODS)
    tgt, base = stats.get(target), stats.get(baseline)
    for name, cs in ((target, tgt), (baseline, base)):
        if cs.count == 0:
            raise SteerError(f"class {name!r} has no recorded texts")
    diff = (tgt.mean - base.mean).to(torch.float32)
    mask = None
    if method == "top_k":
        idx = diff.abs().topk(check_top_k(top_k, diff.shape[1]), dim=1).indices
        mask = torch.zeros_like(diff, dtype=torch.bool).scatter_(1, idx, True)
        diff = diff * mask
    if scale is not None:
        diff = diff * scale
    meta: dict[str, Any] = {
        k: stats.metadata[k]
        for k in (
            "model",
            "model_revision",
            "config_hash",
            "architecture",
            "split",
            "selection",
            "template",
            "dtype",
            "source",
            "max_per_class",
            "seed",
            "dedupe",
            "block_path",
            "generation",
        )
        if k in stats.metadata
    }
    pool = pool_of(stats.metadata)
    meta.update(
        emotion=target,
        baseline=baseline,
        method=method,
        top_k=top_k if method == "top_k" else None,
        counts={target: tgt.count, baseline: base.count},
        residual_rms=residual_rms(tgt, base),
        residual_rms_source=RMS_SOURCE if pool == "last" else RMS_SOURCE_MEAN,
        pool=pool,
    )
    if scale is not None:
        meta["scale"] = scale
    vec = SteeringVector(diff, meta, mask)
    if layers is not None:
        vec = vec.restrict(layers)
    return vec
