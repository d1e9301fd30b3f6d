"""GoEmotions selection -> model -> recorded statistics: the steps `steer record` and `steer build` share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steer_plugin.errors import SteerError
from steer_plugin.stats import HiddenStateStats


@dataclass
class RecordRequest:
    model: str
    emotion: str  # a label, 'ekman:<group>', or 'all'
    baseline: str = "neutral"
    split: str = "train"
    data_dir: str | None = None
    selection: str = "exclusive"
    max_per_class: int | None = None
    seed: int = 0
    dedupe: bool = False
    template: str = "raw"
    batch_size: int = 8
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    blocks: str | None = None
    padding_side: str | None = None
    save_activations: str | None = None
    activation_dtype: str = "float16"
    progress: bool = True


def record_request(req: RecordRequest, loaded: Any = None) -> HiddenStateStats:
    """Select texts, load the model (unless given) and record per-class statistics."""
    from steer_plugin import __version__
    from steer_plugin.data import load_goemotions, select_all, select_texts
    from steer_plugin.models import load_model
    from steer_plugin.record import (
        RecordItem,
        init_distributed_if_launched,
        items_from_classes,
        record_hidden_states,
    )

    device = req.device
    if init_distributed_if_launched() and device in (None, "cuda") and not req.device_map:
        import os

        import torch

        if torch.cuda.is_available():  # one GPU per rank; each rank records a shard of the texts
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    examples = load_goemotions(req.split, req.data_dir)
    source = "local" if req.data_dir else "hub"
    if req.emotion == "all":
        texts, memberships = select_all(examples, req.selection, req.max_per_class, req.seed, req.dedupe)
        items = [RecordItem(t, tuple(m)) for t, m in zip(texts, memberships) if m]
        if not items:
            raise SteerError(f"no texts selected from split {req.split!r}")
    else:
        sel = select_texts(
            examples,
            req.emotion,
            req.baseline,
            req.selection,
            req.max_per_class,
            req.seed,
            req.dedupe,
            split=req.split,
            source=source,
        )
        items = items_from_classes(sel.classes)
    loaded = loaded or load_model(
        req.model,
        dtype=req.dtype,
        device=device,
        device_map=req.device_map,
        revision=req.revision,
        trust_remote_code=req.trust_remote_code,
    )
    meta = {
        **loaded.fingerprint,
        "target": req.emotion,
        "baseline": req.baseline,
        "split": req.split,
        "selection": req.selection,
        "source": source,
        "max_per_class": req.max_per_class,
        "seed": req.seed,
        "dedupe": req.dedupe,
        "dtype": req.dtype,
        "package_version": __version__,
    }
    return record_hidden_states(
        loaded.model,
        loaded.tokenizer,
        items,
        batch_size=req.batch_size,
        template=req.template,
        padding_side=req.padding_side,
        blocks=req.blocks,
        progress=req.progress,
        save_activations=req.save_activations,
        activation_dtype=req.activation_dtype,
        metadata=meta,
    )
