"""Other formats: reference .npy import, lm-eval ``steered`` export (checked with lm-eval's own
SteeredModel on tiny models), llama.cpp GGUF control vectors (read back with gguf.GGUFReader)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steer_plugin.cli import main
from steer_plugin.errors import SteerError
from steer_plugin.vectors.interop import export_gguf_control_vector, export_lm_eval_steered
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.helpers.tiny import decoder_blocks, save_model

L, H = 3, 32


def _matrix(rows: int = L, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.5, size=(rows, H)).astype(np.float32)


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_cli_error(code, err, *needles):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]


# --- reference .npy --------------------------------------------------------------------------------


def test_import_reference_npy(tmp_path, capsys):
    arr = _matrix()
    np.save(tmp_path / "ref.npy", arr)
    out = tmp_path / "v.safetensors"
    code, stdout, _ = _run(
        ["import", str(tmp_path / "ref.npy"), "--out", str(out), "--emotion", "anger", "--model", "tiny"], capsys
    )
    assert code == 0 and "3 layers x 32" in stdout
    vec = SteeringVector.load(out)
    np.testing.assert_array_equal(vec.matrix.numpy(), arr)
    assert vec.metadata["emotion"] == "anger" and vec.metadata["model"] == "tiny"
    assert vec.metadata["method"] == "imported" and vec.metadata["source_file"] == "ref.npy"
    # SteeringVector.load reads .npy directly too
    np.testing.assert_array_equal(SteeringVector.load(tmp_path / "ref.npy").matrix.numpy(), arr)


def test_import_drop_embedding_row(tmp_path, capsys):
    arr = _matrix(L + 1).astype(np.float64)  # hidden_states-style: row 0 = embeddings
    np.save(tmp_path / "hs.npy", arr)
    out = tmp_path / "v.safetensors"
    code, _, _ = _run(["import", str(tmp_path / "hs.npy"), "--out", str(out), "--drop-embedding-row"], capsys)
    assert code == 0
    vec = SteeringVector.load(out)
    assert vec.n_layers == L
    np.testing.assert_allclose(vec.matrix.numpy(), arr[1:], rtol=1e-6)
    np.save(tmp_path / "one.npy", _matrix(1))
    with pytest.raises(SteerError, match="no rows left"):
        SteeringVector.from_npy(tmp_path / "one.npy", drop_embedding_row=True)


def test_import_refuses_pickles_and_bad_arrays(tmp_path, capsys):
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = {"a": 1}, [1, 2]
    np.save(tmp_path / "pickled.npy", obj, allow_pickle=True)
    np.save(tmp_path / "ints.npy", np.ones((L, H), dtype=np.int64))
    np.save(tmp_path / "cube.npy", np.ones((2, L, H), dtype=np.float32))
    (tmp_path / "junk.npy").write_bytes(b"definitely not numpy")
    cases = {
        "pickled.npy": "not a readable .npy matrix",
        "ints.npy": "expected a float [n_layers, hidden]",
        "cube.npy": "expected a float [n_layers, hidden]",
        "junk.npy": "not a readable .npy matrix",
        "missing.npy": "not a readable .npy matrix",
    }
    for name, needle in cases.items():
        out = tmp_path / f"{name}.safetensors"
        code, _, err = _run(["import", str(tmp_path / name), "--out", str(out)], capsys)
        _assert_cli_error(code, err, "steer import: error:", needle)
        assert not out.exists()


# --- lm-eval `steered` -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch, block_path, prefix",
    [
        ("llama", "model.layers", "layers"),
        ("gpt2", "transformer.h", "h"),
        ("gpt_neox", "gpt_neox.layers", "layers"),
        ("opt", "model.decoder.layers", "decoder.layers"),
    ],
)
def test_lm_eval_steered_export_matches_hook_add(arch, block_path, prefix, tmp_path):
    """lm-eval resolves hookpoints in ``model.base_model``; its SteeredModel must steer exactly like a
    plain forward hook adding alpha * row to each block's output."""
    from lm_eval.models.hf_steered import SteeredModel

    model_dir = save_model(tmp_path / "m", arch)
    m = _matrix()
    m[1] = 0  # zero rows are not exported
    vec = SteeringVector(torch.from_numpy(m))
    pt = tmp_path / "steer.pt"
    export_lm_eval_steered(vec, pt, block_path=block_path, alpha=1.5)
    config = torch.load(pt, weights_only=True)
    assert list(config) == [f"{prefix}.0", f"{prefix}.2"]
    for layer in (0, 2):
        entry = config[f"{prefix}.{layer}"]
        assert torch.equal(entry["steering_vector"], torch.from_numpy(m[layer]))
        assert entry["steering_coefficient"] == 1.5 and entry["action"] == "add"
        assert entry["bias"] is None and entry["head_index"] is None

    lm = SteeredModel(pretrained=model_dir, steer_path=str(pt), device="cpu", batch_size=1)
    ids = torch.tensor([[5, 17, 42, 9, 100, 7]])
    steered = lm._model_call(ids)

    model = lm.model  # the same weights, unsteered outside SteeredModel's context manager
    with torch.no_grad():
        plain = model(ids).logits
    handles = []
    for layer, block in enumerate(decoder_blocks(model)):
        delta = 1.5 * torch.from_numpy(m[layer])

        def hook(module, args, output, delta=delta):
            if isinstance(output, tuple):
                return (output[0] + delta, *output[1:])
            return output + delta

        handles.append(block.register_forward_hook(hook))
    try:
        with torch.no_grad():
            ref = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    assert float((steered - plain).abs().max()) > 1e-3  # steering changed something
    torch.testing.assert_close(steered, ref, atol=1e-5, rtol=1e-5)


