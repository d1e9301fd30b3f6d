"""`steer record` under torchrun (2 CPU processes, gloo): each rank records a shard, the statistics are
merged across ranks and must equal a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from steer_plugin.cli import main
from steer_plugin.vectors.stats import HiddenStateStats

FIXTURE = Path(__file__).parents[1] / "fixtures" / "goemotions"
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two torchrun worker processes
def test_torchrun_two_processes_equal_single_process(tiny_llama_dir, tmp_path):
    pytest.importorskip("torch.distributed.run")
    single, dist_out = tmp_path / "single.safetensors", tmp_path / "dist.safetensors"
    args = [
        "record",
        "--model",
        tiny_llama_dir,
        "--data",
        str(FIXTURE),
        "--emotion",
        "all",
        "--no-progress",
        "--batch-size",
        "3",
    ]
    assert main([*args, "--out", str(single)]) == 0

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "-m",
        "steer_plugin",
        *args,
        "--out",
        str(dist_out),
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # only rank 0 writes

    a, b = HiddenStateStats.load(single), HiddenStateStats.load(dist_out)
    assert b.metadata["world_size"] == 2 and a.metadata["world_size"] == 1
    assert a.counts() == b.counts() and b.metadata["counts"] == a.metadata["counts"]
    assert a.get("anger").count == 4 and len(a.classes) > 10
    for c in a.classes:
        np.testing.assert_allclose(b.get(c).mean.numpy(), a.get(c).mean.numpy(), atol=1e-6, rtol=0, err_msg=c)
        np.testing.assert_allclose(b.get(c).m2.numpy(), a.get(c).m2.numpy(), atol=1e-6, rtol=1e-6, err_msg=c)
    drop = {"world_size"}
    assert {k: v for k, v in a.metadata.items() if k not in drop} == {
        k: v for k, v in b.metadata.items() if k not in drop
    }


def test_no_process_group_without_launcher(monkeypatch):
    import torch.distributed as dist

    from steer_plugin.vectors.record import init_distributed_if_launched

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed_if_launched() is False
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed_if_launched() is False
    assert not dist.is_initialized()
