"""Writing vectors for other tools: lm-eval's ``steered`` ``.pt`` config and llama.cpp's GGUF control vectors
(``--control-vector``). Reading ``.npy`` matrices lives with the vector format (``SteeringVector.load``)."""

from __future__ import annotations

import io
import os
from typing import Any

import torch

from steer_plugin.errors import SteerError
from steer_plugin.io.atomic import atomic_path, write_bytes_atomic
from steer_plugin.model.hooks import check_delta, finite_alpha
from steer_plugin.vectors.vector import SteeringVector


def _checked_alpha(vec: SteeringVector, layers: list[int], alpha: Any, why_none: str) -> float:
    """An exported file must not steer by nan/inf: alpha and every exported alpha x row are finite.
    And it must steer something: no layers to export is an error (``why_none``), not an empty file."""
    if not layers:
        raise SteerError(f"nothing to export: {why_none}")
    value = finite_alpha(alpha, "--alpha")
    for layer in layers:
        check_delta(value * vec.matrix[layer], layer, exact=value * vec.matrix[layer].double())
    return value


def export_lm_eval_steered(
    vec: SteeringVector, path: str | os.PathLike, *, block_path: str, alpha: float = 1.0
) -> None:
    """lm-eval's ``--model steered --model_args steer_path=FILE``: a dict keyed by hookpoint, action
    ``add`` with coefficient ``alpha`` on each non-zero row.

    lm-eval resolves hookpoints in ``model.base_model``, so the first component of our block path
    (the base model's attribute: ``model``, ``transformer``, ``gpt_neox``) is dropped:
    ``model.layers`` -> ``layers.N``, ``transformer.h`` -> ``h.N``.
    """
    alpha = _checked_alpha(vec, vec.nonzero_layers(), alpha, "the vector is zero on every layer")
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
    buf = io.BytesIO()  # rendered first: torch.save on a full disk fails with an unhelpful RuntimeError
    torch.save(config, buf)
    write_bytes_atomic(path, buf.getvalue())


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

    layers = [l for l in vec.nonzero_layers() if l >= 1]
    alpha = _checked_alpha(vec, layers, alpha, "the vector is zero on every layer llama.cpp steers (1 and up)")
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        try:
            writer.add_string("controlvector.model_hint", model_hint)
            writer.add_uint32("controlvector.layer_count", len(layers))
            for layer in layers:
                writer.add_tensor(f"direction.{layer}", (vec.matrix[layer] * alpha).numpy())
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return layers
