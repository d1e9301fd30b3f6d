"""Other formats: ``.npy`` diff matrices of the original research scripts, lm-eval's ``steered`` ``.pt`` config, and
llama.cpp's GGUF control vectors (``--control-vector``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from steer_plugin.errors import SteerError
from steer_plugin.vector import SteeringVector


def load_reference_npy(path: str | os.PathLike, *, drop_embedding_row: bool = False) -> SteeringVector:
    """A reference diff matrix ``[n_layers, hidden]`` (``allow_pickle=False``: never unpickles).

    Matrices taken from transformers' ``hidden_states`` have an extra first row (the embeddings);
    ``drop_embedding_row`` removes it so row ``l`` is block ``l``'s output again.
    """
    import numpy as np

    p = Path(path)
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SteerError(f"{p}: not a readable .npy matrix ({e})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise SteerError(f"{p}: expected a float [n_layers, hidden] matrix, got {arr.dtype} {arr.shape}")
    if drop_embedding_row:
        arr = arr[1:]
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SteerError(f"{p}: no rows left: the matrix has shape {arr.shape}")
    meta = {"source_file": p.name, "method": "imported", "imported_from": "reference-npy"}
    return SteeringVector(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), meta)


def export_lm_eval_steered(
    vec: SteeringVector, path: str | os.PathLike, *, block_path: str, alpha: float = 1.0
) -> None:
    """lm-eval's ``--model steered --model_args steer_path=FILE``: a dict keyed by hookpoint, action
    ``add`` with coefficient ``alpha`` on each non-zero row.

    lm-eval resolves hookpoints in ``model.base_model``, so the first component of our block path
    (the base model's attribute: ``model``, ``transformer``, ``gpt_neox``) is dropped:
    ``model.layers`` -> ``layers.N``, ``transformer.h`` -> ``h.N``.
    """
    from steer_plugin.atomic import atomic_path

    prefix = block_path.split(".", 1)[1] if "." in block_path else block_path
    config: dict[str, dict[str, Any]] = {}
    for layer in vec.nonzero_layers():
        config[f"{prefix}.{layer}"] = {
            "steering_vector": vec.matrix[layer].clone(),
            "steering_coefficient": float(alpha),
            "action": "add",
            "bias": None,
            "head_index": None,
        }
    with atomic_path(path) as tmp:
        torch.save(config, tmp)


def export_gguf_control_vector(
    vec: SteeringVector, path: str | os.PathLike, *, model_hint: str = "llama", alpha: float = 1.0
) -> list[int]:
    """llama.cpp control vector: tensors ``direction.N`` (N >= 1) added to the output of block N.

    llama.cpp never steers block 0, so a non-zero row 0 cannot be exported; it is skipped and the
    caller is told which layers were written.
    """
    try:
        import gguf
    except ImportError:
        raise SteerError("GGUF export needs the 'gguf' package: pip install 'steer-plugin[gguf]'") from None
    from steer_plugin.atomic import atomic_path

    layers = [l for l in vec.nonzero_layers() if l >= 1]
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", model_hint)
        writer.add_uint32("controlvector.layer_count", len(layers))
        for layer in layers:
            writer.add_tensor(f"direction.{layer}", (vec.matrix[layer] * alpha).numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return layers
