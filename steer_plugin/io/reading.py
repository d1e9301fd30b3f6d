"""Reading input files: only regular files, never more than a format can hold.

A FIFO named like an input would block the reader forever (opening it waits for a writer), a link to
``/dev/zero`` or ``/dev/urandom`` would be read until memory runs out. Every reader of our JSON, JSONL,
calibration, text and GGUF-header files opens through ``open_regular``: it opens without blocking, looks
at what it opened (not at the name, which may change in between) and refuses anything but a regular file.
``read_regular_bytes``/``read_regular_text`` also bound the size where a format has a bound.

The refusal is an ``UnreadableFile``: a one-line SteerError, and still an OSError, so readers that skip
unreadable files (a folder of results) skip it the same way.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, BinaryIO

from steer_plugin.errors import SteerError
from steer_plugin.io.terminal import printable

MIB = 1 << 20
JSON_LIMIT = 64 * MIB  # our own JSON documents (calibrations, sweep plans, results): far below, always

_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
    stat.S_IFLNK: "a symbolic link",
}


class UnreadableFile(SteerError, OSError):
    """An input that is not a regular file, or larger than its format allows."""


def file_kind(mode: int) -> str:
    """``a FIFO (named pipe)``, ``a character device``, ... for a ``st_mode`` (``a regular file``)."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return _KINDS.get(stat.S_IFMT(mode), "a special file")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for binary reading if it is (or links to) a regular file; an ``UnreadableFile`` for a
    FIFO, device, socket or folder, without blocking; the OSError of ``open`` (FileNotFoundError, ...) else."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"{printable(path)} is {file_kind(mode)}, not a regular file")
        return open(fd, "rb", closefd=True)  # O_NONBLOCK means nothing to a regular file
    except BaseException:
        os.close(fd)
        raise


def read_regular_bytes(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (None: its size, whatever it is)."""
    with open_regular(path) as f:
        if limit is not None:
            data = f.read(limit + 1)  # a file growing while it is read stops at the bound too
            if len(data) > limit:
                raise UnreadableFile(f"{printable(path)} is larger than {_size(limit)}: not a file of this format")
            return data
        return f.read()


def read_regular_text(path: str | os.PathLike, limit: int | None = None) -> str:
    """``read_regular_bytes`` as UTF-8 text (a UnicodeDecodeError as ``Path.read_text`` raises it)."""
    return read_regular_bytes(path, limit).decode("utf-8")


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is (or links to) a regular file; a look at the name only (opening decides)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n} bytes"


class NotJSON(ValueError):
    """A file that was read but holds no JSON document: the reason, for the caller's own refusal."""


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """The JSON document in ``path``, a regular file of at most ``JSON_LIMIT`` bytes. A missing file raises
    FileNotFoundError (the caller says what none means), an unreadable one a SteerError naming ``what``, text
    that is not JSON a ``NotJSON`` with the parser's reason."""
    try:
        text = read_regular_text(path, JSON_LIMIT)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise SteerError(f"{path}: cannot read the {what} ({e})") from None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise NotJSON(f"not valid JSON ({type(e).__name__}: {str(e)[:80]})") from None
