"""Calibration (alpha per KL budget), relative strength, stored calibrations, kl: alphas in sweeps."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from steer_plugin.data.neutral_texts import TextSource
from steer_plugin.errors import SteerError
from steer_plugin.io.formats import CALIBRATION_FORMAT
from steer_plugin.steering import alphas as A
from steer_plugin.steering import calibrate as C
from steer_plugin.steering.alpha_search import search_alphas
from steer_plugin.steering.calibration_file import calibration_path
from steer_plugin.steering.side_effects import SideEffectProbe
from steer_plugin.steering.verified_calibrations import verified_file
from steer_plugin.vectors.stats import ClassStats
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.side_effects import reference
from tests.helpers.tiny import make_model, sharp_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------- alpha specs and the search


def test_alpha_specs_and_budgets():
    assert A.parse_alpha_specs("0, 0.5;kl:0.1,-1") == [0.0, 0.5, A.KLBudget(0.1), -1.0]
    assert str(A.KLBudget(0.1)) == "kl:0.1"
    assert A.parse_budgets("1,0.03,kl:0.1,0.03") == [0.03, 0.1, 1.0]
    for bad in ("kl:-1", "kl:0", "abc", "kl:x", "nan", ""):
        with pytest.raises(SteerError):
            A.parse_alpha_specs(bad)


@pytest.mark.parametrize(("scale", "power"), [(1.0, 2.0), (300.0, 2.0), (0.002, 1.5), (5.0, 3.0)])
def test_search_hits_every_budget_with_few_evaluations(scale, power):
    calls = []

    def kl(a):
        calls.append(a)
        return scale * a**power * (1 + 0.1 * math.sin(a))  # monotone-ish, not an exact power law

    budgets = [0.03, 0.1, 0.3, 1.0]
    found, points = search_alphas(kl, budgets, start=1.0, tolerance=0.05)
    assert len(points) == len(calls) <= 20  # evaluations are shared between budgets
    for b in budgets:
        assert found[b].converged and abs(found[b].kl / b - 1) <= 0.05
        assert found[b].kl == pytest.approx(kl(found[b].alpha))


def test_search_reports_an_unreachable_budget_and_a_dead_vector():
    found, _ = search_alphas(lambda a: 0.5 * (1 - math.exp(-a * a)), [0.1, 2.0], start=1.0)
    assert found[0.1].converged
    assert not found[2.0].converged and found[2.0].kl <= 0.5  # saturates: the closest point, flagged
    with pytest.raises(SteerError, match="does not change the model"):
        search_alphas(lambda a: 0.0, [0.1], start=1.0)


# ---------------------------------------------------------------- relative strength


def test_residual_rms_from_statistics_equals_direct_computation():
    from steer_plugin.vectors.build import residual_rms

    torch.manual_seed(0)
    a = torch.randn(30, 4, 16, dtype=torch.float64) * 3 + 1
    b = torch.randn(50, 4, 16, dtype=torch.float64) - 2
    ca, cb = ClassStats.empty(4, 16), ClassStats.empty(4, 16)
    for chunk in a.split(7):
        ca.update(chunk)
    for chunk in b.split(9):
        cb.update(chunk)
    pooled = torch.cat([a, b])
    want = pooled.pow(2).sum(-1).mean(0).sqrt()  # sqrt(mean over texts of ||h_l||^2)
    assert residual_rms(ca, cb) == pytest.approx(want.tolist(), rel=1e-5)
    vec = SteeringVector(torch.ones(4, 16), {"residual_rms": residual_rms(ca, cb)}).restrict([1, 3])
    rel = vec.relative_strength(2.0)
    assert set(rel) == {1, 3}
    assert rel[1] == pytest.approx(2.0 * 4.0 / float(want[1]), rel=1e-5)
    assert SteeringVector(torch.ones(4, 16)).relative_strength(1.0) == {}


def test_built_vector_carries_rms_and_list_and_check_show_it(tmp_path, tiny_llama_dir, capsys):
    from steer_plugin.cli import main
    from steer_plugin.vectors.build import build_vector
    from steer_plugin.vectors.stats import HiddenStateStats

    torch.manual_seed(1)
    stats = HiddenStateStats({"anger": ClassStats.empty(3, 32), "neutral": ClassStats.empty(3, 32)})
    stats.classes["anger"].update(torch.randn(10, 3, 32) + 1)
    stats.classes["neutral"].update(torch.randn(12, 3, 32))
    vec = build_vector(stats, "anger", "neutral")
    rms = vec.metadata["residual_rms"]
    assert len(rms) == 3 and "pooled" in vec.metadata["residual_rms_source"]
    path = tmp_path / "vectors" / "anger-mean.safetensors"
    vec.save(path)
    assert SteeringVector.load(path).metadata["residual_rms"] == rms
    assert main(["list", str(tmp_path / "vectors")]) == 0
    out = capsys.readouterr().out
    want = statistics.median(float(vec.matrix[l].norm()) / rms[l] for l in range(3))
    assert "rel/alpha" in out and f"{want:.4g}" in out
    old_defaults = ["--layers", "all", "--positions", "all"]
    assert (
        main(["check", "--model", tiny_llama_dir, "--vector", str(path), "--alpha", "2", "--json", *old_defaults]) == 0
    )
    layers = json.loads(capsys.readouterr().out)["layers"]
    assert layers[0]["relative_strength"] == pytest.approx(2 * float(vec.matrix[0].norm()) / rms[0], rel=1e-5)


# ---------------------------------------------------------------- calibration on tiny real models


@pytest.mark.parametrize(("arch", "positions", "scale"), [("llama", "all", 0.01), ("gpt2", "response", 1.0)])
def test_calibration_hits_its_budgets_on_tiny_models(arch, positions, scale, texts_file):
    model, tok = sharp_model(arch)
    torch.manual_seed(4)
    vec = SteeringVector(torch.randn(3, 32) * scale)  # random llama states are tiny: a small vector is enough
    budgets = [0.03, 0.1, 0.3, 1.0]
    source = TextSource(texts_file)
    cal = C.calibrate(
        model, tok, vec, budgets, layers="all", positions=positions, source=source, n_calibration=12, n_heldout=12
    )
    assert [r.kl_budget for r in cal.rows] == budgets
    assert cal.evaluations <= 24
    cal_texts, held_texts = C.split_texts(source, 12, 12)
    assert not set(cal_texts) & set(held_texts)
    for r in cal.rows:
        assert r.converged and abs(r.kl_calibration / r.kl_budget - 1) <= 0.1, r
        # the KL at the found alpha, recomputed independently (one text at a time, forward hooks)
        deltas = {l: r.alpha * vec.matrix[l] for l in range(3)}
        want_cal, want_ppl, _ = reference(model, tok, cal_texts, deltas, positions)
        want_held, _, _ = reference(model, tok, held_texts, deltas, positions)
        assert r.kl_calibration == pytest.approx(want_cal, rel=1e-4)
        assert r.kl_heldout == pytest.approx(want_held, rel=1e-4)
        assert r.ppl_calibration == pytest.approx(want_ppl, rel=1e-5)
    alphas = [r.alpha for r in cal.rows]
    assert alphas == sorted(alphas)
    assert cal.rows[0].relative_strength is None  # this vector has no recorded RMS


def test_stored_calibrations_are_reused_and_coexist(tmp_path, texts_file, monkeypatch):
    model, tok = sharp_model("llama")
    torch.manual_seed(4)
    path = tmp_path / "anger-mean.safetensors"
    SteeringVector(torch.randn(3, 32) * 0.01, {"residual_rms": [10.0, 20.0, 40.0]}).save(path)
    kw = dict(source=TextSource(texts_file), n_calibration=10, n_heldout=10, model_name="tiny")
    first, reused = C.calibrate_vector_file(model, tok, path, [0.1, 0.3], layers="0-1", positions="all", **kw)
    assert not reused and calibration_path(path).name == "anger-mean.calibration.json"
    assert first.rows[0].relative_strength == pytest.approx(
        statistics.median([first.rows[0].alpha * float(SteeringVector.load(path).matrix[l].norm()) / r
                           for l, r in ((0, 10.0), (1, 20.0))]), rel=1e-6)  # fmt: skip

    def no_calibration(*a, **k):
        raise AssertionError("should have reused the stored calibration")

    monkeypatch.setattr(C, "calibrate", no_calibration)
    again, reused = C.calibrate_vector_file(model, tok, path, [0.3], layers="0,1", positions="all", **kw)
    assert reused and [r.alpha for r in again.rows] == [first.rows[1].alpha]
    monkeypatch.undo()
    # another positions setting is another entry; both stay in the file
    _, reused = C.calibrate_vector_file(model, tok, path, [0.1], layers="0-1", positions="response", **kw)
    assert not reused
    doc = json.loads(calibration_path(path).read_text())
    assert doc["format"] == CALIBRATION_FORMAT
    assert sorted(e["key"]["positions"] for e in doc["calibrations"]) == ["all", "response"]
    # a budget that was not calibrated yet, or other texts, mean calibrating again
    _, reused = C.calibrate_vector_file(model, tok, path, [0.1, 0.5], layers="0-1", positions="all", **kw)
    assert not reused
    kw["n_calibration"] = 9
    _, reused = C.calibrate_vector_file(model, tok, path, [0.1], layers="0-1", positions="all", **kw)
    assert not reused


def test_calibrate_command_json_and_table(tmp_path, texts_file, capsys):
    from steer_plugin.cli import main

    model, tok = sharp_model("gpt2")
    model_dir = str(tmp_path / "m")
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    torch.manual_seed(4)
    vec = tmp_path / "v.safetensors"
    SteeringVector(torch.randn(3, 32)).save(vec)
    args = ["calibrate", "--model", model_dir, "--vector", str(vec), "--kl", "0.05,0.2", "--fluency-texts", texts_file]
    args += ["--n-calibration", "10", "--n-heldout", "10", "--positions", "response", "--layers", "all"]
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["kl_budget"] for r in rows] == [0.05, 0.2]
    for r in rows:
        assert {"alpha", "kl_calibration", "kl_heldout", "relative_strength"} <= set(r)
        assert abs(r["kl_calibration"] / r["kl_budget"] - 1) <= 0.1
    assert (tmp_path / "v.calibration.json").exists()
    assert main(args) == 0  # reused: the same numbers as a table
    out = capsys.readouterr()
    assert "kl budget" in out.out and f"{rows[1]['alpha']:.5g}" in out.out and "stored calibration" in out.err


def test_calibrate_command_errors(tmp_path, tiny_llama_dir, texts_file, capsys):
    from steer_plugin.cli import main

    vec = tmp_path / "zero.safetensors"
    m = torch.zeros(3, 32)
    m[2] = 1
    SteeringVector(m).save(vec)
    base = ["calibrate", "--model", tiny_llama_dir, "--vector", str(vec), "--fluency-texts", texts_file]
    base += ["--layers", "all", "--positions", "all"]  # the defaults before they changed (--layers below wins)
    assert main([*base, "--layers", "0-1"]) == 2
    assert "zero on layers 0-1" in capsys.readouterr().err
    assert main([*base, "--kl", "0.1,-2"]) == 2
    assert "bad alpha" in capsys.readouterr().err


# ---------------------------------------------------------------- what a stored calibration is keyed on


def _saved_sharp_model(path, seed: int):
    """``sharp_model`` (other weights per seed), saved and loaded from ``path`` as a model the user names."""
    from steer_plugin.model.loading import ModelOptions

    model, tok = make_model("llama", n_layers=3, hidden=32, seed=seed)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return ModelOptions(str(path)).load()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """Two models with the same folder name, config and dtype, other weights: ``.../a/model`` and ``.../b/model``."""
    root = tmp_path_factory.mktemp("same_name")
    return _saved_sharp_model(root / "a" / "model", 3), _saved_sharp_model(root / "b" / "model", 5)


def _kl_at(loaded, texts, vec, alpha) -> float:
    """The independent reference: one text at a time, a forward hook adding alpha x the vector on every layer."""
    return reference(loaded.model, loaded.tokenizer, texts, {l: alpha * vec.matrix[l] for l in range(3)}, "all")[0]


def _small_vector(tmp_path, texts_file):
    """A small random vector file (KL 0.1-0.3 reachable on the tiny models) and the calibration arguments."""
    torch.manual_seed(4)
    path = tmp_path / "anger-mean.safetensors"
    SteeringVector(torch.randn(3, 32) * 0.01).save(path)
    source = TextSource(texts_file)
    return (
        path,
        SteeringVector.load(path),
        source,
        dict(source=source, n_calibration=10, n_heldout=10, layers="all", positions="all"),
    )


def test_a_stored_calibration_is_not_reused_for_other_weights_of_the_same_name(tmp_path, texts_file, two_models):
    a, b = two_models
    path, vec, source, kw = _small_vector(tmp_path, texts_file)
    on_a, reused = C.calibrate_vector_file(a.model, a.tokenizer, path, [0.1], model_name=a.name, **kw)
    assert not reused
    on_b, reused = C.calibrate_vector_file(b.model, b.tokenizer, path, [0.1], model_name=b.name, **kw)
    assert not reused  # the same name, config and dtype, but not the same weights
    cal_texts = C.split_texts(source, 10, 10)[0]
    assert abs(_kl_at(b, cal_texts, vec, on_b.rows[0].alpha) / 0.1 - 1) <= 0.05 + 1e-4  # b's own alpha fits b
    assert abs(_kl_at(b, cal_texts, vec, on_a.rows[0].alpha) / 0.1 - 1) > 0.05  # a's would not have
    keys = [e["key"] for e in json.loads(calibration_path(path).read_text())["calibrations"]]
    assert (
        len(keys) == 2 and keys[0]["model"] == keys[1]["model"] == "model" and keys[0]["weights"] != keys[1]["weights"]
    )
    _, reused = C.calibrate_vector_file(b.model, b.tokenizer, path, [0.1], model_name=b.name, **kw)
    assert reused  # b's own entry: used as stored


def test_a_calibration_without_a_weights_fingerprint_is_verified_on_reuse(
    tmp_path, texts_file, two_models, monkeypatch
):
    """As the shipped calibrations (made on an offline copy of the hub model): one KL evaluation per budget at the
    stored alpha; within the entry's tolerance it is reused, else the vector is calibrated again - and said so."""
    a, b = two_models
    path, vec, source, kw = _small_vector(tmp_path, texts_file)
    made, _ = C.calibrate_vector_file(a.model, a.tokenizer, path, [0.1, 0.3], model_name=a.name, **kw)
    doc = json.loads(calibration_path(path).read_text())
    del doc["calibrations"][0]["key"]["weights"]  # as a calibration made before the fingerprint was recorded
    calibration_path(path).write_text(json.dumps(doc))
    said: list[str] = []

    def no_calibration(*args, **kwargs):
        raise AssertionError("should have reused the verified calibration")

    monkeypatch.setattr(C, "calibrate", no_calibration)
    again, reused = C.calibrate_vector_file(a.model, a.tokenizer, path, [0.1, 0.3], model_name=a.name,
                                            progress=said.append, **kw)  # fmt: skip
    monkeypatch.undo()
    assert reused and [r.alpha for r in again.rows] == [r.alpha for r in made.rows]
    assert len(said) == 1 and "verified the stored calibration on this model" in said[0], said
    cal_texts = C.split_texts(source, 10, 10)[0]
    for r in made.rows:  # what the verification measured: the reference's KL at the stored alpha
        assert (
            f"KL {_kl_at(a, cal_texts, vec, r.alpha):.4g} at alpha {r.alpha:.5g} for budget {r.kl_budget:.4g}"
            in said[0]
        )
    said.clear()
    on_b, reused = C.calibrate_vector_file(b.model, b.tokenizer, path, [0.1, 0.3], model_name=b.name,
                                           progress=said.append, **kw)  # fmt: skip
    assert not reused and "does not hold on this model" in said[0] and "calibrating again" in said[0], said
    assert abs(_kl_at(b, cal_texts, vec, on_b.rows[0].alpha) / 0.1 - 1) <= 0.05 + 1e-4


