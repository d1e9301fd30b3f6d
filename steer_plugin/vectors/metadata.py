"""The metadata of a vector file, checked field by field: it comes from a file, so it is data to validate.

``metadata_problem`` is the one schema, used where vector metadata is read (``SteeringVector.load``,
the vectors recorded in a results JSON that `steer table` reads) and before a vector is saved. Fields
we do not know are kept as they are; the ones the code reads must have the type it reads them as.
No torch here: `steer table` reads results without it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from steer_plugin.io.schema import Rule, fields_problem, is_finite, is_int, shown

# how a vector is built from a recording: the whole mean difference, its top_k entries per layer, the first
# principal component of paired differences (pca) or a logistic-regression direction (probe) of per-text states
Method = Literal["mean", "top_k", "pca", "probe"]
METHODS: tuple[Method, ...] = get_args(Method)
# what the target is compared with: the baseline class (none) or the mean of the 27 emotions' class means
Centre = Literal["none", "emotions"]
CENTRES: tuple[Centre, ...] = get_args(Centre)

# how a text's hidden states become one row (``vectors.record``): its last real token, or the mean over its tokens
Pool = Literal["last", "mean"]
POOLS: tuple[Pool, ...] = get_args(Pool)

# where the texts of the two classes come from: GoEmotions, or the model's own responses (``vectors.generated``)
Source = Literal["goemotions", "generated"]
SOURCES: tuple[Source, ...] = get_args(Source)
DEFAULT_POOL: dict[str, Pool] = {"goemotions": "last", "generated": "mean"}


def pool_of(meta: dict[str, Any]) -> Pool:
    """The pooling a stats file or vector was recorded with; files from before pooling was an option: ``last``."""
    return meta.get("pool") or "last"


def text_source_of(meta: dict[str, Any]) -> Source:
    """Where a recording's texts came from; files from before the generated source: ``goemotions``.
    (Not the ``source`` field: for GoEmotions that says where the data set was read, ``local`` or ``hub``.)"""
    return meta.get("text_source") or "goemotions"


def vector_variant(text_source: str, pool: str) -> str | None:
    """What a vector's name adds after its method: the text source where it is not GoEmotions, the pooling
    where it is not the source's default (None: neither, the name as before)."""
    parts = [text_source] if text_source != "goemotions" else []
    if pool != DEFAULT_POOL.get(text_source, "last"):
        parts.append(f"pool-{pool}")
    return "-".join(parts) or None


_TEXT_FIELDS = (
    "model", "model_revision", "config_hash", "architecture", "block_path", "emotion", "baseline", "method",
    "dtype", "split", "selection", "template", "source", "created_at", "package_version", "residual_rms_source",
    "source_file", "imported_from", "source_path", "source_sha256",
)  # fmt: skip
_TEXT: Rule = (lambda v: v is None or isinstance(v, str), "is not a text")
_POSITIVE_INT: Rule = (lambda v: v is None or (is_int(v) and v >= 1), "is not a positive integer")
_RULES: dict[str, Rule] = {
    **{k: _TEXT for k in _TEXT_FIELDS},
    "top_k": _POSITIVE_INT,
    "max_per_class": _POSITIVE_INT,
    "seed": (lambda v: v is None or is_int(v), "is not an integer"),
    "pair_seed": (lambda v: v is None or is_int(v), "is not an integer"),
    "centre": (lambda v: v is None or v in CENTRES, f"is not one of {', '.join(CENTRES)}"),
    "neutral_pcs": (lambda v: v is None or (is_int(v) and v >= 0), "is not an integer >= 0"),
    "dedupe": (lambda v: v is None or isinstance(v, bool), "is not true or false"),
    "scale": (lambda v: v is None or is_finite(v), "is not a finite number"),
    "counts": (
        lambda v: isinstance(v, dict) and all(is_int(n) and n >= 0 for n in v.values()),
        "is not an object of counts >= 0",
    ),
    "control_of": (lambda v: isinstance(v, dict), "is not an object"),  # what a random control copies
    "recipe": (lambda v: isinstance(v, list), "is not a list"),  # the terms of a combination of vectors
    "pool": (lambda v: v is None or v in POOLS, f"is not one of {', '.join(POOLS)}"),
    "text_source": (lambda v: v is None or v in SOURCES, f"is not one of {', '.join(SOURCES)}"),
    "generation": (lambda v: isinstance(v, dict), "is not an object"),  # how a generated source's texts were made
}
_SCALAR: Rule = (lambda v: v is None or isinstance(v, (str, bool)) or is_finite(v), "is not a text or a number")
_SOURCE_RULES: dict[str, Rule] = {"top_k": _POSITIVE_INT}
_TERM_RULES: dict[str, Rule] = {"coefficient": (is_finite, "is not a finite number")}


def _shape_rules(n_layers: int | None, hidden: int | None) -> dict[str, Rule]:
    """The fields that describe the matrix: checked against its shape when it is known."""

    def size(n: int | None, what: str) -> Rule:
        return (lambda v: is_int(v) and v == (n or v)), f"is not the matrix's {n} {what}" if n else "is not an integer"

    per_layer = f" ({n_layers})" if n_layers else ""
    in_range = f" in 0..{n_layers - 1}" if n_layers else ""
    return {
        "n_layers": size(n_layers, "rows"),
        "hidden_size": size(hidden, "columns"),
        "layers": (
            lambda v: isinstance(v, list) and all(is_int(l) and 0 <= l < (n_layers or l + 1) for l in v),
            f"is not a list of layer numbers{in_range}",
        ),
        "residual_rms": (
            lambda v: (
                isinstance(v, list) and len(v) == (n_layers or len(v)) and all(is_finite(x) and x >= 0 for x in v)
            ),
            f"is not a list of one finite RMS >= 0 per layer{per_layer}",
        ),
    }


def metadata_problem(meta: Any, shape: tuple[int, int] | None = None) -> str | None:
    """What is wrong with a vector's metadata, as ``field: value why`` (None: nothing). ``shape``: the
    matrix's [n_layers, hidden], when known, for the fields that describe it."""
    if not isinstance(meta, dict):
        return f"metadata: {shown(meta)} is not a JSON object"
    problem = fields_problem(meta, {**_RULES, **_shape_rules(*(shape or (None, None)))})
    if problem:
        return problem
    source = meta.get("control_of", {})
    problem = fields_problem(source, {**{k: _SCALAR for k in source}, **_SOURCE_RULES}, "control_of")
    terms = (
        fields_problem(t, _TERM_RULES, f"recipe[{i}]", required=["coefficient"])
        for i, t in enumerate(meta.get("recipe", []))
    )
    return problem or next((p for p in terms if p), None)
