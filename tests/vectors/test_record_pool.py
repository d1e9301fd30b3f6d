"""Mean pooling (``--pool mean``) vs a plain forward-hook reference: each sequence run alone, numpy's mean
over the right tokens (after a leading BOS, or from an item's ``start``), for left- and right-padded batches."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from steer_plugin import train_vector
from steer_plugin.errors import SteerError
from steer_plugin.vectors.build import build_vector
from steer_plugin.vectors.record import RecordItem, record_hidden_states
from steer_plugin.vectors.stats import HiddenStateStats
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.tiny import (
    ARCHS,
    CORPUS,
    hook_block_states,
    make_model,
    make_tokenizer,
    read_goemotions_rows,
    save_tiny_stats,
)

TOL = 1e-5
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "goemotions"


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def bos_tok():
    """The tiny tokenizer, starting every text with BOS (as Llama's and Gemma's do)."""
    from tokenizers.processors import TemplateProcessing

    tok = make_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    assert tok("hello")["input_ids"][0] == tok.bos_token_id
    return tok


@pytest.fixture(scope="module")
def models(tok):
    return {arch: make_model(arch, tokenizer=tok)[0] for arch in ARCHS}


def _rows(model, tok, items, tmp_path, **kw) -> tuple[np.ndarray, HiddenStateStats]:
    """Each item's pooled row (float32 activations, in item order) and the statistics of one recording."""
    out = tmp_path / f"acts-{random.random()}"
    stats = record_hidden_states(
        model, tok, items, progress=False, save_activations=out, activation_dtype="float32", pool="mean", **kw
    )
    return np.load(out / "x.npy"), stats


@pytest.mark.parametrize("arch", ARCHS)
def test_mean_pool_is_the_mean_over_the_text_tokens_after_bos(arch, models, bos_tok, tok, tmp_path):
    model = models[arch]
    for tokenizer, skip in ((bos_tok, 1), (tok, 0)):  # the BOS is left out; a text without one keeps every token
        ref = np.stack([hook_block_states(model, tokenizer(t)["input_ids"])[skip:].mean(0) for t in CORPUS])
        for side in ("left", "right"):
            for bs in (1, 4):
                rows, stats = _rows(
                    model,
                    tokenizer,
                    [RecordItem(t, ("x",)) for t in CORPUS],
                    tmp_path,
                    batch_size=bs,
                    padding_side=side,
                )
                np.testing.assert_allclose(rows, ref, atol=TOL, rtol=0, err_msg=f"{arch} {side} bs={bs} skip={skip}")
                np.testing.assert_allclose(stats.get("x").mean.numpy(), ref.mean(0), atol=TOL, rtol=0)
                assert stats.metadata["pool"] == "mean"
    # and it is not the last token's state
    last = np.stack([hook_block_states(model, bos_tok(t)["input_ids"])[-1] for t in CORPUS])
    assert np.abs(ref - last).max() > 1e-2


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mean_pool_over_a_response_span(arch, models, tok, tmp_path):
    """Encoded items (a prompt, then a response) pooled from ``start``: the response tokens only."""
    model = models[arch]
    rng = random.Random(0)
    items, ref = [], []
    for k, text in enumerate(CORPUS):
        prompt = tok(CORPUS[(k + 3) % len(CORPUS)])["input_ids"][: rng.randint(1, 9)]
        response = tok(text)["input_ids"][: rng.randint(1, 12)]
        ids = prompt + response
        items.append(RecordItem(text, ("x",), start=len(prompt), ids=tuple(ids)))
        ref.append(hook_block_states(model, ids)[len(prompt) :].mean(0))
    for side in ("left", "right"):
        rows, _ = _rows(model, tok, items, tmp_path, batch_size=3, padding_side=side)
        np.testing.assert_allclose(rows, np.stack(ref), atol=TOL, rtol=0, err_msg=side)


def test_pool_in_the_metadata_and_old_files_read_as_last(models, tok, tmp_path):
    model = models["llama"]
    items = [RecordItem(t, ("anger" if i % 2 else "neutral",)) for i, t in enumerate(CORPUS)]
    last = record_hidden_states(model, tok, items, progress=False)
    assert last.metadata["pool"] == "last"
    mean = record_hidden_states(model, tok, items, progress=False, pool="mean")
    mean.save(tmp_path / "mean.safetensors")
    vec = build_vector(HiddenStateStats.load(tmp_path / "mean.safetensors"), "anger")
    assert vec.metadata["pool"] == "mean" and "mean-pooled" in vec.metadata["residual_rms_source"]
    vec.save(tmp_path / "v.safetensors")
    assert SteeringVector.load(tmp_path / "v.safetensors").metadata["pool"] == "mean"
    old = HiddenStateStats.load(save_tiny_stats(tmp_path / "old.safetensors"))  # written without a pool
    assert "pool" not in old.metadata
    assert build_vector(old, "anger").metadata["pool"] == "last"


