"""Turning texts into token ids: prompt templates, padding, position ids."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from steer_plugin.data.goemotions import canonical_target
from steer_plugin.errors import SteerError


def check_prompts(prompts: Sequence[str]) -> list[str]:
    """Prompts to generate from or probe with: at least one, none empty (an empty one has no token to read)."""
    if not prompts:
        raise SteerError("give at least one prompt")
    empty = next((i for i, p in enumerate(prompts) if not str(p).strip()), None)
    if empty is not None:
        raise SteerError(f"prompt {empty + 1} is empty: give a text for the model to continue")
    return list(prompts)


@contextlib.contextmanager
def chat_template_errors() -> Iterator[None]:
    """A tokenizer's chat template that is not valid Jinja, as one line (not a TemplateSyntaxError traceback).
    Errors the template raises while rendering (a role it does not take) pass: callers may fall back."""
    from jinja2.exceptions import TemplateSyntaxError

    try:
        yield
    except TemplateSyntaxError as e:
        raise SteerError(f"the tokenizer's chat template is not valid Jinja (line {e.lineno}: {e.message})") from None


@dataclass(frozen=True)
class PromptTemplate:
    """``raw`` (the text as is), ``chat`` (a user turn in the model's chat template, ending with the
    assistant header, i.e. the position right before a response) or a format string with ``{text}``."""

    spec: str = "raw"

    def __post_init__(self) -> None:
        if self.spec not in ("raw", "chat") and "{text}" not in self.spec:
            raise SteerError(f"bad template {self.spec!r}: use 'raw', 'chat' or a format string containing {{text}}")

    def render(self, tokenizer: Any, text: str) -> tuple[str, bool]:
        """The string to tokenize and whether the tokenizer should add its special tokens."""
        if self.spec == "raw":
            return text, True
        if self.spec == "chat":
            if not getattr(tokenizer, "chat_template", None):
                raise SteerError("template 'chat' needs a tokenizer with a chat template; use 'raw'")
            with chat_template_errors():
                rendered = tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
                )
            return rendered, False
        return self.spec.replace("{text}", text), True


def encode(tokenizer: Any, texts: Sequence[str], template: PromptTemplate) -> list[list[int]]:
    out: list[list[int]] = []
    for text in texts:
        rendered, special = template.render(tokenizer, text)
        ids = tokenizer(rendered, add_special_tokens=special)["input_ids"]
        if not ids:
            raise SteerError(f"text {text[:40]!r} encodes to zero tokens")
        out.append(list(ids))
    return out


def pad_id(tokenizer: Any) -> int:
    """Any valid id works (pads are masked), so tokenizers without a pad token still batch."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id):
        if tid is not None:
            return int(tid)
    return 0


def pad_batch(seqs: Sequence[Sequence[int]], pad: int, side: str = "right"):
    """(input_ids, attention_mask, position_ids) as long tensors.

    Position ids count real tokens only, so a left-padded row sees the same positions as unpadded.
    """
    import torch

    if side not in ("left", "right"):
        raise SteerError(f"padding side must be 'left' or 'right', not {side!r}")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        else:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def last_token_index(mask):
    """Index of the last real (mask == 1) token in each row, for either padding side."""
    width = mask.shape[1]
    return width - 1 - mask.flip(1).argmax(1)


# The prompting reference of `steer run` (a positive control): *asking* for the emotion instead of steering.
# Chat models get it as the system message; base models as a prefix before the prompt, a blank line between.
EMOTION_INSTRUCTION = "You are feeling intense {emotion}. Let it show in every sentence of your answer."
INSTRUCTION_DELIMITER = (
    "\n\n"  # what the harness puts between a system instruction and the prompt without a chat template
)


def emotion_instruction(target: str) -> str:
    """The instruction that asks for ``target`` (a GoEmotions label or ``ekman:<group>``: the group's name)."""
    return EMOTION_INSTRUCTION.format(emotion=canonical_target(target).removeprefix("ekman:"))
