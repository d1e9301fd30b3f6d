"""What the atomic writers may replace, and what a full disk leaves behind.

An output path that exists and is not a regular file (a device node, a FIFO, a symbolic link such as
/dev/stdout) is refused with one line: the rename into place would replace it by a regular file. A full
disk (ENOSPC, simulated where the bytes reach the OS, see tests/helpers/disk.py) is one line with exit code 2 and
leaves no temp file and no partial set of outputs: a multi-file writer keeps the previous set whole.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from steer_plugin.errors import SteerError
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.disk import NO_SPACE, full_disk
from tests.helpers.sweep import sweep_options
from tests.helpers.tiny import save_tiny_stats

FIXTURE = Path(__file__).parents[1] / "fixtures" / "goemotions"
# fixtures from conftest: lm (a tiny Llama), task_dir (a 4-question task)


@pytest.fixture()
def vector_file(tmp_path) -> Path:
    path = tmp_path / "in" / "v.safetensors"
    SteeringVector(torch.ones(3, 32), {"emotion": "anger"}).save(path)
    return path


def _tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder``: file contents, or what a link / other node is."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        mode = os.lstat(p).st_mode
        if stat.S_ISLNK(mode):
            out[str(p.relative_to(folder))] = f"link -> {os.readlink(p)}"
        elif stat.S_ISREG(mode):
            out[str(p.relative_to(folder))] = p.read_bytes()
        elif not stat.S_ISDIR(mode):
            out[str(p.relative_to(folder))] = f"node {stat.S_IFMT(mode):o}"
    return out


def _results(folder: Path, acc: float) -> Path:
    """A baseline and a steered results JSON: `steer table` writes md, csv and the vs-alpha plot."""
    steering = {"vectors": [{"path": "v", "metadata": {"emotion": "anger", "method": "mean"}}], "alphas": [1.0]}
    for name, config in (("base", {}), ("steered", {"steering": steering})):
        doc = {"results": {"t": {"acc,none": acc}}, "config": {"model": "hf", "model_args": "pretrained=x", **config}}
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "results.json").write_text(json.dumps(doc))
    return folder


# --- outputs that are not regular files --------------------------------------------------------------


def _not_regular_files(tmp_path: Path) -> dict[str, Path]:
    """A FIFO, symbolic links (to a file we own, to /dev/stdout) and, where allowed, a private /dev/null."""
    special = tmp_path / "special"
    special.mkdir()
    os.mkfifo(special / "fifo")
    (special / "real.txt").write_text("keep")
    (special / "link").symlink_to(special / "real.txt")
    (special / "stdout").symlink_to("/dev/stdout")
    nodes = {name: special / name for name in ("fifo", "link", "stdout")}
    try:
        os.mknod(special / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        nodes["null"] = special / "null"
    except (PermissionError, OSError):
        pass  # not root (or no CAP_MKNOD): the FIFO stands for every non-regular node
    return nodes


def test_outputs_that_are_not_regular_files_are_refused(tmp_path, capsys, vector_file):
    stats = save_tiny_stats(tmp_path / "in" / "stats.safetensors")
    npy = tmp_path / "in" / "ref.npy"
    np.save(npy, np.ones((3, 32), dtype=np.float32))
    nodes = _not_regular_files(tmp_path)
    before = _tree(tmp_path / "special")
    for kind, node in nodes.items():
        commands = [
            ["data", "--emotion", "anger", "--data", FIXTURE, "--out", node],
            ["build", "--stats", stats, "--out", node],
            ["export", vector_file, "--format", "lm-eval-steered", "--out", node],
            ["export", vector_file, "--format", "gguf", "--out", node],
            ["import", npy, "--out", node],
        ]
        for argv in commands:
            code, _, err = run_cli(argv, capsys)
            why = "symbolic link" if kind in ("link", "stdout") else "not a regular file"
            assert_one_line_error(code, err, str(node), why)
    assert _tree(tmp_path / "special") == before  # every node, link and link target as it was


def test_table_refuses_a_fifo_among_its_outputs(tmp_path, capsys):
    results = _results(tmp_path / "res", 0.5)
    os.mkfifo(results / "leaderboard_vs_alpha.png")
    code, _, err = run_cli(["table", results], capsys)
    assert_one_line_error(code, err, "leaderboard_vs_alpha.png", "not a regular file")
    assert stat.S_ISFIFO(os.lstat(results / "leaderboard_vs_alpha.png").st_mode)
    assert not (results / "leaderboard.md").exists()


def test_atomic_writers_refuse_links_and_nodes(tmp_path):
    from steer_plugin.io.atomic import write_bytes_atomic, write_text_atomic

    nodes = _not_regular_files(tmp_path)
    before = _tree(tmp_path / "special")
    for node in nodes.values():
        with pytest.raises(SteerError, match="symbolic link|not a regular file"):
            write_text_atomic(node, "x")
        with pytest.raises(SteerError, match="symbolic link|not a regular file"):
            write_bytes_atomic(node, b"x")
    assert _tree(tmp_path / "special") == before


# --- a full disk ---------------------------------------------------------------------------------------


def test_full_disk_in_table_keeps_the_previous_set(tmp_path, capsys, monkeypatch):
    results = _results(tmp_path / "res", 0.5)
    assert run_cli(["table", results], capsys)[0] == 0
    old = _tree(results)
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard_vs_alpha.png"} <= set(old)
    _results(results, 0.75)  # new numbers; the plot cannot be written
    old = _tree(results)
    full_disk(monkeypatch, "_vs_alpha.png")
    code, _, err = run_cli(["table", results], capsys)
    assert_one_line_error(code, err, "steer table: error:", "leaderboard_vs_alpha.png", NO_SPACE)
    assert _tree(results) == old  # md and csv not replaced on their own; no temp files


@pytest.mark.parametrize("fmt", ["lm-eval-steered", "gguf"])
def test_full_disk_in_export(tmp_path, capsys, monkeypatch, vector_file, fmt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.bin").write_bytes(b"old")
    full_disk(monkeypatch)
    code, _, err = run_cli(["export", vector_file, "--format", fmt, "--out", out / "old.bin"], capsys)
    assert_one_line_error(code, err, "steer export: error:", "old.bin", NO_SPACE)
    assert _tree(out) == {"old.bin": b"old"}


def test_full_disk_in_build_import_and_data(tmp_path, capsys, monkeypatch):
    stats = save_tiny_stats(tmp_path / "stats.safetensors")
    npy = tmp_path / "ref.npy"
    np.save(npy, np.ones((3, 32), dtype=np.float32))
    out = tmp_path / "out"
    out.mkdir()
    full_disk(monkeypatch)
    for argv in (
        ["build", "--stats", stats, "--out", out / "v.safetensors"],
        ["import", npy, "--out", out / "v.safetensors"],
        ["data", "--emotion", "anger", "--data", FIXTURE, "--out", out / "texts.jsonl"],
    ):
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, f"steer {argv[0]}: error:", NO_SPACE)
    assert _tree(out) == {}


def test_full_disk_in_analyze_leaves_no_outputs(tmp_path, capsys, monkeypatch):
    stats = save_tiny_stats(tmp_path / "stats.safetensors")
    full_disk(monkeypatch, "heatmap.png")
    code, _, err = run_cli(["analyze", stats, "--out", tmp_path / "analysis"], capsys)
    assert_one_line_error(code, err, "steer analyze: error:", "heatmap.png", NO_SPACE)
    assert not (tmp_path / "analysis").exists()


def test_write_files_atomic_is_all_or_nothing(tmp_path, monkeypatch):
    """Staging fails: the previous set stays; a rename fails: the files already renamed are removed."""
    from steer_plugin.io import atomic

    (tmp_path / "a.md").write_text("old a")
    (tmp_path / "b.csv").write_text("old b")
    full_disk(monkeypatch, "b.csv")
    with pytest.raises(SteerError, match=f"b.csv: {NO_SPACE}"):
        atomic.write_files_atomic({tmp_path / "a.md": "new a", tmp_path / "b.csv": "new b"})
    assert _tree(tmp_path) == {"a.md": b"old a", "b.csv": b"old b"}
    monkeypatch.undo()
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("b.csv"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(SteerError, match="b.csv"):
        atomic.write_files_atomic({tmp_path / "a.md": "new a", tmp_path / "b.csv": "new b", tmp_path / "c": "c"})
    assert _tree(tmp_path) == {"b.csv": b"old b"}  # never a new a.md beside an old b.csv


def test_full_disk_in_a_sweep_is_one_error_and_no_half_configuration(
    lm,
    task_dir,
    tiny_llama_dir,
    tmp_path,
    monkeypatch,
):
    from steer_plugin.harness.engine import HFEngine
    from steer_plugin.study.plan import SweepPlan
    from steer_plugin.study.sweep import run_sweep

    vec = tmp_path / "anger-mean.safetensors"
    SteeringVector(torch.ones(3, 32) * 0.1, {"emotion": "anger", "method": "mean"}).save(vec)
    plan = SweepPlan.grid([str(vec)], [0, 1.0], ["all"], ["all"])
    out = tmp_path / "sweep"
    full_disk(monkeypatch, "results.json")
    with pytest.raises(SteerError, match=f"results.json: {NO_SPACE}"):
        run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=False)
    configs = [d for d in out.iterdir() if d.is_dir()]
    assert all(not any(d.iterdir()) or (d / "results.json").is_file() for d in configs), _tree(out)
    assert not [p for p in out.rglob("*.tmp")]


def test_full_disk_for_saved_activations_is_an_error_before_recording(tmp_path, capsys, monkeypatch, tiny_llama_dir):
    """The activation files are memory-mapped: on a full disk their writes would kill the process with
    SIGBUS mid-recording (measured on a full tmpfs). Their space is reserved first: ENOSPC there is an error."""
    from steer_plugin.io import atomic

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(atomic.os, "posix_fallocate", no_space)
    acts = tmp_path / "acts"
    argv = ["record", "--model", tiny_llama_dir, "--emotion", "anger", "--data", FIXTURE, "--no-progress"]
    argv += ["--out", tmp_path / "s.safetensors", "--save-activations", acts]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert_one_line_error(code, err.strip().splitlines()[-1], "steer record: error:", "acts/", ".npy", NO_SPACE)
    assert _tree(tmp_path) == {}
