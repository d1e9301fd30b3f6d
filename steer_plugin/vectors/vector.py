"""The steering vector: a float32 matrix [n_layers, hidden] in a self-describing safetensors file."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from steer_plugin._version import __version__
from steer_plugin.data.goemotions import target_slug
from steer_plugin.errors import SteerError
from steer_plugin.io.npy import read_float_matrix
from steer_plugin.io.reading import open_regular
from steer_plugin.io.safetensors import read_safetensors, write_safetensors
from steer_plugin.model.hooks import steer
from steer_plugin.model.loading import model_slug
from steer_plugin.model.positions import Positions
from steer_plugin.vectors.metadata import metadata_problem
from steer_plugin.vectors.recipe import Recipe

VECTOR_FORMAT = "steer-plugin/vector"
VECTOR_VERSION = 1


@dataclass
class SteeringVector:
    """One row per decoder block: row ``l`` is added to the output of block ``l``.

    Args:
        matrix: float ``[n_layers, hidden]``.
        metadata: where it came from (model, emotion, method, counts, residual RMS ...), saved with it.
        mask: bool ``[n_layers, hidden]``: the kept neurons of a top_k vector; None: all.
    """

    matrix: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.matrix.ndim != 2:
            raise SteerError(f"a steering vector is a [n_layers, hidden] matrix, got shape {tuple(self.matrix.shape)}")
        if not self.matrix.is_floating_point():  # an int/bool matrix is not a direction; never cast it silently
            raise SteerError(f"a steering vector holds floats, got {str(self.matrix.dtype).removeprefix('torch.')}")
        if 0 in self.matrix.shape:  # nothing to steer with: exports would be empty files
            raise SteerError(
                f"a steering vector needs at least one layer and one neuron, got shape {tuple(self.matrix.shape)}"
            )
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

    # --- using it ----------------------------------------------------------------------------
    def apply(
        self,
        model: torch.nn.Module,
        alpha: float = 1.0,
        layers: str | list[int] | None = "all",
        positions: Positions = "all",
        *,
        blocks: str | None = None,
    ) -> AbstractContextManager[None]:
        """Steer ``model`` inside a ``with`` block: ``alpha x`` row ``l`` is added to the output of
        decoder block ``l`` for the chosen layers; the hooks are removed on exit, also after an error.

        Args:
            model: the transformers causal LM the vector was built for.
            alpha: the steering strength (0: unsteered, negative: away from the emotion).
            layers: ``all``, ``middle``, 0-based ``0,3,5-9``, or indices.
            positions: ``all`` steers every position of every forward pass; ``response`` only the last
                position of each forward, which in ``model.generate`` (left padding for batches) is the
                last prompt token and then every generated token.
            blocks: module path of the decoder blocks, if they are not found automatically.

        Returns:
            A context manager; nothing is steered outside it.
        """
        return steer(model, [self], [alpha], layers=layers, positions=positions, blocks=blocks)

    # --- arithmetic: mixes keep an honest record of what they are made of ---------------------
    def _terms(self) -> list[dict[str, Any]]:
        if "recipe" in self.metadata:
            return [dict(t) for t in self.metadata["recipe"]]
        m = self.metadata
        source = {k: m[k] for k in ("emotion", "method", "top_k", "source_path", "source_sha256") if m.get(k)}
        return [{"coefficient": 1.0, **source}]

    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.matrix.shape != self.matrix.shape:
            raise SteerError(
                f"cannot combine vectors of shapes {tuple(self.matrix.shape)} and {tuple(other.matrix.shape)}"
            )
        terms = self._terms() + [{**t, "coefficient": sign * t["coefficient"]} for t in other._terms()]
        mask = None if self.mask is None or other.mask is None else self.mask | other.mask
        return SteeringVector(self.matrix + sign * other.matrix, _mix_metadata(self, other, terms), mask)

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, factor: float) -> SteeringVector:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            return NotImplemented
        terms = [{**t, "coefficient": float(factor) * t["coefficient"]} for t in self._terms()]
        return SteeringVector(self.matrix * float(factor), _mix_metadata(self, self, terms), self.mask)

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __truediv__(self, divisor: float) -> SteeringVector:
        return self * (1.0 / divisor)

    # --- file format -------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, beside: Mapping[Path, str | bytes] | None = None) -> None:
        """Write atomically (temp file + rename): a reader never sees a half-written file.

        Args:
            path: the ``.safetensors`` file (tensor ``vector``, and ``mask`` for a top_k vector; the
                metadata in the header). Non-finite values or metadata that ``load`` would refuse are errors.
            beside: files that belong to the vector (a generated source's texts), written with it, all or none.
        """
        if not torch.isfinite(self.matrix).all():
            raise SteerError("refusing to save a steering vector with non-finite values")
        problem = metadata_problem({**self.metadata, "n_layers": self.n_layers, "hidden_size": self.hidden_size})
        if problem:  # a file we would refuse to read back
            raise SteerError(f"refusing to save a steering vector with bad metadata ({problem})")
        meta = {
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **self.metadata,
            # the matrix decides the shape, not whatever a loaded file's metadata said
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
        }
        meta.setdefault("package_version", __version__)
        header = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
        header.update(format=VECTOR_FORMAT, format_version=str(VECTOR_VERSION), metadata=json.dumps(meta))
        tensors = {"vector": self.matrix}
        if self.mask is not None:
            tensors["mask"] = self.mask.to(torch.uint8)
        write_safetensors(path, tensors, header, beside)

    @classmethod
    def from_npy(cls, path: str | os.PathLike, *, drop_embedding_row: bool = False) -> SteeringVector:
        """A diff matrix ``[n_layers, hidden]`` as the original research scripts saved it (never unpickles).

        Matrices taken from transformers' ``hidden_states`` have an extra first row (the embeddings);
        ``drop_embedding_row`` removes it so row ``l`` is block ``l``'s output again.

        Args:
            path: the ``.npy`` file (a float matrix; object arrays are refused).
            drop_embedding_row: drop its first row.

        Returns:
            The vector, with the file's name as its source in the metadata.
        """
        matrix = read_float_matrix(path, drop_first_row=drop_embedding_row)
        meta = {"source_file": Path(path).name, "method": "imported", "imported_from": "reference-npy"}
        return cls(torch.from_numpy(matrix), meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SteeringVector:
        """Read a vector file, validated (tensors, shape, metadata); never unpickles.

        Args:
            path: our ``.safetensors`` file, or a ``.npy`` diff matrix of the original research scripts.

        Returns:
            The vector with its metadata; a one-line SteerError for a file that is not one.
        """
        p = Path(path)
        if p.suffix == ".npy":
            return cls.from_npy(p)

        tensors, header = read_safetensors(
            p, expected_format=VECTOR_FORMAT, what="steering vector", version=VECTOR_VERSION
        )
        if "vector" not in tensors:
            raise SteerError(f"{p}: corrupt steering vector (no 'vector' tensor)")
        try:
            meta = json.loads(header.get("metadata", "{}"))
        except json.JSONDecodeError:
            raise SteerError(f"{p}: corrupt steering vector metadata") from None
        if not isinstance(meta, dict):
            raise SteerError(f"{p}: corrupt steering vector metadata (not a JSON object)")
        matrix = tensors["vector"]
        if not matrix.is_floating_point():
            kind = str(matrix.dtype).removeprefix("torch.")
            raise SteerError(f"{p}: not a steering vector (tensor 'vector' is {kind}; a steering vector holds floats)")
        if matrix.ndim != 2 or 0 in matrix.shape:
            raise SteerError(
                f"{p}: corrupt steering vector (shape {tuple(matrix.shape)}, not [n_layers >= 1, hidden >= 1])"
            )
        problem = metadata_problem(meta, (int(matrix.shape[0]), int(matrix.shape[1])))
        if problem:
            raise SteerError(f"{p}: corrupt steering vector metadata ({problem})")
        mask = tensors.get("mask")
        vec = cls(matrix, meta, None if mask is None else mask.bool())
        if mask is not None and mask.shape != vec.matrix.shape:
            raise SteerError(f"{p}: corrupt steering vector (mask shape {tuple(mask.shape)} != vector shape)")
        if not torch.isfinite(vec.matrix).all():
            raise SteerError(f"{p}: corrupt steering vector (non-finite values)")
        return vec


# describe the model a vector belongs to; kept in a mix only where all parts agree
_SHARED_KEYS = ("model", "model_revision", "config_hash", "architecture", "block_path", "baseline", "split",
                "selection", "source", "text_source", "pool", "template", "dtype")  # fmt: skip


def _mix_metadata(a: SteeringVector, b: SteeringVector, terms: list[dict[str, Any]]) -> dict[str, Any]:
    shared = {k: a.metadata[k] for k in _SHARED_KEYS if k in a.metadata and a.metadata.get(k) == b.metadata.get(k)}
    parts = [f"{abs(t['coefficient']):g}*{t.get('emotion', 'vector')}" for t in terms]
    signs = ["-" if t["coefficient"] < 0 else "+" for t in terms]
    name = ("-" if signs[0] == "-" else "") + parts[0] + "".join(f" {s} {p}" for s, p in zip(signs[1:], parts[1:]))
    return {**shared, "emotion": name, "method": "combination", "recipe": terms}


def default_vector_path(model: str, emotion: str, recipe: Recipe) -> Path:
    """Where built vectors live: ``vectors/<model-slug>/<emotion>-<recipe>.safetensors``, the recipe spelt
    by ``Recipe.label`` (``anger-top_k-20``, ``anger-pca-emotions-npc3``, ``anger-mean-generated``,
    ``anger-mean-pool-mean``)."""
    name = f"{target_slug(emotion)}-{recipe.label()}"
    return Path("vectors") / model_slug(model) / f"{name}.safetensors"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_scale(scale: Any) -> float:
    """``build --scale``: a finite number a float32 vector can hold, checked before recording (minutes): 1e39
    would make every entry infinite, found only when the vector is saved."""
    from steer_plugin.model.hooks import finite_alpha

    value = finite_alpha(scale, "--scale")
    if abs(value) > torch.finfo(torch.float32).max:
        raise SteerError(f"--scale {value:g} is beyond what a float32 vector holds (about 3.4e38)")
    return value
