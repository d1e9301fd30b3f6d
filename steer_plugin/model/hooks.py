"""Adding ``alpha x vector`` to the residual stream (the output of decoder blocks).

Two interchangeable backends with the same math: ``hooks`` (plain PyTorch forward hooks) and
``nnsight`` (interventions in an nnsight trace). Where to add, per forward pass:

* ``None``   - every position (``positions=all``);
* ``"last"`` - ``hidden[:, -1, :]`` (``positions=response`` during generation with a KV cache: the
  last prompt token in the prefill, then every generated token);
* a bool tensor ``[batch, seq]`` - exactly those positions (``positions=response`` in loglikelihood).

A ``SteeringPlan`` adds the same delta to every row; a ``RowPlan`` adds row ``i``'s own delta to row ``i``
(several configurations in one batch, ``config_batching.py``), with the same ``Where`` for every row.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from steer_plugin.errors import SteerError
from steer_plugin.io.terminal import printable
from steer_plugin.model.backends import check_backend
from steer_plugin.model.layers import parse_layers
from steer_plugin.model.loading import find_block_path, resolve_module
from steer_plugin.model.positions import Positions, check_positions


class Steerable(Protocol):
    """What steering needs of a vector (``SteeringVector`` is one): its ``[n_layers, hidden]`` matrix and
    metadata (``source_path`` names it in errors). The model stage sits below the vectors, so it names no class."""

    matrix: torch.Tensor
    metadata: dict[str, Any]

    @property
    def n_layers(self) -> int: ...

    @property
    def hidden_size(self) -> int: ...


NON_FINITE = (
    "the steered model's scores became non-finite (nan/inf): alpha x vector is too large for this model; "
    "use a smaller alpha"
)
Where = str | torch.Tensor | None
DEFAULT_ROWS = 64  # most rows of one mixed batch (several configurations' RowPlan rows): --config-batch-rows


@dataclass
class SteeringPlan:
    """The combined per-layer deltas ``sum_i alpha_i * v_i[l]`` for the layers that change."""

    deltas: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return bool(self.deltas)


@dataclass
class RowPlan:
    """One delta per batch row: ``deltas[l][i]`` is added to row ``i``'s output of block ``l`` (a zero row
    where row ``i``'s configuration leaves layer ``l`` alone: adding 0.0 changes nothing, bit for bit)."""

    deltas: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [rows, hidden]

    @property
    def active(self) -> bool:
        return bool(self.deltas)

    @classmethod
    def stack(cls, plans: Sequence[SteeringPlan], repeat: int = 1) -> RowPlan:
        """Rows ``i * repeat .. (i + 1) * repeat - 1`` get ``plans[i]`` (plans made for one model by ``make_plan``,
        so each layer's deltas share a device and dtype)."""
        deltas: dict[int, torch.Tensor] = {}
        for l in sorted({l for p in plans for l in p.deltas}):
            like = next(p.deltas[l] for p in plans if l in p.deltas)
            rows = [p.deltas.get(l, torch.zeros_like(like)) for p in plans]
            deltas[l] = torch.stack(rows).repeat_interleave(repeat, dim=0)
        return cls(deltas)

    def take(self, rows: torch.Tensor) -> RowPlan:
        """The plan for a batch made of these rows (indices into this plan's rows)."""
        return RowPlan({l: d.index_select(0, rows.to(d.device)) for l, d in self.deltas.items()})


AnyPlan = SteeringPlan | RowPlan


