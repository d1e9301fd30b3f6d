"""Side effects of many configurations in one batch (``SideEffectProbe.measure_many``) against each one measured
alone, and a sweep with config batching against one without."""

from __future__ import annotations

import json

import pytest
import torch

from steer_plugin.data.neutral_texts import TextSource
from steer_plugin.model.hooks import Steerer, make_plan
from steer_plugin.steering.side_effects import SideEffectProbe, SideEffects
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.side_effects import TEXTS, reference
from tests.helpers.tiny import CORPUS, make_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (alpha, layers, positions): alphas of both signs, a zero plan, both positions, different layers
CONFIGS = [(1.5, [0, 2], "response"), (0.7, [1], "all"), (0.0, [0, 1, 2], "response"), (-1.0, [0, 1, 2], "response"),
           (2.0, [2], "all"), (1.0, [1, 2], "response")]  # fmt: skip


def _setup(arch: str, **config):
    model, tok = make_model(arch, n_layers=3, hidden=32, seed=1, **config)
    torch.manual_seed(5)
    vec = SteeringVector(torch.randn(3, 32))
    steerer = Steerer(model, "hooks")
    plans = [make_plan([vec], [a], model, steerer.block_path, layers) for a, layers, _ in CONFIGS]
    return model, tok, vec, steerer, plans, [p for _, _, p in CONFIGS]


def _rows_per_forward(model) -> tuple[list[int], object]:
    seen: list[int] = []

    def hook(module, args, kwargs):
        seen.append(int(kwargs["input_ids"].shape[0]))

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def _same(got: SideEffects, want: SideEffects) -> None:
    assert got.n_tokens == want.n_tokens
    assert got.kl_sums == pytest.approx(want.kl_sums, abs=1e-5)
    assert got.nll_sums == pytest.approx(want.nll_sums, abs=1e-5)
    assert got.baseline_ppl == pytest.approx(want.baseline_ppl, rel=1e-6)


# gemma3 with an 8-token window: the batch of long texts runs whole, the batch of short ones reuses its prefix
SHORT = [*CORPUS[:3], "I am so angry", "Hi there.", "Go away!"]


@pytest.mark.parametrize(
    ("arch", "config", "texts"),
    [("llama", {}, TEXTS), ("gpt2", {}, TEXTS), ("gemma3", {}, TEXTS), ("gemma3", {"sliding_window": 8}, SHORT)],
)
def test_measure_many_equals_each_configuration_alone(arch, config, texts):
    model, tok, vec, steerer, plans, positions = _setup(arch, **config)
    alone_probe = SideEffectProbe(model, tok, list(texts), steerer=steerer, batch_size=3)
    alone = [alone_probe.measure(p, where) for p, where in zip(plans, positions)]
    assert alone[2].kl == 0 and all(a.kl > 1e-4 for k, a in enumerate(alone) if k != 2)  # each does something
    for a, (alpha, layers, where) in zip(alone[:2], CONFIGS):  # and what the plain reference computes
        want_kl, want_ppl, _ = reference(model, tok, texts, {l: alpha * vec.matrix[l] for l in layers}, where)
        assert a.kl == pytest.approx(want_kl, rel=1e-4, abs=1e-7) and a.ppl == pytest.approx(want_ppl, rel=1e-5)

    for rows in (64, 7, 1):  # all configurations per forward; two per batch of 3 texts; one (rows < batch size)
        probe = SideEffectProbe(model, tok, list(texts), steerer=steerer, batch_size=3, config_rows=rows)
        seen, handle = _rows_per_forward(model)
        try:
            many = probe.measure_many(plans, positions)
        finally:
            handle.remove()
        assert len(many) == len(plans)
        for got, want in zip(many, alone):
            _same(got, want)
        assert max(seen) <= max(rows, 3) and (rows < 6 or max(seen) > 3)  # budget kept; configurations mixed
        assert probe.longer_than_window == alone_probe.longer_than_window
    # a logits budget of the smallest batch's worth (a 262k vocabulary's case): one configuration per forward
    vocab = model.get_output_embeddings().weight.shape[0]
    least = min(b.input_ids.numel() for b in alone_probe._batches)
    tight = SideEffectProbe(model, tok, list(texts), steerer=steerer, batch_size=3, logits_bytes=4 * vocab * least)
    seen, handle = _rows_per_forward(model)
    try:
        many = tight.measure_many(plans, positions)
    finally:
        handle.remove()
    assert max(seen) <= 3
    for got, want in zip(many, alone):
        _same(got, want)
    if config:  # an 8-token window: the batches of long texts ran whole, the others reused their prefix
        assert probe.window == 8 and probe.longer_than_window == 3
    used = [p is not None for p in probe._prefixes.values()]
    assert any(used) and not all(used)  # a batch ran whole: "Go" has no prefix, or a text outgrew the window


