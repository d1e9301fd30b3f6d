"""Random-direction controls: V's per-layer norms and sparsity, a seeded random direction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steer_plugin.cli import main
from steer_plugin.errors import SteerError
from steer_plugin.vectors.controls import control_path, random_like, random_like_file, write_controls
from steer_plugin.vectors.vector import SteeringVector, file_sha256

L, H = 6, 48


def _mean_vector() -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(L, H, generator=g) * torch.linspace(0.5, 100, L)[:, None]  # norms from ~3 to ~700
    m[2] = 0  # a layer left out (e.g. by --layers)
    meta = {"model": "tiny", "config_hash": "abc", "emotion": "anger", "method": "mean", "block_path": "model.layers"}
    meta["residual_rms"] = [float(x) for x in range(10, 10 + L)]
    return SteeringVector(m, meta)


def _top_k_vector(k: int = 5) -> SteeringVector:
    dense = _mean_vector().matrix
    idx = dense.abs().topk(k, dim=1).indices
    mask = torch.zeros(L, H, dtype=torch.bool).scatter_(1, idx, True)
    mask[2] = False
    meta = {"model": "tiny", "emotion": "anger", "method": "top_k", "top_k": k}
    return SteeringVector(dense * mask, meta, mask)


def _norms(v: SteeringVector) -> np.ndarray:
    return np.linalg.norm(v.matrix.double().numpy(), axis=1)


def test_mean_control_matches_norms_and_is_dense():
    v = _mean_vector()
    r = random_like(v, 0, source_sha256="f" * 64, source_name="anger-mean.safetensors")
    assert r.matrix.shape == v.matrix.shape and r.mask is None
    np.testing.assert_allclose(_norms(r), _norms(v), rtol=1e-5)
    assert not r.matrix[2].any()  # an empty layer stays empty
    assert all(int((r.matrix[layer] != 0).sum()) == H for layer in range(L) if layer != 2)
    m = r.metadata
    assert (m["method"], m["seed"], m["emotion"], m["model"], m["config_hash"]) == ("random", 0, "anger", "tiny", "abc")
    # the model's residual RMS: the same relative strength per unit alpha, and calibration's first alpha
    assert r.relative_strength(1.0, [0, 1]) == v.relative_strength(1.0, [0, 1])
    assert m["control_of"] == {
        "emotion": "anger",
        "method": "mean",
        "sha256": "f" * 64,
        "file": "anger-mean.safetensors",
    }


def test_top_k_control_keeps_the_number_of_neurons_per_layer():
    v = _top_k_vector(5)
    r = random_like(v, 1)
    np.testing.assert_allclose(_norms(r), _norms(v), rtol=1e-5)
    np.testing.assert_array_equal(r.mask.sum(1).numpy(), v.mask.sum(1).numpy())
    np.testing.assert_array_equal(r.mask.numpy(), (r.matrix != 0).numpy())  # the mask is the support
    assert not torch.equal(r.mask, v.mask)  # other neurons
    assert r.metadata["top_k"] == 5 and r.metadata["control_of"]["method"] == "top_k"


def test_seeds_reproduce_and_differ():
    v = _top_k_vector(5)
    assert torch.equal(random_like(v, 3).matrix, random_like(v, 3).matrix)
    assert not torch.equal(random_like(v, 3).matrix, random_like(v, 4).matrix)
    with pytest.raises(SteerError, match="seed must be >= 0"):
        random_like(v, -1)


def test_high_dimensional_controls_are_nearly_orthogonal():
    g = torch.Generator().manual_seed(1)
    v = SteeringVector(torch.randn(4, 4096, generator=g) + 0.5, {"method": "mean"})  # not centred on 0
    a, b = random_like(v, 0).matrix, random_like(v, 1).matrix
    cos = torch.nn.functional.cosine_similarity
    # random unit vectors in 4096 dimensions: cosine ~ N(0, 1/64)
    assert cos(a, v.matrix, dim=1).abs().max() < 0.1
    assert cos(a, b, dim=1).abs().max() < 0.1
    assert abs(float(cos(a.flatten(), v.matrix.flatten(), dim=0))) < 0.05


def test_control_of_a_control_names_the_original(tmp_path):
    v = _top_k_vector(3)
    v.save(tmp_path / "v.safetensors")
    first = random_like_file(tmp_path / "v.safetensors", 0)
    assert first.metadata["control_of"]["sha256"] == file_sha256(tmp_path / "v.safetensors")
    second = random_like(first, 5)
    assert second.metadata["control_of"] == first.metadata["control_of"]


def test_write_controls_names_reuse_and_refresh(tmp_path):
    src = tmp_path / "anger-top_k-5.safetensors"
    _top_k_vector(5).save(src)
    out = write_controls([str(src)], 2, tmp_path / "controls")
    want = [str(control_path(tmp_path / "controls", src, s)) for s in (0, 1)]
    assert out == {str(src): want}
    assert want[0].endswith("controls/anger-top_k-5-random-0.safetensors")
    loaded = SteeringVector.load(want[1])
    assert torch.equal(loaded.matrix, random_like_file(src, 1).matrix)
    assert loaded.metadata["seed"] == 1
    stamp = (tmp_path / "controls" / "anger-top_k-5-random-0.safetensors").stat().st_mtime_ns
    write_controls([str(src)], 2, tmp_path / "controls")  # resumed sweep: kept
    assert (tmp_path / "controls" / "anger-top_k-5-random-0.safetensors").stat().st_mtime_ns == stamp
    _top_k_vector(4).save(src)  # the source changed: its controls are rebuilt
    write_controls([str(src)], 1, tmp_path / "controls")
    assert SteeringVector.load(want[0]).metadata["control_of"]["sha256"] == file_sha256(src)
    assert int(SteeringVector.load(want[0]).mask.sum(1).max()) == 4
    with pytest.raises(SteerError, match="--controls must be >= 0"):
        write_controls([str(src)], -1, tmp_path / "controls")


def test_cli_build_random(tmp_path, capsys):
    src = tmp_path / "anger-top_k-5.safetensors"
    _top_k_vector(5).save(src)
    out = tmp_path / "ctl.safetensors"
    assert main(["build", "--method", "random", "--like", str(src), "--seed", "7", "--out", str(out)]) == 0
    assert torch.equal(SteeringVector.load(out).matrix, random_like_file(src, 7).matrix)
    assert main(["build", "--method", "random", "--like", str(src)]) == 0  # default: beside the source
    assert (tmp_path / "anger-top_k-5-random-0.safetensors").exists()
    capsys.readouterr()
    bad = [
        (["--method", "random"], "needs --like VECTOR"),
        (["--like", str(src)], "--like only applies to --method random"),
        (["--method", "random", "--like", str(src), "--stats", "s.safetensors"], "drop --stats"),
        (["--method", "random", "--like", str(src), "--emotion", "joy"], "drop --emotion"),
        (["--method", "random", "--like", str(src), "--top-k", "3"], "drop --top-k"),
        (["--method", "random", "--like", str(tmp_path / "missing.safetensors")], "not found"),
    ]
    for args, message in bad:
        assert main(["build", *args, "--out", str(tmp_path / "x.safetensors")]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "x.safetensors").exists()
