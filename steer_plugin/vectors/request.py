"""GoEmotions selection (or generated answers) -> model -> recorded statistics: the steps `steer record` and
`steer build` share."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from steer_plugin._version import __version__
from steer_plugin.data.goemotions import canonical_split, canonical_target, load_goemotions
from steer_plugin.data.prompts import PromptTemplate
from steer_plugin.data.selection import Selection, SelectionRule, check_sampling, select_all, select_texts
from steer_plugin.errors import SteerError, check_choice, check_count
from steer_plugin.io.schema import check_fields
from steer_plugin.model.loading import LoadedModel, ModelOptions
from steer_plugin.vectors.activations import Activations
from steer_plugin.vectors.build import EMOTIONS
from steer_plugin.vectors.generated import DEFAULT_MAX_NEW_TOKENS, GeneratedText, record_generated
from steer_plugin.vectors.metadata import DEFAULT_POOL, POOLS, SOURCES, Pool
from steer_plugin.vectors.record import (
    RecordItem,
    init_distributed_if_launched,
    items_from_classes,
    record_hidden_states,
)
from steer_plugin.vectors.stats import HiddenStateStats

# the command line's names of the fields (a field without one is named ``RecordRequest.<field>``)
FLAGS = {
    "baseline": "--baseline", "split": "--split", "data_dir": "--data", "selection": "--selection",
    "max_per_class": "--max-per-class", "seed": "--seed", "dedupe": "--dedupe", "template": "--template",
    "batch_size": "--batch-size", "padding_side": "--padding-side", "save_activations": "--save-activations",
    "activation_dtype": "--activation-dtype", "source": "--source", "pool": "--pool",
    "max_new_tokens": "--max-new-tokens",
}  # fmt: skip


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
    source: str = "goemotions"  # or "generated": the model's answers (vectors.generated; max_per_class = prompts)
    pool: str | None = None  # None: the source's default (last for GoEmotions, mean over the response if generated)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS  # of each generated answer

    def __post_init__(self) -> None:
        """Checked when made, before any text is read or the model loads: the types, the sample (the same for
        every source and every --emotion, 'all' and the Ekman groups too), the names and choices."""
        check_fields(self, FLAGS)
        check_sampling(self.max_per_class, self.seed)
        canonical_split(self.split)
        check_count("--batch-size", self.batch_size)
        check_choice("--source", self.source, SOURCES)
        if self.pool is not None:
            check_choice("--pool", self.pool, POOLS)
        if not self.targets and self.emotion != "all":
            self.emotion = canonical_target(self.emotion)  # `Anger` records (and names its class) `anger`
        self.baseline = canonical_target(self.baseline)
        if self.source == "generated":
            check_count("--max-new-tokens", self.max_new_tokens)
            if self.targets or self.emotion == "all":
                raise SteerError("--source generated records one emotion at a time; name it (e.g. anger)")
            if self.baseline != "neutral":
                raise SteerError("--source generated contrasts with neutral answers: drop --baseline")
            if self.template != "raw":
                raise SteerError(
                    "--template formats GoEmotions texts; --source generated uses the chat template where there is one"
                )

    @property
    def resolved_pool(self) -> Pool:
        return self.pool or DEFAULT_POOL[self.source]  # type: ignore[return-value]  # checked in __post_init__


def record_request(req: RecordRequest, loaded: LoadedModel | None = None) -> HiddenStateStats:
    """Select texts, load the model (unless given) and record per-class statistics."""
    return record_with_texts(req, loaded)[0]


def record_with_texts(
    req: RecordRequest, loaded: LoadedModel | None = None
) -> tuple[HiddenStateStats, list[GeneratedText]]:
    """``record_request``, and the texts to keep beside the vector: the answers of the generated source
    (none for GoEmotions, a public data set)."""
    options = req.model
    launched = init_distributed_if_launched()
    if launched and req.source == "generated":
        raise SteerError("--source generated runs in one process (every rank would generate its own answers)")
    if launched and options.device in (None, "cuda") and not options.device_map:
        import os

        import torch

        if torch.cuda.is_available():  # one GPU per rank; each rank records a shard of the texts
            options = replace(options, device=f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    if loaded is None and PromptTemplate(req.template).spec == "chat" and not options.has_chat_template():
        raise SteerError("template 'chat' needs a tokenizer with a chat template; use 'raw'")  # before the weights
    if req.source == "generated":
        return _record_generated(req, loaded or options.load())
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
        **_metadata(req, loaded),
        "split": req.split,
        "selection": req.selection,
        "source": source,
        "dedupe": req.dedupe,
    }
    stats = record_hidden_states(
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
        pool=req.resolved_pool,
    )
    return stats, []


def _metadata(req: RecordRequest, loaded: LoadedModel) -> dict:
    """What every recording's statistics say about the model and the request, whatever the source."""
    return {
        **loaded.fingerprint,
        "target": req.emotion,
        "baseline": req.baseline,
        "max_per_class": req.max_per_class,
        "seed": req.seed,
        "dtype": req.model.dtype,
        "package_version": __version__,
    }


