"""Paired statistics against the unsteered baseline, over the documents both arms scored.

Every steered configuration is scored on the same documents as the baseline, so the difference of
their means is judged document by document (``d_i = config_i - baseline_i``), which removes the
between-document variance that dominates each arm's own stderr:

* ``delta``: ``mean(config) - mean(baseline)`` over the matched documents (equal to the difference
  of the two leaderboard means when both arms scored the same documents);
* ``ci_low``/``ci_high``: a 95% paired bootstrap percentile interval: documents are resampled with
  replacement (``resamples`` times, seeded), the same resample for both arms, and the 2.5th / 97.5th
  percentiles (linear interpolation) of the resampled mean differences are reported - the same
  numbers as ``scipy.stats.bootstrap(..., paired=True, method="percentile")`` with the same generator;
* ``p``: a two-sided sign-flip permutation test (randomization test of paired differences): under
  "steering changes nothing" each ``d_i`` is as likely to have the other sign, so
  ``p = P(|sum(s_i d_i)| >= |sum(d_i)|)`` over random signs ``s``: exact (all ``2^n`` sign vectors)
  when ``2^n <= resamples``, otherwise ``(1 + hits) / (1 + resamples)`` over seeded random signs.

Per-document scores come from the harness's samples files: ``samples_<task>.jsonl`` beside a sweep's
``results.json``, or ``samples_<task>_<date>.jsonl`` beside ``lm_eval --log_samples``'s
``results_<date>.json``. Documents are matched by ``doc_id`` and, where recorded, the document and
prompt hashes (a baseline that saw other prompts is no baseline).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from steer_plugin.errors import SteerError, check_count
from steer_plugin.io.reading import open_regular
from steer_plugin.io.terminal import printable

DEFAULT_RESAMPLES = 2000
LEVEL = 0.95
_DATE = re.compile(r"_(\d{4}-\d{2}-\d{2}T[0-9.\-]+)$")
# per-document scores are kept compact in sweeps: these keys plus the metric values
COMPACT_KEYS = ("doc_id", "doc_hash", "prompt_hash", "target_hash", "filter", "metrics")

# what else a compact row may hold: texts for the report, and the index of a multiple-choice row's chosen answer
CHOICE_KEYS = ("chosen", "question", "choice", "correct")
_NOT_METRICS = frozenset(COMPACT_KEYS) | {"doc", "target", "arguments", "resps", "filtered_resps", *CHOICE_KEYS}

DocKey = tuple[Any, Any, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class Paired:
    """One metric of one configuration against the baseline."""

    delta: float
    ci_low: float
    ci_high: float
    p: float
    n: int  # matched documents

    @property
    def significant(self) -> bool:
        """The interval excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0

    def format(self) -> str:
        return f"{self.delta:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}]" + ("*" if self.significant else "")


# --- the statistics ---------------------------------------------------------------------------


_CHUNK = 1 << 22  # random draws held in memory at once
_CACHE_LIMIT = 1 << 23  # draws kept between comparisons (64 MiB as float64)
# per resample a comparison holds its mean difference, its sign-flipped sum and their copies while the quantile
# and the p-value are taken: about 32 bytes; --resamples is bounded so that this stays within 2 GiB
_BYTES_PER_RESAMPLE = 32
MAX_RESAMPLES = (2 << 30) // _BYTES_PER_RESAMPLE


def check_resampling(resamples: int, seed: int) -> None:
    """A number of resamples that fits in memory (``MAX_RESAMPLES``) and a seed numpy takes (an integer >= 0)."""
    check_count("--resamples", resamples)
    if resamples > MAX_RESAMPLES:
        raise SteerError(
            f"--resamples {resamples} would hold about {resamples * _BYTES_PER_RESAMPLE / 2**30:.3g} GiB of resampled "
            f"statistics in memory; at most {MAX_RESAMPLES} (2 GiB)"
        )
    check_count("--seed", seed, 0)


