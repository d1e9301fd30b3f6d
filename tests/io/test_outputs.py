"""Output paths, permissions and leftovers of the commands that write.

A bad ``--out`` (an existing folder where a file goes, a file where a folder goes, a read-only folder)
is a one-line error with exit code 2 before any model work; outputs follow the umask (safetensors
too); a writer killed mid-write leaves a temp file that the next write to the same target removes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import steer_plugin
from steer_plugin.vectors.stats import HiddenStateStats
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.tiny import save_tiny_stats

FIXTURE = Path(__file__).parents[1] / "fixtures" / "goemotions"
NO_MODEL = "/nonexistent/model-that-must-not-be-loaded"


@pytest.fixture()
def stats_file(tmp_path) -> Path:
    return save_tiny_stats(tmp_path / "stats.safetensors")


@pytest.fixture()
def vector_file(tmp_path) -> Path:
    path = tmp_path / "v.safetensors"
    SteeringVector(torch.ones(3, 32), {"emotion": "anger"}).save(path)
    return path


def _results(folder: Path) -> Path:
    (folder / "a").mkdir(parents=True)
    doc = {"results": {"t": {"acc,none": 0.5}}, "config": {"model": "hf", "model_args": "pretrained=x"}}
    (folder / "a" / "results.json").write_text(json.dumps(doc))
    return folder


# --- an existing folder where a file goes, a file where a folder goes ------------------------------


def test_out_naming_a_folder_is_a_one_line_error(tmp_path, capsys, stats_file, vector_file):
    taken = tmp_path / "taken"
    taken.mkdir()
    np_file = tmp_path / "ref.npy"
    np.save(np_file, np.ones((3, 32), dtype=np.float32))
    cases = [
        ["build", "--stats", stats_file, "--out", taken],
        ["data", "--emotion", "anger", "--data", FIXTURE, "--out", taken],
        ["export", vector_file, "--format", "lm-eval-steered", "--out", taken],
        ["export", vector_file, "--format", "gguf", "--out", taken],
        ["import", np_file, "--out", taken],
        ["table", _results(tmp_path / "res"), "--out", taken / "x"],  # fine: taken/x.md is a file path
    ]
    for argv in cases[:-1]:
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, "is a folder")
    (taken / "x.md").mkdir()
    code, _, err = run_cli(cases[-1], capsys)
    assert_one_line_error(code, err, "steer table: error:", "x.md is a folder")
    assert sorted(p.name for p in taken.iterdir()) == ["x.md"]  # nothing was written anywhere


def test_commands_that_load_a_model_check_outputs_first(tmp_path, capsys, vector_file):
    """The model path does not exist: the error must be about --out, found before any model work."""
    taken = tmp_path / "taken"
    taken.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    model = ["--model", NO_MODEL]
    cases = [
        (["record", *model, "--emotion", "anger", "--data", FIXTURE, "--out", taken], "--out"),
        (
            [
                "record",
                *model,
                "--emotion",
                "anger",
                "--data",
                FIXTURE,
                "--out",
                tmp_path / "s.safetensors",
                "--save-activations",
                a_file,
            ],
            "--save-activations",
        ),
        (["build", *model, "--emotion", "anger", "--data", FIXTURE, "--out", taken], "--out"),
        (["build", *model, "--emotion", "anger", "--data", FIXTURE, "--save-stats", taken], "--save-stats"),
        (["generate", *model, "--vector", vector_file, "--json-out", taken], "--json-out"),
        (["sweep", *model, "--vector", vector_file, "--alphas", "0,1", "--tasks", "x", "--out", a_file], "--out"),
        (["run", *model, "--emotion", "anger", "--vector", vector_file, "--tasks", "x", "--out", a_file], "--out"),
        (["analyze", tmp_path / "missing-stats.safetensors", "--out", a_file], "--out"),
    ]
    for argv, flag in cases:
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, flag, "is an existing file" if "a_file" in err else "is a folder")
    assert a_file.read_text() == "x"


def test_default_vector_path_is_checked_before_recording(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vectors" / "model-that-must-not-be-loaded" / "anger-mean.safetensors").mkdir(parents=True)
    code, _, err = run_cli(["build", "--model", NO_MODEL, "--emotion", "anger", "--data", FIXTURE], capsys)
    assert_one_line_error(code, err, "--out (default)", "anger-mean.safetensors is a folder")


def test_sweep_leaderboard_outputs_are_checked_before_the_model_loads(tmp_path, capsys, vector_file):
    out = tmp_path / "sweep"
    (out / "leaderboard.csv").mkdir(parents=True)
    code, _, err = run_cli(
        ["sweep", "--model", NO_MODEL, "--vector", vector_file, "--alphas", "1", "--tasks", "x", "--out", out], capsys
    )
    assert_one_line_error(code, err, "leaderboard.csv is a folder")


def test_parent_that_is_a_file(tmp_path, capsys, stats_file):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = run_cli(["build", "--stats", stats_file, "--out", a_file / "sub" / "v.safetensors"], capsys)
    assert_one_line_error(code, err, "is a file, not a folder")


# --- an output that names an input ------------------------------------------------------------------


def _same_file_names(path: Path, tmp_path: Path) -> list[Path]:
    """``path`` itself, a hard link to it and a symbolic link to it: three names of one input."""
    hard, soft = tmp_path / f"hard-{path.name}", tmp_path / f"soft-{path.name}"
    os.link(path, hard)
    soft.symlink_to(path)
    return [path, hard, soft]


def test_an_output_that_names_an_input_is_refused_before_any_work(tmp_path, capsys, stats_file, vector_file):
    """Under any name (the path, a hard link, a symbolic link) an output that is an input would replace what
    the command reads: a one-line error naming the input, and every input left as it was."""
    npy = tmp_path / "ref.npy"
    np.save(npy, np.ones((3, 32), dtype=np.float32))
    data = tmp_path / "goemotions"
    shutil.copytree(FIXTURE, data)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    inputs = [stats_file, vector_file, npy, data / "train.tsv", model / "config.json"]
    before = {p: p.read_bytes() for p in inputs}
    cases = []
    for out in _same_file_names(vector_file, tmp_path):
        cases += [
            ["export", vector_file, "--format", "gguf", "--out", out],
            ["export", vector_file, "--format", "lm-eval-steered", "--out", out],
            ["build", "--method", "random", "--like", vector_file, "--out", out],
            ["generate", "--model", NO_MODEL, "--vector", vector_file, "--json-out", out],
        ]
    cases += [["import", npy, "--out", out] for out in _same_file_names(npy, tmp_path)]
    cases += [["build", "--stats", stats_file, "--out", out] for out in _same_file_names(stats_file, tmp_path)]
    cases += [
        ["build", "--stats", stats_file, "--emotion", "anger", "--out", tmp_path / "v2.safetensors",
         "--save-stats", stats_file],
        ["data", "--emotion", "anger", "--data", data, "--out", data / "train.tsv"],
        ["record", "--model", NO_MODEL, "--emotion", "anger", "--data", data, "--out", data / "emotions.txt"],
        ["build", "--model", model, "--emotion", "anger", "--data", data, "--out", model / "config.json"],
    ]  # fmt: skip
    for argv in cases:
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, "is an input of this command", "give another path")
    assert {p: p.read_bytes() for p in inputs} == before
    assert not (tmp_path / "v2.safetensors").exists()


def test_an_output_beside_its_inputs_is_still_written(tmp_path, capsys, vector_file):
    """Only the inputs themselves are refused: a new file in the same folder is an ordinary output."""
    code, _, err = run_cli(["export", vector_file, "--format", "gguf", "--out", tmp_path / "v.gguf"], capsys)
    assert code == 0, err
    assert (tmp_path / "v.gguf").is_file()


# --- read-only folders -----------------------------------------------------------------------------

_CHILD = """
import contextlib, io, json, sys
from steer_plugin.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    except BaseException as e:
        rc = f"{type(e).__name__}: {e}"
    out.append([rc, err.getvalue()])
