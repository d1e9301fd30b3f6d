"""Leaderboard rows (study.rows): which results files become rows, which are skipped (and named), and what a row ran."""

from __future__ import annotations

import json

import pytest

from steer_plugin.study.rows import load_rows
from tests.helpers.cli import run_cli
from tests.helpers.study import plain_results
from tests.helpers.sweep import SWEEP_FILE


@pytest.mark.parametrize(
    "doc, reason",
    [
        ({"results": [1, 2], "config": {}}, "'results' is not an object"),
        ({"results": {"t": {"acc,none": 1}}, "config": "notadict"}, "'config' is not an object"),
        ({"results": {"t": [1]}, "config": {}}, "'results' is not an object"),
        ({"results": {}, "config": {"steering": "x"}}, "'config.steering' is not an object"),
        ({"results": {}, "config": {"steering": {"vectors": ["a"], "alphas": [1]}}}, "vectors' is not a list"),
        ({"results": {}, "config": {"steering": {"vectors": [{}], "alphas": ["a"]}}}, "alphas' is not a list"),
        ({"results": {}, "config": {"model_args": [1, 2]}}, "model_args' is neither"),
        ([1, 2, 3], "not harness results"),
    ],
)
def test_table_skips_wrong_shapes_with_a_warning(tmp_path, capsys, doc, reason):
    (tmp_path / "good.json").write_text(json.dumps(plain_results()))
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    rows = load_rows(tmp_path)
    assert [r.source for r in rows] == ["good.json"]
    err = capsys.readouterr().err
    assert f"skipped {tmp_path / 'bad.json'}: " in err and reason in err, err


def test_table_names_unreadable_files_and_ignores_its_own_plan(tmp_path, capsys):
    (tmp_path / "good.json").write_text(json.dumps(plain_results()))
    (tmp_path / "truncated.json").write_text(json.dumps(plain_results())[:30])
    (tmp_path / "latin1.json").write_bytes(b'{"x": "\xff"}')
    (tmp_path / "folder.json").mkdir()  # a directory whose name ends in .json
    (tmp_path / SWEEP_FILE).write_text(json.dumps({"format": "steer-plugin/sweep", "settings": {}, "configs": []}))
    code, out, err = run_cli(["table", tmp_path], capsys)
    assert code == 0 and "tiny" in out
    assert "truncated.json: not readable JSON (JSONDecodeError)" in err
    assert "latin1.json: not readable JSON (UnicodeDecodeError)" in err
    assert SWEEP_FILE not in err and "folder.json" not in err
    (tmp_path / "good.json").unlink()
    code, _, err = run_cli(["table", tmp_path], capsys)
    assert code == 2 and "no harness results JSON" in err and "2 JSON file(s) skipped" in err


def test_a_results_file_steered_by_its_model_args_alone_is_a_steered_row(tmp_path):
    """Without ``config.steering`` (another version, a hand-made file), ``vector=`` in the model_args still says
    what ran: never a second unsteered row."""
    (tmp_path / "base.json").write_text(json.dumps(plain_results()))
    steered = plain_results()
    steered["config"]["model_args"] = "pretrained=tiny,vector=/v/anger-mean.safetensors,alpha=2,layers=0;1"
    (tmp_path / "steered.json").write_text(json.dumps(steered))
    both = plain_results()
    both["config"]["model_args"] = "pretrained=tiny,vector=/v/a.safetensors;/v/b.safetensors"
    (tmp_path / "two.json").write_text(json.dumps(both))
    keys = {r.source: r.key for r in load_rows(tmp_path)}
    assert keys["base.json"].unsteered
    assert (keys["steered.json"].vector, keys["steered.json"].alpha, keys["steered.json"].layers) == (
        "anger-mean",
        2.0,
        "0;1",
    )
    assert keys["two.json"].vector == "a + b" and keys["two.json"].alpha == 1.0  # steered_hf's default alpha
    assert [k.unsteered for k in keys.values()].count(True) == 1


def test_recorded_samples_files_that_are_missing_or_changed_are_said(tmp_path, capsys):
    import hashlib

    text = json.dumps({"doc_id": 0, "filter": "none", "metrics": ["acc"], "acc": 1.0}) + "\n"
    doc = plain_results()
    doc["config"]["samples_sha256"] = {"samples_t.jsonl": hashlib.sha256(text.encode()).hexdigest()}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    for written, said in (
        (None, "samples_t.jsonl is missing"),
        (text + text, "samples_t.jsonl changed since"),
        (text, None),
    ):
        if written is not None:
            (tmp_path / "samples_t.jsonl").write_text(written)
        assert len(load_rows(tmp_path)) == 1  # the row stays
        err = capsys.readouterr().err
        assert (said in err and "its Δ columns may be missing" in err) if said else err == "", err
