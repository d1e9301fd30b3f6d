"""The public Python API: the Python guide's example (docs/python-api.md) runs, `apply` / `steer` equal an
independent forward-hook reference, and vector arithmetic keeps honest metadata."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import steer_plugin
from steer_plugin import SteerError, SteeringVector, steer, train_vector
from tests.helpers.tiny import (
    ARCHS,
    decoder_blocks,
    hook_last_token_states,
    make_model,
    read_goemotions_rows,
    save_model,
    write_goemotions_every_label,
)

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "python-api.md"  # the Python guide of the docs site
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "goemotions"


def guide_example() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```\s*<!-- /api-example -->", text, re.S)
    assert block, "docs/python-api.md lost its <!-- api-example --> block"
    return block.group(1)


def test_guide_example_runs(tmp_path, monkeypatch, capsys):
    from tests.helpers.classifier import build_goemotions_classifier

    # the example steers layers 8-16 at kl:0.1, which a plain random model never reaches
    model_dir = save_model(tmp_path / "model", "llama", n_layers=18, head_scale=30)
    # every label in the train split: `steer_plugin.run` centres its vector on the 27 emotions' means by default
    data = write_goemotions_every_label(tmp_path / "goemotions", {"neutral": 6})
    with open(data / "test.tsv", "a", encoding="utf-8") as f:  # a KL calibration needs 2 neutral texts or more
        f.write("".join(f"The bus stops at the corner of the {s} street.\t27\tn{s}\n" for s in ("first", "second")))
    clf = build_goemotions_classifier(tmp_path / "clf")
    code = guide_example()
    for old, new in (
        ('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(model_dir)),
        ('load_goemotions("train")', f"load_goemotions('train', {str(data)!r})"),
        ("data=None", f"data={str(data)!r}"),
        ('classifier="SamLowe/roberta-base-go_emotions"', f"classifier={clf!r}"),
    ):
        assert old in code
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(GUIDE), "exec"), namespace)
    out = capsys.readouterr().out
    assert "0.7*anger - 0.3*joy" in out
    assert (tmp_path / "anger-mean.safetensors").is_file()
    steered, model = namespace["steered"], namespace["model"]
    assert steered.shape[0] == 2
    assert all(not b._forward_hooks for b in decoder_blocks(model))  # nothing left behind
    v_top = namespace["v_top"]
    assert v_top.metadata["method"] == "top_k" and int((v_top.matrix != 0).sum(1).max()) == 20
    result = namespace["result"]
    assert result.folder == Path("runs/anger") and (tmp_path / "runs/anger/summary.md").is_file()
    assert result.summary.startswith("What steering did") and "Toward anger at KL 0.10" in result.summary
    assert result.summary.strip() in out
    # the baseline, the prompting reference (asking for anger) and kl:0.1
    kinds = sorted((r.key.unsteered, r.key.prompted or "") for r in result.rows)
    assert kinds == [(False, ""), (False, "anger"), (True, "")]
    assert all(f.is_file() for f in result.files) and Path("runs/anger/leaderboard.md") in result.files


def _reference_logits(model, ids, rows: dict[int, torch.Tensor], last_only: bool) -> torch.Tensor:
    """Plain forward hooks written here, without steer_plugin."""

    def make(delta):
        def hook(module, args, out):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            if last_only:
                h[:, -1] += delta
            else:
                h += delta
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return hook

    blocks = decoder_blocks(model)
    handles = [blocks[l].register_forward_hook(make(d)) for l, d in rows.items()]
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("positions", ["all", "response"])
def test_apply_equals_forward_hook_reference(arch, positions):
    model, tok = make_model(arch)
    torch.manual_seed(1)
    v = SteeringVector(torch.randn(3, 32))
    ids = torch.tensor([tok("The weather is fine today")["input_ids"]])
    with torch.no_grad():
        plain = model(ids).logits
        with v.apply(model, alpha=0.5, layers="0,2", positions=positions):
            got = model(ids).logits
        with v.apply(model, alpha=0.0):
            zero = model(ids).logits
    ref = _reference_logits(model, ids, {0: 0.5 * v.matrix[0], 2: 0.5 * v.matrix[2]}, positions == "response")
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # steering really changed something
    assert torch.equal(zero, plain)  # alpha 0: bit for bit the unsteered model
    assert all(not b._forward_hooks for b in decoder_blocks(model))


def test_steer_sums_vectors_and_hooks_go_away_after_errors():
    model, tok = make_model("gpt2")
    torch.manual_seed(2)
    a, b = SteeringVector(torch.randn(3, 32)), SteeringVector(torch.randn(3, 32))
    ids = torch.tensor([tok("Hello there")["input_ids"]])
    with torch.no_grad(), steer(model, [a, b], [1.0, -0.5]):
        got = model(ids).logits
    ref = _reference_logits(model, ids, {l: a.matrix[l] - 0.5 * b.matrix[l] for l in range(3)}, False)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="boom"), a.apply(model, 1.0):
        raise RuntimeError("boom")
    assert all(not blk._forward_hooks for blk in decoder_blocks(model))
    with pytest.raises(SteerError, match="another model"):
        SteeringVector(torch.randn(4, 32)).apply(model, 1.0).__enter__()
    with pytest.raises(SteerError, match="unknown positions"):
        a.apply(model, 1.0, positions="prompt").__enter__()


def test_arithmetic_matrix_mask_and_recipe():
    meta = {"model": "m", "config_hash": "h", "method": "mean", "baseline": "neutral"}
    anger = SteeringVector(torch.arange(6.0).reshape(2, 3), {**meta, "emotion": "anger"})
    joy = SteeringVector(torch.ones(2, 3), {**meta, "emotion": "joy", "model": "other"})
    mixed = 0.7 * anger - 0.3 * joy
    torch.testing.assert_close(mixed.matrix, 0.7 * anger.matrix - 0.3 * joy.matrix)
    assert mixed.metadata["emotion"] == "0.7*anger - 0.3*joy"
    assert mixed.metadata["method"] == "combination"
    assert [(t["emotion"], t["coefficient"]) for t in mixed.metadata["recipe"]] == [("anger", 0.7), ("joy", -0.3)]
    assert mixed.metadata["config_hash"] == "h" and "model" not in mixed.metadata  # only what all parts share
    twice = (mixed + anger) / 2
    assert [t["coefficient"] for t in twice.metadata["recipe"]] == pytest.approx([0.35, -0.15, 0.5])
    assert (-anger).metadata["emotion"] == "-1*anger"
    k1 = SteeringVector(torch.ones(2, 3), mask=torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.bool))
    k2 = SteeringVector(torch.ones(2, 3), mask=torch.tensor([[0, 0, 1], [0, 1, 0]], dtype=torch.bool))
    assert (k1 + k2).mask.sum() == 3 and (k1 + anger).mask is None
    with pytest.raises(SteerError, match="cannot combine"):
        _ = anger + SteeringVector(torch.ones(3, 3))
    with pytest.raises(TypeError):
        _ = anger * anger


def test_mixed_vector_round_trips(tmp_path):
    a = SteeringVector(torch.ones(2, 3), {"emotion": "anger"})
    mixed = 2 * a - SteeringVector(torch.ones(2, 3), {"emotion": "joy"})
    mixed.save(tmp_path / "m.safetensors")
    back = SteeringVector.load(tmp_path / "m.safetensors")
    assert back.metadata["recipe"] == mixed.metadata["recipe"] and torch.equal(back.matrix, mixed.matrix)


def test_public_names_resolve():
    for name in steer_plugin.__all__:
        assert getattr(steer_plugin, name) is not None


def test_public_functions_document_their_arguments_and_result():
    for name in ("train_vector", "random_like", "calibrate", "run"):
        doc = inspect.getdoc(getattr(steer_plugin, name)) or ""
        assert "Args:" in doc and "Returns:" in doc, name
        documented = set(re.findall(r"^\s{4}(\w+):", doc.split("Args:")[1].split("Returns:")[0], re.M))
        model_options = {"dtype", "device", "device_map", "revision", "trust_remote_code", "blocks"}  # run: one entry
        missing = set(inspect.signature(getattr(steer_plugin, name)).parameters) - documented - model_options
        assert not missing, (name, missing)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_train_vector_is_the_mean_difference_of_hooked_block_outputs(arch):
    """Select, record, build in one call = the mean last-token block output of the anger-only texts minus the
    neutral-only ones', each text run alone through plain forward hooks (the fixture read with the csv module)."""
    model, tok = make_model(arch)
    rows = read_goemotions_rows(FIXTURE / "train.tsv")
    texts = {c: [t for t, labels in rows if labels == {c}] for c in ("anger", "neutral")}
    assert len(texts["anger"]) == 4 and len(texts["neutral"]) == 4
    diff = hook_last_token_states(model, tok, texts["anger"]).mean(0) - hook_last_token_states(
        model, tok, texts["neutral"]
    ).mean(0)
    v = train_vector(model, tok, "anger", data=FIXTURE, progress=False)
    np.testing.assert_allclose(v.matrix.numpy(), diff, atol=1e-5, rtol=0)
    assert v.metadata["counts"] == {"anger": 4, "neutral": 4} and v.metadata["method"] == "mean"
    k = train_vector(model, tok, "anger", data=FIXTURE, method="top_k", top_k=5, layers="1-2", progress=False)
    for layer in range(3):
        kept = np.flatnonzero(k.matrix[layer].numpy())
        if layer == 0:
            assert kept.size == 0  # not among the layers kept
        else:
            assert set(kept) == set(np.argsort(-np.abs(diff[layer]))[:5])
            np.testing.assert_allclose(k.matrix[layer].numpy()[kept], diff[layer][kept], atol=1e-5, rtol=0)
    with pytest.raises(SteerError, match="--top-k only applies to --method top_k"):
        train_vector(model, tok, "anger", data=FIXTURE, top_k=5)
    with pytest.raises(SteerError, match="not 'all'"):
        train_vector(model, tok, "all", data=FIXTURE)


