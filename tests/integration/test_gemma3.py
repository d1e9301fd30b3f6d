"""A second real model family: Gemma-3-270M, a *base* model (no chat template) with sliding-window attention,
tied embeddings and a 262k-token vocabulary - every stage once, at the smallest size that still exercises it.

Needs STEER_SHARED (GoEmotions, TruthfulQA) and STEER_GEMMA3 (the folder written by
shared/models/gemma3-270m-q4_k_m/convert.py: `make gemma3`); `.ci/run` sets both. One model load serves the
harness-level tests; the command-line tests load their own, as a user's command does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.cli import run_cli
from tests.helpers.configs import run_each
from tests.helpers.side_effects import reference

pytestmark = pytest.mark.slow  # the real Gemma-3-270M

MIDDLE = "6-11"  # `middle`: the middle third of 18 blocks
ALPHA = 0.2  # about KL 0.1 for this vector at the middle layers (calibrated below: alpha 0.18 on 128 texts)
PROMPTS = ["The weather today is", "My neighbour told me that"]


@pytest.fixture(scope="module")
def gemma3() -> str:
    path = os.environ.get("STEER_GEMMA3")
    if not path or not (Path(path) / "model.safetensors").exists():
        pytest.skip("STEER_GEMMA3 is not set to a converted Gemma-3-270M folder (make gemma3 SHARED=../shared)")
    return path


@pytest.fixture(scope="module")
def goemotions(shared) -> Path:
    return shared / "data" / "goemotions"


@pytest.fixture(scope="module")
def vector(gemma3, goemotions, tmp_path_factory) -> Path:
    """The anger vector from 16 + 16 GoEmotions texts, built by `steer build` (the real tokenizer and blocks)."""
    out = tmp_path_factory.mktemp("gemma3") / "anger-mean.safetensors"
    from steer_plugin.cli import main

    argv = ["build", "--model", gemma3, "--data", str(goemotions), "--emotion", "anger", "--method", "mean",
            "--max-per-class", "16", "--batch-size", "16", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    vec = SteeringVector.load(out)
    assert vec.matrix.shape == (18, 640) and vec.metadata["counts"] == {"anger": 16, "neutral": 16}
    return out


@pytest.fixture(scope="module")
def lm(gemma3):
    from steer_plugin.harness.model import SteeredHFLM

    return SteeredHFLM(pretrained=gemma3, dtype="float32", device="cpu", batch_size=4)


def test_steer_check_passes(gemma3, vector, capsys):
    argv = ["check", "--model", gemma3, "--vector", vector, "--alpha", ALPHA, "--layers", MIDDLE, "--json",
            "--positions", "all"]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and [layer["layer"] for layer in report["layers"]] == list(range(6, 12))
    assert all(layer["ok"] for layer in report["layers"])


def test_calibration_reaches_its_kl_budget(lm, vector, goemotions):
    """A few texts: the alpha found has the budget's KL within the tolerance, recomputed text by text."""
    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.steering import calibrate as C

    vec = SteeringVector.load(vector)
    source = TextSource(str(goemotions))
    cal = C.calibrate(lm.model, lm.tokenizer, vec, [0.1], layers="middle", positions="response", source=source,
                      n_calibration=8, n_heldout=4)  # fmt: skip
    (row,) = cal.rows
    assert row.converged and abs(row.kl_calibration / 0.1 - 1) <= cal.tolerance, row
    cal_texts, _ = C.split_texts(source, 8, 4)
    deltas = {layer: row.alpha * vec.matrix[layer] for layer in range(6, 12)}
    want_kl, want_ppl, _ = reference(lm.model, lm.tokenizer, cal_texts, deltas, "response")
    assert row.kl_calibration == pytest.approx(want_kl, rel=1e-3)
    assert row.ppl_calibration == pytest.approx(want_ppl, rel=1e-4)


@pytest.fixture(scope="module")
def truthfulqa_requests(shared, lm):
    from tests.helpers.tiny import truthfulqa_instances

    instances = truthfulqa_instances(shared / "data" / "truthfulqa", limit=1)
    return instances


