"""The `steer` command line (cli): bad arguments are one line, before any model work; output from files is escaped."""

from __future__ import annotations

import pytest
import torch
from helpers_cli import CSI, ESC, NUL, assert_one_line_error, run_cli
from helpers_cli import no_controls as _no_controls

from steer_plugin.cli import main
from steer_plugin.vectors.vector import SteeringVector


def test_cli_steering_arguments_are_checked_before_the_model_loads(tmp_path, vector_file, stats_file_for_build, capsys):
    """Neighbours of alpha=abc: every command that steers checks its steering arguments before loading."""
    no_model = ["--model", "/nonexistent/model"]
    sweep = ["sweep", *no_model, "--alphas", "1", "--tasks", "x", "--out", tmp_path / "s"]
    cases = [
        (["check", *no_model, "--vector", vector_file, "--alpha=nan"], "--alpha must be a finite number"),
        (["check", *no_model, "--vector", vector_file, "--layers", "x"], "bad layer spec 'x'"),
        (["generate", *no_model, "--vector", vector_file, "--layers", "1-"], "bad layer spec '1-'"),
        ([*sweep, "--vector", vector_file, "--layers", "abc"], "bad layer spec 'abc'"),
        ([*sweep, "--vector", vector_file, "--positions", "all,prompt"], "unknown positions 'prompt'"),
        ([*sweep, "--vector", tmp_path / "missing.safetensors"], "not found"),
        (["build", "--stats", stats_file_for_build, "--scale", "inf", "--out", tmp_path / "v"], "--scale must be"),
    ]
    for argv, needle in cases:
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, needle)
    assert not (tmp_path / "s").exists()
    with pytest.raises(SystemExit) as e:  # argparse's own usage error
        main(["generate", *no_model, "--vector", vector_file, "--alphas", "0,nan"])
    assert e.value.code == 2 and "expected finite numbers" in capsys.readouterr().err


def test_list_escapes_control_characters(tmp_path, capsys):
    root = tmp_path / "vectors"
    meta = {"emotion": f"an{ESC}[2J{NUL}ger\nfake row", "model": f"m{CSI}31m\u202eodel", "method": "mean"}
    SteeringVector(torch.ones(3, 32), meta).save(root / "a.safetensors")
    code, out, _ = run_cli(["list", root], capsys)
    assert code == 0
    _no_controls(out)
    lines = out.strip().splitlines()
    assert len(lines) == 3  # header, rule, one vector: the newline did not make a row
    assert "an\\x1b[2J\\x00ger\\nfake row" in lines[2] and "m\\x9b31m\\u202eodel" in lines[2]
