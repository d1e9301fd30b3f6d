"""`steer run`, the main job, end to end offline on a tiny model, tiny data and a tiny classifier."""

from __future__ import annotations

import json

from steer_plugin.cli import main


def test_run_builds_sweeps_and_tables(tmp_path, tiny_llama_dir, monkeypatch, capsys, shared_or_none):
    from test_classifier import build_goemotions_classifier

    clf = build_goemotions_classifier(tmp_path / "clf")
    monkeypatch.chdir(tmp_path)
    args = [
        "run",
        "--model",
        tiny_llama_dir,
        "--emotion",
        "anger",
        "--data",
        str(__import__("pathlib").Path(__file__).parent / "fixtures" / "goemotions"),
        "--top-k",
        "4",
        "--alphas",
        "0,2",
        "--classifier",
        clf,
        "--limit",
        "3",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / "run"),
    ]
    if shared_or_none:
        args += ["--truthfulqa-dir", str(shared_or_none / "data" / "truthfulqa")]
    else:
        args += ["--tasks", "steer_emotion_anger"]
    assert main(args) == 0
    built = list((tmp_path / "vectors").rglob("anger-top_k-4.safetensors"))
    assert len(built) == 1  # built because it was missing: vectors/<model-slug>/anger-top_k-4.safetensors
    vector = built[0]
    out = capsys.readouterr().out
    assert "target_rate" in out
    board = (tmp_path / "run" / "leaderboard.md").read_text()
    table = board.split("\n\n")[0].splitlines()
    assert len(table) == 5  # header, separator, baseline, alpha 2, its random control (--controls 1 by default)
    assert "| anger (top_k-4) [random control 0] | 2.0 |" in table[4]
    assert "steer_emotion_anger/target_prob Δ" in table[0]  # per-document scores kept: deltas vs the baseline
    assert "| side_effects/kl | side_effects/ppl |" in board  # side effects on the fixture's neutral test text
    results = sorted((tmp_path / "run").glob("*/results.json"))
    assert len(results) == 3
    assert (tmp_path / "run" / "controls" / "anger-top_k-4-random-0.safetensors").exists()
    steered = [json.loads(p.read_text()) for p in results if "baseline" not in str(p) and "random" not in str(p)][0]
    assert steered["config"]["steering"]["positions"] == "response"
    assert steered["config"]["steering"]["layers"] == "1"  # the default, middle: the middle third of 3 blocks
    assert "steer_emotion_anger" in steered["results"]
    if shared_or_none:
        assert "truthfulqa_local_mc2" in steered["results"]
        assert (tmp_path / "run" / "leaderboard_tradeoff.png").exists()
    summary = (tmp_path / "run" / "summary.md").read_text()  # what steering did, also printed
    assert "Toward anger at alpha 2 (KL " in summary and "anger probability " in summary
    assert "random control " in summary and summary.strip() in out
    assert (tmp_path / "run" / "dose_response.png").exists() and (tmp_path / "run" / "leakage.csv").exists()
    # a second run reuses the vector and every finished configuration
    mtime = vector.stat().st_mtime_ns
    assert main(args) == 0
    assert vector.stat().st_mtime_ns == mtime
