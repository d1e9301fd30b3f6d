"""Loading causal LMs and finding their decoder blocks (the residual stream we read and steer)."""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from steer_plugin.errors import SteerError, check_choice, first_line
from steer_plugin.io.schema import check_fields
from steer_plugin.model.checkpoint import check_checkpoint_layers, check_loading_info
from steer_plugin.model.gguf import GGUF_SUFFIX, is_gguf, split_gguf
from steer_plugin.model.layers import layer_ranges, parse_layers

# Where the decoder blocks live, per architecture family (first match wins).
BLOCK_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma, Phi-3, SmolLM
    "model.language_model.layers",  # multimodal wrappers (Gemma-3, Llama-4) around a text model
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
DTYPES: tuple[str, ...] = get_args(Dtype)
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # small and ungated: runs on a laptop CPU


# a model folder's files that transformers reads besides the weights (config, generation config, tokenizer)
MODEL_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)  # fmt: skip


def check_block_path(path: str | None) -> str | None:
    """A module path (``model.layers``, ``blocks.0``): dotted attribute names and indices, checked before loading."""
    if path is not None and not all(part.isidentifier() or part.isdecimal() for part in str(path).split(".")):
        raise SteerError(f"--blocks {path!r} is not a module path: use attribute names and indices like model.layers")
    return path


