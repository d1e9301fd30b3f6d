"""The KV cache of a shared prefix, computed once and reused by many continuations.

Prefix reuse (loglikelihood), config batching (generation) and the side-effect probe (KL on neutral texts)
all run a prefix once, left-padded (prefix reuse: a start all rows share once, then the rest left-padded,
``run_tokens(start=...)``), and continue from its cache (``KVPrefix``); this module is the one place
that knows how a transformers cache is built, checked, gathered or repeated and handed to a new forward.
The callers bring their own forward (steering plan, no_grad, autocast) and decide what a refusal
(``ReuseUnsupported``) means for them: the plain path, or the whole prompt prefilled.

Sliding-window layers (Gemma 2/3, Mistral-style models): a window changes nothing for a sequence that
fits inside it, so reuse is exact there. The callers send sequences longer than ``reuse_window`` to the
plain path (``fits_window``); a prefix cache keeps each layer's kind (``KVPrefix.windows``), so a
continuation's cache is the one the model builds itself. Padding in the middle (a shared start) is not
like padding on the left there: transformers measures the window in cache slots, pads included, so a
caller shares a start only where the whole width (pads, continuation) fits the window.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from steer_plugin.data.prompts import pad_batch


class ReuseUnsupported(RuntimeError):
    """The model does not behave as prefix reuse needs (found while running); use the plain path."""


Forward = Callable[..., Any]  # forward(**model_inputs) -> model output; the caller's steering and no_grad
Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each [rows, heads, width, dim]
Windows = tuple[int | None, ...]  # per layer: its sliding window, None for full attention
MIN_SHARED_START = 8  # a shorter common start is run per row: one more forward would cost more than it saves


@dataclass(frozen=True)
class KVPrefix:
    """The keys/values of a batch of padded prefixes, and what a continuation needs to attend to them.

    Rows are left-padded, or ``[start | padding | rest]`` where a shared start ran once (``run_tokens``):
    a continuation needs only the mask and each row's real length, whatever the padding's place.

    The tensors are never changed after construction: every continuation gets a fresh cache object over
    them (``fresh_cache``), so one prefix serves any number of forwards, configurations and row layouts.
    """

    layers: Layers  # empty when the prefix is zero tokens wide (nothing was run)
    mask: torch.Tensor  # [rows, width] bool, False on padding
    lengths: torch.Tensor  # [rows] long, real prefix tokens per row (the first position of the continuation)
    windows: Windows  # one per layer (empty with the layers)

    @classmethod
    def run(
        cls,
        forward: Forward,
        config: Any,
        ids: torch.Tensor,
        mask: torch.Tensor,
        *,
        logits_to_keep: bool,
        after: KVPrefix | None = None,
    ) -> KVPrefix:
        """Run left-padded ``ids`` (``mask`` 0/False on the padding) once into a ``DynamicCache(config=...)``,
        or on a fresh cache of ``after`` (one row per row of ``ids``): the result's mask is then
        ``[after.mask | mask]``.

        Position ids count real tokens only, so a padded row's positions are those it has alone; with
        ``logits_to_keep`` (when the model's forward takes it) the LM head runs at one position, as only
        the cache is wanted. Raises ReuseUnsupported when the model does not fill the cache as expected.
        """
        from transformers import DynamicCache

        mask = mask.bool()
        rows = ids.shape[0]
        full = mask if after is None else torch.cat([after.mask, mask], dim=1)
        width = full.shape[1]
        if ids.shape[1] == 0:
            return after if after is not None else cls([], mask, mask.sum(-1), ())
        cache = after.fresh_cache() if after is not None else None
        if cache is None:  # nothing before, or a zero-width prefix
            cache = DynamicCache(config=config)
        offset = after.lengths[:, None] if after is not None else 0
        extra = {"logits_to_keep": 1} if logits_to_keep else {}
        forward(
            input_ids=ids,
            attention_mask=full.long(),
            position_ids=offset + (mask.long().cumsum(-1) - 1).clamp(min=0),
            cache=cache,
            use_cache=True,
            **extra,
        )
        if cache.get_seq_length() != width:
            raise ReuseUnsupported(f"the model left {cache.get_seq_length()} positions in the KV cache, not {width}")
        layers, windows = _checked_layers(cache, full, rows, width)
        return cls(layers, full, full.sum(-1), windows)

    @classmethod
    def run_tokens(
        cls,
        forward: Forward,
        config: Any,
        prefixes: Sequence[Sequence[int]],
        device: torch.device,
        *,
        logits_to_keep: bool,
        start: int = 0,
    ) -> KVPrefix:
        """``run`` on token lists of any lengths (empty ones included), left-padded to the longest.

        ``start`` > 0 (every row begins with the same ``start`` tokens, see ``shared_start``): those run once,
        as one row, and the rest of each row, left-padded, after their keys/values repeated over the rows;
        the mask is then ``[start | padding | rest]``. Exact only where ``forward`` treats every row alike
        (the same steering for all rows) and, on a model with sliding windows, the whole width that will be
        read (``start`` + the widest rest + the continuation) fits the shortest window: the caller's to ensure.
        """
        after = None
        if start and len(prefixes) > 1:
            head = list(prefixes[0][:start])
            if any(list(p[:start]) != head for p in prefixes):
                raise ValueError(f"the prefixes do not all start with the same {start} tokens")
            one = torch.ones(1, start, dtype=torch.bool)
            after = cls.run(forward, config, torch.tensor([head], device=device), one.to(device),
                            logits_to_keep=logits_to_keep).repeated(len(prefixes))  # fmt: skip
            prefixes = [p[start:] for p in prefixes]
        ids, mask, _ = pad_batch(prefixes, 0, "left")  # the pad id is masked (and its keys zeroed): any will do
        return cls.run(forward, config, ids.to(device), mask.to(device), logits_to_keep=logits_to_keep, after=after)

    def rows(self, index: torch.Tensor) -> KVPrefix:
        """The prefix of row ``index[i]`` as row ``i`` (e.g. each continuation's own prefix), gathered once
        for any number of forwards. Each layer's tensors stay on their device (device_map spreads layers)."""
        return KVPrefix(
            [(k.index_select(0, index.to(k.device)), v.index_select(0, index.to(v.device))) for k, v in self.layers],
            self.mask.index_select(0, index.to(self.mask.device)),
            self.lengths.index_select(0, index.to(self.lengths.device)),
            self.windows,
        )

    def repeated(self, times: int) -> KVPrefix:
        """The rows ``times`` over, one block after another: row ``j * rows + i`` is row ``i``."""
        if times == 1:  # the tensors are never changed: no copy needed
            return self
        return KVPrefix(
            [(k.repeat(times, 1, 1, 1), v.repeat(times, 1, 1, 1)) for k, v in self.layers],
            self.mask.repeat(times, 1),
            self.lengths.repeat(times),
            self.windows,
        )

    def fresh_cache(self) -> Any:
        """A new ``DynamicCache`` over the stored tensors (None for a zero-width prefix), each layer of the
        kind the model filled (a sliding-window layer gets its window: transformers' (keys, values, window)
        layer data). One per forward: a forward appends its own keys/values to the cache object it is given
        (by concatenation, so the stored tensors are untouched), and a second forward through that object
        would attend to the first's."""
        from transformers import DynamicCache

        if not self.layers:
            return None
        data = [(k, v) if w is None else (k, v, torch.tensor(w)) for (k, v), w in zip(self.layers, self.windows)]
        return DynamicCache(ddp_cache_data=data)

    def tail_inputs(self, tail_mask: torch.Tensor) -> dict[str, Any]:
        """The model inputs but ``input_ids`` for continuations ``[rows, tail]`` after this prefix (right-padded,
        ``tail_mask`` 0/False there): position ids that go on from each row's real prefix length, the
        attention mask over prefix + tail, and a fresh cache."""
        tail = tail_mask.shape[1]
        inputs: dict[str, Any] = {
            "position_ids": self.lengths[:, None] + torch.arange(tail, device=self.lengths.device)[None, :],
            "attention_mask": torch.cat([self.mask, tail_mask.bool().to(self.mask.device)], dim=1).long(),
        }
        cache = self.fresh_cache()
        if cache is not None:
            inputs["cache"] = cache
        inputs["use_cache"] = cache is not None
        return inputs

    def tree_inputs(self, depth: torch.Tensor, visible: torch.Tensor, dtype: torch.dtype) -> dict[str, Any]:
        """The model inputs but ``input_ids`` for rows of tree-packed continuations ``[rows, width]`` after this
        prefix: node ``j`` of row ``i`` sits at position ``lengths[i] + depth[i, j]`` and sees row ``i``'s real
        prefix and the nodes ``visible[i, j]`` (``[rows, width, width]`` bool: its ancestors and itself). The
        attention mask is a prepared 4D additive one (``dtype``'s min where hidden), which transformers'
        mask builders pass through as is and eager attention adds, a bool mask it would add as 0/1."""
        device = self.mask.device
        rows, width = depth.shape
        seen = torch.cat([self.mask[:, None, :].expand(rows, width, -1), visible.to(device)], dim=2)
        mask = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(~seen, torch.finfo(dtype).min)
        inputs: dict[str, Any] = {
            "position_ids": self.lengths[:, None] + depth.to(device),
            "attention_mask": mask[:, None],
        }
        cache = self.fresh_cache()
        if cache is not None:
            inputs["cache"] = cache
        inputs["use_cache"] = cache is not None
        return inputs


def _checked_layers(cache: Any, mask: torch.Tensor, rows: int, width: int) -> tuple[Layers, Windows]:
    """The keys/values of a freshly filled KV cache and each layer's sliding window, checked to be
    [rows, heads, width, dim] per layer (else ReuseUnsupported: a sliding-window layer keeps only its
    window's last positions), zeroed at padded positions: those are masked for every query, but NaN * 0
    (a padded position that attended to nothing) would still poison the sums."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers: list[Any] = list(cache.layers)  # a cache of other layer kinds (linear attention) is refused here
    windows: list[int | None] = []
    for layer in layers:
        keys = getattr(layer, "keys", None)
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer) or not isinstance(keys, torch.Tensor):
            raise ReuseUnsupported(f"a KV cache layer of type {type(layer).__name__} holds no plain key tensor")
        if keys.dim() != 4 or keys.shape[0] != rows:
            raise ReuseUnsupported(f"unexpected KV cache shape {tuple(keys.shape)}")
        window = layer.sliding_window if isinstance(layer, DynamicSlidingWindowLayer) else None
        if keys.shape[-2] != width:
            within = f" (a sliding window of {window})" if window is not None else ""
            raise ReuseUnsupported(f"a KV cache layer kept {keys.shape[-2]} of {width} prefix positions{within}")
        windows.append(window)
    if bool(mask.all()):
        return [(l.keys, l.values) for l in layers], tuple(windows)
    out = []
    for layer in layers:
        keep = mask[:, None, :, None].to(layer.keys.device)
        out.append((torch.where(keep, layer.keys, 0), torch.where(keep, layer.values, 0)))
    return out, tuple(windows)


def shared_start(prefixes: Sequence[Sequence[int]]) -> int:
    """How many first tokens all ``prefixes`` share, worth running once (``run_tokens(start=...)``): 0 for
    fewer than two rows or a common start shorter than ``MIN_SHARED_START``."""
    if len(prefixes) < 2:
        return 0
    first, n = prefixes[0], min(len(p) for p in prefixes)
    for other in prefixes[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return n if n >= MIN_SHARED_START else 0


# -- which models ------------------------------------------------------------------------------------
def reuse_blocker(model: Any) -> str | None:
    """Why prefix reuse cannot be exact for this model, or None when it can (full attention, and sliding
    windows: those for sequences that fit, see ``reuse_window``)."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only transformers model"
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "position_ids", "attention_mask"):
        if name not in params:
            return f"its forward takes no `{name}` argument"
    try:
        layers = _cache_layers(config)
        kinds, _ = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
    except Exception as e:
        return f"its KV cache cannot be built ({type(e).__name__}: {e})"
    odd = sorted(
        {f"{kind} ({type(layer).__name__})" for layer, kind in zip(layers, kinds) if not _reusable(layer, kind)}
    )
    if odd:
        return f"its KV cache has {', '.join(odd)} layers (only full and sliding-window attention can be reused)"
    return None


def tree_mask_blocker(model: Any) -> str | None:
    """Why this model cannot take a prepared 4D attention mask for tree-packed continuations
    (``KVPrefix.tree_inputs``), or None when it can: sdpa or eager attention, masks built by transformers'
    ``masking_utils`` (which pass a 4D mask through as is). For a model ``reuse_blocker`` lets through."""
    import sys

    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in ("sdpa", "eager"):
        return f"its attention implementation ({attention}) takes no 4D mask"
    module = sys.modules.get(type(model).__module__)
    if not hasattr(module, "create_causal_mask"):
        return f"its modeling code ({type(model).__module__}) does not build masks with transformers.masking_utils"
    return None


def reuse_window(model: Any) -> int | None:
    """The shortest sliding window of the model's KV cache (None: every layer attends to the whole
    sequence). A sequence of at most that many tokens is one the window changes nothing for: on those,
    prefix reuse is exact (``fits_window``). For a model ``reuse_blocker`` lets through."""
    windows = [layer.sliding_window for layer in _cache_layers(model.config) if getattr(layer, "is_sliding", False)]
    return min(windows, default=None)


def fits_window(n_tokens: int, window: int | None) -> bool:
    """Whether a sequence of ``n_tokens`` (what the model reads: prefix + continuation) fits ``window``."""
    return window is None or n_tokens <= window


def _reusable(layer: Any, kind: str) -> bool:
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    # chunked attention gets a sliding-window layer too, but its chunks start at multiples of the cache
    # index, which left padding shifts; a true window sees the same tokens at any offset
    return type(layer) is DynamicLayer or (type(layer) is DynamicSlidingWindowLayer and kind == "sliding_attention")


def _cache_layers(config: Any) -> list[Any]:
    from transformers import DynamicCache

    return list(DynamicCache(config=config).layers)


def accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters
