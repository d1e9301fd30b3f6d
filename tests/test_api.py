"""The public Python API: the README's example runs, `apply` / `steer` equal an independent forward-hook
reference, and vector arithmetic keeps honest metadata."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers_tiny import ARCHS, decoder_blocks, make_model, save_model

import steer_plugin
from steer_plugin import SteerError, SteeringVector, steer

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "goemotions"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```\s*<!-- /api-example -->", text, re.S)
    assert block, "README.md lost its <!-- api-example --> block"
    return block.group(1)


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    model_dir = save_model(tmp_path / "model", "llama", n_layers=18)  # the example steers layers 8-16
    data = tmp_path / "goemotions"
    shutil.copytree(FIXTURE, data)
    with open(data / "train.tsv", "a", encoding="utf-8") as f:  # the fixture has no joy-only text
        f.write("What a wonderful day!\t17\tj1\nI love it, so happy\t17\tj2\n")
    code = readme_example()
    for old, new in (
        ('"HuggingFaceTB/SmolLM2-135M-Instruct"', repr(model_dir)),
        ('load_goemotions("train")', f"load_goemotions('train', {str(data)!r})"),
    ):
        assert old in code
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "0.7*anger - 0.3*joy" in out
    assert (tmp_path / "anger-mean.safetensors").is_file()
    steered, model = namespace["steered"], namespace["model"]
    assert steered.shape[0] == 2
    assert all(not b._forward_hooks for b in decoder_blocks(model))  # nothing left behind


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
