"""steer sweep: one model, many configurations, results equal standalone harness runs; resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steer_plugin.harness.engine import HFEngine
from steer_plugin.study.plan import SweepConfig, SweepOptions, SweepPlan
from steer_plugin.study.results_files import RESULTS_FILE
from steer_plugin.study.sweep import run_sweep
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.sweep import TINY_MC_DOCS, write_tiny_mc_task


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> str:
    return write_tiny_mc_task(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    from steer_plugin.harness.model import SteeredHFLM

    return SteeredHFLM(pretrained=tiny_llama_dir, dtype="float32", device="cpu", batch_size=2)


def test_grid_runs_the_baseline_once():
    plan = SweepPlan.grid(["a.safetensors", "b.safetensors"], [-1, 0, 1], ["all", "0-1"], ["all"])
    assert sum(c.is_baseline for c in plan.configs) == 1
    assert len(plan.configs) == 1 + 2 * 2 * 2
    assert len({c.slug() for c in plan.configs}) == len(plan.configs)


def _acc(path: Path) -> dict:
    res = json.loads(path.read_text())["results"]["tiny_mc"]
    return {k: v for k, v in res.items() if k in ("acc,none", "acc_norm,none")}


def test_sweep_equals_standalone_runs_and_resumes(lm, task_dir, vector_file, tiny_llama_dir, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = tmp_path / "sweep"
    plan = SweepPlan.grid([vector_file], [0, 0.5, 2.0], ["all"], ["all", "response"])
    options = SweepOptions(
        tasks=["tiny_mc"],
        out_dir=out,
        include_path=task_dir,
        log_samples=True,
        model_args={"pretrained": tiny_llama_dir},
    )
    files = run_sweep(HFEngine(lm), plan, options, progress=False)
    assert len(files) == 5 and all(f.exists() for f in files)
    assert not lm.plan.active  # steering switched off after the sweep

    doc = json.loads((out / SweepConfig(vector_file, 2.0, "all", "response").slug() / RESULTS_FILE).read_text())
    steering = doc["config"]["steering"]
    assert steering["alphas"] == [2.0] and steering["positions"] == "response"
    assert steering["vectors"][0]["sha256"] and steering["vectors"][0]["metadata"]["emotion"] == "anger"
    assert (out / SweepConfig(vector_file, 2.0, "all", "response").slug() / "samples_tiny_mc.jsonl").exists()

    # each configuration equals a standalone harness run with the same model_args
    manager = TaskManager(include_path=task_dir)
    for config, f in zip(plan.configs, files):
        args = f"pretrained={tiny_llama_dir},dtype=float32,device=cpu,batch_size=2"
        if not config.is_baseline:
            args += f",vector={vector_file},alpha={config.alpha},positions={config.positions}"
        ref = lm_eval.simple_evaluate(
            model="steered_hf",
            model_args=args,
            tasks=["tiny_mc"],
            task_manager=manager,
            verbosity="ERROR",
            bootstrap_iters=0,
        )
        want = {k: v for k, v in ref["results"]["tiny_mc"].items() if k in ("acc,none", "acc_norm,none")}
        assert _acc(f) == want, config
        # and the recorded model_args reproduce it with the stock CLI
        assert json.loads(f.read_text())["config"]["model_args"].startswith(f"pretrained={tiny_llama_dir}")

    # resume: only the missing configuration runs again
    stamps = {f: f.stat().st_mtime_ns for f in files}
    missing = files[2]
    missing.unlink()
    run_sweep(HFEngine(lm), plan, options, progress=False)
    assert missing.exists()
    assert all(f.stat().st_mtime_ns == stamps[f] for f in files if f != missing)


@pytest.fixture
def task_indexes(monkeypatch) -> list[bool]:
    """Every TaskManager built from now on, as its include_defaults (True: the harness's own ~15k tasks)."""
    import lm_eval.tasks

    built: list[bool] = []
    real = lm_eval.tasks.TaskManager

    def spy(*args, **kwargs):
        built.append(kwargs.get("include_defaults", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", spy)
    return built


def test_unknown_task_is_a_clear_error(lm, tmp_path, vector_file, task_indexes):
    """...after looking in the harness's own tasks too (our folders alone are indexed first, being fast)."""
    from steer_plugin.errors import SteerError

    plan = SweepPlan.grid([vector_file], [1.0], ["all"], ["all"])
    with pytest.raises(SteerError, match="unknown task"):
        run_sweep(HFEngine(lm), plan, SweepOptions(tasks=["no_such_task_xyz"], out_dir=tmp_path), progress=False)
    assert task_indexes == [False, True]


def test_our_tasks_skip_the_harness_index(task_dir, task_indexes):
    from steer_plugin.study.task_sets import load_tasks

    loaded = load_tasks(SweepOptions(tasks=["tiny_mc"], out_dir=Path("unused"), include_path=task_dir))
    assert list(loaded["tasks"]) == ["tiny_mc"] and task_indexes == [False]


def test_reproduce_string_rebuilds_the_same_run(task_dir, vector_file, tiny_llama_dir, tmp_path):
    """results.json's model_args, given to the stock harness, reproduce the sweep's loglikelihoods."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from steer_plugin.cli import main

    out = tmp_path / "sweep"
    argv = ["sweep", "--model", tiny_llama_dir, "--vector", vector_file, "--alphas", "0.7", "--tasks", "tiny_mc",
            "--include-path", task_dir, "--out", str(out), "--log-samples", "--batch-size", "2", "--device", "cpu",
            "--blocks", "model.layers", "--trust-remote-code", "--backend", "hooks", "--layers", "0-1",
            "--positions", "response", "--no-side-effects", "--controls", "0"]  # fmt: skip
    assert main(argv) == 0
    folder = next(p for p in out.iterdir() if p.is_dir() and p.name != "baseline")
    config = json.loads((folder / RESULTS_FILE).read_text())["config"]
    args = dict(kv.split("=", 1) for kv in config["model_args"].split(","))
    for key, value in {"pretrained": tiny_llama_dir, "blocks": "model.layers", "trust_remote_code": "True",
                       "backend": "hooks", "layers": "0-1", "positions": "response", "alpha": "0.7",
                       "device": "cpu", "batch_size": "2"}.items():  # fmt: skip
        assert args.get(key) == value, (key, args)
    rerun = lm_eval.simple_evaluate(
        model="steered_hf",
        model_args=config["model_args"],
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=task_dir),
        log_samples=True,
        verbosity="WARNING",
    )
    logged = [json.loads(line) for line in (folder / "samples_tiny_mc.jsonl").read_text().splitlines()]
    ours = {r["doc_id"]: [float(x[0][0]) for x in r["resps"]] for r in logged}
    theirs = {r["doc_id"]: [float(x[0][0]) for x in r["resps"]] for r in rerun["samples"]["tiny_mc"]}
    assert ours.keys() == theirs.keys() and len(ours) == len(TINY_MC_DOCS)
    for doc_id, lls in ours.items():
        assert lls == pytest.approx(theirs[doc_id], abs=1e-5)


def test_grid_puts_controls_beside_their_vector():
    controls = {"a.safetensors": ["c/a-random-0.safetensors", "c/a-random-1.safetensors"]}
    plan = SweepPlan.grid(["a.safetensors", "b.safetensors"], [0, 1, 2], ["all"], ["response"], controls=controls)
    vectors = [(c.vector, c.alpha) for c in plan.configs]
    assert vectors == [
        (None, 0.0),
        ("a.safetensors", 1.0),
        ("c/a-random-0.safetensors", 1.0),
        ("c/a-random-1.safetensors", 1.0),
        ("a.safetensors", 2.0),
        ("c/a-random-0.safetensors", 2.0),
        ("c/a-random-1.safetensors", 2.0),
        ("b.safetensors", 1.0),
        ("b.safetensors", 2.0),
    ]
    assert all(c.positions == "response" for c in plan.configs[1:])
    assert len({c.slug() for c in plan.configs}) == len(plan.configs)


def test_grid_calibrates_controls_to_the_same_kl_when_asked():
    from steer_plugin.errors import SteerError
    from steer_plugin.steering.alphas import parse_alpha_specs

    controls = {"a.safetensors": ["c/a-random-0.safetensors"]}
    own = {"a.safetensors": {0.1: 0.5, 1.0: 2.0}, "c/a-random-0.safetensors": {0.1: 1.5, 1.0: 4.25}}
    asked = []

    def resolve(vector, layers, positions, budgets):
        asked.append(vector)
        return own[vector]

    alphas = parse_alpha_specs("0,kl:0.1,kl:1,3")
    plan = SweepPlan.grid(["a.safetensors"], alphas, ["all"], ["all"], controls=controls, resolve=resolve)
    assert asked == ["a.safetensors"]  # the default: controls at their vector's alpha, no calibration of their own
    assert [(c.alpha, c.kl_budget) for c in plan.configs[1:]] == [(0.5, 0.1)] * 2 + [(2.0, 1.0)] * 2 + [(3.0, None)] * 2
    asked.clear()
    plan = SweepPlan.grid(
        ["a.safetensors"], alphas, ["all"], ["all"], controls=controls, resolve=resolve, control_match="kl"
    )
    assert asked == ["a.safetensors", "c/a-random-0.safetensors"]
    assert [(Path(c.vector).stem, c.alpha, c.kl_budget) for c in plan.configs[1:]] == [
        ("a", 0.5, 0.1), ("a-random-0", 1.5, 0.1), ("a", 2.0, 1.0), ("a-random-0", 4.25, 1.0),
        ("a", 3.0, None), ("a-random-0", 3.0, None),  # a plain alpha has no KL to match: the same alpha
    ]  # fmt: skip
    with pytest.raises(SteerError, match="control match must be one of alpha, kl"):
        SweepPlan.grid(["a.safetensors"], alphas, ["all"], ["all"], resolve=resolve, control_match="norm")


def test_sweep_with_controls_keeps_per_document_scores_and_tables_them(
    lm, task_dir, vector_file, tiny_llama_dir, tmp_path
):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from steer_plugin.study.rows import load_rows
    from steer_plugin.study.table import write_table
    from steer_plugin.vectors.controls import random_like_file, write_controls

    out = tmp_path / "sweep"
    controls = write_controls([vector_file], 1, out / "controls")
    plan = SweepPlan.grid([vector_file], [0, 2.0], ["all"], ["all"], controls=controls)
    options = SweepOptions(
        tasks=["tiny_mc"], out_dir=out, include_path=task_dir, model_args={"pretrained": tiny_llama_dir}
    )
    files = run_sweep(HFEngine(lm), plan, options, progress=False)
    assert len(files) == 3
    control = json.loads(files[2].read_text())["config"]
    assert control["steering"]["vectors"][0]["path"] == controls[vector_file][0]
    assert control["steering"]["vectors"][0]["metadata"]["method"] == "random"
    assert torch.equal(SteeringVector.load(controls[vector_file][0]).matrix, random_like_file(vector_file, 0).matrix)

    # per-document scores are kept without --log-samples, compact: keys and metric values only, and for the
    # report the chosen answer (its index and text) and the correct one (the docs have no "question" field)
    rows = [json.loads(line) for line in (files[1].parent / "samples_tiny_mc.jsonl").read_text().splitlines()]
    assert len(rows) == len(TINY_MC_DOCS)
    assert set(rows[0]) == {
        "doc_id", "doc_hash", "prompt_hash", "target_hash", "filter", "metrics", "acc", "acc_norm",
        "chosen", "choice", "correct",
    }  # fmt: skip
    assert rows[0]["correct"] == "Paris." and rows[0]["choice"] == TINY_MC_DOCS[0]["choices"][rows[0]["chosen"]].strip()

    # the control's recorded model_args reproduce it with the stock harness
    ref = lm_eval.simple_evaluate(
        model="steered_hf",
        model_args=control["model_args"] + ",device=cpu,batch_size=2",
        tasks=["tiny_mc"],
        task_manager=TaskManager(include_path=task_dir),
        verbosity="ERROR",
        bootstrap_iters=0,
    )
    want = {k: v for k, v in ref["results"]["tiny_mc"].items() if k in ("acc,none", "acc_norm,none")}
    assert _acc(files[2]) == want

    text, written = write_table(out)
    labels = {r.key["vector"] for r in load_rows(out)}
    assert labels == {"-", "anger (mean)", "anger (mean) [random control 0]"}
    assert "anger (mean) [random control 0]" in text and "tiny_mc/acc Δ" in text
    assert "tiny_mc/acc_delta" in (out / "leaderboard.csv").read_text()
    assert any(f.name == "leaderboard_vs_alpha.png" for f in written)


def test_sweep_measures_side_effects_and_resolves_kl_alphas(lm, task_dir, vector_file, tiny_llama_dir, tmp_path):
    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.errors import SteerError
    from steer_plugin.steering.alphas import KLBudget, parse_alpha_specs
    from steer_plugin.steering.calibrate import calibrate_vector_file
    from steer_plugin.study.rows import load_rows
    from steer_plugin.study.table import to_console, to_csv
    from tests.helpers.side_effects import reference

    texts = tmp_path / "neutral.txt"
    texts.write_text(
        "".join(f"{d['q']}{d['choices'][0]} ({i})\n" for i, d in enumerate(TINY_MC_DOCS * 3)), encoding="utf-8"
    )
    source = TextSource(str(texts))
    resolved = []

    def resolve(vector, layers, positions, budgets):
        cal, _ = calibrate_vector_file(
            lm.model, lm.tokenizer, vector, budgets, layers=layers, positions=positions, source=source,
            n_calibration=6, n_heldout=6, model_name=tiny_llama_dir,
        )  # fmt: skip
        resolved.append((vector, layers, positions, budgets))
        return {b: cal.alpha_for(b) for b in budgets}

    alphas = parse_alpha_specs("0,kl:0.003,1.0")
    assert alphas[1] == KLBudget(0.003)
    plan = SweepPlan.grid([vector_file], alphas, ["all"], ["response"], resolve=resolve)
    assert resolved == [(vector_file, "all", "response", [0.003])]  # one calibration per vector/layers/positions
    budget_config = plan.configs[1]
    assert budget_config.kl_budget == 0.003 and budget_config.alpha > 0 and "_kl0.003_" in budget_config.slug()
    assert plan.configs[2] == SweepConfig(vector_file, 1.0, "all", "response")  # a plain alpha keeps its old slug
    with pytest.raises(SteerError, match="need a model"):
        SweepPlan.grid([vector_file], alphas, ["all"], ["all"])

    out = tmp_path / "sweep"
    options = SweepOptions(
        tasks=["tiny_mc"], out_dir=out, include_path=task_dir, log_samples=True, side_effects=source,
        model_args={"pretrained": tiny_llama_dir},
    )  # fmt: skip
    files = run_sweep(HFEngine(lm), plan, options, progress=False)
    docs = [json.loads(f.read_text()) for f in files]
    side = [d["results"]["side_effects"] for d in docs]
    assert side[0]["kl,none"] == 0 and "kl_budget,none" not in side[0]
    assert side[1]["kl_budget,none"] == 0.003
    assert abs(side[1]["kl,none"] / 0.003 - 1) < 0.5  # measured on all 12 texts, calibrated on 6
    vec = SteeringVector.load(vector_file)
    for config, s in zip(plan.configs[1:], side[1:]):
        deltas = {l: config.alpha * vec.matrix[l] for l in range(3)}
        want_kl, want_ppl, _ = reference(lm.model, lm.tokenizer, source.load(200), deltas, "response")
        assert s["kl,none"] == pytest.approx(want_kl, rel=1e-4) and s["ppl,none"] == pytest.approx(want_ppl, rel=1e-5)
    _, base_ppl, _ = reference(lm.model, lm.tokenizer, source.load(200), {}, "response")
    assert side[0]["ppl,none"] == pytest.approx(base_ppl, rel=1e-5)
    assert docs[1]["config"]["sweep"]["kl_budget"] == 0.003 and docs[1]["config"]["side_effects"]["n_texts"] == 12
    assert len((files[1].parent / "samples_side_effects.jsonl").read_text().splitlines()) == 12

    # the leaderboard shows budget, KL and perplexity next to alpha, before the task metrics
    rows = load_rows(out)
    header = to_console(rows).splitlines()[0].split()
    assert header[:8] == [
        "model", "vector", "alpha", "layers", "positions",
        "side_effects/kl_budget", "side_effects/kl", "side_effects/ppl",
    ]  # fmt: skip
    assert "tiny_mc/acc" in header
    assert "side_effects/kl_stderr" in to_csv(rows).splitlines()[0]


def test_sweep_command_with_kl_alphas(task_dir, vector_file, tiny_llama_dir, tmp_path, capsys):
    from steer_plugin.cli import main
    from steer_plugin.steering.calibration_file import calibration_path

    texts = tmp_path / "neutral.txt"
    texts.write_text(
        "".join(f"{d['q']}{d['choices'][-1]} [{i}]\n" for i, d in enumerate(TINY_MC_DOCS * 3)), encoding="utf-8"
    )
    args = ["sweep", "--model", tiny_llama_dir, "--vector", vector_file, "--alphas", "0,kl:0.002", "--tasks", "tiny_mc"]
    args += ["--include-path", task_dir, "--out", str(tmp_path / "out"), "--fluency-texts", str(texts)]
    args += ["--batch-size", "2", "--positions", "response", "--layers", "all", "--backend", "hooks"]
    args += ["--controls", "0"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "calibrated, wrote" in err and "side_effects/kl_budget" in out and "0.0020" in out
    entries = json.loads(calibration_path(vector_file).read_text())["calibrations"]
    assert any(e["key"]["positions"] == "response" and e["key"]["n_calibration"] == 6 for e in entries)
    results = sorted((tmp_path / "out").glob("*kl0.002*/results.json"))
    assert len(results) == 1
    assert main(args) == 0  # resumed: the stored calibration gives the same alpha, so the same folder
    assert "stored in" in capsys.readouterr().err
    assert len(list((tmp_path / "out").glob("*/results.json"))) == 2  # baseline + the one budget, no new folder
    with pytest.raises(SystemExit):  # argparse: a bad alpha list is a usage error
        main([*args[:6], "0,kl:-1", *args[7:]])
    assert "bad alpha 'kl:-1'" in capsys.readouterr().err


def test_sweep_command_with_controls_at_the_same_kl(task_dir, vector_file, tiny_llama_dir, tmp_path, capsys):
    from steer_plugin.cli import main
    from steer_plugin.steering.calibration_file import calibration_path

    texts = tmp_path / "neutral.txt"
    texts.write_text(
        "".join(f"{d['q']}{d['choices'][-1]} <{i}>\n" for i, d in enumerate(TINY_MC_DOCS * 3)), encoding="utf-8"
    )
    out = tmp_path / "out"
    args = ["sweep", "--model", tiny_llama_dir, "--vector", vector_file, "--alphas", "0,kl:0.002", "--tasks", "tiny_mc"]
    args += ["--include-path", task_dir, "--out", str(out), "--fluency-texts", str(texts), "--batch-size", "2"]
    args += ["--positions", "response", "--layers", "all", "--backend", "hooks"]
    args += ["--controls", "1", "--control-match", "kl"]
    assert main(args) == 0
    assert "skipped" not in capsys.readouterr().err  # the controls' calibration files are ours, not results
    control = out / "controls" / f"{Path(vector_file).stem}-random-0.safetensors"
    assert calibration_path(control).is_file()  # calibrated like a vector, stored beside it
    docs = [json.loads(p.read_text()) for p in sorted(out.glob("*kl0.002*/results.json"))]
    assert len(docs) == 2
    by_vector = {Path(d["config"]["steering"]["vectors"][0]["path"]).name: d for d in docs}
    mine, ctrl = by_vector[Path(vector_file).name], by_vector[control.name]
    assert mine["config"]["sweep"]["alpha"] != ctrl["config"]["sweep"]["alpha"]  # its own alpha for the budget
    for d in (mine, ctrl):  # both near the budget on all the texts (calibrated on half of them)
        side = d["results"]["side_effects"]
        assert side["kl_budget,none"] == 0.002 and abs(side["kl,none"] / 0.002 - 1) < 0.5


def test_a_kl_budget_that_is_not_reached_is_said_and_not_labelled_as_reached(
    task_dir, vector_file, tiny_llama_dir, tmp_path, capsys
):
    """The tiny model's KL saturates far below 1e6: no row may carry that budget (its real KL is far smaller)."""
    from steer_plugin.cli import main
    from steer_plugin.steering.calibration_file import calibration_path
    from steer_plugin.study.rows import load_rows

    texts = tmp_path / "neutral.txt"
    texts.write_text(
        "".join(f"{d['q']}{d['choices'][-1]} ({i})\n" for i, d in enumerate(TINY_MC_DOCS * 3)), encoding="utf-8"
    )
    out = tmp_path / "out"
    args = ["sweep", "--model", tiny_llama_dir, "--vector", vector_file, "--alphas", "0,kl:0.002,kl:1e6"]
    args += ["--tasks", "tiny_mc", "--include-path", task_dir, "--out", str(out), "--fluency-texts", str(texts)]
    args += ["--batch-size", "2", "--positions", "response", "--layers", "all", "--backend", "hooks"]
    args += ["--controls", "0"]
    assert main(args) == 0
    err = capsys.readouterr().err
    # what the calibration file says was reached at best (read as JSON): far below the budget
    entry = next(
        e
        for e in json.loads(calibration_path(vector_file).read_text())["calibrations"]
        if e["key"]["positions"] == "response" and any(r["kl_budget"] == 1e6 for r in e["rows"])
    )
    closest = next(r for r in entry["rows"] if r["kl_budget"] == 1e6)
    assert not closest["converged"] and closest["kl_calibration"] < 1
    assert f"kl:1e+06 not reached for {vector_file}" in err and "not evaluated" in err
    assert f"the closest KL is {closest['kl_calibration']:.4g}" in err
    assert sorted(r.key.kl_budget for r in load_rows(out) if r.key.kl_budget is not None) == [0.002]
    assert not list(out.glob("*kl1e+06*"))


@pytest.mark.parametrize(
    "model_args, vector, needle",
    [({"pretrained": "/models/a,b"}, "v.safetensors", "pretrained=/models/a,b contains ','"),
     ({"pretrained": "m"}, "/vectors/x,y.safetensors", "contains ','"),
     ({"pretrained": "m"}, "/vectors/x;y.safetensors", "contains ';'")],
)  # fmt: skip
def test_a_reproduce_command_never_names_another_model_or_vector(model_args, vector, needle):
    from steer_plugin.errors import SteerError
    from steer_plugin.steering.config import SteeringConfig
    from steer_plugin.study.sweep import model_args_string

    with pytest.raises(SteerError, match="separates arguments in lm_eval's --model_args") as e:
        model_args_string(model_args, SteeringConfig(vector, 1.0))
    assert needle in str(e.value)
    assert model_args_string({"pretrained": "m"}, SteeringConfig("v.safetensors", 1.0, "0,2")) == (
        "pretrained=m,vector=v.safetensors,alpha=1.0,layers=0;2,positions=all"
    )


def test_emotion_tasks_on_a_tokenizer_without_eos_are_refused_before_loading(
    tmp_path, vector_file, monkeypatch, capsys
):
    """The emotion tasks generate, and lm-eval's generation stops at the eos token: a traceback after loading the
    model (and after sweep.json was written) before; steer generate, which stops at max tokens, still runs."""
    import transformers

    from tests.harness.test_model import save_without_eos
    from tests.helpers.cli import assert_one_line_error, run_cli

    model = save_without_eos(tmp_path / "model")
    capsys.readouterr()  # the saving's progress bar
    out = tmp_path / "sweep"
    with monkeypatch.context() as m:
        m.setattr(transformers.AutoModelForCausalLM, "from_pretrained", None)  # never reached
        args = ["sweep", "--model", model, "--vector", vector_file, "--alphas", "1", "--out", out]
        code, _, err = run_cli([*args, "--tasks", "steer_emotion_anger", "--no-side-effects"], capsys)
    assert_one_line_error(code, err, f"the tokenizer of {model} has no eos token", "needed by steer_emotion_anger")
    assert not out.exists()
    code, out_text, err = run_cli(
        ["generate", "--model", model, "--vector", vector_file, "--max-new-tokens", "4", "hi"], capsys
    )
    assert code == 0, err
