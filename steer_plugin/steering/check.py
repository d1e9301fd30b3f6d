"""`steer check`: does steering reach the residual stream where we think it does?

For each layer, steer only that layer and compare what the next module receives with and without
steering: the change must be exactly ``alpha x row`` at every steered position (cosine 1, norm ratio 1;
``positions=response`` steers each prompt's last token, as in generation, and the positions before it must not
change at all). Then steer all the chosen layers (effect on the next-token distribution), check that alpha=0
reproduces the unsteered logits bit for bit, that both backends agree, and that no hooks are left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from steer_plugin.data.neutral_texts import TextSource
from steer_plugin.data.prompts import check_prompts, pad_batch, pad_id
from steer_plugin.errors import SteerError
from steer_plugin.io.terminal import printable
from steer_plugin.io.text_table import format_table, number_cell
from steer_plugin.model.hooks import Steerer, make_plan
from steer_plugin.model.layers import parse_layers
from steer_plugin.model.loading import resolve_module
from steer_plugin.model.positions import Positions, check_positions
from steer_plugin.steering.alphas import KLBudget
from steer_plugin.steering.budget_alphas import PathLike, resolve_alphas, vector_and_file
from steer_plugin.steering.defaults import DEFAULT_LAYERS, DEFAULT_POSITIONS
from steer_plugin.vectors.vector import SteeringVector

FINAL_NORMS = ("norm", "final_layernorm", "ln_f", "final_layer_norm", "decoder.final_layer_norm")
COS_TOL = 1e-4
RATIO_TOL = 1e-3


@dataclass
class LayerCheck:
    layer: int
    row_norm: float
    cosine: float | None  # min over positions of cos(change received downstream, alpha x row)
    norm_ratio: float | None  # |change| / |alpha x row|, worst position
    kl_next_token: float  # KL(unsteered || steered) of the last position's next-token distribution
    ok: bool
    relative_strength: float | None = None  # ||alpha x row|| / RMS||h|| (RMS recorded at build time)


@dataclass
class CheckReport:
    model: str
    alpha: float
    layers: list[LayerCheck] = field(default_factory=list)
    all_layers_kl: float = 0.0
    all_layers_top1_changed: int = 0
    alpha0_exact: bool = False
    backends_agree: bool = False
    backend_max_diff: float = 0.0
    hooks_left: int = 0
    positions: Positions = "all"
    kl_budget: float | None = None  # the budget ``alpha`` was calibrated for, if it was given as one

    @property
    def ok(self) -> bool:
        return all(l.ok for l in self.layers) and self.alpha0_exact and self.backends_agree and self.hooks_left == 0

    def to_json(self) -> dict[str, Any]:
        doc = {**asdict(self), "ok": self.ok}
        if self.kl_budget is None:  # a plain alpha at all positions: the document of earlier versions
            del doc["kl_budget"]
        if self.positions == "all":
            del doc["positions"]
        return doc


def _downstream_module(model: Any, block_path: str, blocks: Any, layer: int) -> Any | None:
    if layer + 1 < len(blocks):
        return blocks[layer + 1]
    base = block_path.rsplit(".", 1)[0]
    for name in FINAL_NORMS:
        try:
            return resolve_module(model, f"{base}.{name}" if base else name)
        except AttributeError:
            continue
    return None


def _capture_input(module: Any, store: list) -> Any:
    def pre_hook(mod: Any, args: tuple, kwargs: dict) -> None:
        h = args[0] if args else kwargs["hidden_states"]
        store.append(h.detach().clone())

    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    p = torch.log_softmax(p_logits.double(), -1)
    q = torch.log_softmax(q_logits.double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def _received(
    change: torch.Tensor, delta: torch.Tensor, steered: torch.Tensor, real: torch.Tensor
) -> tuple[float, float, bool]:
    """(worst cosine, worst norm ratio) of the change received vs ``delta`` at the steered positions, and whether
    the other real positions (before the steered token) received nothing at all."""
    change, d = change.float().cpu(), delta.float()
    at = change[steered]  # [n_steered_tokens, H]
    cos = float(torch.nn.functional.cosine_similarity(at, d[None], dim=-1).min())
    ratios = at.norm(dim=-1) / d.norm()
    return cos, float(ratios[(ratios - 1).abs().argmax()]), not bool(change[real & ~steered].any())


def run_check(
    model: Any,
    tokenizer: Any,
    vector: SteeringVector | PathLike,
    prompts: list[str],
    alpha: float | str | KLBudget = 1.0,
    layers: str = DEFAULT_LAYERS,
    blocks: str | None = None,
    name: str = "",
    *,
    positions: Positions = DEFAULT_POSITIONS,
    texts: TextSource | None = None,
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """Check ``alpha x vector`` at ``layers`` and ``positions`` on the prompts (see the module's docstring).

    ``alpha`` may be a KL budget (``kl:0.3``) when ``vector`` is the vector's file: the alpha calibrated for this
    model at these layers and positions (stored beside the vector; calibrated on ``texts`` and stored when
    missing, with ``progress`` lines)."""

    def n_hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    check_prompts(prompts)
    check_positions(positions)
    hooks_before = n_hooks()
    hooks_steerer = Steerer(model, "hooks", blocks)
    nn_steerer = Steerer(model, "nnsight", blocks)
    blk = hooks_steerer.blocks
    path, vec = vector_and_file(vector)
    assert vec is not None
    resolved = resolve_alphas(
        model, tokenizer, path, [alpha], layers=layers, positions=positions, texts=texts, model_name=name,
        steerer=hooks_steerer, progress=progress,
    )  # fmt: skip
    if len(resolved) != 1:
        raise SteerError(f"steer check takes one alpha, got {alpha!r}")
    ids, mask, _pos = pad_batch([tokenizer(p)["input_ids"] for p in prompts], pad_id(tokenizer), "right")
    device = model.get_input_embeddings().weight.device
    inputs = dict(input_ids=ids.to(device), attention_mask=mask.to(device))
    real = mask.bool()
    last = mask.sum(1) - 1
    rows = torch.arange(len(prompts))
    # response: each prompt's last token (right padding: not the batch's last column)
    where = None if positions == "all" else torch.zeros_like(real).index_put_((rows, last), torch.tensor(True))
    steered_at = real if where is None else where
    report = CheckReport(name, resolved[0].alpha, positions=positions, kl_budget=resolved[0].kl_budget)
    with torch.no_grad():
        base = model(**inputs).logits
        for l in parse_layers(layers, len(blk)):
            plan = make_plan([vec], [report.alpha], model, hooks_steerer.block_path, [l])
            delta = report.alpha * vec.matrix[l]
            target = _downstream_module(model, hooks_steerer.block_path, blk, l)
            seen: list[torch.Tensor] = []
            cos: float | None = None
            ratio: float | None = None
            handle = _capture_input(target, seen) if target is not None else None
            try:
                model(**inputs)
                steered = hooks_steerer.forward(plan, where, **inputs).logits
            finally:
                if handle:
                    handle.remove()
            untouched = True
            if len(seen) == 2 and float(delta.norm()) > 0:
                cos, ratio, untouched = _received(seen[1] - seen[0], delta, steered_at, real)
            ok = float(delta.norm()) == 0 or (
                cos is not None and ratio is not None and cos > 1 - COS_TOL and abs(ratio - 1) < RATIO_TOL and untouched
            )
            kl = _kl(base[rows, last], steered[rows, last])
            rel = vec.relative_strength(report.alpha, [l]).get(l)
            report.layers.append(LayerCheck(l, float(vec.matrix[l].norm()), cos, ratio, kl, ok, rel))
        all_plan = make_plan([vec], [report.alpha], model, hooks_steerer.block_path, layers)
        by_hooks = hooks_steerer.forward(all_plan, where, **inputs).logits
        by_nnsight = nn_steerer.forward(all_plan, where, **inputs).logits
        report.all_layers_kl = _kl(base[rows, last], by_hooks[rows, last])
        report.all_layers_top1_changed = int((base[rows, last].argmax(-1) != by_hooks[rows, last].argmax(-1)).sum())
        report.backend_max_diff = float((by_hooks - by_nnsight).abs().max())
        report.backends_agree = report.backend_max_diff <= 1e-5
        zero_plan = make_plan([vec], [0.0], model, hooks_steerer.block_path, layers)
        zero = [s.forward(zero_plan, where, **inputs).logits for s in (hooks_steerer, nn_steerer)]
        report.alpha0_exact = all(torch.equal(z, base) for z in zero)
    report.hooks_left = n_hooks() - hooks_before
    return report


def format_report(report: CheckReport) -> str:
    header = ("layer", "|row|", "cos(change, alpha*row)", "|change|/|alpha*row|", "KL next token", "ok",
              "rel. strength")  # fmt: skip
    rows = [
        (l.layer, number_cell(l.row_norm, ".3f"), number_cell(l.cosine, ".6f"), number_cell(l.norm_ratio, ".6f"),
         f"{l.kl_next_token:.3e}", "yes" if l.ok else "NO", number_cell(l.relative_strength, ".4g"))
        for l in report.layers
    ]  # fmt: skip
    lines = [
        f"steer check: {printable(report.model)}  alpha={report.alpha:g}"
        + ("" if report.kl_budget is None else f" (kl:{report.kl_budget:g})")
        + ("" if report.positions == "all" else f"  positions={report.positions}"),
        "",
        format_table(header, rows, right=[True] * len(header)),
        "",
        f"all layers steered: KL(next token) = {report.all_layers_kl:.3e}, "
        f"top-1 token changed for {report.all_layers_top1_changed} prompt(s)",
        f"alpha=0 reproduces the unsteered logits exactly: {'yes' if report.alpha0_exact else 'NO'}",
        f"nnsight and hooks backends agree: {'yes' if report.backends_agree else 'NO'} "
        f"(max |diff| {report.backend_max_diff:.2e})",
        f"hooks left on the model: {report.hooks_left}",
        "rel. strength = ||alpha x row|| / RMS||h|| of that layer's residual stream (recorded at build time)",
        f"RESULT: {'PASS' if report.ok else 'FAIL'}",
    ]
    return "\n".join(lines)
