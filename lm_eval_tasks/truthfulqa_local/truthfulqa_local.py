"""Offline TruthfulQA: lm-eval's built-in truthfulqa tasks over local JSONL files.

A YAML ``include:`` takes a path relative to the including file or an absolute one, so it cannot
name the installed lm_eval package portably. Instead each truthfulqa_local_*.yaml is a Python task
(``class: !function truthfulqa_local.LocalTruthfulQATask``, lm-eval's PY_TASK route) that, at
task-load time, loads the built-in YAML from wherever lm_eval is installed, with its ``!function``
hooks resolved (e.g. ``utils.process_results_mc2``), and replaces only the data source:

    dataset_path: json, dataset_name: null,
    dataset_kwargs.data_files.validation: <folder>/<data_file>   (absolute)

<folder> is ``metadata["truthfulqa_dir"]`` if given, else $STEER_TRUTHFULQA_DIR (a folder holding
truthfulqa_mc.validation.jsonl and truthfulqa_gen.validation.jsonl in the HF schema). Prompt,
few-shot settings, metrics and process_results are the built-in ones, so the numbers equal the
built-in tasks' on the same rows.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

try:
    import steer_plugin  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: the package sits two folders up
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lm_eval.tasks
from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks._yaml_loader import load_yaml

from steer_plugin.errors import SteerError
from steer_plugin.harness.tasks import TRUTHFULQA_DIR_ENV

TAG = "truthfulqa_local"
BUILTIN_DIR = Path(lm_eval.tasks.__file__).resolve().parent / "truthfulqa"
# keys of our YAMLs that are not TaskConfig fields
OWN_KEYS = ("class", "builtin_task", "data_file")


def data_folder(metadata: dict[str, Any] | None = None) -> Path:
    folder = (metadata or {}).get("truthfulqa_dir") or os.environ.get(TRUTHFULQA_DIR_ENV)
    if not folder:
        raise SteerError(
            f"truthfulqa_local tasks need {TRUTHFULQA_DIR_ENV} (or --metadata truthfulqa_dir): a folder "
            "holding truthfulqa_mc.validation.jsonl and truthfulqa_gen.validation.jsonl"
        )
    return Path(folder).expanduser().resolve()  # the json builder needs an absolute path


def builtin_config(builtin_task: str) -> dict[str, Any]:
    """The built-in task's YAML (includes merged, ``!function`` hooks imported)."""
    path = BUILTIN_DIR / f"{builtin_task}.yaml"
    if not path.is_file():
        raise SteerError(
            f"lm_eval has no built-in {builtin_task} at {path}; "
            "accepted: truthfulqa_mc1, truthfulqa_mc2, truthfulqa_gen"
        )
    try:
        return load_yaml(path, resolve_func=True)
    except ImportError as err:  # the built-in utils.py imports sacrebleu and rouge_score at top
        raise SteerError(
            f"cannot load lm_eval's {builtin_task} ({err}); install its metric packages: "
            "pip install 'steer-plugin[truthfulqa-gen]' (rouge_score, sacrebleu)"
        ) from err


def local_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Our YAML (plus runtime overrides) on top of the built-in config, data source swapped."""
    builtin_task = cfg.get("builtin_task")
    data_file = cfg.get("data_file")
    if not builtin_task or not data_file:
        raise SteerError("a truthfulqa_local YAML must set builtin_task and data_file")
    metadata = dict(cfg.get("metadata") or {})
    path = data_folder(metadata) / data_file
    if not path.is_file():
        raise SteerError(f"{path} not found; {TRUTHFULQA_DIR_ENV} must hold {data_file} (HF truthful_qa schema)")
    base = builtin_config(builtin_task)
    merged = {**base, **{k: v for k, v in cfg.items() if k not in OWN_KEYS}}
    merged.update(
        tag=TAG,
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {"validation": str(path)}},
        metadata={**(base.get("metadata") or {}), **metadata, "builtin_task": builtin_task, "data_file": str(path)},
    )
    return merged


class LocalTruthfulQATask(ConfigurableTask):
    """ConfigurableTask built from the built-in truthfulqa YAML named by ``builtin_task``."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(config=local_config(dict(config or {})), **kwargs)
