"""The vector file: roundtrip, atomic writes, and one-line errors for anything that is not a vector."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from steer_plugin.errors import SteerError
from steer_plugin.vectors.stats import ClassStats, HiddenStateStats
from steer_plugin.vectors.vector import VECTOR_FORMAT, SteeringVector, file_sha256

L, H = 4, 8


def _vector(with_mask: bool = True) -> SteeringVector:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(L, H, generator=g)
    mask = None
    if with_mask:
        mask = torch.zeros(L, H, dtype=torch.bool)
        mask[:, :3] = True
        m = m * mask
    meta = {
        "emotion": "anger",
        "baseline": "neutral",
        "method": "top_k" if with_mask else "mean",
        "top_k": 3 if with_mask else None,
        "counts": {"anger": 4, "neutral": 5},
        "model": "tiny",
    }
    return SteeringVector(m, meta, mask)


def _dir_names(path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("with_mask", [True, False])
def test_roundtrip(tmp_path, with_mask):
    vec = _vector(with_mask)
    path = tmp_path / "v.safetensors"
    vec.save(path)
    back = SteeringVector.load(path)
    assert torch.equal(back.matrix, vec.matrix) and back.matrix.dtype == torch.float32
    if with_mask:
        assert back.mask is not None and back.mask.dtype == torch.bool and torch.equal(back.mask, vec.mask)
    else:
        assert back.mask is None
    for k, v in vec.metadata.items():
        assert back.metadata[k] == v
    assert back.metadata["n_layers"] == L and back.metadata["hidden_size"] == H
    assert "created_at" in back.metadata and "package_version" in back.metadata
    assert _dir_names(tmp_path) == ["v.safetensors"]
    assert len(file_sha256(path)) == 64
    # saving a loaded vector again keeps everything
    back.save(tmp_path / "again.safetensors")
    again = SteeringVector.load(tmp_path / "again.safetensors")
    assert again.metadata == back.metadata and torch.equal(again.matrix, back.matrix)


def test_header_is_readable_without_json(tmp_path):
    """Flat string keys in the safetensors header, for tools that only read the header."""
    from safetensors import safe_open

    path = tmp_path / "v.safetensors"
    _vector().save(path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert header["format"] == VECTOR_FORMAT and header["emotion"] == "anger"
    assert json.loads(header["counts"]) == {"anger": 4, "neutral": 5}


def test_restrict_and_norms():
    vec = _vector()
    r = vec.restrict([1, 3])
    assert r.nonzero_layers() == [1, 3] and r.metadata["layers"] == [1, 3]
    assert torch.equal(r.matrix[1], vec.matrix[1]) and r.matrix[0].abs().sum() == 0
    assert r.mask is not None and not r.mask[0].any() and torch.equal(r.mask[3], vec.mask[3])
    assert vec.nonzero_layers() == [0, 1, 2, 3]  # the original is unchanged
    assert r.layer_norms()[1] == pytest.approx(float(vec.matrix[1].norm()))


def test_not_a_matrix():
    with pytest.raises(SteerError, match=r"\[n_layers, hidden\] matrix"):
        SteeringVector(torch.zeros(H))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_refused_and_nothing_written(tmp_path, bad):
    vec = _vector()
    vec.matrix[2, 1] = bad
    path = tmp_path / "v.safetensors"
    with pytest.raises(SteerError, match="non-finite"):
        vec.save(path)
    assert _dir_names(tmp_path) == []
    # an existing good file is left alone
    good = _vector()
    good.save(path)
    before = path.read_bytes()
    with pytest.raises(SteerError):
        vec.save(path)
    assert path.read_bytes() == before and _dir_names(tmp_path) == ["v.safetensors"]


def test_failure_while_writing_keeps_old_file(tmp_path, monkeypatch):
    """A crash half-way through the write (disk full, ...) leaves neither a partial file nor a temp."""
    import safetensors.torch

    path = tmp_path / "v.safetensors"
    _vector().save(path)
    before = path.read_bytes()

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x10\x00\x00\x00partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OSError):
        _vector(with_mask=False).save(path)
    assert path.read_bytes() == before
    assert _dir_names(tmp_path) == ["v.safetensors"]
    with pytest.raises(OSError):
        _vector().save(tmp_path / "new.safetensors")
    assert _dir_names(tmp_path) == ["v.safetensors"]


def _corrupt_files(tmp_path) -> dict[str, object]:
    """name -> path of something that is not a valid steering vector."""
    good = tmp_path / "good.safetensors"
    _vector().save(good)
    data = good.read_bytes()
    files = {}

    def put(name: str, content: bytes):
        p = tmp_path / name
        p.write_bytes(content)
        files[name] = p

    put("truncated.safetensors", data[: len(data) - 20])
    put("header_only.safetensors", data[:30])
    put("empty.safetensors", b"")
    put("random.safetensors", np.random.default_rng(0).bytes(500))
    other = tmp_path / "model.safetensors"  # e.g. a model's weights: another safetensors format
    save_file({"lm_head.weight": torch.zeros(4, 4)}, str(other), metadata={"format": "pt"})
    files["other.safetensors"] = other
    stats = tmp_path / "stats.safetensors"
    HiddenStateStats({"anger": ClassStats.empty(L, H)}, {"target": "anger"}).save(stats)
    files["stats.safetensors"] = stats
    meta = {"format": VECTOR_FORMAT, "format_version": "1", "metadata": "{}"}
    p = tmp_path / "novector.safetensors"
    save_file({"mask": torch.zeros(L, H, dtype=torch.uint8)}, str(p), metadata=meta)
    files["novector.safetensors"] = p
    p = tmp_path / "badmask.safetensors"
    save_file({"vector": torch.zeros(L, H), "mask": torch.zeros(L, H + 1, dtype=torch.uint8)}, str(p), metadata=meta)
    files["badmask.safetensors"] = p
    p = tmp_path / "nan.safetensors"
    save_file({"vector": torch.full((L, H), math.nan)}, str(p), metadata=meta)
    files["nan.safetensors"] = p
    p = tmp_path / "onedim.safetensors"
    save_file({"vector": torch.zeros(H)}, str(p), metadata=meta)
    files["onedim.safetensors"] = p
    p = tmp_path / "badjson.safetensors"
    save_file({"vector": torch.zeros(L, H)}, str(p), metadata={**meta, "metadata": "{oops"})
    files["badjson.safetensors"] = p
    p = tmp_path / "listjson.safetensors"
    save_file({"vector": torch.zeros(L, H)}, str(p), metadata={**meta, "metadata": "[1, 2]"})
    files["listjson.safetensors"] = p
    files["missing.safetensors"] = tmp_path / "does-not-exist.safetensors"
    return files


def test_corrupt_files_are_one_line_steer_errors(tmp_path):
    for name, path in _corrupt_files(tmp_path).items():
        with pytest.raises(SteerError) as info:
            SteeringVector.load(path)
        msg = str(info.value)
        assert "\n" not in msg and str(path.name) in msg, (name, msg)
    msg = str(pytest.raises(SteerError, SteeringVector.load, tmp_path / "stats.safetensors").value)
    assert "not a steer-plugin steering vector" in msg and "steer-plugin/stats" in msg


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_non_float_vectors_are_refused_not_cast(tmp_path, dtype):
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    SteeringVector(torch.ones(3, 32), {"emotion": "anger"}).save(good)
    from safetensors import safe_open

    with safe_open(str(good), framework="pt") as f:
        header = f.metadata()
    bad = tmp_path / "ints.safetensors"
    save_file({"vector": torch.ones(3, 32).to(dtype)}, str(bad), metadata=header)
    with pytest.raises(SteerError, match=f"{str(dtype).removeprefix('torch.')}; a steering vector holds floats"):
        SteeringVector.load(bad)
    with pytest.raises(SteerError, match="holds floats"):
        SteeringVector(torch.ones(3, 32).to(dtype))
    stats = tmp_path / "stats.safetensors"
    g = torch.Generator().manual_seed(0)
    classes = {c: ClassStats(4, torch.randn(3, 32, generator=g, dtype=torch.float64), torch.ones(3, 32)) for c in "ab"}
    HiddenStateStats(classes, {"target": "a", "baseline": "b"}).save(stats)
    tensors, meta = {}, {}
    with safe_open(str(stats), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["a/mean"] = tensors["a/mean"].to(dtype)
    save_file(tensors, str(stats), metadata=meta)
    with pytest.raises(SteerError, match="corrupt stats file .*expected floats"):
        HiddenStateStats.load(stats)
