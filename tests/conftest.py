import os
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    from helpers_tiny import save_model

    return save_model(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def tiny_chat_llama_dir(tmp_path_factory) -> str:
    """The tiny Llama with a chat template (an instruction-style model: steer run formats its emotion prompts)."""
    from helpers_tiny import save_model

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
