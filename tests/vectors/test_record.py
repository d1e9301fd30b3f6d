"""nnsight recording vs plain forward hooks, on tiny real models of five architectures.

Layer ``l`` of a recording is the output of decoder block ``l`` (the residual stream steering adds to).
transformers' ``output_hidden_states`` has the embeddings first, so ``hidden_states[l + 1]`` is block
``l``'s output for every block but the last: its last entry has the model's final norm applied
(``model.norm``, ``ln_f``, ``final_layer_norm``), so it is *not* what the last block wrote to the
residual stream. These tests pin that distinction down.
"""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest
import torch

from steer_plugin.data.prompts import PromptTemplate, encode, pad_batch
from steer_plugin.errors import SteerError
from steer_plugin.vectors.record import RecordItem, StateRecorder, record_hidden_states
from steer_plugin.vectors.stats import ClassStats, HiddenStateStats
from tests.helpers.tiny import ARCHS, CORPUS, hook_last_token_states, make_model, make_tokenizer

TOL = 1e-5
N_LAYERS = 3

# the final norm a model applies after its last block (what hidden_states[-1] includes)
FINAL_NORM = {
    "llama": lambda m: m.model.norm,
    "qwen2": lambda m: m.model.norm,
    "gpt2": lambda m: m.transformer.ln_f,
    "gpt_neox": lambda m: m.gpt_neox.final_layer_norm,
    "opt": lambda m: m.model.decoder.final_layer_norm,
}


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    return {arch: make_model(arch, n_layers=N_LAYERS, tokenizer=tok)[0] for arch in ARCHS}


def _record_rows(model, tok, texts, tmp_path, **kw) -> tuple[np.ndarray, HiddenStateStats]:
    """Raw per-text rows (via --save-activations, float32) and the statistics of one recording."""
    out = tmp_path / f"acts-{random.random()}"
    stats = record_hidden_states(
        model,
        tok,
        [RecordItem(t, ("x",)) for t in texts],
        progress=False,
        save_activations=out,
        activation_dtype="float32",
        **kw,
    )
    return np.load(out / "x.npy"), stats


@pytest.mark.parametrize("arch", ARCHS)
def test_recording_equals_forward_hooks(arch, models, tok, tmp_path):
    model = models[arch]
    ref = hook_last_token_states(model, tok, CORPUS)  # [N, L, H], each text alone
    assert ref.shape == (len(CORPUS), N_LAYERS, 32)
    lengths = {len(tok(t)["input_ids"]) for t in CORPUS}
    assert len(lengths) > 3, "texts of different lengths, so batches really are padded"
    for side in ("left", "right"):
        for bs in (1, 7):  # 7 over 10 texts: a full and an uneven batch
            rows, stats = _record_rows(model, tok, CORPUS, tmp_path, batch_size=bs, padding_side=side)
            np.testing.assert_allclose(rows, ref, atol=TOL, rtol=0, err_msg=f"{arch} {side} bs={bs}")
            np.testing.assert_allclose(stats.get("x").mean.numpy(), ref.mean(0), atol=TOL, rtol=0)
            assert stats.metadata["padding_side"] == side


@pytest.mark.parametrize("arch", ARCHS)
def test_layers_vs_output_hidden_states(arch, models, tok):
    """hidden_states[l+1] == block l output for l < L-1; the last entry is final_norm(last block)."""
    model = models[arch]
    recorder = StateRecorder(model)
    ids, mask, pos = pad_batch(encode(tok, CORPUS, PromptTemplate("raw")), 0, "left")
    recorded = recorder(ids, mask, pos).numpy()  # [N, L, H]
    for i, text in enumerate(CORPUS):
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([tok(text)["input_ids"]]), output_hidden_states=True).hidden_states
        assert len(hs) == N_LAYERS + 1  # embeddings + one per block
        for layer in range(N_LAYERS - 1):
            np.testing.assert_allclose(recorded[i, layer], hs[layer + 1][0, -1].numpy(), atol=TOL, rtol=0)
        last_block = torch.from_numpy(recorded[i, -1])
        final = hs[-1][0, -1]
        # these models all have a final norm: hidden_states[-1] is not the residual stream...
        assert float((final - last_block).abs().max()) > 1e-2
        # ...it is the final norm of it
        with torch.no_grad():
            normed = FINAL_NORM[arch](model)(last_block[None])[0]
        np.testing.assert_allclose(final.numpy(), normed.numpy(), atol=1e-4, rtol=0)


