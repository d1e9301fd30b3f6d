"""The generated source (`steer build --source generated`): its prompts are disjoint from every evaluation
text, its answers are greedy generations after the emotion / neutral instruction, and its vector is the
difference of the two arms' mean response states, recomputed here from the saved texts with plain forward hooks."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from steer_plugin.cli import main
from steer_plugin.data.generated import PROMPTS_FILE, load_generation_prompts
from steer_plugin.data.goemotions import LABELS, load_goemotions
from steer_plugin.errors import SteerError
from steer_plugin.vectors.generated import generate_responses, record_generated
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.tiny import hook_block_states

ROOT = Path(__file__).resolve().parents[2]
EVALUATION_PROMPTS = ROOT / "lm_eval_tasks" / "steer_emotion" / "neutral_prompts.jsonl"
ANGER = "You are feeling intense anger. Let it show in every sentence of your answer."
NEUTRAL = "You are feeling calm and neutral. Keep every sentence of your answer plain and matter-of-fact."
TOL = 1e-5


def normalised(text: str) -> str:
    return " ".join(text.lower().split())


def has_words(text: str) -> bool:  # written again here: two letters in a row, any script
    return re.search(r"[^\W\d_]{2,}", text) is not None


# ---------------------------------------------------------------- the prompts


def test_prompts_are_many_distinct_neutral_and_not_evaluation_prompts():
    prompts = load_generation_prompts()
    lines = PROMPTS_FILE.read_text(encoding="utf-8").splitlines()
    assert prompts == [line.strip() for line in lines if line.strip()]
    assert 64 <= len(prompts) <= 128
    assert len({normalised(p) for p in prompts}) == len(prompts)
    evaluation = [json.loads(line)["prompt"] for line in EVALUATION_PROMPTS.open(encoding="utf-8") if line.strip()]
    assert len(evaluation) >= 100
    assert not set(prompts) & set(evaluation)
    assert not {normalised(p) for p in prompts} & {normalised(e) for e in evaluation}
    emotion_words = set(LABELS) - {"neutral"} | {"angry", "happy", "sad", "afraid", "hate", "excited", "calm"}
    for p in prompts:
        assert not set(re.findall(r"[a-z]+", p.lower())) & emotion_words, p


def test_prompts_are_not_goemotions_test_texts(shared):
    """The continuation task reads GoEmotions' test split: no prompt is one of its texts."""
    texts = {normalised(ex.text) for ex in load_goemotions("test", shared / "data" / "goemotions")}
    assert len(texts) > 5000
    assert not {normalised(p) for p in load_generation_prompts()} & texts


# ---------------------------------------------------------------- generation and the vector


def _context(tok, prompt: str, instruction: str | None, chat: bool) -> list[int]:
    """The reference formatting: the system message in the chat template, else a plain-text prefix."""
    if not chat:
        return tok(prompt if instruction is None else f"{instruction}\n\n{prompt}")["input_ids"]
    messages = ([{"role": "system", "content": instruction}] if instruction else []) + [
        {"role": "user", "content": prompt}
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def _greedy_alone(model, tok, ids: list[int], max_new_tokens: int) -> str:
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )[0, len(ids) :].tolist()
    if tok.eos_token_id in out:
        out = out[: out.index(tok.eos_token_id)]
    return tok.decode(out, skip_special_tokens=True)


def _reference_vector(model, tok, rows: list[dict], chat: bool) -> np.ndarray:
    """mean(anger) - mean(neutral) of the response tokens' block outputs, each answer read alone after the
    bare prompt (no instruction), from the texts file's used rows."""
    states: dict[str, list[np.ndarray]] = {"anger": [], "neutral": []}
    for r in (r for r in rows if r["used"]):
        context = _context(tok, r["prompt"], None, chat)
        response = tok(r["response"], add_special_tokens=False)["input_ids"]
        states[r["arm"]].append(hook_block_states(model, context + response)[len(context) :].mean(0))
    return np.mean(states["anger"], axis=0) - np.mean(states["neutral"], axis=0)


