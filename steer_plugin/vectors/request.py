"""GoEmotions selection -> model -> recorded statistics: the steps `steer record` and `steer build` share."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from steer_plugin import __version__
from steer_plugin.data.goemotions import (
    Selection,
    SelectionRule,
    canonical_target,
    load_goemotions,
    select_all,
    select_texts,
)
from steer_plugin.data.prompts import PromptTemplate
from steer_plugin.errors import SteerError, check_count
from steer_plugin.model.loading import LoadedModel, ModelOptions
from steer_plugin.vectors.activations import Activations
from steer_plugin.vectors.build import EMOTIONS
from steer_plugin.vectors.record import (
    RecordItem,
    init_distributed_if_launched,
    items_from_classes,
    record_hidden_states,
)
from steer_plugin.vectors.stats import HiddenStateStats


@dataclass
class RecordRequest:
    model: ModelOptions
    emotion: str  # a label, 'ekman:<group>', or 'all'
    baseline: str = "neutral"
    split: str = "train"
    data_dir: str | None = None
    selection: SelectionRule = "exclusive"
    max_per_class: int | None = None
    seed: int = 0
    dedupe: bool = False
    template: str = "raw"
    batch_size: int = 8
    padding_side: str | None = None
    save_activations: str | None = None
    activation_dtype: str = "float16"
    progress: bool = True
    # several targets against one baseline, recorded in one pass (`steer run --emotion anger,joy`)
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Checked when made, before any text is read or the model loads."""
        check_count("--batch-size", self.batch_size)
        if not self.targets and self.emotion != "all":
            self.emotion = canonical_target(self.emotion)  # `Anger` records (and names its class) `anger`
        self.baseline = canonical_target(self.baseline)


def record_request(req: RecordRequest, loaded: LoadedModel | None = None) -> HiddenStateStats:
    """Select texts, load the model (unless given) and record per-class statistics."""
    options = req.model
    if init_distributed_if_launched() and options.device in (None, "cuda") and not options.device_map:
        import os

        import torch

        if torch.cuda.is_available():  # one GPU per rank; each rank records a shard of the texts
            options = replace(options, device=f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    if loaded is None and PromptTemplate(req.template).spec == "chat" and not options.has_chat_template():
        raise SteerError("template 'chat' needs a tokenizer with a chat template; use 'raw'")  # before the weights
    examples = load_goemotions(req.split, req.data_dir)
    source = "local" if req.data_dir else "hub"
    if req.targets:
        items = _items_of_targets(examples, req, source)
    elif req.emotion == "all":
        texts, memberships = select_all(examples, req.selection, req.max_per_class, req.seed, req.dedupe)
        items = [RecordItem(t, tuple(m)) for t, m in zip(texts, memberships) if m]
        if not items:
            raise SteerError(f"no texts selected from split {req.split!r}")
    else:
        sel = _select(examples, req.emotion, req, source)
        items = items_from_classes(sel.classes)
    loaded = loaded or options.load()
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
        "dtype": options.dtype,
        "package_version": __version__,
    }
    return record_hidden_states(
        loaded.model,
        loaded.tokenizer,
        items,
        batch_size=req.batch_size,
        template=req.template,
        padding_side=req.padding_side,
        blocks=options.blocks,
        progress=req.progress,
        save_activations=req.save_activations,
        activation_dtype=req.activation_dtype,
        metadata=meta,
    )


def with_all_emotions(req: RecordRequest) -> RecordRequest:
    """The request that records the 27 emotions too (``centre="emotions"`` averages their class means); the
    statistics still name ``req.emotion`` their target."""
    if req.emotion == "all" and not req.targets:
        return req
    targets = req.targets or (req.emotion,)
    return replace(req, targets=tuple(dict.fromkeys([*targets, *EMOTIONS])))


@contextmanager
def recorded(
    req: RecordRequest, loaded: LoadedModel | None = None, *, per_text: bool = False
) -> Iterator[tuple[HiddenStateStats, Activations | None]]:
    """Record (``record_request``); with ``per_text`` keep the per-text states for the block's duration.

    They go to ``req.save_activations`` (kept) or else to a temporary folder under ``$TMPDIR`` (float32,
    removed afterwards): texts x layers x hidden x 4 bytes, e.g. 190 MB for 2,700 texts of a 30-layer,
    576-wide model; read memory-mapped, a layer at a time.
    """
    if not per_text:
        yield record_request(req, loaded), None
    elif req.save_activations:
        stats = record_request(req, loaded)
        yield stats, Activations(req.save_activations, stats)
    else:
        with tempfile.TemporaryDirectory(prefix="steer-activations-") as folder:
            stats = record_request(replace(req, save_activations=folder, activation_dtype="float32"), loaded)
            yield stats, Activations(folder, stats)


def _select(examples: list, target: str, req: RecordRequest, source: str) -> Selection:
    """``target`` and the baseline under the request's selection rule and sampling."""
    return select_texts(
        examples, target, req.baseline, req.selection, req.max_per_class, req.seed, req.dedupe,
        split=req.split, source=source,
    )  # fmt: skip


def _items_of_targets(examples: list, req: RecordRequest, source: str) -> list:
    """Each target's and the baseline's texts, every text run once with all the classes it counts for
    (listed once per row it was selected for, as ``select_all`` does)."""
    classes: dict[str, list[str]] = {}
    for target in req.targets:
        sel = _select(examples, target, req, source)
        classes.update(sel.classes)
    by_text: dict[str, list[str]] = {}
    for name, texts in classes.items():
        for text in texts:
            by_text.setdefault(text, []).append(name)
    return [RecordItem(text, tuple(names)) for text, names in by_text.items()]
