"""Loading causal LMs and finding their decoder blocks (the residual stream we read and steer)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from steer_plugin.errors import SteerError

# Where the decoder blocks live, per architecture family (first match wins).
BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma, Phi-3, SmolLM
    "model.language_model.layers",  # multimodal wrappers (Gemma-3, Llama-4) around a text model
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)

DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_module(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def find_block_path(model: Any, override: str | None = None) -> str:
    """Dotted path of the ModuleList of decoder blocks, e.g. ``model.layers``."""
    import torch

    candidates = (override,) if override else BLOCK_PATHS
    for path in candidates:
        try:
            obj = resolve_module(model, path)
        except (AttributeError, IndexError, TypeError):
            continue
        if isinstance(obj, torch.nn.ModuleList) and len(obj) > 0:
            return path
    if override:
        raise SteerError(f"--blocks {override!r} is not a non-empty ModuleList in {type(model).__name__}")
    raise SteerError(
        f"cannot find the decoder blocks of {type(model).__name__}: looked for "
        f"{', '.join(BLOCK_PATHS)}; name the ModuleList with --blocks PATH (e.g. --blocks model.layers)"
    )


def find_blocks(model: Any, override: str | None = None) -> list[Any]:
    return list(resolve_module(model, find_block_path(model, override)))


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise SteerError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str  # hub id or local path as given

    @property
    def fingerprint(self) -> dict[str, str]:
        return model_fingerprint(self.model, self.name)


def load_model(
    name: str,
    *,
    dtype: str = "float32",
    device: str | None = None,
    device_map: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM + tokenizer by hub id or local path, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if device_map:
        kwargs["device_map"] = device_map
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SteerError(f"cannot load model {name!r}: {first}") from None
    if device and not device_map:
        model.to(device)
    model.eval()
    return LoadedModel(model, tok, name)


def config_hash(config: Any) -> str:
    """Hash of the architecture-defining config (ignores paths, versions and dtype)."""
    d = config.to_dict()
    skip = {"transformers_version", "torch_dtype", "dtype", "_name_or_path", "_commit_hash"}
    clean = {k: v for k, v in d.items() if k not in skip and not k.startswith("_")}
    blob = json.dumps(clean, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def model_fingerprint(model: Any, name: str | None = None) -> dict[str, str]:
    cfg = model.config
    return {
        "model": name or getattr(cfg, "_name_or_path", "") or type(model).__name__,
        "model_revision": str(getattr(cfg, "_commit_hash", "") or ""),
        "config_hash": config_hash(cfg),
        "architecture": type(model).__name__,
    }


def model_slug(name: str) -> str:
    """``meta-llama/Llama-3.2-3B-Instruct`` -> ``llama-3.2-3b-instruct`` (for vectors/<slug>/)."""
    base = name.rstrip("/").split("/")[-1]
    return "".join(c if c.isalnum() or c in ".-_" else "-" for c in base).lower()
