"""GoEmotions texts grouped into emotion classes (single emotions and Ekman groups).

Two sources give the same ``Example`` lists: the Hugging Face hub dataset
(``google-research-datasets/go_emotions``, config ``simplified``, loaded lazily) and a local folder
with the original files (``train.tsv``, ``dev.tsv``, ``test.tsv``, ``emotions.txt``). The TSVs
use standard CSV quoting (about 1,400 texts are quoted with doubled inner quotes), so they are read
with the ``csv`` module; splitting on tabs would leave those quote characters in the text and the
texts would differ from the hub's.

A class is one of the 28 labels or an Ekman group ``ekman:<group>`` (the release's
``ekman_mapping.json``, built in); which texts belong to a class is ``steer_plugin.data.selection``'s rule.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer_plugin.errors import SteerError, first_line
from steer_plugin.io.reading import open_regular, read_regular_text

HUB_DATASET = "google-research-datasets/go_emotions"
HUB_CONFIG = "simplified"
# a local GoEmotions release folder for the neutral texts (side effects, the continuation tasks) instead of the hub
GOEMOTIONS_DIR_ENV = "STEER_GOEMOTIONS_DIR"

# Index order of emotions.txt (27 = neutral); embedded so the hub path needs no folder.
LABELS: tuple[str, ...] = (
    "admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion",
    "curiosity", "desire", "disappointment", "disapproval", "disgust", "embarrassment",
    "excitement", "fear", "gratitude", "grief", "joy", "love", "nervousness", "optimism",
    "pride", "realization", "relief", "remorse", "sadness", "surprise", "neutral",
)  # fmt: skip

# Built-in copy of goemotions/data/ekman_mapping.json (same groups, same member order).
EKMAN: dict[str, tuple[str, ...]] = {
    "anger": ("anger", "annoyance", "disapproval"),
    "disgust": ("disgust",),
    "fear": ("fear", "nervousness"),
    "joy": (
        "joy", "amusement", "approval", "excitement", "gratitude", "love", "optimism", "relief",
        "pride", "admiration", "desire", "caring",
    ),
    "sadness": ("sadness", "disappointment", "embarrassment", "grief", "remorse"),
    "surprise": ("surprise", "realization", "confusion", "curiosity"),
}  # fmt: skip

EKMAN_PREFIX = "ekman:"
# canonical split -> local file; "dev" is the upstream file name of the hub's "validation" split.
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "dev": "validation", "test": "test"}
EMOTIONS_FILE = "emotions.txt"


@dataclass(frozen=True)
class Example:
    """One GoEmotions row: the text, its label names (file order) and the Reddit comment id."""

    text: str
    labels: tuple[str, ...]
    id: str


# --------------------------------------------------------------------------- targets


def valid_targets() -> list[str]:
    """The 28 labels (index order) followed by ``ekman:<group>`` for each Ekman group."""
    return [*LABELS, *(EKMAN_PREFIX + g for g in EKMAN)]


def canonical_target(name: str) -> str:
    """Canonical class name (``anger``, ``ekman:anger``); accepts any case and ``ekman_anger``."""
    groups = EKMAN
    key = str(name).strip().lower()
    if key in LABELS:
        return key
    for sep in (":", "_"):
        prefix = "ekman" + sep
        if key.startswith(prefix) and key[len(prefix) :] in groups:
            return EKMAN_PREFIX + key[len(prefix) :]
    valid = valid_targets()
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise SteerError(f"unknown emotion {name!r}{hint}; valid targets: {', '.join(valid)}")


def resolve_target(name: str) -> tuple[str, ...]:
    """Label names that make up the class ``name`` (mapping order); SteerError if unknown."""
    group = ekman_group(name)
    return EKMAN[group] if group else (canonical_target(name),)


def ekman_group(name: str) -> str | None:
    """``anger`` for ``ekman:anger`` / ``ekman_anger``; None for a single label."""
    canon = canonical_target(name)
    return canon[len(EKMAN_PREFIX) :] if canon.startswith(EKMAN_PREFIX) else None


# what a class name may be: it becomes a file name (vectors/<model>/<class>-mean.safetensors, <class>.npy),
# so never a path (``../x``), hidden, empty or with control characters
_CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*(:[A-Za-z0-9][A-Za-z0-9_.+-]*)?")


def class_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a class name (None: it can): letters, digits, ``_.+-`` and at most one ``:``."""
    if isinstance(name, str) and _CLASS_NAME.fullmatch(name):
        return None
    return f"{name!r} is not a class name (letters, digits and _.+- with at most one ':', like anger or ekman:anger)"


def target_slug(name: str) -> str:
    """A class name as task and file names spell it (no ``:``): ``ekman:anger`` → ``ekman_anger``.
    A name that is not a class name (``../x``, from a file) is a SteerError, never a path."""
    problem = class_name_problem(name)
    if problem:
        raise SteerError(problem)
    return name.replace(":", "_")


# --------------------------------------------------------------------------- loading


def canonical_split(split: str) -> str:
    """``train``, ``validation`` (also ``dev``) or ``test``; SteerError otherwise."""
    key = str(split).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise SteerError(f"unknown split {split!r}; accepted: train, validation (or dev), test")
    return _SPLIT_ALIASES[key]


