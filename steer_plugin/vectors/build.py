"""From a recording to a steering vector: mean difference (optionally top-k per layer), PCA or probe, centred."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from steer_plugin.data.goemotions import LABELS, resolve_target
from steer_plugin.errors import SteerError, check_choice
from steer_plugin.vectors.activations import Activations
from steer_plugin.vectors.directions import (
    first_principal_component,
    pair_indices,
    principal_components,
    probe_weights,
    project_out,
)
from steer_plugin.vectors.metadata import CENTRES, METHODS, Centre, Method, pool_of, text_source_of
from steer_plugin.vectors.recipe import PER_TEXT_METHODS, check_neutral_pcs, check_top_k, needs_activations
from steer_plugin.vectors.stats import ClassStats, HiddenStateStats
from steer_plugin.vectors.vector import SteeringVector

# the 27 emotions whose class means ``centre="emotions"`` averages (GoEmotions' labels without neutral)
EMOTIONS = tuple(label for label in LABELS if label != "neutral")

RMS_SOURCE = "last-token block outputs of the target and baseline texts, pooled"
RMS_SOURCE_MEAN = "mean-pooled block outputs of the target and baseline texts, pooled"


def residual_rms(*classes: ClassStats) -> list[float]:
    """Per layer sqrt(E||h||^2) over the pooled texts of ``classes``, from count/mean/M2 alone:
    sum_c (n_c ||mean_c||^2 + trace(M2_c)) / sum_c n_c (E||h||^2 = ||mean||^2 + trace(cov), ddof 0)."""
    n = sum(c.count for c in classes)
    total = torch.stack([c.count * (c.mean**2).sum(1) + c.m2.sum(1) for c in classes]).sum(0)
    return [float(f"{x:.6g}") for x in (total / n).sqrt().tolist()]


def build_vector(
    stats: HiddenStateStats,
    target: str | None = None,
    baseline: str | None = None,
    *,
    method: Method = "mean",
    top_k: int | None = None,
    layers: list[int] | None = None,
    scale: float | None = None,
    centre: Centre = "none",
    neutral_pcs: int = 0,
    activations: Activations | None = None,
    seed: int = 0,
) -> SteeringVector:
    """The steering vector of ``target`` per layer, from a recording.

    The steps: the reference point (``centre``), the direction (``method``), the neutral components projected
    out (``neutral_pcs``), then the top-k mask (``method="top_k"``), ``layers`` and ``scale``.

    Args:
        stats: the recorded statistics (``record_hidden_states``, or ``HiddenStateStats.load``).
        target: the emotion class; None: the one the statistics were recorded for.
        baseline: the class it points away from; None: the recorded baseline (else ``neutral``).
        method: ``mean`` (the whole difference), ``top_k`` (its ``top_k`` largest ``|entries|`` per layer),
            ``pca`` (the uncentred first principal component of target-minus-baseline differences of texts
            paired by ``pair_indices``, or of target states minus the centre) or ``probe`` (the weights of a
            logistic regression of target texts against baseline texts, or against the other emotions' texts
            with ``centre="emotions"``; see ``probe_weights``). ``pca`` and ``probe`` point toward the target
            (a positive dot product with the mean difference) and have its norm at every layer, so alphas and
            KL calibrations compare across methods.
        top_k: neurons kept per layer by ``method="top_k"``.
        layers: keep only these layers (0-based; the others are zero); None: all.
        scale: multiply the difference by this (recorded in the metadata).
        centre: ``none`` (compare with the baseline class) or ``emotions`` (with the unweighted mean of the
            27 emotions' class means: the statistics must hold all of them, e.g. recorded with ``all``).
        neutral_pcs: project the top K principal components of the baseline class's states (centred, per
            layer) out of the direction (0: none; 3 is a usual choice).
        activations: the recording's per-text states; needed by ``pca``, ``probe`` and ``neutral_pcs``.
        seed: the seed of the ``pca`` pairing.

    Returns:
        The vector, ``[n_layers, hidden]``, with the statistics' provenance, the recipe, the counts and the
        residual stream's RMS per layer in its metadata.
    """
    target = target or stats.metadata.get("target")
    baseline = baseline or stats.metadata.get("baseline") or "neutral"
    if not target or target == "all":
        raise SteerError(f"name the emotion to build; this stats file has: {', '.join(stats.classes)}")
    check_choice("method", method, METHODS)
    check_choice("centre", centre, CENTRES)
    tgt, base = stats.get(target), stats.get(baseline)
    for name, cs in ((target, tgt), (baseline, base)):
        if cs.count == 0:
            raise SteerError(f"class {name!r} has no recorded texts")
    check_neutral_pcs(neutral_pcs, base.count, stats.shape[1])
    if needs_activations(method, neutral_pcs) and activations is None:
        why = f"method {method}" if method in PER_TEXT_METHODS else f"--neutral-pcs {neutral_pcs}"
        raise SteerError(f"{why} needs the per-text states of the recording (--activations DIR with --stats)")
    others = _centre_classes(stats, target) if centre == "emotions" else {}
    reference = (
        torch.stack([stats.get(e).mean for e in EMOTIONS]).mean(0) if centre == "emotions" else base.mean
    )  # float64 [L, H]
    diff = tgt.mean - reference
    rows = range(diff.shape[0]) if layers is None else sorted(set(layers))
    if method in PER_TEXT_METHODS or neutral_pcs:
        assert activations is not None
        per_text = _PerText(activations, target, baseline, list(others), reference, seed)
        for layer in rows:
            row = diff[layer].numpy()
            if method in PER_TEXT_METHODS:
                row = per_text.direction(method, layer, row)
            if neutral_pcs:
                row = project_out(row, principal_components(activations.layer(baseline, layer), neutral_pcs))
            diff[layer] = torch.from_numpy(row)
    diff = diff.to(torch.float32)
    mask = None
    if method == "top_k":
        idx = diff.abs().topk(check_top_k(top_k, diff.shape[1]), dim=1).indices
        mask = torch.zeros_like(diff, dtype=torch.bool).scatter_(1, idx, True)
        diff = diff * mask
    if scale is not None:
        diff = diff * scale
    meta: dict[str, Any] = {k: stats.metadata[k] for k in _PROVENANCE if k in stats.metadata}
    pool = pool_of(stats.metadata)
    meta.update(
        emotion=target,
        baseline=baseline,
        method=method,
        top_k=top_k if method == "top_k" else None,
        centre=centre,
        neutral_pcs=neutral_pcs,
        text_source=text_source_of(stats.metadata),
        counts={target: tgt.count, baseline: base.count, **{e: stats.get(e).count for e in others}},
        residual_rms=residual_rms(tgt, base),
        residual_rms_source=RMS_SOURCE if pool == "last" else RMS_SOURCE_MEAN,
        pool=pool,
    )
    if method == "pca" and centre == "none":
        meta["pair_seed"] = seed
    if scale is not None:
        meta["scale"] = scale
    vec = SteeringVector(diff, meta, mask)
    if layers is not None:
        vec = vec.restrict(layers)
    return vec


_PROVENANCE = (
    "model", "model_revision", "config_hash", "architecture", "split", "selection", "template", "dtype",
    "source", "max_per_class", "seed", "dedupe", "block_path", "generation",
)  # fmt: skip


def _centre_classes(stats: HiddenStateStats, target: str) -> dict[str, int]:
    """The 27 emotions with their counts; a one-line error naming the ones the statistics lack."""
    missing = [e for e in EMOTIONS if e not in stats.classes or stats.classes[e].count == 0]
    if missing:
        raise SteerError(
            f"--centre emotions needs all 27 emotions recorded (record with --emotion all, or build with --centre "
            f"emotions, which records them); missing: {', '.join(missing)}"
        )
    return {e: stats.classes[e].count for e in EMOTIONS}


class _PerText:
    """The pca/probe direction of one layer from the per-text states, toward the target, at the mean
    difference's norm."""

    def __init__(
        self, acts: Activations, target: str, baseline: str, emotions: list[str], reference: torch.Tensor, seed: int
    ) -> None:
        self.acts, self.target, self.baseline, self.reference = acts, target, baseline, reference
        self.negatives = [e for e in emotions if e not in _members(target)]  # centre emotions: the other ones
        self.seed = seed

    def direction(self, method: Method, layer: int, mean_diff: np.ndarray) -> np.ndarray:
        states = self.acts.layer(self.target, layer)
        if method == "pca":
            if self.negatives:  # against the centre: every target text minus that point
                diffs = states - self.reference[layer].numpy()
            else:
                t, b = pair_indices(len(states), self.acts.count(self.baseline), self.seed)
                diffs = states[t] - self.acts.layer(self.baseline, layer)[b]
            u = first_principal_component(diffs)
        else:
            negatives = [self.acts.layer(c, layer) for c in (self.negatives or [self.baseline])]
            u = probe_weights(states, negatives)
        if float(u @ mean_diff) < 0:
            u = -u
        norm = float(np.linalg.norm(u))
        return u * (float(np.linalg.norm(mean_diff)) / norm) if norm > 0 else u


def _members(target: str) -> set[str]:
    """The labels a class is made of (an Ekman group's members); a class of other data: itself."""
    try:
        return set(resolve_target(target))
    except SteerError:
        return {target}
