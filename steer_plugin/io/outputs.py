"""Output paths are checked before any work: a one-line error, not a traceback after the model ran.

Every command that writes calls ``check_output_file`` / ``check_output_dir`` on its outputs first;
``atomic.atomic_path`` calls ``check_output_file`` again as the last line of defence.
"""

from __future__ import annotations

import os
from pathlib import Path

from steer_plugin.errors import SteerError
from steer_plugin.io.terminal import printable


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


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` will be written as a file: it must not be a folder and its folder must be writable."""
    p = Path(path)
    if p.is_dir():
        raise SteerError(f"{flag} {printable(p)} is a folder; give a file path")
    if os.path.lexists(p) and not p.exists():
        raise SteerError(f"{flag} {printable(p)} is a broken symbolic link")
    _check_folder_writable(p.parent if str(p.parent) else Path("."), p, flag)
    return p


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` is a folder we create (if needed) and write into."""
    p = Path(path)
    if os.path.lexists(p) and not p.is_dir():
        raise SteerError(f"{flag} {printable(p)} is an existing file; give a folder")
    _check_folder_writable(p, p, flag)
    return p
