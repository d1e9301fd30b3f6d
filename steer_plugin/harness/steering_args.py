"""The steering arguments of an lm-eval model (``--model_args`` of ``steered_hf``), checked and typed.

``vector`` (file, or several joined by ``;``), ``alpha`` (one, or one per vector joined by ``;``), ``layers``
(``all`` or 0-based ``0;3;5-9`` - inside ``--model_args`` commas separate arguments, so use ``;`` there),
``positions`` (``all``|``response``), ``backend`` (``nnsight``|``hooks``), ``blocks`` (module path of the
decoder blocks, if needed) and ``prefix_reuse`` (``true``|``false``). From Python, ``vector`` may also be
``SteeringVector`` objects and ``alpha`` a number or a list.

Every argument is checked here, before a model loads (minutes for a big one); what needs the model (the layer
range, the vectors' shape) is checked when the configuration is placed on it. No model code is imported: a
second engine shares this record.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from steer_plugin.errors import SteerError, check_choice
from steer_plugin.io.terminal import printable
from steer_plugin.model.backends import BACKENDS
from steer_plugin.model.hooks import alphas_per_vector, finite_alpha
from steer_plugin.model.layers import layer_ranges
from steer_plugin.model.loading import check_block_path
from steer_plugin.model.positions import Positions, check_positions
from steer_plugin.steering.config import SteeringConfig
from steer_plugin.vectors.vector import SteeringVector, file_sha256

# what `vector=` / `alpha=` accept: from --model_args a string (several joined by ';'), from Python also objects
VectorArg = str | SteeringVector | Sequence[str | SteeringVector] | None
AlphaArg = float | str | Sequence[float]
LayersArg = str | Sequence[int] | None  # "all", "0;3;5-9" (also with commas), or indices
_LAYER_PIECE = re.compile(r"^\d+(-\d+)?$")


def _split(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [p.strip() for p in str(value).split(";") if p.strip()]


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise SteerError(f"{name} must be true or false, got {value!r}")


def parse_alphas(alpha: Any) -> list[float]:
    """``alpha`` (one number, or one per vector joined by ``;``) as finite floats, or an error naming it."""
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return [finite_alpha(alpha)]
    alphas = [finite_alpha(a) for a in _split(alpha)]
    if not alphas:  # `alpha=;` is a mistake, not the default 1.0
        raise SteerError(f"alpha={printable(alpha)} names no number; give e.g. alpha=1 or alpha=1;-0.5")
    return alphas


def vector_names(vector: Any) -> list[Any]:
    """The vectors of ``vector=`` (files joined by ``;``, or objects); a text naming none is an error, never
    an unsteered run (``vector=`` or ``vector=;;`` with an alpha would look steered in a results file)."""
    names = list(vector) if isinstance(vector, (list, tuple)) else _split(vector)
    if isinstance(vector, str) and not names:
        raise SteerError(f"vector={printable(vector)} names no vector file; give vector=FILE (or leave it out)")
    return names


# the steering arguments of ``steered_hf`` (SteeredHFLM.__init__'s own; everything else is HFLM's)
STEERING_ARGS = ("vector", "alpha", "layers", "positions", "backend", "blocks", "prefix_reuse")


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: insertions, deletions, substitutions, adjacent swaps (``alhpa``: 1)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def check_unknown_args(names: Iterable[str], accepted: Collection[str]) -> None:
    """Refuse a model argument that is not ``accepted`` (HFLM's own) and looks like a misspelt steering argument
    (``alhpa=``, ``vectors=``, ``Layers=``): else it would reach ``from_pretrained``, which refuses it with a
    transformers traceback after the tokenizer loaded, or, worse, ignores it and the run is unsteered. Anything
    else passes on to HFLM (and from it to transformers), as ``--model hf`` takes it."""
    for name in names:
        if name in accepted or name in STEERING_ARGS:
            continue
        key = str(name).strip().lower().replace("-", "_")
        near = [a for a in STEERING_ARGS if _edit_distance(key, a) <= 2]
        if near:
            raise SteerError(
                f"unknown steered_hf argument {printable(name)}= (did you mean {near[0]}=?); the steering "
                f"arguments are {', '.join(STEERING_ARGS)}"
            )


def check_arg_text(name: str, value: Any) -> None:
    """A value that must travel inside ``--model_args`` (``k=v,k=v``; ``vector=`` files joined by ``;``): a ``,``
    (or a ``;`` in a vector path) would make the recorded ``lm_eval`` command name another model or vector, and
    lm-eval has no quoting, so it is refused before any work."""
    separators = ",;" if name == "vector" else ","
    bad = [c for c in separators if c in str(value)]
    if bad:
        raise SteerError(
            f"{name}={printable(value)} contains {bad[0]!r}, which separates arguments in lm_eval's --model_args: "
            "a reproduce command could not name it; rename it (or link it) without ',' and ';'"
        )


def repair_layer_args(layers: Any, kwargs: dict[str, Any]) -> Any:
    """``layers=0,3,5-9`` in --model_args arrives as layers=0 plus stray keys '3', '5-9' (removed from ``kwargs``)."""
    stray = [k for k, v in kwargs.items() if _LAYER_PIECE.match(str(k)) and v in ("", None)]
    if not stray:
        return layers
    for k in stray:
        del kwargs[k]
    return ",".join([str(layers), *stray])


def load_vector(path: str | SteeringVector) -> SteeringVector:
    """A vector file (its path and hash recorded for the results), or the object as given."""
    if isinstance(path, SteeringVector):
        return path
    try:
        before = file_sha256(path)
    except OSError:
        before = None  # loading says why, in one line
    vec = SteeringVector.load(path)
    if file_sha256(path) != before:  # rewritten while read: its hash would not be of the tensor loaded
        raise SteerError(f"{printable(path)} changed while it was read; load it again once it is written")
    vec.metadata["source_path"] = str(path)
    vec.metadata["source_sha256"] = before
    return vec


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class SteeringArgs:
    """One steering configuration with the engine settings it came with, every value checked.

    Attributes:
        vectors: loaded; empty = unsteered.
        alphas: one per vector, or one for all; as given when there is no vector.
        layers: the layer spec as text (``all``, ``middle``, ``0,3,5-9``; indices as their ``str``), or None
            (all); its range is checked against the model.
        positions: ``all`` or ``response``.
        backend: ``nnsight`` or ``hooks``.
        blocks: module path of the decoder blocks, None: found automatically.
        prefix_reuse: score continuations of a shared context on one KV cache of it.
    """

    vectors: tuple[SteeringVector, ...] = ()
    alphas: tuple[float, ...] = (1.0,)
    layers: str | None = "all"
    positions: Positions = "all"
    backend: str = "nnsight"
    blocks: str | None = None
    prefix_reuse: bool = True

    @classmethod
    def parse(
        cls,
        vector: VectorArg = None,
        alpha: AlphaArg = 1.0,
        layers: LayersArg = "all",
        positions: str = "all",
        backend: str = "nnsight",
        blocks: str | None = None,
        prefix_reuse: bool | str = True,
    ) -> SteeringArgs:
        """Check every argument (one-line errors) and load the vectors; ``alpha`` may come without a vector."""
        reuse = parse_bool(prefix_reuse, "prefix_reuse")
        checked = check_positions(positions)
        check_choice("backend", backend, BACKENDS)  # ours (nnsight|hooks); HFLM's own (causal|seq2seq) is not settable
        alphas = parse_alphas(alpha)
        spec = None if layers is None else str(layers)
        layer_ranges(spec)  # syntax; the range needs the model
        check_block_path(blocks)
        vectors = tuple(load_vector(p) for p in vector_names(vector))
        if vectors:
            alphas = alphas_per_vector(alphas, len(vectors))
        return cls(vectors, tuple(alphas), spec, checked, backend, blocks, reuse)

    @classmethod
    def from_model_args(
        cls,
        vector: VectorArg = None,
        alpha: AlphaArg | None = None,
        layers: LayersArg = "all",
        positions: str = "all",
        backend: str = "nnsight",
        blocks: str | None = None,
        prefix_reuse: bool | str = True,
    ) -> SteeringArgs:
        """``parse`` for a model's arguments: ``alpha`` defaults to 1.0 with a vector and is an error without one."""
        args = cls.parse(vector, 1.0 if alpha is None else alpha, layers, positions, backend, blocks, prefix_reuse)
        if alpha is not None and not args.vectors:
            raise SteerError("alpha= without vector= steers nothing; give vector=FILE (or leave alpha out)")
        return args

    @classmethod
    def of(cls, config: SteeringConfig) -> SteeringArgs:
        """A sweep's configuration (alpha 0 or no vector: unsteered)."""
        vector = [config.vector] if config.steers and config.vector is not None else None  # one file: never split
        return cls.parse(vector, config.alpha, config.layers, config.positions)
