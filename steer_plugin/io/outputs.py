"""Output paths are checked before any work: a one-line error, not a traceback after the model ran.

Every command that writes calls ``check_output_file`` / ``check_output_dir`` on its outputs first;
``atomic.atomic_path`` calls ``check_output_file`` again as the last line of defence, and
``check_replaceable`` just before its rename.

An output replaces what is at its path by a rename, so only a regular file may be there: a symbolic link
(``/dev/stdout`` too) would be replaced by a file instead of written through, a device node or FIFO
destroyed (as root: a system node). Those are refused, never written.

An output that names one of the command's inputs (the same path, a hard link, a symbolic link to it) would
replace the file the command reads, after reading it, and exit 0: ``check_output_not_input`` refuses it first.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from steer_plugin.errors import SteerError
from steer_plugin.io.terminal import printable

NAME_MAX = 255  # bytes of one path component, where the file system does not say (Linux, macOS)


def name_max(folder: Path) -> int:
    """The longest name (bytes) the file system of ``folder`` (or its nearest existing ancestor) takes."""
    try:
        return int(os.pathconf(_nearest_existing(folder), "PC_NAME_MAX"))
    except (OSError, ValueError):
        return NAME_MAX


def _check_lookable(path: Path, flag: str) -> None:
    """Looking at ``path`` works: every name fits the file system and every folder above can be searched;
    a one-line SteerError otherwise (not a PermissionError or 'File name too long' traceback)."""
    name = printable(path)
    limit = name_max(path.parent if str(path.parent) else Path("."))
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise SteerError(
                f"{flag} {name}: the name {printable(part)[:40]}... is {len(os.fsencode(part))} bytes, longer than "
                f"the {limit} the file system takes"
            )
    try:
        os.lstat(path)  # the folders above are walked; a link at the path itself is check_replaceable's
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as e:
        if e.errno == errno.EACCES:
            raise SteerError(f"{flag} {name}: cannot look into its folder (permission denied)") from None
        raise SteerError(f"{flag} {name}: {e.strerror or e}") from None


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the folder that ``mkdir(parents=True)`` writes into)."""
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _writable(folder: Path) -> bool:
    effective = os.access in os.supports_effective_ids
    return os.access(folder, os.W_OK | os.X_OK, effective_ids=effective)


def _check_folder_writable(folder: Path, target: Path, flag: str) -> None:
    base = _nearest_existing(folder)
    name = printable(target)
    if not base.is_dir():
        raise SteerError(f"{flag} {name}: {printable(base)} is a file, not a folder")
    if not _writable(base):
        raise SteerError(f"{flag} {name}: cannot write in {printable(base)} (read-only or permission denied)")


_NODES = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
}


def check_replaceable(path: str | os.PathLike, flag: str = "--out") -> None:
    """Nothing is at ``path``, or a regular file that an output may replace; else a one-line SteerError."""
    p = Path(path)
    try:
        mode = os.lstat(p).st_mode
    except FileNotFoundError:
        return
    except OSError:
        return  # cannot look (a parent not searchable): the write itself reports it
    name = printable(p)
    if stat.S_ISLNK(mode):
        if not p.exists():
            raise SteerError(f"{flag} {name} is a broken symbolic link")
        raise SteerError(
            f"{flag} {name} is a symbolic link (to {printable(os.path.realpath(p))}); an output would replace the "
            "link, not write through it: give a regular file's path"
        )
    if stat.S_ISDIR(mode):
        raise SteerError(f"{flag} {name} is a folder; give a file path")
    if not stat.S_ISREG(mode):
        kind = _NODES.get(stat.S_IFMT(mode), "a special file")
        raise SteerError(f"{flag} {name} is {kind}, not a regular file; an output would replace it: give a file path")


Inputs = Iterable["str | os.PathLike[str] | None"]


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` names, links followed; None where nothing (readable) is there."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _files(path: str | os.PathLike) -> list[Path]:
    """An input file, or the files directly in an input folder (each one a file the command may read)."""
    p = Path(path)
    try:
        return [f for f in p.iterdir() if not f.is_dir()] if p.is_dir() else [p]
    except OSError:
        return [p]


def check_output_not_input(out: str | os.PathLike, inputs: Inputs, flag: str = "--out") -> None:
    """``out`` is none of ``inputs`` (files, or folders whose files are read; None skipped), under any name:
    the same path, a hard link, a symbolic link either way. Else a one-line SteerError, before any work."""
    target = _identity(out)
    if target is None:
        return  # nothing there yet: no input to replace
    for given in inputs:
        if given is None:
            continue
        for f in _files(given):
            if _identity(f) == target:
                same = printable(f) if str(f) == str(given) else f"{printable(f)} (in {printable(given)})"
                raise SteerError(
                    f"{flag} {printable(out)} is an input of this command ({same}); writing it would replace what "
                    "is read: give another path"
                )


def check_output_file(path: str | os.PathLike, flag: str = "--out", inputs: Inputs = ()) -> Path:
    """``path`` will be written as a file: it must be new or a regular file, none of the command's ``inputs``,
    and its folder writable."""
    p = Path(path)
    _check_lookable(p, flag)
    check_output_not_input(p, inputs, flag)
    if p.is_dir():
        raise SteerError(f"{flag} {printable(p)} is a folder; give a file path")
    check_replaceable(p, flag)
    _check_folder_writable(p.parent if str(p.parent) else Path("."), p, flag)
    return p


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` is a folder we create (if needed) and write into."""
    p = Path(path)
    _check_lookable(p, flag)
    if os.path.lexists(p) and not p.is_dir():
        raise SteerError(f"{flag} {printable(p)} is an existing file; give a folder")
    _check_folder_writable(p, p, flag)
    return p