@pytest.mark.parametrize("chat", [True, False])
def test_steer_build_generated_end_to_end(chat, tiny_chat_llama_dir, tiny_llama_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_chat_llama_dir if chat else tiny_llama_dir
    monkeypatch.chdir(tmp_path)  # the default output path: vectors/<model>/anger-mean-generated.safetensors
    argv = ["build", "--model", folder, "--emotion", "anger", "--source", "generated", "--max-per-class", "6",
            "--max-new-tokens", "10", "--batch-size", "4", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    (out,) = (tmp_path / "vectors").rglob("*.safetensors")
    assert out.name == "anger-mean-generated.safetensors"
    rows = [json.loads(line) for line in out.with_suffix(".texts.jsonl").read_text(encoding="utf-8").splitlines()]
    shipped = load_generation_prompts()
    prompts = [r["prompt"] for r in rows if r["arm"] == "anger"]
    assert len(prompts) == 6 and [r["prompt"] for r in rows if r["arm"] == "neutral"] == prompts
    assert prompts == [p for p in shipped if p in prompts]  # a sample of the shipped prompts, in their order
    assert {(r["arm"], r["instruction"]) for r in rows} == {("anger", ANGER), ("neutral", NEUTRAL)}

    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert bool(tok.chat_template) == chat
    for r in rows:  # each answer: greedy after its instruction, generated alone
        assert r["response"] == _greedy_alone(model, tok, _context(tok, r["prompt"], r["instruction"], chat), 10), r
    answers = {(r["arm"], r["prompt"]): r["response"] for r in rows}
    assert any(answers["anger", p] != answers["neutral", p] for p in prompts)  # the instruction made a difference
    used = [p for p in prompts if has_words(answers["anger", p]) and has_words(answers["neutral", p])]
    assert used and all(r["used"] == (r["prompt"] in used) for r in rows)

    vec = SteeringVector.load(out)
    m = vec.metadata
    assert (m["text_source"], m["pool"], m["emotion"], m["baseline"], m["method"]) == (
        "generated", "mean", "anger", "neutral", "mean"
    )  # fmt: skip
    assert m["counts"] == {"anger": len(used), "neutral": len(used)}
    g = m["generation"]
    assert g["prompts_sha256"] == hashlib.sha256(PROMPTS_FILE.read_bytes()).hexdigest()
    assert (g["n_prompts"], g["dropped_prompts"], g["max_new_tokens"]) == (6, 6 - len(used), 10)
    assert (g["instruction"], g["neutral_instruction"], g["chat_template"]) == (ANGER, NEUTRAL, chat)
    assert m["template"] == ("chat" if chat else "raw")
    np.testing.assert_allclose(vec.matrix.numpy(), _reference_vector(model, tok, rows, chat), atol=TOL, rtol=0)


def test_answers_without_words_drop_their_prompt_from_both_arms(tiny_llama_dir, tmp_path):
    """Two-token answers: many have no words; their prompts leave both classes, and are counted."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"{p}\n" for p in load_generation_prompts()[:40]), encoding="utf-8")
    stats, texts = record_generated(model, tok, "anger", prompts_file=prompts, max_new_tokens=2, progress=False)
    by_prompt: dict[str, list[str]] = {}
    for t in texts:
        by_prompt.setdefault(t.prompt, []).append(t.response)
    used = [p for p, answers in by_prompt.items() if all(has_words(a) for a in answers)]
    assert 0 < len(used) < 40, "the test needs both kinds"
    assert all(t.used == (t.prompt in used) for t in texts)
    assert stats.counts() == {"anger": len(used), "neutral": len(used)}
    assert stats.metadata["generation"]["dropped_prompts"] == 40 - len(used)
    assert stats.metadata["generation"]["prompts_file"] == "prompts.txt"


def test_batched_generation_equals_one_prompt_at_a_time(tiny_chat_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_chat_llama_dir)
    contexts = [_context(tok, p, ANGER, True) for p in load_generation_prompts()[:7]]
    assert len({len(c) for c in contexts}) > 2  # padded batches
    got = generate_responses(model, tok, contexts, max_new_tokens=8, batch_size=3)
    assert got == [_greedy_alone(model, tok, c, 8) for c in contexts]


def test_pca_and_neutral_pcs_on_the_generated_source(tiny_chat_llama_dir, tmp_path, monkeypatch):
    """`--source generated --method pca --neutral-pcs 1`: the first component of the paired response-state
    differences (rows in the texts file's order, the documented pairing), the top neutral component projected
    out, at the mean difference's norm; the default name spells the whole recipe."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    argv = ["build", "--model", tiny_chat_llama_dir, "--emotion", "anger", "--source", "generated", "--method", "pca",
            "--neutral-pcs", "1", "--seed", "3", "--max-per-class", "6", "--max-new-tokens", "8", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    (out,) = (tmp_path / "vectors").rglob("*.safetensors")
    assert out.name == "anger-pca-npc1-generated.safetensors" and out.with_suffix(".texts.jsonl").is_file()
    rows = [json.loads(line) for line in out.with_suffix(".texts.jsonl").read_text(encoding="utf-8").splitlines()]
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_llama_dir)
    tok = AutoTokenizer.from_pretrained(tiny_chat_llama_dir)
    states: dict[str, list[np.ndarray]] = {"anger": [], "neutral": []}
    for r in (r for r in rows if r["used"]):
        context = _context(tok, r["prompt"], None, True)
        response = tok(r["response"], add_special_tokens=False)["input_ids"]
        states[r["arm"]].append(hook_block_states(model, context + response)[len(context) :].mean(0))
    anger, neutral = np.stack(states["anger"]), np.stack(states["neutral"])
    rng = np.random.default_rng(3)
    t, b = rng.permutation(len(anger)), rng.permutation(len(neutral))
    diffs = anger[t] - neutral[b]  # the arms have one answer per used prompt each
    got = SteeringVector.load(out)
    for layer in range(got.n_layers):
        u = np.linalg.svd(diffs[:, layer], full_matrices=False)[2][0]
        mean_diff = anger[:, layer].mean(0) - neutral[:, layer].mean(0)
        u = u if u @ mean_diff > 0 else -u
        u *= np.linalg.norm(mean_diff) / np.linalg.norm(u)
        pc = np.linalg.svd(neutral[:, layer] - neutral[:, layer].mean(0), full_matrices=False)[2][0]
        want = u - (u @ pc) * pc
        np.testing.assert_allclose(got.matrix[layer].numpy(), want, atol=1e-4, rtol=0)
    m = got.metadata
    assert (m["text_source"], m["pool"], m["method"], m["neutral_pcs"], m["pair_seed"]) == (
        "generated", "mean", "pca", 1, 3
    )  # fmt: skip


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--source", "wiki"], "unknown --source 'wiki'; use one of goemotions, generated"),
        (["--pool", "max"], "unknown --pool 'max'; use one of last, mean"),
        (["--source", "generated", "--pool", "first"], "unknown --pool 'first'"),
        (["--max-new-tokens", "5"], "--max-new-tokens only applies to --source generated"),
        (["--source", "generated", "--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
        (["--source", "generated", "--baseline", "joy"], "contrasts with neutral answers"),
        (["--source", "generated", "--template", "chat"], "--template formats GoEmotions texts"),
        (["--source", "generated", "--centre", "emotions"], "--centre emotions averages the 27 emotions' GoEmotions"),
    ],
)
def test_bad_source_and_pool_are_one_line_errors(extra, message, tiny_llama_dir, tmp_path, capsys):
    argv = ["build", "--model", tiny_llama_dir, "--emotion", "anger", "--out", str(tmp_path / "v.safetensors")]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "v.safetensors").exists()


def test_bad_pool_for_record_and_source_with_stats(tiny_llama_dir, tmp_path, capsys, stats_file_for_build):
    assert main(["record", "--model", tiny_llama_dir, "--emotion", "anger", "--pool", "max", "--out",
                 str(tmp_path / "s.safetensors")]) == 2  # fmt: skip
    assert "unknown --pool 'max'" in capsys.readouterr().err
    assert main(["build", "--stats", str(stats_file_for_build), "--source", "generated"]) == 2
    assert "a --stats file has its own" in capsys.readouterr().err
    assert main(["build", "--model", tiny_llama_dir, "--emotion", "all", "--source", "generated"]) == 2
    assert "one emotion at a time" in capsys.readouterr().err
    with pytest.raises(SteerError, match="no prompts"):
        (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
        load_generation_prompts(tmp_path / "empty.txt")


def test_answers_past_the_model_s_positions_are_one_line(tiny_llama_dir):
    """`--source generated` with answers longer than the model's positions: refused before generating."""
    from steer_plugin.model.loading import ModelOptions

    loaded = ModelOptions(tiny_llama_dir).load()
    with pytest.raises(SteerError, match="the model takes 512"):
        generate_responses(loaded.model, loaded.tokenizer, [[1, 5, 6]], max_new_tokens=600, batch_size=1)
