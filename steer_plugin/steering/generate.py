"""Baseline and steered generations side by side (what the original research scripts' generation step showed)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from steer_plugin.data.neutral_texts import TextSource
from steer_plugin.data.prompts import chat_template_errors, check_prompts, pad_batch, pad_id
from steer_plugin.errors import SteerError, check_count
from steer_plugin.io.terminal import printable
from steer_plugin.model.context import check_fits_context
from steer_plugin.model.hooks import Steerer, SteeringPlan, make_plan
from steer_plugin.model.layers import layer_ranges
from steer_plugin.model.positions import Positions, check_positions
from steer_plugin.steering.alphas import KLBudget
from steer_plugin.steering.budget_alphas import PathLike, resolve_alphas, vector_and_file
from steer_plugin.steering.defaults import DEFAULT_LAYERS, DEFAULT_POSITIONS
from steer_plugin.vectors.vector import SteeringVector


@dataclass
class GenerationSettings:
    max_new_tokens: int = 60
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    positions: Positions = DEFAULT_POSITIONS
    layers: str = DEFAULT_LAYERS
    batch_size: int = 8

    def __post_init__(self) -> None:
        """Every setting checked when it is made (before the model loads), never by ``generate`` mid-way."""
        check_count("--max-new-tokens", self.max_new_tokens)
        check_count("--batch-size", self.batch_size)
        check_count("--seed", self.seed, 0)
        if not 0 < self.top_p <= 1:
            raise SteerError(f"--top-p must be in (0, 1], got {self.top_p:g}")
        if self.do_sample and not (0 < self.temperature < math.inf):
            raise SteerError(
                f"--do-sample needs a --temperature > 0, got {self.temperature:g} (0 is greedy: drop --do-sample)"
            )
        check_positions(self.positions)
        layer_ranges(self.layers)


@dataclass
class Generation:
    prompt: str
    alpha: float
    text: str
    n_tokens: int


@dataclass
class GenerationRun:
    settings: GenerationSettings
    alphas: list[float]
    generations: list[Generation] = field(default_factory=list)
    kl_budgets: list[float | None] = field(default_factory=list)  # per alpha: the budget it was calibrated for

    def budget_of(self, alpha: float) -> float | None:
        return next((b for a, b in zip(self.alphas, self.kl_budgets) if a == alpha and b is not None), None)

    def to_json(self) -> dict[str, Any]:
        doc = {
            "settings": asdict(self.settings),
            "alphas": self.alphas,
            "generations": [asdict(g) for g in self.generations],
        }
        if any(b is not None for b in self.kl_budgets):  # plain alphas: the document of earlier versions
            doc["kl_budgets"] = self.kl_budgets
        return doc


def render_prompt(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if chat:
        with chat_template_errors():
            return list(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
                )["input_ids"]
            )
    return list(tokenizer(prompt)["input_ids"])


def generate_side_by_side(
    model: Any,
    tokenizer: Any,
    vector: SteeringVector | PathLike | None,
    prompts: Sequence[str],
    alphas: str | Sequence[float | str | KLBudget],
    settings: GenerationSettings,
    steerer: Steerer | None = None,
    *,
    texts: TextSource | None = None,
    model_name: str = "",
    progress: Callable[[str], None] | None = None,
) -> GenerationRun:
    """Generate every prompt at every alpha (alpha 0 = the unsteered model), batched per alpha.

    ``alphas`` may hold KL budgets (``kl:0.3``) when ``vector`` is the vector's file: each is the alpha calibrated
    for this model at ``settings``' layers and positions (stored beside the vector; calibrated on ``texts`` and
    stored when missing, with ``progress`` lines); the run's ``kl_budgets`` say which alpha came from which."""
    check_prompts(prompts)
    steerer = steerer or Steerer(model, "hooks")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if settings.chat and not has_template:
        raise SteerError("--chat on: the tokenizer has no chat template; use --chat auto or off")
    path, vec = vector_and_file(vector)
    resolved = resolve_alphas(
        model, tokenizer, path, alphas, layers=settings.layers, positions=settings.positions, texts=texts,
        model_name=model_name, steerer=steerer, progress=progress,
    )  # fmt: skip
    chat = settings.chat if settings.chat is not None else has_template
    encoded = [render_prompt(tokenizer, p, chat) for p in prompts]
    check_fits_context(model, max(len(e) for e in encoded), settings.max_new_tokens)
    pad = pad_id(tokenizer)
    device = model.get_input_embeddings().weight.device
    run = GenerationRun(settings, [r.alpha for r in resolved], kl_budgets=[r.kl_budget for r in resolved])
    for alpha in run.alphas:
        plan = (
            make_plan([vec], [alpha], model, steerer.block_path, settings.layers) if vec is not None else SteeringPlan()
        )
        torch.manual_seed(settings.seed)
        for start in range(0, len(prompts), settings.batch_size):
            batch = encoded[start : start + settings.batch_size]
            ids, mask, _ = pad_batch(batch, pad, "left")
            kwargs: dict[str, Any] = dict(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=settings.max_new_tokens,
                do_sample=settings.do_sample,
                pad_token_id=pad,
                use_cache=True,
            )
            if settings.do_sample:
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            where = "last" if settings.positions == "response" else None
            with torch.no_grad():
                out = steerer.generate(plan, where, **kwargs)
            for row, prompt in enumerate(prompts[start : start + settings.batch_size]):
                new = out[row, ids.shape[1] :].tolist()
                eos = tokenizer.eos_token_id
                if eos is not None and eos in new:
                    new = new[: new.index(eos)]
                text = tokenizer.decode(new, skip_special_tokens=True)
                run.generations.append(Generation(prompt, alpha, text, len(new)))
    return run


def format_run(run: GenerationRun) -> str:
    lines = []
    prompts = list(dict.fromkeys(g.prompt for g in run.generations))
    for p in prompts:
        lines.append(f"=== {printable(p)}")
        for g in run.generations:
            if g.prompt == p:
                budget = run.budget_of(g.alpha)
                label = "baseline" if g.alpha == 0 else f"alpha={g.alpha:g}"
                label += "" if budget is None else f" (kl:{budget:g})"
                lines.append(f"--- {label}:")
                # a model's tokens can decode to ESC & co.: shown escaped, newlines kept
                lines.append(printable(g.text.strip(), allow_newlines=True))
        lines.append("")
    return "\n".join(lines)
