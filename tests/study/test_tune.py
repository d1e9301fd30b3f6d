"""`steer tune`: the rule on a synthetic grid, the choice made on the dev prompts and used by `--layers tuned`, and
a stored choice that goes stale with its vector, the model's weights or its calibration."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from steer_plugin.cli import main
from steer_plugin.errors import SteerError
from steer_plugin.model.loading import ModelOptions
from steer_plugin.study.tune import candidate_layers, choose, describe_choice
from steer_plugin.study.tuning_file import Cell, stored_tunings, tune_command, tuned_choice, tuning_path, use_key
from tests.helpers.tiny import write_goemotions_every_label

SIZES = {"anger": 5, "neutral": 8}


def cell(layers: str, budget: float, delta: float | None, rate: float | None) -> Cell:
    return Cell(layers, layers, budget, alpha=1.0, robust_delta=delta, degenerate_rate=rate)


def test_the_rule_takes_the_largest_robust_delta_within_the_degenerate_limit():
    cells = [
        cell("0-9", 0.1, 0.05, 0.10),
        cell("middle", 0.1, 0.20, 0.15),  # the largest Δ within baseline 0.05 + 10 points
        cell("middle", 0.3, 0.40, 0.16),  # larger, but 11 points of degenerate outputs over the baseline
        cell("all", 0.1, None, 0.0),  # no Δ measured (no prompt fluent in both arms): not eligible
        cell("all", 0.3, 0.30, None),
    ]
    assert choose(cells, 0.05) == cells[1]
    assert choose(cells, 0.06) == cells[2]  # the limit moves with the baseline
    assert choose(cells, 0.05, margin=0.0) is None  # nothing within the baseline's own rate
    # ties: the smaller KL budget, then the earlier candidate
    tied = [cell("all", 0.3, 0.2, 0.0), cell("0-9", 0.1, 0.2, 0.0), cell("middle", 0.1, 0.2, 0.0)]
    assert choose(tied, 0.0) == tied[1]


def test_candidates_are_thirds_quarters_and_all_each_range_once():
    assert candidate_layers(30) == ["0-9", "middle", "20-29", "0-6", "7-14", "15-21", "22-29", "all"]
    assert candidate_layers(3) == ["0", "middle", "2", "all"]  # the quarters of 3 blocks repeat the thirds


def _prompts(folder: Path, task: str) -> set[str]:
    """The hashes of the prompts the baseline of a sweep folder answered on ``task``."""
    lines = (folder / "baseline" / f"samples_{task}.jsonl").read_text().splitlines()
    return {json.loads(line)["prompt_hash"] for line in lines if line.strip()}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_chat_llama_dir, texts_file, one_torch_thread):
    """`steer tune` on the tiny chat model, every candidate layer range x two budgets, on 4 dev prompts."""
    from tests.helpers.classifier import build_goemotions_classifier

    root = tmp_path_factory.mktemp("tune")
    clf = build_goemotions_classifier(root / "clf")
    data = write_goemotions_every_label(root / "goemotions", SIZES)
    common = ["--model", tiny_chat_llama_dir, "--emotion", "anger", "--data", str(data), "--classifier", clf,
              "--fluency-texts", texts_file, "--limit", "4", "--batch-size", "4"]  # fmt: skip
    cwd = Path.cwd()
    import os

    os.chdir(root)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert main(["tune", *common, "--budgets", "0.002,0.005", "--out", "grid"]) == 0
    finally:
        os.chdir(cwd)
    (vector,) = (root / "vectors").rglob("*.safetensors")
    (root / "tune.out").write_text(out.getvalue())
    (root / "tune.err").write_text(err.getvalue())
    return root, vector, common, clf


def test_tune_prints_each_choice_once_on_stdout(tuned):
    root, vector, _, _ = tuned
    out, err = (root / "tune.out").read_text(), (root / "tune.err").read_text()
    rel = str(vector.relative_to(root))
    assert [line for line in out.splitlines() if line.startswith(rel)] == [
        describe_choice(Path(rel), stored_tunings(vector)[0])
    ]
    assert not [line for line in err.splitlines() if line.startswith(rel + ":")]  # progress does not repeat it


def test_tune_stores_the_grid_and_the_rules_choice_beside_the_vector(tuned):
    root, vector, _, clf = tuned
    (tuning,) = stored_tunings(vector)
    assert tuning_path(vector).exists() and vector.with_name(vector.stem + ".tuning.png").exists()
    assert [c.layers for c in tuning.cells][::2] == candidate_layers(3)
    assert {c.kl_budget for c in tuning.cells} == {0.002, 0.005}
    assert tuning.choice == choose(tuning.cells, tuning.baseline_degenerate_rate)  # the stated rule, on the grid
    assert (
        tuning.key["prompts"] == "dev" and tuning.key["classifier"] == clf and tuning.key["budgets"] == [0.002, 0.005]
    )
    assert tuning.reference is not None and "robust_delta" in tuning.reference  # the prompting reference
    # the grid ran on the dev prompts, and its results say so
    results = json.loads((root / "grid" / "baseline" / "results.json").read_text())
    assert results["configs"]["steer_emotion_anger"]["metadata"]["steer_split"] == "dev"
    sweep = json.loads((root / "grid" / "sweep.json").read_text())
    assert sweep["settings"]["prompt_split"] == "dev"


def test_run_with_tuned_layers_steers_the_choice_on_the_test_prompts(tuned):
    import os

    root, vector, common, _ = tuned
    (tuning,) = stored_tunings(vector)
    assert tuning.choice is not None  # on this seeded tiny model, layers 0 at kl:0.002
    os.chdir(root)
    try:
        args = ["run", *common, "--tasks", "steer_emotion_anger", "--alphas", "0,kl:0.002", "--controls", "0",
                "--no-prompt-control", "--layers", "tuned", "--out", "test-run"]  # fmt: skip
        assert main(args) == 0
    finally:
        os.chdir(Path(__file__).parent)
    steered = [
        json.loads(p.read_text()) for p in (root / "test-run").glob("*/results.json") if "baseline" not in str(p)
    ]
    assert {r["config"]["steering"]["layers"] for r in steered} == {tuning.choice.steered}
    base = json.loads((root / "test-run" / "baseline" / "results.json").read_text())
    assert base["configs"]["steer_emotion_anger"]["metadata"]["steer_split"] == "test"
    dev, test = _prompts(root / "grid", "steer_emotion_anger"), _prompts(root / "test-run", "steer_emotion_anger")
    assert len(dev) == len(test) == 4 and not dev & test  # chosen on dev, reported on test


def _copy(vector: Path, folder: Path) -> Path:
    """The vector with its calibration and tuning files, in ``folder``."""
    import shutil

    folder.mkdir()
    for suffix in (".safetensors", ".calibration.json", ".tuning.json"):
        shutil.copy(vector.with_name(vector.stem + suffix), folder)
    return folder / vector.name


def test_a_stored_choice_goes_stale_with_the_vector_the_weights_or_the_calibration(tuned, tmp_path, monkeypatch):
    import steer_plugin.model.fingerprint as fingerprint
    from steer_plugin.vectors.vector import SteeringVector

    root, vector, _, clf = tuned
    (tuning,) = stored_tunings(vector)
    model = ModelOptions(str(json.loads((root / "grid" / "sweep.json").read_text())["settings"]["model"]))
    command = tune_command(model, "anger")

    def choice(path: Path) -> Cell:
        return tuned_choice(path, use_key(model, path, "response", clf), command)

    assert choice(vector) == tuning.choice
    with pytest.raises(SteerError, match="no tuned layers .* another classifier.*steer tune --model"):
        tuned_choice(vector, use_key(model, vector, "response", None), command)
    # other weights under the same folder name
    real = fingerprint.weights_fingerprint
    monkeypatch.setattr(fingerprint, "weights_fingerprint", lambda *a, **k: "0123456789abcdef")
    with pytest.raises(SteerError, match="another weights"):
        choice(vector)
    monkeypatch.setattr(fingerprint, "weights_fingerprint", real)
    # another vector in the same file
    changed = _copy(vector, tmp_path / "vector")
    v = SteeringVector.load(changed)
    SteeringVector(v.matrix * 2, v.metadata).save(changed)
    with pytest.raises(SteerError, match="another vector_sha256"):
        choice(changed)
    # a calibration that gives another alpha now (recalibrated, or edited)
    recalibrated = _copy(vector, tmp_path / "calibration")
    path = recalibrated.with_name(recalibrated.stem + ".calibration.json")
    doc = json.loads(path.read_text())
    for entry in doc["calibrations"]:
        for row in entry["rows"]:
            row["alpha"] *= 1.5
    path.write_text(json.dumps(doc))
    with pytest.raises(SteerError, match="stale .* no stored calibration gives any more.*steer tune"):
        choice(recalibrated)
    # no tuning at all
    untuned = _copy(vector, tmp_path / "untuned")
    tuning_path(untuned).unlink()
    with pytest.raises(SteerError, match="no tuned layers .*; run `steer tune --model .* --emotion anger` first"):
        choice(untuned)


def test_tune_reuses_a_valid_choice_and_run_auto_tunes_what_has_none(tuned, monkeypatch, capsys):
    from steer_plugin.study.tune import tune

    root, vector, common, clf = tuned
    monkeypatch.chdir(root)
    before = tuning_path(vector).read_bytes()
    args = dict(zip(common[::2], common[1::2], strict=True))
    evaluation = __import__("steer_plugin").Evaluation(
        classifier=clf, limit=4, batch_size=4, fluency_texts=args["--fluency-texts"]
    )
    record = __import__("steer_plugin").RecordOptions(data=args["--data"])
    result = tune("anger", args["--model"], record=record, evaluation=evaluation, budgets=[0.002, 0.005])
    assert (
        [p.resolve() for p in result.reused] == [vector]
        and result.folder is None
        and tuning_path(vector).read_bytes() == before
    )
    # --layers auto: a vector without a stored choice is tuned first (over the run's budgets), then steered there
    tuning_path(vector).rename(tuning_path(vector).with_suffix(".kept"))
    try:
        run = ["run", *common, "--tasks", "steer_emotion_anger", "--alphas", "0,kl:0.002", "--controls", "0",
               "--no-prompt-control", "--layers", "auto", "--out", "auto-run"]  # fmt: skip
        assert main(run) == 0
        (auto,) = stored_tunings(vector)
        assert auto.key["budgets"] == [0.002] and auto.choice is not None
        steered = [
            json.loads(p.read_text()) for p in (root / "auto-run").glob("*/results.json") if "base" not in str(p)
        ]
        assert {r["config"]["steering"]["layers"] for r in steered} == {auto.choice.steered}
    finally:
        tuning_path(vector).with_suffix(".kept").replace(tuning_path(vector))


def test_a_refused_classifier_stops_tune_before_it_says_it_is_tuning(
    tiny_chat_llama_dir, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    code = main(["tune", "--model", tiny_chat_llama_dir, "--emotion", "neutral", "--classifier", "nade"])
    err = capsys.readouterr().err
    assert code == 2 and "no label for target 'neutral'" in err
    assert "tuning" not in err and not (tmp_path / "runs").exists()
