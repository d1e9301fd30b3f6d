import os
from pathlib import Path

import pytest

from tests.helpers.cli import ESC
from tests.helpers.tiny import CORPUS_WORDS, save_tiny_stats

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def shared_dir() -> Path | None:
    s = os.environ.get("STEER_SHARED")
    return Path(s) if s else None


@pytest.fixture(scope="session")
def shared() -> Path:
    s = shared_dir()
    if s is None:
        pytest.skip("STEER_SHARED is not set (path of the shared data/models folder)")
    return s


@pytest.fixture(autouse=True)
def own_steer_cache(tmp_path_factory, monkeypatch):
    """Every test its own user cache (remembered calibration verifications): no test sees another's."""
    monkeypatch.setenv("STEER_CACHE_DIR", str(tmp_path_factory.mktemp("steer-cache")))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    from tests.helpers.tiny import save_model

    return save_model(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def tiny_chat_llama_dir(tmp_path_factory) -> str:
    """The tiny Llama with a chat template (an instruction-style model: steer run formats its emotion prompts)."""
    from tests.helpers.tiny import save_model

    return save_model(tmp_path_factory.mktemp("tiny_chat_llama"), "llama", chat=True)


@pytest.fixture(scope="session")
def shared_or_none() -> Path | None:
    return shared_dir()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine it makes the
    intra-op thread pool spin against other processes (measured: 2 s vs 10-35 s per lm-eval run)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- the tiny sweep and files that the reliability tests of several modules share ---------------------------

DOCS = [
    {"q": "What is the capital of France?", "choices": [" Paris.", " London."], "gold": 0},
    {"q": "He was furious and", "choices": [" slammed the door.", " smiled."], "gold": 0},
    {"q": "The weather", "choices": [" is fine today.", " bread"], "gold": 0},
    {"q": "Tell me about yourself.", "choices": [" I like books.", " Go away!"], "gold": 1},
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> str:
    """A folder with ``rel_mc``: the 4 questions of DOCS as a multiple-choice task (modules may define their own)."""
    from tests.helpers.tiny import write_mc_task

    return write_mc_task(tmp_path_factory.mktemp("tasks"), "rel_mc", DOCS)


@pytest.fixture(scope="module")
def vector_file(tmp_path_factory, tiny_llama_dir) -> str:
    import torch

    from steer_plugin.vectors.vector import SteeringVector

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("v") / "anger-mean.safetensors"
    SteeringVector(torch.randn(3, 32), {"model": tiny_llama_dir, "emotion": "anger", "method": "mean"}).save(path)
    return str(path)


@pytest.fixture(scope="module")
def lm(tiny_llama_dir, one_torch_thread):
    from steer_plugin.harness.model import SteeredHFLM

    return SteeredHFLM(pretrained=tiny_llama_dir, dtype="float32", device="cpu", batch_size=4)


@pytest.fixture()
def stats_file_for_build(tmp_path) -> Path:
    return save_tiny_stats(tmp_path / "stats.safetensors", model=f"tiny{ESC}[31mred")


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    """40 short sentences made of the tiny tokenizer's corpus words (seeded)."""
    import random

    rng = random.Random(0)
    lines = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(5, 12))) + "." for _ in range(40)]
    path = tmp_path_factory.mktemp("texts") / "neutral.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)
