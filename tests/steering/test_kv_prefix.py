"""KVPrefix against a plain transformers forward of each full sequence alone (no padding, no cache): the
logits of continuations from a batch of left-padded prefixes of different lengths, of gathered and of
repeated rows equal the full forward's at the continuation positions (atol 1e-4), on tiny llama, gpt2,
qwen2 and gemma3 (sliding-window and full-attention layers, a 512-token window) models with sharpened
attention (so a wrong position, mask or cache row shows); and on gemma3 with an 8-token window, shorter
than some sequences: what fits the window equals the full forward, a prefix that does not is refused."""

from __future__ import annotations

import pytest
import torch

from steer_plugin.data.prompts import pad_batch
from steer_plugin.steering.kv_prefix import (
    KVPrefix,
    ReuseUnsupported,
    accepts_logits_to_keep,
    reuse_blocker,
    reuse_window,
    shared_start,
)
from tests.helpers.tiny import make_model, sharpen_attention

ARCHS = ("llama", "gpt2", "qwen2", "gemma3")
PREFIXES = [[5, 6, 7, 8, 9, 40], [10, 11], [12, 13, 14, 41]]  # left-padded to 6
ATOL = 1e-4


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    model, _ = make_model(request.param, n_layers=3, hidden=32, seed=3)
    sharpen_attention(model)
    return model


def _prefix(model, prefixes=PREFIXES) -> KVPrefix:
    with torch.no_grad():
        return KVPrefix.run_tokens(
            model, model.config, prefixes, torch.device("cpu"), logits_to_keep=accepts_logits_to_keep(model)
        )


def _continue(model, prefix: KVPrefix, tails: list[list[int]], shift: int = 0) -> torch.Tensor:
    """Logits [rows, tail, vocab] of right-padded ``tails`` after ``prefix`` (``shift``: positions off by that)."""
    ids, mask, _ = pad_batch(tails, 0, "right")
    inputs = prefix.tail_inputs(mask)
    inputs["position_ids"] = inputs["position_ids"] + shift
    with torch.no_grad():
        return model(input_ids=ids, **inputs).logits


def _full(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0]


def _assert_as_full_forward(model, got: torch.Tensor, prefixes: list[list[int]], tails: list[list[int]]) -> None:
    for r, (head, tail) in enumerate(zip(prefixes, tails)):
        want = _full(model, head + tail)[len(head) :]
        torch.testing.assert_close(got[r, : len(tail)], want, rtol=0, atol=ATOL)


def test_continuations_of_left_padded_prefixes_equal_the_full_forward(model):
    tails = [[20, 21, 22], [23], [24, 25]]
    prefix = _prefix(model)
    got = _continue(model, prefix, tails)
    _assert_as_full_forward(model, got, PREFIXES, tails)
    # the comparison can fail: positions one off, or no prefix at all, give other logits
    assert (_continue(model, prefix, tails, shift=1) - got).abs().max() > 100 * ATOL
    alone = _full(model, tails[0])
    assert (got[0, : len(tails[0])] - alone).abs().max() > 100 * ATOL


def test_an_already_padded_batch_gives_the_same_cache(model):
    ids, mask, _ = pad_batch(PREFIXES, 3, "left")  # another pad id: padded keys/values are zeroed either way
    with torch.no_grad():
        padded = KVPrefix.run(model, model.config, ids, mask, logits_to_keep=False)
    tokens = _prefix(model)
    assert torch.equal(padded.mask, tokens.mask) and torch.equal(padded.lengths, torch.tensor([6, 2, 4]))
    for (k, v), (k2, v2) in zip(padded.layers, tokens.layers, strict=True):
        torch.testing.assert_close(k, k2, rtol=0, atol=1e-6)
        torch.testing.assert_close(v, v2, rtol=0, atol=1e-6)
        assert not k[~mask.bool()[:, None, :, None].expand_as(k)].any()  # zero at padded positions


