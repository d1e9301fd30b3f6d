"""Config batching: several steering configurations in one batch give what each gives alone.

References are the same configurations run one at a time (the path that the rest of the suite checks
against plain forward hooks and lm-eval's `steered` model): generated tokens must be identical (so the
harness's text is too), loglikelihoods equal to 1e-5 with the same is-greedy flags.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from lm_eval.api.instance import Instance

from steer_plugin.errors import SteerError
from steer_plugin.harness import config_batching
from steer_plugin.harness.steering_args import SteeringArgs
from steer_plugin.model.hooks import RowPlan, Steerer, make_plan
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.configs import configure, run_each
from tests.helpers.tiny import make_config, make_tokenizer

PROMPTS = [
    "I am so angry",
    "The weather is fine today and the park",
    "Tell me",
    "Why would anyone do that? I don't",
    "Q: What happens if you eat watermelon seeds? A:",
]
LL_PAIRS = [
    ("I am so angry", [" right now", " today", "!"]),
    ("The weather is fine today and", [" the park", " bread"]),
    ("Q", [" A", " B c d"]),
    ("Tell me about yourself.", [" I like", " Go away!"]),
]


@pytest.fixture(autouse=True)
def _quiet(one_torch_thread):
    logging.disable(logging.WARNING)  # "vector built on another model", HFLM's notes on a passed model
    yield
    logging.disable(logging.NOTSET)


def _model(arch: str, seed: int = 0, **config_args):
    """A tiny random model whose greedy generations vary with the prompt and the steering (larger init)."""
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer()
    config = make_config(arch, len(tok), **config_args)
    config.initializer_range = 0.2
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval(), tok


def _lm(arch: str, backend: str, batch_size: int = 2, **config_args):
    from steer_plugin.harness.model import SteeredHFLM

    model, tok = _model(arch, **config_args)
    return SteeredHFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device="cpu", backend=backend)


def _vectors(n_layers: int = 3, hidden: int = 32) -> list[SteeringVector]:
    torch.manual_seed(5)
    return [SteeringVector(torch.randn(n_layers, hidden) * 3) for _ in range(2)]


def _configs(v: list[SteeringVector]) -> list[dict]:
    return [
        {"vector": None, "alpha": 0.0},
        {"vector": [v[0]], "alpha": 1.0, "positions": "response"},
        {"vector": [v[1]], "alpha": 2.0, "positions": "response"},
        {"vector": [v[0]], "alpha": 1.5, "positions": "all"},
        {"vector": [v[1]], "alpha": -1.0, "layers": "1", "positions": "all"},
        {"vector": [v[0], v[1]], "alpha": [0.5, -1.0], "layers": "0-1", "positions": "response"},
    ]


def _generation_requests() -> list[Instance]:
    eos_only = {"until": [], "max_gen_toks": 10, "do_sample": False}
    stops = {"until": ["e", "\n"], "max_gen_toks": 10}  # greedy by the harness's default temperature 0
    return [Instance("generate_until", {}, (p, eos_only if i % 2 else stops), i) for i, p in enumerate(PROMPTS * 2)]


def _record_tokens(lm, monkeypatch) -> list[torch.Tensor]:
    """Every token tensor ``_model_generate`` hands to the harness, in call order."""
    seen: list[torch.Tensor] = []
    inner = lm._model_generate

    def recording(*args, **kwargs):
        tokens = inner(*args, **kwargs)
        seen.append(tokens.clone())
        return tokens

    monkeypatch.setattr(lm, "_model_generate", recording)
    return seen


# -- the row plan ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["hooks", "nnsight"])
def test_row_plan_rows_equal_each_plan_alone(backend):
    model, tok = _model("llama")
    steerer = Steerer(model, backend)
    v = _vectors()
    plans = [
        make_plan([v[0]], [1.0], model, steerer.block_path),
        make_plan([v[1]], [2.0], model, steerer.block_path, [1]),
        make_plan([v[0]], [0.0], model, steerer.block_path),  # inactive: a zero row
    ]
    batch = tok(PROMPTS[:2], return_tensors="pt", padding=True, padding_side="left")
    n = batch.input_ids.shape[0]
    ids = batch.input_ids.repeat(len(plans), 1)
    mask = torch.rand(ids.shape) > 0.5
    row_plan = RowPlan.stack(plans, repeat=n)
    assert row_plan.deltas[0].shape == (len(plans) * n, 32)
    for where, where_alone in ((None, None), ("last", "last"), (mask, None)):
        with torch.no_grad():
            mixed = steerer.forward(row_plan, where, input_ids=ids).logits
            for i, plan in enumerate(plans):
                rows = slice(i * n, (i + 1) * n)
                w = mask[rows] if where is mask else where_alone
                alone = steerer.forward(plan, w, input_ids=batch.input_ids).logits
                torch.testing.assert_close(mixed[rows], alone, rtol=0, atol=1e-5)
    with pytest.raises(RuntimeError, match="row plan for 6 rows met a batch of 2 rows"), torch.no_grad():
        steerer.forward(row_plan, None, input_ids=batch.input_ids)


# -- generation --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "backend"), [("llama", "hooks"), ("gpt2", "nnsight"), ("qwen2", "nnsight"), ("gemma3", "nnsight")]
)
def test_mixed_generation_equals_each_configuration_alone(arch, backend, monkeypatch):
    lm = _lm(arch, backend)
    configs = _configs(_vectors())
    requests = _generation_requests()
    tokens = _record_tokens(lm, monkeypatch)
    alone_text = run_each(lm, configs, lambda: lm.generate_until(requests, disable_tqdm=True), planned=False)
    alone_tokens, tokens[:] = list(tokens), []

    prefixes = []
    shared = config_batching._prefix_cache
    monkeypatch.setattr(config_batching, "_prefix_cache", lambda *a: prefixes.append(1) or shared(*a))
    mixes = []
    mixed_fn = config_batching.generate_mixed
    monkeypatch.setattr(
        "steer_plugin.harness.lookahead.generate_mixed", lambda gen, c, *a: mixes.append(len(c)) or mixed_fn(gen, c, *a)
    )
    mixed_text = run_each(lm, configs, lambda: lm.generate_until(requests, disable_tqdm=True), planned=True)

    assert mixed_text == alone_text
    assert len(tokens) == len(alone_tokens)
    for got, want in zip(tokens, alone_tokens):
        assert torch.equal(got, want)  # the exact tensor, trailing tokens included
    # really mixed: every harness batch ran once, under all six configurations, while the first one ran
    assert mixes == [len(configs)] * (len(alone_tokens) // len(configs))
    assert prefixes and len(prefixes) == len(mixes)  # positions=response shared its unsteered prompt prefix
    # and the configurations differ, so a row given to the wrong configuration would show
    assert len({json.dumps(t) for t in alone_text}) >= 5
    assert lm.longer_than_window["generate_until"] == 0


def test_generation_longer_than_the_sliding_window_prefills_the_whole_prompt(monkeypatch):
    """gemma3 with an 8-token window: prompt + 10 new tokens do not fit, so the prompt prefix is not shared
    (and the prompts are counted); the mixed batches still equal each configuration alone."""
    lm = _lm("gemma3", "hooks", sliding_window=8)
    assert lm.reuse_active and lm.reuse_window == 8
    configs = _configs(_vectors())
    requests = _generation_requests()
    alone = run_each(lm, configs, lambda: lm.generate_until(requests, disable_tqdm=True), planned=False)
    monkeypatch.setattr(config_batching, "_prefix_cache", lambda *a: pytest.fail("longer than the window"))
    counted = []
    inner = lm.generate_until

    def generate_and_count(*args, **kwargs):
        out = inner(*args, **kwargs)
        counted.append(lm.longer_than_window["generate_until"])
        return out

    monkeypatch.setattr(lm, "generate_until", generate_and_count)
    mixed = run_each(lm, configs, lambda: lm.generate_until(requests, disable_tqdm=True), planned=True)
    assert mixed == alone
    assert len({json.dumps(t) for t in alone}) >= 5
    # the first configuration generated every prompt for all configurations (none here twice: other settings)
    assert counted[0] == len(requests) and counted[1:] == [0] * (len(configs) - 1)


def test_mixed_generation_honours_the_row_budget_and_no_prefix_reuse(monkeypatch):
    lm = _lm("llama", "hooks", batch_size=3)
    lm.prefix_reuse = False  # full prompt prefill per row, still mixed
    configs = _configs(_vectors())
    requests = _generation_requests()
    alone = run_each(lm, configs, lambda: lm.generate_until(requests, disable_tqdm=True), planned=False)
    sizes = []
    inner = lm.steerer.generate

    def counting(plan, where, **kw):
        sizes.append(kw["input_ids"].shape[0])
        return inner(plan, where, **kw)

    monkeypatch.setattr(lm.steerer, "generate", counting)
    monkeypatch.setattr(config_batching, "_prefix_cache", lambda *a: pytest.fail("prefix reuse is off"))
    mixed = run_each(lm, configs, lambda: lm.generate_until(requests, disable_tqdm=True), planned=True, rows=7)
    assert mixed == alone
    assert max(sizes) <= 7 and max(sizes) > 3  # rows = batch size (3) x 2 configurations


def test_sampling_runs_one_configuration_at_a_time():
    lm = _lm("llama", "hooks")
    configs = _configs(_vectors())[:3]
    requests = [Instance("generate_until", {}, (p, {"until": [], "max_gen_toks": 4, "do_sample": True, "temperature": 1.0}), i)
                for i, p in enumerate(PROMPTS)]  # fmt: skip
    lm.plan_ahead([SteeringArgs.parse(**c) for c in configs])
    try:
        configure(lm, configs[0])
        lm.generate_until(requests, disable_tqdm=True)
        assert lm.lookahead.batcher is not None and not lm.lookahead.batcher.ready  # nothing computed for the others
    finally:
        lm.plan_ahead([])
        lm.configure(None, 0.0)


def test_an_overflowing_configuration_fails_alone_and_leaves_the_others(tmp_path):
    """3e38 x 1 is finite, but overflows inside the model: that configuration's rows turn nan in the mixed
    batch; the others are unaffected, and it fails (as alone) when its turn comes."""
    lm = _lm("llama", "hooks")
    good = _configs(_vectors())[:3]
    big = {"vector": [SteeringVector(torch.full((3, 32), 3e38))], "alpha": 1.0, "positions": "response"}
    requests = _generation_requests()[:4]
    alone = run_each(lm, good, lambda: lm.generate_until(requests, disable_tqdm=True), planned=False)
    lm.plan_ahead([SteeringArgs.parse(**c) for c in [good[0], big, *good[1:]]])
    try:
        got = []
        for c in [good[0], big, *good[1:]]:
            configure(lm, c)
            if c is big:
                with pytest.raises(SteerError, match="scores became non-finite"):
                    lm.generate_until(requests, disable_tqdm=True)
            else:
                got.append(lm.generate_until(requests, disable_tqdm=True))
    finally:
        lm.plan_ahead([])
        lm.configure(None, 0.0)
    assert got == alone


# -- loglikelihood -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arch", "backend"), [("llama", "nnsight"), ("gpt2", "hooks"), ("opt", "nnsight"), ("gemma3", "hooks")]
)
def test_mixed_loglikelihood_equals_each_configuration_alone(arch, backend):
    lm = _lm(arch, backend)
    v = _vectors()
    configs = [_configs(v)[3], *_configs(v)[:3], _configs(v)[4], _configs(v)[5]]  # positions=all first
    requests = [Instance("loglikelihood", {}, (c, x), i) for i, (c, xs) in enumerate(LL_PAIRS) for x in xs]
    alone = run_each(lm, configs, lambda: lm.loglikelihood(requests, disable_tqdm=True), planned=False)

    lm.plan_ahead([SteeringArgs.parse(**c) for c in configs])
    try:
        mixed = []
        for i, c in enumerate(configs):
            configure(lm, c)
            mixed.append(lm.loglikelihood(requests, disable_tqdm=True))
            if i == 0:  # the other positions=all configuration was scored in the same forwards
                assert len(lm.lookahead.ahead) == 1
    finally:
        lm.plan_ahead([])
        lm.configure(None, 0.0)
    for a, m in zip(alone, mixed):
        assert [g for _, g in m] == [g for _, g in a]
        assert [x for x, _ in m] == pytest.approx([x for x, _ in a], abs=1e-5)
    assert len({round(a[0][0], 4) for a in alone}) == len(configs)


def test_mixed_loglikelihood_tails_mix_configurations():
    """score_groups_mixed against score_groups, one configuration at a time, with a row budget that splits."""
    from steer_plugin.harness.prefix_reuse import Scorer, TailConfig, group_by_context, score_groups

    model, tok = _model("llama")
    steerer = Steerer(model, "hooks")
    v = _vectors()
    plans = [make_plan([v[0]], [a], model, steerer.block_path) for a in (0.5, 1.0, 2.0)]
    configs = [TailConfig.of(p, "all") for p in plans]
    requests = [(i, tok(c)["input_ids"], tok(x)["input_ids"]) for i, (c, xs) in enumerate(LL_PAIRS) for x in xs]
    groups, plain = group_by_context(requests, 512)
    assert not plain

    def forward(plan, where, **inputs):
        with torch.no_grad():
            return steerer.forward(plan, where, **inputs)

    scorer = Scorer(forward, model.config, torch.device("cpu"), 2)
    want = [score_groups(scorer, groups, [c])[0] for c in configs]
    for rows in (3, 5, 64):
        got = config_batching.score_groups_mixed(scorer, groups, configs, rows)
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            for k in w:
                assert g[k][1] == w[k][1] and g[k][0] == pytest.approx(w[k][0], abs=1e-5)


# -- sweeps ------------------------------------------------------------------------------------------
GEN_DOCS = [{"q": p, "a": "x"} for p in PROMPTS]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("tasks")
    (d / "gen.jsonl").write_text("".join(json.dumps(x) + "\n" for x in GEN_DOCS))
    (d / "mc.jsonl").write_text("".join(json.dumps({"q": c, "choices": xs, "gold": 0}) + "\n" for c, xs in LL_PAIRS))
    (d / "tiny_gen_utils.py").write_text(
        "def process_results(doc, results):\n    return {'length': len(results[0]), 'has_e': float('e' in results[0])}\n"
    )
    (d / "tiny_gen.yaml").write_text(
        "task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {d / 'gen.jsonl'}\ntest_split: test\noutput_type: generate_until\n"
        "doc_to_text: q\ndoc_to_target: a\ngeneration_kwargs:\n  until: ['\\n']\n  max_gen_toks: 8\n"
        "  do_sample: false\nprocess_results: !function tiny_gen_utils.process_results\n"
        "metric_list:\n  - metric: length\n    aggregation: mean\n  - metric: has_e\n    aggregation: mean\n"
        "metadata:\n  version: 1.0\n"
    )
    (d / "tiny_mc2.yaml").write_text(
        "task: tiny_mc2\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {d / 'mc.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: gold\n"
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 1.0\n"
    )
    return str(d)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    model, tok = _model("llama")
    path = tmp_path_factory.mktemp("tiny_llama_wide")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _samples(folder: Path, task: str) -> dict:
    rows = [json.loads(line) for line in (folder / f"samples_{task}.jsonl").read_text().splitlines()]
    return {r["doc_id"]: (r["resps"], r["filtered_resps"]) for r in rows}


def test_sweep_with_config_batching_equals_one_at_a_time_and_resumes(task_dir, model_dir, tmp_path):
    from steer_plugin.harness.engine import HFEngine
    from steer_plugin.harness.model import SteeredHFLM
    from steer_plugin.study.plan import SweepOptions, SweepPlan
    from steer_plugin.study.sweep import run_sweep

    paths = []
    for i, v in enumerate(_vectors()):
        paths.append(str(tmp_path / f"v{i}.safetensors"))
        v.save(paths[-1])
    plan = SweepPlan.grid(paths, [0, 1.0, 2.5], ["all"], ["all", "response"])
    lm = SteeredHFLM(pretrained=model_dir, dtype="float32", device="cpu", batch_size=2)
    results = {}
    for batching in (False, True):
        options = SweepOptions(
            tasks=["tiny_gen", "tiny_mc2"],
            out_dir=tmp_path / f"sweep_{batching}",
            include_path=task_dir,
            log_samples=True,
            model_args={"pretrained": model_dir},
            config_batching=batching,
        )
        files = run_sweep(HFEngine(lm), plan, options, progress=False)
        results[batching] = (options, files)
        assert lm.lookahead.batcher is None and not lm.plan.active
    (_, one_by_one), (options, batched) = results[False], results[True]
    assert len(batched) == len(plan.configs) == 9
    for a, b in zip(one_by_one, batched):
        ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
        assert ra["results"]["tiny_gen"] == rb["results"]["tiny_gen"]
        assert ra["results"]["tiny_mc2"]["acc,none"] == rb["results"]["tiny_mc2"]["acc,none"]
        assert _samples(a.parent, "tiny_gen") == _samples(b.parent, "tiny_gen")
        lls = [[float(x[0][0]) for x in r[0]] for r in _samples(b.parent, "tiny_mc2").values()]
        want = [[float(x[0][0]) for x in r[0]] for r in _samples(a.parent, "tiny_mc2").values()]
        assert lls == [pytest.approx(w, abs=1e-5) for w in want]
    texts = {json.dumps(_samples(f.parent, "tiny_gen")) for f in one_by_one}
    assert len(texts) >= 6  # the configurations generate differently

    # resume: two missing configurations run again (batched together), the others are left alone
    stamps = {f: f.stat().st_mtime_ns for f in batched}
    missing = [batched[2], batched[6]]
    saved = {f: json.loads(f.read_text())["results"] for f in missing}
    for f in missing:
        f.unlink()
    run_sweep(HFEngine(lm), plan, options, progress=False)
    assert all(f.exists() for f in missing)
    assert all(f.stat().st_mtime_ns == stamps[f] for f in batched if f not in missing)
    for f in missing:
        assert json.loads(f.read_text())["results"]["tiny_gen"] == saved[f]["tiny_gen"]


def _no_side_effects() -> list[str]:
    """Side effects (KL/perplexity on neutral texts from the hub), where this version measures them, are not
    what these CLI runs are about."""
    import inspect

    from steer_plugin.cli import study as cli_study

    return ["--no-side-effects"] if "--no-side-effects" in inspect.getsource(cli_study) else []


def test_cli_no_config_batching_flag(task_dir, model_dir, tmp_path, monkeypatch):
    from steer_plugin.cli import main
    from steer_plugin.harness.model import SteeredHFLM

    vec = tmp_path / "v.safetensors"
    _vectors()[0].save(vec)
    planned = []
    inner = SteeredHFLM.plan_ahead

    def recording(self, configs, config_batching=True, rows=None):
        planned.append((len(configs), config_batching, rows))
        return inner(self, configs, config_batching, rows)

    monkeypatch.setattr(SteeredHFLM, "plan_ahead", recording)
    base = ["sweep", "--model", model_dir, "--vector", str(vec), "--alphas", "0,1", "--tasks", "tiny_gen",
            "--include-path", task_dir, "--batch-size", "2", "--device", "cpu", "--positions", "response",
            "--layers", "all", "--log-samples", "--controls", "0", *_no_side_effects()]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a"), "--no-config-batching"]) == 0
    assert main([*base, "--out", str(tmp_path / "b"), "--config-batch-rows", "16"]) == 0
    assert planned[0] == (2, False, None) and planned[2] == (2, True, 16)
    for name in ("baseline",):
        assert _samples(tmp_path / "a" / name, "tiny_gen") == _samples(tmp_path / "b" / name, "tiny_gen")
    steered = [p.name for p in (tmp_path / "a").iterdir() if p.is_dir() and p.name.startswith("v_")]
    assert _samples(tmp_path / "a" / steered[0], "tiny_gen") == _samples(tmp_path / "b" / steered[0], "tiny_gen")
    assert main([*base, "--out", str(tmp_path / "c"), "--config-batch-rows", "0"]) == 2
