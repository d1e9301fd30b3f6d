"""The dev/test split of the emotion tasks' prompts: choose on dev, report on test.

A choice made by comparing configurations on the prompts an effect is then reported on inflates the winner, so
the steer_emotion tasks' 124 neutral prompts and the continuation tasks' 200 neutral GoEmotions texts each have
a **dev** part (for choosing: `steer tune`) and a **test** part (for reporting: `steer run`, the leaderboards,
every published number). The rule is fixed and needs nothing but the ids:

* within each stratum (a prompt's ``topic``; the continuation texts are one stratum), order the ids by the
  SHA-256 of ``steer-split:<id>``; the first ``floor(n/3 + 1/2)`` are dev, the rest test.

That gives 38 dev and 86 test prompts (every topic on both sides) and 67 dev and 133 test continuation texts.
An id's part depends only on its stratum's ids, never on a run, a seed or a model. The generated source's
prompts (``data/generation_prompts.txt``) are disjoint from both parts (tests/data/test_prompt_split.py).

Light (no torch): the task hooks and the command line import it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Literal, TypeVar, get_args

from steer_plugin.errors import check_choice

PromptSplit = Literal["dev", "test"]
SPLITS: tuple[str, ...] = get_args(PromptSplit)
DEFAULT_SPLIT: PromptSplit = "test"  # what every report runs on
TUNING_SPLIT: PromptSplit = "dev"  # what choices are made on
SPLIT_RULE = "v1: per stratum, ids ordered by sha256('steer-split:' + id), the first round(n/3) dev"
METADATA_KEY = "steer_split"  # the lm-eval task metadata that selects the part (recorded in results' configs)
_SALT = "steer-split:"

Row = TypeVar("Row")


def check_split(split: str) -> PromptSplit:
    check_choice("prompt split", split, SPLITS)
    return split  # type: ignore[return-value]


def _order(key: str) -> str:
    return hashlib.sha256((_SALT + key).encode("utf-8")).hexdigest()


def dev_ids(items: Iterable[tuple[str, str]]) -> set[str]:
    """The dev ids of ``(id, stratum)`` pairs under the rule of the module docstring."""
    strata: dict[str, list[str]] = {}
    for key, stratum in items:
        strata.setdefault(stratum, []).append(key)
    dev: set[str] = set()
    for keys in strata.values():
        ordered = sorted(keys, key=_order)
        dev.update(ordered[: (len(ordered) * 2 + 3) // 6])  # floor(n/3 + 1/2), in integers
    return dev


def split_rows(rows: Sequence[Row], split: str, ids: Sequence[str], strata: Sequence[str]) -> list[Row]:
    """The rows of ``split``, in their order; ``ids``/``strata``: each row's id and stratum."""
    part = check_split(split)
    dev = dev_ids(zip(ids, strata, strict=True))
    return [row for row, key in zip(rows, ids, strict=True) if (key in dev) == (part == "dev")]
