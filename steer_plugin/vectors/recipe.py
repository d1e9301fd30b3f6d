"""How a vector is built, as one object: method, top-k size, centring, neutral components projected out, where
the texts come from and how a text's states are pooled. Its ``label`` is the one spelling of a recipe (default
file names, leaderboard labels); ``check`` the one place its fields are validated.

Light (no torch, no numpy): the command line builds recipes while it parses arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steer_plugin.errors import SteerError, check_choice
from steer_plugin.io.schema import check_fields
from steer_plugin.vectors.metadata import (
    CENTRES,
    DEFAULT_POOL,
    METHODS,
    POOLS,
    SOURCES,
    Centre,
    Method,
    Pool,
    Source,
    pool_of,
    text_source_of,
    vector_variant,
)

FLAGS = {"method": "--method", "top_k": "--top-k", "centre": "--centre", "neutral_pcs": "--neutral-pcs",
         "source": "--source", "pool": "--pool"}  # fmt: skip
PER_TEXT_METHODS: tuple[Method, ...] = ("pca", "probe")  # need each text's states, not only the class means
DEFAULT_TOP_K = 20  # neurons per layer of a top_k vector where `steer run` builds one


@dataclass(frozen=True)
class Recipe:
    """How a vector is built from a recording.

    Attributes:
        method: ``mean`` (the class mean difference), ``top_k`` (its ``top_k`` largest entries per layer),
            ``pca`` or ``probe`` (directions of per-text states, see ``vectors.directions``).
        top_k: neurons kept per layer; only for ``top_k``.
        centre: ``none`` (against the baseline class) or ``emotions`` (against the mean of the 27 emotions' means).
        neutral_pcs: principal components of the baseline texts' states projected out (0: none).
        source: where the texts come from: GoEmotions, or the model's own answers (``generated``).
        pool: how a text's states become one row; None: the source's default (``DEFAULT_POOL``).
    """

    method: Method = "mean"
    top_k: int | None = None
    centre: Centre = "none"
    neutral_pcs: int = 0
    source: Source = "goemotions"
    pool: Pool | None = None

    def __post_init__(self) -> None:
        # the types, where it is built (the choices: ``check``; a vector file's recipe may be `imported`)
        check_fields(self, FLAGS, choices=False)

    @classmethod
    def of(cls, meta: dict[str, Any]) -> Recipe | None:
        """The recipe a vector's (or a control's) metadata records; None: no method (an imported vector), or
        fields of other types (a damaged file's). Files from before a field existed read as its old behaviour
        (no centring, no projection, GoEmotions, last)."""
        if not meta.get("method"):
            return None
        try:
            return cls(
                meta["method"], meta.get("top_k"), meta.get("centre") or "none", meta.get("neutral_pcs") or 0,
                text_source_of(meta), meta.get("pool"),
            )  # fmt: skip
        except SteerError:
            return None

    @property
    def resolved_pool(self) -> Pool:
        return self.pool or DEFAULT_POOL.get(self.source, "last")

    @property
    def per_text(self) -> bool:
        """Whether building needs the per-text states of the recording, not only its class means."""
        return self.method in PER_TEXT_METHODS or self.neutral_pcs > 0

    def label(self) -> str:
        """``<method>[-k][-emotions][-npcK][-generated][-pool-P]``: ``top_k-20``, ``mean-emotions-npc3``,
        ``mean-generated``, ``pca-pool-mean``. The first recipe, ``top_k-20``, keeps the name it always had."""
        parts = [str(self.method)]
        if self.method == "top_k" and self.top_k:
            parts.append(str(self.top_k))
        if self.centre != "none":
            parts.append(str(self.centre))
        if self.neutral_pcs:
            parts.append(f"npc{self.neutral_pcs}")
        variant = vector_variant(self.source, self.resolved_pool)
        return "-".join(parts + ([variant] if variant else []))

    def check(self, hidden: int | None = None) -> Recipe:
        """Every field against what it accepts (``hidden``: the model's hidden size, where known, bounds top_k);
        a one-line SteerError naming the flag otherwise. Returns the recipe."""
        check_choice("--method", self.method, METHODS)
        check_choice("--centre", self.centre, CENTRES)
        check_choice("--source", self.source, SOURCES)
        if self.pool is not None:
            check_choice("--pool", self.pool, POOLS)
        if self.top_k is not None and self.method != "top_k":
            raise SteerError("--top-k only applies to --method top_k")
        if self.method == "top_k":
            check_top_k(self.top_k, hidden)
        check_neutral_pcs(self.neutral_pcs)
        return self

    def build_kwargs(self) -> dict[str, Any]:
        """``build_vector``'s keywords for this recipe (the source and pooling are the recording's)."""
        return {"method": self.method, "top_k": self.top_k, "centre": self.centre, "neutral_pcs": self.neutral_pcs}


DEFAULT_RECIPE = Recipe("mean", centre="emotions", neutral_pcs=3)
"""`steer run`'s recipe, chosen by measurement at equal KL (docs/recipes-*.md): ``mean-emotions-npc3``."""


def recipe_name(meta: dict[str, Any]) -> str | None:
    """How a vector was built, as leaderboard labels spell it: ``mean``, ``top_k-20``, ``pca-emotions-npc3``,
    ``mean-generated``; None: no method. A control's ``control_of`` leaves out what is default."""
    recipe = Recipe.of(meta)
    return recipe.label() if recipe is not None else None


def recording_recipe(recipe: Recipe, recording: dict[str, Any]) -> Recipe:
    """``recipe`` with the text source and pooling a recording (its statistics' metadata) was made with."""
    from dataclasses import replace

    return replace(recipe, source=text_source_of(recording), pool=pool_of(recording))


def check_top_k(top_k: int | None, hidden: int | None = None) -> int:
    """The ``top_k`` of a top-k vector: at least 1, at most the hidden size (where it is known)."""
    if not top_k or top_k < 1:
        raise SteerError("method top_k needs --top-k K with K >= 1")
    if hidden is not None and top_k > hidden:
        raise SteerError(f"--top-k {top_k} is larger than the hidden size {hidden}")
    return top_k


def check_neutral_pcs(k: int, n_texts: int | None = None, hidden: int | None = None) -> int:
    """``--neutral-pcs K``: 0 (none) or at most the rank of the centred neutral states."""
    if not isinstance(k, int) or k < 0:
        raise SteerError(f"--neutral-pcs must be an integer >= 0 (0: project nothing), got {k!r}")
    if n_texts is not None and k > n_texts - 1:
        raise SteerError(f"--neutral-pcs {k} needs at least {k + 1} baseline texts (there are {n_texts})")
    if hidden is not None and k > hidden:
        raise SteerError(f"--neutral-pcs {k} is larger than the hidden size {hidden}")
    return k


def needs_activations(method: Method, neutral_pcs: int = 0) -> bool:
    """Whether a vector needs the per-text states of the recording, not only its class means."""
    return Recipe(method, neutral_pcs=neutral_pcs).per_text
