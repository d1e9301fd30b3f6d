"""A full disk, simulated at the calls that hand an output's bytes to the OS: half the bytes land, then ENOSPC."""

from __future__ import annotations

import errno
import os
import pathlib
import re

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"
_TEMP = re.compile(
    r"^\.(.+)\.\d+-[A-Za-z0-9]*\.[a-z0-9_]{8}\.tmp$"
)  # io.atomic's temp files: .NAME.<pid>-<host>.<rnd>.tmp


def target_name(path: os.PathLike | str) -> str:
    """The output a temp file stands for (its own name if it is not one of ours)."""
    name = pathlib.Path(path).name
    m = _TEMP.match(name)
    return m.group(1) if m else name


def _no_space(path: os.PathLike | str) -> OSError:
    return OSError(errno.ENOSPC, NO_SPACE, str(path))


def full_disk(monkeypatch, suffix: str = "") -> None:
    """Writing a file whose output name ends with ``suffix`` (every file: "") fails half-way with ENOSPC,
    through ``Path.write_bytes`` / ``Path.write_text``, safetensors' ``save_file`` and gguf's writer."""
    import gguf
    import safetensors.torch

    real_bytes, real_text = pathlib.Path.write_bytes, pathlib.Path.write_text
    real_save_file = safetensors.torch.save_file
    real_tensors = gguf.GGUFWriter.write_tensors_to_file

    def hit(path) -> bool:
        return target_name(path).endswith(suffix)

    def write_bytes(self, data):
        if not hit(self):
            return real_bytes(self, data)
        real_bytes(self, bytes(data)[: len(data) // 2])
        raise _no_space(self)

    def write_text(self, data, encoding=None, errors=None, newline=None):
        if not hit(self):
            return real_text(self, data, encoding, errors, newline)
        real_bytes(self, data[: len(data) // 2].encode(encoding or "utf-8"))
        raise _no_space(self)

    def save_file(tensors, filename, metadata=None):
        if not hit(filename):
            return real_save_file(tensors, filename, metadata=metadata)
        real_bytes(pathlib.Path(filename), b"\x10\x00\x00\x00partial")
        raise _no_space(filename)

    def write_tensors_to_file(self, *args, **kwargs):
        if not hit(self.path):
            return real_tensors(self, *args, **kwargs)
        for f in self.fout or []:
            f.write(b"partial")
            f.flush()
        raise _no_space(self.path)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", write_tensors_to_file)
