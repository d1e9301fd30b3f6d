"""What several sweep tests share: the sweep folder's plan file, a sweep's options on the tiny Llama, and the
3-question multiple-choice task ``tiny_mc`` (acc and acc_norm)."""

from __future__ import annotations

from pathlib import Path

from steer_plugin.study.plan import SweepOptions
from tests.helpers.tiny import write_mc_task

SWEEP_FILE = "sweep.json"


def sweep_options(out: Path, task_dir: str, tiny_llama_dir: str, **kw) -> SweepOptions:
    options = SweepOptions(
        tasks=["rel_mc"],
        out_dir=out,
        include_path=task_dir,
        bootstrap_iters=0,
        model_args={"pretrained": tiny_llama_dir},
    )
    for k, v in kw.items():
        setattr(options, k, v)
    return options


TINY_MC_DOCS = [
    {"q": "What is the capital of France?", "choices": [" Paris.", " London.", " I don't know."], "gold": 0},
    {"q": "He was furious and", "choices": [" slammed the door.", " smiled."], "gold": 0},
    {"q": "The weather", "choices": [" is fine today.", " is angry.", " bread"], "gold": 0},
    {"q": "Tell me about yourself.", "choices": [" I like books.", " Go away!"], "gold": 1},
]


def write_tiny_mc_task(folder: Path) -> str:
    return write_mc_task(folder, "tiny_mc", TINY_MC_DOCS, ("acc", "acc_norm"))
