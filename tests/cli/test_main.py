"""`steer` itself: what goes wrong outside a command (standard output that cannot be written) is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import steer_plugin


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_stdout_on_a_full_device_is_one_line():
    env = {**os.environ, "PYTHONPATH": str(Path(steer_plugin.__file__).resolve().parents[1])}
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "steer_plugin", "tasks-dir"], stdout=full, stderr=subprocess.PIPE, text=True,
            env=env, timeout=120,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "steer tasks-dir: error: cannot write to standard output: No space left on device"