def _count_chunks(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _CHUNK // n)
    for start in range(0, resamples, rows_per_chunk):
        rows = min(rows_per_chunk, resamples - start)
        idx = rng.integers(0, n, (rows, n))
        flat = (idx + n * np.arange(rows)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def bootstrap_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n]``: how often each document appears in each bootstrap resample.

    Resample ``b`` is ``rng.integers(0, n, n)`` with ``rng = default_rng(seed)`` (drawn ``(rows, n)`` at a
    time: the indices scipy's bootstrap draws); counting them lets one matrix product give every
    resample's mean."""
    return np.vstack(list(_count_chunks(n, resamples, seed)))


def _sign_chunks(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    if n < 63 and (1 << n) <= resamples:  # exact: every sign vector once
        codes = np.arange(1 << n)[:, None] >> np.arange(n)[None, :]
        yield 1.0 - 2.0 * (codes & 1)
        return
    rng = np.random.default_rng([seed, 1])
    rows_per_chunk = max(1, _CHUNK // n)
    for start in range(0, resamples, rows_per_chunk):
        yield 1.0 - 2.0 * rng.integers(0, 2, (min(rows_per_chunk, resamples - start), n))


def sign_flips(n: int, resamples: int, seed: int) -> tuple[np.ndarray, bool]:
    """Sign vectors ``[m, n]`` and whether they are all ``2^n`` of them (the exact test)."""
    return np.vstack(list(_sign_chunks(n, resamples, seed))), n < 63 and (1 << n) <= resamples


class PairedBootstrap:
    """Seeded paired bootstrap + sign-flip test. The random draws depend only on the number of
    documents, so they are drawn once and reused by every metric and configuration."""

    def __init__(self, resamples: int = DEFAULT_RESAMPLES, seed: int = 0, level: float = LEVEL) -> None:
        check_resampling(resamples, seed)
        self.resamples, self.seed, self.level = resamples, seed, level
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def _apply(self, kind: str, n: int, d: np.ndarray) -> np.ndarray:
        """``draws @ d`` for every resample (``kind`` = counts or signs), cached while small."""
        chunks = _count_chunks if kind == "counts" else _sign_chunks
        key = (kind, n)
        if key in self._cache:
            return self._cache[key] @ d
        if n * self.resamples <= _CACHE_LIMIT:
            self._cache[key] = np.vstack(list(chunks(n, self.resamples, self.seed)))
            return self._cache[key] @ d
        return np.concatenate([c @ d for c in chunks(n, self.resamples, self.seed)])

    def compare(self, config: Any, baseline: Any) -> Paired:
        c = np.asarray(config, dtype=np.float64)
        b = np.asarray(baseline, dtype=np.float64)
        if c.shape != b.shape or c.ndim != 1:
            raise ValueError(f"paired arms need equal 1-D shapes, got {c.shape} and {b.shape}")
        n = len(c)
        if n < 1:
            raise ValueError("no documents to compare")
        d = c - b
        means = self._apply("counts", n, d) / n
        tail = (1 - self.level) / 2
        lo, hi = np.quantile(means, [tail, 1 - tail])
        flipped = np.abs(self._apply("signs", n, d))
        exact = n < 63 and (1 << n) <= self.resamples
        observed = abs(float(d.sum()))
        tol = 1e-9 * max(float(np.abs(d).sum()), 1e-300)  # ties up to float rounding count as "as extreme"
        hits = int((flipped >= observed - tol).sum())
        p = hits / len(flipped) if exact else (1 + hits) / (1 + len(flipped))
        return Paired(float(c.mean() - b.mean()), float(lo), float(hi), min(1.0, p), n)


# --- per-document scores from samples files --------------------------------------------------------


def samples_files(results_file: str | Path, tasks: Iterable[str]) -> dict[str, Path]:
    """The samples file of each task that has one beside a results file (ours or lm_eval's layout)."""
    path = Path(results_file)
    stem = path.stem
    if stem.startswith("results"):
        suffix = stem[len("results") :]  # "" (sweeps) or "_<date>" (lm_eval --output_path DIR)
    else:
        m = _DATE.search(stem)  # lm_eval --output_path FILE.json -> FILE_<date>.json
        suffix = f"_{m.group(1)}" if m else ""
    found = {}
    for task in tasks:
        candidate = path.with_name(f"samples_{task}{suffix}.jsonl")
        if os.path.lexists(candidate):  # a FIFO or a broken link too: reading it says what it is, never silence
            found[task] = candidate
    return found


EXAMPLE_CHARS = 1000  # of a generation (and its prompt) kept in compact rows, for the report's examples


def compact_row(row: dict[str, Any]) -> dict[str, Any]:
    """A samples row without the document, prompts and responses: its keys and metric values; for an emotion
    task's row (its filtered response is a score record) also the prompt and the generation, cut to
    ``EXAMPLE_CHARS``, so a report can show what the numbers describe."""
    out = {k: row[k] for k in COMPACT_KEYS if k in row}
    for name in row.get("metrics") or []:
        if name in row:
            out[name] = row[name]
    record = (row.get("filtered_resps") or [None])[0]
    if isinstance(record, dict) and "generation" in record:
        doc = row.get("doc")
        out["prompt"] = str(doc.get("prompt", "") if isinstance(doc, dict) else "")[:EXAMPLE_CHARS]
        out["generation"] = str(record["generation"])[:EXAMPLE_CHARS]
    out.update(chosen_answer(row) or {})
    return out


def chosen_answer(row: dict[str, Any]) -> dict[str, Any] | None:
    """A multiple-choice row's answer (the most likely choice): its index, the question, the chosen and the
    correct choice's text, cut to ``EXAMPLE_CHARS``, so a report can list the questions whose answer steering
    changed; None for other rows. Reads a harness row (``--log-samples``, as kept or as written to JSON)."""
    args, resps, target = row.get("arguments"), row.get("filtered_resps"), row.get("target")
    if not isinstance(args, list) or not isinstance(resps, list) or len(args) != len(resps) or len(args) < 2:
        return None
    try:
        continuations = [str(a[1]) for a in args]
        scores = [float(r[0]) for r in resps]
    except (IndexError, TypeError, ValueError):
        return None  # not (context, continuation) pairs scored by loglikelihood
    chosen = max(range(len(scores)), key=scores.__getitem__)
    doc = row.get("doc")
    question = doc.get("question") if isinstance(doc, dict) else None
    out: dict[str, Any] = {"chosen": chosen, "choice": continuations[chosen].strip()[:EXAMPLE_CHARS]}
    if isinstance(question, str):
        out["question"] = question[:EXAMPLE_CHARS]
    if isinstance(target, int) and 0 <= target < len(continuations):
        out["correct"] = continuations[target].strip()[:EXAMPLE_CHARS]
    return out


class DuplicateDocument(SteerError):
    """A samples file that scores one document twice (under one filter): documents are paired by doc_id, so
    either score would silently stand for both."""


def _is_key(value: Any) -> bool:
    return value is None or (isinstance(value, (int, str)) and not isinstance(value, bool))


def read_scores(path: str | Path) -> dict[str, dict[DocKey, float]]:
    """``{metric label: {doc key: value}}`` of the numeric per-document metrics in a samples file;
    labels are ``metric`` or ``metric[filter]`` as in the leaderboard (filter ``none`` is left out).
    A document scored twice under one filter is a ``DuplicateDocument``."""
    scores: dict[str, dict[DocKey, float]] = {}
    unreadable: list[int] = []  # line numbers: said on stderr, never skipped silently (their Δ would vanish)
    first_line: dict[tuple[Any, Any], int] = {}  # (filter, doc_id) -> the line that scored it
    with io.TextIOWrapper(open_regular(path), encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                unreadable.append(number)  # e.g. a truncated last line: the documents before it still count
                continue
            if not isinstance(row, dict) or row.get("doc_id") is None:
                unreadable.append(number)
                continue
            key = (row["doc_id"], row.get("doc_hash"), row.get("prompt_hash"))
            filt = row.get("filter", "none")
            if not all(map(_is_key, (*key, filt))):  # ids that are not ids (a list): no key to pair documents by
                unreadable.append(number)
                continue
            seen = first_line.setdefault((filt, key[0]), number)
            if seen != number:
                where = "" if filt == "none" else f" under filter {printable(filt)!r}"
                raise DuplicateDocument(
                    f"{printable(path)}: doc_id {printable(repr(key[0]))} is scored twice{where} (lines {seen} and "
                    f"{number}); a samples file holds each document once"
                )
            names = row.get("metrics")
            if names is None:  # harness versions before the "metrics" list: every other top-level number
                names = [k for k in row if k not in _NOT_METRICS]
            for name in names if isinstance(names, list) else ():
                value = row.get(name) if isinstance(name, str) else None
                if isinstance(value, (int, float)):  # bool is an int
                    label = name + ("" if filt == "none" else f"[{filt}]")
                    scores.setdefault(label, {})[key] = float(value)
    if unreadable:
        shown = ", ".join(map(str, unreadable[:5])) + (", ..." if len(unreadable) > 5 else "")
        print(
            f"steer table: {printable(path)}: skipped {len(unreadable)} line(s) that are not a document's scores "
            f"(line {shown}); their documents are left out of the paired comparisons",
            file=sys.stderr,
        )
    return scores


def _matches(config: DocKey, baseline: DocKey, same_prompt: bool) -> bool:
    keys = zip(config[1:], baseline[1:]) if same_prompt else zip(config[1:2], baseline[1:2])
    return all(a is None or b is None or a == b for a, b in keys)


def match_pairs(config: dict[DocKey, T], baseline: dict[DocKey, T], same_prompt: bool = True) -> list[tuple[T, T]]:
    """(config, baseline) values of the documents both arms scored, in the config's order: by doc_id, with the
    document's hash agreeing, and its prompt's unless ``same_prompt`` is False (the prompting reference asks
    differently on purpose)."""
    by_id: dict[Any, list[tuple[DocKey, T]]] = {}
    for key, value in baseline.items():
        by_id.setdefault(key[0], []).append((key, value))
    out = []
    for key, value in config.items():
        hit = next((v for k, v in by_id.get(key[0], []) if _matches(key, k, same_prompt)), None)
        if hit is not None:
            out.append((value, hit))
    return out


def match_documents(
    config: dict[DocKey, float], baseline: dict[DocKey, float], same_prompt: bool = True
) -> tuple[list[float], list[float]]:
    """``match_pairs`` as two lists of values."""
    pairs = match_pairs(config, baseline, same_prompt)
    return [c for c, _ in pairs], [b for _, b in pairs]


def _is_mean_of(values: Iterable[float], reported: float | None) -> bool:
    """Paired means only make sense for metrics the harness aggregates by their mean."""
    vals = list(values)
    if reported is None or not vals:
        return reported is None and bool(vals)
    mean = math.fsum(vals) / len(vals)
    return abs(mean - reported) <= 1e-6 * max(1.0, abs(reported))
