"""Reference .npy matrices (io.npy): a malformed header, size or dtype is one line naming the file, never a crash."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from steer_plugin.errors import SteerError
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import assert_one_line_error, run_cli


def _npy_with_header(path: Path, header: str, payload: bytes = b"") -> Path:
    text = header.encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload)
    return path


def _bad_npys(tmp_path: Path) -> dict[str, Path]:
    files = {}
    files["empty"] = tmp_path / "empty.npy"
    files["empty"].write_bytes(b"")
    huge = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1048576), }"
    files["huge"] = _npy_with_header(tmp_path / "huge.npy", huge, b"\0" * 64)
    files["unparsable"] = _npy_with_header(tmp_path / "unparsable.npy", "{'descr': '<f4', 'shape': (3,")
    good = tmp_path / "good.npy"
    np.save(good, np.ones((3, 32), dtype=np.float32))
    files["truncated"] = tmp_path / "truncated.npy"
    files["truncated"].write_bytes(good.read_bytes()[:-8])
    files["negative"] = _npy_with_header(
        tmp_path / "negative.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (-3, 32), }"
    )
    np.save(tmp_path / "bools.npy", np.ones((3, 32), dtype=bool))
    files["bools"] = tmp_path / "bools.npy"
    np.save(tmp_path / "huge_f64.npy", np.full((3, 32), 1e300))
    files["huge_f64"] = tmp_path / "huge_f64.npy"  # finite in float64, inf in float32
    return files


def test_malformed_npy_is_rejected_by_its_header(tmp_path, capsys):
    for name, path in _bad_npys(tmp_path).items():
        with pytest.raises(SteerError, match=str(path.name)):
            SteeringVector.load(path)
        out = tmp_path / f"{name}.safetensors"
        code, _, err = run_cli(["import", path, "--out", out], capsys)
        assert_one_line_error(code, err, "steer import: error:", path.name)
        assert not out.exists()
        # steer check reads the vector before the model: the model is never needed
        code, _, err = run_cli(["check", "--model", "/nonexistent/model", "--vector", path], capsys)
        assert_one_line_error(code, err, "steer check: error:", path.name)
