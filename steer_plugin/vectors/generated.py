"""The generated source: the model's own answers to neutral prompts, asked for an emotion and asked to stay neutral.

Each prompt (``data.generated``) is answered greedily twice: after ``emotion_instruction(emotion)`` and after
``NEUTRAL_INSTRUCTION`` (the system message where the tokenizer has a chat template, a plain-text prefix where
it has none). The answers are then recorded read after the *same* prompt without any instruction, pooled over
the response tokens only. Persona-vector practice records a response in the context that produced it, but
there the instruction differs between the arms too and its trace in the response states enters the vector;
read after the bare prompt, the two classes differ in nothing but the response text.

A prompt whose answer has no words in either arm is dropped from both (the arms stay paired), and counted.
Responses are recorded re-tokenised from their decoded text, so the texts file kept beside the vector
(``texts_path``) is all it takes to recompute the vector.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from steer_plugin.data.generated import (
    NEUTRAL_INSTRUCTION,
    PROMPTS_FILE,
    answer_context,
    load_generation_prompts,
    prompts_sha256,
    sample_prompts,
)
from steer_plugin.data.prompts import emotion_instruction, pad_batch, pad_id
from steer_plugin.data.text_quality import has_words
from steer_plugin.errors import SteerError, check_count
from steer_plugin.model.context import check_fits_context
from steer_plugin.vectors.metadata import Pool
from steer_plugin.vectors.record import RecordItem, record_hidden_states
from steer_plugin.vectors.stats import HiddenStateStats

DEFAULT_MAX_NEW_TOKENS = 48


@dataclass
class GeneratedText:
    """One answer: to ``prompt``, in ``arm`` (the class it counts for: the emotion or ``neutral``)."""

    prompt: str
    arm: str
    instruction: str
    response: str
    used: bool  # False: the prompt was dropped (an answer without words in one of the arms)


def texts_path(vector_path: str | os.PathLike) -> Path:
    """Where a generated vector's texts live: ``<vector>.texts.jsonl`` beside it."""
    return Path(vector_path).with_suffix(".texts.jsonl")


def texts_jsonl(texts: Sequence[GeneratedText]) -> str:
    return "".join(json.dumps(asdict(t), ensure_ascii=False) + "\n" for t in texts)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a response: the generation config may list several (Llama 3's <|eot_id|>)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {int(i) for i in ids if i is not None}


def generate_responses(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
    bar: Any = None,
) -> list[str]:
    """Greedy answers to each context (token ids), batched (left padding, longest first), cut at the first EOS."""
    pad = pad_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    device = model.get_input_embeddings().weight.device
    check_fits_context(model, max((len(c) for c in contexts), default=0), max_new_tokens)
    order = sorted(range(len(contexts)), key=lambda i: (-len(contexts[i]), i))
    out: dict[int, str] = {}
    for begin in range(0, len(order), batch_size):
        idx = order[begin : begin + batch_size]
        ids, mask, _ = pad_batch([contexts[i] for i in idx], pad, "left")
        with torch.no_grad():
            generated = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
            )
        for row, i in enumerate(idx):
            new = generated[row, ids.shape[1] :].tolist()
            end = next((k for k, t in enumerate(new) if t in eos), len(new))
            out[i] = tokenizer.decode(new[:end], skip_special_tokens=True)
        if bar is not None:
            bar.update(len(idx))
    return [out[i] for i in range(len(contexts))]


def record_generated(
    model: Any,
    tokenizer: Any,
    emotion: str,
    *,
    baseline: str = "neutral",
    prompts_file: str | os.PathLike = PROMPTS_FILE,
    max_prompts: int | None = None,
    seed: int = 0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    pool: Pool = "mean",
    batch_size: int = 8,
    padding_side: str | None = None,
    blocks: str | None = None,
    progress: bool = True,
    save_activations: str | os.PathLike | None = None,
    activation_dtype: str = "float16",
    metadata: dict[str, Any] | None = None,
) -> tuple[HiddenStateStats, list[GeneratedText]]:
    """Statistics of ``emotion`` (answers asked for it) and ``baseline`` (answers asked to stay neutral).

    Args:
        model: a transformers causal LM (any device and dtype).
        tokenizer: its tokenizer; its chat template (if any) formats the prompts.
        emotion: the emotion class (a GoEmotions label or ``ekman:<group>``, already canonical).
        baseline: the name of the neutral arm's class.
        prompts_file: the prompts, one a line (default: the shipped ``data/generation_prompts.txt``).
        max_prompts: a seeded sample (``seed``) of at most this many prompts; None: all.
        seed: the seed of that sample and of generation (greedy: it only matters to sampling code paths).
        max_new_tokens: the length limit of each answer.
        pool: ``mean`` (over the response tokens) or ``last`` (the response's last token).
        batch_size: prompts per generate call and texts per recorded forward pass.
        padding_side, blocks, progress, save_activations, activation_dtype: as ``record_hidden_states``.
        metadata: extra metadata for the statistics.

    Returns:
        The statistics (metadata ``text_source=generated``, ``generation``: prompts, hash, drops, instructions) and
        every answer, used or dropped, in prompt order, the emotion arm's first.
    """
    check_count("--max-new-tokens", max_new_tokens)
    check_count("--batch-size", batch_size)
    prompts = sample_prompts(load_generation_prompts(prompts_file), max_prompts, seed)
    chat = bool(getattr(tokenizer, "chat_template", None))
    arms = {emotion: emotion_instruction(emotion), baseline: NEUTRAL_INSTRUCTION}
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    with tqdm(total=2 * len(prompts), unit="answer", desc="generating", disable=not progress) as bar:
        answers = {
            arm: generate_responses(
                model,
                tokenizer,
                [answer_context(tokenizer, p, instruction, chat=chat) for p in prompts],
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                bar=bar,
            )
            for arm, instruction in arms.items()
        }
    used = [all(has_words(answers[arm][i]) for arm in arms) for i in range(len(prompts))]
    if not any(used):
        raise SteerError(f"no prompt got an answer with words in both arms ({len(prompts)} prompts)")
    texts = [
        GeneratedText(p, arm, instruction, answers[arm][i], used[i])
        for arm, instruction in arms.items()
        for i, p in enumerate(prompts)
    ]
    items = []
    for i, prompt in enumerate(prompts):
        if not used[i]:
            continue
        context = answer_context(tokenizer, prompt, chat=chat)  # the bare prompt: the arms differ only in the answer
        for arm in arms:
            response = list(tokenizer(answers[arm][i], add_special_tokens=False)["input_ids"])
            items.append(RecordItem(answers[arm][i], (arm,), start=len(context), ids=tuple(context + response)))
    generation = {
        "prompts_file": Path(prompts_file).name,
        "prompts_sha256": prompts_sha256(prompts_file),
        "n_prompts": len(prompts),
        "dropped_prompts": len(prompts) - sum(used),
        "max_new_tokens": max_new_tokens,
        "chat_template": chat,
        "instruction": arms[emotion],
        "neutral_instruction": NEUTRAL_INSTRUCTION,
        "recorded_after": "the prompt without an instruction",
    }
    stats = record_hidden_states(
        model,
        tokenizer,
        items,
        batch_size=batch_size,
        template="chat" if chat else "raw",  # what formatted the prompts (the items come encoded)
        padding_side=padding_side,
        blocks=blocks,
        progress=progress,
        save_activations=save_activations,
        activation_dtype=activation_dtype,
        metadata={**(metadata or {}), "text_source": "generated", "generation": generation},
        pool=pool,
    )
    return stats, texts
