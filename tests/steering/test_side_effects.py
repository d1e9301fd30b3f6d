"""Side effects (KL to the unsteered model, steered perplexity) against a plain torch reference."""

from __future__ import annotations

import math

import pytest
import torch

from steer_plugin.data.neutral_texts import TextSource
from steer_plugin.errors import SteerError
from steer_plugin.model.hooks import Steerer, make_plan
from steer_plugin.steering.side_effects import SideEffectProbe
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.side_effects import TEXTS, reference
from tests.helpers.tiny import CORPUS, make_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("positions", ["all", "response"])
def test_kl_and_ppl_equal_plain_torch_reference(arch, positions):
    model, tok = make_model(arch, n_layers=3, hidden=32, seed=1)
    torch.manual_seed(5)
    vec = SteeringVector(torch.randn(3, 32))
    steerer = Steerer(model, "hooks")
    layers = [0, 2]
    alpha = 1.5
    plan = make_plan([vec], [alpha], model, steerer.block_path, layers)
    probe = SideEffectProbe(model, tok, list(TEXTS), steerer=steerer, batch_size=3)
    got = probe.measure(plan, positions)
    want_kl, want_ppl, n_tok = reference(model, tok, TEXTS, {l: alpha * vec.matrix[l] for l in layers}, positions)
    assert got.total_tokens == n_tok
    assert got.kl > 1e-3  # the vector does something
    if positions == "response":  # the unsteered prefix ran once and was reused (where every row has one)
        used = [p is not None for p in probe._prefixes.values()]
        assert any(used) and not all(used)  # "Go" has no prefix: its batch ran whole
    assert got.kl == pytest.approx(want_kl, rel=1e-4, abs=1e-7)
    assert got.ppl == pytest.approx(want_ppl, rel=1e-5)
    # the baseline: KL 0 and the unsteered perplexity
    _, base_ppl, _ = reference(model, tok, TEXTS, {}, positions)
    base = probe.measure(make_plan([vec], [0.0], model, steerer.block_path, layers), positions)
    assert base.kl == 0 and base.ppl == pytest.approx(base_ppl, rel=1e-5)
    assert got.baseline_ppl == pytest.approx(base_ppl, rel=1e-5)


def prompted_reference(model, tokenizer, texts, instruction):
    """Each text alone and after the instruction, unpadded, float64; KL and NLL at the text's scored tokens."""
    kl_sum = nll_sum = 0.0
    n_tok = 0
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        if len(ids) < 2:
            continue
        n, c, k = len(ids), len(ids) // 2, len(instruction)
        with torch.no_grad():
            p = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits[0].double(), -1)
            q = torch.log_softmax(model(input_ids=torch.tensor([instruction + ids[:-1]])).logits[0].double(), -1)
        for j in range(c, n):
            kl_sum += float((p[j - 1].exp() * (p[j - 1] - q[k + j - 1])).sum())
            nll_sum += -float(q[k + j - 1, ids[j]])
            n_tok += 1
    return kl_sum / n_tok, math.exp(nll_sum / n_tok), n_tok


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prompted_side_effects_equal_plain_torch_reference(arch):
    model, tok = make_model(arch, n_layers=3, hidden=32, seed=1)
    instruction = tok("I am so angry right now.\n\n")["input_ids"]
    probe = SideEffectProbe(model, tok, list(TEXTS), batch_size=3)
    got = probe.measure_prompted(instruction)
    want_kl, want_ppl, n_tok = prompted_reference(model, tok, TEXTS, instruction)
    assert got.total_tokens == n_tok and got.kl > 1e-5  # the instruction changes something
    assert got.kl == pytest.approx(want_kl, rel=1e-4, abs=1e-7)
    assert got.ppl == pytest.approx(want_ppl, rel=1e-5)
    assert probe.measure_prompted([]).kl == 0  # no instruction: the unsteered model itself