def test_export_cli_lm_eval_uses_vector_block_path(tmp_path, capsys):
    vec = SteeringVector(torch.from_numpy(_matrix()), {"block_path": "transformer.h"})
    vec.save(tmp_path / "v.safetensors")
    out = tmp_path / "steer.pt"
    code, stdout, _ = _run(
        ["export", str(tmp_path / "v.safetensors"), "--format", "lm-eval-steered", "--out", str(out), "--alpha", "-2"],
        capsys,
    )
    assert code == 0 and "transformer.h" in stdout
    config = torch.load(out, weights_only=True)
    assert sorted(config) == ["h.0", "h.1", "h.2"] and config["h.1"]["steering_coefficient"] == -2.0
    code, _, _ = _run(
        [
            "export",
            str(tmp_path / "v.safetensors"),
            "--format",
            "lm-eval-steered",
            "--out",
            str(out),
            "--block-path",
            "model.layers",
        ],
        capsys,
    )
    assert code == 0 and sorted(torch.load(out, weights_only=True)) == ["layers.0", "layers.1", "layers.2"]


# --- GGUF control vectors --------------------------------------------------------------------------


def _read_gguf(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    fields = {k: f.contents() for k, f in reader.fields.items()}
    return tensors, fields


def test_gguf_control_vector(tmp_path):
    m = _matrix(5)
    m[3] = 0
    layers = export_gguf_control_vector(
        SteeringVector(torch.from_numpy(m)), tmp_path / "cv.gguf", model_hint="qwen2", alpha=0.5
    )
    assert layers == [1, 2, 4]  # row 0 is never exported (llama.cpp does not steer block 0); row 3 is zero
    tensors, fields = _read_gguf(tmp_path / "cv.gguf")
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.4"]
    for n in layers:
        assert tensors[f"direction.{n}"].dtype == np.float32
        np.testing.assert_allclose(tensors[f"direction.{n}"], 0.5 * m[n], rtol=1e-6)
    assert fields["general.architecture"] == "controlvector"
    assert fields["controlvector.model_hint"] == "qwen2" and fields["controlvector.layer_count"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["cv.gguf"]


def test_gguf_cli_notes_row_zero(tmp_path, capsys):
    SteeringVector(torch.from_numpy(_matrix())).save(tmp_path / "v.safetensors")
    code, stdout, err = _run(
        [
            "export",
            str(tmp_path / "v.safetensors"),
            "--format",
            "gguf",
            "--out",
            str(tmp_path / "cv.gguf"),
            "--alpha",
            "3",
        ],
        capsys,
    )
    assert code == 0 and "row 0 was not exported" in err and "[1, 2]" in stdout
    tensors, _ = _read_gguf(tmp_path / "cv.gguf")
    np.testing.assert_allclose(tensors["direction.2"], 3 * _matrix()[2], rtol=1e-6)


@pytest.mark.parametrize("fmt", ["lm-eval-steered", "gguf"])
@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf", "1e39"])
def test_export_refuses_non_finite_alpha(tmp_path, capsys, fmt, alpha):
    vec = tmp_path / "v.safetensors"
    SteeringVector(torch.ones(3, 32)).save(vec)
    out = tmp_path / f"out.{fmt}"
    code, _, err = run_cli(["export", vec, "--format", fmt, "--out", out, f"--alpha={alpha}"], capsys)
    assert_one_line_error(code, err, "steer export: error:")
    assert ("--alpha must be a finite number" in err) or ("not finite in float32" in err), err
    assert not out.exists()