def _record_generated(req: RecordRequest, loaded: LoadedModel) -> tuple[HiddenStateStats, list[GeneratedText]]:
    return record_generated(
        loaded.model,
        loaded.tokenizer,
        req.emotion,
        baseline=req.baseline,
        max_prompts=req.max_per_class,
        seed=req.seed,
        max_new_tokens=req.max_new_tokens,
        pool=req.resolved_pool,
        batch_size=req.batch_size,
        padding_side=req.padding_side,
        blocks=req.model.blocks,
        progress=req.progress,
        save_activations=req.save_activations,
        activation_dtype=req.activation_dtype,
        metadata=_metadata(req, loaded),
    )


def with_all_emotions(req: RecordRequest) -> RecordRequest:
    """The request that records the 27 emotions too (``centre="emotions"`` averages their class means); the
    statistics still name ``req.emotion`` their target."""
    if req.source != "goemotions":
        raise SteerError(
            f"--centre emotions averages the 27 emotions' GoEmotions texts; --source {req.source} records one "
            "emotion against neutral answers (use --centre none)"
        )
    if req.emotion == "all" and not req.targets:
        return req
    targets = req.targets or (req.emotion,)
    return replace(req, targets=tuple(dict.fromkeys([*targets, *EMOTIONS])))


@dataclass(frozen=True)
class Recording:
    """What ``recorded`` yields: the statistics, the per-text states (when asked for) and the texts to keep
    beside the vector (the generated source's answers; none for GoEmotions)."""

    stats: HiddenStateStats
    activations: Activations | None = None
    texts: tuple[GeneratedText, ...] = ()


@contextmanager
def recorded(req: RecordRequest, loaded: LoadedModel | None = None, *, per_text: bool = False) -> Iterator[Recording]:
    """Record (``record_with_texts``); with ``per_text`` keep the per-text states for the block's duration.

    They go to ``req.save_activations`` (kept) or else to a temporary folder under ``$TMPDIR`` (float32,
    removed afterwards): texts x layers x hidden x 4 bytes, e.g. 190 MB for 2,700 texts of a 30-layer,
    576-wide model; read memory-mapped, a layer at a time. Either pooling and either text source.
    """
    if not per_text:
        stats, texts = record_with_texts(req, loaded)
        yield Recording(stats, None, tuple(texts))
    elif req.save_activations:
        stats, texts = record_with_texts(req, loaded)
        yield Recording(stats, Activations(req.save_activations, stats), tuple(texts))
    else:
        with tempfile.TemporaryDirectory(prefix="steer-activations-") as folder:
            stats, texts = record_with_texts(replace(req, save_activations=folder, activation_dtype="float32"), loaded)
            yield Recording(stats, Activations(folder, stats), tuple(texts))


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
