"""What steering did: summary sentences, leakage and dose-response from a run folder, and the
multi-emotion `steer run` (one recording, one sweep)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from steer_plugin.cli import main
from steer_plugin.data.goemotions import LABELS as GOEMOTIONS_LABELS
from steer_plugin.errors import SteerError
from steer_plugin.study.arms import load_study
from steer_plugin.study.leakage import leakage
from steer_plugin.study.paired import PairedBootstrap
from steer_plugin.study.report import write_study
from steer_plugin.study.sentences import describe, sentence
from steer_plugin.study.targets import parse_targets
from tests.helpers.study import LABELS, vector_entry, write_config
from tests.helpers.tiny import write_goemotions_every_label

FIXTURE = Path(__file__).parents[1] / "fixtures" / "goemotions"


def test_parse_targets():
    assert parse_targets("anger") == ["anger"]
    assert parse_targets("Anger, joy ,ekman_fear,anger") == ["anger", "joy", "ekman:fear"]
    assert len(parse_targets("all")) == 27 and "neutral" not in parse_targets("all")
    assert parse_targets("ekman") == [f"ekman:{g}" for g in ("anger", "disgust", "fear", "joy", "sadness", "surprise")]
    with pytest.raises(SteerError, match="unknown emotion"):
        parse_targets("angr")


# --- a synthetic run folder, in the layout run_sweep writes ---------------------------------------------


@pytest.fixture()
def run_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "run"
    scores = {"baseline": write_config(folder, "baseline", None, 0.0, None, rng)}
    for emotion in ("anger", "joy"):
        for alpha, budget in ((0.2, 0.1), (0.5, 0.3)):
            name = f"{emotion}_kl{budget}"
            scores[name] = write_config(folder, name, vector_entry(emotion), alpha, budget, rng)
            scores[name + "_random"] = write_config(
                folder, name + "_random", vector_entry(emotion, True), alpha, budget, rng
            )
    return folder, scores


def _fmt(p) -> str:
    return describe(p)


def test_summary_numbers_are_the_paired_statistics(run_folder):
    folder, scores = run_folder
    study = load_study(folder, resamples=1000, seed=0)
    assert study.emotions == ["anger", "joy"] and study.levels == [0.1, 0.3]
    ref = PairedBootstrap(1000, 0)
    base = scores["baseline"]
    arm = next(a for a in study.arms if a.emotion == "anger" and a.budget == 0.3)
    text = sentence(study, arm)
    mine = scores["anger_kl0.3"]
    control = scores["anger_kl0.3_random"]
    target = ref.compare(mine["steer_emotion_anger"]["target_prob"], base["steer_emotion_anger"]["target_prob"])
    ctrl = ref.compare(control["steer_emotion_anger"]["target_prob"], base["steer_emotion_anger"]["target_prob"])
    mc2 = ref.compare(mine["truthfulqa_mc2"]["acc"], base["truthfulqa_mc2"]["acc"])
    # the numbers by hand: Δ is the difference of the means, the interval the paired bootstrap's
    assert math.isclose(
        target.delta,
        mine["steer_emotion_anger"]["target_prob"].mean() - base["steer_emotion_anger"]["target_prob"].mean(),
    )
    # these samples carry no output-quality metrics (a plain lm_eval run of older tasks): the raw probability, flagged
    raw = " (output quality not measured: silence counts as emotion)"
    expected = (
        f"Toward anger at KL 0.30 (alpha 0.5): anger probability {_fmt(target)}{raw}; random control {_fmt(ctrl)}{raw}; "
        f"TruthfulQA MC2 {_fmt(mc2)}; perplexity on neutral texts 10.0 \N{RIGHTWARDS ARROW} 10.5."
    )
    assert text == expected
    # the "(n.s.)" hint follows each number's own interval: there exactly when the 95% interval includes 0
    parts = text.split("; ")
    for name, part, ref_pair in zip(
        ("anger probability", "random control", "TruthfulQA MC2"), parts, (target, ctrl, mc2)
    ):
        assert name in part
        assert ("(n.s.)" in part) == (ref_pair.ci_low <= 0 <= ref_pair.ci_high), part
    summary, files = write_study(folder, resamples=1000)
    assert expected in summary and expected in (folder / "summary.md").read_text()
    assert {f.name for f in files} == {"summary.md", "leakage.csv", "leakage.png", "dose_response.png", "report.html"}
    assert summary.count("Toward ") == 4  # two emotions x two budgets


def test_leakage_cells_are_deltas_of_each_label(run_folder):
    folder, scores = run_folder
    study = load_study(folder, resamples=1000)
    table = leakage(study)  # default: the middle budget of 0.1, 0.3 -> 0.1
    assert table.level == 0.1 and table.emotions == ["anger", "joy"] and table.labels == list(LABELS)
    ref = PairedBootstrap(1000, 0)
    for emotion in ("anger", "joy"):
        task = f"steer_emotion_{emotion}"  # each row reads its own emotion task
        for label in LABELS:
            mine, base = scores[f"{emotion}_kl0.1"][task][f"prob_{label}"], scores["baseline"][task][f"prob_{label}"]
            cell = table.cells[(emotion, label)]
            assert math.isclose(cell.delta, float(np.mean(mine) - np.mean(base)), abs_tol=1e-12)
            want = ref.compare(mine, base)
            assert (cell.ci_low, cell.ci_high) == pytest.approx((want.ci_low, want.ci_high), abs=1e-12)
    write_study(folder, leakage_budget=0.3, resamples=1000)
    rows = list(csv.DictReader(open(folder / "leakage.csv")))
    assert len(rows) == 6 and {r["level"] for r in rows} == {"0.3"}
    joy_sad = next(r for r in rows if r["steered"] == "joy" and r["label"] == "sadness")
    hand = (
        scores["joy_kl0.3"]["steer_emotion_joy"]["prob_sadness"]
        - scores["baseline"]["steer_emotion_joy"]["prob_sadness"]
    )
    assert float(joy_sad["delta"]) == pytest.approx(hand.mean(), abs=1e-12)
    assert float(joy_sad["ci_low"]) <= float(joy_sad["delta"]) <= float(joy_sad["ci_high"])
    with pytest.raises(SteerError, match="not in this run"):
        leakage(study, 0.2)


def test_controls_calibrated_to_the_same_kl_pair_by_budget(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "run"
    scores = {"baseline": write_config(folder, "baseline", None, 0.0, None, rng)}
    for name, control, alpha, budget in (("kl0.1", False, 0.2, 0.1), ("kl1", False, 0.6, 1.0)):
        scores[name] = write_config(folder, name, vector_entry("anger", control), alpha, budget, rng)
    # its control, calibrated to the same budgets: larger alphas, and one of them equal to the vector's other alpha
    scores["c0.1"] = write_config(folder, "c0.1", vector_entry("anger", True), 0.6, 0.1, rng)
    scores["c1"] = write_config(folder, "c1", vector_entry("anger", True), 1.9, 1.0, rng)
    study = load_study(folder, resamples=1000)
    for arm, control in zip(sorted(study.arms, key=lambda a: a.level), ("c0.1", "c1")):
        (paired,) = study.controls_of(arm)
        assert paired.budget == arm.budget and paired.alpha == {"c0.1": 0.6, "c1": 1.9}[control]
        text = sentence(study, arm)
        want = PairedBootstrap(1000, 0).compare(
            scores[control]["steer_emotion_anger"]["target_prob"],
            scores["baseline"]["steer_emotion_anger"]["target_prob"],
        )
        assert f"; random control (same KL, alpha {paired.alpha:.3g}) {describe(want)} (output quality" in text


def test_two_vectors_of_one_emotion_are_two_series(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "run"
    write_config(folder, "baseline", None, 0.0, None, rng)
    write_config(folder, "mean", vector_entry("anger"), 0.5, 0.1, rng)
    top_k = {"path": "anger-top_k.safetensors", "metadata": {"emotion": "anger", "method": "top_k", "top_k": 4}}
    write_config(folder, "top_k", top_k, 0.7, 0.1, rng)
    study = load_study(folder, resamples=1000)
    assert study.emotions == ["anger (mean), layers all, all", "anger (top_k-4), layers all, all"]
    assert leakage(study).emotions == study.emotions
    summary, _ = write_study(folder, resamples=1000)
    assert "Toward anger (anger (top_k-4), layers all, all) at KL 0.10 (alpha 0.7): anger probability" in summary


def test_an_emotion_comes_from_the_vector_metadata_and_a_combination_is_no_arm(tmp_path):
    """The arm's emotion is the metadata's, even where the label would read otherwise; a row of two
    vectors steers toward neither, so it is neither an arm nor a second series of its first emotion."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "run"
    write_config(folder, "baseline", None, 0.0, None, rng)
    write_config(folder, "anger", vector_entry("anger"), 0.5, None, rng)
    odd = {"path": "odd.safetensors", "metadata": {"emotion": "joy (happy)", "method": "mean"}}
    write_config(folder, "odd", odd, 0.5, None, rng)
    write_config(folder, "two", vector_entry("anger"), 1.0, None, rng)
    path = folder / "two" / "results.json"
    doc = json.loads(path.read_text())
    doc["config"]["steering"]["vectors"].append(vector_entry("joy"))
    doc["config"]["steering"]["alphas"] = [1.0, 1.0]
    path.write_text(json.dumps(doc))
    study = load_study(folder, resamples=200)
    assert [(a.emotion, a.row.key.vector) for a in study.arms] == [
        ("anger", "anger (mean)"),
        ("joy (happy)", "joy (happy) (mean)"),
    ]
    assert study.emotions == ["anger", "joy (happy)"]


