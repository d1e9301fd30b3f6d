"""A GGUF file as the model (`--model dir/m.gguf`, `--model DIR --gguf-file m.gguf`, `steered_hf`'s
`pretrained=dir/m.gguf` or HFLM's `gguf_file=`): loaded dequantized by transformers' GGUF loader with the GGUF's
own tokenizer. The reference is the tiny Llama the GGUF was written from (tests/helpers/tiny.write_gguf, with the
`gguf` package alone), run from its Hugging Face folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from steer_plugin.errors import SteerError
from steer_plugin.model.fingerprint import weights_files, weights_fingerprint
from steer_plugin.model.loading import ModelOptions, model_slug
from steer_plugin.vectors.recipe import Recipe
from steer_plugin.vectors.vector import SteeringVector, default_vector_path
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.tiny import CORPUS, make_model, write_gguf

pytest.importorskip("gguf")
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "goemotions"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, str]:
    """(the GGUF file, alone in its folder; the Hugging Face folder of the same model)."""
    model, tok = make_model("llama", seed=5)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)  # peaked next-token distributions: differences show
    hf = tmp_path_factory.mktemp("tiny_hf")
    model.save_pretrained(hf)
    tok.save_pretrained(hf)
    return write_gguf(model, tok, tmp_path_factory.mktemp("tiny_gguf") / "tiny-llama-f32.gguf"), str(hf)


def test_a_gguf_file_loads_as_the_model_it_was_written_from(tiny_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, hf = tiny_gguf
    ref, ref_tok = AutoModelForCausalLM.from_pretrained(hf).eval(), AutoTokenizer.from_pretrained(hf)
    options = ModelOptions(str(gguf))
    loaded = options.load()
    for text in CORPUS:
        ids = ref_tok(text, return_tensors="pt").input_ids
        assert loaded.tokenizer(text).input_ids == ids[0].tolist()  # the GGUF's own tokenizer
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-4)
    # named after the file, not its folder: vector metadata, calibrations and warnings are about the file
    assert loaded.model.name_or_path == str(gguf) and loaded.fingerprint["model"] == str(gguf)
    assert options.dimensions() == (3, 32) and not options.has_chat_template()
    args = options.harness_args()
    assert (args["pretrained"], args["gguf_file"]) == (str(gguf.parent), gguf.name)  # HFLM's own arguments
    assert model_slug(str(gguf)) == "tiny-llama-f32"
    want = Path("vectors/tiny-llama-f32/anger-mean.safetensors")
    assert default_vector_path(str(gguf), "anger", Recipe("mean")) == want


def test_the_weights_fingerprint_covers_the_gguf_file(tiny_gguf, tmp_path):
    gguf, _ = tiny_gguf
    assert weights_files(str(gguf)) == [gguf]
    copy = tmp_path / gguf.name
    shutil.copy(gguf, copy)
    assert weights_fingerprint(str(copy)) == weights_fingerprint(str(gguf)) is not None
    data = bytearray(copy.read_bytes())
    data[-100] ^= 1  # one bit of the last tensor
    copy.write_bytes(bytes(data))
    assert weights_fingerprint(str(copy)) != weights_fingerprint(str(gguf))
    assert ModelOptions(str(copy)).weights_fingerprint() == weights_fingerprint(str(copy))


def test_steer_build_takes_a_gguf_file_both_ways(tiny_gguf, tmp_path, capsys):
    gguf, hf = tiny_gguf
    build = ["build", "--data", FIXTURE, "--emotion", "anger", "--method", "mean", "--no-progress"]
    cases = {"file": ["--model", gguf], "folder": ["--model", gguf.parent, "--gguf-file", gguf.name]}
    for how, model in cases.items():
        code, _, err = run_cli([*build, *model, "--out", tmp_path / f"{how}.safetensors"], capsys)
        assert code == 0, err
    assert run_cli([*build, "--model", hf, "--out", tmp_path / "hf.safetensors"], capsys)[0] == 0
    ref = SteeringVector.load(tmp_path / "hf.safetensors")
    for how in cases:
        vec = SteeringVector.load(tmp_path / f"{how}.safetensors")
        assert vec.metadata["model"] == str(gguf), how
        assert vec.metadata["config_hash"] == SteeringVector.load(tmp_path / "file.safetensors").metadata["config_hash"]
        torch.testing.assert_close(vec.matrix, ref.matrix, rtol=1e-4, atol=1e-5)


def test_steered_hf_takes_a_gguf_file_both_ways(tiny_gguf, one_torch_thread):
    from lm_eval.api.instance import Instance

    from steer_plugin.harness.model import SteeredHFLM
    from steer_plugin.study.plan import SweepOptions
    from steer_plugin.study.sweep_folder import sweep_settings

    gguf, hf = tiny_gguf
    torch.manual_seed(1)
    vec = SteeringVector(torch.randn(3, 32), {"model": str(gguf), "emotion": "anger", "method": "mean"})
    pairs = [("He was furious and", " slammed the door."), ("The weather", " is fine today.")]
    reqs = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    common = {"vector": [vec], "alpha": 2.0, "dtype": "float32", "device": "cpu", "batch_size": 2}
    expected = SteeredHFLM(pretrained=hf, **common).loglikelihood(reqs)
    for kwargs in ({"pretrained": str(gguf)}, {"pretrained": str(gguf.parent), "gguf_file": gguf.name}):
        lm = SteeredHFLM(**kwargs, **common)
        assert lm.model.name_or_path == str(gguf)
        got = lm.loglikelihood(reqs)
        assert [g[1] for g in got] == [e[1] for e in expected]
        assert [g[0] for g in got] == pytest.approx([e[0] for e in expected], abs=1e-4)
    # a sweep over a GGUF records the file and its fingerprint in its settings (the folder alone is no model)
    options = SweepOptions(tasks=["t"], out_dir=Path("x"), model_args=ModelOptions(str(gguf)).harness_args())
    settings = sweep_settings(options)
    assert (settings["model"], settings["gguf_file"]) == (str(gguf.parent), gguf.name)
    assert settings["weights"] == weights_fingerprint(str(gguf)) is not None


def test_a_missing_or_broken_gguf_is_a_one_line_error(tiny_gguf, tmp_path, vector_file, capsys):
    from steer_plugin.harness.model import SteeredHFLM

    gguf, _ = tiny_gguf
    (tmp_path / "text.gguf").write_text("not a model\n")
    (tmp_path / "cut.gguf").write_bytes(gguf.read_bytes()[:200])
    check = ["check", "--vector", vector_file]
    cases = [
        (["--model", tmp_path / "missing.gguf"], "cannot read the GGUF file"),
        (["--model", tmp_path / "text.gguf"], "is not a GGUF file"),
        (["--model", tmp_path / "cut.gguf"], "cannot load model"),
        (["--model", tmp_path, "--gguf-file", "model.bin"], "is not a file name ending in .gguf"),
        (["--model", gguf, "--gguf-file", gguf.name], "is a GGUF file already"),
        (["--model", tmp_path, "--gguf-file", "missing.gguf"], "cannot read the GGUF file"),
    ]
    for argv, needle in cases:
        code, _, err = run_cli([*check, *argv], capsys)
        assert_one_line_error(code, err, needle)
    for bad in ("missing.gguf", "text.gguf"):
        with pytest.raises(SteerError, match="GGUF file"):
            SteeredHFLM(pretrained=str(tmp_path / bad), device="cpu")
