"""Agreement of two vectors (per-layer cosine, top-k neurons in common) and scripts/compare_vectors.py."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from steer_plugin.errors import SteerError
from steer_plugin.vectors.similarity import agreement
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.tiny import load_script


def _top_k(matrix: torch.Tensor, k: int, meta: dict | None = None) -> SteeringVector:
    mask = torch.zeros_like(matrix, dtype=torch.bool).scatter_(1, matrix.abs().topk(k, dim=1).indices, True)
    return SteeringVector(matrix * mask, meta or {"method": "top_k"}, mask)


def test_cosines_and_shared_neurons_by_hand():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    a, b = SteeringVector(x), SteeringVector(x + 0.5 * y)
    got = agreement(a, b, [1, 3])
    xn, yn = x.double().numpy(), (x + 0.5 * y).double().numpy()
    want = [float(xn[l] @ yn[l] / np.linalg.norm(xn[l]) / np.linalg.norm(yn[l])) for l in (1, 3)]
    assert got.cosines == pytest.approx(want, abs=1e-12) and got.shared_neurons is None
    assert got.median_cosine == pytest.approx(np.median(want)) and got.min_cosine == pytest.approx(min(want))
    sa, sb = _top_k(x, 4), _top_k(x + 0.5 * y, 4)
    common = sum(len(set(np.flatnonzero(sa.mask[l])) & set(np.flatnonzero(sb.mask[l]))) for l in range(4))
    assert agreement(sa, sb, list(range(4))).shared_neurons == common / 16
    assert agreement(sa, sa, [0, 2]).cosines == pytest.approx([1.0, 1.0]) and agreement(sa, sa, [0]).shared_neurons == 1


def test_a_zero_layer_has_no_cosine_and_shapes_must_match():
    m = torch.ones(3, 8)
    m[1] = 0
    got = agreement(SteeringVector(m), SteeringVector(torch.ones(3, 8)), [0, 1, 2])
    assert np.isnan(got.cosines[1]) and got.median_cosine == pytest.approx(1.0) and got.min_cosine == pytest.approx(1.0)
    with pytest.raises(SteerError, match=r"cannot compare a \[3, 8\] vector with a \[2, 8\] one"):
        agreement(SteeringVector(m), SteeringVector(torch.ones(2, 8)), [0])


def test_compare_vectors_script(tmp_path, monkeypatch, capsys):
    module = load_script("compare_vectors")
    g = torch.Generator().manual_seed(1)
    for folder, noise in (("old", 0.0), ("new", 0.3)):
        base = torch.randn(6, 16, generator=torch.Generator().manual_seed(2))
        m = base + noise * torch.randn(6, 16, generator=g)
        counts = {"anger": 300 if folder == "old" else 1025, "neutral": 300}
        SteeringVector(m, {"method": "mean", "counts": counts}).save(tmp_path / folder / "anger-mean.safetensors")
        _top_k(m, 4, {"method": "top_k"}).save(tmp_path / folder / "anger-top_k-4.safetensors")
    SteeringVector(torch.ones(6, 16)).save(tmp_path / "old" / "only-here.safetensors")
    out = tmp_path / "cmp.md"
    monkeypatch.setattr(
        sys, "argv", ["compare_vectors.py", str(tmp_path / "old"), str(tmp_path / "new"), "--out", str(out)]
    )
    module.main()
    text = out.read_text()
    assert text in capsys.readouterr().out and "layers 2-3:" in text  # middle third of 6
    want = agreement(
        SteeringVector.load(tmp_path / "old" / "anger-mean.safetensors"),
        SteeringVector.load(tmp_path / "new" / "anger-mean.safetensors"),
        [2, 3],
    )
    assert f"| anger-mean | 300 anger, 300 neutral | 1025 anger, 300 neutral | {want.median_cosine:.3f} (min " in text
    assert "anger-top_k-4 |" in text and "only-here" not in text and "- top_k: median cosine" in text
