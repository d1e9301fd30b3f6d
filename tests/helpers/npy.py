"""Malformed reference .npy files: each a way a header, size or dtype can be wrong."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def npy_with_header(path: Path, header: str, payload: bytes = b"") -> Path:
    text = header.encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload)
    return path


def bad_npys(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["empty"] = tmp_path / "empty.npy"
    files["empty"].write_bytes(b"")
    huge = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1048576), }"
    files["huge"] = npy_with_header(tmp_path / "huge.npy", huge, b"\0" * 64)
    files["unparsable"] = npy_with_header(tmp_path / "unparsable.npy", "{'descr': '<f4', 'shape': (3,")
    good = tmp_path / "good.npy"
    np.save(good, np.ones((3, 32), dtype=np.float32))
    files["truncated"] = tmp_path / "truncated.npy"
    files["truncated"].write_bytes(good.read_bytes()[:-8])
    files["negative"] = npy_with_header(
        tmp_path / "negative.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (-3, 32), }"
    )
    np.save(tmp_path / "bools.npy", np.ones((3, 32), dtype=bool))
    files["bools"] = tmp_path / "bools.npy"
    np.save(tmp_path / "huge_f64.npy", np.full((3, 32), 1e300))
    files["huge_f64"] = tmp_path / "huge_f64.npy"  # finite in float64, inf in float32
    return files
