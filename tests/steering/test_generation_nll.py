"""Fluency of generations: continuation NLL under the unsteered model against a plain transformers
computation, batched equal to one at a time, on tiny models of several architectures."""

from __future__ import annotations

import pytest
import torch

from steer_plugin.errors import SteerError
from steer_plugin.steering.generation_nll import GenerationNLL, continuation_nll
from tests.helpers.tiny import make_model

PAIRS_TEXT = [
    ("What is the capital of France?", " The capital of France is Paris."),
    ("Tell me about yourself.", " I like reading books."),
    ("Why?", " I don't understand. I don't understand. I don't understand."),
]


def _reference(model, ctx: list[int], cont: list[int]) -> float:
    """One unpadded forward of context + continuation; NLL of the continuation's tokens, written here."""
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return -sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_continuation_nll_equals_a_plain_forward_batched_or_not(arch):
    model, tok = make_model(arch)
    pairs = [(tok(c)["input_ids"], tok(g)["input_ids"]) for c, g in PAIRS_TEXT]
    batched = continuation_nll(model, tok, pairs, batch_size=8)
    single = [continuation_nll(model, tok, [p], batch_size=1)[0] for p in pairs]
    for (ctx, cont), b, s in zip(pairs, batched, single):
        ref = _reference(model, list(ctx), list(cont))
        assert b.n_tokens == len(cont)
        assert b.total == pytest.approx(ref, abs=1e-4)
        assert s.total == pytest.approx(b.total, abs=1e-4)
        assert b.per_token == pytest.approx(ref / len(cont), abs=1e-5)


def test_empty_continuation_and_bad_input():
    model, tok = make_model("llama")
    ctx = tok("Hello there")["input_ids"]
    (empty,) = continuation_nll(model, tok, [(ctx, [])])
    assert empty == GenerationNLL(0.0, 0) and empty.per_token != empty.per_token  # NaN: nothing to score
    with pytest.raises(SteerError, match="batch size"):
        continuation_nll(model, tok, [(ctx, ctx)], batch_size=0)
    with pytest.raises(SteerError, match="context"):
        continuation_nll(model, tok, [([], ctx)])


def test_window_keeps_the_continuation():
    model, tok = make_model("llama")
    ctx, cont = list(tok("What is the capital of France? " * 3)["input_ids"]), list(tok(" Paris.")["input_ids"])
    window = len(cont) + 4
    (got,) = continuation_nll(model, tok, [(ctx, cont)], max_length=window)
    assert got.n_tokens == len(cont)
    assert got.total == pytest.approx(_reference(model, ctx[-4:], cont), abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_small_logits_budget_splits_batches_without_changing_the_numbers(arch):
    """Few logits per forward (a 262k vocabulary's case): the batches shrink, down to one sequence each; the
    numbers stay the plain forward's. And the LM head runs only from the first continuation token on."""
    model, tok = make_model(arch)
    pairs = [(tok(c)["input_ids"], tok(g)["input_ids"]) for c, g in PAIRS_TEXT]
    vocab = model.get_output_embeddings().weight.shape[0]
    kept: list[int] = []
    handle = model.register_forward_pre_hook(
        lambda m, a, kw: kept.append(kw.get("logits_to_keep", 0)), with_kwargs=True
    )
    tight = continuation_nll(model, tok, pairs, batch_size=8, logits_bytes=4 * vocab)  # one position's worth
    handle.remove()
    assert len(kept) == len(pairs)  # one sequence per forward
    for (ctx, cont), got in zip(pairs, tight):
        assert got.total == pytest.approx(_reference(model, list(ctx), list(cont)), abs=1e-4)
    # each forward kept its continuation's positions and the one before it (which predicts the first token)
    assert sorted(kept) == sorted(len(c) + 1 for _, c in pairs)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "gemma3"])
def test_cached_prompts_give_the_plain_numbers_and_run_once(arch):
    """With a PromptCache each context's [:-1] runs once across calls; the NLLs stay the plain forward's."""
    from steer_plugin.steering.generation_nll import PromptCache

    model, tok = make_model(arch)
    pairs = [(tok(c)["input_ids"], tok(g)["input_ids"]) for c, g in PAIRS_TEXT]
    other = [(ctx, tok(" a different answer, longer than before")["input_ids"]) for ctx, _ in pairs]
    cache = PromptCache(model)
    assert cache.blocked is None
    first = continuation_nll(model, tok, pairs, batch_size=2, prompts=cache)
    blocks = len(cache.blocks)
    second = continuation_nll(model, tok, other, batch_size=8, prompts=cache)  # the same prompts, other outputs
    assert len(cache.blocks) == blocks > 0 and cache.plain == 0  # nothing new to cache
    assert len(cache.where) == len({tuple(c) for c, _ in pairs})
    for (ctx, cont), got in [*zip(pairs, first), *zip(other, second)]:
        assert got.n_tokens == len(cont)
        assert got.total == pytest.approx(_reference(model, list(ctx), list(cont)), abs=1e-4)


def test_prompt_cache_falls_back_where_it_cannot_be_exact():
    """A window shorter than the sequence, a context cut by max_length and a full budget: the plain way."""
    from steer_plugin.steering.generation_nll import PromptCache

    model, tok = make_model("gemma3", sliding_window=6)
    ctx, cont = list(tok("What is the capital of France?")["input_ids"]), list(tok(" Paris, of course.")["input_ids"])
    assert len(ctx) + len(cont) > 6
    cache = PromptCache(model)
    (got,) = continuation_nll(model, tok, [(ctx, cont)], prompts=cache)
    assert cache.window == 6 and cache.plain == 1 and not cache.blocks
    assert got.total == pytest.approx(_reference(model, ctx, cont), abs=1e-4)
    llama, tok = make_model("llama")
    full = PromptCache(llama, max_bytes=1)
    (got,) = continuation_nll(llama, tok, [(ctx, cont)], prompts=full)
    assert full.plain == 1 and not full.blocks and got.total == pytest.approx(_reference(llama, ctx, cont), abs=1e-4)
    forwards: list[int] = []
    handle = llama.register_forward_pre_hook(lambda m, a, kw: forwards.append(1), with_kwargs=True)
    continuation_nll(llama, tok, [(ctx + ctx[:2], cont)], prompts=full)  # a new prompt, the budget still full
    handle.remove()
    assert full.full and len(forwards) == 1 and full.plain == 2  # scored whole; no cache forward to throw away
    cut = PromptCache(llama)
    (got,) = continuation_nll(llama, tok, [(ctx, cont)], prompts=cut, max_length=len(cont) + 4)
    assert not cut.blocks and got.total == pytest.approx(_reference(llama, ctx[-4:], cont), abs=1e-4)