def load_goemotions(split: str = "train", data_dir: str | os.PathLike | None = None) -> list[Example]:
    """The GoEmotions examples of one split.

    Args:
        split: ``train``, ``validation`` (also ``dev``) or ``test``.
        data_dir: a local release folder (``train.tsv``, ``dev.tsv``, ``test.tsv``, ``emotions.txt``);
            None: the hub dataset.

    Returns:
        The split's examples (id, text, labels) in dataset order, the same from either source.
    """
    split = canonical_split(split)
    if data_dir is None:
        return _load_hub(split)
    folder = _check_folder(data_dir)
    _read_label_names(folder)  # the TSV indices are only meaningful with the expected names
    return _read_tsv(folder / SPLIT_FILES[split])


def goemotions_files(data_dir: str | os.PathLike | None) -> list[Path]:
    """The files a local GoEmotions folder is read from (none for the hub): what no output may replace."""
    if data_dir is None:
        return []
    folder = Path(data_dir).expanduser()
    return [folder / name for name in (*SPLIT_FILES.values(), EMOTIONS_FILE)]


def neutral_texts_location(given: str | os.PathLike | None = None) -> str | None:
    """Where the neutral texts come from: ``given`` if set, else $STEER_GOEMOTIONS_DIR, else None (the hub)."""
    location = given or os.environ.get(GOEMOTIONS_DIR_ENV)
    return str(location) if location else None


def neutral_texts(split: str = "test", data_dir: str | os.PathLike | None = None) -> list[Example]:
    """The split's texts whose only label is neutral, in dataset order (prompts free of emotion)."""
    return [ex for ex in load_goemotions(split, data_dir) if ex.labels == ("neutral",)]


def example_from_hub_row(row: Mapping[str, Any]) -> Example:
    """Convert one hub row ``{"text": str, "labels": [int, ...], "id": str}`` to an Example."""
    try:
        text, indices, ident = row["text"], row["labels"], row["id"]
    except (KeyError, TypeError):
        raise SteerError(f"hub row lacks text/labels/id: {str(row)[:200]!r}") from None
    if not isinstance(text, str) or isinstance(indices, (str, bytes)):
        raise SteerError(f"hub row {row.get('id')!r}: expected str text and a list of label ids")
    labels = []
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(LABELS):
            raise SteerError(f"hub row {ident!r}: label id {i!r} is not in 0..{len(LABELS) - 1}")
        labels.append(LABELS[i])
    return Example(text, tuple(labels), str(ident))


def examples_from_hub_rows(rows: Iterable[Mapping[str, Any]]) -> list[Example]:
    return [example_from_hub_row(r) for r in rows]


def _load_hub(split: str) -> list[Example]:
    import datasets  # heavy; only when the hub path is used

    try:
        ds = datasets.load_dataset(HUB_DATASET, HUB_CONFIG, split=split)
    except Exception as exc:  # network, auth, cache... all mean "could not get the hub data"
        raise SteerError(
            f"cannot load {HUB_DATASET} ({HUB_CONFIG}, {split}) from the hub: {first_line(exc, with_type=True)[:300]}; "
            f"or pass a local folder with {', '.join(SPLIT_FILES.values())}, {EMOTIONS_FILE}"
        ) from None
    names = _hub_label_names(ds)
    if names is not None and tuple(names) != LABELS:
        raise SteerError(f"hub dataset {HUB_DATASET} has unexpected label names: {names}")
    return examples_from_hub_rows(ds)


def _hub_label_names(ds: Any) -> list[str] | None:
    """Names of the hub's ClassLabel feature, if the dataset exposes them."""
    try:
        return list(ds.features["labels"].feature.names)
    except (AttributeError, KeyError, TypeError):
        return None


def _check_folder(data_dir: str | os.PathLike) -> Path:
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise SteerError(
            f"GoEmotions folder {str(folder)!r} does not exist; expected a folder with "
            f"{', '.join(SPLIT_FILES.values())}, {EMOTIONS_FILE}"
        )
    return folder


def _read_label_names(folder: Path) -> tuple[str, ...]:
    path = folder / EMOTIONS_FILE
    try:
        text = read_regular_text(path)
    except FileNotFoundError:
        raise SteerError(f"missing {EMOTIONS_FILE} in GoEmotions folder {folder}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SteerError(f"cannot read {path}: {first_line(exc, with_type=True)[:300]}") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if names != LABELS:
        raise SteerError(
            f"{path}: expected the {len(LABELS)} GoEmotions names ({LABELS[0]} ... {LABELS[-1]}) "
            f"one per line, got {len(names)} names"
        )
    return names


def _read_tsv(path: Path) -> list[Example]:
    """Rows ``text<TAB>ids<TAB>comment id`` with standard CSV quoting (doubled inner quotes)."""
    out: list[Example] = []
    try:
        with io.TextIOWrapper(open_regular(path), encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            for row in reader:
                if len(row) != 3:
                    raise SteerError(
                        f"{path}:{reader.line_num}: expected 3 tab-separated columns "
                        f"(text, label ids, id), got {len(row)}"
                    )
                text, ids, ident = row
                out.append(Example(text, _parse_ids(ids, path, reader.line_num), ident))
    except FileNotFoundError:
        raise SteerError(f"missing {path.name} in GoEmotions folder {path.parent}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SteerError(f"cannot read {path}: {first_line(exc, with_type=True)[:300]}") from None
    if not out:
        raise SteerError(f"{path} has no rows")
    return out


def _parse_ids(field_: str, path: Path, line: int) -> tuple[str, ...]:
    labels = []
    for part in field_.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()) or int(part) >= len(LABELS):
            raise SteerError(
                f"{path}:{line}: bad label ids {field_!r}; expected comma-separated ints in 0..{len(LABELS) - 1}"
            )
        labels.append(LABELS[int(part)])
    return tuple(labels)