def test_a_verification_that_held_is_remembered_for_these_weights(tmp_path, texts_file, two_models, monkeypatch):
    """The same evaluations on the same weights give the same KLs: a second reuse evaluates nothing; other
    weights verify again; a cache that cannot be written only costs the evaluations."""
    a, b = two_models
    path, _, _, kw = _small_vector(tmp_path, texts_file)
    C.calibrate_vector_file(b.model, b.tokenizer, path, [0.1], model_name=b.name, **kw)  # b's own calibration
    doc = json.loads(calibration_path(path).read_text())
    del doc["calibrations"][0]["key"]["weights"]  # one that travels: verified on reuse
    calibration_path(path).write_text(json.dumps(doc))
    said: list[str] = []
    evaluations: list[int] = []
    measure = SideEffectProbe.measure
    monkeypatch.setattr(
        SideEffectProbe, "measure", lambda self, *a_, **k: evaluations.append(1) or measure(self, *a_, **k)
    )
    for _ in range(2):
        _, reused = C.calibrate_vector_file(b.model, b.tokenizer, path, [0.1], model_name=b.name,
                                            progress=said.append, **kw)  # fmt: skip
        assert reused
    assert len(evaluations) == 1 and "verified the stored calibration" in said[0]
    assert "verified on these weights before" in said[1] and verified_file().is_file()
    monkeypatch.setenv("STEER_CACHE_DIR", str(tmp_path / "not-writable"))
    (tmp_path / "not-writable").write_text("a file, not a folder")
    for _ in range(2):  # nothing remembered: both evaluate
        _, reused = C.calibrate_vector_file(b.model, b.tokenizer, path, [0.1], model_name=b.name,
                                            progress=said.append, **kw)  # fmt: skip
        assert reused
    assert len(evaluations) == 3
