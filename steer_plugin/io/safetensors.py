"""Our safetensors files: written atomically, read with errors a user can act on."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from steer_plugin.errors import SteerError


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
    """Tensors plus string metadata (``format``, ``format_version``, ``metadata`` JSON ...), all or nothing."""
    from safetensors.torch import save_file

    from steer_plugin.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def read_safetensors(
    path: str | os.PathLike, *, expected_format: str | None, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load all tensors and the string metadata; never unpickles anything."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise SteerError(f"{what} not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (the handle is not iterable)
    except Exception as e:  # safetensors raises several exception types for bad headers
        raise SteerError(f"{p}: not a readable safetensors {what} ({type(e).__name__}: {e})") from None
    if expected_format is not None and meta.get("format") != expected_format:
        raise SteerError(
            f"{p}: not a steer-plugin {what} (format={meta.get('format')!r}, expected {expected_format!r})"
        )
    return tensors, meta