def test_gathered_rows_continue_their_own_prefix(model):
    index = torch.tensor([2, 0, 0, 1, 2])
    tails = [[30, 31], [32, 33, 34], [35], [36, 37], [38]]
    got = _continue(model, _prefix(model).rows(index), tails)
    _assert_as_full_forward(model, got, [PREFIXES[i] for i in index.tolist()], tails)


def test_repeated_rows_continue_prefix_i_at_row_j_times_rows_plus_i(model):
    tails = [[20, 21], [22], [23, 24, 25], [26], [27, 28], [29]]
    repeated = _prefix(model).repeated(2)
    assert repeated.mask.shape == (6, 6)
    got = _continue(model, repeated, tails)
    _assert_as_full_forward(model, got, PREFIXES * 2, tails)


def test_a_forward_through_a_fresh_cache_leaves_the_stored_tensors_alone(model):
    prefix = _prefix(model)
    before = [(k.clone(), v.clone()) for k, v in prefix.layers]
    tails = [[20, 21, 22], [23], [24, 25]]
    first = _continue(model, prefix, tails)
    second = _continue(model, prefix, tails)  # would attend to the first's keys if the cache object were shared
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    for (k, v), (k0, v0) in zip(prefix.layers, before, strict=True):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    assert prefix.fresh_cache() is not prefix.fresh_cache()


def test_a_zero_width_prefix_runs_nothing_and_continues_from_position_zero(model):
    prefix = _prefix(model, [[], []])
    assert prefix.layers == [] and prefix.fresh_cache() is None
    tails = [[20, 21, 22], [23]]
    assert prefix.tail_inputs(torch.ones(2, 3))["use_cache"] is False
    _assert_as_full_forward(model, _continue(model, prefix, tails), [[], []], tails)


def test_a_cache_of_the_wrong_length_is_refused(model):
    def drops_first_token(**inputs):
        return model(**{k: v[:, 1:] if k in ("input_ids", "attention_mask", "position_ids") else v
                        for k, v in inputs.items()})  # fmt: skip

    def ignores_cache(**inputs):
        inputs.pop("cache")
        return model(**inputs)

    for forward in (drops_first_token, ignores_cache):
        with torch.no_grad(), pytest.raises(ReuseUnsupported, match="positions in the KV cache, not 6"):
            KVPrefix.run_tokens(forward, model.config, PREFIXES, torch.device("cpu"), logits_to_keep=False)


# -- a window shorter than some sequences ----------------------------------------------------------------
@pytest.fixture(scope="module")
def window8():
    model, _ = make_model("gemma3", n_layers=3, hidden=32, seed=3, sliding_window=8)
    sharpen_attention(model)
    return model


def test_each_layer_keeps_its_kind_and_window(model):
    from transformers import DynamicCache

    sliding = model.config.model_type == "gemma3_text"
    assert reuse_blocker(model) is None and reuse_window(model) == (512 if sliding else None)
    prefix = _prefix(model)
    assert prefix.windows == ((512, 512, None) if sliding else (None, None, None))  # gemma3: layer 2 sees all
    own = [type(layer) for layer in DynamicCache(config=model.config).layers]
    assert [type(layer) for layer in prefix.fresh_cache().layers] == own
    assert [type(layer) for layer in prefix.rows(torch.tensor([1, 0])).fresh_cache().layers] == own


def test_sequences_that_fit_the_window_continue_as_the_full_forward(window8):
    assert reuse_blocker(window8) is None and reuse_window(window8) == 8
    tails = [[20, 21], [23, 24, 25, 26], [27, 28, 29]]  # prefix + tail: 8, 6 and 7 tokens
    prefix = _prefix(window8)
    _assert_as_full_forward(window8, _continue(window8, prefix, tails), PREFIXES, tails)
    _assert_as_full_forward(window8, _continue(window8, prefix.repeated(2), tails * 2), PREFIXES * 2, tails * 2)
    # the window is real: a 12-token sequence scores otherwise than with the 512-token window (same weights)
    wide, _ = make_model("gemma3", n_layers=3, hidden=32, seed=3, sliding_window=512)
    wide.load_state_dict(window8.state_dict())
    tokens = list(range(20, 32))
    assert (_full(window8, tokens)[-1] - _full(wide, tokens)[-1]).abs().max() > 100 * ATOL
    assert torch.equal(_full(window8, tokens[:8]), _full(wide, tokens[:8]))


