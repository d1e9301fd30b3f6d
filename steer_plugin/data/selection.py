"""Which GoEmotions texts make up a class: the two classes a steering vector is the difference of
(``select_texts``), or every class in one pass (``select_all``), deduped and sampled the same way.

Selection rules:

* ``exclusive`` (default, the original research scripts' rule): every label of the text is in the class
  and there is at least one, i.e. for a single emotion the label set is exactly ``{emotion}``.
* ``any``: at least one label of the text is in the class.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, cast, get_args

from steer_plugin.data.goemotions import (
    LABELS,
    Example,
    canonical_split,
    canonical_target,
    resolve_target,
    valid_targets,
)
from steer_plugin.errors import SteerError, check_choice

# a text is in a class when its labels are exactly the class's (``exclusive``) or include one of them (``any``)
SelectionRule = Literal["exclusive", "any"]
SELECTIONS: tuple[SelectionRule, ...] = get_args(SelectionRule)


def _check_selection(selection: str) -> SelectionRule:
    return cast(SelectionRule, check_choice("selection", selection, SELECTIONS))


def _in_class(labels: frozenset[str], members: frozenset[str], selection: SelectionRule) -> bool:
    if selection == "exclusive":
        return bool(labels) and labels <= members
    return not labels.isdisjoint(members)


def matches(labels: tuple[str, ...], target: str, selection: SelectionRule = "exclusive") -> bool:
    """Whether a text with ``labels`` belongs to class ``target`` under the selection rule."""
    _check_selection(selection)
    return _in_class(frozenset(labels), frozenset(resolve_target(target)), selection)


@dataclass
class Selection:
    """Texts per class (target and baseline, dataset order) plus what was asked, for metadata."""

    classes: dict[str, list[str]]
    target: str
    baseline: str
    split: str
    selection: SelectionRule
    max_per_class: int | None
    seed: int
    dedupe: bool
    source: str
    # label names of each class, so metadata records what an Ekman group meant at the time
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {name: len(texts) for name, texts in self.classes.items()}

    @property
    def target_texts(self) -> list[str]:
        return self.classes[self.target]


def check_sampling(max_per_class: int | None, seed: int = 0) -> None:
    """The sample a selection draws: ``max_per_class`` a positive integer (texts per class; for generated answers,
    prompts) or None (all), ``seed`` an integer >= 0. The one check of every command and API entry point that
    takes them, made where their arguments are built: before the data or the model loads."""
    if max_per_class is not None and (
        isinstance(max_per_class, bool) or not isinstance(max_per_class, int) or max_per_class < 1
    ):
        raise SteerError(
            f"max_per_class (--max-per-class) must be a positive integer or None (all texts), got {max_per_class!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SteerError(f"seed (--seed) must be an integer >= 0, got {seed!r}")


def _class_rows(
    examples: Sequence[Example],
    labelsets: Sequence[frozenset[str]],
    name: str,
    members: frozenset[str],
    selection: SelectionRule,
    max_per_class: int | None,
    seed: int,
    dedupe: bool,
) -> list[int]:
    """Row indices of class ``name``, deduped and sampled, in dataset order.

    The shuffle is seeded by (seed, class name) so a class gets the same rows whether it is
    selected alone (select_texts) or with all others (select_all).
    """
    rows = [i for i, ls in enumerate(labelsets) if _in_class(ls, members, selection)]
    if dedupe:
        seen: set[str] = set()
        kept = []
        for i in rows:
            if examples[i].text not in seen:
                seen.add(examples[i].text)
                kept.append(i)
        rows = kept
    if max_per_class is not None and len(rows) > max_per_class:
        rng = random.Random(f"goemotions:{seed}:{name}")  # str seeds are hashed deterministically
        rows = sorted(rng.sample(rows, max_per_class))
    return rows


def select_texts(
    examples: Sequence[Example],
    target: str,
    baseline: str = "neutral",
    selection: SelectionRule = "exclusive",
    max_per_class: int | None = None,
    seed: int = 0,
    dedupe: bool = False,
    split: str = "train",
    source: str = "local",
) -> Selection:
    """The texts of ``target`` and ``baseline``: the two classes a steering vector is the difference of.

    Args:
        examples: GoEmotions examples (``load_goemotions``).
        target: a label (``anger``) or an Ekman group (``ekman:anger``).
        baseline: the class the vector points away from.
        selection: ``exclusive`` (a text's labels all lie in the class) or ``any`` (one of them does).
        max_per_class: a seeded sample of at most this many texts per class (dataset order kept); None: all.
        seed: the seed of that sample.
        dedupe: drop identical texts within a class.
        split: recorded in the result (and the vector's metadata), not used to select.
        source: recorded likewise (``local`` or ``hub``), not used to select.

    Returns:
        The texts per class in dataset order, with what was asked; a SteerError if a class has no texts.
    """
    _check_selection(selection)
    check_sampling(max_per_class, seed)
    split = canonical_split(split)
    tgt, base = canonical_target(target), canonical_target(baseline)
    if tgt == base:
        raise SteerError(f"target and baseline are the same class {tgt!r}; pick a different baseline")
    if not examples:
        raise SteerError(f"no GoEmotions examples given for split {split!r}")
    labelsets = [frozenset(ex.labels) for ex in examples]
    classes: dict[str, list[str]] = {}
    members: dict[str, tuple[str, ...]] = {}
    for name in (tgt, base):
        mem = frozenset(resolve_target(name))
        rows = _class_rows(examples, labelsets, name, mem, selection, max_per_class, seed, dedupe)
        if not rows:
            raise SteerError(
                f"no {split} texts for class {name!r} with selection={selection!r}"
                + ("; try selection='any'" if selection == "exclusive" else "")
            )
        classes[name] = [examples[i].text for i in rows]
        members[name] = tuple(m for m in LABELS if m in mem)
    return Selection(
        classes=classes,
        target=tgt,
        baseline=base,
        split=split,
        selection=selection,
        max_per_class=max_per_class,
        seed=seed,
        dedupe=dedupe,
        source=source,
        members=members,
    )


def select_all(
    examples: Sequence[Example],
    selection: SelectionRule = "exclusive",
    max_per_class: int | None = None,
    seed: int = 0,
    dedupe: bool = False,
) -> tuple[list[str], list[tuple[str, ...]]]:
    """All classes in one pass: unique texts to run and, per text, the classes it counts for.

    Classes are the 28 labels and the ``ekman:*`` groups, each deduped/sampled exactly as
    ``select_texts`` would. Texts are listed once, in order of first appearance. Without dedupe a
    text that occurs in several rows of a class lists that class once per row, so adding the text's
    activations once per listed class gives the same per-class counts as ``select_texts``.
    Classes with no texts simply appear nowhere.
    """
    _check_selection(selection)
    check_sampling(max_per_class, seed)
    labelsets = [frozenset(ex.labels) for ex in examples]
    per_row: dict[int, list[str]] = {}
    for name in valid_targets():
        mem = frozenset(resolve_target(name))
        for i in _class_rows(examples, labelsets, name, mem, selection, max_per_class, seed, dedupe):
            per_row.setdefault(i, []).append(name)
    class_order = {name: k for k, name in enumerate(valid_targets())}
    by_text: dict[str, list[str]] = {}
    for i in sorted(per_row):
        by_text.setdefault(examples[i].text, []).extend(per_row[i])
    texts = list(by_text)
    memberships = [tuple(sorted(by_text[t], key=class_order.__getitem__)) for t in texts]
    return texts, memberships
