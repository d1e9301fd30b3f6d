"""How a sweep formats and reads the emotion tasks: the chat template for them alone (other tasks as the harness
formats them), the prompting reference's instruction, and each generation's fluency under the unsteered model
against a plain transformers computation."""

from __future__ import annotations

import json
import math

import pytest
import torch

from steer_plugin.data.neutral_texts import TextSource
from steer_plugin.data.prompts import emotion_instruction
from steer_plugin.errors import SteerError
from steer_plugin.harness.engine import HFEngine
from steer_plugin.model.loading import ModelOptions
from steer_plugin.study.evaluation import Evaluation, emotion_task_family
from steer_plugin.study.plan import SweepOptions, SweepPlan
from steer_plugin.study.sweep import run_sweep
from steer_plugin.study.sweep_folder import sweep_settings
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.classifier import build_goemotions_classifier
from tests.helpers.sweep import write_tiny_mc_task
from tests.helpers.tiny import CORPUS

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TASK = "steer_emotion_anger"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> str:
    return write_tiny_mc_task(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_chat_llama_dir, task_dir):
    from steer_plugin.harness.model import SteeredHFLM

    tmp = tmp_path_factory.mktemp("sweep")
    torch.manual_seed(3)
    vector = tmp / "anger-mean.safetensors"
    SteeringVector(torch.randn(3, 32), {"model": tiny_chat_llama_dir, "emotion": "anger", "method": "mean"}).save(
        vector
    )
    lm = SteeredHFLM(pretrained=tiny_chat_llama_dir, dtype="float32", device="cpu", batch_size=2)
    plan = SweepPlan.grid([str(vector)], [0, 2.0], ["all"], ["response"], prompted=["anger"])
    texts = tmp / "neutral.txt"
    texts.write_text("\n".join(CORPUS) + "\n")
    options = SweepOptions(
        tasks=[TASK, "tiny_mc"], out_dir=tmp / "out", include_path=task_dir, limit=3.0, log_samples=True,
        classifier=build_goemotions_classifier(tmp / "clf"), apply_chat_template=[TASK],
        gen_kwargs={"max_gen_toks": 8}, model_args={"pretrained": tiny_chat_llama_dir},
        side_effects=TextSource(str(texts)), side_effect_texts=len(CORPUS),
    )  # fmt: skip
    run_sweep(HFEngine(lm), plan, options, progress=False)
    return lm, plan, options


def _samples(options, config, task):
    path = options.out_dir / config.slug() / f"samples_{task}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_chat_template_for_the_emotion_tasks_alone(swept):
    lm, plan, options = swept
    tok = lm.tokenizer
    baseline = plan.configs[0]
    for row in _samples(options, baseline, TASK):
        chat = [{"role": "user", "content": row["doc"]["prompt"]}]
        assert row["arguments"][0][0] == tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    for row in _samples(options, baseline, "tiny_mc"):
        assert "<|user|>" not in row["arguments"][0][0]  # the harness's own formatting
    reproduce = json.loads((options.out_dir / "baseline" / "results.json").read_text())["config"]["reproduce"]
    assert len(reproduce) == 2  # two harness runs: the emotion task with the chat template, the other without
    assert "--apply_chat_template" in reproduce[0] and TASK in reproduce[0]
    assert "--apply_chat_template" not in reproduce[1] and "tiny_mc" in reproduce[1]
    settings = json.loads((options.out_dir / "sweep.json").read_text())["settings"]
    assert settings["apply_chat_template"] == [TASK] == sweep_settings(options)["apply_chat_template"]
    config = json.loads((options.out_dir / "baseline" / "results.json").read_text())["config"]
    spent = config["request_seconds"]  # where the configuration's time went, per request type
    assert spent["generate_until"] > 0 and spent["loglikelihood"] > 0
    assert sum(spent.values()) + config["generation_fluency_seconds"] <= config["seconds"]
    prompted = json.loads((options.out_dir / "prompted_anger" / "results.json").read_text())["config"]
    assert prompted["request_seconds"]["loglikelihood"] == 0  # the emotion task alone