def finite_alpha(alpha: Any, name: str = "alpha") -> float:
    """``alpha`` as a float, or a one-line error naming it (``abc``, ``nan``, ``inf``, ``1e999``)."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise SteerError(f"{name} must be a number, got {printable(alpha)!r}") from None
    if not math.isfinite(value):
        raise SteerError(f"{name} must be a finite number, got {printable(alpha)!r}")
    return value


def alphas_per_vector(alphas: Sequence[float], n_vectors: int) -> list[float]:
    """One alpha per vector: a single alpha serves every vector, any other count is an error."""
    if len(alphas) == 1 and n_vectors > 1:
        return list(alphas) * n_vectors
    if len(alphas) != n_vectors:
        raise SteerError(f"got {n_vectors} vectors but {len(alphas)} alphas; give one alpha or one per vector")
    return list(alphas)


def check_delta(
    delta: torch.Tensor, layer: int, dtype: torch.dtype = torch.float32, exact: torch.Tensor | None = None
) -> None:
    """The row actually added (``sum alpha_i x v_i[layer]``) must be finite, also in the model's dtype:
    a finite vector near 3e38 times alpha 2 is inf in float32, 1e5 is inf in float16. ``exact``: the
    same row computed in float64, for the message."""
    if torch.isfinite(delta).all() and (dtype == delta.dtype or torch.isfinite(delta.to(dtype)).all()):
        return
    big = f"{float((delta if exact is None else exact).double().abs().max()):.3g}"
    limit = torch.finfo(dtype).max if dtype.is_floating_point else float("inf")
    raise SteerError(
        f"alpha x vector at layer {layer} is not finite in {str(dtype).removeprefix('torch.')} "
        f"(max |alpha x row| {big}, limit {limit:.3g}); use a smaller alpha or rescale the vector"
    )


def make_plan(
    vectors: Sequence[Steerable],
    alphas: Sequence[float],
    model: Any,
    block_path: str,
    layers: str | Sequence[int] | None = None,
) -> SteeringPlan:
    """Validate vectors against the model and place each layer's delta on that layer's device/dtype."""
    blocks = resolve_module(model, block_path)
    hidden = int(model.config.get_text_config().hidden_size)

    def param(l: int) -> Any:
        return next(blocks[l].parameters(), None)

    def dtype_of(l: int) -> torch.dtype:
        p = param(l)
        return p.dtype if p is not None and p.is_floating_point() else torch.float32

    deltas = layer_deltas(vectors, alphas, len(blocks), hidden, layers, dtype_of)
    placed = {}
    for l, delta in deltas.items():
        p = param(l)
        placed[l] = delta.to(device=p.device if p is not None else torch.device("cpu"), dtype=dtype_of(l))
    return SteeringPlan(placed)


def layer_deltas(
    vectors: Sequence[Steerable],
    alphas: Sequence[float],
    n_layers: int,
    hidden: int,
    layers: str | Sequence[int] | None,
    dtype_of: Callable[[int], torch.dtype],
) -> dict[int, torch.Tensor]:
    """The float32 ``sum_i alpha_i * v_i[l]`` of each chosen layer it changes, checked against a model of
    ``n_layers`` blocks of width ``hidden`` whose block ``l`` computes in ``dtype_of(l)`` (any engine's)."""
    alphas = alphas_per_vector(alphas, len(vectors))
    for v in vectors:
        name = v.metadata.get("source_path", "vector")
        if (v.n_layers, v.hidden_size) != (n_layers, hidden):
            raise SteerError(
                f"{name} is [{v.n_layers} layers x {v.hidden_size}] but the model has "
                f"[{n_layers} layers x {hidden}]: the vector was built for another model"
            )
        if not torch.isfinite(v.matrix).all():
            raise SteerError(f"{name} contains non-finite values")
    for a in alphas:
        if isinstance(a, bool) or not isinstance(a, (int, float)):
            raise SteerError(f"alpha must be a finite number, got {a!r}")
        finite_alpha(a)
    chosen = (
        list(layers)
        if isinstance(layers, (list, tuple))
        else parse_layers(None if layers is None else str(layers), n_layers)
    )
    if any(not 0 <= l < n_layers for l in chosen):
        raise SteerError(f"layers {chosen} out of range 0-{n_layers - 1}")
    total = torch.zeros(n_layers, hidden, dtype=torch.float32)
    exact = torch.zeros(n_layers, hidden, dtype=torch.float64)  # for the overflow message only
    for v, a in zip(vectors, alphas):
        if a != 0:
            total += float(a) * v.matrix
            exact += float(a) * v.matrix.double()
    deltas = {}
    for l in chosen:
        if bool(total[l].any()):
            check_delta(total[l], l, dtype_of(l), exact[l])
            deltas[l] = total[l]
    return deltas


def _per_position(delta: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``delta`` shaped to add to ``h`` [batch, seq, hidden]: a row plan's [rows, hidden] gets a seq axis."""
    if delta.dim() == 1:
        return delta
    if delta.shape[0] != h.shape[0]:
        raise RuntimeError(f"a row plan for {delta.shape[0]} rows met a batch of {h.shape[0]} rows")
    return delta[:, None, :]


def _steered(h: torch.Tensor, delta: torch.Tensor, where: Where) -> torch.Tensor:
    d = _per_position(delta, h)
    if where is None:
        return h + d
    if isinstance(where, str):
        h = h.clone()
        h[:, -1:, :] += d
        return h
    return h + where.to(h.device, h.dtype)[..., None] * d


@contextlib.contextmanager
def steer(
    model: Any,
    vectors: Sequence[Steerable],
    alphas: Sequence[float],
    *,
    layers: str | Sequence[int] | None = "all",
    positions: Positions = "all",
    blocks: str | None = None,
) -> Iterator[None]:
    """Inside the ``with`` block, ``sum_i alpha_i * v_i`` is added to the chosen blocks' outputs (forward
    hooks, removed on exit, also after an error).

    Args:
        model: a transformers causal LM.
        vectors: steering vectors (``SteeringVector``), each ``[n_layers, hidden]`` of this model.
        alphas: one per vector, or one for all.
        layers: ``all``, ``middle``, 0-based ``0,3,5-9``, or indices.
        positions: ``all`` (every position of every forward) or ``response`` (the last position of each
            forward: in ``generate``, the last prompt token and then every generated token).
        blocks: module path of the decoder blocks, if they are not found automatically.

    Returns:
        A context manager; nothing is steered outside it.
    """
    check_positions(positions)
    steerer = Steerer(model, "hooks", blocks)
    plan = make_plan(vectors, alphas, model, steerer.block_path, layers)
    with steerer.hooks(plan, "last" if positions == "response" else None):
        yield


class Steerer:
    """Applies a plan to a model's decoder blocks through one backend."""

    def __init__(self, model: Any, backend: str = "nnsight", blocks: str | None = None) -> None:
        self.model = model
        self.backend = check_backend(backend)
        self.block_path = find_block_path(model, blocks)
        self.blocks = resolve_module(model, self.block_path)
        self._nnsight: Any = None
        self._lower: _LowerBlocks | None = None

    # -- blocks below the first steered layer ------------------------------------------------------
    @contextlib.contextmanager
    def sharing_lower_blocks(self) -> Iterator[None]:
        """Within the block, every forward gets the same inputs (the caller's promise: one chunk of tails
        scored under several configurations), so the blocks below a plan's first steered layer compute the
        same outputs in each: those blocks are unsteered. The first forward records their outputs; later
        ones replay them instead of running the blocks (a third of the model for ``--layers middle``)."""
        self._lower = _LowerBlocks()
        try:
            yield
        finally:
            self._lower = None

    @contextlib.contextmanager
    def _lower_blocks(self, plan: AnyPlan, inputs: dict[str, Any]) -> Iterator[None]:
        lower = self._lower
        first = min(plan.deltas, default=len(self.blocks)) if plan.active else len(self.blocks)
        if lower is None or first == 0:
            yield
            return
        lower.check(inputs)
        done = max((l for l in lower.outputs if l < first), default=-1)
        patched = [(b, b.__dict__.get("forward")) for b in self.blocks[: done + 1]]
        for block, _ in patched:
            block.forward = lower.replay(done)
        handles = [
            self.blocks[l].register_forward_hook(lower.record(l))
            for l in range(done + 1, first)
            if l not in lower.outputs
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for block, own in patched:
                if own is None:
                    del block.forward
                else:
                    block.forward = own

    # -- hooks -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def hooks(self, plan: AnyPlan, where: Where = None) -> Iterator[None]:
        """Forward hooks on the steered blocks for the duration of the block; always removed."""

        def make(delta: torch.Tensor):
            def hook(module: Any, args: Any, out: Any) -> Any:
                if isinstance(out, tuple):
                    return (_steered(out[0], delta, where), *out[1:])
                return _steered(out, delta, where)

            return hook

        handles = [self.blocks[l].register_forward_hook(make(d)) for l, d in plan.deltas.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # -- nnsight -----------------------------------------------------------------------------------
    @property
    def traced(self) -> Any:
        if self._nnsight is None:
            from nnsight import NNsight

            self._nnsight = NNsight(self.model)
        return self._nnsight

    def _intervene(self, traced: Any, plan: AnyPlan, where: Where) -> None:
        """Body of an nnsight trace: edit each steered block's output in place."""
        blocks = resolve_module(traced, self.block_path)
        for l, delta in plan.deltas.items():
            out = blocks[l].output
            h = out[0] if isinstance(out, tuple) else out
            d = _per_position(delta, h)
            if where is None:
                h[:] += d
            elif isinstance(where, str):
                h[:, -1:, :] += d
            else:
                h[:] += where.to(h.device, h.dtype)[..., None] * d

    def forward(self, plan: AnyPlan, where: Where = None, **inputs: Any) -> Any:
        """One steered forward pass; returns the model's output."""
        with self._lower_blocks(plan, inputs):
            if not plan.active:
                return self.model(**inputs)
            if self.backend == "hooks":
                with self.hooks(plan, where):
                    return self.model(**inputs)
            with self.traced.trace(**inputs):
                self._intervene(self.traced, plan, where)
                result = self.traced.output.save()
            return result

    def generate(
        self,
        plan: AnyPlan,
        where: Where = None,
        check_finite: bool = True,
        generate_fn: Callable[..., torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``model.generate(**kwargs)`` with the plan applied in every forward of the decode loop
        (``check_finite``: stop with an error when the scores turn nan/inf). ``generate_fn``: what generates
        instead of ``model.generate`` (a harness's own generate that calls it), given the same ``kwargs``."""
        generate = self.model.generate if generate_fn is None else generate_fn
        if not plan.active:
            return generate(**kwargs)
        if check_finite:
            kwargs["logits_processor"] = _with_finite_check(kwargs.get("logits_processor"))
        if self.backend == "hooks":
            with self.hooks(plan, where):
                return generate(**kwargs)
        traced, result = self.traced, []

        def run(**kw: Any) -> Any:  # keeps the generated ids outside the trace
            result.append(generate(**kw))
            return result[-1]

        with warnings.catch_warnings():
            # an open `tracer.all()` loop ends when generation stops; nnsight warns about that by design
            warnings.filterwarnings("ignore", message=".*was never reached.*")
            with traced.trace(fn=run, **kwargs) as tracer:
                for _ in tracer.all():
                    self._intervene(traced, plan, where)
        return result[0]


@dataclass
class _LowerBlocks:
    """Block outputs recorded in one forward of ``sharing_lower_blocks`` and replayed in the next ones."""

    outputs: dict[int, Any] = field(default_factory=dict)
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def check(self, inputs: dict[str, Any]) -> None:
        """The promise kept: the same token ids, positions and mask as the recorded forward (cheap to
        compare, and a replay on other inputs would be silently wrong)."""
        now = {k: v for k, v in inputs.items() if k in _SAME_INPUTS and isinstance(v, torch.Tensor)}
        if not self.inputs:
            self.inputs = now
        elif now.keys() != self.inputs.keys() or any(not torch.equal(v, self.inputs[k]) for k, v in now.items()):
            raise RuntimeError("sharing_lower_blocks: a forward with other inputs than the first one")

    def record(self, layer: int) -> Any:
        def hook(module: Any, args: Any, out: Any) -> None:
            self.outputs[layer] = out

        return hook

    def replay(self, layer: int) -> Any:
        out = self.outputs[layer]
        return lambda *args, **kwargs: out


_SAME_INPUTS = ("input_ids", "position_ids", "attention_mask", "inputs_embeds")


def _with_finite_check(processors: Any) -> Any:
    """Steered generation stops with an error when the next-token scores turn nan/+inf (the steered
    residual stream overflowed) instead of decoding garbage from them. -inf is left alone: samplers'
    top-k/top-p filters set it on purpose."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class FiniteScores(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if bool(torch.isnan(scores).any() | torch.isposinf(scores).any()):
                raise SteerError(NON_FINITE)
            return scores

    out = LogitsProcessorList(processors or [])
    out.append(FiniteScores())
    return out
