"""steered_hf model arguments: several vectors, layer specs from --model_args, validation, results JSON."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from lm_eval.api.instance import Instance

from steer_plugin.errors import SteerError
from steer_plugin.vectors.vector import SteeringVector

PAIRS = [
    ("The weather", " is fine today."),
    ("He was furious and", " slammed the door."),
    ("Tell me about yourself.", " I like books"),
]


def _ll(lm):
    return lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(PAIRS)], disable_tqdm=True)


@pytest.fixture(scope="module")
def vectors(tmp_path_factory, tiny_llama_dir):
    d = tmp_path_factory.mktemp("vecs")
    torch.manual_seed(1)
    a, b = torch.randn(3, 32), torch.randn(3, 32)
    SteeringVector(a, {"model": tiny_llama_dir, "emotion": "anger"}).save(d / "a.safetensors")
    SteeringVector(b, {"model": tiny_llama_dir, "emotion": "joy"}).save(d / "b.safetensors")
    SteeringVector(a - 0.5 * b, {"model": tiny_llama_dir}).save(d / "combined.safetensors")
    masked = a.clone()
    masked[1] = 0
    SteeringVector(masked, {"model": tiny_llama_dir}).save(d / "a_without_1.safetensors")
    SteeringVector(torch.randn(3, 16), {"model": "other/model"}).save(d / "small.safetensors")
    SteeringVector(torch.randn(3, 32), {"model": "someone/else-7b"}).save(d / "other.safetensors")
    return d


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    from steer_plugin.harness.model import SteeredHFLM

    return SteeredHFLM(pretrained=tiny_llama_dir, dtype="float32", device="cpu", batch_size=2)


def test_several_vectors_with_alphas_equal_their_weighted_sum(lm, vectors):
    lm.configure(f"{vectors / 'a.safetensors'};{vectors / 'b.safetensors'}", "1.0;-0.5")
    together = _ll(lm)
    lm.configure(str(vectors / "combined.safetensors"), 1.0)
    assert max(abs(x[0] - y[0]) for x, y in zip(together, _ll(lm))) < 1e-5
    assert lm.steering_config["alphas"] == [1.0]


def test_layer_subset_equals_zeroed_rows(lm, vectors):
    lm.configure(str(vectors / "a.safetensors"), 0.7, layers="0,2")
    subset = _ll(lm)
    assert lm.steering_config["layers"] == "0,2" and lm.steering_config["steered_layers"] == [0, 2]
    lm.configure(str(vectors / "a_without_1.safetensors"), 0.7)
    assert [x[0] for x in subset] == [x[0] for x in _ll(lm)]


def test_model_args_string_with_commas_in_layers(tiny_llama_dir, vectors):
    """`layers=0,2` inside --model_args is split by the harness; the stray pieces are put back."""
    from lm_eval.api.registry import get_model
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(
        f"pretrained={tiny_llama_dir},vector={vectors / 'a.safetensors'},alpha=0.7,layers=0,2,dtype=float32,device=cpu"
    )
    lm = get_model("steered_hf")(**args)
    assert lm.steering_config["layers"] == "0,2"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vector": "small.safetensors"}, "model has \\[3 layers x 32\\]"),
        ({"vector": "a.safetensors", "layers": "0-7"}, "out of range"),
        ({"vector": "a.safetensors", "layers": "two"}, "bad layer spec"),
        ({"vector": "a.safetensors", "positions": "prompt"}, "unknown positions"),
        ({"vector": "a.safetensors;b.safetensors", "alpha": "1;2;3"}, "2 vectors but 3 alphas"),
        ({"vector": "missing.safetensors"}, "not found"),
    ],
)
def test_invalid_configurations_are_clear_errors(lm, vectors, kwargs, message):
    kwargs = dict(kwargs)
    kwargs["vector"] = ";".join(str(vectors / v) for v in kwargs["vector"].split(";"))
    with pytest.raises(SteerError, match=message):
        lm.configure(**kwargs)


def test_unknown_backend_fails_before_loading_the_model(tiny_llama_dir, vectors):
    from steer_plugin.harness.model import SteeredHFLM

    with pytest.raises(SteerError, match="unknown backend"):
        SteeredHFLM(pretrained="does/not-exist", vector=str(vectors / "a.safetensors"), backend="magic")


def test_vector_from_another_model_warns_naming_both(lm, vectors, caplog):
    with caplog.at_level(logging.WARNING, logger="steer_plugin.harness.results_info"):
        lm.configure(str(vectors / "other.safetensors"), 1.0)
    assert "someone/else-7b" in caplog.text and "tiny_llama" in caplog.text


def test_reference_npy_vectors_load_directly(lm, vectors, tmp_path):
    import numpy as np

    a = SteeringVector.load(vectors / "a.safetensors").matrix.numpy()
    np.save(tmp_path / "ref.npy", a)
    lm.configure(str(tmp_path / "ref.npy"), 0.5)
    from_npy = _ll(lm)
    lm.configure(str(vectors / "a.safetensors"), 0.5)
    assert from_npy == _ll(lm)


def test_results_json_records_the_steering_config(tiny_llama_dir, vectors, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    (tmp_path / "docs.jsonl").write_text(
        "".join(json.dumps({"q": c, "choices": [x, " no."], "gold": 0}) + "\n" for c, x in PAIRS)
    )
    (tmp_path / "t.yaml").write_text(
        f"task: tiny_args_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\n"
    )
    vec = vectors / "a.safetensors"
    res = lm_eval.simple_evaluate(
        model="steered_hf",
        model_args=f"pretrained={tiny_llama_dir},vector={vec},alpha=0.4,positions=response,"
        "backend=hooks,dtype=float32,device=cpu",
        tasks=["tiny_args_mc"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        bootstrap_iters=0,
    )
    steering = res["config"]["steering"]
    from steer_plugin.vectors.vector import file_sha256

    assert steering["vectors"][0]["path"] == str(vec)
    assert steering["vectors"][0]["sha256"] == file_sha256(vec)
    assert steering["vectors"][0]["metadata"]["emotion"] == "anger"
    assert (steering["alphas"], steering["positions"], steering["backend"], steering["layers"]) == (
        [0.4],
        "response",
        "hooks",
        "all",
    )
    json.dumps(res["config"], default=str)  # serialisable