def resolve_module(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdecimal() else getattr(obj, part)
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


def check_device(device: str) -> str:
    """``device`` if torch knows it and this machine has it (``cuda:1`` with one GPU has not), else a one-line
    SteerError before any loading (not a RuntimeError when the weights move)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise SteerError(f"--device {device!r} is not a device: use cpu, cuda, cuda:1, mps ...") from None
    backend = {"cuda": torch.cuda, "mps": torch.backends.mps}.get(parsed.type)
    if backend is not None and not backend.is_available():
        raise SteerError(f"--device {device}: this machine has no {parsed.type} device (use cpu)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise SteerError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return "auto"
    check_choice("dtype", name, DTYPES)
    return getattr(torch, name)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str  # hub id or local path as given

    @property
    def fingerprint(self) -> dict[str, str]:
        from steer_plugin.model.fingerprint import model_fingerprint

        return model_fingerprint(self.model, self.name)


@dataclass(frozen=True)
class ModelOptions:
    """How to load a model. The one description that feeds loading for recording and checks, the
    ``steered_hf`` model of sweeps, and the ``--model_args`` that reproduce a sweep with ``lm_eval``.

    Args:
        name: a hub id, a local folder, or a GGUF file (``dir/m.gguf``, loaded dequantized by transformers'
            GGUF loader with the tokenizer it holds; ``org/repo/m.gguf`` for one on the hub).
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        device: ``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...; None: where it loads (CPU), or CUDA for
            evaluation when available.
        device_map: e.g. ``auto``: spread a big model over devices.
        revision: the hub revision (branch, tag or commit).
        trust_remote_code: run the model repository's own code.
        blocks: module path of the decoder blocks, if they are not found automatically.
    """

    name: str
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    blocks: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)  # `trust_remote_code="no"` is no True
        torch_dtype(self.dtype)  # SteerError for an unknown dtype, before any loading
        if self.device is not None:
            check_device(self.device)
        check_block_path(self.blocks)
        split_gguf(self.name)  # a missing or broken local GGUF file, too

    def load(self) -> LoadedModel:
        """Load the causal LM and its tokenizer.

        Returns:
            The model (in eval mode, on ``device`` unless ``device_map`` placed it), its tokenizer and name;
            a SteerError naming the model when it cannot be loaded.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {"dtype": torch_dtype(self.dtype)}
        if self.device_map:
            kwargs["device_map"] = self.device_map
        folder, gguf_file = split_gguf(self.name)
        self.check_checkpoint()
        if not gguf_file:  # a report of what the weights lack, instead of a random initialisation of it
            kwargs.update(output_loading_info=True, ignore_mismatched_sizes=True)
        try:
            tok = AutoTokenizer.from_pretrained(folder, **self._source_kwargs())  # its own: callers set padding
            loaded: Any = AutoModelForCausalLM.from_pretrained(folder, **self._source_kwargs(), **kwargs)
        except _load_errors(gguf_file) as e:
            raise SteerError(f"cannot load model {self.name!r}: {first_line(e)}") from None
        if gguf_file:
            model = loaded
            named_after_file(model, self.name)
        else:
            model, info = loaded
            check_loaded_weights(self.name, model, info, self.blocks)
        if self.device and not self.device_map:
            model.to(self.device)
        model.eval()
        return LoadedModel(model, tok, self.name)

    def _source_kwargs(self) -> dict[str, Any]:
        """``from_pretrained``'s keywords naming where the model is (its revision, remote code, GGUF file)."""
        gguf_file = split_gguf(self.name)[1]
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        if self.revision:
            kwargs["revision"] = self.revision
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        return kwargs

    def local_files(self) -> list[Path]:
        """The files of a local model that loading reads (its GGUF file, or its folder's config, tokenizer
        and weights files): what no output may replace; none for a hub model (its cache is not ours to write)."""
        folder, gguf_file = split_gguf(self.name)
        path = Path(folder).expanduser()
        if gguf_file:
            return [path / gguf_file]
        if not path.is_dir():
            return []
        from steer_plugin.model.fingerprint import weights_files

        return [*(path / name for name in MODEL_FILES), *weights_files(str(path))]

    def weights_fingerprint(self) -> str | None:
        """``weights_fingerprint`` of the files this model loads from (None: not on this machine yet)."""
        from steer_plugin.model.fingerprint import weights_fingerprint

        return weights_fingerprint(self.name, self.revision)

    def dimensions(self) -> tuple[int, int] | None:
        """(decoder blocks, hidden size) from the model's config alone (no weights), to check layer specs and
        ``--top-k`` before any model work; None where the config does not say (or ``blocks`` names other ones)."""
        config = self._text_config()
        if config is None:
            return None  # loading says why, as before
        self.check_checkpoint(config)
        if self.blocks:
            return None
        n_layers, hidden = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
        return (n_layers, hidden) if isinstance(n_layers, int) and isinstance(hidden, int) else None

    def _text_config(self) -> Any:
        """The model's (text) config, read without weights; None where it cannot be read (loading says why)."""
        folder, gguf_file = split_gguf(self.name)
        unreadable: tuple[type[Exception], ...] = (*_load_errors(gguf_file), ValueError, ImportError)
        try:
            return _from_pretrained("AutoConfig", folder, **self._source_kwargs()).get_text_config()
        except unreadable:
            return None

    def check_checkpoint(self, config: Any = None) -> None:
        """Refuse a model folder (or cached hub snapshot) whose config.json claims other decoder blocks than
        its safetensors weights hold, from their headers: before any weights load."""
        from steer_plugin.model.fingerprint import model_folder

        folder = None if is_gguf(self.name) else model_folder(self.name, self.revision)
        config = config if config is not None else (self._text_config() if folder is not None else None)
        if folder is not None and config is not None:
            check_checkpoint_layers(self.name, folder, config, (self.blocks,) if self.blocks else BLOCK_PATHS)

    def check_layers(self, spec: str | None) -> None:
        """A layer spec's syntax, and its range against the model's depth where the config tells: before the
        weights load (minutes for a big model), not after."""
        layer_ranges(spec)
        dimensions = self.dimensions()
        if dimensions is not None:
            parse_layers(spec, dimensions[0])

    def _tokenizer(self) -> Any:
        try:
            return _from_pretrained("AutoTokenizer", split_gguf(self.name)[0], **self._source_kwargs())
        except _load_errors(split_gguf(self.name)[1]) as e:
            raise SteerError(f"cannot load the tokenizer of {self.name!r}: {first_line(e)}") from None

    def has_chat_template(self) -> bool:
        """Whether the model's tokenizer has a chat template (read from the tokenizer alone, no weights)."""
        return bool(getattr(self._tokenizer(), "chat_template", None))

    def check_generation(self, tasks: list[str]) -> None:
        """``tasks`` (those that generate) can run on this model's tokenizer (read alone, no weights)."""
        if tasks and getattr(self._tokenizer(), "eos_token_id", None) is None:
            raise no_eos_token(self.name, tasks)

    def harness_args(self) -> dict[str, Any]:
        """Keyword arguments of ``steered_hf`` (HFLM) that load this model the same way."""
        import torch

        folder, gguf_file = split_gguf(self.name)
        args: dict[str, Any] = {
            "pretrained": folder,
            **({"gguf_file": gguf_file} if gguf_file else {}),  # HFLM's own argument: `--model hf` takes it too
            "dtype": self.dtype,
            "device": self.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        }
        if self.revision:
            args["revision"] = self.revision
        if self.trust_remote_code:
            args["trust_remote_code"] = True
        if self.device_map:
            args["parallelize"] = True  # HFLM's way of spreading layers over devices
        if self.blocks:
            args["blocks"] = self.blocks
        return args


def no_eos_token(name: str, tasks: list[str]) -> SteerError:
    """The error for generating harness tasks on a tokenizer without an eos token: lm-eval's generation stops
    at it (its own ``hf`` model fails without one), so it is refused, not run to a traceback."""
    return SteerError(
        f"the tokenizer of {name} has no eos token, at which lm-eval's generation stops (needed by "
        f"{', '.join(tasks)}); set eos_token in its tokenizer_config.json, or evaluate tasks that do not generate"
    )


def _from_pretrained(auto_class: str, folder: str, **kwargs: Any) -> Any:
    """``transformers.<auto_class>.from_pretrained`` for a look at a config or tokenizer (shared: never modify
    it); a local GGUF file is read once per process and version of the file: parsing its metadata takes seconds
    (10 s for Gemma-3's 262k-token vocabulary) and a ``steer run`` looks several times before loading weights."""
    gguf_file = kwargs.get("gguf_file")
    path = Path(folder, gguf_file) if gguf_file else None
    if path is None or not path.is_file():
        return _transformers_from_pretrained(auto_class, folder, kwargs)
    stat = path.stat()
    return _gguf_from_pretrained(auto_class, folder, tuple(sorted(kwargs.items())), (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=4)
def _gguf_from_pretrained(auto_class: str, folder: str, kwargs: tuple[tuple[str, Any], ...], _stamp: Any) -> Any:
    return _transformers_from_pretrained(auto_class, folder, dict(kwargs))


def _transformers_from_pretrained(auto_class: str, folder: str, kwargs: dict[str, Any]) -> Any:
    import transformers

    return getattr(transformers, auto_class).from_pretrained(folder, **kwargs)


def _load_errors(gguf_file: str | None) -> tuple[type[Exception], ...]:
    """What says a model cannot be loaded (a one-line SteerError): a missing folder or file; for a GGUF also
    what transformers' GGUF loader raises for a file it cannot read (an unsupported architecture, a broken
    file, a cut one, no ``gguf`` package); anything else stays a traceback."""
    return (OSError, ValueError, ImportError, KeyError, struct.error) if gguf_file else (OSError,)


def check_loaded_weights(name: str, model: Any, info: dict[str, Any], blocks: str | None = None) -> None:
    """``from_pretrained``'s loading report (``output_loading_info``) checked: a SteerError naming the model
    where its weights do not cover it (see ``check_loading_info``)."""
    try:
        block_path: str | None = find_block_path(model, blocks)
    except SteerError:
        block_path = None  # no decoder blocks to count: the parameters alone are checked
    check_loading_info(name, model, info, block_path)


def named_after_file(model: Any, name: str) -> None:
    """Name a model loaded from a GGUF after the file (transformers names it after its folder), so that its
    weights fingerprint, vector metadata and warnings are about the file."""
    model.config.name_or_path = model.name_or_path = name


def model_slug(name: str) -> str:
    """``meta-llama/Llama-3.2-3B-Instruct`` -> ``llama-3.2-3b-instruct`` (for vectors/<slug>/): one path
    component, never ``..``, ``.``, empty or hidden (a model id from a stats file must not leave ``vectors/``);
    ``model`` when nothing usable is left."""
    base = name.rstrip("/").split("/")[-1]
    base = base[: -len(GGUF_SUFFIX)] if is_gguf(base) else base  # `gemma-3-270m-q4_k_m`, not a folder `.gguf`
    slug = "".join(c if c.isalnum() or c in ".-_" else "-" for c in base).lower().strip(".")
    return slug or "model"
