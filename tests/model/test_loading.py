"""Finding the decoder blocks of five architectures; loading; fingerprints."""

from __future__ import annotations

import re

import pytest
import torch

from steer_plugin.errors import SteerError
from steer_plugin.model.fingerprint import config_hash, model_fingerprint
from steer_plugin.model.loading import (
    ModelOptions,
    find_block_path,
    model_slug,
    resolve_module,
    torch_dtype,
)
from tests.helpers.tiny import ARCHS, decoder_blocks, make_model, make_tokenizer

EXPECTED = {
    "llama": "model.layers",
    "qwen2": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
}


@pytest.fixture(scope="module")
def models():
    tok = make_tokenizer()
    return {arch: make_model(arch, n_layers=2, tokenizer=tok)[0] for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_find_block_path(models, arch):
    model = models[arch]
    assert find_block_path(model) == EXPECTED[arch]
    blocks = resolve_module(model, find_block_path(model))
    assert len(blocks) == 2 and all(a is b for a, b in zip(blocks, decoder_blocks(model)))
    assert resolve_module(model, EXPECTED[arch] + ".1") is blocks[1]


def test_unsupported_module_names_the_override():
    seq = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    with pytest.raises(SteerError) as info:
        find_block_path(seq)
    msg = str(info.value)
    assert "cannot find the decoder blocks of Sequential" in msg and "--blocks" in msg and "\n" not in msg


class _Custom(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Module()
        self.trunk.stack = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
        self.trunk.empty = torch.nn.ModuleList()
        self.norm = torch.nn.LayerNorm(2)


def test_override():
    model = _Custom()
    assert find_block_path(model, "trunk.stack") == "trunk.stack"
    assert len(resolve_module(model, find_block_path(model, "trunk.stack"))) == 3
    for bad in ("trunk.nope", "norm", "trunk.empty", "trunk.stack.0", "trunk..stack", "trunk.stack.9"):
        with pytest.raises(SteerError, match=f"--blocks '{bad}' is not a non-empty ModuleList in _Custom"):
            find_block_path(model, bad)
    with pytest.raises(SteerError, match="--blocks PATH"):
        find_block_path(model)  # no known path: the error says how to name one


def test_override_on_a_real_model(models):
    assert find_block_path(models["opt"], "model.decoder.layers") == "model.decoder.layers"
    with pytest.raises(SteerError, match="not a non-empty ModuleList"):
        find_block_path(models["opt"], "model.layers")


def test_torch_dtype():
    assert torch_dtype("auto") == "auto"
    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype("float32") is torch.float32
    with pytest.raises(SteerError, match="unknown dtype 'fp8'; use one of auto, float32, float16, bfloat16"):
        torch_dtype("fp8")


def test_load_model_and_fingerprint(tiny_llama_dir):
    loaded = ModelOptions(tiny_llama_dir).load()
    assert not loaded.model.training
    assert loaded.model.dtype == torch.float32
    assert loaded.tokenizer("hello")["input_ids"]
    fp = loaded.fingerprint
    assert fp["model"] == tiny_llama_dir and fp["architecture"] == "LlamaForCausalLM"
    assert len(fp["config_hash"]) == 16
    # the hash ignores dtype and paths: a bfloat16 load of the same folder has the same hash
    half = ModelOptions(tiny_llama_dir, dtype="bfloat16").load()
    assert half.model.dtype == torch.bfloat16
    assert config_hash(half.model.config) == fp["config_hash"]
    assert model_fingerprint(half.model)["config_hash"] == fp["config_hash"]


def test_config_hash_changes_with_architecture(models):
    hashes = {config_hash(m.config) for m in models.values()}
    assert len(hashes) == len(ARCHS)
    cfg = models["llama"].config
    other = type(cfg)(**{**cfg.to_dict(), "num_hidden_layers": 5})
    assert config_hash(other) != config_hash(cfg)


def test_load_model_errors(tmp_path):
    with pytest.raises(SteerError, match="cannot load model") as info:
        ModelOptions(str(tmp_path / "nowhere")).load()
    assert "\n" not in str(info.value)
    with pytest.raises(SteerError, match="unknown dtype"):
        ModelOptions(str(tmp_path), dtype="int3").load()


def test_model_slug():
    assert model_slug("meta-llama/Llama-3.2-3B-Instruct") == "llama-3.2-3b-instruct"
    assert model_slug("/tmp/some dir/My Model/") == "my-model"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"trust_remote_code": "no"}, "ModelOptions.trust_remote_code: 'no' is not true or false"),
        ({"trust_remote_code": 1}, "ModelOptions.trust_remote_code: 1 is not true or false"),
        ({"name": 3}, "ModelOptions.name: 3 is not a string"),
        ({"revision": 2}, "ModelOptions.revision: 2 is not a string or None"),
        ({"device": 0}, "ModelOptions.device: 0 is not a string or None"),
    ],
)
def test_model_options_of_wrong_types_are_refused_where_they_are_built(fields, message):
    """`steer_plugin.run(ModelOptions(..., trust_remote_code="no"))` ran remote code: any truthy value passed."""
    with pytest.raises(SteerError) as caught:
        ModelOptions(**{"name": "/nonexistent/model", **fields})
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("nosuchdevice", "--device 'nosuchdevice' is not a device: use cpu, cuda, cuda:1, mps"),
        ("cuda:99", "--device cuda:99: this machine has"),
    ],
)
def test_a_device_that_is_not_here_is_refused_before_loading(device, message):
    if device.startswith("cuda") and torch.cuda.device_count() >= 100:
        pytest.skip("a machine with 100 GPUs")
    with pytest.raises(SteerError, match=re.escape(message)):
        ModelOptions("/nonexistent/model", device=device)