print(json.dumps(out))
"""


def _run_without_write_permission(argvs: list[list[str]]) -> list[tuple[object, str]]:
    """Run CLI commands in a process that permission bits apply to (root ignores them: it runs
    without CAP_DAC_OVERRIDE, through setpriv)."""
    cmd = [sys.executable, "-c", _CHILD, json.dumps(argvs)]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: permission bits cannot be tested")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]
    env = {**os.environ, "PYTHONPATH": str(Path(steer_plugin.__file__).resolve().parents[1])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [tuple(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


@pytest.mark.slow  # the commands run in a child process without write permission
def test_read_only_folder_is_a_one_line_error_before_the_model(tmp_path, stats_file):
    ro = tmp_path / "ro"
    ro.mkdir()
    results = _results(ro / "results")
    ro.chmod(0o555)
    (ro / "results").chmod(0o555)
    try:
        argvs = [
            ["build", "--stats", str(stats_file), "--out", str(ro / "v.safetensors")],
            ["build", "--stats", str(stats_file), "--out", str(ro / "new" / "v.safetensors")],
            ["record", "--model", NO_MODEL, "--emotion", "anger", "--data", str(FIXTURE), "--out", str(ro / "s")],
            ["data", "--emotion", "anger", "--data", str(FIXTURE), "--out", str(ro / "texts.jsonl")],
            ["table", str(results)],
            [
                "sweep",
                "--model",
                NO_MODEL,
                "--vector",
                "v.safetensors",
                "--alphas",
                "1",
                "--tasks",
                "x",
                "--out",
                str(ro / "sweep"),
            ],
        ]
        for (rc, err), argv in zip(_run_without_write_permission(argvs), argvs):
            assert rc == 2, (argv, rc, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and "cannot write in" in lines[0] and str(ro) in lines[0], (argv, err)
        assert sorted(p.name for p in ro.iterdir()) == ["results"]
    finally:
        ro.chmod(0o755)
        (ro / "results").chmod(0o755)


# --- names near the file system's limit, folders that cannot be searched -------------------------------


def test_an_output_name_near_the_limit_is_written_and_one_past_it_is_one_line(tmp_path, capsys, vector_file):
    """A valid 252-byte --out failed at write time: its temp file's name was longer than 255 bytes."""
    long = tmp_path / ("x" * 247 + ".gguf")  # 252 bytes
    code, _, err = run_cli(["export", vector_file, "--format", "gguf", "--out", long], capsys)
    assert code == 0, err
    assert long.is_file() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    code, _, err = run_cli(["export", vector_file, "--format", "gguf", "--out", tmp_path / ("y" * 300)], capsys)
    assert_one_line_error(code, err, "bytes, longer than the 255 the file system takes")
    code, _, err = run_cli(["export", vector_file, "--format", "gguf", "--out", tmp_path / ("z" * 300) / "v"], capsys)
    assert_one_line_error(code, err, "bytes, longer than the 255 the file system takes")


