"""Shared harness of the benchmarks (``python -m benchmarks.<name>`` from the repository root).

* bench models: randomly initialised Llama models built from configs (``build_model``), with the real
  SmolLM2 tokenizer (``load_tokenizer``);
* texts: GoEmotions from the shared data folder when present, else generated text (``record_items``);
* timing: variants run in rotating order (A B C, B C A, ...) after a warm-up, medians of the repeats
  (``alternate``), with the load average before/after;
* reporting: machine/version info and ``BENCHMARKS.md`` sections that are replaced in place
  (``write_section``) without touching anything else in the file (other people's sections).

Heavy imports stay inside functions: ``setup`` must run first (thread count, OpenMP wait policy).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import random
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

DEFAULT_MD = REPO / "BENCHMARKS.md"
TOKENIZER_HUB_ID = "HuggingFaceTB/SmolLM2-135M"
SMOLLM2_FOLDER = "models/smollm2-135m-instruct-q4_1"


# --- environment -----------------------------------------------------------------------------------


def setup(threads: int = 2) -> dict[str, str]:
    """Offline hub, fixed torch thread count, passive OpenMP waiting; returns the settings used.

    ``OMP_WAIT_POLICY=PASSIVE``: on a shared 2-core machine, spinning OpenMP workers that lose their
    core to another process made a forward pass 5-20x slower at random (0.5 s -> 2-8 s), which
    swamps every ratio. Passive waiting keeps the noise to ~1.5x. It is set before torch loads and
    applies to every variant (and to child processes) alike.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(k, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(threads)
    return {"torch_threads": str(threads), "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]}


def child_env(threads: int) -> dict[str, str]:
    """Environment for benchmark subprocesses: same threads/wait policy, the checkout importable."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.setdefault(k, "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TQDM_DISABLE", "1")
    return env


def shared_dir() -> Path | None:
    """``$STEER_SHARED``, else ``../shared`` next to the repository, if it exists."""
    env = os.environ.get("STEER_SHARED")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared"]:
        if candidate.is_dir():
            return candidate
    return None


# --- models ----------------------------------------------------------------------------------------

# Llama configs. "bench" is HuggingFaceTB/SmolLM2-135M's architecture, "scale" Llama-3.2-3B's;
# "memory" keeps the bench model's activation shape (30 blocks x 576) with tiny attention/MLP so
# 16k texts record in minutes; "small" is for the sweep benchmark; "tiny" for the test suite.
MODEL_SPECS: dict[str, dict[str, Any]] = {
    "bench": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    "scale": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        vocab_size=128256,
    ),
    "memory": dict(
        hidden_size=576,
        intermediate_size=8,
        num_hidden_layers=30,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=8,
        tie_word_embeddings=True,
    ),
    "small": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        tie_word_embeddings=True,
    ),
    "tiny": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        tie_word_embeddings=True,
    ),
}


def model_config(spec: str, vocab_size: int):
    from transformers import LlamaConfig

    if spec not in MODEL_SPECS:
        raise SystemExit(f"unknown model spec {spec!r}; use one of {', '.join(MODEL_SPECS)}")
    kw = dict(MODEL_SPECS[spec])
    kw["vocab_size"] = max(int(kw.get("vocab_size", vocab_size)), vocab_size)
    rope_theta = kw.pop("rope_theta", 10000.0)
    return LlamaConfig(
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        rope_theta=rope_theta,
        **kw,
    )


def build_model(spec: str, vocab_size: int, seed: int = 0):
    """Random-weight ``LlamaForCausalLM`` (float32, eval mode) under ``torch.manual_seed(seed)``."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config(spec, vocab_size))
    return model.to(torch.float32).eval()


def describe_model(model) -> str:
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    return (
        f"LlamaForCausalLM, random init (seed 0), {n / 1e6:.1f}M params, {c.num_hidden_layers} layers, "
        f"hidden {c.hidden_size}, {c.num_attention_heads} heads / {c.num_key_value_heads} KV heads, "
        f"intermediate {c.intermediate_size}, vocab {c.vocab_size}, float32"
    )


def load_tokenizer(path: str | None = None):
    """``path``, else the SmolLM2 tokenizer in the shared models folder, else the hub's."""
    from transformers import AutoTokenizer

    if path:
        return AutoTokenizer.from_pretrained(path)
    shared = shared_dir()
    if shared and (shared / SMOLLM2_FOLDER / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(shared / SMOLLM2_FOLDER))
    return AutoTokenizer.from_pretrained(TOKENIZER_HUB_ID)


def tokenizer_source(path: str | None) -> str:
    if path:
        return path
    shared = shared_dir()
    if shared and (shared / SMOLLM2_FOLDER / "tokenizer.json").exists():
        return "SmolLM2-135M-Instruct tokenizer (local copy)"
    return TOKENIZER_HUB_ID


def save_model_dir(model, tokenizer, path: Path) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def random_vector(n_layers: int, hidden: int, seed: int = 1, norm: float = 1.0):
    """A steering vector with every layer's row of the given L2 norm."""
    import torch

    from steer_plugin.vectors.vector import SteeringVector

    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n_layers, hidden, generator=g)
    m = m / m.norm(dim=1, keepdim=True) * norm
    return SteeringVector(m, {"emotion": "bench", "method": "random"})


# --- texts -----------------------------------------------------------------------------------------

_WORDS = [
    "the",
    "a",
    "I",
    "you",
    "it",
    "was",
    "is",
    "so",
    "this",
    "that",
    "not",
    "what",
    "really",
    "just",
    "love",
    "hate",
    "people",
    "time",
    "good",
    "bad",
    "feel",
    "think",
    "know",
    "never",
    "always",
    "thanks",
    "lol",
    "game",
    "team",
    "wow",
    "sorry",
    "happy",
    "sad",
    "angry",
    "why",
    "how",
    "yes",
    "no",
    "maybe",
    "great",
    "awful",
    "funny",
    "weird",
    "day",
    "night",
    "work",
    "home",
    "friend",
]


def generated_texts(n: int, seed: int = 0) -> list[str]:
    """Reddit-comment-like lengths (3-60 words, most 8-20) from a fixed word list."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = max(3, min(60, int(rng.lognormvariate(2.5, 0.6))))
        out.append(" ".join(rng.choice(_WORDS) for _ in range(k)).capitalize() + ".")
    return out


@dataclass
class TextSet:
    items: list[Any]  # steer_plugin.vectors.record.RecordItem
    source: str


def record_items(n: int, source: str = "auto", seed: int = 0) -> TextSet:
    """``n`` record items (text + classes).

    GoEmotions: the first ``n`` rows of the train split in file order, each in the classes of its
    labels (``steer record --emotion all --selection any``); cycled if ``n`` exceeds the split.
    Generated: ``generated_texts`` in 4 classes.
    """
    from steer_plugin.vectors.record import RecordItem

    folder = (shared_dir() / "data" / "goemotions") if shared_dir() else None
    if source == "goemotions" or (source == "auto" and folder and (folder / "train.tsv").exists()):
        if not folder or not (folder / "train.tsv").exists():
            raise SystemExit("GoEmotions not found: set STEER_SHARED or put it in ../shared/data/goemotions")
        from steer_plugin.data.goemotions import load_goemotions

        examples = load_goemotions("train", folder)
        items = [RecordItem(ex.text, tuple(dict.fromkeys(ex.labels))) for ex in examples[:n]]
        while len(items) < n:
            items += items[: n - len(items)]
        return TextSet(items, f"GoEmotions train.tsv, first {n} rows")
    if source not in ("auto", "generated"):
        raise SystemExit(f"unknown text source {source!r}: auto, goemotions or generated")
    texts = generated_texts(n, seed)
    return TextSet([RecordItem(t, (f"c{i % 4}",)) for i, t in enumerate(texts)], f"generated text (seed {seed})")


def short_items(tokenizer: Any, n: int, max_tokens: int | None, source: str = "auto") -> TextSet:
    """``record_items`` keeping only texts of at most ``max_tokens`` tokens (as ``steer record`` encodes
    them), taken in file order; cycled if fewer qualify."""
    if not max_tokens:
        return record_items(n, source)
    from steer_plugin.data.prompts import PromptTemplate, encode

    pool = record_items(2 * n, source)
    lens = [len(x) for x in encode(tokenizer, [it.text for it in pool.items], PromptTemplate("raw"))]
    items = [it for it, k in zip(pool.items, lens) if k <= max_tokens][:n]
    if not items:
        raise SystemExit(f"no text has <= {max_tokens} tokens")
    while len(items) < n:
        items += items[: n - len(items)]
    first = pool.source.split(",")[0]
    return TextSet(items, f"{first}, the first {n} texts of <= {max_tokens} tokens")


# --- timing ----------------------------------------------------------------------------------------


def loadavg() -> tuple[float, float, float]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except OSError:
        return (float("nan"),) * 3  # type: ignore[return-value]


@dataclass
class Timings:
    seconds: dict[str, list[float]]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    results: dict[str, Any] = field(default_factory=dict)  # last return value of each variant

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def spread(self, name: str) -> str:
        xs = self.seconds[name]
        return f"{min(xs):.2f}-{max(xs):.2f}"


def alternate(
    variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, log: Callable[[str], None] | None = None
) -> Timings:
    """Time each variant ``repeats`` times, rotating the order every round (A B C, B C A, C A B)."""
    names = list(variants)
    before = loadavg()
    results: dict[str, Any] = {}
    for _ in range(warmup):
        for name in names:
            results[name] = variants[name]()
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            t0 = time.perf_counter()
            results[name] = variants[name]()
            seconds[name].append(time.perf_counter() - t0)
            if log:
                log(f"  round {r + 1}/{repeats} {name}: {seconds[name][-1]:.2f}s (load {loadavg()[0]})")
    return Timings(seconds, before, loadavg(), results)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- machine / versions ----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "-"

    import torch

    from steer_plugin import __version__

    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1024**2:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return {
        "machine": f"{_cpu_model()}, {os.cpu_count()} logical CPUs{mem}, {platform.system()} {platform.release()}",
        "gpu": "none (GPU numbers not measured)" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "versions": (
            f"python {platform.python_version()}, torch {torch.__version__}, transformers "
            f"{v('transformers')}, nnsight {v('nnsight')}, lm-eval {v('lm_eval')}, "
            f"steer-plugin {__version__} (git {_git_rev()})"
        ),
        "threads": f"torch.set_num_threads({torch.get_num_threads()}), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}",
    }


def _portable(arg: str) -> str:
    """``arg`` with an absolute path shown as ``path/to/<its name>``: BENCHMARKS.md is read on other machines."""
    flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
    if value.startswith("/") and len(value) > 1:
        value = "path/to/" + value.rstrip("/").rsplit("/", 1)[-1]
    return flag + eq + value


def command_line(benchmark: str, argv: Sequence[str]) -> str:
    """How to rerun ``benchmarks.<benchmark>`` with ``argv``, as quoted in BENCHMARKS.md."""
    return " ".join(["python", "-m", f"benchmarks.{benchmark}", *(shlex.quote(_portable(a)) for a in argv)])


def header_lines(info: dict[str, str], command: str, load: tuple[Any, Any] | None = None) -> list[str]:
    lines = [
        f"- command: `{command}`",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {info['machine']}; GPU: {info['gpu']}",
        f"- versions: {info['versions']}",
        f"- threads: {info['threads']}",
    ]
    if load:
        lines.append(f"- load average (1/5/15 min) before: {load[0]}, after: {load[1]}")
    return lines


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    from steer_plugin.io.text_table import format_table

    return format_table(header, rows, markdown=True).splitlines()


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


# --- BENCHMARKS.md ---------------------------------------------------------------------------------

# Our sections, in file order. Each lives between ``<!-- bench:KEY -->`` and ``<!-- /bench:KEY -->``;
# everything outside those markers (e.g. the prefix-reuse section) is left byte for byte.
SECTION_ORDER = (
    "intro",
    "summary",
    "record",
    "memory",
    "eval",
    "sweep",
    "scale-record",
    "scale-eval",
    "profile",
    "config-batching",
    "config-batching-1b",
    "config-batching-side-effects",
    "config-batching-side-effects-1b",
    "quality",
    "run-end-to-end",
)


def _block_re(key: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- bench:{re.escape(key)} -->\n.*?<!-- /bench:{re.escape(key)} -->\n?", re.S)


def replace_section(text: str, key: str, body: str) -> str:
    """``text`` with our section ``key`` set to ``body`` (inserted after our preceding section)."""
    if key not in SECTION_ORDER:
        raise ValueError(f"unknown section {key!r}")
    block = f"<!-- bench:{key} -->\n{body.rstrip()}\n<!-- /bench:{key} -->\n"
    pattern = _block_re(key)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    # insert right after the nearest of our sections that comes before it, else at the top
    for prev in reversed(SECTION_ORDER[: SECTION_ORDER.index(key)]):
        m = _block_re(prev).search(text)
        if m:
            end = m.end()
            sep = "" if text[:end].endswith("\n") else "\n"
            return text[:end] + sep + "\n" + block + text[end:]
    return block + ("\n" + text if text else "")


def write_section(md_path: str | os.PathLike, key: str, body: str) -> None:
    """Re-read the file right before writing and replace only our section (atomic write)."""
    from steer_plugin.io.atomic import write_text_atomic

    path = Path(md_path)
    if key != "intro" and not (path.exists() and "<!-- bench:intro -->" in path.read_text(encoding="utf-8")):
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        write_text_atomic(path, replace_section(current, "intro", INTRO))
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    write_text_atomic(path, replace_section(current, key, body))
    os.chmod(path, mode | 0o644)  # the atomic temp file is created 0600


INTRO = """# Benchmarks

Performance of steer-plugin against plain transformers / lm-evaluation-harness. Every number
below was produced by the command printed with it (`python -m benchmarks.<name>`); rerun it to refresh its section.
Ratios are measured side by side in one process run: variants alternate in rotating order
(A B C, B C A, ...) after a warm-up, and the tables show medians of the repeats (min-max in brackets).

Unless a section says otherwise, the **bench model** is a randomly initialised `LlamaForCausalLM` with the
architecture of `HuggingFaceTB/SmolLM2-135M` (30 layers, hidden 576, 9 heads / 3 KV heads, intermediate
1536, vocab 49152; `torch.manual_seed(0)`), float32, on CPU, batch size 8, with the real SmolLM2
tokenizer. Texts are GoEmotions train texts (a local copy of the release files), else generated text.
The machine is shared with other jobs (2 cores), so each section records the load average before and
after; `OMP_WAIT_POLICY=PASSIVE` is set for all variants (see `benchmarks/common.py`).
No GPU was available: GPU numbers are not measured.
"""


def print_and_write(args: Any, key: str, body: str) -> None:
    print(body)
    if not getattr(args, "no_md", False):
        write_section(args.md, key, body)
        say(f"updated section {key!r} of {args.md}")


def dump_json(path: str | None, data: Any) -> None:
    if path:
        from steer_plugin.io.atomic import write_text_atomic

        write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def add_common_args(p: Any) -> None:
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: shared SmolLM2 tokenizer)")
    p.add_argument("--md", default=str(DEFAULT_MD), help="markdown file to update (default: BENCHMARKS.md)")
    p.add_argument("--no-md", action="store_true", help="print only; leave the markdown file alone")
    p.add_argument("--json", default=None, help="also write the raw measurements as JSON")