def test_the_cpu_device_is_taken():
    assert ModelOptions("/nonexistent/model", device="cpu").device == "cpu"


# --- weights that do not cover the model ---------------------------------------------------------------------


def _with_config(source: str, folder, **edits) -> str:
    """A copy of the model folder ``source`` whose config.json has ``edits``."""
    import json
    import shutil

    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edits}))
    return str(folder)


def _as_bin(folder: str) -> str:
    """The folder with its weights in a pytorch_model.bin instead (no safetensors headers to read before loading)."""
    from pathlib import Path

    from safetensors.torch import load_file

    path = Path(folder)
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    return folder


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
    from tests.helpers.tiny import save_model

    return save_model(tmp_path_factory.mktemp("tiny_gpt2"), "gpt2")


LAYER_CASES = [
    ("llama", {"num_hidden_layers": 5}, "config.json says 5 layers, the weights hold 3 (missing: model.layers.3..4)"),
    (
        "llama",
        {"num_hidden_layers": 2},
        "config.json says 2 layers, the weights hold 3 (not in the model: model.layers.2)",
    ),
    ("gpt2", {"n_layer": 4}, "config.json says 4 layers, the weights hold 3 (missing: transformer.h.3)"),
]


@pytest.mark.parametrize(("arch", "edits", "message"), LAYER_CASES)
def test_a_config_claiming_other_layers_than_the_weights_hold_is_refused_before_loading(
    arch, edits, message, tiny_llama_dir, tiny_gpt2_dir, tmp_path, monkeypatch
):
    """transformers initialised the blocks the weights lack at random (and dropped the ones the config lacks):
    a warning, then everything ran on noise. The safetensors headers tell before any weights load."""
    import transformers

    folder = _with_config({"llama": tiny_llama_dir, "gpt2": tiny_gpt2_dir}[arch], tmp_path / "m", **edits)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", None)  # never reached
    for check in (ModelOptions(folder).dimensions, ModelOptions(folder).load):
        with pytest.raises(SteerError) as info:
            check()
        assert str(info.value).startswith(f"{folder}: {message}") and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        ({"num_hidden_layers": 5}, "config.json says 5 layers, the weights hold 3 (missing: model.layers.3..4)"),
        ({"num_hidden_layers": 2}, "config.json says 2 layers, the weights hold 3 (not in the model: model.layers.2)"),
        ({"hidden_size": 64}, "config.json does not match the weights' shapes: lm_head.weight is [300, 32] in the "
         "weights but [300, 64] in the model (hidden_size 64)"),
    ],
)  # fmt: skip
def test_weights_that_do_not_cover_the_loaded_model_are_refused(edits, message, tiny_llama_dir, tmp_path):
    """Weights without headers to read first (a pytorch_model.bin), or a hidden size the headers do not
    tell: transformers' loading report, after loading (the hidden size was a RuntimeError traceback)."""
    folder = _as_bin(_with_config(tiny_llama_dir, tmp_path / "m", **edits))
    with pytest.raises(SteerError) as info:
        ModelOptions(folder).load()
    assert str(info.value).startswith(f"{folder}: {message}") and "\n" not in str(info.value)


def test_weights_that_cover_the_model_load(tiny_llama_dir, tiny_gpt2_dir, tmp_path):
    """Tied weights (GPT-2's lm_head is the embedding: not in the file) and computed buffers (Llama's rotary
    frequencies) are not missing; a .bin checkpoint loads too."""
    assert ModelOptions(tiny_gpt2_dir).load().model.config.tie_word_embeddings
    assert (
        ModelOptions(_as_bin(_with_config(tiny_llama_dir, tmp_path / "m"))).load().model.config.num_hidden_layers == 3
    )


def test_steer_generate_refuses_a_config_claiming_more_layers(tiny_llama_dir, vector_file, tmp_path, capsys):
    from tests.helpers.cli import assert_one_line_error, run_cli

    folder = _with_config(tiny_llama_dir, tmp_path / "m", num_hidden_layers=5)
    code, _, err = run_cli(["generate", "--model", folder, "--vector", vector_file, "hi"], capsys)
    assert_one_line_error(
        code, err, folder, "config.json says 5 layers, the weights hold 3 (missing: model.layers.3..4)"
    )
