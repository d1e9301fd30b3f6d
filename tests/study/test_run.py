"""`steer run`, the main job, end to end offline on a tiny model, tiny data and a tiny classifier."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import steer_plugin
from steer_plugin.cli import main
from steer_plugin.data.goemotions import LABELS
from steer_plugin.vectors.vector import SteeringVector, default_vector_path
from tests.helpers.tiny import write_goemotions_every_label

SIZES = {"anger": 5, "neutral": 8}  # every other label: 3 texts (neutral: enough for 3 principal components)


def test_run_builds_sweeps_and_tables(tmp_path, tiny_chat_llama_dir, monkeypatch, capsys, shared_or_none):
    from tests.helpers.classifier import build_goemotions_classifier

    clf = build_goemotions_classifier(tmp_path / "clf")
    monkeypatch.chdir(tmp_path)
    args = [
        "run",
        "--model",
        tiny_chat_llama_dir,
        "--emotion",
        "anger",
        "--data",
        str(write_goemotions_every_label(tmp_path / "goemotions", SIZES)),
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
    built = list((tmp_path / "vectors").rglob("*.safetensors"))
    # built because it was missing, with the default recipe: vectors/<model-slug>/anger-mean-emotions-npc3.safetensors
    assert [p.name for p in built] == ["anger-mean-emotions-npc3.safetensors"]
    vector = built[0]
    meta = SteeringVector.load(vector).metadata
    assert (meta["method"], meta["centre"], meta["neutral_pcs"]) == ("mean", "emotions", 3)
    assert set(meta["counts"]) == set(LABELS)  # the 27 emotions' means (and neutral's components) recorded
    out = capsys.readouterr().out
    assert "target_rate" in out
    board = (tmp_path / "run" / "leaderboard.md").read_text()
    table = board.split("\n\n")[0].splitlines()
    # header, separator, baseline, the prompting reference, alpha 2, its random control (--controls 1 by default)
    assert len(table) == 6
    assert "| (asking for anger) | 0.0 |" in table[3]
    assert "| anger (mean-emotions-npc3) [random control 0] | 2.0 |" in table[5]
    # per-document scores kept: Δ columns, the robust emotion metric and the degenerate rate among them
    task = "steer_emotion_anger"
    assert f"{task}/target_prob Δ" in table[0]
    assert f"{task}/target_prob_fluent Δ" in table[0] and f"{task}/degenerate_rate Δ" in table[0]
    assert "| side_effects/kl | side_effects/ppl |" in board  # side effects on the fixture's neutral test text
    results = sorted((tmp_path / "run").glob("*/results.json"))
    assert len(results) == 4
    prompted = json.loads((tmp_path / "run" / "prompted_anger" / "results.json").read_text())
    assert prompted["config"]["prompting"]["emotion"] == "anger"
    assert list(prompted["results"]) == [task, "side_effects"]  # asking is measured on the emotion task only
    assert prompted["results"]["side_effects"]["kl,none"] > 0  # its own side effects, on the same neutral texts
    from steer_plugin.study.rows import compare_rows, load_rows

    rows = load_rows(tmp_path / "run")
    compare_rows(rows, resamples=1000)
    (asking,) = [r for r in rows if r.key.prompted == "anger"]
    assert f"{task}/target_prob" in asking.paired and f"{task}/{'degenerate_rate'}" in asking.paired  # vs the baseline
    assert (tmp_path / "run" / "controls" / "anger-mean-emotions-npc3-random-0.safetensors").exists()
    steered = [json.loads(p.read_text()) for p in results if "baseline" not in str(p) and "random" not in str(p)][0]
    assert steered["config"]["steering"]["positions"] == "response"
    assert steered["config"]["steering"]["layers"] == "1"  # the default, middle: the middle third of 3 blocks
    assert task in steered["results"] and "gen_nll,none" in steered["results"][task]
    if shared_or_none:
        assert "truthfulqa_local_mc2" in steered["results"]
        assert (tmp_path / "run" / "leaderboard_tradeoff.png").exists()
    summary = (tmp_path / "run" / "summary.md").read_text()  # what steering did, also printed
    sentences, examples = summary.split("\n## What the outputs look like\n")
    assert "Toward anger at alpha 2 (KL " in sentences and "anger probability " in sentences
    assert "prompts fluent in both arms" in sentences or "no emotion gain claimed" in sentences
    assert "random control" in sentences and "Asking for anger instead (KL " in sentences
    assert sentences.strip() in out  # printed too; the examples are in summary.md only
    assert examples.count("- baseline: ") == 3 and "- alpha 2: " in examples and "- asking for anger: " in examples
    assert (tmp_path / "run" / "dose_response.png").exists() and (tmp_path / "run" / "leakage.csv").exists()
    # a second run reuses the vector and every finished configuration
    mtime = vector.stat().st_mtime_ns
    assert main(args) == 0
    assert vector.stat().st_mtime_ns == mtime


def _normalized(doc):
    """A results/sweep JSON without what differs between two runs of the same sweep: when and how long."""
    if isinstance(doc, dict):
        return {k: _normalized(v) for k, v in doc.items() if k != "date" and not k.endswith("seconds")}
    return [_normalized(v) for v in doc] if isinstance(doc, list) else doc


def test_the_library_call_writes_the_folder_steer_run_writes(
    tmp_path, tiny_chat_llama_dir, monkeypatch, shared_or_none
):
    """`steer_plugin.run(...)` with `steer run`'s options as the objects the command builds: the same files with the
    same contents (apart from timestamps and durations), built from the same defaults, and no environment variable
    written."""
    from tests.helpers.classifier import build_goemotions_classifier

    data = write_goemotions_every_label(tmp_path / "goemotions", SIZES)
    options = {"model": tiny_chat_llama_dir, "emotion": "anger", "data": str(data), "alphas": "0,2",
               "classifier": build_goemotions_classifier(tmp_path / "clf"), "limit": 3, "batch_size": 4, "out": "run"}  # fmt: skip
    if shared_or_none:
        options["truthfulqa_dir"] = str(shared_or_none / "data" / "truthfulqa")  # to the tasks as metadata
    else:
        options["tasks"] = "steer_emotion_anger"
    library, command = tmp_path / "library", tmp_path / "command"
    library.mkdir()
    monkeypatch.chdir(library)
    ours = {k: v for k, v in os.environ.items() if k.startswith("STEER_")}
    evaluation = steer_plugin.Evaluation(
        classifier=options["classifier"], limit=3, batch_size=4,
        tasks=options.get("tasks", ()), truthfulqa_dir=options.get("truthfulqa_dir"),
    )  # fmt: skip
    record = steer_plugin.RecordOptions(data=options["data"])
    result = steer_plugin.run(
        "anger", tiny_chat_llama_dir, record=record, evaluation=evaluation, alphas="0,2", out="run"
    )
    assert {k: v for k, v in os.environ.items() if k.startswith("STEER_")} == ours
    # a vector file (and a control) records when it was written, and a configuration records the file's sha256:
    # the command reuses the library's, as a second run would
    shutil.copytree(library / "vectors", command / "vectors")
    shutil.copytree(library / "run" / "controls", command / "run" / "controls")
    monkeypatch.chdir(command)
    assert main(["run", *(x for k, v in options.items() for x in (f"--{k.replace('_', '-')}", str(v)))]) == 0

    def files(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    assert files(library / "run") == files(command / "run")
    # the baseline, the prompting reference, alpha 2, its control
    assert len([f for f in files(library / "run") if f.endswith("results.json")]) == 4
    for name in files(library / "run"):
        a, b = library / "run" / name, command / "run" / name
        if name.endswith(".json"):
            assert _normalized(json.loads(a.read_text())) == _normalized(json.loads(b.read_text())), name
        else:
            assert a.read_bytes() == b.read_bytes(), name
    assert result.folder == Path("run") and result.vectors == [
        default_vector_path(tiny_chat_llama_dir, "anger", steer_plugin.Recipe("mean", centre="emotions", neutral_pcs=3))
    ]
    assert (library / "run" / "summary.md").read_text().startswith(result.summary)  # then example generations
    top = [Path("run") / f for f in files(library / "run") if "/" not in f and f != "sweep.json"]
    assert sorted(result.files) == sorted(top)  # the reports
    assert sorted(r.source for r in result.rows) == sorted(str(p.relative_to("run")) for p in result.results)
    control = next(r for r in result.rows if r.control_of)
    assert "steer_emotion_anger/target_prob" in control.paired  # Δ vs the baseline, as in the table