def test_a_batch_with_a_text_longer_than_the_sliding_window_runs_whole():
    """gemma3 with an 8-token window: the batch of the four long texts (25-34 tokens) runs whole and is
    counted, the batch of three short ones (the model reads 5-8 tokens) reuses its prefix; the numbers are
    the plain reference's."""
    model, tok = make_model("gemma3", n_layers=3, hidden=32, seed=1, sliding_window=8)
    texts = [*CORPUS[:4], "I am so angry", "Hi there.", "Go away!"]
    torch.manual_seed(5)
    vec = SteeringVector(torch.randn(3, 32))
    steerer = Steerer(model, "hooks")
    plan = make_plan([vec], [1.5], model, steerer.block_path, [0, 2])
    probe = SideEffectProbe(model, tok, texts, steerer=steerer, batch_size=4)
    got = probe.measure(plan, "response")
    assert probe.window == 8 and probe.longer_than_window == 4
    assert [p is not None for p in probe._prefixes.values()] == [False, True]
    want_kl, want_ppl, n_tok = reference(model, tok, texts, {l: 1.5 * vec.matrix[l] for l in (0, 2)}, "response")
    assert got.total_tokens == n_tok and got.kl > 1e-3
    assert got.kl == pytest.approx(want_kl, rel=1e-4, abs=1e-7)
    assert got.ppl == pytest.approx(want_ppl, rel=1e-5)


def test_no_cache_batch_size_and_backend_do_not_change_the_numbers():
    model, tok = make_model("qwen2", n_layers=2, hidden=32, seed=2)
    torch.manual_seed(7)
    vec = SteeringVector(torch.randn(2, 32))
    plan = make_plan([vec], [2.0], model, "model.layers")
    cached = SideEffectProbe(model, tok, list(TEXTS), batch_size=4).measure(plan, "response")
    whole_probe = SideEffectProbe(model, tok, list(TEXTS), batch_size=4)
    whole_probe._reuse_blocked = "test: no prefix cache"
    whole = whole_probe.measure(plan, "response")
    assert not any(whole_probe._prefixes.values())
    uncached_probe = SideEffectProbe(model, tok, list(TEXTS), batch_size=1, cache_bytes=0)
    uncached = uncached_probe.measure(plan, "response")
    assert uncached_probe._cache is None  # over the memory budget: recomputed per batch
    nn = SideEffectProbe(model, tok, list(TEXTS), steerer=Steerer(model, "nnsight"), batch_size=16).measure(
        plan, "response"
    )
    for other in (uncached, nn, whole):
        assert other.kl == pytest.approx(cached.kl, rel=1e-5)
        assert other.ppl == pytest.approx(cached.ppl, rel=1e-6)
    assert cached.n_tokens == uncached.n_tokens
    # stderr over texts is finite and the per-text samples add up to the totals
    assert cached.kl_stderr > 0 and cached.ppl_stderr > 0
    rows = cached.samples(uncached_probe.texts)
    assert sum(r["kl"] * r["n_tokens"] for r in rows) / cached.total_tokens == pytest.approx(cached.kl)
    assert set(cached.metrics()) == {"kl,none", "kl_stderr,none", "ppl,none", "ppl_stderr,none"}


def test_text_sources(tmp_path, monkeypatch):
    f = tmp_path / "texts.txt"
    f.write_text("one text here\n\n  second text  \nthird one\none text here\n", encoding="utf-8")
    src = TextSource(str(f), seed=0)
    texts = src.load()
    assert sorted(texts) == ["one text here", "second text", "third one"]  # non-empty, stripped, deduplicated
    assert src.load() == texts and src.load(2) == texts[:2]  # seeded order
    g = tmp_path / "many.txt"
    g.write_text("".join(f"text number {i}\n" for i in range(20)), encoding="utf-8")
    assert TextSource(str(g), seed=0).load() != TextSource(str(g), seed=1).load()  # the seed decides the order
    # a GoEmotions folder: neutral-only test texts with at least 3 words
    folder = tmp_path / "goemo"
    folder.mkdir()
    from steer_plugin.data.goemotions import LABELS

    (folder / "emotions.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    (folder / "test.tsv").write_text(
        "It rained today.\t27\ta\nToo short\t27\tb\nThis makes me mad.\t2\tc\nThe bus is late again.\t27,2\td\n"
        "The bus leaves at nine.\t27\te\n",
        encoding="utf-8",
    )
    assert sorted(TextSource(str(folder)).load()) == ["It rained today.", "The bus leaves at nine."]
    monkeypatch.setenv("STEER_GOEMOTIONS_DIR", str(folder))
    assert sorted(TextSource().load()) == ["It rained today.", "The bus leaves at nine."]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(SteerError, match="no neutral texts"):
        TextSource(str(empty)).load()
    with pytest.raises(SteerError, match="not a text file or a GoEmotions folder"):
        TextSource(str(tmp_path / "missing")).load()


