"""Prefix reuse's tree-packed tails (one row per group, shared beginnings once, a 4D mask) against plain
forwards of each request's whole sequence (no cache, no mask): log-likelihoods within 1e-5 and identical
is-greedy flags, float32 CPU, tiny real models (llama, gpt2, qwen2, gemma3 with a 16-token sliding window
that the packed rows exceed), sdpa and eager attention, steering at all positions and at the response's,
mixed configurations (a RowPlan), logits budgets that split the forwards and the rows, and the per-tail
rows kept for models that take no 4D mask."""

from __future__ import annotations

import random

import pytest
import torch

from steer_plugin.harness.config_batching import score_groups_mixed
from steer_plugin.harness.prefix_reuse import Scorer, TailConfig, TokenCounts, group_by_context, score_groups
from steer_plugin.model.hooks import Steerer, SteeringPlan, make_plan
from steer_plugin.steering.kv_prefix import tree_mask_blocker
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.tiny import make_config, make_tokenizer, sharpen_attention

ARCHS = ("llama", "gpt2", "qwen2", "gemma3")
STEERING = [(0.0, "all"), (1.5, "all"), (1.5, "response")]
WINDOW = 16  # gemma3's sliding layers: every request fits (<= 14 tokens), the packed rows + prefix do not


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(arch: str, attention: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    extra = {"sliding_window": WINDOW} if arch == "gemma3" else {}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_config(arch, len(tok), **extra), attn_implementation=attention)
    model.eval()
    sharpen_attention(model)  # a wrong position or mask must show
    assert model.config._attn_implementation == attention
    return model


def _requests(model) -> list[tuple[int, list[int], list[int]]]:
    """Choices with identical first tokens, one a prefix of others, some differing only in the last token,
    one-token continuations, a duplicate, the model's own greedy continuation (and its beginning), groups
    of one tail, a one-token context (no prefix)."""
    rng = random.Random(0)
    vocab = model.config.vocab_size

    def toks(n: int) -> list[int]:
        return [rng.randrange(4, vocab) for _ in range(n)]

    a, s = toks(9), toks(5)
    with torch.no_grad():
        g = list(a)
        for _ in range(3):
            g.append(int(model(torch.tensor([g])).logits[0, -1].argmax()))
    greedy = g[len(a) :]
    pairs = [
        (a, s + [10]), (a, s + [11]), (a, s[:3] + [12, 13]), (a, s[:3]), (a, s[:1]), (a, toks(3)), (a, s + [10]),
        (a, greedy), (a, greedy[:2]), (a, greedy[:2] + [(greedy[2] + 1) % vocab]), (a, [greedy[0]]),
        (toks(4), toks(4)),  # a group of one tail
        (toks(6), [7]),  # one tail of one token
        (toks(1), [20, 21]), (toks(1), [20, 22]),  # one-token contexts: no prefix
    ]  # fmt: skip
    return [(i, ctx, cont) for i, (ctx, cont) in enumerate(pairs)]


def _plan(model, steerer: Steerer, alpha: float) -> SteeringPlan:
    if not alpha:
        return SteeringPlan()
    torch.manual_seed(1)
    vector = SteeringVector(torch.randn(model.config.num_hidden_layers, model.config.hidden_size))
    return make_plan([vector], [alpha], model, steerer.block_path)


def _plain(steerer: Steerer, requests, plan: SteeringPlan, positions: str) -> dict[int, tuple[float, bool]]:
    """Each request's whole sequence alone, steered at every position or at the response's (the last
    context token and the continuation)."""
    out = {}
    for index, ctx, cont in requests:
        seq = torch.tensor([ctx + cont[:-1]])
        where = None
        if positions == "response" and plan.active:
            where = torch.zeros(seq.shape, dtype=torch.bool)
            where[0, -len(cont) :] = True
        with torch.no_grad():
            logits = steerer.forward(plan, where, input_ids=seq).logits[0, -len(cont) :]
        lp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(cont)
        out[index] = (float(lp[torch.arange(len(cont)), target].sum()), bool((lp.argmax(-1) == target).all()))
    return out


def _assert_close(got: dict, ref: dict) -> None:
    assert got.keys() == ref.keys()
    assert max(abs(got[i][0] - ref[i][0]) for i in ref) < 1e-5
    assert {i: got[i][1] for i in ref} == {i: ref[i][1] for i in ref}


def _scorer(steerer: Steerer, batch_size: int = 4, **kw) -> tuple[Scorer, list[tuple[int, int, int]]]:
    """A scorer and the (rows, width, mask dims) of its tail forwards."""
    tails: list[tuple[int, int, int]] = []

    def forward(plan, where, **inputs):
        if "logits_to_keep" not in inputs:  # a tail forward
            rows, width = inputs["input_ids"].shape
            tails.append((rows, width, inputs["attention_mask"].dim()))
        with torch.no_grad():
            return steerer.forward(plan, where, **inputs)

    model = steerer.model
    return Scorer(forward, model.config, torch.device("cpu"), batch_size, counts=TokenCounts(), **kw), tails


def _trie_nodes(requests) -> int:
    """Distinct (context, tail beginning) pairs: the tokens a trie per context runs."""
    return len({(tuple(c), tuple([c[-1], *x[:k]])) for _, c, x in requests for k in range(len(x))})