def test_prefix_reuse_equals_the_harness_on_truthfulqa(lm, vector, truthfulqa_requests):
    """Prefix reuse on the sliding-window model, unsteered against HFLM's own loop (what `--model hf` runs) and
    steered against the plain path; where it cannot run, the reason is recorded."""
    from lm_eval.models.huggingface import HFLM

    from steer_plugin.harness.prefix_reuse import TokenCounts

    assert lm.reuse_window == 512  # Gemma-3's local layers
    info = lm.get_model_info()["prefix_reuse"]
    if lm.reuse_blocker is not None:
        assert info["blocked_by"] == lm.reuse_blocker
        pytest.skip(f"prefix reuse is off on Gemma-3 here (recorded): {lm.reuse_blocker}")
    for alpha in (0.0, ALPHA):
        lm.configure(str(vector), alpha, layers=MIDDLE, positions="response")
        lm.token_counts = TokenCounts()
        reused = lm.loglikelihood(truthfulqa_requests, disable_tqdm=True)
        assert lm.token_counts.prefix > 0 and lm.token_counts.plain == 0  # every request took the reuse path
        lm.prefix_reuse, lm.batch_size_per_gpu = False, 1
        try:
            plain = (HFLM.loglikelihood if alpha == 0 else type(lm).loglikelihood)(
                lm, truthfulqa_requests, disable_tqdm=True
            )
        finally:
            lm.prefix_reuse, lm.batch_size_per_gpu, lm.token_counts = True, 4, None
        assert max(abs(a[0] - b[0]) for a, b in zip(reused, plain)) < 1e-4
        assert [a[1] for a in reused] == [b[1] for b in plain]
    lm.configure(None, 0.0)


def test_config_batched_generation_equals_one_at_a_time(lm, vector):
    from lm_eval.api.instance import Instance

    vec = str(vector)
    configs = [{"vector": vec, "alpha": a, "layers": MIDDLE, "positions": p}
               for a, p in ((0.0, "all"), (2 * ALPHA, "response"), (2 * ALPHA, "all"))]  # fmt: skip
    requests = [Instance("generate_until", {}, (p, {"until": [], "max_gen_toks": 8, "do_sample": False}), i)
                for i, p in enumerate(PROMPTS)]  # fmt: skip

    def generate():
        return lm.generate_until(requests, disable_tqdm=True)

    alone = run_each(lm, configs, generate, planned=False)
    mixed = run_each(lm, configs, generate, planned=True)
    assert mixed == alone
    assert len({json.dumps(texts) for texts in alone}) == 3  # the configurations differ: a mixed-up row would show


def test_steer_run_continues_texts_end_to_end(gemma3, vector, goemotions, shared, tmp_path, monkeypatch, capsys):
    """`steer run` on a base model: the continuation emotion task (no chat template), TruthfulQA, the side effects
    and the nade classifier, at a tiny limit (without the prompting reference: a third configuration)."""
    pytest.importorskip("nade")
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--model", gemma3, "--emotion", "anger", "--vector", vector, "--data", goemotions,
            "--truthfulqa-dir", shared / "data" / "truthfulqa", "--classifier", "nade", "--alphas", f"0,{ALPHA}",
            "--controls", "0", "--no-prompt-control", "--limit", "2", "--side-effect-texts", "8", "--batch-size", "4",
            "--log-samples", "--out", tmp_path / "run"]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    results = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "run").glob("*/results.json")}
    task = "steer_emotion_continue_anger"  # chosen because the tokenizer has no chat template
    assert len(results) == 2  # the baseline and alpha ALPHA
    for name, doc in results.items():
        assert {"truthfulqa_local_mc1", "truthfulqa_local_mc2", task, "side_effects"} <= set(doc["results"]), name
        assert doc["config"]["prefix_reuse"]["blocked_by"] is None  # reuse ran, on requests within the window:
        assert doc["config"]["prefix_reuse"]["longer_than_window"] == {"loglikelihood": 0, "generate_until": 0}
    steered = next(d for d in results.values() if d["config"]["steering"]["alphas"] == [ALPHA])
    steering = steered["config"]["steering"]
    assert (steering["layers"], steering["positions"]) == (MIDDLE, "response")
    assert steered["results"]["side_effects"]["kl,none"] > 0
    for folder in (tmp_path / "run").glob("*/"):
        if (folder / "results.json").exists():
            texts = [json.loads(line)["resps"][0][0] for line in (folder / f"samples_{task}.jsonl").open()]
            assert len(texts) == 2 and all(t.strip() for t in texts), folder.name
    assert "Toward anger at alpha" in (tmp_path / "run" / "summary.md").read_text()