def test_measure_many_without_the_cache_and_with_nnsight():
    """Unsteered log-probs recomputed per batch (over the cache budget) and the nnsight backend: the same numbers."""
    model, tok, _, steerer, plans, positions = _setup("llama")
    alone = [SideEffectProbe(model, tok, list(TEXTS), steerer=steerer).measure(p, w) for p, w in zip(plans, positions)]
    for probe in (
        SideEffectProbe(model, tok, list(TEXTS), steerer=steerer, batch_size=2, cache_bytes=0, config_rows=5),
        SideEffectProbe(model, tok, list(TEXTS), steerer=Steerer(model, "nnsight"), batch_size=4),
    ):
        for got, want in zip(probe.measure_many(plans, positions), alone):
            _same(got, want)
    assert probe.measure_many([], []) == []


def test_a_batched_sweep_writes_the_side_effects_of_one_at_a_time(tmp_path, tiny_llama_dir, task_dir):
    from steer_plugin.harness.engine import HFEngine
    from steer_plugin.harness.model import SteeredHFLM
    from steer_plugin.study.plan import SweepOptions, SweepPlan
    from steer_plugin.study.sweep import run_sweep

    torch.manual_seed(3)
    vector = tmp_path / "v.safetensors"
    SteeringVector(torch.randn(3, 32)).save(vector)
    texts = tmp_path / "neutral.txt"
    texts.write_text("\n".join(CORPUS) + "\n")
    plan = SweepPlan.grid([str(vector)], [0, 1.0, 2.5], ["all", "0-1"], ["all", "response"])
    lm = SteeredHFLM(pretrained=tiny_llama_dir, dtype="float32", device="cpu", batch_size=2)
    docs = {}
    for batching in (False, True):
        options = SweepOptions(
            tasks=["rel_mc"], out_dir=tmp_path / f"sweep_{batching}", include_path=task_dir, limit=2.0,
            model_args={"pretrained": tiny_llama_dir}, side_effects=TextSource(str(texts)),
            side_effect_texts=len(CORPUS), config_batching=batching, config_batch_rows=5,
        )  # fmt: skip
        files = run_sweep(HFEngine(lm), plan, options, progress=False)
        docs[batching] = [json.loads(f.read_text()) for f in files]
    assert len(docs[True]) == len(plan.configs) == 9
    for one, many in zip(docs[False], docs[True]):
        a, b = one["results"]["side_effects"], many["results"]["side_effects"]
        assert b == {k: v if isinstance(v, str) else pytest.approx(v, rel=1e-6, abs=1e-9) for k, v in a.items()}
        info_a, info_b = one["config"]["side_effects"], many["config"]["side_effects"]
        assert "measured_together" not in info_a and info_b["measured_together"] == 9  # all in one call
        assert {k: v for k, v in info_a.items() if k != "seconds"} == {
            k: v for k, v in info_b.items() if k not in ("seconds", "measured_together")
        }
    kls = {d["results"]["side_effects"]["kl,none"] for d in docs[True]}
    assert len(kls) >= 8  # the steered configurations differ (the baseline's KL is 0)