def test_bad_pool_inputs(models, tok, bos_tok, tmp_path):
    model = models["llama"]
    with pytest.raises(SteerError, match="unknown pool 'max'; use one of last, mean"):
        record_hidden_states(model, tok, [RecordItem("hello", ("a",))], progress=False, pool="max")
    with pytest.raises(SteerError, match="no token to pool"):  # only a BOS: no text to average
        record_hidden_states(model, bos_tok, [RecordItem("", ("a",))], progress=False, pool="mean")
    with pytest.raises(SteerError, match="no token to pool from offset 3"):
        record_hidden_states(model, tok, [RecordItem("x", ("a",), start=3, ids=(5, 6, 7))], progress=False, pool="mean")
    with pytest.raises(SteerError, match="pool: 'max' is not one of last, mean"):
        SteeringVector(torch.ones(2, 3), {"pool": "max"}).save(tmp_path / "bad.safetensors")


def test_train_vector_with_mean_pooling(bos_tok):
    """``train_vector(pool="mean")``: the difference of the classes' mean token states (after the BOS)."""
    model, _ = make_model("llama", tokenizer=bos_tok)
    rows = read_goemotions_rows(FIXTURE / "train.tsv")
    pooled = {
        c: np.stack([hook_block_states(model, bos_tok(t)["input_ids"])[1:].mean(0) for t, ls in rows if ls == {c}])
        for c in ("anger", "neutral")
    }
    v = train_vector(model, bos_tok, "anger", data=FIXTURE, pool="mean", progress=False)
    np.testing.assert_allclose(v.matrix.numpy(), pooled["anger"].mean(0) - pooled["neutral"].mean(0), atol=TOL, rtol=0)
    assert v.metadata["pool"] == "mean" and v.metadata["counts"] == {"anger": 4, "neutral": 4}
    assert train_vector(model, bos_tok, "anger", data=FIXTURE, progress=False).metadata["pool"] == "last"


def _first_pc_of_pairs(target: np.ndarray, baseline: np.ndarray, seed: int) -> np.ndarray:
    """[L, H] first right-singular vector per layer of the documented pairing's differences (both classes
    shuffled with ``seed``, paired by index, truncated), uncentred."""
    rng = np.random.default_rng(seed)
    t, b = rng.permutation(len(target)), rng.permutation(len(baseline))
    n = min(len(t), len(b))
    diffs = target[t[:n]] - baseline[b[:n]]
    return np.stack([np.linalg.svd(diffs[:, layer], full_matrices=False)[2][0] for layer in range(diffs.shape[1])])


def test_pca_on_mean_pooled_states(bos_tok):
    """``train_vector(pool="mean", method="pca")``: the first component of paired mean-pooled differences,
    toward the emotion at the mean difference's norm; the recipe's label names the pooling."""
    from steer_plugin.vectors.recipe import recipe_name

    model, _ = make_model("llama", tokenizer=bos_tok)
    rows = read_goemotions_rows(FIXTURE / "train.tsv")
    pooled = {
        c: np.stack([hook_block_states(model, bos_tok(t)["input_ids"])[1:].mean(0) for t, ls in rows if ls == {c}])
        for c in ("anger", "neutral")
    }
    v = train_vector(model, bos_tok, "anger", data=FIXTURE, pool="mean", method="pca", seed=3, progress=False)
    mean_diff = pooled["anger"].mean(0) - pooled["neutral"].mean(0)
    want = _first_pc_of_pairs(pooled["anger"], pooled["neutral"], 3)
    got = v.matrix.numpy().astype(np.float64)
    for layer in range(got.shape[0]):
        cos = got[layer] @ want[layer] / (np.linalg.norm(got[layer]) * np.linalg.norm(want[layer]))
        assert abs(cos) > 0.999 and got[layer] @ mean_diff[layer] > 0, layer
        np.testing.assert_allclose(np.linalg.norm(got[layer]), np.linalg.norm(mean_diff[layer]), rtol=1e-5)
    assert (v.metadata["pool"], v.metadata["text_source"], v.metadata["pair_seed"]) == ("mean", "goemotions", 3)
    assert recipe_name(v.metadata) == "pca-pool-mean"