def test_train_vector_equals_steer_build(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steer_plugin.cli import main

    out = tmp_path / "built.safetensors"
    argv = ["build", "--model", tiny_llama_dir, "--emotion", "anger", "--data", str(FIXTURE), "--max-per-class", "3",
            "--method", "top_k", "--top-k", "6", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    v = train_vector(model, tok, "anger", data=FIXTURE, max_per_class=3, method="top_k", top_k=6, progress=False)
    built = SteeringVector.load(out)
    assert torch.equal(v.matrix, built.matrix) and torch.equal(v.mask, built.mask)
    saved = {k: val for k, val in built.metadata.items() if k not in ("created_at", "n_layers", "hidden_size")}
    assert {k: v.metadata.get(k) for k in saved if k != "package_version"} == {
        k: val for k, val in saved.items() if k != "package_version"
    }


# --- every public entry point checks its arguments' types and choices first (issue 30) ---------------------


def _run(**kwargs):
    return steer_plugin.run("anger", "/nonexistent/model", **kwargs)


def _tune(**kwargs):
    return steer_plugin.tune("anger", "/nonexistent/model", **kwargs)


def _train(**kwargs):
    model, tok = make_model("llama")
    return train_vector(model, tok, kwargs.pop("emotion", "anger"), **{"data": FIXTURE, "progress": False, **kwargs})


API_REFUSALS = [
    # the sample, whatever the targets: refused where it is built, not after the texts (or the model) loaded
    (
        lambda: steer_plugin.RecordOptions(max_per_class=0),
        "max_per_class (--max-per-class) must be a positive integer or None",
    ),
    (lambda: steer_plugin.RecordOptions(max_per_class=-2), "got -2"),
    (lambda: steer_plugin.RecordOptions(split="training"), "unknown split 'training'"),
    (lambda: steer_plugin.RecordOptions(baseline="calm"), "unknown emotion 'calm'"),
    (lambda: _run(record=steer_plugin.RecordOptions(max_per_class=True)), "RecordOptions.max_per_class: True"),
    (
        lambda: _train(max_per_class=0),
        "max_per_class (--max-per-class) must be a positive integer or None (all texts), got 0",
    ),
    (lambda: _train(seed=-1), "seed (--seed) must be an integer >= 0"),
    # an Evaluation's numbers and specs where it is built (they were checked only when a sweep began)
    (lambda: steer_plugin.Evaluation(limit=float("nan")), "--limit must be a positive number"),
    (lambda: steer_plugin.Evaluation(controls=-1), "--controls must be an integer >= 0, got -1"),
    (lambda: steer_plugin.Evaluation(layers=" "), "--layers ' ' names no layers"),
    (lambda: steer_plugin.Evaluation(layers="10-x"), "bad layer spec"),
    (lambda: steer_plugin.Evaluation(config_batch_rows=0), "--config-batch-rows must be a positive number"),
    (lambda: steer_plugin.Evaluation(engine_args="gpu"), "--engine-args 'gpu': give key=value pairs"),
    # tune: every argument (a bare string where a list is meant was taken letter by letter)
    (lambda: _tune(layers="0-1"), "tune(layers=...): '0-1' is not a list of strings or None"),
    (lambda: _tune(budgets="0.1"), "tune(budgets=...): '0.1' is not a list of numbers or strings"),
    (lambda: _tune(budgets=[True]), "tune(budgets=...): [True] is not a list of numbers or strings"),
    (lambda: _tune(progress="no"), "tune(progress=...): 'no' is not true or false"),
    (lambda: _tune(record={"data": None}), "tune(record=...): {'data': None} is not a RecordOptions"),
    (lambda: _tune(recipe=[steer_plugin.Recipe()]), "tune(recipe=...): [Recipe("),
    (lambda: _tune(evaluation={"limit": 2}), "tune(evaluation=...): {'limit': 2} is not an Evaluation"),
    (lambda: steer_plugin.tune(3), "tune(emotion=...): 3 is not a string"),
    # train_vector: every argument, and the recipe before recording (a bad method failed after it)
    (lambda: _train(method="nope"), "train_vector(method=...): 'nope' is not 'mean' or 'top_k' or 'pca' or 'probe'"),
    (lambda: _train(centre="baseline"), "train_vector(centre=...): 'baseline' is not 'none' or 'emotions'"),
    (lambda: _train(dedupe="yes"), "train_vector(dedupe=...): 'yes' is not true or false"),
    (lambda: _train(progress="no"), "train_vector(progress=...): 'no' is not true or false"),
    (lambda: _train(batch_size=2.0), "train_vector(batch_size=...): 2.0 is not an integer"),
    (lambda: _train(top_k=2.5, method="top_k"), "train_vector(top_k=...): 2.5 is not an integer or None"),
    (lambda: _train(method="top_k", top_k=0), "--top-k K with K >= 1"),
    (lambda: _train(method="top_k", top_k=999), "--top-k 999 is larger than the hidden size 32"),
    (lambda: _train(neutral_pcs=True), "train_vector(neutral_pcs=...): True is not an integer"),
    (lambda: _train(selection="all"), "train_vector(selection=...): 'all' is not 'exclusive' or 'any'"),
    (lambda: _train(pool="max"), "train_vector(pool=...): 'max' is not 'last' or 'mean'"),
    (lambda: _train(template=3), "train_vector(template=...): 3 is not a string"),
    (lambda: _train(layers=3), "train_vector(layers=...): 3 is not a string or None"),
    (lambda: _train(emotion=3), "train_vector(emotion=...): 3 is not a string"),
    (lambda: _train(split="training"), "unknown split 'training'"),
]


@pytest.mark.parametrize(("call", "message"), API_REFUSALS)
def test_every_entry_point_refuses_wrong_types_and_choices_before_any_work(call, message, tmp_path, monkeypatch):
    """Each wrong argument is one SteerError line naming it, from the arguments alone: no model, no texts, no
    recording, nothing written (the loaders and the recorder fail the test if they are reached)."""
    import steer_plugin.data.goemotions as goemotions
    import steer_plugin.harness.engine as engine
    import steer_plugin.vectors.request as request
    from steer_plugin.model.loading import ModelOptions

    def reached(*_args, **_kwargs):
        raise AssertionError("work began before the arguments were checked")

    for owner, name in ((ModelOptions, "load"), (engine, "load_engine"), (request, "record_hidden_states"),
                        (request, "record_generated"), (request, "load_goemotions"), (goemotions, "load_goemotions")):  # fmt: skip
        monkeypatch.setattr(owner, name, reached)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SteerError) as caught:
        call()
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    assert list(tmp_path.iterdir()) == []
