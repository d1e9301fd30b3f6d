"""The neutral texts on which side effects are measured (:mod:`steer_plugin.steering.side_effects`).

:class:`TextSource`: by default the GoEmotions **test** texts whose only label is ``neutral`` and that have at
least ``MIN_WORDS`` words, deduplicated, in a seeded shuffle; or the non-empty lines of a text file. Callers take
prefixes of that order: a sweep the first 200, calibration the first 128 (calibration set) and the next 128
(held-out set).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path

from steer_plugin.data.goemotions import (
    HUB_CONFIG,
    HUB_DATASET,
    goemotions_files,
    neutral_texts,
    neutral_texts_location,
)
from steer_plugin.errors import SteerError, check_count
from steer_plugin.io.reading import read_regular_text

MIN_WORDS = 3  # GoEmotions neutral texts shorter than this say too little to continue
DEFAULT_N_TEXTS = 200


@dataclass(frozen=True)
class TextSource:
    """Where the neutral texts come from: a text file (one text per line), a GoEmotions folder
    (test.tsv + emotions.txt), or None = $STEER_GOEMOTIONS_DIR if set, else the hub dataset."""

    path: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_count("--seed", self.seed, 0)

    def resolved(self) -> str | None:
        return neutral_texts_location(self.path)

    def describe(self) -> str:
        where = self.resolved()
        if where is None:
            return f"hub:{HUB_DATASET}/{HUB_CONFIG} test neutral (seed {self.seed})"
        kind = "file" if Path(where).is_file() else "goemotions test neutral"
        return f"{kind}:{where} (seed {self.seed})"

    def files(self) -> list[Path]:
        """The files the texts are read from (a text file, or a GoEmotions folder's; none from the hub)."""
        where = self.resolved()
        if where is None:
            return []
        path = Path(where).expanduser()
        return goemotions_files(path) if path.is_dir() else [path]

    def load(self, n: int | None = None) -> list[str]:
        """The texts in the seeded order (all of them, or the first ``n``)."""
        where = self.resolved()
        if where is not None and Path(where).expanduser().is_file():
            texts = _file_texts(Path(where).expanduser())
        else:
            texts = _goemotions_neutral(where)
        texts = list(dict.fromkeys(texts))  # deduplicated, first occurrence kept
        # the shuffle's seed string stays "fluency:": stored calibrations' texts_sha256 were made in this order
        random.Random(f"fluency:{self.seed}").shuffle(texts)
        if not texts:
            raise SteerError(f"no neutral texts in {self.describe()}; pass --neutral-texts FILE (one text per line)")
        return texts if n is None else texts[:n]


def _file_texts(path: Path) -> list[str]:
    try:
        lines = read_regular_text(path).splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SteerError(f"cannot read neutral texts {path}: {e}") from None
    return [line.strip() for line in lines if line.strip()]


def _goemotions_neutral(folder: str | None) -> list[str]:
    if folder is not None and not Path(folder).expanduser().is_dir():
        raise SteerError(f"neutral texts {folder!r}: not a text file or a GoEmotions folder")
    return [ex.text for ex in neutral_texts("test", folder) if len(ex.text.split()) >= MIN_WORDS]


def texts_sha256(texts: list[str]) -> str:
    """A short fingerprint of the texts, in order (part of a stored calibration's key)."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:16]
