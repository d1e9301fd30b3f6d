"""The vector file as untrusted data: shape, version and metadata are validated on load with one line
naming the file and the field; `steer list` names what it skips; nothing empty is exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from steer_plugin.errors import SteerError
from steer_plugin.vectors.vector import VECTOR_FORMAT, SteeringVector
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.tiny import save_tiny_stats

L, H = 3, 32


def _raw_vector(path: Path, matrix: torch.Tensor, version: str = "1", **meta) -> Path:
    """A vector file as another program (or a tamperer) would write it: header fields as given."""
    header = {"format": VECTOR_FORMAT, "format_version": version, "metadata": json.dumps(meta)}
    save_file({"vector": matrix.contiguous()}, str(path), metadata=header)
    return path


BAD_METADATA = [
    ({"residual_rms": ["a", "b", "c"]}, "residual_rms"),
    ({"residual_rms": [1.0, 2.0]}, "residual_rms"),
    ({"residual_rms": [1.0, float("nan"), 2.0]}, "residual_rms"),
    ({"control_of": "evil", "method": "random"}, "control_of"),
    ({"control_of": {"top_k": {"x": 1}}, "method": "random"}, "control_of.top_k"),
    ({"recipe": "x"}, "recipe"),
    ({"recipe": [{"emotion": "anger"}]}, "recipe[0].coefficient"),
    ({"top_k": "20"}, "top_k"),
    ({"layers": [0, 99]}, "layers"),
    ({"n_layers": 7}, "n_layers"),
    ({"emotion": ["anger"]}, "emotion"),
    ({"block_path": 3}, "block_path"),
    ({"counts": {"anger": -1}}, "counts"),
    ({"scale": float("inf")}, "scale"),
]


@pytest.mark.parametrize(("meta", "field"), BAD_METADATA)
def test_bad_metadata_is_refused_on_load(tmp_path, meta, field):
    path = _raw_vector(tmp_path / "v.safetensors", torch.ones(L, H), **meta)
    with pytest.raises(SteerError) as info:
        SteeringVector.load(path)
    assert str(path) in str(info.value) and field in str(info.value)


@pytest.mark.parametrize(("shape", "version", "needle"), [((0, H), "1", "shape"), ((L, 0), "1", "shape"),
                                                          ((L, H), "99", "format_version"),
                                                          ((L, H), "one", "format_version")])  # fmt: skip
def test_empty_vectors_and_unknown_versions_are_refused(tmp_path, capsys, shape, version, needle):
    path = _raw_vector(tmp_path / "v.safetensors", torch.ones(*shape), version)
    with pytest.raises(SteerError, match=needle):
        SteeringVector.load(path)
    for fmt in ("gguf", "lm-eval-steered"):
        code, _, err = run_cli(["export", path, "--format", fmt, "--out", tmp_path / "out"], capsys)
        assert_one_line_error(code, err, "v.safetensors", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]


@pytest.mark.parametrize("shape", [(0, H), (L, 0), (0, 0)])
def test_a_vector_needs_a_layer_and_a_neuron(shape):
    with pytest.raises(SteerError, match="at least one layer and one neuron"):
        SteeringVector(torch.ones(*shape))


def test_export_refuses_to_write_an_empty_file(tmp_path, capsys):
    only_row_0 = torch.zeros(L, H)
    only_row_0[0] = 1
    SteeringVector(only_row_0).save(tmp_path / "row0.safetensors")
    SteeringVector(torch.zeros(L, H)).save(tmp_path / "zero.safetensors")
    for name, fmt in (("row0", "gguf"), ("zero", "gguf"), ("zero", "lm-eval-steered")):
        code, _, err = run_cli(
            ["export", tmp_path / f"{name}.safetensors", "--format", fmt, "--out", tmp_path / "o"], capsys
        )
        assert_one_line_error(code, err, "nothing to export")
    assert not (tmp_path / "o").exists()


def test_list_names_the_files_it_skips_and_lists_the_rest(tmp_path, capsys):
    SteeringVector(torch.ones(L, H), {"emotion": "anger", "method": "mean"}).save(tmp_path / "good.safetensors")
    _raw_vector(tmp_path / "rms.safetensors", torch.ones(L, H), residual_rms=["a", "b", "c"])
    good = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    save_tiny_stats(tmp_path / "stats.safetensors")  # another of our formats: not a vector, not corrupt
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    code, out, err = run_cli(["list", tmp_path], capsys)
    assert code == 0
    assert "good.safetensors" in out and "anger" in out
    skipped = err.strip().splitlines()
    assert len(skipped) == 2, err
    assert "rms.safetensors" in skipped[0] and "residual_rms" in skipped[0]
    assert "truncated.safetensors" in skipped[1]
    assert "stats.safetensors" not in err and "model.safetensors" not in err


def test_a_control_with_a_malformed_source_is_refused_before_use(tmp_path, capsys):
    bad = _raw_vector(tmp_path / "c.safetensors", torch.ones(L, H), method="random", control_of="evil", seed=0)
    code, _, err = run_cli(["build", "--method", "random", "--like", bad, "--out", tmp_path / "cc.safetensors"], capsys)
    assert_one_line_error(code, err, "c.safetensors", "control_of")
    assert not (tmp_path / "cc.safetensors").exists()


def test_table_skips_results_whose_vector_metadata_is_malformed(tmp_path, capsys):
    def results(name: str, metadata: dict) -> None:
        steering = {"vectors": [{"path": "c", "metadata": metadata}], "alphas": [1.0]}
        doc = {"results": {"t": {"acc,none": 0.5}}, "config": {"model": "hf", "model_args": "pretrained=x",
                                                              "steering": steering}}  # fmt: skip
        (tmp_path / "res" / name).mkdir(parents=True)
        (tmp_path / "res" / name / "results.json").write_text(json.dumps(doc))

    results("good", {"emotion": "anger", "method": "mean"})
    results("bad", {"method": "random", "control_of": "evil", "seed": 0})
    code, out, err = run_cli(["table", tmp_path / "res", "--out", tmp_path / "lb"], capsys)
    assert code == 0, err
    assert "anger (mean)" in out
    assert "skipped" in err and "bad" in err and "control_of" in err