def test_an_output_in_a_folder_without_search_permission_is_one_line(tmp_path, vector_file):
    closed = tmp_path / "closed"
    closed.mkdir()
    (closed / "sub").mkdir()
    closed.chmod(0o600)  # readable, not searchable
    try:
        results = _run_without_write_permission(
            [["export", str(vector_file), "--format", "gguf", "--out", str(closed / "sub" / "v.gguf")],
             ["analyze", str(vector_file), "--out", str(closed / "sub")]]
        )  # fmt: skip
    finally:
        closed.chmod(0o700)
    for rc, err in results:
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (rc, err)
        assert "cannot look into its folder (permission denied)" in err, err


# --- permissions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_safetensors_outputs_follow_the_umask(tmp_path, umask, mode, stats_file):
    old = os.umask(umask)
    try:
        SteeringVector(torch.ones(3, 32)).save(tmp_path / "v.safetensors")
        HiddenStateStats.load(stats_file).save(tmp_path / "s.safetensors")
        from steer_plugin.io.atomic import write_text_atomic

        write_text_atomic(tmp_path / "t.json", "{}")
    finally:
        os.umask(old)
    for name in ("v.safetensors", "s.safetensors", "t.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


# --- temp files of killed writers --------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temp_files_are_removed_on_the_next_write(tmp_path):
    from steer_plugin.io.atomic import _HOST, STALE_AFTER_S, atomic_path

    target = tmp_path / "v.safetensors"
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f".v.safetensors.{_dead_pid()}-{_HOST}.abcdefgh.tmp",  # kill -9 of a writer on this host
            "alive": f".v.safetensors.{alive.pid}-{_HOST}.bcdefghi.tmp",  # a concurrent writer: keep
            "other_host": f".v.safetensors.{_dead_pid()}-elsewhere.cdefghij.tmp",  # cannot ask: keep while recent
            "old_format_recent": ".v.safetensors.defghijk.tmp",  # an older version's writer, maybe running
            "old_format_old": ".v.safetensors.efghijkl.tmp",  # ... and one from days ago
            "other_target": f".w.safetensors.{_dead_pid()}-{_HOST}.fghijklm.tmp",  # not this target's
            "not_ours": ".v.safetensors.notes.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        days_ago = time.time() - STALE_AFTER_S - 3600
        os.utime(tmp_path / names["old_format_old"], (days_ago, days_ago))
        SteeringVector(torch.ones(3, 32)).save(target)
        left = {p.name for p in tmp_path.iterdir()}
        assert names["dead"] not in left and names["old_format_old"] not in left
        for keep in ("alive", "other_host", "old_format_recent", "other_target", "not_ours"):
            assert names[keep] in left, keep
        # our own temp file names carry our pid and host, and are gone after the write
        with atomic_path(target) as tmp:
            assert tmp.name.startswith(f".v.safetensors.{os.getpid()}-{_HOST}.")
            tmp.write_bytes(b"x")
        assert target.read_bytes() == b"x" and not (tmp_path / tmp.name).exists()
    finally:
        alive.kill()
        alive.wait()


def test_saved_activations_use_cleanable_temp_names(tmp_path, tiny_llama_dir, capsys):
    """--save-activations wrote `anger.npy.partial`: two concurrent recordings shared it, a kill left it."""
    from steer_plugin.io.atomic import _HOST

    acts = tmp_path / "acts"
    acts.mkdir()
    stale = acts / f".anger.npy.{_dead_pid()}-{_HOST}.abcdefgh.tmp"
    stale.write_bytes(b"partial")
    argv = ["record", "--model", tiny_llama_dir, "--emotion", "anger", "--data", FIXTURE, "--no-progress"]
    argv += ["--out", tmp_path / "s.safetensors", "--save-activations", acts, "--activation-dtype", "float32"]
    assert run_cli(argv, capsys)[0] == 0
    assert sorted(p.name for p in acts.iterdir()) == ["anger.npy", "neutral.npy"]
