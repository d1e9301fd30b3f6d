"""The prompts and instructions of the generated source: everyday neutral questions that the model answers
twice, once asked for an emotion and once asked to stay neutral (``vectors.generated`` records the answers).

The prompts (``generation_prompts.txt``, one a line, shipped in the package) are disjoint from the
steer_emotion tasks' evaluation prompts and from the continuation task's GoEmotions texts
(tests/vectors/test_generated.py checks both), so a vector is never evaluated on the prompts it was built from.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from steer_plugin.data.prompts import INSTRUCTION_DELIMITER, PromptTemplate, chat_template_errors, encode
from steer_plugin.errors import SteerError
from steer_plugin.io.reading import read_regular_bytes, read_regular_text

PROMPTS_FILE = Path(__file__).with_name("generation_prompts.txt")
# the neutral arm's counterpart of prompts.EMOTION_INSTRUCTION: same shape, asking for no emotion at all
NEUTRAL_INSTRUCTION = "You are feeling calm and neutral. Keep every sentence of your answer plain and matter-of-fact."


def load_generation_prompts(path: str | os.PathLike = PROMPTS_FILE) -> list[str]:
    """The prompts, in file order (blank lines skipped)."""
    try:
        lines = read_regular_text(path).splitlines()
    except OSError as e:
        raise SteerError(f"cannot read the prompts file {path}: {e.strerror or e}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise SteerError(f"the prompts file {path} has no prompts")
    return prompts


def prompts_sha256(path: str | os.PathLike = PROMPTS_FILE) -> str:
    return hashlib.sha256(read_regular_bytes(path)).hexdigest()


def sample_prompts(prompts: Sequence[str], n: int | None, seed: int) -> list[str]:
    """A seeded sample of at most ``n`` prompts, in their original order (None: all)."""
    if n is None or n >= len(prompts):
        return list(prompts)
    keep = sorted(random.Random(seed).sample(range(len(prompts)), n))
    return [prompts[i] for i in keep]


def answer_context(tokenizer: Any, prompt: str, instruction: str | None = None, *, chat: bool) -> list[int]:
    """The token ids a response to ``prompt`` follows, as the prompting reference formats them: with a chat
    template, ``instruction`` is the system message and ``prompt`` the user turn, ending with the assistant
    header; without one, ``instruction``, a blank line, then ``prompt`` (the harness's system_instruction)."""
    if not chat:
        text = prompt if instruction is None else instruction + INSTRUCTION_DELIMITER + prompt
        return encode(tokenizer, [text], PromptTemplate("raw"))[0]
    if instruction is None:
        return encode(tokenizer, [prompt], PromptTemplate("chat"))[0]
    from jinja2.exceptions import TemplateError

    messages = [{"role": "system", "content": instruction}, {"role": "user", "content": prompt}]
    try:
        with chat_template_errors():
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TemplateError:
        # a template without a system role (Gemma's raises): the instruction opens the user turn. (lm-eval drops
        # the system message there, which would make the two arms the same prompt.)
        return encode(tokenizer, [instruction + INSTRUCTION_DELIMITER + prompt], PromptTemplate("chat"))[0]
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
