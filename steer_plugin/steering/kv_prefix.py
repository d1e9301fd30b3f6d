"""The KV cache of a shared prefix, computed once and reused by many continuations.

Prefix reuse (loglikelihood), config batching (generation) and the side-effect probe (KL on neutral texts)
all run ``prefix`` once, left-padded, and continue from its cache; this module is the one place that knows
how a transformers cache is built, checked, gathered and handed to a new forward.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch


class ReuseUnsupported(RuntimeError):
    """The model does not behave as prefix reuse needs (found while running); use the plain path."""


def zero_padded_positions(cache: Any, mask: torch.Tensor, rows: int, width: int) -> None:
    """Check a freshly filled KV cache is [rows, heads, width, dim] per layer (else ReuseUnsupported) and zero
    its keys/values at padded positions: those are masked for every query, but NaN * 0 would still poison sums."""
    layers: list[Any] = list(cache.layers)  # a cache of other layer kinds (linear attention) is refused here
    for layer in layers:
        keys = getattr(layer, "keys", None)
        if not isinstance(keys, torch.Tensor):
            raise ReuseUnsupported(f"a KV cache layer of type {type(layer).__name__} holds no key tensor")
        if keys.dim() != 4 or keys.shape[0] != rows or keys.shape[-2] != width:
            raise ReuseUnsupported(f"unexpected KV cache shape {tuple(keys.shape)}")
    if not bool(mask.all()):
        for layer in layers:
            keep = mask[:, None, :, None].to(layer.keys.device)
            layer.keys = torch.where(keep, layer.keys, 0)
            layer.values = torch.where(keep, layer.values, 0)


# -- which models ------------------------------------------------------------------------------------
def reuse_blocker(model: Any) -> str | None:
    """Why prefix reuse cannot be exact for this model, or None when it can."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only transformers model"
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "position_ids", "attention_mask"):
        if name not in params:
            return f"its forward takes no `{name}` argument"
    try:
        layers = DynamicCache(config=config).layers
    except Exception as e:
        return f"its KV cache cannot be built ({type(e).__name__}: {e})"
    odd = sorted({type(l).__name__ for l in layers if type(l) is not DynamicLayer})
    if odd:
        return f"its KV cache has {', '.join(odd)} layers (sliding-window/recurrent state cannot be expanded)"
    return None


def accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters
