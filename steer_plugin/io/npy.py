"""Reading ``.npy`` matrices safely: the header is checked against the file before anything is allocated."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from steer_plugin.errors import SteerError, first_line


def read_npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], bool, Any, int]:
    """(shape, fortran_order, dtype, data offset) of a ``.npy`` file, checked against the file size.

    A header can claim any shape; numpy would allocate it before finding the file too short (a
    (2**40, 2**20) header is 4 EiB). Reading the header alone and comparing shape x itemsize with the
    bytes that follow rejects truncated, padded and lying files before anything is allocated.
    """
    import math

    from numpy.lib import format as npy_format

    p = Path(path)
    if not p.is_file():
        raise SteerError(f"{p}: not a readable .npy matrix (file not found)")
    size = p.stat().st_size
    try:
        with open(p, "rb") as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
            offset = f.tell()
    except Exception as e:  # numpy raises ValueError, EOFError, tokenize errors ... for bad headers
        raise SteerError(f"{p}: not a readable .npy matrix (bad header: {first_line(e)[:200]})") from None
    if any(n < 0 for n in shape):
        raise SteerError(f"{p}: not a readable .npy matrix (negative shape {shape} in the header)")
    if dtype.hasobject:
        raise SteerError(f"{p}: not a readable .npy matrix (Python objects would need unpickling; refused)")
    expected = math.prod(shape) * dtype.itemsize
    if size - offset != expected:
        raise SteerError(
            f"{p}: truncated or corrupt .npy file (header says {dtype} {shape} = {expected} bytes, "
            f"the file holds {size - offset})"
        )
    return shape, fortran, dtype, offset


def read_float_matrix(path: str | os.PathLike, *, drop_first_row: bool = False) -> np.ndarray:
    """A finite float32 ``[rows, cols]`` matrix from a ``.npy`` file (``allow_pickle=False``: never unpickles)."""
    p = Path(path)
    shape, _fortran, dtype, _offset = read_npy_header(p)
    if len(shape) != 2 or dtype.kind != "f":  # int/bool/complex: not a direction; casting would hide a wrong file
        raise SteerError(
            f"{p}: expected a float [n_layers, hidden] matrix, got {dtype} {shape}"
            + ("" if dtype.kind == "f" else " (a steering vector holds floats; not cast silently)")
        )
    try:
        arr = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SteerError(f"{p}: not a readable .npy matrix ({e})") from None
    if drop_first_row:
        arr = arr[1:]
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SteerError(f"{p}: no rows left: the matrix has shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise SteerError(f"{p}: the matrix contains non-finite values (nan or inf)")
    with np.errstate(over="ignore"):
        matrix = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise SteerError(f"{p}: values too large for float32 (max |x| {float(np.abs(arr).max()):.3g})")
    return matrix
