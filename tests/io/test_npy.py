"""Reference .npy matrices (io.npy): a malformed header, size or dtype is one line naming the file, never a crash."""

from __future__ import annotations

import pytest

from steer_plugin.errors import SteerError
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.npy import bad_npys


def test_malformed_npy_is_rejected_by_its_header(tmp_path, capsys):
    for name, path in bad_npys(tmp_path).items():
        with pytest.raises(SteerError, match=str(path.name)):
            SteeringVector.load(path)
        out = tmp_path / f"{name}.safetensors"
        code, _, err = run_cli(["import", path, "--out", out], capsys)
        assert_one_line_error(code, err, "steer import: error:", path.name)
        assert not out.exists()
        # steer check reads the vector before the model: the model is never needed
        code, _, err = run_cli(["check", "--model", "/nonexistent/model", "--vector", path], capsys)
        assert_one_line_error(code, err, "steer check: error:", path.name)
