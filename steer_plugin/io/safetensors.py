"""Our safetensors files: written atomically, read with errors a user can act on."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from steer_plugin.errors import SteerError
from steer_plugin.io.atomic import atomic_path, write_files_atomic


class OtherFormat(SteerError):
    """A readable safetensors file of another format (a stats file where a vector was expected, model weights)."""


def write_safetensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    header: dict[str, str],
    beside: Mapping[Path, str | bytes] | None = None,
) -> None:
    """Tensors plus string metadata (``format``, ``format_version``, ``metadata`` JSON ...), all or nothing;
    with ``beside``, those files too, as one set (``write_files_atomic``; the file is serialised in memory)."""
    from safetensors import SafetensorError
    from safetensors.torch import save, save_file

    if beside:
        write_files_atomic({Path(path): save(tensors, metadata=header), **beside})
        return
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=header)
        except SafetensorError as e:  # its I/O errors (a full disk: "... (os error 28)") are not OSErrors
            m = re.search(r"os error (\d+)", str(e))
            if m is None:
                raise
            raise OSError(int(m.group(1)), os.strerror(int(m.group(1)))) from None


def read_safetensors(
    path: str | os.PathLike, *, expected_format: str | None, what: str, version: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load all tensors and the string metadata; never unpickles anything. With ``expected_format``, a
    file of another format is an ``OtherFormat`` error; with ``version``, its ``format_version`` must be
    a version this code reads (1 .. ``version``)."""
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
        raise OtherFormat(
            f"{p}: not a steer-plugin {what} (format={meta.get('format')!r}, expected {expected_format!r})"
        )
    if version is not None:
        found = meta.get("format_version")
        if found is None or not found.isascii() or not found.isdigit() or int(found) < 1:
            raise SteerError(f"{p}: corrupt {what} (format_version {found!r} is not a version number)")
        if int(found) > version:
            raise SteerError(
                f"{p}: {what} of format_version {found}, newer than this steer-plugin reads ({version}); upgrade it"
            )
    return tensors, meta
