"""GGUF model names: a model given as a GGUF file (``dir/m.gguf``, ``org/repo/m.gguf``) loads through
transformers' ``gguf_file=`` (dequantized), and every name that reaches loading, fingerprints and vector folders is
read the same way."""

from __future__ import annotations

from pathlib import Path

from steer_plugin.errors import SteerError, first_line
from steer_plugin.io.reading import open_regular

GGUF_SUFFIX = ".gguf"
_GGUF_MAGIC = b"GGUF"


def is_gguf(name: str) -> bool:
    """Whether a model name is a GGUF file (``dir/m.gguf``, or ``org/repo/m.gguf`` on the hub)."""
    return str(name).lower().endswith(GGUF_SUFFIX)


def with_gguf_file(name: str, gguf_file: str | None) -> str:
    """``DIR`` (a folder or hub repository) and ``--gguf-file NAME`` as the one model name ``DIR/NAME``."""
    if not gguf_file:
        return name
    if not is_gguf(gguf_file) or "/" in gguf_file:
        raise SteerError(f"--gguf-file {gguf_file!r} is not a file name ending in .gguf (e.g. model-q4_k_m.gguf)")
    if is_gguf(name):
        raise SteerError(f"{name!r} is a GGUF file already; leave --gguf-file out")
    return f"{name.rstrip('/')}/{gguf_file}"


def split_gguf(name: str) -> tuple[str, str | None]:
    """``from_pretrained``'s folder (or hub repository) and ``gguf_file=`` for a model name: ``dir/m.gguf`` ->
    (``dir``, ``m.gguf``); any other name -> (name, None). A local GGUF (an absolute or ``./`` path, or one in an
    existing folder) must exist and be one: a one-line error otherwise; ``org/repo/m.gguf`` is the hub's."""
    if not is_gguf(name):
        return name, None
    path = Path(name).expanduser()
    local = path.is_absolute() or name.startswith((".", "~")) or path.parent.is_dir() or "/" not in name
    if local:
        try:
            with open_regular(path) as f:
                magic = f.read(len(_GGUF_MAGIC))
        except OSError as e:
            raise SteerError(f"cannot read the GGUF file {name}: {e.strerror or first_line(e)}") from None
        if magic != _GGUF_MAGIC:
            raise SteerError(f"{name} is not a GGUF file (it does not start with the GGUF magic bytes)")
    return str(path.parent), path.name
