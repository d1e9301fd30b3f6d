"""Whether a checkpoint's weights cover the model its config.json describes. transformers initialises what the
weights lack at random and ignores what the model lacks (a warning at most): a config.json that claims five
layers over three layers' weights would "work" on two blocks of noise. Checked from the safetensors headers
before loading where they tell, and from transformers' loading report after."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError

_SHOWN = 3  # names a message lists before "and N more"


def _block_index(name: str, path: str) -> int | None:
    """The block a tensor or parameter named ``name`` belongs to under the block list ``path``, else None."""
    m = re.match(rf"{re.escape(path)}\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def _runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def layer_names(path: str, indices: Iterable[int]) -> str:
    """``model.layers.3..4, model.layers.7`` for blocks 3, 4 and 7 under ``model.layers``."""
    return ", ".join(f"{path}.{a}" if a == b else f"{path}.{a}..{b}" for a, b in _runs(indices))


def _some(names: Collection[str]) -> str:
    shown = sorted(names)[:_SHOWN]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _layer_count_error(model: str, claimed: int, held: int, what: str, path: str, indices: Iterable[int]) -> str:
    return (
        f"{model}: config.json says {claimed} layers, the weights hold {held} ({what}: {layer_names(path, indices)}); "
        "use a config.json that matches the weights"
    )


# --- before loading: the tensor names in the safetensors headers ------------------------------------------


def checkpoint_tensor_names(folder: Path) -> set[str] | None:
    """The tensor names of a model folder's safetensors weights, from the index or the files' headers (no
    tensor is read); None where the folder holds no safetensors weights or they cannot be read (loading says
    why)."""
    index = folder / "model.safetensors.index.json"
    try:
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
            return set(weight_map) if isinstance(weight_map, dict) else None
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            return None
        from safetensors import safe_open

        names: set[str] = set()
        for f in files:
            with safe_open(str(f), framework="pt") as handle:
                names.update(handle.keys())
        return names
    except Exception:  # a broken index or header: from_pretrained's own error says what is wrong
        return None


def check_checkpoint_layers(model: str, folder: Path, config: Any, block_paths: Iterable[str]) -> None:
    """Refuse a model folder whose config.json claims another number of decoder blocks than its safetensors
    weights hold (read from the headers: seconds before the weights would load). Blocks a config declares as
    extra prediction layers (``num_nextn_predict_layers``, kept beside the decoder blocks) are not extra."""
    claimed = getattr(config, "num_hidden_layers", None)
    names = checkpoint_tensor_names(folder)
    if not isinstance(claimed, int) or not names:
        return
    for full in block_paths:  # a base model's checkpoint names its blocks without the head's prefix (h.0...)
        for path in dict.fromkeys((full, full.partition(".")[2])):
            held = {i for n in names if (i := _block_index(n, path)) is not None} if path else set()
            if held:
                _check_held(model, claimed, held, path, getattr(config, "num_nextn_predict_layers", 0) or 0)
                return


def _check_held(model: str, claimed: int, held: set[int], path: str, spare: int) -> None:
    missing = [i for i in range(claimed) if i not in held]
    if missing:
        raise SteerError(_layer_count_error(model, claimed, len(held), "missing", path, missing))
    extra = [i for i in held if i >= claimed + spare]
    if extra:
        raise SteerError(_layer_count_error(model, claimed, len(held), "not in the model", path, extra))


# --- after loading: transformers' loading report -----------------------------------------------------------


def check_loading_info(model_name: str, model: Any, info: dict[str, Any], block_path: str | None) -> None:
    """Refuse a loaded model that its weights do not cover: parameters the weights lack (transformers drew
    them at random; buffers such as rotary frequencies are computed, and tied weights such as ``lm_head`` are
    not reported missing), weights of another shape (``ignore_mismatched_sizes``), or weights of decoder blocks
    the model does not have. Other unused weights stay transformers' warning."""
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        key, held, wanted = mismatched[0]
        raise SteerError(
            f"{model_name}: config.json does not match the weights' shapes: {key} is {list(held)} in the weights "
            f"but {list(wanted)} in the model (hidden_size {getattr(model.config, 'hidden_size', '?')})"
            + (f", and {len(mismatched) - 1} more" if len(mismatched) > 1 else "")
            + "; use a config.json that matches the weights"
        )
    params = {name for name, _ in model.named_parameters()}
    missing = {k for k in info.get("missing_keys") or () if k in params}
    n_blocks = _count_blocks(model, block_path)
    if missing:
        by_block = {k: _block_index(k, block_path) if block_path else None for k in missing}
        lacking = {i for i in by_block.values() if i is not None}
        if block_path and lacking and all(i is not None for i in by_block.values()) and n_blocks:
            held = n_blocks - len(lacking)
            raise SteerError(_layer_count_error(model_name, n_blocks, held, "missing", block_path, lacking))
        raise SteerError(
            f"{model_name}: the weights lack {len(missing)} of the model's parameters ({_some(missing)}), which "
            "would be initialised at random; use a config.json that matches the weights"
        )
    if block_path and n_blocks:
        extra = {i for k in info.get("unexpected_keys") or () if (i := _block_index(k, block_path)) is not None}
        extra = {i for i in extra if i >= n_blocks}
        if extra:
            held = max(extra) + 1
            raise SteerError(_layer_count_error(model_name, n_blocks, held, "not in the model", block_path, extra))


def _count_blocks(model: Any, block_path: str | None) -> int | None:
    obj = model
    for part in (block_path or "").split(".") if block_path else ():
        obj = getattr(obj, part, None)
    try:
        return len(obj) if block_path else None
    except TypeError:
        return None
