"""steer table: leaderboard rows from sweep folders and plain lm_eval results JSON."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from steer_plugin.errors import SteerError
from steer_plugin.study.paired import read_scores
from steer_plugin.study.rows import compare_rows, load_rows
from steer_plugin.study.table import to_csv, to_markdown, write_table
from tests.helpers.cli import ESC, NUL, run_cli
from tests.helpers.cli import no_controls as _no_controls
from tests.helpers.study import plain_results, vector_entry, write_config


def _result(alpha: float, mc2: float, rate: float, vector: bool = True) -> dict:
    steering = (
        {
            "vectors": [
                {
                    "path": "v.safetensors",
                    "sha256": "x",
                    "metadata": {"emotion": "anger", "method": "top_k", "top_k": 20},
                }
            ],
            "alphas": [alpha],
            "layers": "all",
            "positions": "response",
        }
        if vector
        else None
    )
    config = {"model": "steered_hf" if vector else "hf", "model_args": "pretrained=tiny,dtype=float32"}
    if steering:
        config["steering"] = steering
    return {
        "results": {
            "truthfulqa_mc2": {"alias": "truthfulqa_mc2", "acc,none": mc2, "acc_stderr,none": 0.01},
            "steer_emotion_anger": {
                "target_rate,none": rate,
                "target_rate_stderr,none": 0.02,
                "prob_joy,none": 0.1,
                "prob_joy_stderr,none": "N/A",
            },
        },
        "config": config,
    }


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "results.json").write_text(json.dumps(_result(0, 0.40, 0.05, vector=False)))
    for a, mc2, rate in ((0.5, 0.39, 0.2), (1.0, 0.35, 0.6)):
        (tmp_path / f"a{a}").mkdir()
        (tmp_path / f"a{a}" / "results.json").write_text(json.dumps(_result(a, mc2, rate)))
    (tmp_path / "a1.0" / "samples_x.jsonl").write_text("{}\n")
    (tmp_path / "other.json").write_text(json.dumps({"not": "results"}))
    return tmp_path


def test_rows_keys_metrics_and_stderr(folder):
    rows = load_rows(folder)
    assert len(rows) == 3
    by_alpha = {r.key["alpha"]: r for r in rows}
    assert by_alpha[0.0].key["vector"] == "-"
    assert by_alpha[1.0].key["vector"] == "anger (top_k-20)"
    assert by_alpha[1.0].metrics["steer_emotion_anger/target_rate"] == 0.6
    assert by_alpha[1.0].stderr["truthfulqa_mc2/acc"] == 0.01
    assert "steer_emotion_anger/prob_joy" not in by_alpha[1.0].stderr  # "N/A" stderr skipped


def test_markdown_csv_and_plots(folder, tmp_path):
    text, files = write_table(folder, tmp_path / "out" / "board")
    names = sorted(f.name for f in files)
    assert names == ["board.csv", "board.md", "board_tradeoff.png", "board_vs_alpha.png"]
    for f in files:
        assert f.stat().st_size > 0
    md = (tmp_path / "out" / "board.md").read_text()
    assert "| model | vector | alpha | layers | positions |" in md
    assert "0.6000 ± 0.0200" in md and "prob_joy" not in md  # headline columns only
    csv_text = (tmp_path / "out" / "board.csv").read_text()
    assert "steer_emotion_anger/prob_joy" in csv_text  # the CSV has the full profile
    assert text.splitlines()[0].startswith("model")
    rows = load_rows(folder)
    sorted_md = to_markdown(rows, sort="steer_emotion_anger/target_rate").splitlines()
    assert "0.6000" in sorted_md[2]  # highest target rate first
    assert to_csv(rows).count("\n") == 4


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SteerError, match="no harness results"):
        load_rows(tmp_path)
    with pytest.raises(SteerError, match="not found"):
        load_rows(tmp_path / "nope")


def test_control_rows_are_labelled_and_drawn_dashed_in_their_vectors_colour(folder):
    from steer_plugin.study.table import _series_label, _styles

    doc = _result(1.0, 0.38, 0.1)
    doc["config"]["steering"]["vectors"][0] = {
        "path": "controls/v-random-0.safetensors",
        "sha256": "y",
        "metadata": {
            "emotion": "anger",
            "method": "random",
            "top_k": 20,
            "seed": 0,
            "control_of": {"emotion": "anger", "method": "top_k", "top_k": 20, "sha256": "x"},
        },
    }
    (folder / "ctl").mkdir()
    (folder / "ctl" / "results.json").write_text(json.dumps(doc))
    rows = load_rows(folder)
    control = next(r for r in rows if "random" in r.key["vector"])
    assert control.key["vector"] == "anger (top_k-20) [random control 0]"
    assert control.control_of == "anger (top_k-20)"
    vector = next(r for r in rows if r.key["vector"] == "anger (top_k-20)")
    styles = _styles(rows)
    mine, parent = styles[_series_label(control.key)], styles[_series_label(vector.key)]
    assert (mine["linestyle"], parent["linestyle"]) == ("--", "-")
    assert mine["color"] == parent["color"]
    md = to_markdown(rows).splitlines()
    assert md.index(next(x for x in md if "[random control 0]" in x)) > md.index(
        next(x for x in md if "| anger (top_k-20) | 1.0" in x)
    )  # beside (after) the vector it controls
    assert "Δ" not in "".join(md)  # no per-document samples here: no delta columns
    assert "truthfulqa_mc2/acc_delta" in to_csv(rows).splitlines()[0]


def test_row_keys_are_typed_and_a_control_knows_its_vector(folder):
    doc = _result(1.0, 0.38, 0.1)
    doc["config"]["steering"]["vectors"][0]["path"] = "controls/v-random-3.safetensors"
    doc["config"]["steering"]["vectors"][0]["metadata"] = {
        "emotion": "anger",
        "method": "random",
        "seed": 3,
        "control_of": {"emotion": "anger", "method": "top_k", "top_k": 20, "file": "v.safetensors"},
    }
    doc["results"]["side_effects"] = {"kl_budget,none": 0.1, "kl,none": 0.09}
    (folder / "ctl").mkdir()
    (folder / "ctl" / "results.json").write_text(json.dumps(doc))
    keys = {r.source: r.key for r in load_rows(folder)}
    base, vector, control = keys["baseline/results.json"], keys["a1.0/results.json"], keys["ctl/results.json"]
    assert base.unsteered and base.vector is None and base.emotion is None
    assert (vector.vector, vector.emotion, vector.method, vector.alpha) == ("anger (top_k-20)", "anger", "top_k", 1.0)
    assert vector.kl_budget is None and vector.controls is None
    assert (control.emotion, control.method, control.kl_budget) == ("anger", "random", 0.1)
    assert control.control_of == "anger (top_k-20)" and control.controls == vector.series


def test_table_escapes_control_characters(tmp_path, capsys):
    doc = plain_results(f"evil{ESC}]0;title{NUL}\nmodel")
    doc["results"] = {f"task{ESC}[1m": {"acc,none": 0.5}}
    (tmp_path / "r.json").write_text(json.dumps(doc))
    (tmp_path / f"bad{ESC}[2J.json").write_text("{")
    code, out, err = run_cli(["table", tmp_path], capsys)
    assert code == 0
    _no_controls(out)
    _no_controls(err)
    assert "evil\\x1b]0;title\\x00\\nmodel" in out and "task\\x1b[1m/acc" in out
    _no_controls((tmp_path / "leaderboard.md").read_text())
    assert (tmp_path / "leaderboard.md").read_text().count("\n") == 3


# --- inputs that used to pass silently -------------------------------------------------------------------


def _legacy_results() -> dict:
    """A results file as lm-eval 0.3 wrote it: metric names without the ``,none`` filter suffix."""
    return {
        "results": {"hellaswag": {"acc": 0.5, "acc_stderr": 0.01, "acc_norm": 0.6, "acc_norm_stderr": 0.01}},
        "versions": {"hellaswag": 0},
        "config": {"model": "hf-causal", "model_args": "pretrained=tiny", "num_fewshot": 0, "limit": None},
    }


def test_an_lm_eval_03_results_file_is_named_not_read_as_an_empty_row(tmp_path, capsys):
    (tmp_path / "good.json").write_text(json.dumps(plain_results()))
    (tmp_path / "old.json").write_text(json.dumps(_legacy_results()))
    lm_eval_04 = plain_results()
    lm_eval_04["results"]["t"].update(alias="t", name="t", sample_len=12)  # what 0.4 keeps beside its metrics
    (tmp_path / "new.json").write_text(json.dumps(lm_eval_04))
    code, out, err = run_cli(["table", tmp_path], capsys)
    assert code == 0 and "old.json" not in out, out
    assert err.count("steer table:") == 1, err  # one line, for the old file only
    assert f"skipped {tmp_path / 'old.json'}: an lm-eval 0.3-style results file (metric 'hellaswag/acc'" in err, err
    (tmp_path / "good.json").unlink()
    (tmp_path / "new.json").unlink()
    code, _, err = run_cli(["table", tmp_path], capsys)
    assert code == 2 and "0.3-style" in err and "no harness results JSON" in err and "1 JSON file(s) skipped" in err


def _paired_folder(tmp_path):
    rng = np.random.default_rng(0)
    write_config(tmp_path, "baseline", None, 0.0, None, rng)
    write_config(tmp_path, "anger", vector_entry("anger"), 1.0, None, rng)
    return tmp_path


def test_a_document_scored_twice_is_named_and_not_paired(tmp_path, capsys):
    """Δ columns pair documents by doc_id: a samples file with a doc_id twice (under one filter) would count one
    score for both; it is named (file, doc_id) and left out of the pairing, the other tasks keep their Δ."""
    folder = _paired_folder(tmp_path)
    samples = folder / "anger" / "samples_steer_emotion_anger.jsonl"
    lines = samples.read_text().splitlines()
    samples.write_text("\n".join([*lines, lines[3]]) + "\n")  # document 3 again, as a re-run appended it
    rows = load_rows(folder)
    err = capsys.readouterr().err
    assert f"{samples}: doc_id 3 is scored twice (lines 4 and {len(lines) + 1})" in err, err
    assert err.count("\n") == 1, err
    compare_rows(rows, resamples=200)
    anger = next(r for r in rows if r.key.steered)
    assert "steer_emotion_anger" not in anger.samples
    assert not any(m.startswith("steer_emotion_anger/") for m in anger.paired)
    assert "steer_emotion_joy/target_prob" in anger.paired and "truthfulqa_mc2/acc" in anger.paired


def test_one_document_under_several_filters_is_not_a_duplicate(tmp_path, capsys):
    rows = [{"doc_id": 0, "filter": f, "metrics": ["exact_match"], "exact_match": 1.0} for f in ("strict", "flex")]
    (tmp_path / "samples_t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_scores(tmp_path / "samples_t.jsonl") == {
        "exact_match[strict]": {(0, None, None): 1.0},
        "exact_match[flex]": {(0, None, None): 1.0},
    }
    (tmp_path / "samples_t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:1]))
    with pytest.raises(SteerError, match="doc_id 0 is scored twice under filter 'strict' \\(lines 1 and 3\\)"):
        read_scores(tmp_path / "samples_t.jsonl")


def _table_within(seconds: float, folder, capsys) -> tuple[int, str, str]:
    """`steer table FOLDER`, failing the test if it does not return within ``seconds`` (a FIFO would block it)."""
    done: list = []
    worker = threading.Thread(target=lambda: done.append(run_cli(["table", folder], capsys)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():  # release a reader blocked on a FIFO (a writer opening it), then fail
        for fifo in folder.rglob("*"):
            if fifo.is_fifo():
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("steer table blocked on a FIFO or read a device")
    return done[0]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_results_and_samples_that_are_fifos_or_devices_are_named_without_blocking(tmp_path, capsys):
    folder = _paired_folder(tmp_path)
    (folder / "zero").mkdir()
    (folder / "zero" / "results.json").symlink_to("/dev/zero")
    (folder / "fifo").mkdir()
    os.mkfifo(folder / "fifo" / "results.json")
    (folder / "null.json").symlink_to("/dev/null")
    joy = folder / "anger" / "samples_steer_emotion_joy.jsonl"
    joy.unlink()
    joy.symlink_to("/dev/zero")
    mc2 = folder / "baseline" / "samples_truthfulqa_mc2.jsonl"
    mc2.unlink()
    os.mkfifo(mc2)
    code, out, err = _table_within(30, folder, capsys)
    assert code == 0, err
    assert f"skipped {folder / 'zero' / 'results.json'}: is a character device, not a regular file" in err, err
    assert f"skipped {folder / 'fifo' / 'results.json'}: is a FIFO (named pipe), not a regular file" in err, err
    assert f"skipped {folder / 'null.json'}: is a character device" in err, err
    assert f"{joy} is a character device, not a regular file; it is left out of the paired comparisons" in err, err
    assert f"{mc2} is a FIFO (named pipe), not a regular file; it is left out of the paired comparisons" in err, err
    assert err.count("steer table:") == 5, err
    assert "steer_emotion_anger/target_prob Δ" in (folder / "leaderboard.md").read_text()  # the rest still paired
