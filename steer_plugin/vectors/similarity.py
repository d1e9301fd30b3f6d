"""How alike two vectors of one model are, layer by layer: recorded from other texts, another copy of the
weights, or another method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from steer_plugin.errors import SteerError

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.vectors.vector import SteeringVector


@dataclass(frozen=True)
class Agreement:
    layers: list[int]
    cosines: list[float]  # per layer (NaN where either vector is zero there)
    shared_neurons: float | None  # of the first vector's non-zero neurons, the share the second has too (sparse only)

    @property
    def median_cosine(self) -> float:
        import statistics

        return statistics.median(self._defined()) if self._defined() else float("nan")

    @property
    def min_cosine(self) -> float:
        return min(self._defined(), default=float("nan"))

    def _defined(self) -> list[float]:
        return [c for c in self.cosines if c == c]


def agreement(a: SteeringVector, b: SteeringVector, layers: list[int]) -> Agreement:
    """Per-layer cosine of ``a`` and ``b`` over ``layers``; for sparse (top-k) vectors also the neurons in common."""
    import torch

    if a.matrix.shape != b.matrix.shape:
        raise SteerError(f"cannot compare a {list(a.matrix.shape)} vector with a {list(b.matrix.shape)} one")
    if not layers:
        raise SteerError("give at least one layer to compare")
    x, y = a.matrix.double(), b.matrix.double()
    cos = [float(torch.nn.functional.cosine_similarity(x[l], y[l], dim=0, eps=0)) for l in layers]
    shared = None
    if a.mask is not None or b.mask is not None:
        sa, sb = x[layers] != 0, y[layers] != 0
        total = int(sa.sum())
        shared = int((sa & sb).sum()) / total if total else None
    return Agreement(list(layers), cos, shared)