# ---------------------------------------------------------------- the steer_fluency harness task


def test_steer_fluency_task_scores_the_same_texts_with_rolling_loglikelihood(tmp_path, monkeypatch, tiny_llama_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steer_plugin.data.goemotions import LABELS
    from steer_plugin.harness.tasks import tasks_dir

    folder = tmp_path / "goemo"
    folder.mkdir()
    (folder / "emotions.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    rows = [f"{CORPUS[i % 8]} ({i})\t27\tid{i}\n" for i in range(12)] + ["Angry words here!\t2\tx\n"]
    (folder / "test.tsv").write_text("".join(rows), encoding="utf-8")
    monkeypatch.setenv("STEER_GOEMOTIONS_DIR", str(folder))
    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False)
    assert "steer_fluency" in manager.all_tasks
    task = manager.load(["steer_fluency"])["tasks"]["steer_fluency"]
    docs = list(task.eval_docs)
    assert [d["text"] for d in docs] == TextSource().load(200)  # the sweep's side-effect texts, same order
    assert len(docs) == 12

    out = lm_eval.simple_evaluate(
        model="steered_hf",
        model_args=f"pretrained={tiny_llama_dir},dtype=float32,device=cpu,batch_size=4",
        tasks=["steer_fluency"],
        task_manager=manager,
        limit=3,
        verbosity="ERROR",
        bootstrap_iters=0,
    )
    got = out["results"]["steer_fluency"]["word_perplexity,none"]
    # reference: each text scored after the harness's rolling prefix token (BOS, else EOS), plain forward
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ll, words = 0.0, 0
    for d in docs[:3]:
        ids = tok(d["text"], add_special_tokens=False)["input_ids"]
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        inp = torch.tensor([[prefix, *ids[:-1]]])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=inp).logits[0].double(), -1)
        ll += float(lp[torch.arange(len(ids)), torch.tensor(ids)].sum())
        words += len(d["text"].split())
    assert got == pytest.approx(math.exp(-ll / words), rel=1e-4)


def test_a_cache_budget_below_all_batches_caches_the_first_ones_and_recomputes_the_rest():
    """A large vocabulary (Gemma-3: 1 MiB a token) fills the budget part way: the batches that fit are cached,
    the others recomputed, and the numbers are those of the whole cache."""
    model, tok = make_model("qwen2", n_layers=2, hidden=32, seed=2)
    torch.manual_seed(7)
    plan = make_plan([SteeringVector(torch.randn(2, 32))], [2.0], model, "model.layers")
    full = SideEffectProbe(model, tok, list(TEXTS), batch_size=2)
    want = full.measure(plan, "response")
    first = full._cache[0].numel() * 4
    part = SideEffectProbe(model, tok, list(TEXTS), batch_size=2, cache_bytes=first + full._cache[1].numel() * 4 - 1)
    got = part.measure(plan, "response")
    assert len(full._cache) > 2 and len(part._cache) == 1 and part.cached_bytes == first < full.cached_bytes
    assert got.kl == pytest.approx(want.kl, rel=1e-6) and got.ppl == pytest.approx(want.ppl, rel=1e-6)
    assert got.kl > 1e-3
