"""`steer generate`'s library side: what the model cannot do is one line, not a traceback from inside it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from steer_plugin.errors import SteerError
from steer_plugin.steering.generate import GenerationSettings, generate_side_by_side, render_prompt
from steer_plugin.vectors.vector import SteeringVector
from tests.helpers.tiny import make_config, make_tokenizer


def test_generating_past_the_model_s_positions_is_one_line_before_generating():
    """A 32-position GPT-2 (learned positions): 400 new tokens raised IndexError from inside the model."""
    tok = make_tokenizer()
    config = make_config("gpt2", len(tok))
    config.n_positions = 32
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    vec = SteeringVector(torch.zeros(3, 32), {"emotion": "anger"})
    settings = GenerationSettings(max_new_tokens=400, chat=False)
    with pytest.raises(SteerError, match=r"--max-new-tokens 400 after a prompt of \d+ tokens needs \d+ positions; "
                       r"the model takes 32: use --max-new-tokens \d+ or less"):  # fmt: skip
        generate_side_by_side(model, tok, vec, ["Tell me about yourself."], [0.0], settings)
    fits = GenerationSettings(max_new_tokens=4, chat=False)
    run = generate_side_by_side(model, tok, vec, ["Tell me about yourself."], [0.0], fits)
    assert len(run.generations) == 1


def test_an_invalid_chat_template_is_one_line():
    tok = make_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }"  # the closing brace is missing
    with pytest.raises(SteerError, match=r"the tokenizer's chat template is not valid Jinja \(line 1: "):
        render_prompt(tok, "Hello", chat=True)
