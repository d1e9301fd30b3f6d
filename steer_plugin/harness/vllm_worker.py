"""The steering inside vLLM's worker: each request's own ``alpha x vector``, added to its own tokens of a flat batch.

``SteeringWorker`` is a worker extension (vLLM's ``worker_extension_cls``: vLLM adds it to its worker's bases, so
its methods run on every worker, tensor-parallel ranks included, through ``collective_rpc``). The driver sends each
configuration's per-layer deltas once (``steer_add``, keyed by their fingerprint) and tags each request through
``SamplingParams.extra_args[STEER_KEY] = {"plan": fingerprint, "start": first steered position}``.

Where the delta goes: vLLM's decoder layers (llama, qwen2, gemma3, ...) return ``(hidden_states, residual)`` and
the next layer (or the final norm) adds the two first, so the residual stream that a transformers block outputs is
their sum. Adding the delta to ``hidden_states`` adds it to that sum, exactly where ``steered_hf`` adds it; layers
that return one tensor (gpt2, ...) get it added to that tensor.

Which rows: vLLM runs all scheduled requests as one flat batch of tokens. The V1 model runner's ``input_batch``
lists the requests in batch order, ``query_start_loc`` gives each one's rows, and ``num_computed_tokens`` the
position of its first row (a chunk of a long prompt, a prompt after a prefix-cache hit, a decode step). A request's
row is steered when its position is at least the request's ``start`` (0: ``positions=all``; the last context or
prompt token: ``positions=response``). The rows are worked out once per forward pass, read on the CPU only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

STEER_KEY = "steer_plugin"  # SamplingParams.extra_args key of a steered request


def pack_deltas(deltas: dict[int, torch.Tensor]) -> bytes:
    """A plan's ``{layer: delta}`` (float32) as bytes: the same through any of vLLM's RPC transports."""
    buffer = io.BytesIO()
    torch.save({int(l): d.detach().to("cpu", torch.float32).contiguous() for l, d in deltas.items()}, buffer)
    return buffer.getvalue()


def unpack_deltas(payload: bytes) -> dict[int, torch.Tensor]:
    return torch.load(io.BytesIO(payload), weights_only=True)


@dataclass
class StepRows:
    """One forward pass's steered rows: ``rows[j]`` of the flat batch gets plan ``slots[j]`` (of ``plans``)."""

    rows: torch.Tensor
    slots: torch.Tensor
    plans: list[str]
    stacked: dict[int, torch.Tensor | None] = field(default_factory=dict)  # layer -> [plans, hidden]; None: none


class WorkerSteering:
    """The plans this worker knows and the hooks that apply them (one per worker)."""

    def __init__(self, runner: Any, blocks: Any) -> None:
        self.runner = runner
        self.blocks = blocks
        self.plans: dict[str, dict[int, torch.Tensor]] = {}
        self._step: tuple[Any, StepRows | None] = (None, None)  # (forward context, its rows)
        param = next(blocks[0].parameters())
        self.device, self.dtype = param.device, param.dtype
        for layer, block in enumerate(blocks):
            block.register_forward_hook(self._hook(layer))

    def add(self, fingerprint: str, deltas: dict[int, torch.Tensor]) -> None:
        self.plans[fingerprint] = {l: d.to(self.device, self.dtype) for l, d in deltas.items()}

    def step_rows(self) -> StepRows | None:
        """This forward pass's steered rows (None: none), computed at its first steered layer."""
        from vllm.forward_context import get_forward_context, is_forward_context_available

        if not is_forward_context_available():
            return None
        context = get_forward_context()
        if self._step[0] is context:
            return self._step[1]
        rows = self._rows()
        self._step = (context, rows)
        return rows

    def _rows(self) -> StepRows | None:
        batch = self.runner.input_batch
        count = batch.num_reqs
        if not self.plans or count == 0:
            return None
        starts = self.runner.query_start_loc.np[: count + 1]
        computed = batch.num_computed_tokens_cpu[:count]
        rows: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        plans: list[str] = []
        for i, req_id in enumerate(batch.req_ids[:count]):
            state = self.runner.requests.get(req_id)
            params = getattr(state, "sampling_params", None)
            tag = (params.extra_args or {}).get(STEER_KEY) if params is not None else None
            if not tag:
                continue
            if tag["plan"] not in self.plans:
                raise RuntimeError(f"steered_vllm: request {req_id} names an unknown steering plan {tag['plan']}")
            first = int(starts[i]) + max(int(tag["start"]) - int(computed[i]), 0)
            end = int(starts[i + 1])
            if first >= end:
                continue
            if tag["plan"] not in plans:
                plans.append(tag["plan"])
            rows.append(np.arange(first, end))
            slots.append(np.full(end - first, plans.index(tag["plan"])))
        if not rows:
            return None
        to = lambda a: torch.from_numpy(np.concatenate(a)).to(self.device)  # noqa: E731
        return StepRows(to(rows), to(slots), plans)

    def stacked(self, step: StepRows, layer: int) -> torch.Tensor | None:
        """``[plans, hidden]`` deltas of this step's plans at ``layer`` (a zero row for a plan that leaves it)."""
        if layer not in step.stacked:
            deltas = [self.plans[p].get(layer) for p in step.plans]
            like = next((d for d in deltas if d is not None), None)
            step.stacked[layer] = (
                None if like is None else torch.stack([torch.zeros_like(like) if d is None else d for d in deltas])
            )
        return step.stacked[layer]

    def _hook(self, layer: int) -> Any:
        def hook(module: Any, args: Any, out: Any) -> Any:
            step = self.step_rows()
            if step is None:
                return None
            deltas = self.stacked(step, layer)
            if deltas is None:
                return None
            hidden = out[0] if isinstance(out, tuple) else out
            if hidden.shape[0] < int(step.rows.max()) + 1:
                raise RuntimeError("steered_vllm: a forward pass with fewer rows than its requests")
            steered = hidden.index_add(0, step.rows, deltas.index_select(0, step.slots))
            return (steered, *out[1:]) if isinstance(out, tuple) else steered

        return hook


class SteeringWorker:
    """vLLM worker extension (``worker_extension_cls``): ``self`` is vLLM's worker; called via ``collective_rpc``."""

    model_runner: Any  # vLLM's worker has it
    _steering: WorkerSteering | None = None

    def steer_install(self, block_path: str | None = None) -> dict[str, Any]:
        """Hook the decoder blocks (once); returns what the driver checks plans against."""
        from steer_plugin.model.loading import find_block_path, resolve_module

        runner = self.model_runner
        if not hasattr(runner, "input_batch") or not hasattr(runner, "query_start_loc"):
            raise RuntimeError(
                f"steered_vllm needs vLLM's V1 model runner, got {type(runner).__name__}; "
                "set VLLM_USE_V2_MODEL_RUNNER=0"
            )
        model = runner.get_model()
        path = find_block_path(model, block_path)
        if self._steering is None:
            self._steering = WorkerSteering(runner, resolve_module(model, path))
        return {"block_path": path, "n_layers": len(self._steering.blocks), "dtype": str(self._steering.dtype)}

    def steer_add(self, fingerprint: str, payload: bytes) -> None:
        assert self._steering is not None, "steer_install first"
        self._steering.add(fingerprint, unpack_deltas(payload))

    def steer_forget(self) -> None:
        if self._steering is not None:
            self._steering.plans.clear()
