"""Fingerprints of a model without loading it: its architecture config, its weights files (cheap samples of
each) and the other files its outputs depend on (config, tokenizer, chat template). Sweeps, calibrations and
tunings key on them, so that the same name with other contents is never taken for the same model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from steer_plugin.io.fingerprint import files_fingerprint, folder_files
from steer_plugin.model.gguf import is_gguf


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


_MIB = 1 << 20
_SAMPLES = 16  # 64 KiB pieces spread over each weights file, besides its first and last MiB


def weights_files(name: str, revision: str | None = None) -> list[Path]:
    """The weights files of a local model folder, or of a hub model's cached snapshot, or a GGUF file itself
    ([] when none is here: not downloaded yet, or a model built in memory)."""
    if name and is_gguf(name):
        path = Path(name).expanduser()
        if not path.is_file():
            repo, _, filename = name.rpartition("/")
            path = Path(str(_hub_cached(repo, filename, revision) or ""))
        return [path] if path.is_file() else []
    folder = model_folder(name, revision)
    if folder is None:
        return []
    return sorted(
        f
        for f in folder.iterdir()
        if f.is_file() and (f.suffix == ".safetensors" or (f.suffix == ".bin" and f.name != "training_args.bin"))
    )


def model_folder(name: str, revision: str | None) -> Path | None:
    """A local model folder, or the folder of a hub model's cached snapshot; None when neither is here."""
    folder = Path(name).expanduser() if name else None
    if folder is None or not folder.is_dir():
        cached = _hub_cached(name, "config.json", revision)
        if cached is None:
            return None
        folder = Path(cached).parent
    return folder


# what a model's outputs depend on besides its weights: its config, generation defaults, tokenizer and chat
# template, and the code of a remote-code model (not its README or licence)
_MODEL_FILE_NAMES = ("config.json", "generation_config.json", "merges.txt", "added_tokens.json")
_MODEL_FILE_PREFIXES = ("tokenizer", "special_tokens_map", "vocab", "chat_template", "spiece", "preprocessor_config")


def _is_model_file(path: Path) -> bool:
    return path.name in _MODEL_FILE_NAMES or path.name.startswith(_MODEL_FILE_PREFIXES) or path.suffix == ".py"


def model_files_fingerprint(name: str, revision: str | None = None) -> str | None:
    """A fingerprint of the contents of a model's config, tokenizer and chat-template files (the same weights
    with another config or tokenizer give other results); None: not here, or a GGUF (they are inside the file,
    under its weights fingerprint)."""
    if not name or is_gguf(name):
        return None
    folder = model_folder(name, revision)
    return None if folder is None else files_fingerprint(folder_files(folder, keep=_is_model_file))


def _hub_cached(repo: str, filename: str, revision: str | None) -> str | None:
    """A file of a hub model's cached snapshot; None where it is not cached (or ``repo`` is no hub id)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo, filename, revision=revision)
    except Exception:  # not a hub id (an absent path, an in-memory model's ""): nothing to fingerprint
        return None
    return cached if isinstance(cached, str) else None


def weights_fingerprint(name: str, revision: str | None = None) -> str | None:
    """A cheap fingerprint of a model's weights without loading them: per weights file its name, size, first
    and last MiB and ``_SAMPLES`` pieces between (an edited or other model of the same name and config differs;
    a copy of the same files, such as the hub snapshot and an offline copy, does not). None: no files to read."""
    files = weights_files(name, revision)
    if not files:
        return None
    h = hashlib.sha256()
    try:
        for f in files:
            size = f.stat().st_size
            h.update(f"{f.name}\0{size}\0".encode())
            offsets = [0, *(size * i // (_SAMPLES + 1) for i in range(1, _SAMPLES + 1)), max(size - _MIB, 0)]
            lengths = [_MIB, *([_MIB // 16] * _SAMPLES), _MIB]
            with open(f, "rb") as fh:
                for offset, length in zip(offsets, lengths):
                    fh.seek(offset)
                    h.update(fh.read(length))
    except OSError:
        return None
    return h.hexdigest()[:16]