def test_report_command(run_folder, capsys):
    folder, _ = run_folder
    assert main(["report", str(folder), "--leakage-budget", "0.3", "--resamples", "1000"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (folder / "summary.md").read_text().strip()
    assert main(["report", str(folder), "--leakage-budget", "0.2"]) == 2  # not a budget of this run
    assert "0.1, 0.3" in capsys.readouterr().err
    (folder / "leakage.png").unlink()
    (folder / "leakage.png").mkdir()
    assert main(["report", str(folder)]) == 2  # an output that cannot be written fails before any work
    assert "is a folder" in capsys.readouterr().err


# --- the multi-emotion steer run ---------------------------------------------------------------------


def test_run_several_emotions_records_once(tmp_path, tiny_chat_llama_dir, monkeypatch, capsys, shared_or_none):
    import steer_plugin.vectors.request as request  # where `steer run`'s recording looks the recorder up
    from tests.helpers.classifier import build_goemotions_classifier

    calls = []
    real = request.record_hidden_states

    def counting(model, tok, items, **kw):
        calls.append(sorted({c for it in items for c in it.classes}))
        return real(model, tok, items, **kw)

    monkeypatch.setattr(request, "record_hidden_states", counting)
    clf = build_goemotions_classifier(tmp_path / "clf")
    monkeypatch.chdir(tmp_path)
    data = write_goemotions_every_label(tmp_path / "goemotions", {"neutral": 6})
    args = ["run", "--model", tiny_chat_llama_dir, "--emotion", "anger,disgust", "--data", str(data),
            "--alphas", "0,1,2", "--classifier", clf, "--limit", "2", "--batch-size", "4", "--side-effect-texts", "4",
            "--out", str(tmp_path / "run")]  # fmt: skip
    if shared_or_none:  # the default tasks: TruthfulQA MC1/MC2 (local copy) + each emotion's task
        args += ["--truthfulqa-dir", str(shared_or_none / "data" / "truthfulqa")]
    else:
        args += ["--tasks", "steer_emotion_anger,steer_emotion_disgust"]
    assert main(args) == 0
    # one recording for both vectors, the baseline and the other emotions they are centred on (the default recipe)
    assert calls == [sorted(GOEMOTIONS_LABELS)]
    built = sorted(p.name for p in (tmp_path / "vectors").rglob("*.safetensors"))
    assert built == ["anger-mean-emotions-npc3.safetensors", "disgust-mean-emotions-npc3.safetensors"]
    run = tmp_path / "run"
    for name in ("summary.md", "leakage.csv", "leakage.png", "dose_response.png", "leaderboard.md"):
        assert (run / name).is_file(), name
    out = capsys.readouterr().out
    summary = (run / "summary.md").read_text().split("\n## What the outputs look like\n")[0]
    assert summary.strip() in out
    assert sum(line.startswith("Asking for ") for line in summary.splitlines()) == 2  # one prompting reference each
    assert sum(line.startswith("Toward anger at alpha") for line in summary.splitlines()) == 2
    assert sum(line.startswith("Toward disgust at alpha") for line in summary.splitlines()) == 2
    rows = list(csv.DictReader(open(run / "leakage.csv")))
    assert {r["steered"] for r in rows} == {"anger", "disgust"} and {r["level"] for r in rows} == {"1.0"}
    assert len(rows) == 2 * 28  # every GoEmotions label of the tiny classifier
    # again: both vectors and every configuration are reused, nothing recorded
    assert main(args) == 0
    assert len(calls) == 1


def test_identical_greedy_generations_run_once(tiny_llama_dir, tmp_path):
    """The emotion tasks of a multi-emotion sweep share prompts: each is generated once, with the same text
    as generating every request on its own (batch size 1: no padding, an exact reference)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from steer_plugin.harness.model import SteeredHFLM

    lm = SteeredHFLM(pretrained=tiny_llama_dir, dtype="float32", device="cpu", batch_size=1)
    greedy = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}
    sampled = {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": True, "temperature": 1.0}
    args = [("Tell me", greedy), ("Once upon", greedy), ("Tell me", dict(greedy)), ("Tell me", sampled),
            ("Tell me", sampled)]  # fmt: skip
    requests = [Instance("generate_until", {}, a, i) for i, a in enumerate(args)]
    calls = []
    real = lm._model_generate

    def counting(context, *a, **kw):
        calls.append(context.shape[0])
        return real(context, *a, **kw)

    lm._model_generate = counting
    out = lm.generate_until(requests, disable_tqdm=True)
    assert sum(calls) == 4  # "Tell me" greedy once, "Once upon", and both sampled requests
    assert out[0] == out[2]
    reference = [HFLM.generate_until(lm, [r], disable_tqdm=True)[0] for r in requests[:3]]
    assert out[:3] == reference


def test_example_generations_from_compact_and_full_rows():
    """summary.md's examples read the compact rows a sweep keeps and the full rows of --log-samples alike."""
    from steer_plugin.study.example_outputs import prompt_and_generation

    assert prompt_and_generation({"doc_id": 0, "prompt": "Hi?", "generation": "Hello."}) == ("Hi?", "Hello.")
    full = {"doc_id": 0, "doc": {"prompt": "Hi?"}, "resps": [["Hello."]], "filtered_resps": [{"generation": "Hello."}]}
    assert prompt_and_generation(full) == ("Hi?", "Hello.")
    assert prompt_and_generation({"doc_id": 0, "acc": 1.0}) is None  # a task without generations


def test_the_report_names_samples_it_cannot_pair_and_does_not_block_on_them(run_folder, capsys):
    """`steer report` reads the rows as `steer table` does: a baseline samples file that scores a document twice
    is named and left out (never paired by the wrong score), one that is a FIFO is named without blocking."""
    import os
    import threading

    folder, _ = run_folder
    anger = folder / "baseline" / "samples_steer_emotion_anger.jsonl"
    lines = anger.read_text().splitlines()
    anger.write_text("\n".join([*lines, lines[0]]) + "\n")
    joy = folder / "baseline" / "samples_steer_emotion_joy.jsonl"
    joy.unlink()
    os.mkfifo(joy)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(write_study(folder, resamples=200)), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():
        os.close(os.open(joy, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("steer report blocked on a FIFO samples file")
    err = capsys.readouterr().err
    assert f"{anger}: doc_id 0 is scored twice (lines 1 and {len(lines) + 1})" in err, err
    assert f"{joy} is a FIFO (named pipe), not a regular file" in err, err
    assert done and (folder / "report.html").is_file() and (folder / "summary.md").read_text() == done[0][0]
