"""Other formats: the reference pipeline's ``.npy`` matrices, lm-eval's ``steered`` ``.pt`` config, and
llama.cpp's GGUF control vectors (``--control-vector``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from steer_plugin.errors import SteerError
from steer_plugin.vector import SteeringVector


def read_npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], bool, Any, int]:
    """(shape, fortran_order, dtype, data offset) of a ``.npy`` file, checked against the file size.

    A header can claim any shape; numpy would allocate it before finding the file too short (a
    (2**40, 2**20) header is 4 EiB). Reading the header alone and comparing shape x itemsize with the
    bytes that follow rejects truncated, padded and lying files before anything is allocated.
    """
    import math

    from numpy.lib import format as npy_format

    p = Path(path)
    if not p.is_file():
        raise SteerError(f"{p}: not a readable .npy matrix (file not found)")
    size = p.stat().st_size
    try:
        with open(p, "rb") as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
            offset = f.tell()
    except Exception as e:  # numpy raises ValueError, EOFError, tokenize errors ... for bad headers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SteerError(f"{p}: not a readable .npy matrix (bad header: {first[:200]})") from None
    if any(n < 0 for n in shape):
        raise SteerError(f"{p}: not a readable .npy matrix (negative shape {shape} in the header)")
    if dtype.hasobject:
        raise SteerError(f"{p}: not a readable .npy matrix (Python objects would need unpickling; refused)")
    expected = math.prod(shape) * dtype.itemsize
    if size - offset != expected:
        raise SteerError(
            f"{p}: truncated or corrupt .npy file (header says {dtype} {shape} = {expected} bytes, "
            f"the file holds {size - offset})"
        )
    return shape, fortran, dtype, offset


def load_reference_npy(path: str | os.PathLike, *, drop_embedding_row: bool = False) -> SteeringVector:
    """A reference diff matrix ``[n_layers, hidden]`` (``allow_pickle=False``: never unpickles).

    Matrices taken from transformers' ``hidden_states`` have an extra first row (the embeddings);
    ``drop_embedding_row`` removes it so row ``l`` is block ``l``'s output again.
    """
    import numpy as np

    p = Path(path)
    shape, _fortran, dtype, _offset = read_npy_header(p)
    if len(shape) != 2 or dtype.kind != "f":  # int/bool/complex: not a direction; casting would hide a wrong file
        raise SteerError(
            f"{p}: expected a float [n_layers, hidden] matrix, got {dtype} {shape}"
            + ("" if dtype.kind == "f" else " (a steering vector holds floats; not cast silently)")
        )
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SteerError(f"{p}: not a readable .npy matrix ({e})") from None
    if drop_embedding_row:
        arr = arr[1:]
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SteerError(f"{p}: no rows left: the matrix has shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise SteerError(f"{p}: the matrix contains non-finite values (nan or inf)")
    with np.errstate(over="ignore"):
        matrix = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise SteerError(f"{p}: values too large for float32 (max |x| {float(np.abs(arr).max()):.3g})")
    meta = {"source_file": p.name, "method": "imported", "imported_from": "reference-npy"}
    return SteeringVector(torch.from_numpy(matrix), meta)


def _checked_alpha(vec: SteeringVector, layers: list[int], alpha: Any) -> float:
    """An exported file must not steer by nan/inf: alpha and every exported alpha x row are finite."""
    from steer_plugin.steering import check_delta, finite_alpha

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
    from steer_plugin.atomic import atomic_path

    alpha = _checked_alpha(vec, vec.nonzero_layers(), alpha)
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
    alpha = _checked_alpha(vec, layers, alpha)
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