def test_stats_independent_of_batch_size_and_order(models, tok):
    model = models["llama"]
    items = [RecordItem(t, ("a" if i % 3 else "b",)) for i, t in enumerate(CORPUS * 2)]
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    runs = [
        record_hidden_states(model, tok, items, batch_size=1, progress=False),
        record_hidden_states(model, tok, items, batch_size=7, progress=False),
        record_hidden_states(model, tok, shuffled, batch_size=3, padding_side="left", progress=False),
    ]
    for other in runs[1:]:
        assert other.counts() == runs[0].counts() == {"b": 7, "a": 13}
        for c in ("a", "b"):
            x, y = runs[0].get(c), other.get(c)
            np.testing.assert_allclose(y.mean.numpy(), x.mean.numpy(), atol=1e-6, rtol=0)
            np.testing.assert_allclose(y.var.numpy(), x.var.numpy(), atol=1e-6, rtol=1e-6)


def test_tokenizer_without_pad_token(models, tok, tmp_path):
    no_pad = copy.deepcopy(tok)
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None
    model = models["gpt2"]  # GPT-2 style: no pad token is the usual case
    ref = hook_last_token_states(model, tok, CORPUS)
    for side in ("left", "right"):
        rows, _ = _record_rows(model, no_pad, CORPUS, tmp_path, batch_size=4, padding_side=side)
        np.testing.assert_allclose(rows, ref, atol=TOL, rtol=0)


def test_recorded_statistics_match_numpy(models, tok):
    model = models["opt"]
    texts = CORPUS
    classes = {"anger": (0, 4, 7), "neutral": (1, 3, 5, 6, 8, 9), "both": (0, 1)}
    items = [RecordItem(t, tuple(c for c, idx in classes.items() if i in idx)) for i, t in enumerate(texts)]
    items = [it for it in items if it.classes]
    ref = hook_last_token_states(model, tok, texts)
    stats = record_hidden_states(model, tok, items, batch_size=3, progress=False, metadata={"model": "tiny"})
    assert stats.counts() == {c: len(idx) for c, idx in classes.items()}
    for c, idx in classes.items():
        x = ref[list(idx)]
        np.testing.assert_allclose(stats.get(c).mean.numpy(), x.mean(0), atol=TOL, rtol=0)
        np.testing.assert_allclose(stats.get(c).var.numpy(), x.var(0, ddof=1), atol=TOL, rtol=1e-4)
    m = stats.metadata
    assert (m["n_layers"], m["hidden_size"], m["block_path"]) == (N_LAYERS, 32, "model.decoder.layers")
    assert m["counts"] == stats.counts() and m["model"] == "tiny" and m["world_size"] == 1
    assert m["template"] == "raw"


def test_memory_does_not_grow_with_texts(models, tok):
    """Only [L, H] tensors per class are kept, however many texts are recorded."""
    model = models["llama"]

    def tensors(stats: HiddenStateStats) -> list[torch.Tensor]:
        found = [v for v in vars(stats).values() if isinstance(v, torch.Tensor)]
        for cs in stats.classes.values():
            assert isinstance(cs, ClassStats)
            found += [v for v in vars(cs).values() if isinstance(v, torch.Tensor)]
        return found

    small = record_hidden_states(model, tok, [RecordItem(t, ("a",)) for t in CORPUS[:3]], progress=False)
    many = [RecordItem(f"{t} {k}", ("a",)) for k in range(6) for t in CORPUS]
    big = record_hidden_states(model, tok, many, batch_size=16, progress=False)
    assert big.get("a").count == 60 and small.get("a").count == 3
    for stats in (small, big):
        ts = tensors(stats)
        assert len(ts) == 2  # mean and M2
        assert all(tuple(t.shape) == (N_LAYERS, 32) for t in ts)
        assert all(t.dtype == torch.float64 for t in ts)
    assert sum(t.numel() for t in tensors(big)) == sum(t.numel() for t in tensors(small))


