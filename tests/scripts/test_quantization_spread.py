"""scripts/quantization_spread.py: the copies it draws quantize back to the same file (checked with an
independent transcription of ggml's reference quantizers), and its report on a tiny quantized model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.tiny import load_script

FIXTURE = Path(__file__).parents[1] / "fixtures" / "goemotions"


# ggml-quants.c, quantize_row_q4_1_ref / quantize_row_q8_0_ref and their dequantize_row_*, in numpy


def q4_1(x: np.ndarray) -> np.ndarray:
    b = x.astype(np.float32).reshape(-1, 32)
    lo, hi = b.min(1, keepdims=True), b.max(1, keepdims=True)
    d = (hi - lo) / 15
    inv = np.where(d != 0, 1 / np.where(d != 0, d, 1), 0)
    q = np.minimum(15, ((b - lo) * inv + 0.5).astype(np.int8))
    d16, m16 = d.astype(np.float16).astype(np.float32), lo.astype(np.float16).astype(np.float32)
    return (q * d16 + m16).reshape(x.shape)


def q8_0(x: np.ndarray) -> np.ndarray:
    b = x.astype(np.float32).reshape(-1, 32)
    d = np.abs(b).max(1, keepdims=True) / 127
    inv = np.where(d != 0, 1 / np.where(d != 0, d, 1), 0)
    q = np.round(b * inv)
    return (q * d.astype(np.float16).astype(np.float32)).reshape(x.shape)


@pytest.mark.parametrize(("kind", "quantize"), [("q4_1", q4_1), ("q8_0", q8_0)])
def test_copies_quantize_back_to_the_same_weights(kind, quantize):
    qs = load_script("quantization_spread")
    rng = np.random.default_rng(0)
    # weights that are exactly representable: no fp16 rounding of the block's scale between the two passes
    dequantized = torch.from_numpy(quantize(quantize(rng.normal(0, 0.05, (16, 96)).astype(np.float32))))
    grid = qs.quantization_grid(dequantized)
    assert grid is not None and grid.kind == kind
    copy = qs.draw_copy(dequantized, grid, torch.Generator().manual_seed(1))
    moved = (copy - dequantized).abs()
    assert float(moved.max()) > 0 and float((moved > 0).float().mean()) > 0.8
    step = (grid.high - grid.low).max()
    assert float(moved.max()) <= float(step) / 2 * (1 + 1e-6)
    assert np.array_equal(quantize(copy.numpy()), dequantized.numpy())


def test_weights_not_on_a_grid_are_left_alone():
    qs = load_script("quantization_spread")
    assert qs.quantization_grid(torch.randn(8, 64)) is None
    assert qs.quantization_grid(torch.ones(64)) is None  # a norm weight (1-D)
    assert qs.quantization_grid(torch.randn(8, 30)) is None  # rows not in blocks of 32


def _quantized_tiny_model(path: Path) -> str:
    from tests.helpers.tiny import make_model

    model, tok = make_model("llama", n_layers=3, hidden=32, seed=3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                quantize = q8_0 if "embed" in name else q4_1
                p.copy_(torch.from_numpy(quantize(p.numpy())))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_report_on_a_quantized_tiny_model(tmp_path, monkeypatch, capsys):
    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.model.loading import ModelOptions
    from steer_plugin.steering.calibrate import calibrate_vector_file
    from steer_plugin.vectors.build import build_vector
    from steer_plugin.vectors.request import RecordRequest, record_request

    qs = load_script("quantization_spread")
    texts = str(tmp_path / "neutral.txt")
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "looked", "at", "the", "day"]
    Path(texts).write_text("\n".join(" ".join(words[i % 5 : i % 5 + 4 + i % 4]) for i in range(16)), encoding="utf-8")
    model_dir = _quantized_tiny_model(tmp_path / "model")
    loaded = ModelOptions(model_dir).load()
    assert {g.kind for g in qs.quantized_parameters(loaded.model).values()} == {"q4_1", "q8_0"}
    stats = record_request(
        RecordRequest(ModelOptions(model_dir), "anger", data_dir=str(FIXTURE), progress=False), loaded
    )
    vectors = tmp_path / "vectors"
    vector_path = vectors / "anger-top_k-4.safetensors"
    build_vector(stats, "anger", "neutral", method="top_k", top_k=4).save(vector_path)
    cal, _ = calibrate_vector_file(
        loaded.model, loaded.tokenizer, vector_path, [0.1], layers="1", positions="response",
        source=TextSource(texts), model_name=model_dir,
    )  # fmt: skip
    out = tmp_path / "spread.md"
    argv = ["quantization_spread.py", "--model", model_dir, "--vectors", str(vectors), "--data", str(FIXTURE)]
    argv += ["--fluency-texts", texts]
    argv += ["--emotions", "anger", "--copies", "1", "--top-k", "4", "--layers", "1", "--kl-texts", "4"]
    monkeypatch.setattr(sys, "argv", [*argv, "--max-per-class", "5", "--out", str(out)])
    qs.main()
    report = out.read_text()
    assert "(22 Q4_1, 1 Q8_0;" in report  # 7 matrices x 3 blocks + lm_head; the embedding is Q8_0
    assert "| anger | texts: seed 0 vs seed 1 (" in report and "| anger | copy 1 vs dequantized |" in report
    kl_line = next(line for line in report.splitlines() if line.startswith("| anger | 0.1 |"))
    row = cal.rows[0]
    assert f"| {row.alpha:.4g} | {row.kl_heldout:.4f} | 1 | " in kl_line
    copy_kl = float(report.split("copy 1 ")[1].split(",")[0].split()[0])
    assert copy_kl > 0  # the copy is another model, though a close one


def test_a_model_that_was_not_quantized_is_refused(tiny_llama_dir, monkeypatch, tmp_path):
    qs = load_script("quantization_spread")
    argv = ["quantization_spread.py", "--model", tiny_llama_dir, "--vectors", str(tmp_path), "--data", str(FIXTURE)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="no weight lies on a Q4_1 / Q8_0 grid"):
        qs.main()