def _tail_tokens(requests) -> int:
    """Tokens of one row per distinct tail (context, continuation[:-1])."""
    return sum(len(t) for _, t in {(tuple(c), tuple([c[-1], *x[:-1]])) for _, c, x in requests})


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_tree_packed_tails_equal_plain_forwards(arch, attention):
    model = _model(arch, attention)
    assert tree_mask_blocker(model) is None
    steerer = Steerer(model, "hooks")
    requests = _requests(model)
    groups, plain = group_by_context(requests, 512)
    assert plain == [] and len(groups) == 5
    configs = [TailConfig.of(_plan(model, steerer, a), p) for a, p in STEERING]
    scorer, tails = _scorer(steerer)
    refs = [_plain(steerer, requests, c.plan, c.positions) for c in configs]
    for config, ref in zip(configs, refs):
        _assert_close(score_groups(scorer, groups, [config])[0], ref)
    # configurations sharing the unsteered prefix, in the same tail chunks
    for got, ref in zip(score_groups(scorer, groups, [configs[0], configs[2]]), [refs[0], refs[2]]):
        _assert_close(got, ref)
    assert min(abs(refs[0][i][0] - refs[k][i][0]) for k in (1, 2) for i in refs[0]) > 1e-4  # steering shows
    flags = [greedy for _, greedy in refs[0].values()]
    assert any(flags) and not all(flags)
    # one row per group, every tail forward under a 4D mask, each trie node fed once per configuration
    assert all(dims == 4 for _, _, dims in tails) and sum(r for r, _, _ in tails) == 5 * 5
    assert scorer.counts is not None and scorer.counts.tail == 5 * _trie_nodes(requests) < 5 * _tail_tokens(requests)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_mixed_configurations_row_plan_equal_plain_forwards(arch):
    model = _model(arch)
    steerer = Steerer(model, "hooks")
    requests = _requests(model)
    groups, _ = group_by_context(requests, 512)
    configs = [TailConfig.of(_plan(model, steerer, a), "all") for a in (0.0, 1.5, -2.0)]
    refs = [_plain(steerer, requests, c.plan, c.positions) for c in configs]
    scorer, tails = _scorer(steerer)
    for rows in (2, 7, 64):  # configurations and groups split over forwards, or all in one
        for got, ref in zip(score_groups_mixed(scorer, groups, configs, rows), refs):
            _assert_close(got, ref)
    assert all(dims == 4 for _, _, dims in tails)


def test_logits_budget_bounds_rows_and_forwards():
    model = _model("llama")
    steerer = Steerer(model, "hooks")
    requests = _requests(model)
    groups, _ = group_by_context(requests, 512)
    config = TailConfig.of(_plan(model, steerer, 1.5), "response")
    ref = _plain(steerer, requests, config.plan, config.positions)
    per_position = 4 * model.config.vocab_size  # float32 logits of one position
    widest = max(_trie_nodes([r for r in requests if r[1] == list(g.context)]) for g in groups)

    scorer, tails = _scorer(steerer, batch_size=8, logits_bytes=widest * per_position)
    _assert_close(score_groups(scorer, groups, [config])[0], ref)
    assert tails[0] == (1, widest, 4) and all(r * w <= widest for r, w, _ in tails)  # the widest trie alone
    assert scorer.counts is not None and scorer.counts.tail == _trie_nodes(requests)

    scorer, tails = _scorer(steerer, batch_size=8, logits_bytes=per_position)
    _assert_close(score_groups(scorer, groups, [config])[0], ref)
    # one row a forward, and rows too short for two tails: each tail its own row (the one-row minimum)
    assert all(r == 1 for r, _, _ in tails) and len(tails) == len({(tuple(c), tuple(x[:-1])) for _, c, x in requests})
    assert scorer.counts is not None and scorer.counts.tail == _tail_tokens(requests)


def test_models_without_a_4d_mask_score_one_row_per_tail():
    from transformers import AutoModelForCausalLM

    model = _model("qwen2")
    steerer = Steerer(model, "hooks")
    requests = _requests(model)
    groups, _ = group_by_context(requests, 512)
    config = TailConfig.of(_plan(model, steerer, 1.5), "response")
    scorer, tails = _scorer(steerer, mask_dtype=None)
    _assert_close(score_groups(scorer, groups, [config])[0], _plain(steerer, requests, config.plan, "response"))
    assert all(dims == 2 for _, _, dims in tails) and scorer.counts.tail == _tail_tokens(requests)

    config = make_config("llama", 300)
    flex = AutoModelForCausalLM.from_config(config, attn_implementation="flex_attention")
    assert "flex_attention" in (tree_mask_blocker(flex) or "")


def test_steered_hf_falls_back_to_one_row_per_tail(tmp_path):
    from steer_plugin.harness.model import SteeredHFLM

    model = _model("llama")
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    lm = SteeredHFLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=4, backend="hooks")
    assert lm.tree_blocker is None
    requests = [(None, c, x) for _, c, x in _requests(model)]
    counted = {}
    for blocker in (None, "a model without 4D masks"):
        lm.tree_blocker, lm.token_counts = blocker, TokenCounts()
        counted[blocker] = (lm._loglikelihood_tokens(requests, disable_tqdm=True), lm.token_counts.tail)
    lm.prefix_reuse = False
    ref = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    for got, _ in counted.values():
        assert max(abs(g[0] - r[0]) for g, r in zip(got, ref)) < 1e-5 and [g[1] for g in got] == [r[1] for r in ref]
    assert counted[None][1] == _trie_nodes(requests) and counted["a model without 4D masks"][1] == _tail_tokens(
        requests
    )