def test_save_activations_class_listed_twice(models, tok, tmp_path):
    """select_all lists a class twice for a text that occurs in two rows of it: two array rows."""
    model = models["llama"]
    texts = CORPUS[:4]
    items = [
        RecordItem(texts[0], ("anger", "anger", "ekman:anger")),
        RecordItem(texts[1], ("neutral",)),
        RecordItem(texts[2], ("anger",)),
        RecordItem(texts[3], ("neutral", "neutral")),
    ]
    ref = hook_last_token_states(model, tok, texts)
    out = tmp_path / "acts"
    stats = record_hidden_states(
        model, tok, items, batch_size=3, progress=False, save_activations=out, activation_dtype="float32"
    )
    arrays = {p.stem: np.load(p) for p in out.glob("*.npy")}
    assert sorted(arrays) == ["anger", "ekman_anger", "neutral"]
    assert not list(out.glob("*.partial"))
    expected = {"anger": ref[[0, 0, 2]], "ekman_anger": ref[[0]], "neutral": ref[[1, 3, 3]]}
    for c, want in expected.items():
        assert arrays[c].shape == want.shape
        np.testing.assert_allclose(arrays[c], want, atol=TOL, rtol=0, err_msg=c)
        # the statistics count the same rows the arrays hold
        name = c.replace("_", ":")
        assert stats.get(name).count == len(want)
        np.testing.assert_allclose(stats.get(name).mean.numpy(), want.mean(0), atol=TOL, rtol=0)


def test_save_activations_float16_default(models, tok, tmp_path):
    model = models["llama"]
    ref = hook_last_token_states(model, tok, CORPUS[:5])
    record_hidden_states(
        model, tok, [RecordItem(t, ("a",)) for t in CORPUS[:5]], progress=False, save_activations=tmp_path
    )
    arr = np.load(tmp_path / "a.npy")
    assert arr.dtype == np.float16 and arr.shape == ref.shape
    np.testing.assert_allclose(arr.astype(np.float64), ref, atol=2e-2, rtol=2e-3)
    with pytest.raises(SteerError, match="float16 or float32"):
        record_hidden_states(
            model,
            tok,
            [RecordItem("x", ("a",))],
            progress=False,
            save_activations=tmp_path / "b",
            activation_dtype="int8",
        )


def test_format_template_records_formatted_text(models, tok):
    model = models["qwen2"]
    template = "Text: {text}\nEmotion:"
    ref = hook_last_token_states(model, tok, [template.replace("{text}", t) for t in CORPUS[:4]])
    stats = record_hidden_states(
        model, tok, [RecordItem(t, ("a",)) for t in CORPUS[:4]], template=template, batch_size=4, progress=False
    )
    np.testing.assert_allclose(stats.get("a").mean.numpy(), ref.mean(0), atol=TOL, rtol=0)
    assert stats.metadata["template"] == template


def test_bad_inputs(models, tok):
    model = models["llama"]
    item = [RecordItem("hello", ("a",))]
    with pytest.raises(SteerError, match="chat template"):
        record_hidden_states(model, tok, item, template="chat", progress=False)
    with pytest.raises(SteerError, match="bad template"):
        record_hidden_states(model, tok, item, template="no placeholder", progress=False)
    with pytest.raises(SteerError, match="batch size"):
        record_hidden_states(model, tok, item, batch_size=0, progress=False)
    with pytest.raises(SteerError, match="empty"):
        record_hidden_states(model, tok, [], progress=False)
    with pytest.raises(SteerError, match="padding side"):
        record_hidden_states(model, tok, item, padding_side="middle", progress=False)
    with pytest.raises(SteerError, match="zero tokens"):
        record_hidden_states(model, tok, [RecordItem("", ("a",))], progress=False)
