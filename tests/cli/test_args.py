"""The `steer` command line (cli): bad arguments are one line, before any model work; output from files is escaped."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steer_plugin.cli import main
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import CSI, ESC, NUL, assert_one_line_error, run_cli
from tests.helpers.cli import no_controls as _no_controls


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


# --- everything the arguments and files say is checked before any model work --------------------------------

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "goemotions"


@pytest.fixture(scope="module")
def weightless_model(tmp_path_factory, tiny_llama_dir) -> str:
    """The tiny Llama's config and tokenizer without its weights: a command that gets as far as loading them fails
    with "cannot load model", so any other error was found first."""
    folder = tmp_path_factory.mktemp("weightless")
    for f in Path(tiny_llama_dir).iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    return str(folder)


def test_bad_numbers_texts_and_names_are_one_line_before_any_model_work(
    tmp_path, vector_file, task_dir, weightless_model, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # `steer run`'s default vector paths: never in the repository
    texts, empty = tmp_path / "neutral.txt", tmp_path / "empty.txt"
    texts.write_text("The weather is fine today.\nShe walked to the store.\nWhy would anyone do that?\n")
    empty.write_text("\n   \n")
    out = tmp_path / "s"
    model = ["--model", weightless_model]
    sweep = ["sweep", *model, "--vector", vector_file, "--alphas", "0,1", "--tasks", "rel_mc"]
    sweep += ["--include-path", task_dir, "--out", out]
    quiet = [*sweep, "--no-side-effects"]
    generate = ["generate", *model, "--vector", vector_file, "hi"]
    calibrate = ["calibrate", *model, "--vector", vector_file, "--fluency-texts", texts]
    record = ["record", *model, "--data", FIXTURE, "--emotion", "anger", "--out", tmp_path / "r.safetensors"]
    build = ["build", *model, "--data", FIXTURE, "--emotion", "anger", "--out", tmp_path / "b.safetensors"]
    run = ["run", *model, "--data", FIXTURE, "--emotion", "anger", "--tasks", "rel_mc", "--include-path", task_dir]
    run += ["--out", tmp_path / "run", "--no-side-effects"]
    cases = [
        ([*quiet, "--limit", "0"], "--limit must be a positive number"),
        ([*quiet, "--limit", "-1"], "--limit must be a positive number"),
        ([*quiet, "--limit", "nan"], "--limit must be a positive number"),
        ([*quiet, "--side-effect-texts", "-5"], "--side-effect-texts must be an integer >= 1"),
        ([*quiet, "--num-fewshot", "-1"], "--num-fewshot must be an integer >= 0"),
        ([*quiet, "--positions", ","], "give at least one of each"),
        ([*quiet, "--layers", " "], "names no layers"),
        ([*quiet, "--layers", "99"], "layer(s) [99] out of range: this model has layers 0-2"),
        ([*quiet, "--tasks", "no_such_task"], "unknown task(s) no_such_task"),
        ([*quiet, "--apply-chat-template"], "has no chat template"),
        ([*quiet, "--chat", "on"], "has no chat template"),
        ([*sweep, "--fluency-texts", tmp_path / "missing.txt"], "not a text file or a GoEmotions folder"),
        ([*sweep, "--fluency-texts", empty], "no neutral texts"),
        ([*generate, "--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
        ([*generate, "--do-sample", "--temperature", "0"], "--do-sample needs a --temperature > 0"),
        ([*generate, "--top-p", "5"], "--top-p must be in (0, 1]"),
        ([*generate, "--batch-size", "0"], "--batch-size must be an integer >= 1"),
        ([*generate, "--seed", "-1"], "--seed must be an integer >= 0"),
        ([*generate, "--chat", "on"], "has no chat template"),
        (["generate", *model, "--vector", vector_file, ""], "prompt 1 is empty"),
        (["check", *model, "--vector", vector_file, "--prompt", ""], "prompt 1 is empty"),
        (["check", *model, "--vector", vector_file, "--blocks", "²"], "--blocks '²' is not a module path"),
        ([*calibrate, "--tolerance", "0"], "tolerance must be between 0 and 1"),
        ([*calibrate, "--batch-size", "0"], "--batch-size must be an integer >= 1"),
        ([*calibrate, "--n-heldout", "0"], "--n-heldout must be an integer >= 1"),
        ([*calibrate, "--seed", "-1"], "--seed must be an integer >= 0"),
        ([*calibrate, "--layers", "x"], "bad layer spec 'x'"),
        ([*calibrate[:3], "--vector", tmp_path / "missing.safetensors"], "not found"),
        ([*calibrate[:-1], empty], "no neutral texts"),
        ([*record, "--batch-size", "0"], "--batch-size must be an integer >= 1"),
        ([*record, "--template", "chat"], "template 'chat' needs a tokenizer with a chat template"),
        ([*build, "--method", "top_k", "--top-k", "0"], "--top-k K with K >= 1"),
        ([*build, "--method", "top_k", "--top-k", "-3"], "--top-k K with K >= 1"),
        ([*build, "--method", "top_k", "--top-k", "99"], "--top-k 99 is larger than the hidden size 32"),
        ([*build, "--layers", "99"], "layer(s) [99] out of range: this model has layers 0-2"),
        ([*run, "--layers", "99"], "layer(s) [99] out of range: this model has layers 0-2"),
        ([*run, "--method", "top_k", "--top-k", "99"], "--top-k 99 is larger than the hidden size 32"),
        ([*run, "--top-k", "4"], "--top-k is for --method top_k (this run builds --method mean); add --method top_k"),
    ]
    for argv, needle in cases:
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, needle)
    assert not out.exists() and not (tmp_path / "run").exists() and not (tmp_path / "vectors").exists()


def test_promised_refusals_and_late_errors_come_before_any_work(
    tmp_path, vector_file, task_dir, weightless_model, capsys, monkeypatch
):
    """Issue 30, families 4 and 7: each of these was accepted, or refused only after the model loaded or after
    recording; the weightless model shows that no weights were loaded."""
    monkeypatch.chdir(tmp_path)
    texts = tmp_path / "neutral.txt"
    texts.write_text("The weather is fine today.\nShe walked to the store.\nWhy would anyone do that?\n")
    model = ["--model", weightless_model]
    build = ["build", *model, "--data", FIXTURE, "--emotion", "anger", "--out", tmp_path / "b.safetensors"]
    sweep = ["sweep", *model, "--vector", vector_file, "--alphas", "0,1", "--tasks", "rel_mc", "--no-side-effects"]
    sweep += ["--out", tmp_path / "s"]
    comma_model = tmp_path / "tiny,model"
    shutil.copytree(weightless_model, comma_model)
    odd_vector = tmp_path / "a;b.safetensors"
    shutil.copy(vector_file, odd_vector)
    cases = [
        (["data", "--emotion", "anger", "--data", FIXTURE, "--seed", "-1", "--out", tmp_path / "d.jsonl"],
         "seed (--seed) must be an integer >= 0"),
        ([*build, "--seed", "-1"], "seed (--seed) must be an integer >= 0"),
        ([*build, "--layers", " "], "names no layers"),
        ([*build, "--layers", ""], "names no layers"),
        ([*build, "--scale", "1e39"], "--scale 1e+39 is beyond what a float32 vector holds"),
        (["generate", *model, "--vector", vector_file, "--layers", "", "hi"], "names no layers"),
        (["generate", *model, "--vector", vector_file, "--layers", "7", "hi"], "layer(s) [7] out of range"),
        (["check", *model, "--vector", vector_file, "--layers", "7"], "layer(s) [7] out of range"),
        (["calibrate", *model, "--vector", vector_file, "--layers", "7", "--fluency-texts", texts],
         "layer(s) [7] out of range"),
        (["export", vector_file, "--format", "gguf", "--alpha", "0", "--out", tmp_path / "e.gguf"],
         "--alpha 0 exports a vector that steers nothing"),
        (["list", tmp_path / "nowhere"], "is not a folder (it does not exist)"),
        ([*sweep, "--include-path", tmp_path / "nonexistent"], "--include-path"),
        (["run", *model, "--data", FIXTURE, "--emotion", "anger", "--truthfulqa-dir", tmp_path / "nonexistent",
          "--out", tmp_path / "run"], "--truthfulqa-dir"),
        ([*sweep[:1], "--model", comma_model, *sweep[3:], "--include-path", task_dir], "contains ','"),
        ([*sweep[:4], odd_vector, *sweep[5:], "--include-path", task_dir], "contains ';'"),
    ]  # fmt: skip
    for argv, needle in cases:
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, needle)
    assert not (tmp_path / "s").exists() and not (tmp_path / "b.safetensors").exists()


def test_an_impossible_max_per_class_is_refused_before_any_data_or_model_loads(
    tmp_path, weightless_model, capsys, monkeypatch
):
    """Issue 30: `--max-per-class 0` (or negative) with `--emotion all`, an Ekman group, several emotions or
    `--source generated` was refused only after the texts loaded (or, generated, after the model loaded and
    answered nothing): every command that takes it now refuses it with one check, before the data loads."""
    import steer_plugin.data.goemotions as goemotions
    import steer_plugin.vectors.request as request

    def loaded(*_args, **_kwargs):
        raise AssertionError("the data loaded before --max-per-class was checked")

    monkeypatch.setattr(goemotions, "load_goemotions", loaded)
    monkeypatch.setattr(request, "load_goemotions", loaded)
    monkeypatch.chdir(tmp_path)
    model = ["--model", weightless_model, "--data", FIXTURE]
    cases = [
        ["data", "--data", FIXTURE, "--emotion", "all", "--max-per-class", "0"],
        ["record", *model, "--emotion", "all", "--max-per-class", "0", "--out", tmp_path / "r.npz"],
        ["record", *model, "--emotion", "ekman:joy", "--max-per-class", "-2", "--out", tmp_path / "r.npz"],
        ["build", *model, "--emotion", "anger", "--source", "generated", "--max-per-class", "0"],
        ["build", *model, "--emotion", "anger", "--max-per-class", "-1", "--out", tmp_path / "b.safetensors"],
        ["run", *model, "--emotion", "ekman", "--max-per-class", "0", "--out", tmp_path / "run"],
        ["run", *model, "--emotion", "all", "--max-per-class", "0", "--out", tmp_path / "run"],
        ["run", *model, "--emotion", "anger,joy", "--max-per-class", "-3", "--out", tmp_path / "run"],
        ["tune", *model, "--emotion", "anger", "--max-per-class", "0", "--out", tmp_path / "run"],
    ]  # fmt: skip
    for argv in cases:
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, "max_per_class (--max-per-class) must be a positive integer", "got ")
    assert list(tmp_path.iterdir()) == []


def test_build_names_the_emotion_as_run_does(tmp_path, tiny_llama_dir, capsys):
    """`--emotion Anger` is `anger` (as `steer run` takes it): the same vector, never an error after recording."""
    args = ["build", "--model", tiny_llama_dir, "--data", FIXTURE, "--no-progress", "--device", "cpu"]
    assert run_cli([*args, "--emotion", "Anger", "--out", tmp_path / "a.safetensors"], capsys)[0] == 0
    assert run_cli([*args, "--emotion", "anger", "--out", tmp_path / "b.safetensors"], capsys)[0] == 0
    a, b = SteeringVector.load(tmp_path / "a.safetensors"), SteeringVector.load(tmp_path / "b.safetensors")
    assert a.metadata["emotion"] == "anger" and torch.equal(a.matrix, b.matrix)


def _results_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    doc = {"results": {"t": {"acc,none": 0.5}}, "config": {"model": "hf", "model_args": "pretrained=tiny"}}
    (folder / "r.json").write_text(json.dumps(doc))
    return folder


def test_table_and_report_arguments_are_checked_before_reading(tmp_path, capsys):
    from steer_plugin.study.paired import MAX_RESAMPLES

    folder = _results_folder(tmp_path)
    assert MAX_RESAMPLES * 32 <= 2 << 30  # what the bound promises: the resampled statistics fit in 2 GiB
    for command in ("table", "report"):
        code, _, err = run_cli([command, folder, "--seed", "-1"], capsys)
        assert_one_line_error(code, err, "--seed must be an integer >= 0")
        code, _, err = run_cli([command, folder, "--resamples", "99999999999"], capsys)
        assert_one_line_error(code, err, "--resamples 99999999999 would hold about", f"at most {MAX_RESAMPLES}")
    code, _, err = run_cli(["table", folder, "--sort", "t/nonsense"], capsys)
    assert_one_line_error(code, err, "--sort 't/nonsense' is not a column", "t/acc")
    assert not (folder / "leaderboard.md").exists()
    assert run_cli(["table", folder, "--sort", "t/acc", "--resamples", MAX_RESAMPLES], capsys)[0] == 0


def test_ctrl_c_while_the_arguments_are_read_is_interrupted_not_a_traceback(tmp_path):
    """Parsing `--alphas kl:0.1` imports code (it used to import torch, ~2 s): a Ctrl-C then is `interrupted`,
    exit code 130. The Ctrl-C is a real KeyboardInterrupt, raised at the first import after `main` starts."""
    code = (
        "import sys\n"
        "from steer_plugin.cli import main\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "sys.exit(main(['sweep', '--vector', 'v.safetensors', '--alphas', 'kl:0.1', '--out', 'o']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 130 and done.stderr.strip() == "interrupted", done.stderr
