"""How many positions a model takes: generating past them fails inside the model (an IndexError from a
learned position table) or leaves the range it was trained on, so it is refused first, as one line."""

from __future__ import annotations

from typing import Any

from steer_plugin.errors import SteerError

# the config fields that name the longest sequence, across architectures (Llama, GPT-2, BLOOM-likes, ...)
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def context_length(model: Any) -> int | None:
    """The most positions ``model`` takes, from its (text) config; None where the config does not say."""
    config: Any = getattr(model, "config", None)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in _CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_fits_context(model: Any, prompt_tokens: int, new_tokens: int, flag: str = "--max-new-tokens") -> None:
    """A one-line SteerError where the longest prompt and ``new_tokens`` more do not fit the model's positions."""
    limit = context_length(model)
    if limit is not None and prompt_tokens + new_tokens > limit:
        room = max(limit - prompt_tokens, 0)
        raise SteerError(
            f"{flag} {new_tokens} after a prompt of {prompt_tokens} tokens needs {prompt_tokens + new_tokens} "
            f"positions; the model takes {limit}: use {flag} {room} or less, or a shorter prompt"
        )
