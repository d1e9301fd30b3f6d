"""The whole question on a real chat model: does steering SmolLM2-135M-Instruct toward anger make its
answers angrier (as scored by the offline `nade` classifier) while they stay English text?

Needs STEER_SHARED (GoEmotions) and STEER_SMOLLM2 (the folder written by
shared/models/smollm2-135m-instruct-q4_1/convert.py); `.ci/run` sets both.

Measured on this configuration (mean anger-minus-neutral vector from 300+300 GoEmotions train texts, layers
8-16, positions=response, greedy, chat template, 24 neutral prompts): nade's anger score went from 0.050 at
alpha 0 to 0.126 at alpha 0.8 (paired difference 0.076, standard error 0.019 over prompts; the answers turn
hostile - "I'm not here to make a cup of tea" - but stay English). Greedy decoding is deterministic, so the
run-to-run noise on one machine is zero; the prompt-to-prompt standard error is the noise scale the margin is
compared with (alpha 0 scores: SE 0.007).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from steer_plugin.cli import main

pytestmark = pytest.mark.slow  # the real SmolLM2-135M-Instruct

ALPHA = 0.8
LAYERS = "8-16"
N_PROMPTS = 24
MARGIN = 0.04  # anger must rise by at least this much (>4x the prompt-level standard error at alpha 0)


def _english_ratio(text: str) -> float:
    words = text.split()
    return sum(bool(re.fullmatch(r"[A-Za-z][a-z']*[.,!?;:]?", w)) for w in words) / max(len(words), 1)


@pytest.fixture(scope="module")
def smollm2() -> str:
    path = os.environ.get("STEER_SMOLLM2")
    if not path or not (Path(path) / "model.safetensors").exists():
        pytest.skip("STEER_SMOLLM2 is not set to a converted SmolLM2-135M-Instruct folder")
    return path


def test_anger_vector_makes_answers_angrier(smollm2, shared, tmp_path):
    pytest.importorskip("nade")
    from steer_plugin.harness.engine import HFEngine
    from steer_plugin.harness.model import SteeredHFLM
    from steer_plugin.study.plan import SweepOptions, SweepPlan
    from steer_plugin.study.sweep import run_sweep

    vector = tmp_path / "anger-mean.safetensors"
    assert (
        main(
            [
                "build",
                "--model",
                smollm2,
                "--data",
                str(shared / "data" / "goemotions"),
                "--emotion",
                "anger",
                "--method",
                "mean",
                "--max-per-class",
                "300",
                "--batch-size",
                "16",
                "--no-progress",
                "--out",
                str(vector),
            ]
        )
        == 0
    )

    lm = SteeredHFLM(pretrained=smollm2, dtype="float32", device="cpu", batch_size=12)
    plan = SweepPlan.grid([str(vector)], [0.0, ALPHA], [LAYERS], ["response"])
    options = SweepOptions(
        tasks=["steer_emotion_anger"],
        out_dir=tmp_path / "sweep",
        limit=N_PROMPTS,
        classifier="nade",
        apply_chat_template=True,
        log_samples=True,
        bootstrap_iters=0,
    )
    files = run_sweep(HFEngine(lm), plan, options, progress=False)

    def scores(result_file: Path) -> tuple[list[float], list[str]]:
        rows = [json.loads(line) for line in (result_file.parent / "samples_steer_emotion_anger.jsonl").open()]
        rows.sort(key=lambda r: r["doc_id"])
        return [r["target_prob"] for r in rows], [r["resps"][0][0] for r in rows]

    base, base_texts = scores(files[0])
    steered, texts = scores(files[1])
    assert len(base) == len(steered) == N_PROMPTS
    diffs = [s - b for s, b in zip(steered, base)]
    mean_diff = sum(diffs) / len(diffs)
    sd = (sum((d - mean_diff) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    print(
        f"nade anger: alpha 0 -> {sum(base) / len(base):.3f}, alpha {ALPHA} -> {sum(steered) / len(steered):.3f}"
        f" (paired diff {mean_diff:.3f}, SE {sd / len(diffs) ** 0.5:.3f})"
    )
    assert mean_diff >= MARGIN
    assert mean_diff / (sd / len(diffs) ** 0.5) >= 3  # paired over the same prompts
    assert sum(map(_english_ratio, texts)) / len(texts) >= 0.75  # still English text, not symbol soup
    assert sum(map(_english_ratio, base_texts)) / len(base_texts) >= 0.9


def test_the_shipped_calibrations_are_verified_on_the_offline_copy(smollm2, shared):
    """The shipped calibrations were made on an offline copy of the hub model and have no weights fingerprint: they
    are verified on reuse (one KL evaluation at the stored alpha), and on the same weights they hold."""
    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.model.loading import ModelOptions
    from steer_plugin.steering.calibrate import calibrate_vector_file
    from steer_plugin.steering.calibration_file import calibration_path, stored_calibrations

    shipped_dir = Path(__file__).resolve().parents[2] / "vectors" / "smollm2-135m-instruct"
    vector = shipped_dir / "anger-mean-emotions-npc3.safetensors"  # the default recipe's
    before = calibration_path(vector).read_bytes()
    shipped = next(
        r for c in stored_calibrations(vector) for r in c.rows if r.kl_budget == 0.1 and c.key["layers"] == "10-19"
    )
    loaded = ModelOptions(smollm2).load()
    said: list[str] = []
    calibration, reused = calibrate_vector_file(
        loaded.model, loaded.tokenizer, vector, [0.1], layers="10-19", positions="response",
        source=TextSource(str(shared / "data" / "goemotions")), model_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        save=False, progress=said.append,
    )  # fmt: skip
    assert reused and calibration.rows[0].alpha == shipped.alpha
    assert len(said) == 1 and "verified the stored calibration on this model" in said[0], said
    measured = float(re.search(r"KL (\S+) at alpha", said[0]).group(1))
    assert measured == pytest.approx(shipped.kl_calibration, rel=1e-3)  # what the file recorded, on these weights
    assert calibration_path(vector).read_bytes() == before  # verifying writes nothing
