"""A sweep folder resumes only what is verifiably its own (study.sweep_folder): sweep.json, results files, samples.

Sweeps run on a tiny Llama and a 4-question multiple-choice task; the references are plain JSON reads of the files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from steer_plugin.errors import SteerError
from steer_plugin.harness.engine import HFEngine
from steer_plugin.study.plan import SweepConfig, SweepPlan
from steer_plugin.study.rows import load_rows
from steer_plugin.study.sweep import run_sweep
from steer_plugin.study.table import write_table
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.sweep import SWEEP_FILE, sweep_options


@pytest.fixture(scope="module")
def finished(lm, task_dir, vector_file, tiny_llama_dir, tmp_path_factory):
    """A finished sweep (baseline, alpha 1, alpha 2); tests resume from copies of its folder."""
    out = tmp_path_factory.mktemp("finished") / "sweep"
    plan = SweepPlan.grid([vector_file], [0, 1.0, 2.0], ["all"], ["all"])
    files = run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=False)
    return out, plan, files


def _copy(finished, tmp_path: Path) -> tuple[Path, SweepPlan, list[Path]]:
    out, plan, files = finished
    shutil.copytree(out, tmp_path / "sweep", copy_function=shutil.copy2)
    return tmp_path / "sweep", plan, [tmp_path / "sweep" / f.relative_to(out) for f in files]


def test_sweep_records_its_plan_and_each_configuration_its_identity(finished, vector_file, tiny_llama_dir):
    from steer_plugin import __version__
    from steer_plugin.vectors.vector import file_sha256

    out, plan, files = finished
    doc = json.loads((out / SWEEP_FILE).read_text())
    assert doc["settings"]["model"] == tiny_llama_dir and doc["settings"]["tasks"] == ["rel_mc"]
    assert doc["settings"]["package_version"] == __version__ and doc["settings"]["limit"] is None
    assert [c["slug"] for c in doc["configs"]] == [c.slug() for c in plan.configs]
    assert doc["configs"][2]["vector_sha256"] == file_sha256(vector_file) and doc["configs"][2]["alpha"] == 2.0
    cfg = json.loads(files[2].read_text())["config"]
    assert cfg["sweep_settings"] == doc["settings"]
    assert cfg["sweep"]["slug"] == SweepConfig(vector_file, 2.0).slug()
    assert cfg["sweep"]["vector_sha256"] == file_sha256(vector_file)


def test_truncated_or_foreign_results_are_rerun_and_said_so(lm, finished, task_dir, tiny_llama_dir, tmp_path, capsys):
    out, plan, files = _copy(finished, tmp_path)
    want = [json.loads(f.read_text())["results"]["rel_mc"]["acc,none"] for f in files]
    plan_stamp = (out / SWEEP_FILE).stat().st_mtime_ns if (out / SWEEP_FILE).exists() else None
    files[2].write_bytes(files[1].read_bytes())  # another configuration's results copied over
    files[1].write_bytes(files[1].read_bytes()[:500])  # a truncated write of some other tool
    stamps = {f: f.stat().st_mtime_ns for f in files}
    run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=True)
    err = capsys.readouterr().err
    assert f"rerunning {plan.configs[1].slug()}: corrupt results.json (JSONDecodeError)" in err
    assert f"rerunning {plan.configs[2].slug()}: stale results.json (another configuration)" in err
    assert "resuming: 1/3 configurations already done" in err
    assert [json.loads(f.read_text())["results"]["rel_mc"]["acc,none"] for f in files] == want
    assert json.loads(files[2].read_text())["config"]["steering"]["alphas"] == [2.0]
    assert [f.stat().st_mtime_ns == stamps[f] for f in files] == [True, False, False]  # only those reran
    assert plan_stamp and (out / SWEEP_FILE).stat().st_mtime_ns == plan_stamp  # the plan is written once
    assert len(load_rows(out)) == 3  # every row is in the table again


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"limit": 2.0}, "limit null -> 2.0"),
        ({"tasks": ["rel_mc", "rel_mc2"]}, 'tasks ["rel_mc"] -> ["rel_mc", "rel_mc2"]'),
        ({"num_fewshot": 1}, "num_fewshot null -> 1"),
        ({"apply_chat_template": True}, "apply_chat_template false -> true"),
        ({"gen_kwargs": {"temperature": 0.5}}, "gen_kwargs null -> "),
        ({"model_args": {"pretrained": "other/model"}}, 'model "'),
        ({"model_args": {"pretrained": "TINY", "dtype": "float16"}}, 'dtype null -> "float16"'),
    ],
)
def test_folder_of_another_sweep_is_refused(lm, finished, task_dir, tiny_llama_dir, tmp_path, change, needle):
    out, plan, files = _copy(finished, tmp_path)
    if "model_args" in change:
        change = {"model_args": {k: tiny_llama_dir if v == "TINY" else v for k, v in change["model_args"].items()}}
    before = {f: f.read_bytes() for f in files}
    with pytest.raises(SteerError, match="holds another sweep") as e:
        run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir, **change), progress=False)
    assert needle in str(e.value) and "--out elsewhere, or --fresh" in str(e.value)
    assert {f: f.read_bytes() for f in files} == before  # untouched


def test_fresh_discards_only_what_a_sweep_wrote(lm, finished, task_dir, tiny_llama_dir, tmp_path):
    out, _, old_files = _copy(finished, tmp_path)
    write_table(out)
    (old_files[2].parent / "samples_rel_mc.jsonl").write_text("{}\n")
    (out / "notes.txt").write_text("mine")
    plan = SweepPlan.grid([finished[1].configs[1].vector], [1.0], ["all"], ["all"])
    options = sweep_options(out, task_dir, tiny_llama_dir, limit=2.0)
    with pytest.raises(SteerError, match="limit"):
        run_sweep(HFEngine(lm), plan, options, progress=False)
    options.fresh = True
    files = run_sweep(HFEngine(lm), plan, options, progress=False)
    for f in files:
        assert json.loads(f.read_text())["config"]["limit"] == 2.0
    assert json.loads((out / SWEEP_FILE).read_text())["settings"]["limit"] == 2.0
    assert (out / "notes.txt").read_text() == "mine" and not (out / "leaderboard.md").exists()
    assert not old_files[2].parent.exists()  # alpha 2 is not in the new plan: its results and samples are gone
    assert len(load_rows(out)) == 2


def test_results_of_a_changed_vector_are_rerun(lm, task_dir, vector_file, tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    vec = tmp_path / "v.safetensors"
    vec.write_bytes(Path(vector_file).read_bytes())
    plan = SweepPlan.grid([str(vec)], [1.0, 2.0], ["all"], ["all"], baseline=False)
    files = run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=False)
    SteeringVector(torch.ones(3, 32) * 0.1, {"emotion": "anger"}).save(vec)  # rebuilt in place
    run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=True)
    err = capsys.readouterr().err
    assert err.count("stale results.json (the vector file changed since)") == 2, err
    from steer_plugin.vectors.vector import file_sha256

    for f, alpha in zip(files, (1.0, 2.0)):
        steering = json.loads(f.read_text())["config"]["steering"]
        assert steering["alphas"] == [alpha] and steering["vectors"][0]["sha256"] == file_sha256(vec)


def test_results_without_a_plan_are_refused_not_trusted(lm, finished, task_dir, tiny_llama_dir, tmp_path):
    out, plan, _ = _copy(finished, tmp_path)
    (out / SWEEP_FILE).unlink()  # as an older version leaves a sweep folder
    with pytest.raises(SteerError, match="holds sweep results but no sweep.json"):
        run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=False)
    (out / SWEEP_FILE).write_text("{not json")
    with pytest.raises(SteerError, match="sweep.json is unreadable"):
        run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=False)


def test_cli_sweep_into_another_models_folder_is_refused_before_loading(
    task_dir, vector_file, tiny_llama_dir, tmp_path, capsys, one_torch_thread
):
    out = tmp_path / "sweep"
    base = ["sweep", "--vector", vector_file, "--alphas", "1", "--tasks", "rel_mc", "--include-path", task_dir]
    base += ["--out", out, "--batch-size", "4", "--device", "cpu", "--bootstrap-iters", "0", "--no-side-effects"]
    base += ["--layers", "all", "--positions", "all", "--controls", "0"]  # the sweep defaults before they changed
    assert run_cli([*base, "--model", tiny_llama_dir], capsys)[0] == 0
    # another model (one whose hidden size would not even fit the vector): it is never loaded
    code, _, err = run_cli([*base, "--model", "/nonexistent/other-model"], capsys)
    assert_one_line_error(code, err, "holds another sweep", "model", "/nonexistent/other-model", "--fresh")
    code, _, err = run_cli([*base, "--model", tiny_llama_dir, "--limit", "2"], capsys)
    assert_one_line_error(code, err, "limit null -> 2.0")
    code, _, err = run_cli([*base, "--model", tiny_llama_dir, "--limit", "2", "--fresh"], capsys)
    assert code == 0, err
    assert "--fresh: discarded 2 earlier result(s)" in err
    for f in out.glob("*/results.json"):
        assert json.loads(f.read_text())["config"]["limit"] == 2.0


def test_a_sweep_that_failed_before_any_result_does_not_block_the_corrected_rerun(
    task_dir, vector_file, tiny_llama_dir, tmp_path, capsys, one_torch_thread, monkeypatch
):
    """sweep.json is written before the first evaluation: a sweep that then failed (a task or classifier problem
    found late, Ctrl-C) left a plan and no result, and its corrected rerun was refused as "another sweep"."""
    from steer_plugin.study.sweep import ConfigurationStep

    out = tmp_path / "sweep"
    base = ["sweep", "--model", tiny_llama_dir, "--vector", vector_file, "--alphas", "1", "--tasks", "rel_mc"]
    base += ["--include-path", task_dir, "--out", out, "--batch-size", "4", "--device", "cpu"]
    base += ["--bootstrap-iters", "0", "--no-side-effects", "--layers", "all", "--positions", "all", "--controls", "0"]

    def fail(*_args):
        raise SteerError("something found late")

    with monkeypatch.context() as m:
        m.setattr(ConfigurationStep, "run", fail)
        code, _, err = run_cli([*base, "--limit", "3"], capsys)
        assert code == 2 and err.strip().splitlines()[-1] == "steer sweep: error: something found late", err
    assert (out / SWEEP_FILE).is_file() and not list(out.glob("*/results.json"))
    code, _, err = run_cli([*base, "--limit", "2"], capsys)  # the corrected setting, the same --out
    assert code == 0, err
    assert (
        f"{out}: the earlier sweep there finished no configuration; its settings are replaced (limit 3.0 -> 2.0)" in err
    )
    assert _json(out / SWEEP_FILE)["settings"]["limit"] == 2.0 and len(list(out.glob("*/results.json"))) == 2
    # with results in it, the folder is another sweep's as before
    code, _, err = run_cli([*base, "--limit", "3"], capsys)
    assert_one_line_error(code, err, "holds another sweep", "limit 2.0 -> 3.0", "--fresh")


# --- what determines a result: the weights under --model, the samples files beside results.json ----------------


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _stamps(files: list[Path]) -> list[int]:
    return [f.stat().st_mtime_ns for f in files]


def test_weights_changed_under_the_same_model_path_are_another_sweep(
    lm, task_dir, vector_file, tiny_llama_dir, tmp_path
):
    from tests.helpers.tiny import save_model

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    out = tmp_path / "sweep"
    plan = SweepPlan.grid([vector_file], [1.0], ["all"], ["all"])
    files = run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, str(model_dir)), progress=False)
    assert _json(out / SWEEP_FILE)["settings"]["weights"]  # a fingerprint of the weights files is recorded
    save_model(model_dir, "llama", seed=1)  # other weights of the same architecture saved over them (a fine-tune)
    assert (model_dir / "model.safetensors").read_bytes() != (Path(tiny_llama_dir) / "model.safetensors").read_bytes()
    stamps = _stamps(files)
    with pytest.raises(SteerError, match="holds another sweep") as e:
        run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, str(model_dir)), progress=False)
    assert "weights" in str(e.value) and "the model's weights files changed" in str(e.value)
    assert _stamps(files) == stamps  # nothing was rerun or overwritten
    shutil.copy2(Path(tiny_llama_dir) / "model.safetensors", model_dir / "model.safetensors")  # the same bytes again
    run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, str(model_dir)), progress=False)
    assert _stamps(files) == stamps  # resumed: all done


def test_results_whose_samples_went_missing_or_changed_are_rerun(
    lm, finished, task_dir, tiny_llama_dir, tmp_path, capsys
):
    from steer_plugin.study.rows import compare_rows

    out, plan, files = _copy(finished, tmp_path)
    (files[1].parent / "samples_rel_mc.jsonl").unlink()
    truncated = files[2].parent / "samples_rel_mc.jsonl"
    truncated.write_text("".join(truncated.read_text().splitlines(keepends=True)[:-1]))  # at a line boundary
    load_rows(out)
    err = capsys.readouterr().err
    assert f"{files[1]}: samples_rel_mc.jsonl is missing: its Δ columns may be missing" in err  # the table says so
    stamps = _stamps(files)
    run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=True)
    err = capsys.readouterr().err
    assert f"rerunning {plan.configs[1].slug()}: incomplete results (samples_rel_mc.jsonl is missing)" in err
    assert f"rerunning {plan.configs[2].slug()}: incomplete results (samples_rel_mc.jsonl changed since" in err
    assert [a == b for a, b in zip(_stamps(files), stamps)] == [True, False, False]
    # the Δ columns are back: each steered row against the baseline on all 4 documents, as the results files say
    rows = load_rows(out)
    compare_rows(rows)
    acc = {r.key.alpha: r.metrics["rel_mc/acc"] for r in rows}
    for r in rows:
        if r.key.steered:
            assert r.paired["rel_mc/acc"].n == 4
            assert r.paired["rel_mc/acc"].delta == pytest.approx(_json(out / r.source)["results"]["rel_mc"]["acc,none"]
                                                                 - acc[0.0])  # fmt: skip


def test_a_folder_of_an_earlier_version_resumes_and_records_the_weights(
    lm, finished, task_dir, tiny_llama_dir, tmp_path, capsys
):
    out, plan, files = _copy(finished, tmp_path)
    weights = _json(out / SWEEP_FILE)["settings"]["weights"]
    # as the version before weights fingerprints and samples records wrote the folder
    from steer_plugin.study.inputs import INPUTS

    inputs = {k: _json(out / SWEEP_FILE)["settings"][k] for k in INPUTS}
    doc = _json(out / SWEEP_FILE)
    for key in ("weights", *INPUTS):  # as the versions before content fingerprints wrote it
        del doc["settings"][key]
    (out / SWEEP_FILE).write_text(json.dumps(doc))
    for f in files:
        doc = _json(f)
        del doc["config"]["sweep_settings"]["weights"], doc["config"]["samples_sha256"]
        for key in INPUTS:
            del doc["config"]["sweep_settings"][key]
        f.write_text(json.dumps(doc))
    stamps = _stamps(files)
    run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=True)
    assert "resuming: 3/3 configurations already done" in capsys.readouterr().err
    assert _stamps(files) == stamps
    assert _json(out / SWEEP_FILE)["settings"]["weights"] == weights  # recorded now, checked from now on
    assert {k: _json(out / SWEEP_FILE)["settings"][k] for k in INPUTS} == inputs
    # without a record of its samples files, a results file still needs every task's samples, whole
    samples = files[2].parent / "samples_rel_mc.jsonl"
    samples.write_text("".join(samples.read_text().splitlines(keepends=True)[:3]))
    run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=True)
    err = capsys.readouterr().err
    assert (
        f"rerunning {plan.configs[2].slug()}: incomplete results (samples_rel_mc.jsonl has 3 of its 4 documents)" in err
    )
    assert [a == b for a, b in zip(_stamps(files), stamps)] == [True, True, False]


# --- resume identity: the contents of every input, not only its name (issue 30, family 3) ----------------------


def _planned(out: Path, options) -> None:
    """A sweep.json as a sweep with ``options`` writes it, and a finished configuration's results file beside it
    (no evaluation needed to test its identity; a plan without results is replaced, not refused)."""
    from steer_plugin.study.results_files import RESULTS_FILE, SWEEP_FORMAT
    from steer_plugin.study.sweep_folder import sweep_settings

    (out / "baseline").mkdir(parents=True, exist_ok=True)
    doc = {"format": SWEEP_FORMAT, "format_version": 1, "settings": sweep_settings(options), "configs": []}
    (out / SWEEP_FILE).write_text(json.dumps(doc))
    (out / "baseline" / RESULTS_FILE).write_text("{}")


def _fake_model(folder: Path, config: str = '{"a": 1}') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config)
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


@pytest.mark.parametrize(
    "what, why",
    [
        ("config", "the model's config or tokenizer files changed"),
        ("tokenizer", "the model's config or tokenizer files changed"),
        ("neutral texts", "the neutral texts changed"),
        ("truthfulqa edited", "the TruthfulQA data changed"),
        ("truthfulqa variable", "the TruthfulQA data changed"),
        ("goemotions", "the GoEmotions data of the tasks changed"),
        ("classifier", "the classifier's files changed"),
        ("task yaml", "the task definitions under --include-path changed"),
    ],
)
def test_inputs_changed_under_the_same_names_are_another_sweep(
    what, why, task_dir, tiny_llama_dir, tmp_path, monkeypatch
):
    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.harness.tasks import TRUTHFULQA_DIR_ENV
    from steer_plugin.study.sweep_folder import check_same_sweep, sweep_settings

    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    tasks = tmp_path / "tasks"
    shutil.copytree(task_dir, tasks)
    texts = tmp_path / "texts.txt"
    texts.write_text("one neutral text\nanother one\n")
    tq, tq_other = tmp_path / "tq", tmp_path / "tq2"
    for folder, text in ((tq, "a"), (tq_other, "b")):
        folder.mkdir()
        (folder / "truthfulqa_mc.validation.jsonl").write_text(json.dumps({"q": text}) + "\n")
    goemotions = tmp_path / "goemotions"
    shutil.copytree(Path(__file__).parents[1] / "fixtures" / "goemotions", goemotions)
    classifier = _fake_model(tmp_path / "classifier")
    monkeypatch.setenv(TRUTHFULQA_DIR_ENV, str(tq))
    options = sweep_options(tmp_path / "sweep", str(tasks), str(model), side_effects=TextSource(str(texts)))
    options.tasks = ["rel_mc", "truthfulqa_local_mc1", "steer_emotion_continue_anger"]
    options.classifier, options.task_metadata = str(classifier), {"goemotions_dir": str(goemotions)}
    _planned(options.out_dir, options)
    assert check_same_sweep(options.out_dir, sweep_settings(options))  # unchanged: the same sweep

    edit = {
        "config": lambda: (model / "config.json").write_text((model / "config.json").read_text() + " "),
        "tokenizer": lambda: (model / "tokenizer.json").write_text((model / "tokenizer.json").read_text() + " "),
        "neutral texts": lambda: texts.write_text("one neutral text\nanother, edited\n"),
        "truthfulqa edited": lambda: (tq / "truthfulqa_mc.validation.jsonl").write_text('{"q": "c"}\n'),
        "truthfulqa variable": lambda: monkeypatch.setenv(TRUTHFULQA_DIR_ENV, str(tq_other)),
        "goemotions": lambda: (goemotions / "test.tsv").write_text("edited\t27\tx\n"),
        "classifier": lambda: (classifier / "model.safetensors").write_bytes(b"other weights"),
        "task yaml": lambda: (tasks / "rel_mc.yaml").write_text((tasks / "rel_mc.yaml").read_text() + "# edited\n"),
    }
    edit[what]()
    with pytest.raises(SteerError, match="holds another sweep") as e:
        check_same_sweep(options.out_dir, sweep_settings(options))
    assert why in str(e.value) and "--fresh" in str(e.value)


def test_model_config_edited_under_the_same_path_is_not_resumed(lm, task_dir, vector_file, tiny_llama_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model_dir)
    out = tmp_path / "sweep"
    plan = SweepPlan.grid([vector_file], [1.0], ["all"], ["all"])
    files = run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, str(model_dir)), progress=False)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 0.5}))  # same weights
    stamps = _stamps(files)
    with pytest.raises(SteerError, match="the model's config or tokenizer files changed"):
        run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, str(model_dir)), progress=False)
    assert _stamps(files) == stamps  # nothing was rerun or overwritten


def test_a_vector_rewritten_during_the_sweep_leaves_one_sha256_per_configuration(
    lm, task_dir, vector_file, tiny_llama_dir, tmp_path, capsys
):
    from steer_plugin.vectors.vector import file_sha256

    vec = tmp_path / "v.safetensors"
    vec.write_bytes(Path(vector_file).read_bytes())
    out = tmp_path / "sweep"
    plan = SweepPlan.grid([str(vec)], [1.0, 2.0], ["all"], ["all"], baseline=False)

    class Rewriting(HFEngine):
        def configure(self, config):
            super().configure(config)
            if config.alpha == 2.0:  # the file is rebuilt in place while the sweep runs
                SteeringVector(torch.ones(3, 32) * 0.1, {"emotion": "anger"}).save(vec)

    with pytest.raises(SteerError, match="changed during the sweep"):
        run_sweep(Rewriting(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=False)
    for f in out.glob("*/results.json"):  # what was written names one file: planned, steered and recorded alike
        cfg = _json(f)["config"]
        assert {cfg["sweep"]["vector_sha256"], *(v["sha256"] for v in cfg["steering"]["vectors"])} != set()
        assert len({cfg["sweep"]["vector_sha256"], *(v["sha256"] for v in cfg["steering"]["vectors"])}) == 1
    files = run_sweep(HFEngine(lm), plan, sweep_options(out, task_dir, tiny_llama_dir), progress=False)
    for f in files:
        cfg = _json(f)["config"]
        assert cfg["sweep"]["vector_sha256"] == cfg["steering"]["vectors"][0]["sha256"] == file_sha256(vec)
