"""Content fingerprints of input files: what a sweep's resume identity records of every file a result depends on
(the model's config and tokenizer, data folders, the classifier, task definitions), so that a file edited in
place, or a path pointed at other files, is another sweep and never a silent resume.

Whole contents are hashed (these files are small: configs, tokenizers, TSV/JSONL data, YAMLs); only regular
files are read (a FIFO or device under a folder is skipped, never read until it ends), and names are part of
the fingerprint, so a file added, removed or renamed changes it too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

SKIPPED_DIRS = ("__pycache__",)  # written by Python itself when a task's code is imported


def files_fingerprint(files: Iterable[tuple[str, Path]]) -> str | None:
    """A short sha256 of (name, size, contents) of each ``(name, path)``, in name order; None when there are no
    files or one cannot be read (then nothing is compared, as for an input not on this machine)."""
    named = sorted(files)
    if not named:
        return None
    h = hashlib.sha256()
    try:
        for name, path in named:
            h.update(f"{name}\0{path.stat().st_size}\0".encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()[:16]


def folder_files(
    folder: str | Path, recursive: bool = False, keep: Callable[[Path], bool] | None = None
) -> list[tuple[str, Path]]:
    """The regular files of ``folder`` (with ``recursive``, of its subfolders too; hidden ones and
    ``__pycache__`` left out), named by their path below it; ``keep`` chooses among them. [] for no folder."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        return []
    try:
        found = root.rglob("*") if recursive else root.iterdir()
        paths = [p for p in found if p.is_file() and (keep is None or keep(p))]
    except OSError:
        return []
    out = []
    for p in paths:
        parts = p.relative_to(root).parts
        if any(part.startswith(".") or part in SKIPPED_DIRS for part in parts):
            continue
        out.append(("/".join(parts), p))
    return out


def path_fingerprint(path: str | Path | None, recursive: bool = False) -> str | None:
    """The fingerprint of a file, or of a folder's files; None for no path, or nothing readable there."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_file():
        return files_fingerprint([("", p)])  # its path, where it matters, is recorded beside it
    return files_fingerprint(folder_files(p, recursive))
