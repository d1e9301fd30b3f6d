"""The steering vector: a float32 matrix [n_layers, hidden] in a self-describing safetensors file."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from steer_plugin.errors import SteerError

VECTOR_FORMAT = "steer-plugin/vector"
VECTOR_VERSION = 1
METHODS = ("mean", "top_k")


@dataclass
class SteeringVector:
    """One row per decoder block: row ``l`` is added to the output of block ``l``."""

    matrix: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)
    mask: torch.Tensor | None = None  # bool [L, H]: the kept neurons of a top_k vector

    def __post_init__(self) -> None:
        if self.matrix.ndim != 2:
            raise SteerError(f"a steering vector is a [n_layers, hidden] matrix, got shape {tuple(self.matrix.shape)}")
        self.matrix = self.matrix.detach().to("cpu", torch.float32).contiguous()
        if self.mask is not None:
            self.mask = self.mask.to("cpu", torch.bool).contiguous()

    @property
    def n_layers(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.matrix.shape[1])

    def layer_norms(self) -> list[float]:
        return [float(x) for x in self.matrix.norm(dim=1)]

    def nonzero_layers(self) -> list[int]:
        return [i for i, n in enumerate(self.layer_norms()) if n > 0]

    def relative_strength(self, alpha: float = 1.0, layers: list[int] | None = None) -> dict[int, float]:
        """``|alpha| ||row_l|| / RMS||h_l||`` per non-zero layer (of ``layers``): the step in units of the
        residual stream's typical norm there. Empty if the metadata has no ``residual_rms`` (built
        before it was recorded, or imported)."""
        rms = self.metadata.get("residual_rms")
        if not isinstance(rms, list) or len(rms) != self.n_layers:
            return {}
        norms = self.layer_norms()
        keep = self.nonzero_layers() if layers is None else [l for l in layers if norms[l] > 0]
        return {l: abs(alpha) * norms[l] / float(rms[l]) for l in keep if rms[l] and float(rms[l]) > 0}

    def restrict(self, layers: list[int]) -> SteeringVector:
        """Keep only ``layers`` (others zeroed)."""
        keep = torch.zeros(self.n_layers, 1)
        keep[layers] = 1
        meta = {**self.metadata, "layers": sorted(layers)}
        mask = None if self.mask is None else self.mask & keep.bool()
        return replace(self, matrix=self.matrix * keep, metadata=meta, mask=mask)

    # --- file format -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename): a reader never sees a half-written file."""
        from safetensors.torch import save_file

        from steer_plugin.atomic import atomic_path

        if not torch.isfinite(self.matrix).all():
            raise SteerError("refusing to save a steering vector with non-finite values")
        meta = {
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **self.metadata,
            # the matrix decides the shape, not whatever a loaded file's metadata said
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
        }
        from steer_plugin import __version__

        meta.setdefault("package_version", __version__)
        header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
        header.update(format=VECTOR_FORMAT, format_version=str(VECTOR_VERSION), metadata=json.dumps(meta))
        tensors = {"vector": self.matrix}
        if self.mask is not None:
            tensors["mask"] = self.mask.to(torch.uint8)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SteeringVector:
        """Our ``.safetensors`` files and the reference pipeline's ``.npy`` matrices; never unpickles."""
        p = Path(path)
        if p.suffix == ".npy":
            from steer_plugin.interop import load_reference_npy

            return load_reference_npy(p)
        from steer_plugin.safetensors_io import read_safetensors

        tensors, header = read_safetensors(p, expected_format=VECTOR_FORMAT, what="steering vector")
        if "vector" not in tensors:
            raise SteerError(f"{p}: corrupt steering vector (no 'vector' tensor)")
        try:
            meta = json.loads(header.get("metadata", "{}"))
        except json.JSONDecodeError:
            raise SteerError(f"{p}: corrupt steering vector metadata") from None
        if not isinstance(meta, dict):
            raise SteerError(f"{p}: corrupt steering vector metadata (not a JSON object)")
        if tensors["vector"].ndim != 2:
            raise SteerError(f"{p}: corrupt steering vector (shape {tuple(tensors['vector'].shape)}, not 2-D)")
        mask = tensors.get("mask")
        vec = cls(tensors["vector"], meta, None if mask is None else mask.bool())
        if mask is not None and mask.shape != vec.matrix.shape:
            raise SteerError(f"{p}: corrupt steering vector (mask shape {tuple(mask.shape)} != vector shape)")
        if not torch.isfinite(vec.matrix).all():
            raise SteerError(f"{p}: corrupt steering vector (non-finite values)")
        return vec


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
