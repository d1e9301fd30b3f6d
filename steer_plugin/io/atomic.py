"""Write files atomically: a temp file beside the target, renamed into place only on success.

A failed write (a full disk, an I/O error) is a ``WriteError``: one line naming the file, and no temp
file left. ``write_files_atomic`` writes a set of outputs that belong together (a table and its plots)
all or nothing: every file is staged first, then all are renamed; a failure while staging leaves the
previous set untouched, a failed rename removes the files of this set already renamed.

Temp files are named ``.NAME.<pid>-<host>.<random>.tmp`` (NAME cut where the whole would pass the file
system's 255 bytes: a valid output name never fails for its temp file's). A writer killed mid-write (kill -9, power
loss) cannot remove its own, so every new write to the same target first removes the temp files of
writers that are gone: same host and the pid no longer exists, or older than ``STALE_AFTER_S`` (a
writer on another host sharing the folder, a reused pid, temp files of older versions without a pid).
A concurrent writer that is still running keeps its temp file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from steer_plugin.errors import SteerError
from steer_plugin.io.outputs import NAME_MAX, check_output_file, check_replaceable
from steer_plugin.io.terminal import printable

STALE_AFTER_S = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24]


class WriteError(SteerError, OSError):
    """An output could not be written: a one-line error in the CLI, and still an OSError for callers."""


def _cannot_write(target: Path, e: OSError) -> WriteError:
    return WriteError(f"cannot write {printable(target)}: {e.strerror or e}")


def _output_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a pid we cannot ask about): assume it is writing
    return True


def remove_stale_temps(target: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Remove temp files of ``target`` left by writers that are gone; returns what was removed."""
    target = Path(target)
    # ours: .NAME.<pid>-<host>.<8 random>.tmp; older versions: .NAME.<8 random>.tmp (mkstemp's alphabet)
    pattern = re.compile(rf"^\.{re.escape(temp_stem(target.name))}\.(?:(\d+)-([A-Za-z0-9]*)\.)?[a-z0-9_]{{8}}\.tmp$")
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
            dead = m.group(1) is not None and m.group(2) == _HOST and not _pid_alive(int(m.group(1)))
            if old or dead:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone already (another writer cleaned it) or not ours to remove
            continue
    return removed


# what a temp name adds to its target's: "." "." pid (up to 7 digits) "-" host "." 8 random ".tmp"
_TEMP_EXTRA = 1 + 1 + 7 + 1 + len(_HOST) + 1 + 8 + len(".tmp")


def temp_stem(name: str) -> str:
    """The part of a target's name in its temp files' names: the name itself, or (a name near the file system's
    limit) its first characters, so that the temp name is never longer than any output name may be."""
    room = NAME_MAX - _TEMP_EXTRA
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return name


def new_temp_path(target: str | os.PathLike) -> Path:
    """A fresh, empty temp file beside ``target`` (its folder created), with the usual output permissions."""
    target = check_output_file(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        prefix = f".{temp_stem(target.name)}.{os.getpid()}-{_HOST}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise _cannot_write(target, e) from None
    os.close(fd)
    os.chmod(tmp, _output_mode())  # mkstemp makes 0600; outputs get the usual permissions
    return Path(tmp)


def reserve_space(tmp: Path, target: Path) -> None:
    """Allocate every block of a (sparse, memory-mapped) temp file now: on a full disk its writes would
    end the process with SIGBUS mid-way; this is a WriteError before the work."""
    try:
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve: write as before
            return
        raise _cannot_write(target, e) from None


def _missing_folders(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, deepest first (what writing it would create)."""
    out = []
    for folder in path.parents:
        if os.path.lexists(folder):
            break
        out.append(folder)
    return out


def _remove_quietly(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                p.rmdir()  # only if empty: a folder we created for this set
            else:
                p.unlink()


def replace_all(staged: Mapping[Path, Path]) -> None:
    """Rename each staged temp file (value) onto its target (key). If one rename fails, the targets
    already renamed and the temps left are removed: never a part of the set beside the rest of an older one."""
    done: list[Path] = []
    for target, tmp in staged.items():
        try:
            check_replaceable(target)  # created since it was checked? never replace a link or a device
            # some writers (safetensors' save_file) recreate the file as 0600: the output follows the umask
            os.chmod(tmp, _output_mode())
            os.replace(tmp, target)
        except BaseException as e:
            _remove_quietly([*done, *(t for t in staged.values() if t.exists())])
            if isinstance(e, OSError) and not isinstance(e, SteerError):
                raise _cannot_write(target, e) from None
            raise
        done.append(target)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on normal exit it replaces ``path``, on error it is removed (an OSError
    while writing it, such as a full disk, becomes a WriteError naming ``path``)."""
    target = Path(path)
    tmp = new_temp_path(target)
    try:
        yield tmp
    except BaseException as e:
        _remove_quietly([tmp])
        if isinstance(e, OSError) and not isinstance(e, SteerError):
            raise _cannot_write(target, e) from None
        raise
    replace_all({target: tmp})


def write_files_atomic(files: Mapping[Path, str | bytes]) -> list[Path]:
    """Write every file (text as UTF-8) or none: all are staged as temp files before the first rename.
    Returns the paths written. Folders created for them are removed again if the set cannot be written."""
    targets = {Path(p): data for p, data in files.items()}
    created = sorted({f for p in targets for f in _missing_folders(p)}, key=lambda f: len(f.parts), reverse=True)
    staged: dict[Path, Path] = {}
    try:
        for target, data in targets.items():
            staged[target] = new_temp_path(target)
            try:
                staged[target].write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
            except OSError as e:
                raise _cannot_write(target, e) from None
        replace_all(staged)
    except BaseException:
        _remove_quietly([*(t for t in staged.values() if t.exists()), *created])
        raise
    return list(targets)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_files_atomic({Path(path): text})


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    write_files_atomic({Path(path): data})
