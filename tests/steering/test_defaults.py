"""One default of layers and positions across `steer calibrate/generate/check/sweep/run` and the library, and
``kl:X`` alphas in `steer generate` and `steer check` resolving to the alpha `steer calibrate` stores."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from steer_plugin.cli import build_parser
from steer_plugin.cli.study import evaluation_from_args
from steer_plugin.errors import SteerError
from steer_plugin.steering.defaults import DEFAULT_LAYERS, DEFAULT_POSITIONS
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import run_cli
from tests.helpers.tiny import sharp_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUDGET = 0.05


def _where(argv: list[str]) -> tuple[str, str]:
    """The layers and positions a command steers when not told, as its parser gives them."""
    args = build_parser().parse_args(argv)
    if argv[0] in ("sweep", "run"):
        shared = evaluation_from_args(args)
        return shared.layers, shared.positions
    return args.layers, args.positions


def test_every_command_has_the_same_default_layers_and_positions():
    assert (DEFAULT_LAYERS, DEFAULT_POSITIONS) == ("middle", "response")  # steer run's, chosen by measurement
    commands = [
        ["calibrate", "--vector", "v"],
        ["generate", "--vector", "v"],
        ["check", "--vector", "v"],
        ["sweep", "--vector", "v", "--alphas", "1", "--out", "o"],
        ["run", "--emotion", "anger"],
    ]
    assert {argv[0]: _where(argv) for argv in commands} == {
        argv[0]: (DEFAULT_LAYERS, DEFAULT_POSITIONS) for argv in commands
    }


def test_the_library_entry_points_have_the_same_defaults():
    from steer_plugin.steering.calibrate import calibrate, calibrate_vector_file
    from steer_plugin.steering.check import run_check
    from steer_plugin.steering.generate import GenerationSettings
    from steer_plugin.study.evaluation import Evaluation

    for fn in (calibrate, calibrate_vector_file, run_check):
        params = inspect.signature(fn).parameters
        assert (params["layers"].default, params["positions"].default) == (DEFAULT_LAYERS, DEFAULT_POSITIONS), fn
    evaluation = Evaluation()  # `steer_plugin.run`'s and `sweep`'s
    assert (evaluation.layers, evaluation.positions) == (DEFAULT_LAYERS, DEFAULT_POSITIONS)
    settings = GenerationSettings()
    assert (settings.layers, settings.positions) == (DEFAULT_LAYERS, DEFAULT_POSITIONS)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    model, tok = sharp_model("gpt2")
    path = tmp_path_factory.mktemp("sharp_gpt2")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _vector(tmp_path) -> str:
    torch.manual_seed(4)
    path = tmp_path / "v.safetensors"
    SteeringVector(torch.randn(3, 32)).save(path)
    return str(path)


def test_check_at_kl_x_uses_the_alpha_steer_calibrate_stored(model_dir, texts_file, tmp_path, capsys):
    vector = _vector(tmp_path)
    given = ["--model", model_dir, "--vector", vector, "--fluency-texts", texts_file]
    code, out, err = run_cli(["calibrate", *given, "--kl", str(BUDGET), "--json"], capsys)
    assert code == 0, err
    (row,) = json.loads(out)
    code, out, err = run_cli(["check", *given, "--alpha", f"kl:{BUDGET}", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["alpha"] == row["alpha"] and report["kl_budget"] == BUDGET
    assert report["positions"] == "response" and [l["layer"] for l in report["layers"]] == [1]  # the middle third
    assert report["ok"] and report["layers"][0]["kl_next_token"] > 0
    said = [line for line in err.splitlines() if line.startswith(f"kl:{BUDGET:g} = alpha")]
    assert len(said) == 1 and f"{row['alpha']:.5g}" in said[0] and "stored in" in said[0], err
    assert "layers middle = 1, positions response" in said[0]
    code, out, _ = run_cli(["check", *given, "--alpha", f"kl:{BUDGET}"], capsys)
    assert code == 0 and f"alpha={row['alpha']:g} (kl:{BUDGET:g})  positions=response" in out


def test_generate_at_kl_x_calibrates_once_and_steer_calibrate_reuses_it(model_dir, texts_file, tmp_path, capsys):
    vector = _vector(tmp_path)
    given = ["--model", model_dir, "--vector", vector, "--fluency-texts", texts_file]
    out_json = tmp_path / "gen.json"
    generate = ["generate", *given, "--alphas", f"0,kl:{BUDGET}", "--max-new-tokens", "3", "--no-chat", "Why"]
    code, out, err = run_cli([*generate, "--json-out", out_json], capsys)
    assert code == 0, err
    assert "calibrated, wrote" in err
    doc = json.loads(out_json.read_text())
    alpha = doc["alphas"][1]
    assert doc["kl_budgets"] == [None, BUDGET] and alpha > 0
    assert f"alpha={alpha:g} (kl:{BUDGET:g})" in out
    code, out, err = run_cli(["calibrate", *given, "--kl", str(BUDGET), "--json"], capsys)
    assert code == 0 and "stored calibration" in err
    assert json.loads(out)[0]["alpha"] == alpha  # the alpha generate steered with is the one calibrate shows
    code, _, err = run_cli(generate, capsys)  # again: the stored calibration, nothing calibrated
    assert code == 0 and "stored in" in err and "calibrated" not in err


def test_plain_alphas_keep_the_documents_of_earlier_versions(model_dir, tmp_path, capsys):
    vector = _vector(tmp_path)
    out_json = tmp_path / "gen.json"
    argv = ["generate", "--model", model_dir, "--vector", vector, "--alphas", "0,1", "--max-new-tokens", "2"]
    assert run_cli([*argv, "--no-chat", "--json-out", out_json, "Why"], capsys)[0] == 0
    assert "kl_budgets" not in json.loads(out_json.read_text())
    code, out, _ = run_cli(["check", "--model", model_dir, "--vector", vector, "--positions", "all", "--json"], capsys)
    assert code == 0 and not {"kl_budget", "positions"} & set(json.loads(out))


def test_kl_alphas_are_checked_before_the_model_loads(tmp_path, capsys):
    vector = _vector(tmp_path)
    no_model = ["--model", "/nonexistent/model", "--vector", vector]
    code, _, err = run_cli(["check", *no_model, "--alpha", "kl:0.1,kl:0.3"], capsys)
    assert code == 2 and "--alpha takes one number or one kl:X budget" in err
    code, _, err = run_cli(["check", *no_model, "--alpha", "kl:0"], capsys)
    assert code == 2 and "bad alpha 'kl:0'" in err
    code, _, err = run_cli(
        ["generate", *no_model, "--alphas", "0,kl:0.1", "--fluency-texts", tmp_path / "no.txt"], capsys
    )
    assert code == 2 and "not a text file or a GoEmotions folder" in err
    with pytest.raises(SystemExit):  # argparse: a bad alpha list is a usage error
        build_parser().parse_args(["generate", *no_model, "--alphas", "0,kl:-1"])
    assert "bad alpha 'kl:-1'" in capsys.readouterr().err


def test_a_budget_needs_the_vector_file(model_dir):
    from steer_plugin.model.loading import ModelOptions
    from steer_plugin.steering.generate import GenerationSettings, generate_side_by_side

    loaded = ModelOptions(model_dir).load()
    vec = SteeringVector(torch.randn(3, 32))
    with pytest.raises(SteerError, match="needs the vector's file"):
        generate_side_by_side(loaded.model, loaded.tokenizer, vec, ["Why"], "0,kl:0.1", GenerationSettings(chat=False))


def test_check_at_the_response_positions_sees_steering_that_lands_everywhere(model_dir, tmp_path, monkeypatch, capsys):
    """positions=response steers each prompt's last token only: a change before it is a failure."""
    import steer_plugin.model.hooks as hooks

    real = hooks._steered
    monkeypatch.setattr(hooks, "_steered", lambda h, d, where: real(h, d, None))
    code, out, _ = run_cli(["check", "--model", model_dir, "--vector", _vector(tmp_path), "--json"], capsys)
    report = json.loads(out)
    assert code == 1 and [l["ok"] for l in report["layers"]] == [False]
    assert report["layers"][0]["cosine"] > 0.9999  # the steered token itself got alpha x row: the rest did not hold
