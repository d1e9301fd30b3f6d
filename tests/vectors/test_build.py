"""build_vector: mean difference and top-k per layer vs numpy on the raw samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steer_plugin.errors import SteerError
from steer_plugin.vectors.build import build_vector
from steer_plugin.vectors.stats import ClassStats, HiddenStateStats

L, H = 5, 12


@pytest.fixture(scope="module")
def raw() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "anger": rng.normal(rng.normal(0, 1, (L, H)), 1.0, size=(9, L, H)),
        "neutral": rng.normal(0, 1.0, size=(14, L, H)),
        "joy": rng.normal(0.5, 1.0, size=(6, L, H)),
    }


@pytest.fixture()
def stats(raw) -> HiddenStateStats:
    classes = {}
    for c, x in raw.items():
        cs = ClassStats.empty(L, H)
        for i in range(0, len(x), 4):
            cs.update(torch.from_numpy(x[i : i + 4]))
        classes[c] = cs
    meta = {
        "target": "anger",
        "baseline": "neutral",
        "model": "tiny",
        "split": "train",
        "seed": 0,
        "block_path": "model.layers",
        "template": "raw",
        "irrelevant": 1,
    }
    return HiddenStateStats(classes, meta)


def _top_k_reference(diff: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(diff.shape, dtype=bool)
    for layer in range(diff.shape[0]):
        mask[layer, np.argsort(-np.abs(diff[layer]))[:k]] = True
    return diff * mask, mask


def test_mean_difference(stats, raw):
    vec = build_vector(stats)  # target and baseline from the stats metadata
    diff = raw["anger"].mean(0) - raw["neutral"].mean(0)
    np.testing.assert_allclose(vec.matrix.numpy(), diff, rtol=1e-6, atol=1e-6)
    assert vec.mask is None
    m = vec.metadata
    assert (m["emotion"], m["baseline"], m["method"], m["top_k"]) == ("anger", "neutral", "mean", None)
    assert m["counts"] == {"anger": 9, "neutral": 14}
    assert m["model"] == "tiny" and m["block_path"] == "model.layers" and "irrelevant" not in m


@pytest.mark.parametrize("k", [1, 3, H])
def test_top_k(stats, raw, k):
    vec = build_vector(stats, "joy", "neutral", method="top_k", top_k=k)
    want, mask = _top_k_reference(raw["joy"].mean(0) - raw["neutral"].mean(0), k)
    np.testing.assert_array_equal(vec.mask.numpy(), mask)
    assert (vec.mask.sum(1) == k).all()
    np.testing.assert_allclose(vec.matrix.numpy(), want, rtol=1e-6, atol=1e-6)
    assert vec.metadata["top_k"] == k and vec.metadata["method"] == "top_k"
    assert vec.metadata["counts"] == {"joy": 6, "neutral": 14}


def test_layers_and_scale(stats, raw):
    vec = build_vector(stats, method="top_k", top_k=2, layers=[1, 4], scale=-2.0)
    full, mask = _top_k_reference(raw["anger"].mean(0) - raw["neutral"].mean(0), 2)
    keep = np.zeros((L, 1))
    keep[[1, 4]] = 1
    np.testing.assert_allclose(vec.matrix.numpy(), -2.0 * full * keep, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(vec.mask.numpy(), mask & keep.astype(bool))
    assert vec.nonzero_layers() == [1, 4]
    assert vec.metadata["layers"] == [1, 4] and vec.metadata["scale"] == -2.0


def test_errors(stats):
    with pytest.raises(SteerError, match="unknown method 'median'"):
        build_vector(stats, method="median")
    for k in (None, 0, -1):
        with pytest.raises(SteerError, match="--top-k K with K >= 1"):
            build_vector(stats, method="top_k", top_k=k)
    with pytest.raises(SteerError, match="larger than the hidden size 12"):
        build_vector(stats, method="top_k", top_k=H + 1)
    with pytest.raises(SteerError, match="'fear' is not in this stats file; it has: anger, neutral, joy"):
        build_vector(stats, "fear")
    with pytest.raises(SteerError, match="name the emotion"):
        build_vector(HiddenStateStats(stats.classes, {"target": "all"}))
    with pytest.raises(SteerError, match="name the emotion"):
        build_vector(HiddenStateStats(stats.classes, {}))
    stats.classes["empty"] = ClassStats.empty(L, H)
    with pytest.raises(SteerError, match="'empty' has no recorded texts"):
        build_vector(stats, "empty")
