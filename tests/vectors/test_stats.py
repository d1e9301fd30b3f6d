"""Streaming per-class statistics vs numpy on the raw samples; file roundtrip; shard merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steer_plugin.errors import SteerError
from steer_plugin.vectors.stats import STATS_FORMAT, ClassStats, HiddenStateStats

L, H = 3, 16


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    # a large common offset: the naive sum-of-squares formula would lose precision here
    return {
        "anger": rng.normal(50.0, 2.0, size=(37, L, H)),
        "neutral": rng.normal(-3.0, 0.5, size=(53, L, H)),
    }


def _stream(x: np.ndarray, sizes: list[int], dtype=torch.float64) -> ClassStats:
    """Feed ``x`` in batches of the given (uneven, repeating) sizes."""
    cs = ClassStats.empty(L, H)
    i, k = 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        cs.update(torch.from_numpy(x[i : i + n]).to(dtype))
        i, k = i + n, k + 1
    return cs


@pytest.mark.parametrize("sizes", [[1], [7], [3, 1, 11, 2], [100]])
def test_update_matches_numpy(raw, sizes):
    x = raw["anger"]
    cs = _stream(x, sizes, torch.float64)
    assert cs.count == len(x)
    assert cs.mean.dtype == torch.float64 and tuple(cs.mean.shape) == (L, H)
    np.testing.assert_allclose(cs.mean.numpy(), x.mean(0), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(cs.var.numpy(), x.var(0, ddof=1), rtol=1e-10, atol=0)
    np.testing.assert_allclose(cs.m2.numpy(), ((x - x.mean(0)) ** 2).sum(0), rtol=1e-10, atol=0)


def test_update_float32_and_float16_input(raw):
    x32 = raw["neutral"].astype(np.float32)
    cs = _stream(raw["neutral"], [5, 2], torch.float32)
    np.testing.assert_allclose(cs.mean.numpy(), x32.astype(np.float64).mean(0), rtol=1e-10, atol=1e-10)
    x16 = raw["neutral"].astype(np.float16)
    cs16 = _stream(raw["neutral"], [4], torch.float16)
    np.testing.assert_allclose(cs16.var.numpy(), x16.astype(np.float64).var(0, ddof=1), rtol=1e-9)


def test_edge_counts():
    cs = ClassStats.empty(L, H)
    cs.update(torch.zeros(0, L, H))  # empty batch: nothing changes
    assert cs.count == 0
    one = torch.randn(1, L, H)
    cs.update(one)
    assert cs.count == 1
    assert torch.equal(cs.mean, one[0].double())
    assert torch.isnan(cs.var).all()  # unbiased variance needs two samples
    cs.update(one)
    assert torch.equal(cs.var, torch.zeros(L, H, dtype=torch.float64))
    # merging an empty one is a no-op in both directions
    empty = ClassStats.empty(L, H)
    empty.merge(cs)
    assert empty.count == 2 and torch.equal(empty.mean, cs.mean)
    empty.mean += 1  # a merge into an empty stats copies, it does not alias
    assert not torch.equal(empty.mean, cs.mean)
    cs.merge(ClassStats.empty(L, H))
    assert cs.count == 2


def test_merge_of_shards_equals_one_pass(raw):
    whole = HiddenStateStats({c: _stream(x, [6]) for c, x in raw.items()})
    # shard 1: part of anger, all of neutral; shard 2: the rest of anger, plus a class only it has
    a = HiddenStateStats({"anger": _stream(raw["anger"][:10], [3]), "neutral": _stream(raw["neutral"], [9])})
    b = HiddenStateStats({"anger": _stream(raw["anger"][10:], [4, 1]), "joy": _stream(raw["anger"][:5], [2])})
    a.merge(b)
    assert a.counts() == {"anger": 37, "neutral": 53, "joy": 5}
    for c in ("anger", "neutral"):
        np.testing.assert_allclose(a.get(c).mean.numpy(), whole.get(c).mean.numpy(), rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(a.get(c).var.numpy(), whole.get(c).var.numpy(), rtol=1e-10)
    np.testing.assert_allclose(a.get("joy").mean.numpy(), raw["anger"][:5].mean(0), rtol=1e-12)
    # the class copied from b is a copy: changing b does not change a
    b.get("joy").mean.zero_()
    assert a.get("joy").mean.abs().sum() > 0


def test_save_load_roundtrip(raw, tmp_path):
    stats = HiddenStateStats(
        {c: _stream(x, [5]) for c, x in raw.items()},
        {"model": "tiny", "counts": {"anger": 37, "neutral": 53}, "max_per_class": None, "seed": 3},
    )
    stats.classes["ekman:anger"] = _stream(raw["anger"][:2], [1])
    path = tmp_path / "sub" / "stats.safetensors"
    stats.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["stats.safetensors"]  # no temp file left
    back = HiddenStateStats.load(path)
    assert back.metadata == stats.metadata
    assert back.counts() == {"anger": 37, "ekman:anger": 2, "neutral": 53}
    assert back.shape == (L, H)
    for c, cs in stats.classes.items():
        assert back.get(c).mean.dtype == torch.float64
        assert torch.equal(back.get(c).mean, cs.mean) and torch.equal(back.get(c).m2, cs.m2)


def test_get_unknown_class_lists_known():
    stats = HiddenStateStats({"anger": ClassStats.empty(L, H), "neutral": ClassStats.empty(L, H)})
    with pytest.raises(SteerError, match="'joy' is not in this stats file; it has: anger, neutral"):
        stats.get("joy")


def test_load_bad_files(tmp_path):
    with pytest.raises(SteerError, match="not found"):
        HiddenStateStats.load(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all" * 3)
    with pytest.raises(SteerError, match="not a readable safetensors stats file"):
        HiddenStateStats.load(garbage)
    other = tmp_path / "other.safetensors"
    save_file({"anger/mean": torch.zeros(L, H)}, str(other), metadata={"format": "pt"})
    with pytest.raises(SteerError, match="not a steer-plugin stats file"):
        HiddenStateStats.load(other)
    missing_count = tmp_path / "corrupt.safetensors"
    save_file(
        {"anger/mean": torch.zeros(L, H), "anger/m2": torch.zeros(L, H)},
        str(missing_count),
        metadata={"format": STATS_FORMAT, "format_version": "1", "metadata": "{}"},
    )
    with pytest.raises(SteerError, match="corrupt stats file"):
        HiddenStateStats.load(missing_count)
    bad_json = tmp_path / "badjson.safetensors"
    save_file(
        {"a/mean": torch.zeros(L, H), "a/m2": torch.zeros(L, H), "a/count": torch.tensor([1])},
        str(bad_json),
        metadata={"format": STATS_FORMAT, "metadata": "{nope"},
    )
    with pytest.raises(SteerError, match="corrupt stats file"):
        HiddenStateStats.load(bad_json)
    list_json = tmp_path / "listjson.safetensors"
    save_file(
        {"a/mean": torch.zeros(L, H), "a/m2": torch.zeros(L, H), "a/count": torch.tensor([1])},
        str(list_json),
        metadata={"format": STATS_FORMAT, "metadata": "[1]"},
    )
    with pytest.raises(SteerError, match="corrupt stats file"):
        HiddenStateStats.load(list_json)
