"""`steer check` and `steer generate` on tiny real models."""

from __future__ import annotations

import json

import pytest
import torch

from steer_plugin.cli import main
from steer_plugin.vectors.stats import ClassStats, HiddenStateStats
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import ESC, assert_one_line_error, run_cli
from tests.helpers.cli import no_controls as _no_controls


@pytest.fixture(scope="module")
def vec_file(tmp_path_factory):
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    m = torch.randn(3, 32)
    m[1] = 0  # a zero row: nothing to check there, still ok
    SteeringVector(m, {"emotion": "anger"}).save(path)
    return str(path)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_check_passes_and_reports_each_layer(tmp_path, vec_file, capsys, arch):
    from tests.helpers.tiny import save_model

    model = save_model(tmp_path / arch, arch)
    old_defaults = ["--layers", "all", "--positions", "all"]  # every layer, every position: as before they changed
    assert main(["check", "--model", model, "--vector", vec_file, "--alpha", "2", "--json", *old_defaults]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["alpha0_exact"] and report["backends_agree"] and report["hooks_left"] == 0
    layers = {l["layer"]: l for l in report["layers"]}
    assert set(layers) == {0, 1, 2}
    for l in (0, 2):
        assert layers[l]["cosine"] > 0.9999 and abs(layers[l]["norm_ratio"] - 1) < 1e-3
        assert layers[l]["kl_next_token"] > 0
    assert layers[1]["cosine"] is None and layers[1]["kl_next_token"] == 0
    assert main(["check", "--model", model, "--vector", vec_file, *old_defaults]) == 0
    assert "RESULT: PASS" in capsys.readouterr().out


def test_check_detects_a_wrong_injection_point(tiny_llama_dir, vec_file, monkeypatch, capsys):
    """If steering landed anywhere but the block output, the received change would not be alpha x row."""
    import steer_plugin.model.hooks as steering

    real = steering._steered
    monkeypatch.setattr(steering, "_steered", lambda h, d, w: real(h, 2 * d, w))
    assert (
        main(["check", "--model", tiny_llama_dir, "--vector", vec_file, "--layers", "all", "--positions", "all"]) == 1
    )
    assert "RESULT: FAIL" in capsys.readouterr().out


def test_check_rejects_a_mismatched_vector(tiny_llama_dir, tmp_path, capsys):
    SteeringVector(torch.ones(4, 32)).save(tmp_path / "bad.safetensors")
    assert main(["check", "--model", tiny_llama_dir, "--vector", str(tmp_path / "bad.safetensors")]) == 2
    assert "model has [3 layers x 32]" in capsys.readouterr().err


def test_generate_side_by_side_json_and_baseline(tiny_llama_dir, vec_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "gen.json"
    prompts = ["Tell me about yourself.", "Why"]
    assert (
        main(
            [
                "generate",
                "--model",
                tiny_llama_dir,
                "--vector",
                vec_file,
                "--alphas",
                "0,3",
                "--layers",
                "all",  # the middle layer of this vector is zero: all, as before the default changed
                "--max-new-tokens",
                "6",
                "--no-chat",
                "--json-out",
                str(out),
                *prompts,
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert doc["settings"]["max_new_tokens"] == 6 and doc["alphas"] == [0.0, 3.0]
    gens = {(g["prompt"], g["alpha"]): g["text"] for g in doc["generations"]}
    assert len(gens) == 4
    # alpha 0 is the plain model's greedy output, prompt by prompt
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    for p in prompts:
        ids = tok(p, return_tensors="pt").input_ids
        ref = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
        )
        new = ref[0, ids.shape[1] :].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        assert gens[(p, 0.0)] == tok.decode(new, skip_special_tokens=True)
    assert any(gens[(p, 0.0)] != gens[(p, 3.0)] for p in prompts)
    assert "baseline" in capsys.readouterr().out


def test_generate_sampling_is_reproducible(tiny_llama_dir, vec_file, tmp_path):
    runs = []
    for i in range(2):
        out = tmp_path / f"s{i}.json"
        main(
            [
                "generate",
                "--model",
                tiny_llama_dir,
                "--vector",
                vec_file,
                "--alphas",
                "1",
                "--layers",
                "all",
                "--do-sample",
                "--temperature",
                "1.5",
                "--seed",
                "7",
                "--max-new-tokens",
                "8",
                "--no-chat",
                "--json-out",
                str(out),
                "hello",
                "Why would anyone",
            ]
        )
        runs.append(json.loads(out.read_text())["generations"])
    assert runs[0] == runs[1]


def test_generate_chat_on_needs_a_chat_template(tiny_llama_dir, vec_file, capsys):
    """``--chat on`` on a tokenizer without a template: one line, exit 2 (``auto`` would use the bare prompt)."""
    rc = main(
        ["generate", "--model", tiny_llama_dir, "--vector", vec_file, "--chat", "on", "--max-new-tokens", "2", "Hi"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "no chat template" in err and "Traceback" not in err


def test_check_report_and_errors_escape_control_characters(tmp_path, capsys):
    from steer_plugin.steering.check import CheckReport, format_report

    _no_controls(format_report(CheckReport(f"m{ESC}[2J", 1.0)))
    # an error message quoting a file name (or its contents) stays one line without escapes
    name = tmp_path / f"v{ESC}[31m\nx.safetensors"
    name.write_bytes(b"junk")
    code, _, err = run_cli(["export", name, "--format", "gguf", "--out", tmp_path / "o.gguf"], capsys)
    assert_one_line_error(code, err, "steer export: error:", "v\\x1b[31m\\nx.safetensors")
    _no_controls(err)
    stats = tmp_path / "s.safetensors"
    classes = {f"c{ESC}[2J": ClassStats(3, torch.zeros(3, 32, dtype=torch.float64), torch.ones(3, 32))}
    HiddenStateStats(classes, {}).save(stats)
    code, _, err = run_cli(
        ["build", "--stats", stats, "--emotion", "anger", "--out", tmp_path / "v.safetensors"], capsys
    )
    assert_one_line_error(code, err, "c\\x1b[2J")
    _no_controls(err)


def test_generate_output_escapes_control_characters():
    from steer_plugin.steering.generate import Generation, GenerationRun, GenerationSettings, format_run

    run = GenerationRun(GenerationSettings(), [0.0])
    run.generations.append(Generation(f"p{ESC}[2J", 0.0, f"line one\nline{ESC}[31m two", 3))
    text = format_run(run)
    _no_controls(text)
    assert "line one\nline\\x1b[31m two" in text  # newlines of the generation are kept
