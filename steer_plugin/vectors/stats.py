"""Streaming per-class hidden-state statistics (float64, O(layers x hidden) memory).

Each class keeps count, mean and M2 (sum of squared deviations) and is updated batch by batch with
Chan et al.'s parallel formula, so shards from several processes merge exactly like one pass.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from steer_plugin.data.goemotions import class_name_problem
from steer_plugin.errors import SteerError
from steer_plugin.io.safetensors import read_safetensors, write_safetensors
from steer_plugin.io.schema import Rule, fields_problem

STATS_FORMAT = "steer-plugin/stats"
STATS_VERSION = 1


@dataclass
class ClassStats:
    """count, mean [L, H] and M2 [L, H] of one class, all float64."""

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def empty(cls, n_layers: int, hidden: int) -> ClassStats:
        z = torch.zeros(n_layers, hidden, dtype=torch.float64)
        return cls(0, z, z.clone())

    def update(self, batch: torch.Tensor) -> None:
        """Add a batch of activations [N, L, H] (any float dtype)."""
        if batch.shape[0] == 0:
            return
        x = batch.detach().to("cpu", torch.float64)
        n = x.shape[0]
        bmean = x.mean(0)
        bm2 = ((x - bmean) ** 2).sum(0)
        self.merge(ClassStats(n, bmean, bm2))

    def merge(self, other: ClassStats) -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean.clone(), other.m2.clone()
            return
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        self.count = n

    @property
    def var(self) -> torch.Tensor:
        """Unbiased variance (ddof=1); NaN for fewer than two samples."""
        if self.count < 2:
            return torch.full_like(self.m2, float("nan"))
        return self.m2 / (self.count - 1)


@dataclass
class HiddenStateStats:
    """Statistics of several classes (e.g. ``anger`` and ``neutral``) recorded from one model.

    Args:
        classes: per class name, the count, mean and sum of squared deviations (``[n_layers, hidden]``).
        metadata: the recording's model, data selection and template, saved with it.
    """

    classes: dict[str, ClassStats]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        first = next(iter(self.classes.values()))
        return tuple(first.mean.shape)  # type: ignore[return-value]

    def counts(self) -> dict[str, int]:
        return {name: c.count for name, c in self.classes.items()}

    def get(self, name: str) -> ClassStats:
        if name not in self.classes:
            raise SteerError(f"class {name!r} is not in this stats file; it has: {', '.join(self.classes)}")
        return self.classes[name]

    def merge(self, other: HiddenStateStats) -> None:
        for name, cs in other.classes.items():
            if name in self.classes:
                self.classes[name].merge(cs)
            else:
                self.classes[name] = ClassStats(cs.count, cs.mean.clone(), cs.m2.clone())

    def save(self, path: str | os.PathLike) -> None:
        """Write the statistics file atomically.

        Args:
            path: the ``.safetensors`` file: ``<class>/mean``, ``<class>/m2``, ``<class>/count`` per class,
                the metadata as JSON in the header.
        """
        tensors: dict[str, torch.Tensor] = {}
        for name, cs in self.classes.items():
            tensors[f"{name}/mean"] = cs.mean.contiguous()
            tensors[f"{name}/m2"] = cs.m2.contiguous()
            tensors[f"{name}/count"] = torch.tensor([cs.count], dtype=torch.int64)
        meta = {
            "format": STATS_FORMAT,
            "format_version": str(STATS_VERSION),
            "metadata": json.dumps(self.metadata, sort_keys=True),
        }
        write_safetensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HiddenStateStats:
        """Read and validate a stats file (every tensor, the class names, the metadata): a file that does
        not hold what ``save`` writes is a one-line error naming the field, never a vector of NaNs.

        Args:
            path: a file written by ``save`` (`steer record`).

        Returns:
            The statistics per class (float64) and the recording's metadata.
        """
        tensors, meta = read_safetensors(path, expected_format=STATS_FORMAT, what="stats file", version=STATS_VERSION)
        odd = [k for k, t in tensors.items() if not k.endswith("/count") and not t.is_floating_point()]
        if odd:  # means and M2 are float64 by construction; an int tensor is a wrong file, not a cast
            kind = str(tensors[odd[0]].dtype).removeprefix("torch.")
            raise SteerError(f"{path}: corrupt stats file (tensor {odd[0]!r} is {kind}, expected floats)")
        try:
            metadata = json.loads(meta.get("metadata", "{}"))
        except ValueError as e:
            raise SteerError(f"{path}: corrupt stats file (metadata: {e})") from None
        problem = _tensors_problem(tensors) or _metadata_problem(metadata)
        if problem:
            raise SteerError(f"{path}: corrupt stats file ({problem})")
        classes = {
            name: ClassStats(
                int(tensors[f"{name}/count"][0]), tensors[f"{name}/mean"].double(), tensors[f"{name}/m2"].double()
            )
            for name in sorted({k.rsplit("/", 1)[0] for k in tensors})
        }
        return cls(classes, metadata)


_PARTS = ("mean", "m2", "count")


def _tensors_problem(tensors: dict[str, torch.Tensor]) -> str | None:
    """Why the tensors are not ``<class>/mean``, ``/m2`` [L, H] and ``/count`` [1] of known classes."""
    names = sorted({k.rsplit("/", 1)[0] for k in tensors})
    if not names:
        return "no classes"
    shape: tuple[int, ...] | None = None
    for name in names:
        problem = class_name_problem(name)  # class names become file names (vectors/<model>/<class>-mean...)
        if problem:
            return f"class {problem}"
        for key in (k for k in tensors if k.rsplit("/", 1)[0] == name and k.rsplit("/", 1)[-1] not in _PARTS):
            return f"tensor {key!r}: not one of {name}/mean, {name}/m2, {name}/count"
        missing = [f"{name}/{part}" for part in _PARTS if f"{name}/{part}" not in tensors]
        if missing:
            return f"tensor {missing[0]!r} is missing"
        mean, m2, count = (tensors[f"{name}/{part}"] for part in _PARTS)
        shape = shape or tuple(mean.shape)
        for part, t in (("mean", mean), ("m2", m2)):
            if t.ndim != 2 or 0 in t.shape or tuple(t.shape) != shape:
                return f"tensor '{name}/{part}' has shape {tuple(t.shape)}, expected {shape} like the others"
            if not torch.isfinite(t).all():
                return f"tensor '{name}/{part}' has non-finite values"
        if (m2 < 0).any():  # a sum of squared deviations
            return f"tensor '{name}/m2' has negative values"
        if count.is_floating_point() or count.dtype == torch.bool or count.shape != (1,) or int(count[0]) < 0:
            return f"tensor '{name}/count' is not one integer >= 0"
    return None


# the model id and the class names become paths (vectors/<model>/<target>-mean.safetensors)
_METADATA_RULES: dict[str, Rule] = {
    k: (lambda v: v is None or isinstance(v, str), "is not a text") for k in ("model", "target", "baseline")
}


def _metadata_problem(metadata: object) -> str | None:
    return fields_problem(metadata, _METADATA_RULES, "metadata")
