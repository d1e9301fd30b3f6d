"""Recording pooled hidden states at the output of every decoder block, with nnsight.

Layer ``l`` (0-based) is the output of decoder block ``l`` itself - the residual stream that steering
adds to. (transformers' ``hidden_states[l + 1]`` equals it except for the last block, where it has the
final norm applied.)

A text's state is pooled over its tokens one of two ways (``Pool``): ``last``, the last real token (the
position right before a continuation), or ``mean``, the mean over its real tokens from ``RecordItem.start``
on. By default ``mean`` starts at the first token *after a leading BOS*: the BOS carries no text, and its
block outputs are the same large "attention sink" for every text, so it would only dilute the mean.
Padding never counts.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steer_plugin.data.goemotions import target_slug
from steer_plugin.data.prompts import PromptTemplate, encode, last_token_index, pad_batch, pad_id
from steer_plugin.data.selection import Selection
from steer_plugin.errors import SteerError, check_choice
from steer_plugin.io.atomic import new_temp_path, replace_all, reserve_space
from steer_plugin.model.loading import find_block_path, resolve_module
from steer_plugin.vectors.metadata import POOLS, Pool
from steer_plugin.vectors.stats import ClassStats, HiddenStateStats


@dataclass
class RecordItem:
    """A text and every class it counts for.

    ``ids``: the text already encoded (the template is not applied), e.g. a prompt and a response to it;
    ``start``: the token offset where ``mean`` pooling begins (e.g. the response's first token); None: the
    first token after a leading BOS.
    """

    text: str
    classes: tuple[str, ...]
    start: int | None = None
    ids: tuple[int, ...] | None = None


def items_from_classes(classes: Mapping[str, Sequence[str]]) -> list[RecordItem]:
    return [RecordItem(t, (name,)) for name, texts in classes.items() for t in texts]


def _block_output(out: Any) -> Any:
    # Some blocks (GPT-2, OPT, older Llama) return (hidden, ...); newer ones the tensor itself.
    return out[0] if isinstance(out, tuple) else out


def pool_start(item: RecordItem, ids: Sequence[int], bos: int | None) -> int:
    """Where ``mean`` pooling of ``item`` (encoded as ``ids``) begins: its ``start``, else after a leading BOS."""
    start = item.start if item.start is not None else int(bos is not None and ids[0] == bos)
    if not 0 <= start < len(ids):
        raise SteerError(f"text {item.text[:40]!r} has no token to pool from offset {start} ({len(ids)} tokens)")
    return start


def pool_weights(mask: Any, starts: Any) -> Any:
    """[B, T] float32 weights of ``mean`` pooling: 1/n on each row's real tokens at offset >= its start
    (offsets count real tokens only, so either padding side gives the same span)."""
    offset = mask.cumsum(1) - 1
    keep = (mask > 0) & (offset >= starts[:, None])
    return keep.to(torch.float32) / keep.sum(1, keepdim=True).to(torch.float32)


class StateRecorder:
    """Runs batches through an nnsight trace and returns [B, L, H] pooled states (``last`` or ``mean``)."""

    def __init__(self, model: Any, blocks: str | None = None, pool: Pool = "last") -> None:
        from nnsight import NNsight

        check_choice("pool", pool, POOLS)
        self.pool = pool
        self.model = model
        self.block_path = find_block_path(model, blocks)
        self.n_layers = len(resolve_module(model, self.block_path))
        self.hidden = int(model.config.get_text_config().hidden_size)
        self.traced = NNsight(model)
        self.blocks = resolve_module(self.traced, self.block_path)
        self.takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        self.input_device = model.get_input_embeddings().weight.device

    def __call__(self, ids: Any, mask: Any, positions: Any, starts: Any = None) -> Any:
        """``starts``: [B] offsets where ``mean`` pooling begins (None: 0); unused by ``last``."""
        last = last_token_index(mask).to(self.input_device)
        rows = torch.arange(ids.shape[0], device=self.input_device)
        if self.pool == "mean":
            starts = torch.zeros(ids.shape[0], dtype=torch.long) if starts is None else starts
            weights = pool_weights(mask, starts).to(self.input_device)
        kwargs = {"input_ids": ids.to(self.input_device), "attention_mask": mask.to(self.input_device)}
        if self.takes_positions:
            kwargs["position_ids"] = positions.to(self.input_device)
        blocks, n_layers = self.blocks, self.n_layers
        with torch.no_grad(), self.traced.trace(**kwargs) as tracer:
            states: Any = list().save()  # type: ignore[attr-defined]  # nnsight patches .save() onto it
            for layer in range(n_layers):
                h = _block_output(blocks[layer].output)
                if self.pool == "mean":  # in float32, whatever the model's dtype
                    pooled = torch.einsum("bt,bth->bh", weights.to(h.device), h.to(torch.float32))
                else:
                    pooled = h[rows.to(h.device), last.to(h.device)]
                states.append(pooled.to("cpu", torch.float32))
            tracer.stop()  # the logits are not needed: skip the LM head
        return torch.stack(states, dim=1)


class _ActivationWriter:
    """Per-class memory-mapped ``.npy`` files [N_class, L, H], rows in selection order."""

    def __init__(self, out_dir: Path, items: Sequence[RecordItem], shape: tuple[int, int], dtype: str):
        if dtype not in ("float16", "float32"):
            raise SteerError(f"activation dtype must be float16 or float32, not {dtype!r}")
        out_dir.mkdir(parents=True, exist_ok=True)
        # One (class, row) pair per listed class: select_all lists a class twice for a text that
        # occurs in two rows of that class, and the statistics count it twice, so the array must
        # hold it twice too (a dict keyed by class would leave the second row zero).
        self.rows: list[list[tuple[str, int]]] = []
        counts: dict[str, int] = {}
        for item in items:
            slots = []
            for c in item.classes:
                slots.append((c, counts.get(c, 0)))
                counts[c] = counts.get(c, 0) + 1
            self.rows.append(slots)
        self.final = {c: out_dir / f"{target_slug(c)}.npy" for c in counts}
        # unique temp names (pid + host): concurrent writers never share one, leftovers of killed ones get cleaned
        self.tmp = {c: new_temp_path(p) for c, p in self.final.items()}
        try:
            self.arrays = {
                c: np.lib.format.open_memmap(self.tmp[c], mode="w+", dtype=dtype, shape=(n, *shape))
                for c, n in counts.items()
            }
            for c, tmp in self.tmp.items():
                reserve_space(tmp, self.final[c])
        except BaseException:
            self.arrays = {}
            self.close(ok=False)
            raise

    def write(self, index: int, state: Any) -> None:
        row = state.numpy()
        for c, slot in self.rows[index]:
            self.arrays[c][slot] = row

    def close(self, ok: bool) -> None:
        for arr in self.arrays.values():
            arr.flush()
            del arr
        self.arrays.clear()
        if ok:  # the classes' files as one set, like every multi-file output
            replace_all({self.final[c]: tmp for c, tmp in self.tmp.items()})
            return
        for tmp in self.tmp.values():
            tmp.unlink(missing_ok=True)


def record_hidden_states(
    model: Any,
    tokenizer: Any,
    items: Sequence[RecordItem] | Mapping[str, Sequence[str]] | Selection,
    *,
    batch_size: int = 8,
    template: PromptTemplate | str = "raw",
    padding_side: str | None = None,
    blocks: str | None = None,
    progress: bool = True,
    save_activations: str | os.PathLike | None = None,
    activation_dtype: str = "float16",
    metadata: dict[str, Any] | None = None,
    pool: Pool = "last",
) -> HiddenStateStats:
    """Per-class streaming statistics of the pooled state (last token or mean) at every block output.

    Texts are sorted by token length before batching (little padding); every text is run once even
    if it belongs to several classes. Under torch.distributed each rank records a shard and the
    statistics are merged across ranks.

    Args:
        model: a transformers causal LM (any device and dtype).
        tokenizer: its tokenizer.
        items: the texts: a ``Selection`` (``select_texts``), texts per class name, or ``RecordItem``s
            (a text with every class it counts for).
        batch_size: texts per forward pass.
        template: ``raw``, ``chat`` or a format string with ``{text}`` (see ``PromptTemplate``).
        padding_side: ``left`` or ``right``; None: the tokenizer's.
        blocks: module path of the decoder blocks, if they are not found automatically.
        progress: show a progress bar.
        save_activations: a folder for the raw per-class activations too (``<class>.npy``, one process only).
        activation_dtype: ``float16`` or ``float32``, of those files.
        metadata: extra metadata for the result (the recording adds the model, template, padding and pooling).
        pool: ``last`` (the last real token) or ``mean`` (the mean over the real tokens from each item's
            ``start``, by default after a leading BOS; see the module's docstring).

    Returns:
        Count, mean and sum of squared deviations per class and layer (``[n_layers, hidden]`` each).
    """
    if isinstance(items, Selection):
        items = items.classes
    if isinstance(items, Mapping):  # {class name: texts}
        items = items_from_classes(items)
    if batch_size < 1:
        raise SteerError(f"batch size must be >= 1, got {batch_size}")
    if not items:
        raise SteerError("nothing to record: the selection is empty")
    template = template if isinstance(template, PromptTemplate) else PromptTemplate(template)
    side = padding_side or getattr(tokenizer, "padding_side", "right") or "right"
    recorder = StateRecorder(model, blocks, pool)
    shape = (recorder.n_layers, recorder.hidden)

    rank, world = _dist_rank_world()
    encoded = [list(it.ids) if it.ids is not None else encode(tokenizer, [it.text], template)[0] for it in items]
    bos = getattr(tokenizer, "bos_token_id", None)
    starts = [pool_start(it, ids, bos) for it, ids in zip(items, encoded)] if pool == "mean" else None
    order = sorted(range(len(items)), key=lambda i: (-len(encoded[i]), i))[rank::world]
    class_names = list(dict.fromkeys(c for it in items for c in it.classes))
    stats = {c: ClassStats.empty(*shape) for c in class_names}
    writer = (
        _ActivationWriter(Path(save_activations), items, shape, activation_dtype)
        if (save_activations is not None and rank == 0 and world == 1)
        else None
    )
    if save_activations is not None and world > 1:
        raise SteerError("--save-activations is only supported in single-process recording")

    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    _record_batches(recorder, items, encoded, starts, batches, stats, writer, (pad_id(tokenizer), side),
                    progress and rank == 0)  # fmt: skip
    result = HiddenStateStats(stats, dict(metadata or {}))
    if world > 1:
        result = _merge_across_ranks(result, class_names, shape)
    result.metadata.update(
        {
            "n_layers": shape[0],
            "hidden_size": shape[1],
            "block_path": recorder.block_path,
            "template": template.spec,
            "padding_side": side,
            "pool": pool,
            "counts": result.counts(),
            "world_size": world,
        }
    )
    if not all(bool(torch.isfinite(c.mean).all()) for c in result.classes.values()):
        raise SteerError("the recorded hidden states are not finite; try --dtype float32")
    return result


def _record_batches(
    recorder: StateRecorder,
    items: Sequence[RecordItem],
    encoded: list[list[int]],
    starts: list[int] | None,
    batches: list[list[int]],
    stats: dict[str, ClassStats],
    writer: _ActivationWriter | None,
    padding: tuple[int, str],
    progress: bool,
) -> None:
    """Each batch of texts (indices into ``items``) through the model once, its pooled states added to every class
    its texts count for (and written to ``writer``'s files); the files are kept only if every batch ran."""
    bar = _progress(sum(len(b) for b in batches), progress)
    ok = False
    try:
        for idx in batches:
            ids, mask, pos = pad_batch([encoded[i] for i in idx], *padding)
            batch_starts = torch.tensor([starts[i] for i in idx]) if starts is not None else None
            states = recorder(ids, mask, pos, batch_starts)  # [B, L, H] float32 on CPU
            by_class: dict[str, list[int]] = {}
            for row, i in enumerate(idx):
                for c in items[i].classes:
                    by_class.setdefault(c, []).append(row)
                if writer:
                    writer.write(i, states[row])
            for c, rows in by_class.items():
                stats[c].update(states[rows])
            bar.update(len(idx))
        ok = True
    finally:
        bar.close()
        if writer:
            writer.close(ok)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="text", desc="recording", disable=not enabled, smoothing=0.1)


def init_distributed_if_launched() -> bool:
    """Join the process group a launcher (torchrun, accelerate launch) describes in the environment.

    Launchers only set WORLD_SIZE/RANK/MASTER_ADDR...; without init_process_group every rank would
    record the whole selection alone. gloo on CPU, nccl (one GPU per local rank) on CUDA. Returns
    whether this process is part of a multi-process group.
    """
    import torch.distributed as dist

    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")
    return True


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _merge_across_ranks(local: HiddenStateStats, names: list[str], shape: tuple[int, int]) -> HiddenStateStats:
    """Gather every rank's (count, mean, M2) and merge them in rank order: identical on all ranks."""
    import torch.distributed as dist

    world = dist.get_world_size()
    # nccl only moves CUDA tensors; gloo (and the rest) CPU ones.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    merged = {c: ClassStats.empty(*shape) for c in names}
    for c in names:
        cs = local.classes[c]
        packed = torch.cat(
            [torch.tensor([float(cs.count)], dtype=torch.float64), cs.mean.flatten(), cs.m2.flatten()]
        ).to(device)
        gathered = [torch.empty_like(packed) for _ in range(world)]
        dist.all_gather(gathered, packed)
        n = shape[0] * shape[1]
        for g in (g.cpu() for g in gathered):
            merged[c].merge(ClassStats(int(g[0]), g[1 : 1 + n].view(shape), g[1 + n :].view(shape)))
    return HiddenStateStats(merged, local.metadata)