def test_a_prefix_wider_than_the_window_is_refused(window8):
    with torch.no_grad(), pytest.raises(ReuseUnsupported, match="kept 7 of 9 prefix positions"):
        KVPrefix.run_tokens(window8, window8.config, [list(range(5, 14))], torch.device("cpu"), logits_to_keep=True)


# -- a start shared by every row, run once ---------------------------------------------------------------
START = [50, 51, 52, 53, 54, 55, 56, 57, 58, 59]
SHARING = [START + [5, 6, 7, 8], START + [10], START]  # the last one is the start itself: an empty rest


def test_shared_start_is_the_common_start_worth_running_once():
    assert shared_start(SHARING) == len(START)
    assert shared_start([START + [1], START + [2, 3]]) == len(START)
    assert shared_start([START[:7] + [1], START[:7] + [2]]) == 0  # shorter than MIN_SHARED_START
    assert shared_start([START, [49] + START]) == 0 and shared_start([START]) == 0 and shared_start([[], START]) == 0


def test_continuations_after_a_shared_start_equal_the_full_forward(model):
    tails = [[20, 21, 22], [23], [24, 25]]
    with torch.no_grad():
        shared = KVPrefix.run_tokens(model, model.config, SHARING, torch.device("cpu"),
                                     logits_to_keep=accepts_logits_to_keep(model), start=len(START))  # fmt: skip
    # [start | padding | rest]: the padding sits between the start and the rest
    assert shared.mask.tolist()[1] == [True] * 10 + [False] * 3 + [True]
    assert shared.lengths.tolist() == [14, 11, 10]
    for k, v in shared.layers:
        assert not k[~shared.mask[:, None, :, None].expand_as(k)].any() and k.shape[-2] == 14
        assert not v[~shared.mask[:, None, :, None].expand_as(v)].any()
    got = _continue(model, shared, tails)
    _assert_as_full_forward(model, got, SHARING, tails)
    torch.testing.assert_close(got, _continue(model, _prefix(model, SHARING), tails), rtol=0, atol=ATOL)
    index = torch.tensor([2, 0, 1, 2])  # gathered and repeated rows too
    more = [[30, 31], [32], [33, 34, 35], [36]]
    _assert_as_full_forward(model, _continue(model, shared.rows(index), more), [SHARING[i] for i in index], more)
    _assert_as_full_forward(model, _continue(model, shared.repeated(2), tails * 2), SHARING * 2, tails * 2)
    # identical prefixes: the start alone, repeated
    same = KVPrefix.run_tokens(model, model.config, [START, START], torch.device("cpu"), logits_to_keep=False,
                               start=len(START))  # fmt: skip
    _assert_as_full_forward(model, _continue(model, same, tails[:2]), [START, START], tails[:2])


def test_the_rest_runs_on_the_start_once(model):
    """The forwards a shared start makes: the start as one row, then only the rests."""
    seen = []

    def forward(**inputs):
        seen.append((tuple(inputs["input_ids"].shape), inputs["position_ids"].tolist()))
        return model(**inputs)

    with torch.no_grad():
        KVPrefix.run_tokens(forward, model.config, SHARING, torch.device("cpu"), logits_to_keep=False, start=10)
    assert [shape for shape, _ in seen] == [(1, 10), (3, 4)]
    (_, head), (_, rest) = seen
    assert head == [list(range(10))] and rest[0] == [10, 11, 12, 13] and rest[1][-1] == 10  # pads' are masked
    with pytest.raises(ValueError, match="do not all start with the same 10 tokens"):
        KVPrefix.run_tokens(model, model.config, [START, [1] + START], torch.device("cpu"), logits_to_keep=False,
                            start=10)  # fmt: skip
