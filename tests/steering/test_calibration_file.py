"""The calibration file beside a vector as untrusted data: a tampered entry is a one-line error naming the
file and the field, never alphas steered under a KL label they do not have; a full disk is an error too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from steer_plugin.steering import calibration_file as C
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.disk import NO_SPACE, full_disk
from tests.helpers.tiny import sharp_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    model, tok = sharp_model("gpt2")
    path = tmp_path_factory.mktemp("sharp_gpt2")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _argv(model_dir: str, vector: Path, texts: str) -> list[str]:
    return ["calibrate", "--model", model_dir, "--vector", str(vector), "--kl", "0.05,0.2", "--fluency-texts", texts,
            "--n-calibration", "10", "--n-heldout", "10", "--layers", "all", "--positions", "all"]  # fmt: skip


@pytest.fixture(scope="module")
def calibrated(model_dir, texts_file, tmp_path_factory) -> Path:
    """A vector and the calibration file `steer calibrate` stored beside it."""
    from steer_plugin.cli import main

    torch.manual_seed(4)
    vector = tmp_path_factory.mktemp("calibrated") / "v.safetensors"
    SteeringVector(torch.randn(3, 32)).save(vector)
    assert main(_argv(model_dir, vector, texts_file)) == 0
    assert C.calibration_path(vector).is_file()
    return vector


def _copy(calibrated: Path, tmp_path: Path) -> Path:
    for p in (calibrated, C.calibration_path(calibrated)):
        shutil.copy2(p, tmp_path / p.name)
    return tmp_path / calibrated.name


def _assert_error(code: int, err: str, *needles: str) -> None:
    """Exit code 2, no traceback, the last stderr line the error (loading a model prints progress bars before)."""
    assert code == 2 and "Traceback" not in err, err
    assert_one_line_error(code, err.strip().splitlines()[-1], "steer calibrate: error:", *needles)


def _row(doc, **change):
    doc["calibrations"][0]["rows"][0].update(change)


TAMPERED = [
    (lambda d: _row(d, alpha=-5.0), "calibrations[0].rows[0].alpha"),
    (lambda d: _row(d, alpha=float("nan")), "calibrations[0].rows[0].alpha"),
    (lambda d: _row(d, alpha="0.1"), "calibrations[0].rows[0].alpha"),
    (lambda d: _row(d, kl_budget="0.05"), "calibrations[0].rows[0].kl_budget"),
    (lambda d: _row(d, converged="yes"), "calibrations[0].rows[0].converged"),
    (lambda d: d["calibrations"][0]["rows"][0].pop("alpha"), "calibrations[0].rows[0].alpha"),
    (lambda d: d.update(calibrations=None), "calibrations"),
    (lambda d: d["calibrations"][0].update(key="a string"), "calibrations[0].key"),
    (lambda d: d["calibrations"][0].update(rows={"a": 1}), "calibrations[0].rows"),
    (lambda d: d["calibrations"][0].update(extra=1), "calibrations[0].extra"),
    (lambda d: d.update(format_version=99), "format_version"),
]


@pytest.mark.parametrize(("tamper", "field"), TAMPERED)
def test_a_tampered_calibration_is_refused(calibrated, model_dir, texts_file, tmp_path, capsys, tamper, field):
    vector = _copy(calibrated, tmp_path)
    path = C.calibration_path(vector)
    doc = json.loads(path.read_text())
    tamper(doc)
    path.write_text(json.dumps(doc))
    before = path.read_bytes()
    code, out, err = run_cli(_argv(model_dir, vector, texts_file), capsys)
    _assert_error(code, err, "v.calibration.json", field)
    assert out == "" and path.read_bytes() == before
    code, out, err = run_cli([*_argv(model_dir, vector, texts_file), "--force"], capsys)
    _assert_error(code, err, "v.calibration.json", field)  # before calibrating, not after
    assert "alpha " not in err  # no search step was printed
    assert path.read_bytes() == before


def test_a_stored_alpha_that_overflows_the_vector_is_refused(calibrated, model_dir, texts_file, tmp_path, capsys):
    """1e300 passes the schema (a positive finite number); times the vector it is inf, so it is not reused.
    --force calibrates again and replaces the entry."""
    vector = _copy(calibrated, tmp_path)
    code, out, err = run_cli(_argv(model_dir, vector, texts_file), capsys)
    assert code == 0 and "stored calibration" in err and "kl budget" in out  # untampered: reused
    path = C.calibration_path(vector)
    doc = json.loads(path.read_text())
    _row(doc, alpha=1e300)
    path.write_text(json.dumps(doc))
    code, out, err = run_cli(_argv(model_dir, vector, texts_file), capsys)
    _assert_error(code, err, "v.calibration.json", "calibrations[0].rows[0].alpha", "1e+300")
    assert out == ""
    assert run_cli([*_argv(model_dir, vector, texts_file), "--force"], capsys)[0] == 0
    assert json.loads(path.read_text())["calibrations"][0]["rows"][0]["alpha"] < 1e3


def test_a_calibration_file_that_is_not_json_is_refused(calibrated, model_dir, texts_file, tmp_path, capsys):
    vector = _copy(calibrated, tmp_path)
    C.calibration_path(vector).write_text('{"format": "steer-plugin/calibration", ')
    code, _, err = run_cli(_argv(model_dir, vector, texts_file), capsys)
    _assert_error(code, err, "v.calibration.json", "not valid JSON")


def test_full_disk_in_calibrate_is_an_error_not_a_wrote(
    calibrated,
    model_dir,
    texts_file,
    tmp_path,
    capsys,
    monkeypatch,
):
    vector = tmp_path / calibrated.name
    shutil.copy2(calibrated, vector)
    full_disk(monkeypatch, "calibration.json")
    code, out, err = run_cli(_argv(model_dir, vector, texts_file), capsys)
    assert "wrote" not in err
    _assert_error(code, err, "v.calibration.json", NO_SPACE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]


def test_the_shipped_calibrations_travel_and_cover_the_default_recipe():
    """`steer run --model HuggingFaceTB/SmolLM2-135M-Instruct` starts without recording or calibrating: every
    emotion and Ekman group has the default recipe's vector, calibrated at the default layers, positions and KL
    budgets; no shipped entry carries the offline copy's weights fingerprint (it would be another model's to the hub
    weights: recalibrated instead of verified) or a path of the machine that made it."""
    from steer_plugin.data.goemotions import EKMAN, LABELS
    from steer_plugin.study.run import DEFAULT_ALPHAS
    from steer_plugin.vectors.recipe import DEFAULT_RECIPE
    from steer_plugin.vectors.vector import default_vector_path

    repo = Path(__file__).resolve().parents[2]
    budgets = sorted(float(a[3:]) for a in DEFAULT_ALPHAS.split(",") if a.startswith("kl:"))
    targets = [*(label for label in LABELS if label != "neutral"), *(f"ekman:{g}" for g in EKMAN)]
    for target in targets:
        path = repo / default_vector_path("HuggingFaceTB/SmolLM2-135M-Instruct", target, DEFAULT_RECIPE)
        stored = C.stored_calibrations(path)  # validated, as steer run reads it
        assert any(
            c.key["layers"] == "10-19" and c.key["positions"] == "response" and c.has_budgets(budgets) for c in stored
        ), path.name
    for file in sorted((repo / "vectors").rglob("*.calibration.json")):
        for entry in json.loads(file.read_text(encoding="utf-8"))["calibrations"]:
            assert "weights" not in entry["key"], file.name
            assert "/" not in entry.get("texts", "").split("(")[0], (file.name, entry.get("texts"))
