"""Write files atomically: a temp file beside the target, renamed into place only on success.

Temp files are named ``.NAME.<pid>-<host>.<random>.tmp``. A writer killed mid-write (kill -9, power
loss) cannot remove its own, so every new write to the same target first removes the temp files of
writers that are gone: same host and the pid no longer exists, or older than ``STALE_AFTER_S`` (a
writer on another host sharing the folder, a reused pid, temp files of older versions without a pid).
A concurrent writer that is still running keeps its temp file.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from steer_plugin.errors import SteerError
from steer_plugin.io.terminal import printable

STALE_AFTER_S = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24]


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
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:(\d+)-([A-Za-z0-9]*)\.)?[a-z0-9_]{{8}}\.tmp$")
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


def new_temp_path(target: str | os.PathLike) -> Path:
    """A fresh, empty temp file beside ``target`` (its folder created), with the usual output permissions."""
    from steer_plugin.io.outputs import check_output_file

    target = check_output_file(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}-{_HOST}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise SteerError(f"cannot write {printable(target)}: {e.strerror or e}") from None
    os.close(fd)
    os.chmod(tmp, _output_mode())  # mkstemp makes 0600; outputs get the usual permissions
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on normal exit it replaces ``path``, on error it is removed."""
    target = Path(path)
    tmp = new_temp_path(target)
    try:
        yield tmp
        # some writers (safetensors' save_file) recreate the file as 0600: the output follows the umask
        try:
            os.chmod(tmp, _output_mode())
            os.replace(tmp, target)
        except OSError as e:
            raise SteerError(f"cannot write {printable(target)}: {e.strerror or e}") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
