"""steer table: leaderboard rows from sweep folders and plain lm_eval results JSON."""

from __future__ import annotations

import json

import pytest

from steer_plugin.errors import SteerError
from steer_plugin.study.rows import load_rows
from steer_plugin.study.table import to_csv, to_markdown, write_table
from tests.helpers.cli import ESC, NUL, run_cli
from tests.helpers.cli import no_controls as _no_controls
from tests.helpers.study import plain_results


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
