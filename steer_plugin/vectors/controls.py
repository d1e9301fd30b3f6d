"""Random-direction controls: is an effect "anger", or any perturbation of the same size?

A control of vector V has V's shape, exactly V's per-layer norms and, per layer, as many non-zero
neurons as V (at random positions), pointing in a random direction (Gaussian, normalised per layer).
Evaluated at the same alpha, layers and positions as V, it moves the residual stream exactly as far
as V does, so what V does beyond its control is what its direction adds.

The draws depend only on the seed and V's shape/sparsity counts: ``random_like(V, s)`` gives the same
control on every machine, and ``steer build --method random --like V --seed s`` reproduces the one a
sweep used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steer_plugin.errors import SteerError
from steer_plugin.vectors.metadata import DEFAULT_POOL, text_source_of

if TYPE_CHECKING:  # pragma: no cover
    from steer_plugin.vectors.vector import SteeringVector

# torch and the vector module load lazily: `steer table` only needs ``is_control``

RANDOM_METHOD = "random"
# metadata of the model the control belongs to (the steered_hf checks read these; the residual RMS gives a
# control the same relative strength per unit alpha as its vector, and calibration its first alpha)
_MODEL_KEYS = (
    "model", "model_revision", "config_hash", "architecture", "block_path", "dtype", "layers",
    "residual_rms", "residual_rms_source",
)  # fmt: skip


def random_like(
    vector: SteeringVector, seed: int, *, source_sha256: str | None = None, source_name: str | None = None
) -> SteeringVector:
    """A norm- and sparsity-matched random-direction control of ``vector`` (float64 draws, seeded).

    Args:
        vector: the vector to control for.
        seed: the seed of the draws (>= 0); the same seed gives the same control on every machine.
        source_sha256: the sha256 of the vector's file, recorded in the control's ``control_of``.
        source_name: the vector's file name, recorded there too.

    Returns:
        A vector of the same shape with, per layer, the same norm and as many non-zero entries (at random
        positions, in a random Gaussian direction); its metadata says ``method: random`` and what it controls.
    """
    import torch

    from steer_plugin.vectors.vector import SteeringVector

    if seed < 0:
        raise SteerError(f"the control seed must be >= 0, got {seed}")
    src = vector.matrix.to(torch.float64).numpy()
    norms = np.linalg.norm(src, axis=1)
    counts = (src != 0).sum(axis=1)
    rng = np.random.default_rng(seed)
    out = np.zeros_like(src)
    for layer, (norm, k) in enumerate(zip(norms, counts)):
        # every layer draws, even an empty one, so a layer's direction does not depend on the others' norms
        positions = np.sort(rng.permutation(src.shape[1])[:k])
        values = rng.standard_normal(int(k))
        if norm > 0 and k > 0:
            out[layer, positions] = values * (norm / np.linalg.norm(values))
    mask = None
    if vector.mask is not None:
        mask = torch.from_numpy(out != 0)
    meta: dict[str, Any] = {k: vector.metadata[k] for k in _MODEL_KEYS if k in vector.metadata}
    source = vector.metadata
    if source.get("method") == RANDOM_METHOD:  # a control of a control is a control of the original
        control_of = dict(source.get("control_of") or {})
    else:
        text_source = text_source_of(source)
        control_of = {
            k: v
            for k, v in {
                "emotion": source.get("emotion"),
                "baseline": source.get("baseline"),
                "method": source.get("method"),
                "top_k": source.get("top_k"),
                # the recipe beyond the method, where it is not the default: the control's label is its vector's
                "centre": None if source.get("centre") in (None, "none") else source.get("centre"),
                "neutral_pcs": source.get("neutral_pcs") or None,
                "text_source": None if text_source == "goemotions" else text_source,
                "pool": None if source.get("pool") in (None, DEFAULT_POOL[text_source]) else source.get("pool"),
                "sha256": source_sha256,
                "file": source_name,
            }.items()
            if v is not None
        }
    extra = {"emotion": control_of.get("emotion"), "top_k": control_of.get("top_k")}
    meta.update({k: v for k, v in extra.items() if v is not None})
    meta.update(method=RANDOM_METHOD, control_of=control_of, seed=int(seed))
    return SteeringVector(torch.from_numpy(out).to(torch.float32), meta, mask)


def random_like_file(path: str | os.PathLike, seed: int) -> SteeringVector:
    """``random_like`` of a vector file, recording the file's name and sha256 in ``control_of``."""
    from steer_plugin.vectors.vector import SteeringVector, file_sha256

    vec = SteeringVector.load(path)
    return random_like(vec, seed, source_sha256=file_sha256(path), source_name=Path(path).name)


def is_control(metadata: dict[str, Any]) -> bool:
    return metadata.get("method") == RANDOM_METHOD


def control_path(folder: str | os.PathLike, source: str | os.PathLike, seed: int) -> Path:
    """``<folder>/<source stem>-random-<seed>.safetensors``."""
    return Path(folder) / f"{Path(source).stem}-random-{seed}.safetensors"


def write_controls(vectors: list[str], n: int, folder: str | os.PathLike) -> dict[str, list[str]]:
    """Controls with seeds ``0..n-1`` for each vector file, written under ``folder`` (kept if already
    there for the same source file and seed, so a resumed sweep does not rewrite them)."""
    if n < 0:
        raise SteerError(f"--controls must be >= 0, got {n}")
    from steer_plugin.vectors.vector import file_sha256

    out: dict[str, list[str]] = {}
    for source in vectors:
        if n == 0:
            out[source] = []
            continue
        digest = file_sha256(source) if Path(source).is_file() else None
        paths = []
        for seed in range(n):
            path = control_path(folder, source, seed)
            if not _is_current(path, digest, seed):
                random_like_file(source, seed).save(path)
            paths.append(str(path))
        out[source] = paths
    return out


def _is_current(path: Path, digest: str | None, seed: int) -> bool:
    from steer_plugin.vectors.vector import SteeringVector

    if not path.is_file() or digest is None:
        return False
    try:
        meta = SteeringVector.load(path).metadata
    except SteerError:
        return False
    return meta.get("seed") == seed and (meta.get("control_of") or {}).get("sha256") == digest