def test_the_prompting_reference_asks_in_the_system_message(swept):
    lm, plan, options = swept
    prompted = plan.configs[-1]
    assert prompted.prompted == "anger" and prompted.slug() == "prompted_anger"
    results = json.loads((options.out_dir / "prompted_anger" / "results.json").read_text())
    assert set(results["results"]) == {TASK, "side_effects"}  # the emotion tasks only
    assert results["config"]["prompting"]["instruction"] == emotion_instruction("anger")
    (command,) = results["config"]["reproduce"]
    assert "--system_instruction" in command and "--apply_chat_template" in command
    assert results["config"]["steering"]["vectors"] == []  # unsteered
    assert results["results"]["side_effects"]["kl,none"] > 0
    for row in _samples(options, prompted, TASK):
        chat = [
            {"role": "system", "content": emotion_instruction("anger")},
            {"role": "user", "content": row["doc"]["prompt"]},
        ]
        assert row["arguments"][0][0] == lm.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True
        )


def test_the_prompting_reference_generates_in_large_batches_and_its_command_says_so(swept, task_dir):
    """Nothing shares its batches, so it runs in batches as large as a mixed batch: the results and the command
    to reproduce it give that batch size, and the stock harness at that batch size writes the same outputs."""
    import shlex

    import lm_eval
    from lm_eval.tasks import TaskManager

    from steer_plugin.harness.config_batching import DEFAULT_ROWS

    lm, plan, options = swept
    results = json.loads((options.out_dir / "prompted_anger" / "results.json").read_text())
    assert results["config"]["batch_size"] == DEFAULT_ROWS and lm.batch_size == 2  # the harness's size restored
    (command,) = results["config"]["reproduce"]
    words = shlex.split(command)
    args = dict(kv.split("=", 1) for kv in words[words.index("--model_args") + 1].split(","))
    assert args["batch_size"] == str(DEFAULT_ROWS)
    baseline = json.loads((options.out_dir / "baseline" / "results.json").read_text())["config"]
    assert "batch_size" not in baseline["model_args"] and baseline["batch_size"] == 2  # the others: unchanged
    rerun = lm_eval.simple_evaluate(
        model="steered_hf",
        model_args={**args, "dtype": "float32", "device": "cpu"},
        tasks=[TASK],
        task_manager=TaskManager(include_path=task_dir, metadata={"classifier": options.classifier}),
        limit=options.limit,
        gen_kwargs="max_gen_toks=8",
        apply_chat_template=True,
        system_instruction=words[words.index("--system_instruction") + 1],
        log_samples=True,
        verbosity="WARNING",
    )
    ours = {r["doc_id"]: r["resps"] for r in _samples(options, plan.configs[-1], TASK)}
    theirs = {r["doc_id"]: r["resps"] for r in rerun["samples"][TASK]}
    assert ours == theirs and len(ours) == 3


def test_generation_fluency_equals_a_plain_forward(swept):
    lm, plan, options = swept
    model, tok = lm.model, lm.tokenizer
    for config in plan.configs:
        rows = _samples(options, config, TASK)
        for row in rows:
            ctx = tok(row["arguments"][0][0])["input_ids"]
            text = row["resps"][0][0]
            cont = tok(text, add_special_tokens=False)["input_ids"] if text else [tok.eos_token_id]
            with torch.no_grad():  # the unsteered model, whatever the configuration steered
                logp = torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
            nll = -sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)) / len(cont)
            assert row["gen_nll"] == pytest.approx(nll, abs=1e-4)
        results = json.loads((options.out_dir / config.slug() / "results.json").read_text())["results"][TASK]
        mean = sum(r["gen_nll"] for r in rows) / len(rows)
        assert results["gen_nll,none"] == pytest.approx(mean) and results["gen_ppl,none"] == pytest.approx(
            math.exp(mean)
        )
        assert {"no_words", "repetition", "distinct_2", "gen_nll"} <= set(rows[0]["metrics"])


def test_which_emotion_tasks_and_formatting(tiny_llama_dir, tiny_chat_llama_dir):
    base, chat = ModelOptions(tiny_llama_dir), ModelOptions(tiny_chat_llama_dir)
    assert emotion_task_family("auto", base) == "steer_emotion_continue"  # no chat template: text to continue
    assert emotion_task_family("auto", chat) == "steer_emotion"
    assert emotion_task_family("off", base) == "steer_emotion"
    with pytest.raises(SteerError, match="no chat template"):
        emotion_task_family("on", base)
    tasks = "truthfulqa_mc1,steer_emotion_anger"
    assert Evaluation(tasks=tasks).chat_tasks(chat) == ["steer_emotion_anger"]
    assert Evaluation(tasks=tasks).chat_tasks(base) is False
    assert Evaluation(tasks=tasks, chat="off").chat_tasks(chat) is False
    assert Evaluation(tasks=tasks, apply_chat_template=True).chat_tasks(base) is True  # every task, as asked
